"""Tiny tokenizers trained in a blink, written as Hugging Face folders that AutoTokenizer loads.

Two styles cover the tokenizers real checkpoints ship:

- `write_bpe_tokenizer`: byte-level BPE (GPT-2, Llama-3, Qwen, SmolLM): "Ġ" marks spaces, every byte
  is in the alphabet, ChatML special tokens.
- `write_sentencepiece_tokenizer`: a Llama-2-style SentencePiece BPE: "▁" marks spaces, a prefix space
  at the start of the text, `<0x00>`..`<0xFF>` byte-fallback tokens, `<s>` added in front.

Every id is below `vocab_size`, so a tiny model with `vocab_size` embeddings can consume any output.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

CORPUS = """\
The quick brown fox jumps over the lazy dog. The dog did not mind; it was asleep in the sun.
Once upon a time, there was a little girl who lived in a village near the forest. Whenever she
went out, the little girl wore a red riding cloak, so everyone in the village called her Little
Red Riding Hood. One morning, she said to her mother: "I'm going to visit Grandmother today!"
It's a truth universally acknowledged that a single model, in possession of a good tokenizer,
must be in want of a chat template. We don't know; you'll see; they've said so; I'd rather not.
Machine learning models process text as numbers. A tokenizer splits the text into pieces and
maps every piece to an integer id; the model reads the ids, and writes new ones, one at a time.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 256 1024 2048 3.14159 2.71828 1,000,000 -17 +3 50% $9.99
Dates: 2024-01-15, 12/31/1999, 07:45:00. Phone: (555) 123-4567. Email: someone@example.com.
def fibonacci(n: int) -> int:
    if n < 2:
        return n
    return fibonacci(n - 1) + fibonacci(n - 2)

for i in range(10):
\tprint(f"{i}: {fibonacci(i)}")  # tabs and spaces

class Stack:
    def __init__(self):
        self.items = []
    def push(self, item):
        self.items.append(item)
{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}
<html><body><p>Hello, world!</p></body></html>
Café, naïve, façade, résumé, jalapeño, Straße, Ångström, Ærø, crème brûlée, São Paulo, Zürich.
El niño comió manzanas. Der Bär läuft schnell. Les élèves étudient à l'école. Ça va très bien.
Привет, как дела? Ελληνικά γράμματα. שלום עולם. مرحبا بالعالم. नमस्ते दुनिया.
日本語のテキストです。中文文本测试。今天天气很好。한국어 텍스트입니다.
Emoji: 😀 😂 🎉 👍 🚀 ❤️ 🐍 🦀 👩‍💻 🇫🇷 ✨ — and symbols: © ® ™ € £ ¥ § ¶ • … ≠ ≤ ≥ ∞ √ π.
Multiple   spaces,\ttabs,\n\nblank lines,   and    trailing spaces\x20\x20\x20
The end. THE END! the end? The End...
"""

# Repeated so frequent pairs stand out and merges learn whole words.
TRAINING_TEXT = [line for line in CORPUS.splitlines() for _ in range(3)]

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

BPE_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Added but not special: they are matched whole in text and survive `skip_special_tokens`.
BPE_ADDED_TOKENS = ["<tool_call>", "</tool_call>"]
SP_SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]


def write_bpe_tokenizer(
    folder: str | Path,
    *,
    vocab_size: int = 512,
    chat_template: str | None = CHATML,
    add_bos: bool = False,
) -> Path:
    """Train a byte-level BPE tokenizer and write it as a Hugging Face tokenizer folder.

    Args:
        folder: Where to write `tokenizer.json` and `tokenizer_config.json` (created if missing).
        vocab_size: Upper bound on the number of ids, added tokens included (at least 300).
        chat_template: Stored in `tokenizer_config.json`; None writes no template.
        add_bos: Add `<|endoftext|>` in front of every encoding with a post-processor, as Llama-3's
            tokenizer does with `<|begin_of_text|>`; by default nothing is added, as in GPT-2.

    Returns:
        The folder, as a Path.
    """
    reserved = len(BPE_SPECIAL_TOKENS) + len(BPE_ADDED_TOKENS) + 256
    if vocab_size < reserved + 30:
        raise ValueError(f"vocab_size must be at least {reserved + 30}, got {vocab_size}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(BPE_ADDED_TOKENS),  # leave room for the added tokens
        min_frequency=2,
        special_tokens=BPE_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(TRAINING_TEXT, trainer)
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in BPE_ADDED_TOKENS])
    if add_bos:
        bos_id = tokenizer.token_to_id("<|endoftext|>")
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<|endoftext|> $A",
            pair="<|endoftext|> $A <|endoftext|> $B",
            special_tokens=[("<|endoftext|>", bos_id)],
        )
    else:
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|endoftext|>",
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "model_max_length": 2048,
        "clean_up_tokenization_spaces": False,
    }
    if chat_template is not None:
        config["chat_template"] = chat_template
    return _write(folder, tokenizer, config, vocab_size)


def write_sentencepiece_tokenizer(folder: str | Path, *, vocab_size: int = 512) -> Path:
    """Train a Llama-2-style SentencePiece BPE tokenizer and write it as a tokenizer folder.

    The layout is Llama-2's: ids 0-2 are `<unk>`, `<s>`, `</s>`, ids 3-258 the byte-fallback tokens
    `<0x00>`..`<0xFF>`, then the learned pieces. Characters outside the learned alphabet (most CJK
    and emoji here) are encoded as their UTF-8 bytes.

    Args:
        folder: Where to write `tokenizer.json` and `tokenizer_config.json` (created if missing).
        vocab_size: Upper bound on the number of ids (at least 400).

    Returns:
        The folder, as a Path.
    """
    if vocab_size < 400:
        raise ValueError(f"vocab_size must be at least 400, got {vocab_size}")
    # Trained with split=True so no merge crosses a word boundary (as in SentencePiece); encoded
    # with split=False (below) as Llama-2's tokenizer.json does, which gives the same pieces.
    trainee = Tokenizer(models.BPE(unk_token="<unk>"))
    trainee.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(BYTE_TOKENS),
        min_frequency=2,
        special_tokens=SP_SPECIAL_TOKENS,
        # Only the commonest characters: the rarer ones must come out as byte-fallback tokens.
        # Chosen here, not by limit_alphabet alone, whose ties break differently on every run.
        initial_alphabet=_common_characters(90),
        limit_alphabet=90,
        show_progress=False,
    )
    trainee.train_from_iterator(TRAINING_TEXT, trainer)
    learned = json.loads(trainee.to_str())["model"]

    # Put the byte tokens after the special tokens, shifting the learned pieces up.
    pieces = sorted(learned["vocab"].items(), key=lambda item: item[1])
    ordered = SP_SPECIAL_TOKENS + BYTE_TOKENS + [p for p, _ in pieces if p not in SP_SPECIAL_TOKENS]
    vocab = {piece: i for i, piece in enumerate(ordered)}
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    tokenizer = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True)
    )
    tokenizer.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in SP_SPECIAL_TOKENS]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="first", split=False
    )
    tokenizer.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": None,
        "model_max_length": 4096,
        "clean_up_tokenization_spaces": False,
        "legacy": False,
    }
    return _write(folder, tokenizer, config, vocab_size)


def _common_characters(count: int) -> list[str]:
    counts = Counter(char for line in TRAINING_TEXT for char in "▁" + line.replace(" ", "▁"))
    return sorted(counts, key=lambda char: (-counts[char], char))[:count]


def _write(folder: str | Path, tokenizer: Tokenizer, config: dict, vocab_size: int) -> Path:
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    if size > vocab_size:  # a guard on this factory, not on user input
        raise RuntimeError(f"trained {size} ids, more than vocab_size={vocab_size}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
    return folder
