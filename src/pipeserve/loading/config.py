"""Reading a model folder's config.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError


def read_json(path: Path) -> dict[str, Any]:
    """Parse a JSON object file, raising ConfigError that names the file when it is not one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"cannot read {path}: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data


def read_config(folder: Path) -> dict[str, Any]:
    """Return the parsed config.json of a model folder.

    Raises:
        ConfigError: the folder has no config.json, or it is not valid JSON.
    """
    path = folder / "config.json"
    if not path.is_file():
        present = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        raise ConfigError(
            f"{folder} has no config.json (files present: {', '.join(present) or 'none'}). "
            "A model folder needs the config.json saved with its weights."
        )
    return read_json(path)
