#!/usr/bin/env python3
"""The committed tiny Mixtral (tests/data/mixtral-tiny, made by make_mixtral_fixture.py) converted to GGUF by
llama.cpp's own converter, `convert_hf_to_gguf.py`, in f32 and q8_0, so tests/mixtral_golden.rs can check that
omex imports llama.cpp's Mixtral files (a llama GGUF with `llama.expert_count`, each block's experts stacked in
`ffn_{gate,up,down}_exps`) and still gives the transformers reference outputs (reference.json).

llama.cpp's converter ships in the llama-cpp-python sdist on PyPI (`vendor/llama.cpp/`, with its `gguf-py`).
It names a BPE tokenizer's pre-tokenizer by a hash of known tokenizers and refuses an unknown one; the fixture's
byte-level BPE (GPT-2's pre-tokenizer) is declared "gpt2" here, the only change to the converter's run.
Writes tests/data/mixtral-tiny/mixtral-tiny.{f32,q8_0}.gguf.

    curl -sL "$(python3 -c 'import json,urllib.request as u; d=json.load(u.urlopen("https://pypi.org/pypi/llama-cpp-python/0.3.36/json")); print([x["url"] for x in d["urls"] if x["packagetype"]=="sdist"][0])')" | tar -xz -C /tmp
    LLAMA_CPP_DIR=/tmp/llama_cpp_python-0.3.36/vendor/llama.cpp \\
        /root/.cache/torchvenv/bin/python scripts/reference/make_mixtral_gguf_fixture.py
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "..", "tests", "data", "mixtral-tiny")
LLAMA_CPP = os.environ["LLAMA_CPP_DIR"]


def main():
    sys.path.insert(0, LLAMA_CPP)
    sys.path.insert(0, os.path.join(LLAMA_CPP, "gguf-py"))
    import convert_hf_to_gguf as conv
    from conversion import base

    base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt2"
    for outtype in ["f32", "q8_0"]:
        out = os.path.join(DATA, f"mixtral-tiny.{outtype}.gguf")
        sys.argv = ["convert_hf_to_gguf.py", DATA, "--outtype", outtype, "--outfile", out]
        conv.main()
        print(f"wrote {out} ({os.path.getsize(out)} bytes)")


if __name__ == "__main__":
    main()
