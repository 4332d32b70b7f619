"""The minimal greedy loop rejects inputs it cannot continue, with pipeserve errors."""

from __future__ import annotations

import pytest

from pipeserve.errors import InvalidInputError
from pipeserve.generation.greedy import greedy_generate
from pipeserve.models.auto import load_model
from tests.factories.models import write_tiny_model

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_model(write_tiny_model(tmp_path_factory.mktemp("g"), "llama"), device="cpu").model


@pytest.mark.parametrize(
    ("prompts", "max_new_tokens", "message"),
    [
        ([], 4, "at least one token"),
        ([[5, 6], []], 4, "at least one token"),
        ([[5, 6]], 0, "max_new_tokens must be at least 1, got 0"),
    ],
)
def test_bad_input(model, prompts, max_new_tokens, message):
    with pytest.raises(InvalidInputError, match=message):
        greedy_generate(model, prompts, max_new_tokens)


def test_stops_at_eos_and_keeps_it(model):
    free = greedy_generate(model, [[5, 6, 7]], max_new_tokens=8)[0]
    stop = free[2]
    assert (
        greedy_generate(model, [[5, 6, 7]], 8, eos_token_ids={stop})[0]
        == free[: free.index(stop) + 1]
    )
