"""Turn a model argument (a local folder, a `.gguf` file or a Hugging Face repo id) into local files.

NOTE: huggingface_hub reads HF_HOME, HF_HUB_CACHE and HF_HUB_OFFLINE once, when it is imported.
pipeserve reads them again at every call (`hub_cache_dir`, `hub_offline`) and hands the cache folder
to `snapshot_download` explicitly, so an environment changed after import (a notebook, a test) is
honoured and the offline cache lookup reads the same folder the download writes to.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import snapshot_download

from pipeserve.errors import ModelNotFoundError, WeightsError

logger = logging.getLogger(__name__)

# Everything a model needs besides its weights: small files, fetched whenever the repo has them.
SMALL_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "vocab.txt",
    "merges.txt",
    "vocab.json",
    "tokenizer.model",
    "preprocessor_config.json",
    # sentence-transformers: the module list and each module's settings (1_Pooling/config.json, ...)
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "*/config.json",
)
SAFETENSORS_FILES = ("*.safetensors", "model.safetensors.index.json")
# Pickled weights run code when loaded, so they are fetched only on request (allow_pickle=True).
PICKLE_FILES = ("*pytorch_model*.bin", "*pytorch_model.bin.index.json")

_TRUE = {"1", "ON", "YES", "TRUE"}
# "org/name" or "name": the characters the Hub allows, no "--" or ".." (the Hub rejects those).
_REPO_ID = re.compile(r"[\w][\w.-]{0,95}(/[\w][\w.-]{0,95})?")


@dataclass(frozen=True)
class ModelFiles:
    """Where a model's files are on this machine.

    Attributes:
        root: Folder holding config.json, tokenizer and weights (a cache snapshot for a Hub id).
        gguf_file: The chosen GGUF file, when the model is loaded from one.
    """

    root: Path
    gguf_file: Path | None = None

    def path(self, name: str) -> Path | None:
        """Return `root / name` if that file exists, else None."""
        candidate = self.root / name
        return candidate if candidate.exists() else None


def hub_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Return the Hugging Face hub cache folder, reading the environment now.

    Args:
        cache_dir: An explicit folder; wins over HF_HUB_CACHE, HUGGINGFACE_HUB_CACHE and HF_HOME.

    Returns:
        The folder that holds (or would hold) `models--org--name` entries.
    """
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if env:
        return Path(os.path.expandvars(env)).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    home = os.environ.get("HF_HOME") or os.path.join(xdg, "huggingface")
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def hub_offline() -> bool:
    """Return True when HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set to a true value now."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in _TRUE


def resolve_model(
    model: str | os.PathLike,
    *,
    revision: str | None = None,
    gguf_file: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    allow_pickle: bool = False,
) -> ModelFiles:
    """Find (downloading if needed) the files of a model.

    Args:
        model: A local folder, a path to a `.gguf` file, or a Hub repo id ("org/name" or "name").
        revision: Branch, tag or commit hash of a Hub repo (default "main"); ignored for local paths.
        gguf_file: A GGUF file inside the folder or repo to load instead of safetensors weights.
        cache_dir: Hub cache folder; defaults to HF_HUB_CACHE / HF_HOME as huggingface_hub does.
        token: Hub token for gated or private repos (True: the saved login).
        allow_pickle: Also fetch pickled `pytorch_model*.bin` weights when a repo has no safetensors.

    Returns:
        The resolved `ModelFiles`.

    Raises:
        ModelNotFoundError: Nothing was found; the message lists every place looked in.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        return _with_gguf(path.absolute(), gguf_file)
    if path.is_file():
        return _local_file(path.absolute(), gguf_file)
    repo_id = os.fspath(model)
    looked = [f"local path {path.absolute()}: not an existing file or folder"]
    if repo_id.lower().endswith(".gguf") or not _is_repo_id(repo_id):
        raise ModelNotFoundError(
            f"Could not find model {repo_id!r}: {looked[0]}, and it is not a Hugging Face repo id "
            "('org/name' or 'name'). Check the path, or pass a repo id."
        )
    cache = hub_cache_dir(cache_dir)
    hub_error: Exception | None = None
    if hub_offline():
        looked.append("Hugging Face Hub: skipped because offline mode is on (HF_HUB_OFFLINE=1)")
    else:
        try:
            root = _download(repo_id, revision, gguf_file, cache, token, allow_pickle)
        # NOTE: a broad catch on purpose. Network failures surface as requests, httpx, OSError or
        # huggingface_hub errors depending on its version; each one falls back to the cache, and
        # the error is chained and quoted in the message if the cache has nothing either.
        except Exception as err:
            hub_error = err
            looked.append(f"Hugging Face Hub: tried, failed with {type(err).__name__}: {err}")
        else:
            return _with_gguf(root, gguf_file)
    snapshot, cache_note = _cached_snapshot(repo_id, revision, cache)
    if snapshot is not None:
        if hub_error is not None:
            logger.warning(
                "Download of %s failed (%s); using cached %s", repo_id, hub_error, snapshot
            )
        return _with_gguf(snapshot, gguf_file)
    looked.insert(1, f"Hugging Face cache {cache_note}")
    raise ModelNotFoundError(
        _not_found_message(repo_id, revision, looked, hub_error)
    ) from hub_error


def find_weight_files(files: ModelFiles, *, allow_pickle: bool = False) -> list[Path]:
    """List the weight files of a resolved model, in loading order.

    Args:
        files: A resolved model; if it has a `gguf_file`, that file is the weights.
        allow_pickle: Accept `pytorch_model.bin` (pickled, runs code when loaded) when no
            safetensors file exists.

    Returns:
        The shards of `model.safetensors.index.json`, else `model.safetensors`, else every
        `*.safetensors` file, else (with allow_pickle) the pickled PyTorch weights.

    Raises:
        WeightsError: No usable weights, or an index names a shard that is not there.
    """
    if files.gguf_file is not None:
        return [files.gguf_file]
    root = files.root
    if not root.is_dir():
        raise WeightsError(f"Model folder {root} does not exist; resolve the model again.")
    if (root / "model.safetensors.index.json").is_file():
        return _shards(root / "model.safetensors.index.json")
    if (root / "model.safetensors").is_file():
        return [root / "model.safetensors"]
    if found := sorted(root.glob("*.safetensors")):
        return found
    pickled = _pickled_weights(root)
    if pickled and allow_pickle:
        return pickled
    if pickled:
        raise WeightsError(
            f"{root} holds only pickled PyTorch weights ({', '.join(p.name for p in pickled)}). "
            "Loading a pickle can run arbitrary code from the file, so it is off by default. "
            "If you trust the source, pass allow_pickle=True; or convert the weights to safetensors."
        )
    present = ", ".join(sorted(p.name for p in root.iterdir())) or "none"
    raise WeightsError(
        f"No weights found in {root}: expected model.safetensors.index.json, model.safetensors or "
        f"*.safetensors (or pytorch_model.bin with allow_pickle=True). Files there: {present}. "
        "Pass the folder that holds the weights, or a GGUF file with gguf_file=."
    )


def _is_repo_id(text: str) -> bool:
    return bool(_REPO_ID.fullmatch(text)) and "--" not in text and ".." not in text


def _local_file(path: Path, gguf_file: str | None) -> ModelFiles:
    if path.suffix.lower() != ".gguf":
        raise ModelNotFoundError(
            f"{path} is a file but not a .gguf file. Pass the folder that holds the model's "
            f"files ({path.parent}) instead."
        )
    if gguf_file is not None and Path(gguf_file).name != path.name:
        raise ModelNotFoundError(
            f"model={str(path)!r} is a GGUF file but gguf_file={gguf_file!r} names another one. "
            "Pass either the .gguf path alone, or its folder plus gguf_file=."
        )
    return ModelFiles(path.parent, path)


def _with_gguf(root: Path, gguf_file: str | None) -> ModelFiles:
    if gguf_file is None:
        return ModelFiles(root)
    path = root / gguf_file
    if path.is_file():
        return ModelFiles(root, path)
    present = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.gguf"))
    raise ModelNotFoundError(
        f"gguf_file={gguf_file!r} is not in {root}. GGUF files there: "
        f"{', '.join(present) or 'none'}. Pass one of them as gguf_file=, or the .gguf path itself."
    )


def _download(
    repo_id: str,
    revision: str | None,
    gguf_file: str | None,
    cache: Path,
    token: str | bool | None,
    allow_pickle: bool,
) -> Path:
    """Fetch only the files a model needs; return the snapshot folder."""
    kwargs = {"revision": revision, "cache_dir": str(cache), "token": token}
    if gguf_file is not None:
        patterns = [gguf_file, *SMALL_FILES]
        return Path(snapshot_download(repo_id, allow_patterns=patterns, **kwargs))
    patterns = [*SMALL_FILES, *SAFETENSORS_FILES]
    root = Path(snapshot_download(repo_id, allow_patterns=patterns, **kwargs))
    if allow_pickle and not any(root.glob("*.safetensors")):
        # Second pass only when there are no safetensors, so a repo holding both formats is not
        # downloaded twice.
        root = Path(snapshot_download(repo_id, allow_patterns=list(PICKLE_FILES), **kwargs))
    return root


def _cached_snapshot(repo_id: str, revision: str | None, cache: Path) -> tuple[Path | None, str]:
    """Return the cached snapshot folder for `revision`, or None and what was found instead."""
    repo_dir = cache / f"models--{repo_id.replace('/', '--')}"
    if not repo_dir.is_dir():
        return None, f"{repo_dir}: does not exist"
    rev = revision or "main"
    ref = repo_dir / "refs" / rev
    # A ref file holds the commit hash of a branch or tag; otherwise `rev` may itself be a hash.
    commit = ref.read_text().strip() if ref.is_file() else rev
    snapshot = repo_dir / "snapshots" / commit
    if snapshot.is_dir():
        return snapshot, ""
    refs_dir = repo_dir / "refs"
    refs = sorted(p.name for p in refs_dir.iterdir()) if refs_dir.is_dir() else []
    return None, (
        f"{repo_dir}: no snapshot for revision {rev!r} (cached refs: {', '.join(refs) or 'none'})"
    )


def _not_found_message(
    repo_id: str, revision: str | None, looked: list[str], hub_error: Exception | None
) -> str:
    todo = ["check the repo id and revision", "or pass the path of a local model folder"]
    if hub_offline():
        todo.append("to download, set HF_HUB_OFFLINE=0 on a machine that can reach the Hub")
    elif hub_error is not None:
        todo.append("check the network connection to huggingface.co")
    todo += [
        "for a gated or private repo, accept its licence on the Hub and log in (`hf auth login`) "
        "or pass token=",
        "if the model was downloaded to another cache, pass cache_dir= or set HF_HUB_CACHE",
    ]
    places = "\n".join(f"  - {place}" for place in looked)
    return (
        f"Could not find model {repo_id!r} (revision {revision or 'main'!r}). Looked in:\n"
        f"{places}\nWhat to do: {'; '.join(todo)}."
    )


def _shards(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise WeightsError(
            f"{index} is not a valid weights index (needs a 'weight_map' object): {err}. "
            "Download it again."
        ) from err
    names = list(dict.fromkeys(weight_map.values()))  # unique, in first-seen order
    shards = [index.parent / name for name in names]
    for shard in shards:
        if not shard.is_file():
            raise WeightsError(
                f"{index} lists shard {shard.name!r}, which is missing from {index.parent}. "
                "The download is incomplete: fetch the model again."
            )
    return shards


def _pickled_weights(root: Path) -> list[Path]:
    if (root / "pytorch_model.bin.index.json").is_file():
        return _shards(root / "pytorch_model.bin.index.json")
    single = root / "pytorch_model.bin"
    return [single] if single.is_file() else []
