#!/usr/bin/env python3
"""Drives the omex web page in headless Chromium through chromedriver (the WebDriver HTTP protocol, standard
library only) and checks that the real model generates, in the page, the greedy tokens the native CPU engine
generates. scripts/browser-test.sh prepares everything and calls this; run it alone as

    python3 scripts/browser_test.py --model DIR --pkg target/web/pkg --prompt TEXT --expected '1,2,3'
                                    [--prompt-ids '4,5'] [--engines gpu,cpu] [--screenshot OUT.png]

Tests: the page finds the WebGPU adapter; each engine's greedy ids equal the native engine's on the same
activations (the GPU engine, always f32: --expected; the CPU engine, on its default int8: the ids in
OMEX_WEB_EXPECTED_INT8, which scripts/browser-test.sh sets); without WebGPU the page
says so and offers the CPU engine; with --scratch (a project with the omex-web tarball installed), the
package's own tests (examples/web/tests/package_test.py). The last line is "N passed, N failed".
"""

import argparse
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "examples", "web"))
import serve  # noqa: E402  (examples/web/serve.py)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "examples", "web", "tests"))
import package_test  # noqa: E402  (examples/web/tests/package_test.py)

# Headless Chromium on a machine with no GPU and no network: WebGPU comes from Dawn's SwiftShader (Vulkan on
# the CPU) fallback adapter, which --enable-unsafe-webgpu exposes; the rest keeps Chromium off the network.
QUIET = ["--headless=new", "--no-sandbox", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-quic", "--disable-default-apps", "--disable-extensions",
         "--window-size=980,1120", "--hide-scrollbars", "--mute-audio"]
WEBGPU = ["--enable-unsafe-webgpu"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WebDriverError(Exception):
    pass


class Chromedriver:
    """One chromedriver process on a free local port."""

    def __init__(self, binary):
        self.port = free_port()
        self.log = tempfile.NamedTemporaryFile(prefix="chromedriver-", suffix=".log", delete=False)
        self.proc = subprocess.Popen([binary, f"--port={self.port}"], stdout=self.log, stderr=subprocess.STDOUT)
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if self.call("GET", "/status", timeout=2).get("ready"):
                    return
            except (OSError, WebDriverError):
                pass
            time.sleep(0.1)
        self.close()
        raise WebDriverError(f"chromedriver did not start (log: {self.log.name})")

    def call(self, method, path, body=None, timeout=300):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.load(resp).get("value")
        except urllib.error.HTTPError as e:
            try:
                v = json.load(e).get("value", {})
                raise WebDriverError(f"{method} {path}: {v.get('error')}: {v.get('message', '')[:400]}") from None
            except json.JSONDecodeError:
                raise WebDriverError(f"{method} {path}: HTTP {e.code}") from None

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class Browser:
    """A Chromium session with a fresh profile."""

    def __init__(self, driver, chromium, args):
        self.driver = driver
        self.profile = tempfile.mkdtemp(prefix="omex-chromium-")
        caps = {"capabilities": {"alwaysMatch": {
            "goog:chromeOptions": {"binary": chromium, "args": QUIET + args + [f"--user-data-dir={self.profile}"]},
            "goog:loggingPrefs": {"browser": "ALL"},
            "timeouts": {"script": 300000, "pageLoad": 120000},
        }}}
        self.sid = driver.call("POST", "/session", caps, timeout=120)["sessionId"]

    def call(self, method, path, body=None, timeout=300):
        return self.driver.call(method, f"/session/{self.sid}{path}", body, timeout)

    def open(self, url):
        self.call("POST", "/url", {"url": url})

    def js(self, script, *args):
        return self.call("POST", "/execute/sync", {"script": script, "args": list(args)})

    def state(self):
        return json.loads(self.js("return JSON.stringify(window.omexState || null)") or "null")

    def screenshot(self, path):
        png = base64.b64decode(self.call("GET", "/screenshot"))
        with open(path, "wb") as f:
            f.write(png)
        return len(png)

    def console(self):
        try:
            return [f"{e.get('level')}: {e.get('message')}" for e in self.call("POST", "/se/log", {"type": "browser"})]
        except WebDriverError:
            return []

    def close(self):
        try:
            self.call("DELETE", "", timeout=30)
        except (OSError, WebDriverError):
            pass
        shutil.rmtree(self.profile, ignore_errors=True)


def wait_for(browser, done, limit, what, every=0.5, on_poll=None):
    """Polls the page's state until done(state) holds; fails after `limit` seconds with the last state."""
    deadline = time.time() + limit
    st = None
    while time.time() < deadline:
        st = browser.state()
        if on_poll:
            on_poll(st)
        if st and st.get("phase") == "error":
            raise AssertionError(f"the page reports an error: {st.get('error')}")
        if st and done(st):
            return st
        time.sleep(every)
    brief = {k: st.get(k) for k in ("phase", "error", "tokens")} if st else None
    raise AssertionError(f"{what}: not done after {limit} s (state: {brief})")


class Runner:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def run(self, name, fn):
        t0 = time.time()
        print(f"test {name} ...", flush=True)
        try:
            fn()
        except Exception as e:  # a failed check or a broken browser: report it, go on with the next test
            self.failed += 1
            print(f"test {name} ... FAILED ({time.time() - t0:.1f} s)\n    {type(e).__name__}: {e}", flush=True)
        else:
            self.passed += 1
            print(f"test {name} ... ok ({time.time() - t0:.1f} s)", flush=True)


def ids(text):
    return [int(x) for x in text.replace("[", "").replace("]", "").replace(",", " ").split()]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a converted model.omex directory")
    ap.add_argument("--pkg", default=None, help="the wasm-bindgen output folder (default target/web/pkg)")
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--expected", required=True, type=ids, help="the native engine's greedy output ids")
    ap.add_argument("--prompt-ids", type=ids, default=None, help="the native tokenizer's prompt ids")
    ap.add_argument("--expected-chat", type=ids, default=None, help="the native engine's greedy ids with --chat")
    ap.add_argument("--scratch", help="a scratch project with omex-web installed: run the package tests on it")
    ap.add_argument("--engines", default="gpu,cpu", help="engines to test in the page: gpu, cpu or both")
    ap.add_argument("--screenshot", help="save a screenshot of the page mid-generation (first engine) here")
    ap.add_argument("--limit", type=float, default=240, help="seconds each generation may take")
    ap.add_argument("--prior-passed", type=int, default=0, help="tests that passed before this script (counted in)")
    ap.add_argument("--prior-failed", type=int, default=0, help="tests that failed before this script (counted in)")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    ap.add_argument("--chromedriver", default=shutil.which("chromedriver") or "/usr/bin/chromedriver")
    args = ap.parse_args()

    mounts = [("/scratch/", args.scratch)] if args.scratch else []
    server, base = serve.serve_in_thread([args.model], pkg=args.pkg, mounts=mounts)
    name = os.path.basename(os.path.abspath(args.model).rstrip("/"))
    driver = Chromedriver(args.chromedriver)
    runner = Runner()
    # The page loads the CPU engine with its default activations, int8: its reference is the native engine's
    # on int8 (scripts/browser-test.sh passes it in the environment); the GPU engine always runs f32.
    expected_int8 = package_test.env_ids("OMEX_WEB_EXPECTED_INT8")

    def reference(engine):
        if engine == "gpu":
            return args.expected, "native (cpu, --activations f32)"
        return package_test.need(expected_int8, "OMEX_WEB_EXPECTED_INT8"), "native (cpu, --activations int8)"

    speeds = {}
    loads = {}
    try:
        browser = Browser(driver, args.chromium, WEBGPU)
        try:
            def adapter():
                browser.open(base)
                st = wait_for(browser, lambda s: s["phase"] == "idle", 60, "page start")
                g = st["webgpu"]
                assert g and g["available"], f"WebGPU is not available in the page: {g}"
                a = g["adapter"]
                print(f"    adapter: {a['vendor']} {a['architecture']} (fallback: {a['fallback']}); "
                      f"features: {', '.join(a['features'])}")

            runner.run("page finds a WebGPU adapter", adapter)

            shot = {"path": args.screenshot}
            for engine in [e.strip() for e in args.engines.split(",") if e.strip()]:
                def greedy(engine=engine):
                    expected, native = reference(engine)
                    q = urllib.parse.urlencode({"model": f"models/{name}/", "engine": engine, "prompt": args.prompt,
                                                "n": len(expected), "autorun": 1})
                    browser.open(f"{base}?{q}")
                    t0 = time.time()
                    st = wait_for(browser, lambda s: s["phase"] in ("ready", "generating", "done"), 180,
                                  f"loading the model on the {engine} engine")
                    load_s = time.time() - t0

                    def maybe_shoot(s):
                        if shot["path"] and s and s.get("phase") == "generating" and len(s.get("tokens", [])) >= 3:
                            size = browser.screenshot(shot["path"])
                            print(f"    screenshot mid-generation ({len(s['tokens'])} tokens): {shot['path']}, {size} bytes")
                            shot["path"] = None

                    st = wait_for(browser, lambda s: s["phase"] == "done", args.limit,
                                  f"generating on the {engine} engine", on_poll=maybe_shoot)
                    r = st["result"]
                    print(f"    engine: {st['info']['describe']}")
                    print(f"    load {load_s:.1f} s; prompt {r['promptTokens']} tokens in {r['promptMs']:.0f} ms; "
                          f"decode {r['decodeSteps']} steps at {r['decodeTokS']:.2f} tok/s")
                    print(f"    text: {r['text']!r}")
                    speeds[engine] = r["decodeTokS"]
                    if args.prompt_ids is not None and r["promptIds"] != args.prompt_ids:
                        raise AssertionError(f"prompt ids differ\n    page:   {r['promptIds']}\n    native: {args.prompt_ids}")
                    if r["outputIds"] != expected:
                        raise AssertionError(f"greedy ids differ\n    page ({engine}): {r['outputIds']}\n"
                                             f"    {native}: {expected}")

                runner.run(f"greedy tokens on the {engine} engine in the page equal the native CPU engine's", greedy)

            def picked_folder():
                # As a person picking the folder: the directory goes to the <input webkitdirectory>, then
                # Generate is pressed. The CPU engine keeps this one quick.
                expected, native = reference("cpu")
                n = min(3, len(expected))
                q = urllib.parse.urlencode({"engine": "cpu", "prompt": args.prompt, "n": n})
                browser.open(f"{base}?{q}")
                wait_for(browser, lambda s: s["phase"] == "idle", 60, "page start")
                pick = browser.call("POST", "/element", {"using": "css selector", "value": "#pick"})
                element = next(iter(pick.values()))
                browser.call("POST", f"/element/{element}/value", {"text": os.path.realpath(args.model)})
                st = wait_for(browser, lambda s: s["phase"] == "ready", 120, "loading the picked folder")
                assert st["info"]["engine"] == "cpu", st["info"]
                browser.js("document.getElementById('generate').click()")
                st = wait_for(browser, lambda s: s["phase"] == "done", args.limit, "generating from the picked folder")
                got = st["result"]["outputIds"]
                assert got == expected[:n], f"greedy ids differ\n    page: {got}\n    {native}: {expected[:n]}"

            runner.run("a model folder picked in the page loads and generates", picked_folder)

            if args.scratch:
                package_test.run(runner, browser, server, base, args, name, loads)
        finally:
            if runner.failed:
                for line in browser.console()[-20:]:
                    print(f"    console {line}")
            browser.close()

        def no_webgpu():
            plain = Browser(driver, args.chromium, [])
            try:
                plain.open(base)
                st = wait_for(plain, lambda s: s["phase"] == "idle", 60, "page start")
                assert st["webgpu"] and not st["webgpu"]["available"], f"expected no WebGPU adapter: {st['webgpu']}"
                shown = plain.js("""
                    const box = document.getElementById('no-webgpu');
                    return {visible: !box.hidden && box.offsetHeight > 0, text: box.innerText,
                            engine: document.getElementById('engine').value};""")
                assert shown["visible"], "the no-WebGPU notice is not shown"
                assert "no WebGPU" in shown["text"] and "CPU engine" in shown["text"], shown["text"]
                assert shown["engine"] == "cpu", f"engine {shown['engine']!r} selected without WebGPU"
            finally:
                plain.close()

        runner.run("without WebGPU the page says so and offers the CPU engine", no_webgpu)
    finally:
        driver.close()
        server.shutdown()

    for what, ms in loads.items():
        print(f"browser-test: {what} of {name} in headless Chromium: {ms / 1000:.2f} s")
    for engine, tok_s in speeds.items():
        print(f"browser-test: {engine} engine in headless Chromium: {tok_s:.2f} tok/s (decode)")
    passed, failed = runner.passed + args.prior_passed, runner.failed + args.prior_failed
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
