"""The omex-web package's tests in headless Chromium, called by scripts/browser_test.py: the npm tarball
installed into a scratch project (scripts/browser-test.sh makes it) and driven through a scratch page
(package-page/), the way a web developer's page uses it.

Checks: loading a URL with per-file progress in a Web Worker; completions.create greedy ids equal the
native engine's for the same prompt and activations (wasm by default, on int8 activations: the native
`--activations int8` ids; wasm with `activations: "f32"`, and WebGPU for a few tokens: the native
`--activations f32` ids); chat.completions.create streamed and not give the same text, OpenAI-shaped, and the
native engine's chat ids; a main-thread timer keeps firing during generation; interrupt() ends a stream with
finish_reason "abort"; a second load reads the cache and makes no request (the server's request log); a
damaged cache entry and a full quota give clear errors and leave no model that looks complete.

The f32 references come as browser_test.py's arguments (--expected, --expected-chat); the int8 ones, which
scripts/browser-test.sh also computes, in the environment: OMEX_WEB_EXPECTED_INT8 and
OMEX_WEB_EXPECTED_CHAT_INT8 (comma-separated ids).
"""

import json
import os
import time
import urllib.parse


def js_async(browser, call, *args):
    """Runs `window.omexTests.<call>(...args)` in the page and returns what it resolves to."""
    script = ("const done = arguments[arguments.length - 1];"
              f"window.omexTests.{call}(...Array.from(arguments).slice(0, -1)).then(done, (e) => done({{error: String(e)}}));")
    return browser.call("POST", "/execute/async", {"script": script, "args": list(args)})


def ok(value, what):
    if isinstance(value, dict) and "error" in value:
        raise AssertionError(f"{what}: {value.get('code')}: {value['error']}")
    return value


def env_ids(name):
    """Comma-separated token ids from the environment variable `name` (set by scripts/browser-test.sh)."""
    text = os.environ.get(name, "").strip()
    return [int(x) for x in text.split(",")] if text else None


def need(ids, name):
    """`ids`, or a failure naming the environment variable that should have given them."""
    if ids is None:
        raise AssertionError(f"{name} is not set: scripts/browser-test.sh sets it (the native engine's greedy ids "
                             "with --activations int8)")
    return ids


def open_page(browser, base):
    browser.open(f"{base}scratch/index.html")
    deadline = time.time() + 60
    while time.time() < deadline:
        if browser.js("return window.omexTestsReady === true"):
            return
        time.sleep(0.2)
    raise AssertionError("the scratch page did not start (is the package installed under scratch/node_modules?)")


def run(runner, browser, server, base, args, model_name, report):
    """Adds the package tests to `runner`; `report` collects figures for the summary."""
    url = f"{base}models/{model_name}/"
    meta = json.load(open(os.path.join(args.model, "metadata.json")))
    listed = sorted(f["path"] for f in meta["files"])
    n = min(4, len(args.expected))
    # The wasm engine's default, int8 activations, against the native engine's on int8 activations; with
    # activations: "f32" (and WebGPU, always f32), against the native f32 ids, args.expected.
    expected_int8 = env_ids("OMEX_WEB_EXPECTED_INT8")
    expected_chat_int8 = env_ids("OMEX_WEB_EXPECTED_CHAT_INT8")
    if expected_int8 == args.expected:
        print(f"    note: the native int8 and f32 greedy ids are the same for this prompt ({expected_int8}): only "
              "the engine's description tells the two paths apart")
    state = {}

    def installed():
        pkg = os.path.join(args.scratch, "node_modules", "omex-web")
        manifest = json.load(open(os.path.join(pkg, "package.json")))
        assert manifest["name"] == "omex-web", manifest
        for f in ("index.js", "index.d.ts", "worker.js", "omex_web_bg.wasm"):
            assert os.path.isfile(os.path.join(pkg, f)), f"{f} is not in the installed package"
        open_page(browser, base)

    runner.run("the npm tarball installs into a scratch project and its page imports omex-web", installed)

    def first_load():
        js_async(browser, "cacheDelete")
        server.requests.clear()
        r = ok(js_async(browser, "load", url, {"backend": "wasm"}), "load")
        info = r["info"]
        assert r["worker"], "the engine does not run in a worker by default"
        assert info["backend"] == "wasm" and info["tier"] == "wasm", info
        assert "Int8 activations" in info["describe"], f"the wasm engine's default is not int8: {info['describe']}"
        assert not info["fromCache"], "the first load claims the cache"
        assert sorted(r["files"]) == listed, f"progress named {sorted(r['files'])}, metadata.json lists {listed}"
        assert "download" in r["phases"] and "init" in r["phases"], r["phases"]
        assert r["last"]["loaded"] == r["last"]["total"] == sum(f["bytes"] for f in meta["files"]), r["last"]
        fetched = {p for p in server.requests if p.startswith(f"/models/{model_name}/")}
        assert len(fetched) == len(listed) + 1, f"{len(fetched)} model requests for {len(listed)} files and metadata.json"
        report["first load (wasm, network)"] = r["ms"]
        print(f"    first load {r['ms']:.0f} ms ({r['events']} progress events, {info['bytes'] / 2**20:.1f} MiB)")

    runner.run("omex.load fetches a model URL in a worker with per-file progress", first_load)

    def greedy_wasm():
        # Every token of the reference: int8 and f32 activations part within a few tokens (at the 6th of the
        # default prompt's 8 on SmolLM2-135M), so fewer could not tell the two paths apart.
        expected = need(expected_int8, "OMEX_WEB_EXPECTED_INT8")
        k = len(expected)
        r = ok(js_async(browser, "completion", {"prompt": args.prompt, "max_tokens": k, "temperature": 0}), "completion")
        c = r["result"]
        assert c["object"] == "text_completion" and c["choices"][0]["finish_reason"] == "length", c
        assert c["usage"]["completion_tokens"] == k, c["usage"]
        if args.prompt_ids is not None:
            assert c["omex"]["promptIds"] == args.prompt_ids, (c["omex"]["promptIds"], args.prompt_ids)
        print(f"    package (wasm, default activations): {c['omex']['outputIds']}")
        assert c["omex"]["outputIds"] == expected, \
            (f"greedy ids differ\n    package (wasm, default int8 activations): {c['omex']['outputIds']}\n"
             f"    native --activations int8: {expected}\n    native --activations f32: {args.expected}")
        state["text"] = c["choices"][0]["text"]  # its ids equal the native engine's (checked above)
        state["tokens"] = k
        t = r["timer"]
        gen_ms = c["omex"]["promptMs"] + c["omex"]["decodeMs"]
        print(f"    {c['choices'][0]['text']!r}; main-thread timer: {t['ticks']} ticks, longest gap {t['maxGapMs']:.0f} ms "
              f"over {gen_ms:.0f} ms of generation")
        assert t["ticks"] >= max(3, gen_ms / 20 / 4), f"the page's timer fired {t['ticks']} times in {gen_ms:.0f} ms"
        assert t["maxGapMs"] < 200, f"the page stalled {t['maxGapMs']:.0f} ms during generation"

    runner.run("completions.create in the worker (int8 activations, the default): greedy ids equal the native "
               "engine's on int8, the page stays responsive", greedy_wasm)

    def concurrent_requests():
        # Three completions made at once take turns: each gets the same greedy ids a lone one gets.
        expected = need(expected_int8, "OMEX_WEB_EXPECTED_INT8")
        req = {"prompt": args.prompt, "max_tokens": len(expected), "temperature": 0}
        got = ok(js_async(browser, "concurrent", [req, req, req]), "concurrent")
        assert isinstance(got, list) and len(got) == 3, got
        for i, c in enumerate(got):
            assert c["omex"]["outputIds"] == expected, f"request {i}: {c['omex']['outputIds']} against {expected}"
        assert len({c["id"] for c in got}) == 3, "the completions share an id"

    runner.run("completions made at once take turns and each gets the lone request's greedy ids", concurrent_requests)

    def chat_api():
        msgs = [{"role": "user", "content": args.prompt}]
        whole = ok(js_async(browser, "chat", {"messages": msgs, "max_tokens": n, "temperature": 0}), "chat")
        assert whole["object"] == "chat.completion", whole
        choice = whole["choices"][0]
        assert choice["message"]["role"] == "assistant" and choice["finish_reason"] == "length", choice
        if args.expected_chat:
            expected_chat = need(expected_chat_int8, "OMEX_WEB_EXPECTED_CHAT_INT8")
            assert whole["omex"]["outputIds"] == expected_chat[:n], \
                (f"chat ids differ\n    package (int8 activations): {whole['omex']['outputIds']}\n"
                 f"    native --chat --activations int8: {expected_chat[:n]}")
        s = ok(js_async(browser, "chatStream", {"messages": msgs, "max_tokens": n, "temperature": 0}, 0), "stream")
        chunks = s["chunks"]
        assert all(c["object"] == "chat.completion.chunk" for c in chunks), chunks[:2]
        assert chunks[0]["choices"][0]["delta"].get("role") == "assistant", chunks[0]
        assert chunks[-1]["choices"][0]["finish_reason"] == "length", chunks[-1]
        assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
        assert text == choice["message"]["content"], f"streamed {text!r}, whole {choice['message']['content']!r}"
        assert chunks[-1]["omex"]["outputIds"] == whole["omex"]["outputIds"]
        state["chat_text"] = text
        print(f"    chat: {text!r} in {len(chunks)} chunks")

    runner.run("chat.completions.create streamed and not: the same OpenAI-shaped answer as the native --chat", chat_api)

    def stop_string():
        # The first character of the greedy text after its first letter: generation stops there, and the
        # text ends just before it.
        full = state["text"]
        stop = next(ch for ch in full.strip()[1:] if not ch.isalnum())
        r = ok(js_async(browser, "completion", {"prompt": args.prompt, "max_tokens": state["tokens"],
                                                 "temperature": 0, "stop": [stop]}), "completion")
        c = r["result"]["choices"][0]
        assert c["finish_reason"] == "stop", c
        assert c["text"] == full[:full.index(stop)], f"with stop {stop!r}: {c['text']!r} from {full!r}"

    runner.run("a stop string ends the completion before it (finish_reason stop)", stop_string)

    def interrupt():
        msgs = [{"role": "user", "content": args.prompt}]
        s = ok(js_async(browser, "chatStream", {"messages": msgs, "max_tokens": 64, "temperature": 0,
                                                 "ignore_eos": True}, 2), "stream")
        last = s["chunks"][-1]
        assert last["choices"][0]["finish_reason"] == "abort", last
        assert len(last["omex"]["outputIds"]) < 8, f"{len(last['omex']['outputIds'])} tokens after interrupt()"

    runner.run("interrupt() stops a stream (finish_reason abort)", interrupt)

    def cached_reload():
        open_page(browser, base)  # a new document: only the browser's storage remains
        listed_models = ok(js_async(browser, "cacheList"), "cache.list")
        assert [m["url"] for m in listed_models] == [url], listed_models
        server.requests.clear()
        r = ok(js_async(browser, "load", url, {"backend": "wasm"}), "load")
        asked = [p for p in server.requests if p.startswith("/models/")]
        assert not asked, f"a cached load still asked the server for {len(asked)} files: {asked[:3]}..."
        assert r["info"]["fromCache"], r["info"]
        report["cached load (wasm)"] = r["ms"]
        print(f"    cached load {r['ms']:.0f} ms, no model request")
        c = ok(js_async(browser, "completion", {"prompt": args.prompt, "max_tokens": 2, "temperature": 0}), "completion")
        expected = need(expected_int8, "OMEX_WEB_EXPECTED_INT8")[:2]
        assert c["result"]["omex"]["outputIds"] == expected, (c["result"]["omex"]["outputIds"], expected)

    runner.run("a reload reads the model from the cache: no network request", cached_reload)

    def wasm_f32():
        bad = js_async(browser, "load", url, {"backend": "wasm", "activations": "fp8"})
        assert bad.get("code") == "bad-request" and "activations" in bad.get("error", ""), \
            f"activations: 'fp8' gave {bad}"
        r = ok(js_async(browser, "load", url, {"backend": "wasm", "activations": "f32"}), "load with activations f32")
        info = r["info"]
        assert info["backend"] == "wasm" and "F32 activations" in info["describe"], info["describe"]
        assert info["fromCache"], info
        k = len(args.expected)
        c = ok(js_async(browser, "completion", {"prompt": args.prompt, "max_tokens": k, "temperature": 0}), "completion")
        got = c["result"]["omex"]["outputIds"]
        print(f"    package (wasm, activations f32): {got}")
        assert got == args.expected, (f"greedy ids differ\n    package (wasm, activations f32): {got}\n"
                                      f"    native --activations f32: {args.expected}")

    runner.run("the package on wasm with activations: \"f32\": greedy ids equal the native engine's on f32",
               wasm_f32)

    def webgpu():
        k = min(2, n)  # SwiftShader is slow: the prompt and one decode step
        r = ok(js_async(browser, "load", url, {"backend": "webgpu"}), "load on WebGPU")
        info = r["info"]
        assert info["backend"] == "webgpu" and info["tier"] in ("portable", "f16"), info
        assert info["subgroups"] is False
        assert "f32 activations" in info["describe"], info["describe"]
        print(f"    WebGPU: tier {info['tier']} (browser offers shader-f16: {info['shaderF16']}, "
              f"subgroups: {info['subgroupsOffered']}); load {r['ms']:.0f} ms from the cache")
        report["cached load (webgpu)"] = r["ms"]
        c = ok(js_async(browser, "completion", {"prompt": args.prompt, "max_tokens": k, "temperature": 0}), "completion")
        assert c["result"]["omex"]["outputIds"] == args.expected[:k], \
            f"greedy ids differ\n    package (webgpu): {c['result']['omex']['outputIds']}\n    native: {args.expected[:k]}"

    runner.run("the package on WebGPU: greedy ids equal the native engine's, the tier reported", webgpu)

    def corrupt():
        ok(js_async(browser, "unload"), "unload")
        hit = ok(js_async(browser, "corruptCache"), "corrupt")
        r = js_async(browser, "load", url, {"backend": "wasm"})
        assert r.get("code") == "corrupt-cache", f"a damaged cache entry gave {r}"
        assert "damaged" in r["error"] and "load again" in r["error"], r["error"]
        print(f"    {r['error'][:160]}...  ({hit['bytes']} bytes damaged)")
        assert ok(js_async(browser, "cacheList"), "cache.list") == [], "the damaged model still looks cached"
        server.requests.clear()
        again = ok(js_async(browser, "load", url, {"backend": "wasm"}), "load after the damage")
        assert not again["info"]["fromCache"] and server.requests, "the next load did not download again"

    runner.run("a damaged cache entry gives a clear error, and the next load downloads again", corrupt)

    def quota():
        ok(js_async(browser, "unload"), "unload")
        ok(js_async(browser, "cacheDelete"), "cache.delete")
        r = js_async(browser, "load", url, {"backend": "wasm", "cacheMaxBytes": 1 << 20})
        assert r.get("code") == "quota", f"a full quota gave {r}"
        assert "quota" in r["error"] and "Nothing of this model was kept" in r["error"], r["error"]
        print(f"    {r['error'][:160]}...")
        assert ok(js_async(browser, "cacheList"), "cache.list") == [], "a half-cached model is listed"
        assert ok(js_async(browser, "cacheEntries"), "entries") == 0, "a failed load left files in the cache"

    runner.run("a storage quota error is reported clearly and leaves nothing half-written", quota)
