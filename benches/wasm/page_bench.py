#!/usr/bin/env python3
"""Decode speed of the web page's CPU engine (the wasm build) in headless Chromium, for scripts/wasm-bench.sh:

    python3 benches/wasm/page_bench.py --page DIR --pkg PKG --model MODEL.omex [--activations f32,int8]
                                       [--tokens 64] [--runs 2] [--prompt TEXT]

DIR is a copy of examples/web (the page passes the URL's `activations` parameter to omex.load; without it the
wasm engine runs int8). Prints one line per run and activation type,
"page cpu ACT: N decode steps at X tok/s", and the best run of each as "best ACT X". Drives Chromium with
scripts/browser_test.py's WebDriver client.
"""

import argparse
import os
import sys
import time
import urllib.parse

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "scripts"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--page", required=True, help="the patched copy of examples/web")
    ap.add_argument("--pkg", required=True, help="the wasm-bindgen output folder")
    ap.add_argument("--model", required=True, help="a converted model.omex directory")
    ap.add_argument("--activations", default="f32,int8")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--prompt", default="Once upon a time, in a small village by the sea,")
    args = ap.parse_args()
    if not 1 <= args.tokens <= 4096 or not 1 <= args.runs <= 20:
        sys.exit("page_bench.py: --tokens must be in 1..4096 and --runs in 1..20")

    sys.path.insert(0, os.path.abspath(args.page))
    import serve  # the copy's serve.py, so that it serves the patched page
    import browser_test as bt

    server, base = serve.serve_in_thread([args.model], pkg=args.pkg)
    name = os.path.basename(os.path.abspath(args.model).rstrip("/"))
    driver = bt.Chromedriver(bt.shutil.which("chromedriver") or "/usr/bin/chromedriver")
    best = {}
    try:
        browser = bt.Browser(driver, bt.shutil.which("chromium") or "/usr/bin/chromium", [])
        try:
            for act in [a.strip() for a in args.activations.split(",") if a.strip()]:
                for run in range(args.runs):
                    q = urllib.parse.urlencode({"model": f"models/{name}/", "engine": "cpu", "prompt": args.prompt,
                                                "n": args.tokens, "autorun": 1, "activations": act})
                    browser.open(f"{base}?{q}")
                    st = bt.wait_for(browser, lambda s: s["phase"] == "done", 900, f"generating ({act})", every=1)
                    r = st["result"]
                    print(f"page cpu {act} run {run}: {st['info']['describe']}; {r['decodeSteps']} decode steps at "
                          f"{r['decodeTokS']:.2f} tok/s", flush=True)
                    best[act] = max(best.get(act, 0.0), r["decodeTokS"])
                    time.sleep(0.5)
        finally:
            browser.close()
    finally:
        driver.close()
        server.shutdown()
    for act, v in best.items():
        print(f"best {act} {v:.2f}")


if __name__ == "__main__":
    main()
