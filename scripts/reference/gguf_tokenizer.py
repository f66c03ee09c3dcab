"""The SmolLM2 tokenizer, rebuilt with HF `tokenizers` from the GGUF metadata.

The GGUF says tokenizer.ggml.model = "gpt2" (byte-level BPE) and
tokenizer.ggml.pre = "smollm". llama.cpp's "smollm" pre-tokenizer first splits
every digit on its own (\\p{N}) and then applies the GPT-2 regex; the HF
equivalent is Sequence[Digits(individual_digits=True),
ByteLevel(add_prefix_space=False, use_regex=True)]. Tokens with
token_type == 3 (CONTROL: <|endoftext|>, <|im_start|>, <|im_end|>, ...) are
special tokens that are matched whole in the input text.

No BOS/EOS is added (tokenizer.ggml.add_bos_token = false), so `encode`
returns exactly the ids of the text.

A qwen2 GGUF (tokenizer.ggml.pre = "qwen2") gets Qwen2.5's tokenizer instead
(NFC, the Qwen2 split regex, ByteLevel), built by `build_qwen2` of
scripts/tokenizer_reference.py, the source of omex's tokenizer test data.
"""

from __future__ import annotations

import sys
from pathlib import Path

from gguf import GGUFReader
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

TOKEN_TYPE_CONTROL = 3


def build_tokenizer(reader: GGUFReader) -> Tokenizer:
    def field(key):
        return reader.fields[key].contents()

    if field("tokenizer.ggml.model") != "gpt2":
        raise ValueError("expected a byte-level BPE (gpt2) tokenizer")
    if field("tokenizer.ggml.pre") == "qwen2":
        return build_qwen2_tokenizer(reader)
    if field("tokenizer.ggml.pre") != "smollm":
        raise ValueError(f"unexpected pre-tokenizer {field('tokenizer.ggml.pre')!r}")
    if field("tokenizer.ggml.add_bos_token"):
        raise ValueError("this reference does not add BOS; the file asks for it")

    tokens: list[str] = field("tokenizer.ggml.tokens")
    token_types: list[int] = field("tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in field("tokenizer.ggml.merges")]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ValueError("duplicate token strings in the vocabulary")

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    specials = [AddedToken(tokens[i], special=True, normalized=False)
                for i, kind in enumerate(token_types) if kind == TOKEN_TYPE_CONTROL]
    tok.add_special_tokens(specials)
    # Adding tokens that already are in the vocabulary must not renumber them.
    for t in specials:
        assert tok.token_to_id(t.content) == vocab[t.content]
    return tok


def build_qwen2_tokenizer(reader: GGUFReader) -> Tokenizer:
    """Qwen2.5's tokenizer from the GGUF's vocab and merges (scripts/tokenizer_reference.py's `build_qwen2`)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tokenizer_reference import build_qwen2

    def field(key):
        return reader.fields[key].contents()

    if field("tokenizer.ggml.add_bos_token"):
        raise ValueError("this reference does not add BOS; the file asks for it")
    return build_qwen2({
        "model": field("tokenizer.ggml.model"), "pre": field("tokenizer.ggml.pre"),
        "tokens": field("tokenizer.ggml.tokens"), "token_types": field("tokenizer.ggml.token_type"),
        "merges": field("tokenizer.ggml.merges"),
    })


def encode(tok: Tokenizer, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False).ids


def decode(tok: Tokenizer, ids: list[int]) -> str:
    return tok.decode(ids, skip_special_tokens=False)
