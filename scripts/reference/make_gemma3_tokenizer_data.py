"""Writes tests/data/tokenizer/gemma3_cases.json: diverse strings and the ids the SentencePiece reference
(scripts/reference/gemma3_tokenizer.py) gives them for the Gemma 3 270M GGUF, BOS first.
tests/tokenizer_gemma3.rs checks omex's tokenizer against it.

    python3 -m pip install sentencepiece protobuf
    python3 scripts/reference/make_gemma3_tokenizer_data.py [--model PATH]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gemma3_tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests/data/tokenizer/gemma3_cases.json"

CASES = [
    ("english", "The quick brown fox jumps over the lazy dog."),
    ("prose", "Once upon a time, in a land far, far away, there lived a curious little robot named Omex."),
    ("single_word", "Hello"),
    ("leading_space", " Hello world"),
    ("leading_spaces", "   indented text"),
    ("trailing_spaces", "trailing spaces   "),
    ("only_spaces", "     "),
    ("single_space", " "),
    ("multiple_spaces", "a  b   c    d     e"),
    ("newlines", "line one\nline two\n\nline four\n\n\n\nend\n"),
    ("crlf", "windows\r\nline endings\r\n"),
    ("tabs", "col1\tcol2\t\tcol3\t\t\tend"),
    ("python", "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n"),
    ("rust", "fn main() {\n\tlet v: Vec<u32> = (0..10).map(|x| x * x).collect();\n\tprintln!(\"{v:?}\");\n}\n"),
    ("json", '{"name": "omex", "version": [0, 1, 2], "ok": true, "nested": {"k": null}}'),
    ("html", "<table><tr><td>1</td><td>2</td></tr></table> <b>bold</b> and <i>italic</i>"),
    ("digits", "0 1 12 123 1234 12345 3.14159 -42 1e10 2025-01-31 +1 (555) 010-9999"),
    ("punctuation", "Wait... what?! (yes) [no] {maybe} <ok> \"quoted\" 'single' -- em—dash; colon: a/b\\c @#$%^&*_=+~`|"),
    ("contractions", "I'm sure they'll say it's fine, won't they? We'd've known."),
    ("accented", "Café, naïve, façade, jalapeño, Ærøskøbing, Zürich, São Paulo, Dvořák, Łódź"),
    ("french", "L'été dernier, nous sommes allés à la plage où l'eau était très froide."),
    ("german", "Größenwahnsinnige Straßenbahnhaltestellenüberdachung"),
    ("greek_cyrillic", "Καλημέρα κόσμε. Привет, мир! Україна"),
    ("chinese", "我们今天去公园散步，天气非常好。"),
    ("japanese", "東京は日本の首都です。ひらがなとカタカナ、漢字。"),
    ("korean", "안녕하세요, 세계! 한국어 토큰화 테스트입니다."),
    ("arabic", "مرحبا بالعالم، هذا اختبار للترميز."),
    ("hebrew_hindi", "שלום עולם — नमस्ते दुनिया"),
    ("thai", "สวัสดีชาวโลก"),
    ("emoji", "I love 🦀 and 🐍! 👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️"),
    ("math_symbols", "∀x ∈ ℝ: x² ≥ 0, ∑ᵢ aᵢ ≈ ∫ f(x) dx ≠ ∞ ± √2"),
    ("byte_fallback", "\x00\x01\x02\x1b[0m\x7f \U000e0041 \U0010fffd \ufdd0 \U0002a6d6 \U0001d518"),
    ("rare_bytes", "\x03\x04\x05\x06\x07\x08\x0e\x0f\x10\x11\x12\x13"),
    ("chat_turn", "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"),
    ("chat_full", "<start_of_turn>user\nWrite a haiku about Rust.<end_of_turn>\n<start_of_turn>model\n"
                  "Borrow checker sighs,\nlifetimes dance in tidy rows,\nno data races.<end_of_turn>\n"),
    ("special_inline", "before<eos>after <pad> <unused5> [multimodal] <start_of_image>x<end_of_image> <bos>"),
    ("angle_not_special", "<start_of_turn <end_of_turn> <startofturn> <unused> < b>"),
    ("mixed_scripts", "Rust 🦀 ist schnell; 速度很快; très rapide — 42%!"),
    ("url_email", "https://example.com/path?query=1&x=y#frag mailto:someone@example.org"),
    ("long_word", "antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis"),
    ("repeated", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa !!!!!!!!!!!! ............"),
    ("empty", ""),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None)
    args = ap.parse_args()
    path = args.model or gemma3_tokenizer.default_model_path()
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    tok = gemma3_tokenizer.build(path)

    names = [n for n, _ in CASES]
    assert len(set(names)) == len(names), "duplicate case names"
    cases = []
    for name, text in CASES:
        ids = tok.encode(text)
        # The reference round-trips every case (added tokens are kept as text).
        assert tok.decode(ids[1:]) == text, (name, tok.decode(ids[1:]), text)
        cases.append({"name": name, "text": text, "ids": ids,
                      "pieces": [tok.sp.id_to_piece(i) for i in ids]})

    data = {
        "generator": "scripts/reference/make_gemma3_tokenizer_data.py (sentencepiece "
                     f"{__import__('sentencepiece').__version__}, BPE model built from the GGUF's pieces, "
                     "scores and types; added tokens split out first; BOS prepended)",
        "model": {"file": gemma3_tokenizer.MODEL_FILE, "sha256": sha},
        "bos_id": tok.bos_id,
        "cases": cases,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)}: {len(cases)} cases")
    return 0


if __name__ == "__main__":
    sys.exit(main())
