#!/usr/bin/env python3
"""The committed `all7` PEFT adapter (tests/data/lora/all7, made by make_lora_fixture.py) converted to a LoRA GGUF
by llama.cpp's own converter, `convert_lora_to_gguf.py`, so tests/lora.rs can check that omex imports llama.cpp's
adapter files and still gives the transformers + peft reference outputs (tests/data/lora/reference.json).

llama.cpp's Python converters (with their `gguf-py` and `conversion` packages) ship in the llama-cpp-python
sdist on PyPI (`vendor/llama.cpp/`); the converter needs the base's config.json only, which transformers writes
from the project's GGUF. Writes tests/data/lora/all7.gguf (f16).

    curl -sL "$(python3 -c 'import json,urllib.request as u; d=json.load(u.urlopen("https://pypi.org/pypi/llama-cpp-python/0.3.36/json")); print([x["url"] for x in d["urls"] if x["packagetype"]=="sdist"][0])')" | tar -xz -C /tmp
    LLAMA_CPP_DIR=/tmp/llama_cpp_python-0.3.36/vendor/llama.cpp \\
        /root/.cache/torchvenv/bin/python scripts/reference/make_lora_gguf_fixture.py
"""
import json
import os
import subprocess
import sys
import tempfile

from transformers import AutoConfig

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "..", "tests", "data", "lora")
GGUF = os.environ.get(
    "OMEX_SMOLLM2_GGUF", os.path.expanduser("~/.cache/omex/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
LLAMA_CPP = os.environ["LLAMA_CPP_DIR"]


def main():
    with tempfile.TemporaryDirectory() as base:
        d, f = os.path.split(GGUF)
        config = AutoConfig.from_pretrained(d, gguf_file=f)
        config.save_pretrained(base)
        # transformers leaves `architectures` empty for a GGUF; the converter picks its model class by it.
        path = os.path.join(base, "config.json")
        with open(path) as fh:
            cfg = json.load(fh)
        cfg["architectures"] = ["LlamaForCausalLM"]
        with open(path, "w") as fh:
            json.dump(cfg, fh, indent=2)
        out = os.path.join(DATA, "all7.gguf")
        subprocess.run([sys.executable, os.path.join(LLAMA_CPP, "convert_lora_to_gguf.py"), "--base", base,
                        "--outtype", "f16", "--outfile", out, os.path.join(DATA, "all7")], check=True)
        print(f"wrote {out} ({os.path.getsize(out)} bytes)")


if __name__ == "__main__":
    main()
