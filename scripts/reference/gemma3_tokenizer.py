"""The Gemma 3 tokenizer, rebuilt as a real SentencePiece model from the GGUF metadata.

The GGUF (gemma-3-270m-q4_k_m.gguf) says tokenizer.ggml.model = "llama", i.e.
SentencePiece BPE, with 262144 pieces, their scores (tokenizer.ggml.scores)
and types (tokenizer.ggml.token_type), add_bos_token = true (BOS id 2),
add_space_prefix = false. `build` turns that into a
`sentencepiece_model_pb2.ModelProto` and loads it with
`SentencePieceProcessor(model_proto=...)`, so the BPE itself is
SentencePiece's own code, independent of omex and of HF `tokenizers`:

* every piece with its score and type (GGUF 1 normal, 2 unknown, 3 control,
  4 user defined, 5 unused, 6 byte -> the proto's NORMAL, UNKNOWN, CONTROL,
  USER_DEFINED, UNUSED, BYTE);
* normalizer_spec: name "identity" (no NFKC), add_dummy_prefix False (the
  GGUF's add_space_prefix), remove_extra_whitespaces False,
  escape_whitespaces True (" " -> "▁");
* trainer_spec: model_type BPE, byte_fallback True (characters without a
  piece become <0xNN> byte pieces), unk/bos/eos/pad ids and pieces from the
  GGUF.

Decisions:

* Added tokens. Hugging Face's Gemma tokenizer lists the control tokens
  (<bos>, <start_of_turn>, <end_of_turn>, <unusedN>, ...) and the
  user-defined ones ("\\n\\n", "<table>", "\\t\\t", runs of spaces, ...) as
  added tokens, which are matched whole in the input text before the model
  sees it. SentencePiece never matches control pieces in text, so `encode`
  first splits the text on the strings of every UNKNOWN, CONTROL and
  USER_DEFINED piece - leftmost match, longest first at one position, as
  HF's added-token matcher (and llama.cpp's special-token partition) does -
  emits their ids, and encodes each stretch between them with SentencePiece
  on its own (no dummy prefix, so a stretch starting after <start_of_turn>
  gets no "▁").
* The GGUF writes user-defined whitespace pieces with real spaces ("  ",
  ids 138-167; llama.cpp's converter turns the "▁▁" of the original model
  into "  "), so they are matched as literal spaces in the raw text. That
  is what the original model does for runs of spaces too ("a  b" ->
  a, "  ", b); it differs only for text that contains "▁" itself, which the
  test data avoids.
* BOS (id 2) is prepended when add_bos (the default), also before an empty
  text and even if the text starts with "<bos>" (the test data avoids
  that). No EOS (add_eos_token is false).
* `decode` is SentencePiece's decode of each stretch of non-added ids, with
  added tokens written as their text (control tokens included).

CLI: `python3 scripts/reference/gemma3_tokenizer.py [--model PATH] [--no-bos]
"some text"` prints the ids. The model is `--model`, else $OMEX_GEMMA3_GGUF,
else $OMEX_CACHE (default ~/.cache/omex)/models/gemma-3-270m-q4_k_m.gguf.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from gguf import GGUFReader
from sentencepiece import SentencePieceProcessor
from sentencepiece import sentencepiece_model_pb2 as pb2

MODEL_FILE = "gemma-3-270m-q4_k_m.gguf"

# GGUF token_type -> ModelProto.SentencePiece.Type
_TYPES = {
    1: pb2.ModelProto.SentencePiece.NORMAL,
    2: pb2.ModelProto.SentencePiece.UNKNOWN,
    3: pb2.ModelProto.SentencePiece.CONTROL,
    4: pb2.ModelProto.SentencePiece.USER_DEFINED,
    5: pb2.ModelProto.SentencePiece.UNUSED,
    6: pb2.ModelProto.SentencePiece.BYTE,
}
# GGUF types whose strings are matched whole in the text (HF's added tokens).
_ADDED_TYPES = (2, 3, 4)


def default_model_path() -> Path:
    env = os.environ.get("OMEX_GEMMA3_GGUF")
    if env:
        return Path(env)
    cache = Path(os.environ.get("OMEX_CACHE", Path.home() / ".cache/omex"))
    return cache / "models" / MODEL_FILE


class Tok:
    def __init__(self, sp: SentencePieceProcessor, added: dict[str, int], bos_id: int):
        self.sp = sp
        self.added = added  # text -> id
        self.added_ids = set(added.values())
        self.bos_id = bos_id
        # Longest first: at one position the alternation takes the longest added token.
        alts = sorted(added, key=lambda s: (-len(s), s))
        self._split = re.compile("|".join(re.escape(a) for a in alts)) if alts else None

    def _pieces(self, text: str):
        """(added id, None) for each added token in `text`, (None, stretch) for the text between."""
        pos = 0
        if self._split is not None:
            for m in self._split.finditer(text):
                if m.start() > pos:
                    yield None, text[pos:m.start()]
                yield self.added[m.group(0)], None
                pos = m.end()
        if pos < len(text):
            yield None, text[pos:]

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        ids = [self.bos_id] if add_bos else []
        for tid, stretch in self._pieces(text):
            if tid is not None:
                ids.append(tid)
            else:
                ids.extend(self.sp.encode(stretch, out_type=int))
        return ids

    def decode(self, ids) -> str:
        out, run = [], []
        for i in ids:
            i = int(i)
            if i in self.added_ids:
                if run:
                    out.append(self.sp.decode(run))
                    run = []
                out.append(self.sp.id_to_piece(i))
            else:
                run.append(i)
        if run:
            out.append(self.sp.decode(run))
        return "".join(out)


def _field(reader: GGUFReader, key: str, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def model_proto(reader: GGUFReader) -> pb2.ModelProto:
    if _field(reader, "tokenizer.ggml.model") != "llama":
        raise ValueError("expected a SentencePiece (llama) tokenizer")
    tokens: list[str] = _field(reader, "tokenizer.ggml.tokens")
    scores: list[float] = _field(reader, "tokenizer.ggml.scores")
    types: list[int] = _field(reader, "tokenizer.ggml.token_type")
    if not (len(tokens) == len(scores) == len(types)):
        raise ValueError("tokens, scores and token_type differ in length")

    m = pb2.ModelProto()
    for t, s, ty in zip(tokens, scores, types):
        p = m.pieces.add()
        p.piece = t
        p.score = float(s)
        p.type = _TYPES[int(ty)]

    ts = m.trainer_spec
    ts.model_type = pb2.TrainerSpec.BPE
    ts.vocab_size = len(tokens)
    ts.byte_fallback = True
    for name in ("unk", "bos", "eos", "pad"):
        key = {"unk": "unknown"}.get(name, name)
        tid = _field(reader, f"tokenizer.ggml.{key}_token_id")
        setattr(ts, f"{name}_id", -1 if tid is None else int(tid))
        if tid is not None:
            setattr(ts, f"{name}_piece", tokens[int(tid)])

    ns = m.normalizer_spec
    ns.name = "identity"
    ns.add_dummy_prefix = bool(_field(reader, "tokenizer.ggml.add_space_prefix", True))
    ns.remove_extra_whitespaces = False
    ns.escape_whitespaces = True
    return m


def build(reader_or_path=None) -> Tok:
    if reader_or_path is None:
        reader_or_path = default_model_path()
    reader = reader_or_path if isinstance(reader_or_path, GGUFReader) else GGUFReader(str(reader_or_path))
    m = model_proto(reader)
    if m.normalizer_spec.add_dummy_prefix:
        raise ValueError("this reference is for Gemma 3 (add_space_prefix false)")
    sp = SentencePieceProcessor(model_proto=m.SerializeToString())
    tokens = _field(reader, "tokenizer.ggml.tokens")
    types = _field(reader, "tokenizer.ggml.token_type")
    added: dict[str, int] = {}
    for i, (t, ty) in enumerate(zip(tokens, types)):
        if int(ty) in _ADDED_TYPES:
            added.setdefault(t, i)
    bos = _field(reader, "tokenizer.ggml.bos_token_id")
    if not _field(reader, "tokenizer.ggml.add_bos_token", False) or bos is None:
        raise ValueError("expected add_bos_token with a BOS id")
    assert sp.get_piece_size() == len(tokens) and sp.bos_id() == int(bos)
    return Tok(sp, added, int(bos))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--no-bos", action="store_true")
    ap.add_argument("text")
    args = ap.parse_args(argv)
    tok = build(args.model)
    print(tok.encode(args.text, add_bos=not args.no_bos))
    return 0


if __name__ == "__main__":
    sys.exit(main())
