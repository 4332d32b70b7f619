"""The `pipeserve` command line, called the way a user calls it."""

from __future__ import annotations

import pytest
import torch

from pipeserve.cli import main
from tests.factories.models import write_tiny_model

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("cli"), "qwen2")


def test_run_prints_the_reference_greedy_text(folder, capsys):
    prompt = "The quick brown fox"
    assert (
        main(
            [
                "run",
                "text-generation",
                prompt,
                "--model",
                str(folder),
                "--max-new-tokens",
                "8",
                "--no-chat",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out

    tok = transformers.AutoTokenizer.from_pretrained(folder)
    ref = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    ids = tok(prompt, return_tensors="pt").input_ids
    eos = [tok.eos_token_id, ref.generation_config.eos_token_id]
    new = ref.generate(
        ids,
        max_new_tokens=8,
        do_sample=False,
        pad_token_id=0,
        eos_token_id=eos,
    )[0, ids.shape[1] :]
    assert out.rstrip("\n") == tok.decode(new, skip_special_tokens=True)


def test_run_with_chat_template(folder, capsys):
    assert (
        main(["run", "text-generation", "Hi", "--model", str(folder), "--max-new-tokens", "4"]) == 0
    )
    assert capsys.readouterr().err.startswith("[")


def test_info_describes_the_model(folder, capsys):
    assert main(["info", "--model", str(folder), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "Qwen2ForCausalLM" in out and "float32" in out and "cpu" in out


def test_bad_model_is_a_clear_error(tmp_path, capsys):
    assert main(["run", "text-generation", "x", "--model", str(tmp_path / "nope")]) == 2
    assert "pipeserve: error:" in capsys.readouterr().err


def test_unknown_task(folder, capsys):
    assert main(["run", "summarise-everything", "x", "--model", str(folder)]) == 2
    assert "unknown task" in capsys.readouterr().err


def test_empty_prompt_is_a_clear_error(folder, capsys):
    assert main(["run", "text-generation", "", "--model", str(folder), "--no-chat"]) == 2
    assert "at least one token" in capsys.readouterr().err


def test_non_positive_max_new_tokens_is_rejected(folder, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "text-generation", "x", "--model", str(folder), "--max-new-tokens", "0"])
    assert exit_info.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err
