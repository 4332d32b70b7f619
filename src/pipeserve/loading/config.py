"""Reading a model folder's config.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError, PipeserveError


def read_json(path: Path, error: type[PipeserveError] = ConfigError) -> dict[str, Any]:
    """Parse a file holding a JSON object.

    Args:
        path: the file.
        error: the exception type to raise (it names the file) when it is unreadable or not an
            object.

    Returns:
        The parsed object.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise error(f"cannot read {path}: {err}; fix or replace the file") from err
    if not isinstance(data, dict):
        raise error(f"{path} must hold a JSON object, found {type(data).__name__}")
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
