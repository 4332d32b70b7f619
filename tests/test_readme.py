"""The README's Python example runs as written (on a tiny model folder, on the CPU)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.factories.models import write_tiny_model

pytest.importorskip("transformers")

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(tmp_path, capsys):
    block = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    folder = write_tiny_model(tmp_path / "model", "llama")
    code = block.replace("path/to/model-folder", str(folder)).replace('"cuda"', '"cpu"')
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    new, tokenizer = namespace["new"], namespace["tokenizer"]
    assert 0 < len(new) <= 64 and all(isinstance(t, int) for t in new)
    assert capsys.readouterr().out == tokenizer.decode(new, skip_special_tokens=True) + "\n"
