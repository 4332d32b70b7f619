"""Tests for loading/resolve.py: local paths, the HF cache layout, downloads (monkeypatched), weights."""

from __future__ import annotations

import json
from fnmatch import fnmatch
from pathlib import Path

import pytest

from pipeserve.errors import ModelNotFoundError, WeightsError
from pipeserve.loading import resolve
from pipeserve.loading.resolve import ModelFiles, find_weight_files, resolve_model

COMMIT = "a" * 40
OTHER_COMMIT = "b" * 40


@pytest.fixture(autouse=True)
def hub_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Clear HF env vars, run from an empty folder, and fail any test that reaches the network."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the default cache lands in tmp_path too
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)

    def no_network(*args: object, **kwargs: object) -> None:
        # pytest.fail raises a BaseException, so resolve_model's `except Exception` cannot hide it.
        pytest.fail("snapshot_download called without being monkeypatched")

    monkeypatch.setattr(resolve, "snapshot_download", no_network)


def write(path: Path, text: str = "{}") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def cached_repo(
    cache: Path, repo_id: str, refs: dict[str, str], files: dict[str, list[str]]
) -> Path:
    """Build `models--org--name/` with refs/<name> -> commit and snapshots/<commit>/<files>."""
    repo_dir = cache / f"models--{repo_id.replace('/', '--')}"
    for ref, commit in refs.items():
        write(repo_dir / "refs" / ref, commit)
    for commit, names in files.items():
        for name in names:
            write(repo_dir / "snapshots" / commit / name)
    return repo_dir


class RecordingDownload:
    """Stands in for snapshot_download: records each call and fills a fake snapshot folder."""

    def __init__(self, snapshot: Path, repo_files: list[str]) -> None:
        self.snapshot, self.repo_files, self.calls = snapshot, repo_files, []

    def __call__(self, repo_id: str, **kwargs: object) -> str:
        self.calls.append({"repo_id": repo_id, **kwargs})
        for name in self.repo_files:
            if any(fnmatch(name, pattern) for pattern in kwargs["allow_patterns"]):
                write(self.snapshot / name)
        return str(self.snapshot)


# --- local paths ---------------------------------------------------------------------------------


def test_local_folder(tmp_path: Path) -> None:
    write(tmp_path / "m" / "config.json")
    files = resolve_model(tmp_path / "m")
    assert files == ModelFiles(tmp_path / "m")
    assert files.path("config.json") == tmp_path / "m" / "config.json"
    assert files.path("tokenizer.json") is None


def test_gguf_path(tmp_path: Path) -> None:
    gguf = write(tmp_path / "m" / "tiny.Q4_0.gguf", "")
    assert resolve_model(str(gguf)) == ModelFiles(tmp_path / "m", gguf)


def test_folder_plus_gguf_file(tmp_path: Path) -> None:
    gguf = write(tmp_path / "m" / "tiny.Q8_0.gguf", "")
    assert resolve_model(tmp_path / "m", gguf_file="tiny.Q8_0.gguf") == ModelFiles(
        tmp_path / "m", gguf
    )


def test_missing_gguf_file_lists_present_ones(tmp_path: Path) -> None:
    write(tmp_path / "m" / "a.Q4_0.gguf", "")
    write(tmp_path / "m" / "b.Q8_0.gguf", "")
    with pytest.raises(ModelNotFoundError, match="not in") as info:
        resolve_model(tmp_path / "m", gguf_file="c.gguf")
    assert "a.Q4_0.gguf" in str(info.value) and "b.Q8_0.gguf" in str(info.value)


def test_non_gguf_file_asks_for_folder(tmp_path: Path) -> None:
    weights = write(tmp_path / "m" / "model.safetensors", "")
    with pytest.raises(ModelNotFoundError, match="not a .gguf file"):
        resolve_model(weights)


@pytest.mark.parametrize("model", ["./missing-folder", "/no/such/dir/model", "missing.gguf"])
def test_missing_path_is_not_looked_up_on_hub(model: str) -> None:
    with pytest.raises(ModelNotFoundError, match="not an existing file or folder"):
        resolve_model(model)


# --- Hugging Face cache --------------------------------------------------------------------------


def test_cache_from_hf_hub_cache_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "hub-cache"
    repo_dir = cached_repo(cache, "org/name", {"main": COMMIT}, {COMMIT: ["config.json"]})
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model("org/name").root == repo_dir / "snapshots" / COMMIT


def test_cache_from_hf_home_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo_dir = cached_repo(
        tmp_path / "hf" / "hub", "solo", {"main": COMMIT}, {COMMIT: ["config.json"]}
    )
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "true")
    assert resolve_model("solo").root == repo_dir / "snapshots" / COMMIT


def test_cache_dir_argument_wins_over_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo_dir = cached_repo(
        tmp_path / "mine", "org/name", {"main": COMMIT}, {COMMIT: ["config.json"]}
    )
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert (
        resolve_model("org/name", cache_dir=tmp_path / "mine").root
        == repo_dir / "snapshots" / COMMIT
    )


@pytest.mark.parametrize(
    ("revision", "commit"), [("v1.0", OTHER_COMMIT), (OTHER_COMMIT, OTHER_COMMIT)]
)
def test_cache_revision_by_ref_or_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, revision: str, commit: str
) -> None:
    files = {COMMIT: ["config.json"], OTHER_COMMIT: ["config.json"]}
    repo_dir = cached_repo(tmp_path, "org/name", {"main": COMMIT, "v1.0": OTHER_COMMIT}, files)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model("org/name", revision=revision).root == repo_dir / "snapshots" / commit


def test_cache_unknown_revision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cached_repo(tmp_path, "org/name", {"main": COMMIT}, {COMMIT: ["config.json"]})
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        ModelNotFoundError, match="no snapshot for revision 'v9'.*cached refs: main"
    ):
        resolve_model("org/name", revision="v9")


def test_cache_gguf_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo_dir = cached_repo(tmp_path, "org/name", {"main": COMMIT}, {COMMIT: ["m.Q4_0.gguf"]})
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    files = resolve_model("org/name", gguf_file="m.Q4_0.gguf")
    assert files.gguf_file == repo_dir / "snapshots" / COMMIT / "m.Q4_0.gguf"


def test_unknown_id_offline_lists_places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model("org/unknown")
    message = str(info.value)
    assert str(tmp_path / "cache" / "models--org--unknown") in message
    assert "local path" in message and "offline" in message and "HF_HUB_OFFLINE=0" in message


def test_default_cache_is_under_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model("org/unknown")
    assert str(tmp_path / "home" / ".cache" / "huggingface" / "hub") in str(info.value)


# --- downloads (snapshot_download monkeypatched) -------------------------------------------------

REPO_FILES = [
    "config.json",
    "tokenizer.json",
    "1_Pooling/config.json",
    "model.safetensors",
    "pytorch_model.bin",
    "model.Q4_0.gguf",
    "model.Q8_0.gguf",
    "README.md",
]


def test_download_fetches_only_safetensors_and_small_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    download = RecordingDownload(tmp_path / "snap", REPO_FILES)
    monkeypatch.setattr(resolve, "snapshot_download", download)
    files = resolve_model("org/name", revision="v1", token="hf_x")
    assert files == ModelFiles(tmp_path / "snap")
    [call] = download.calls
    assert call["repo_id"] == "org/name" and call["revision"] == "v1" and call["token"] == "hf_x"
    assert call["cache_dir"] == str(tmp_path / "cache")
    fetched = sorted(p.relative_to(tmp_path / "snap").as_posix() for p in files.root.rglob("*.*"))
    assert fetched == [
        "1_Pooling/config.json",
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    ]
    for pattern in (
        "*.safetensors",
        "model.safetensors.index.json",
        "modules.json",
        "*/config.json",
    ):
        assert pattern in call["allow_patterns"]


def test_download_allow_pickle_fetches_bin_only_without_safetensors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    download = RecordingDownload(tmp_path / "snap", ["config.json", "pytorch_model.bin"])
    monkeypatch.setattr(resolve, "snapshot_download", download)
    resolve_model("org/name")
    assert not (tmp_path / "snap" / "pytorch_model.bin").exists()
    files = resolve_model("org/name", allow_pickle=True)
    assert find_weight_files(files, allow_pickle=True) == [tmp_path / "snap" / "pytorch_model.bin"]

    both = RecordingDownload(
        tmp_path / "snap2", ["config.json", "model.safetensors", "pytorch_model.bin"]
    )
    monkeypatch.setattr(resolve, "snapshot_download", both)
    resolve_model("org/name", allow_pickle=True)
    assert len(both.calls) == 1 and not (tmp_path / "snap2" / "pytorch_model.bin").exists()


def test_download_gguf_fetches_one_gguf_and_small_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    download = RecordingDownload(tmp_path / "snap", REPO_FILES)
    monkeypatch.setattr(resolve, "snapshot_download", download)
    files = resolve_model("org/name", gguf_file="model.Q4_0.gguf")
    assert files.gguf_file == tmp_path / "snap" / "model.Q4_0.gguf"
    fetched = sorted(p.relative_to(tmp_path / "snap").as_posix() for p in files.root.rglob("*.*"))
    assert fetched == ["1_Pooling/config.json", "config.json", "model.Q4_0.gguf", "tokenizer.json"]


def test_download_gguf_not_in_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        resolve, "snapshot_download", RecordingDownload(tmp_path / "snap", REPO_FILES)
    )
    with pytest.raises(ModelNotFoundError, match="gguf_file='nope.gguf' is not in"):
        resolve_model("org/name", gguf_file="nope.gguf")


def network_down(*args: object, **kwargs: object) -> str:
    raise ConnectionError("Name or service not known")


def test_network_error_falls_back_to_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo_dir = cached_repo(tmp_path, "org/name", {"main": COMMIT}, {COMMIT: ["config.json"]})
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(resolve, "snapshot_download", network_down)
    assert resolve_model("org/name").root == repo_dir / "snapshots" / COMMIT


def test_network_error_and_empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(resolve, "snapshot_download", network_down)
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model("org/name")
    message = str(info.value)
    assert "tried, failed with ConnectionError: Name or service not known" in message
    assert str(tmp_path / "models--org--name") in message and "log in" in message
    assert isinstance(info.value.__cause__, ConnectionError)


# --- find_weight_files ---------------------------------------------------------------------------


def write_index(root: Path, name: str, shards: list[str]) -> None:
    weight_map = {f"layer.{i}.weight": shard for i, shard in enumerate(shards)}
    write(root / name, json.dumps({"metadata": {}, "weight_map": weight_map}))


def test_weights_sharded_index(tmp_path: Path) -> None:
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    write_index(tmp_path, "model.safetensors.index.json", [shards[0], shards[1], shards[1]])
    for shard in shards:
        write(tmp_path / shard, "")
    assert find_weight_files(ModelFiles(tmp_path)) == [tmp_path / s for s in shards]


def test_weights_index_missing_shard(tmp_path: Path) -> None:
    write_index(tmp_path, "model.safetensors.index.json", ["a.safetensors", "b.safetensors"])
    write(tmp_path / "a.safetensors", "")
    with pytest.raises(
        WeightsError, match="model.safetensors.index.json lists shard 'b.safetensors'"
    ):
        find_weight_files(ModelFiles(tmp_path))


def test_weights_single_file_preferred(tmp_path: Path) -> None:
    write(tmp_path / "model.safetensors", "")
    write(tmp_path / "extra.safetensors", "")
    assert find_weight_files(ModelFiles(tmp_path)) == [tmp_path / "model.safetensors"]


def test_weights_any_safetensors(tmp_path: Path) -> None:
    write(tmp_path / "b.safetensors", "")
    write(tmp_path / "a.safetensors", "")
    assert find_weight_files(ModelFiles(tmp_path)) == [
        tmp_path / "a.safetensors",
        tmp_path / "b.safetensors",
    ]


def test_weights_pickle_needs_opt_in(tmp_path: Path) -> None:
    write(tmp_path / "pytorch_model.bin", "")
    with pytest.raises(WeightsError, match="allow_pickle=True"):
        find_weight_files(ModelFiles(tmp_path))
    assert find_weight_files(ModelFiles(tmp_path), allow_pickle=True) == [
        tmp_path / "pytorch_model.bin"
    ]


def test_weights_nothing_lists_files(tmp_path: Path) -> None:
    write(tmp_path / "config.json")
    with pytest.raises(WeightsError, match=r"No weights found in .*Files there: config.json"):
        find_weight_files(ModelFiles(tmp_path))


def test_weights_gguf_is_the_weights(tmp_path: Path) -> None:
    gguf = write(tmp_path / "m.gguf", "")
    assert find_weight_files(ModelFiles(tmp_path, gguf)) == [gguf]
