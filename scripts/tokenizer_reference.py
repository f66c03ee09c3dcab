#!/usr/bin/env python3
"""Reference data for omex's tokenizer, made with the Hugging Face `tokenizers` library.

Every expected id list in tests/data/tokenizer/ comes from here, so the Rust tests compare omex with an
independent implementation, never with omex's own earlier output.

Modes:
  (default)          write tests/data/tokenizer/*: reference ids for SmolLM2 (built from the GGUF's vocab and
                     merges with tokenizers' own components), for small synthetic GPT-2, Llama-3 and
                     SentencePiece-byte-fallback tokenizers trained here on the corpus, decode cases, and chat
                     templates rendered with jinja2 the way transformers renders them.
  --qwen2            write tests/data/tokenizer/qwen2_expected.json: reference ids for Qwen2.5 (built from the
                     Qwen2.5-Coder-0.5B GGUF's vocab and merges as Qwen2.5's tokenizer.json defines it: NFC,
                     the Qwen2 Split regex, ByteLevel) on the corpus and on tricky strings, and the GGUF's chat
                     template rendered with jinja2 (the path comes from $OMEX_QWEN05_GGUF, default
                     ~/.cache/omex/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf; scripts/fetch-model.sh
                     qwen2.5-coder-0.5b fetches it).
  --bench            time HF `encode` / `encode_batch` on the same ~1 MiB text as benches/tokenizer.rs.
  --gen-tables       write src/tokenizer/unicode_tables.rs: the \\p{L}, \\p{N}, \\s classes exactly as the
                     regex engine inside `tokenizers` (Oniguruma) sees them, and the digit set of its `Digits`.
  --gen-nfc          write src/tokenizer/nfc_tables.rs: canonical classes, decompositions and compositions for
                     the NFC normalizer (Qwen2), checked against the NFC of `tokenizers`.
  --check-dir DIR    load DIR/tokenizer.json (one omex wrote) with HF and compare its ids with the expected
                     ids (--expected NAME, default smollm2): proves HF reads what `write_tokenizer_dir` writes.
                     The Rust tests keep what they write under $OMEX_TOKENIZER_OUT when it is set.

Needs: pip install tokenizers gguf numpy jinja2.  The SmolLM2 GGUF path comes from $OMEX_SMOLLM2_GGUF
(default ~/.cache/omex/models/SmolLM2-135M-Instruct.Q4_1.gguf).
"""
import argparse
import json
import os
import random
import sys
import time
from collections import Counter
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
from tokenizers import pre_tokenizers as pre
from tokenizers import trainers

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "tokenizer"
DEFAULT_GGUF = Path.home() / ".cache/omex/models/SmolLM2-135M-Instruct.Q4_1.gguf"
# The HF-built SmolLM2 tokenizer.json is ~2 MB: kept out of the repository, under target/.
SMOLLM2_JSON = ROOT / "target" / "tokenizer-reference" / "smollm2-tokenizer.json"

GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# Qwen2.5's tokenizer.json: Llama-3's regex with single digits (`\p{N}`).
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
DEFAULT_QWEN05 = Path.home() / ".cache/omex/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"

LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}")
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")


def load_corpus():
    return json.loads((DATA / "corpus.json").read_text(encoding="utf-8"))


def bench_text(corpus, target=1 << 20):
    """The ~1 MiB benchmark text; benches/tokenizer.rs builds the same string the same way."""
    parts, size, i = [], 0, 0
    while size < target:
        s = corpus[i % len(corpus)] + "\n"
        parts.append(s)
        size += len(s.encode("utf-8"))
        i += 1
    return "".join(parts)


def gguf_path():
    return Path(os.environ.get("OMEX_SMOLLM2_GGUF", DEFAULT_GGUF))


def read_gguf_vocab(path):
    from gguf import GGUFReader
    r = GGUFReader(str(path))
    f = lambda k: r.fields[k].contents() if k in r.fields else None
    return {
        "model": f("tokenizer.ggml.model"), "pre": f("tokenizer.ggml.pre"),
        "tokens": f("tokenizer.ggml.tokens"), "token_types": f("tokenizer.ggml.token_type"),
        "merges": f("tokenizer.ggml.merges"), "bos_id": f("tokenizer.ggml.bos_token_id"),
        "eos_id": f("tokenizer.ggml.eos_token_id"), "chat_template": f("tokenizer.chat_template"),
    }


def build_smollm2(v):
    """SmolLM2's tokenizer from GGUF data, assembled from `tokenizers` components only."""
    assert v["model"] == "gpt2" and v["pre"] == "smollm", (v["model"], v["pre"])
    vocab = {t: i for i, t in enumerate(v["tokens"])}
    merges = [tuple(m.split(" ")) for m in v["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre.Sequence([
        pre.Digits(individual_digits=True),
        pre.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    specials = [v["tokens"][i] for i, t in enumerate(v["token_types"]) if t == 3]
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    return tok


def train_bytelevel(corpus, pre_tokenizer, specials, vocab_size):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre.ByteLevel.alphabet())
    tok.train_from_iterator(corpus * 3, trainer=trainer)
    return tok


def train_gpt2(corpus):
    return train_bytelevel(corpus, pre.ByteLevel(add_prefix_space=False, use_regex=True),
                           ["<|endoftext|>"], 1000)


def train_llama3(corpus):
    p = pre.Sequence([pre.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
                      pre.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                "<|eot_id|>"]
    tok = train_bytelevel(corpus, p, specials, 1200)
    # Llama-3's real tokenizer.json sets ignore_merges: a pre-token found whole in the vocab is one token.
    d = json.loads(tok.to_str())
    d["model"]["ignore_merges"] = True
    return Tokenizer.from_str(json.dumps(d))


def sp_base_vocab(corpus, min_count=6, vocab_size=900):
    """Pieces and merges for a SentencePiece-style BPE (`▁` for spaces), trained on the corpus with its
    rarer characters left out, so that those take the byte fallback."""
    counts = Counter(c for s in corpus for c in s)
    train = ["".join(c for c in s if counts[c] >= min_count) for s in corpus]
    t = Tokenizer(models.BPE())
    t.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    t.pre_tokenizer = pre.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False, special_tokens=[])
    t.train_from_iterator(train * 3, trainer=trainer)
    d = json.loads(t.to_str())
    pieces = sorted(d["model"]["vocab"].items(), key=lambda kv: kv[1])
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in d["model"]["merges"]]
    return [p for p, _ in pieces], merges


SP_SPECIALS = ["<unk>", "<s>", "</s>"]
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]


def sp_decoder():
    return decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                              decoders.Strip(" ", 1, 0)])


def build_sp(pieces, merges, legacy=True):
    tokens = SP_SPECIALS + BYTE_TOKENS + [p for p in pieces if p not in SP_SPECIALS]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True,
                               byte_fallback=True))
    if legacy:  # TinyLlama / Llama-2 tokenizer.json
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        tok.decoder = sp_decoder()
    else:  # the newer Metaspace form
        tok.pre_tokenizer = pre.Metaspace(replacement="▁", prepend_scheme="first", split=True)
        tok.decoder = decoders.Sequence([decoders.Metaspace(replacement="▁", prepend_scheme="first", split=True),
                                         decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SP_SPECIALS])
    return tok, tokens


def sp_merges_from_scores(tokens, scores, types):
    """Merges of a SentencePiece vocab that has scores but no merge list (a llama GGUF), in the documented
    omex order (the order of transformers' SentencePieceExtractor): every normal piece (type 1) that splits
    into two vocab pieces gives a merge; within a piece, sorted by the (left id, right id); overall, a
    stable sort by the piece's score, highest first."""
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = []
    for i, piece in enumerate(tokens):
        if types[i] != 1:
            continue
        local = []
        for k in range(1, len(piece)):
            l, r = piece[:k], piece[k:]
            if l in vocab and r in vocab:
                local.append((l, r, scores[i]))
        local.sort(key=lambda x: (vocab[x[0]], vocab[x[1]]))
        merges.extend(local)
    merges.sort(key=lambda m: m[2], reverse=True)
    return [(l, r) for l, r, _ in merges]


def build_sp_gguf(pieces, merges):
    """A llama-model GGUF vocab (tokens, scores, types; no merges) and HF's tokenizer for it."""
    tokens = SP_SPECIALS + BYTE_TOKENS + [p for p in pieces if p not in SP_SPECIALS]
    rank = {a + b: i for i, (a, b) in enumerate(merges)}
    types = [2, 3, 3] + [6] * 256 + [1] * (len(tokens) - 259)
    # Pieces made by merges score by merge order; single characters score below all of them.
    scores = [0.0] * 259 + [-float(rank.get(t, 100000 + i)) for i, t in enumerate(tokens[259:])]
    gm = sp_merges_from_scores(tokens, scores, types)
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=gm, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = sp_decoder()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SP_SPECIALS])
    gv = {"model": "llama", "pre": "default", "tokens": tokens, "token_types": types, "scores": scores,
          "bos_id": 1, "eos_id": 2, "unk_id": 0, "add_bos": True, "add_eos": False}
    return tok, gv


def decode_cases(tok, corpus, n_random=60, seed=7):
    """Id lists (slices of real encodings and random ids) with HF's decode, specials kept and skipped."""
    rng = random.Random(seed)
    size = tok.get_vocab_size(with_added_tokens=True)
    out = []
    for i in range(n_random):
        if i % 2 == 0:
            ids = tok.encode(rng.choice(corpus)).ids
            if len(ids) > 2:  # a slice that may cut a multi-byte character
                a = rng.randrange(0, len(ids) - 1)
                ids = ids[a:a + rng.randrange(1, 12)]
        else:
            ids = [rng.randrange(size) for _ in range(rng.randrange(1, 16))]
        out.append({"ids": ids, "text": tok.decode(ids, skip_special_tokens=False),
                    "text_skip_special": tok.decode(ids, skip_special_tokens=True)})
    return out


def expected(tok, corpus, name):
    cases = []
    for s in corpus:
        ids = tok.encode(s).ids
        cases.append({"text": s, "ids": ids, "decoded": tok.decode(ids, skip_special_tokens=False)})
    return {"tokenizer": name, "cases": cases, "decode": decode_cases(tok, corpus)}


def dump(path, obj):
    path.write_text(json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size} bytes)")


def chat_env():
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from jinja2.exceptions import TemplateError
    import jinja2.ext

    def raise_exception(msg):
        raise TemplateError(msg)

    # transformers' settings for chat templates
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.globals["raise_exception"] = raise_exception
    return env


def chat_conversations():
    return [
        [{"role": "user", "content": "Hello!"}],
        [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "Arr!"}, {"role": "user", "content": "Where's the treasure?"}],
        [{"role": "user", "content": "  spaced content \n"}, {"role": "assistant", "content": " ok \t"}],
        [{"role": "user", "content": "多语言 😀 test\nsecond line"}],
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
         {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}],
        [{"role": "system", "content": "Be brief.\n"}],
        [{"role": "assistant", "content": "I speak first."}, {"role": "user", "content": "ok"}],
        [{"role": "user", "content": "\x1c\u3000 python whitespace \x1f"}],
        [{"role": "user", "content": "q"}, {"role": "tool", "content": "tool output"}],
        [],
    ]


def render_chats(v):
    from jinja2.exceptions import TemplateError
    env = chat_env()
    convs = chat_conversations()
    templates = [("smollm2", v["chat_template"], "<|im_start|>", "<|im_end|>"),
                 ("llama2", LLAMA2_TEMPLATE, "<s>", "</s>"),
                 ("llama3", LLAMA3_TEMPLATE, "<|begin_of_text|>", "<|eot_id|>")]
    out = {"templates": {}, "cases": []}
    for name, src, bos, eos in templates:
        out["templates"][name] = {"template": src, "bos_token": bos, "eos_token": eos}
        t = env.from_string(src)
        for conv in convs:
            for gen in (False, True):
                case = {"template": name, "messages": conv, "add_generation_prompt": gen}
                try:
                    case["expected"] = t.render(messages=conv, add_generation_prompt=gen, bos_token=bos,
                                                eos_token=eos)
                except TemplateError as e:
                    case["error"] = str(e)
                out["cases"].append(case)
    return out


def write_reference():
    corpus = load_corpus()
    print(f"corpus: {len(corpus)} strings")
    path = gguf_path()
    if not path.exists():
        sys.exit(f"GGUF not found: {path} (set OMEX_SMOLLM2_GGUF)")
    v = read_gguf_vocab(path)
    smol = build_smollm2(v)
    SMOLLM2_JSON.parent.mkdir(parents=True, exist_ok=True)
    smol.save(str(SMOLLM2_JSON))
    print(f"wrote {SMOLLM2_JSON} (not committed)")
    dump(DATA / "smollm2_expected.json", expected(smol, corpus, "smollm2"))

    for name, tok in [("gpt2", train_gpt2(corpus)), ("llama3", train_llama3(corpus))]:
        tok.save(str(DATA / f"{name}_tokenizer.json"), pretty=False)
        dump(DATA / f"{name}_expected.json", expected(tok, corpus, name))

    pieces, merges = sp_base_vocab(corpus)
    for name, legacy in [("sp", True), ("sp_meta", False)]:
        tok, _ = build_sp(pieces, merges, legacy=legacy)
        tok.save(str(DATA / f"{name}_tokenizer.json"), pretty=False)
        dump(DATA / f"{name}_expected.json", expected(tok, corpus, name))
    tok, gv = build_sp_gguf(pieces, merges)
    dump(DATA / "sp_gguf_vocab.json", gv)
    dump(DATA / "sp_gguf_expected.json", expected(tok, corpus, "sp_gguf"))

    dump(DATA / "chat_expected.json", render_chats(v))


def load_smollm2():
    if SMOLLM2_JSON.exists():
        return Tokenizer.from_file(str(SMOLLM2_JSON))
    return build_smollm2(read_gguf_vocab(gguf_path()))


def bench():
    corpus = load_corpus()
    text = bench_text(corpus)
    nbytes = len(text.encode("utf-8"))
    lines = text.split("\n")
    tok = load_smollm2()
    print(f"tokenizers {__import__('tokenizers').__version__}, {nbytes} bytes, {len(lines)} lines, "
          f"{len(tok.encode(text).ids)} tokens, {os.cpu_count()} cpus")

    def timeit(label, fn, reps=5):
        fn()  # warm-up
        best = min(_time(fn) for _ in range(reps))
        print(f"HF {label:<28} {best * 1e3:8.1f} ms  {nbytes / best / 1e6:7.2f} MB/s")

    timeit("encode (one string)", lambda: tok.encode(text))
    timeit("encode_batch (lines)", lambda: tok.encode_batch(lines))
    if hasattr(tok, "encode_batch_fast"):
        timeit("encode_batch_fast (lines)", lambda: tok.encode_batch_fast(lines))


def _time(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def ranges(cps):
    out = []
    for c in sorted(cps):
        if out and out[-1][1] == c - 1:
            out[-1][1] = c
        else:
            out.append([c, c])
    return out


def gen_tables():
    cps = [c for c in range(0x110000) if not (0xD800 <= c < 0xE000)]
    full = "".join(map(chr, cps))

    def regex_set(pattern):
        got = set()
        split = pre.Split(Regex(pattern), behavior="removed", invert=True)
        for _, (a, b) in split.pre_tokenize_str(full):
            got.update(cps[a:b])
        return got

    letters, numbers, spaces = regex_set(r"\p{L}+"), regex_set(r"\p{N}+"), regex_set(r"\s+")
    # Digits(individual_digits=True) isolates every char it calls numeric; 'a' separators keep them apart.
    digits = set()
    for piece, _ in pre.Digits(individual_digits=True).pre_tokenize_str("a".join(map(chr, cps))):
        if len(piece) == 1 and piece != "a":
            digits.add(ord(piece))
    assert numbers <= digits, "Digits is expected to cover \\p{N}"
    assert not (letters & numbers) and not (letters & spaces) and not (numbers & spaces)

    def table(name, doc, rs):
        lines = [f"/// {doc}", f"pub(crate) static {name}: &[(u32, u32)] = &["]
        row = []
        for a, b in rs:
            row.append(f"(0x{a:X}, 0x{b:X})")
            if len(row) == 6:
                lines.append("    " + ", ".join(row) + ",")
                row = []
        if row:
            lines.append("    " + ", ".join(row) + ",")
        lines.append("];")
        return "\n".join(lines)

    src = "\n\n".join([
        "//! Generated by `scripts/tokenizer_reference.py --gen-tables` from the regex engine inside Hugging Face\n"
        "//! `tokenizers` " + __import__("tokenizers").__version__ + " (Oniguruma), so the classes match it exactly."
        " Do not edit by hand.",
        table("LETTER", "`\\p{L}`: inclusive code point ranges.", ranges(letters)),
        table("NUMBER", "`\\p{N}`: inclusive code point ranges.", ranges(numbers)),
        table("WHITESPACE", "`\\s`: inclusive code point ranges.", ranges(spaces)),
        table("DIGIT_EXTRA", "Chars the `Digits` pre-tokenizer isolates that are not `\\p{N}` (its table is newer).",
              ranges(digits - numbers)),
    ]) + "\n"
    out = ROOT / "src" / "tokenizer" / "unicode_tables.rs"
    out.write_text(src)
    print(f"wrote {out.relative_to(ROOT)}: {len(ranges(letters))} letter, {len(ranges(numbers))} number, "
          f"{len(ranges(spaces))} space ranges, {len(digits - numbers)} extra digits")


def gen_nfc():
    """src/tokenizer/nfc_tables.rs from Python's unicodedata, checked against HF's NFC/NFD code point by code
    point (the tables must describe the normalizer inside `tokenizers`, not just some Unicode version)."""
    import unicodedata as ud
    cps = [c for c in range(0x110000) if not (0xD800 <= c < 0xE000)]
    hangul = lambda c: 0xAC00 <= c <= 0xD7A3
    hf_nfc, hf_nfd = normalizers.NFC(), normalizers.NFD()
    bad = [c for c in cps if hf_nfc.normalize_str(chr(c)) != ud.normalize("NFC", chr(c))
           or hf_nfd.normalize_str(chr(c)) != ud.normalize("NFD", chr(c))]
    # Code points unassigned in one Unicode version and assigned in the other; reported, and left out.
    print(f"unicodedata {ud.unidata_version}: {len(bad)} code points normalize differently in tokenizers "
          f"{__import__('tokenizers').__version__}: {[hex(c) for c in bad[:12]]}")
    bad = set(bad)
    ccc = [(c, ud.combining(chr(c))) for c in cps if ud.combining(chr(c)) and c not in bad]
    ccc_ranges = []
    for c, k in ccc:
        if ccc_ranges and ccc_ranges[-1][1] == c - 1 and ccc_ranges[-1][2] == k:
            ccc_ranges[-1][1] = c
        else:
            ccc_ranges.append([c, c, k])
    decomp = [(c, ud.normalize("NFD", chr(c))) for c in cps
              if not hangul(c) and c not in bad and ud.normalize("NFD", chr(c)) != chr(c)]
    compose = []
    for c in cps:
        d = ud.decomposition(chr(c))
        if c in bad or hangul(c) or not d or d.startswith("<"):
            continue
        parts = [int(x, 16) for x in d.split()]
        if len(parts) == 2 and ud.normalize("NFC", chr(c)) == chr(c):  # a primary composite
            compose.append((parts[0], parts[1], c))
    compose.sort()
    seconds = {b for _, b, _ in compose}
    # Code points that can make NFC differ from the input: not NFC themselves, non-starters, or the second
    # half of a composition (Hangul V and T jamo included); text without any of them is already NFC.
    maybe = sorted({c for c in cps if c not in bad and (ud.normalize("NFC", chr(c)) != chr(c)
                    or ud.combining(chr(c)) or c in seconds)} | set(range(0x1161, 0x1176)) | set(range(0x11A8, 0x11C3)))
    flat, index = [], []
    for c, d in decomp:
        index.append((c, len(flat), len(d)))
        flat.extend(ord(x) for x in d)

    def rows(items, fmt, per):
        out, row = [], []
        for it in items:
            row.append(fmt(it))
            if len(row) == per:
                out.append("    " + ", ".join(row) + ",")
                row = []
        if row:
            out.append("    " + ", ".join(row) + ",")
        return "\n".join(out)

    src = (
        "//! Generated by `scripts/tokenizer_reference.py --gen-nfc` from Python's unicodedata "
        f"{ud.unidata_version},\n//! checked code point by code point against the NFC and NFD of Hugging Face "
        f"`tokenizers` {__import__('tokenizers').__version__}. Do not edit by hand.\n\n"
        "/// Canonical combining classes: inclusive ranges `(lo, hi, class)` of the non-zero ones.\n"
        "pub(crate) static CCC: &[(u32, u32, u8)] = &[\n"
        + rows(ccc_ranges, lambda r: f"(0x{r[0]:X}, 0x{r[1]:X}, {r[2]})", 5) + "\n];\n\n"
        "/// Full canonical decompositions (Hangul syllables aside): `(code point, start, len)` in `DECOMP_CHARS`.\n"
        "pub(crate) static DECOMP: &[(u32, u16, u8)] = &[\n"
        + rows(index, lambda r: f"(0x{r[0]:X}, {r[1]}, {r[2]})", 6) + "\n];\n\n"
        "pub(crate) static DECOMP_CHARS: &[u32] = &[\n"
        + rows(flat, lambda c: f"0x{c:X}", 10) + "\n];\n\n"
        "/// Primary composites (Hangul aside): `(first, second, composite)`, sorted.\n"
        "pub(crate) static COMPOSE: &[(u32, u32, u32)] = &[\n"
        + rows(compose, lambda r: f"(0x{r[0]:X}, 0x{r[1]:X}, 0x{r[2]:X})", 4) + "\n];\n\n"
        "/// Code points that can make NFC differ from the input: inclusive ranges.\n"
        "pub(crate) static MAYBE: &[(u32, u32)] = &[\n"
        + rows(ranges(maybe), lambda r: f"(0x{r[0]:X}, 0x{r[1]:X})", 6) + "\n];\n")
    out = ROOT / "src" / "tokenizer" / "nfc_tables.rs"
    out.write_text(src)
    print(f"wrote {out.relative_to(ROOT)}: {len(ccc_ranges)} class ranges, {len(index)} decompositions, "
          f"{len(compose)} compositions, {len(ranges(maybe))} maybe ranges")


def check_dir(d, name):
    tok = Tokenizer.from_file(str(Path(d) / "tokenizer.json"))
    exp = json.loads((DATA / f"{name}_expected.json").read_text(encoding="utf-8"))
    bad = 0
    for case in exp["cases"]:
        got = tok.encode(case["text"], add_special_tokens=False).ids
        if got != case["ids"]:
            bad += 1
            print(f"MISMATCH {case['text']!r}: {got} != {case['ids']}")
    cfg = json.loads((Path(d) / "tokenizer_config.json").read_text(encoding="utf-8"))
    print(f"HF loaded {d}/tokenizer.json: {len(exp['cases'])} strings, {bad} mismatches; "
          f"config keys: {sorted(cfg)}")
    sys.exit(1 if bad else 0)


QWEN2_EXTRA = [
    "12345", "3.14159 + 2.71828 = 5.85987", "v1.2.3-rc4", "0x1F600", "1,000,000", "²³¹ ½ ⅓ ٣٤ ३४",
    "don't won't I'M YOU'RE we'Ve they'LL he'D it'S", "'s 'd 'll", "ſ'ſ",
    "def add(a, b):\n    return a + b\n", "\tindented\n\t\tmore\n", "if (x) {\r\n  y();\r\n}\r\n",
    "fn main() { println!(\"{}\", 1 << 20); }", "<div class=\"x\">&nbsp;</div>", "#include <stdio.h>",
    "  leading", "   leading three", "trailing  ", "a  b   c    d", "\n\n\n", " \n \n ", "\t\t", " \t x",
    "line1\nline2\r\nline3\rline4", "   \n\n   x", "\u3000full\u3000width", "\u00a0nbsp\u00a0",
    "你好，世界！", "日本語のテキスト", "한국어 텍스트", "Привет, мир!", "مرحبا بالعالم", "ελληνικά",
    "😀😃😄 👨‍👩‍👧‍👦 🇺🇸 👍🏽", "emoji😀inside", "→ ∑ ∞ ≠ ≤", "a\u200db", "\x00\x01\x7f",
    "<|im_start|>user\nhi<|im_end|>\n", "<|endoftext|>tail", "x<|im_end|>y<|im_start|>",
    "<tool_call>\n{\"name\": \"f\"}\n</tool_call>", "<|fim_prefix|>def f():<|fim_suffix|>\n<|fim_middle|>",
    "<|im_start|", "<|im_end|><|im_end|>", "[PAD151665]", "",
]
# Text that NFC changes (or that looks like it might): decomposed accents, Hangul jamo, reordered marks.
QWEN2_NFC = [
    "e\u0301", "cafe\u0301 re\u0301sume\u0301", "A\u030a\u212b\u00c5", "\u1100\u1161\u11a8 \u1112\u1161\u11ab",
    "a\u0323\u0307 a\u0307\u0323", "\u1e9b\u0323", "\u0958\u0915\u093c", "Ω\u2126 K\u212a",
    "o\u0308\u0304 \u01eb\u0304", "\u0061\u0315\u0300\u05ae\u0300\u0062", "\uf900\u2f800",
    "x\u0301\u0301\u0301", "\u0301start", "ﬁ ﬃ ² ①", "\uac00\u11a8 \uac01",
]


def qwen2_path():
    return Path(os.environ.get("OMEX_QWEN05_GGUF", DEFAULT_QWEN05))


def build_qwen2(v):
    """Qwen2.5's tokenizer from GGUF data, as its tokenizer.json defines it, from `tokenizers` components."""
    assert v["model"] == "gpt2" and v["pre"] == "qwen2", (v["model"], v["pre"])
    # Every GGUF token goes in the vocabulary (the [PAD...] ones too, which no merge makes), so the added
    # tokens below keep their GGUF ids.
    vocab = {t: i for i, t in enumerate(v["tokens"])}
    merges = [tuple(m.split(" ")) for m in v["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre.Sequence([
        pre.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    # Control tokens are special, user-defined ones (<tool_call>) plain added tokens, as in tokenizer.json.
    tok.add_tokens([AddedToken(t, special=v["token_types"][i] == 3, normalized=False)
                    for i, t in enumerate(v["tokens"]) if v["token_types"][i] in (3, 4)])
    assert tok.get_vocab_size(with_added_tokens=True) == len(v["tokens"])
    return tok


def render_qwen2_chats(template):
    from jinja2.exceptions import TemplateError
    t = chat_env().from_string(template)
    convs = chat_conversations() + [
        [{"role": "system", "content": ""}, {"role": "user", "content": "empty system"}],
        [{"role": "user", "content": "a"}, {"role": "system", "content": "late system"}],
        [{"role": "user", "content": "call"}, {"role": "tool", "content": "r1"}, {"role": "tool", "content": "r2"},
         {"role": "assistant", "content": "done"}],
        [{"role": "tool", "content": "first"}],
        [{"role": "user", "content": "<|im_end|> inside"}, {"role": "observer", "content": "dropped"}],
    ]
    cases = []
    for conv in convs:
        for gen in (False, True):
            case = {"messages": conv, "add_generation_prompt": gen}
            try:
                case["expected"] = t.render(messages=conv, add_generation_prompt=gen, tools=None)
            except TemplateError as e:
                case["error"] = str(e)
            cases.append(case)
    return cases


def write_qwen2():
    path = qwen2_path()
    if not path.exists():
        sys.exit(f"GGUF not found: {path} (set OMEX_QWEN05_GGUF, or run scripts/fetch-model.sh qwen2.5-coder-0.5b)")
    v = read_gguf_vocab(path)
    tok = build_qwen2(v)
    chats = render_qwen2_chats(v["chat_template"])
    texts = load_corpus() + QWEN2_EXTRA + [c["expected"] for c in chats if "expected" in c]
    out = expected(tok, texts, "qwen2")
    out["nfc_cases"] = [{"text": s, "ids": tok.encode(s).ids} for s in QWEN2_NFC]
    out["chat_template"] = v["chat_template"]
    out["chat"] = chats
    out["eos_id"], out["bos_id"] = v["eos_id"], v["bos_id"]
    # ignore_merges is off in Qwen2.5's tokenizer.json; list the strings where turning it on would differ.
    d = json.loads(tok.to_str())
    d["model"]["ignore_merges"] = True
    other = Tokenizer.from_str(json.dumps(d))
    diff = [s for s in texts if other.encode(s).ids != tok.encode(s).ids]
    print(f"qwen2: {len(texts)} strings, {len(QWEN2_NFC)} NFC strings, {len(chats)} chats; "
          f"{len(diff)} strings would differ with ignore_merges on")
    dump(DATA / "qwen2_expected.json", out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", action="store_true")
    ap.add_argument("--qwen2", action="store_true")
    ap.add_argument("--gen-tables", action="store_true")
    ap.add_argument("--gen-nfc", action="store_true")
    ap.add_argument("--check-dir", metavar="DIR")
    ap.add_argument("--expected", default="smollm2", help="which *_expected.json --check-dir compares with")
    a = ap.parse_args()
    if a.bench:
        bench()
    elif a.qwen2:
        write_qwen2()
    elif a.gen_tables:
        gen_tables()
    elif a.gen_nfc:
        gen_nfc()
    elif a.check_dir:
        check_dir(a.check_dir, a.expected)
    else:
        write_reference()


if __name__ == "__main__":
    main()
