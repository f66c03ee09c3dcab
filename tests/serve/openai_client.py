#!/usr/bin/env python3
"""`omex serve` through the official `openai` Python client (run by tests/serve_openai.rs).

    openai_client.py BASE_URL API_KEY MODEL_ID EXPECTED.json

BASE_URL is the server's root (http://127.0.0.1:PORT). EXPECTED.json lists greedy outputs computed by the Rust
driver with `omex run` on the same model, engine and context:

    [{"kind": "completion" | "chat", "prompt": str, "max_tokens": int, "text": str,
      "prompt_tokens": int, "completion_tokens": int, "stop": "MaxTokens" | "EndOfSequence" | ...}, ...]

Checks: /v1/models; chat and text completions, streamed and not, equal to `omex run`'s greedy text alone and
with 7 other requests decoding beside them (some sampled); stop strings; max_tokens; usage (non-streamed and
streamed with include_usage, cached prompt tokens on a repeated prompt); seeds; the top_k / ignore_eos
extensions; errors as the client's exception classes (BadRequestError with its code, AuthenticationError,
NotFoundError). Prints one line per check; exits non-zero on the first failure with what was expected and got.
"""

import json
import sys
import threading
import time
import urllib.error
import urllib.request

import openai
from openai import OpenAI

CHECKS = 0


def check(cond, what, **detail):
    global CHECKS
    CHECKS += 1
    if not cond:
        extra = "".join(f"\n    {k}: {v!r}" for k, v in detail.items())
        raise AssertionError(f"FAILED: {what}{extra}")


def ok(what):
    print(f"ok   {what}", flush=True)


def request(client, item, *, stream=False, include_usage=False, **kw):
    """One request for an expected item; returns (text, finish_reason, usage, response ids, chunks)."""
    args = dict(model=MODEL, max_tokens=item["max_tokens"], temperature=0.0)
    args.update(kw)
    if stream:
        args["stream"] = True
        if include_usage:
            args["stream_options"] = {"include_usage": True}
    if item["kind"] == "chat":
        resp = client.chat.completions.create(messages=[{"role": "user", "content": item["prompt"]}], **args)
    else:
        resp = client.completions.create(prompt=item["prompt"], **args)
    if not stream:
        check(len(resp.choices) == 1, "one choice", got=resp.choices)
        c = resp.choices[0]
        check(c.index == 0, "choice index 0", got=c.index)
        check(resp.model == MODEL, "response names the model", got=resp.model)
        check(bool(resp.id), "response has an id", got=resp.id)
        if item["kind"] == "chat":
            check(resp.object == "chat.completion", "object chat.completion", got=resp.object)
            check(c.message.role == "assistant", "assistant role", got=c.message.role)
            text = c.message.content
        else:
            check(resp.object == "text_completion", "object text_completion", got=resp.object)
            text = c.text
        return text, c.finish_reason, resp.usage, {resp.id}, 1
    text, finish, usage, ids, chunks, finishes = "", None, None, set(), 0, 0
    for chunk in resp:
        chunks += 1
        ids.add(chunk.id)
        check(chunk.model == MODEL, "chunk names the model", got=chunk.model)
        if chunk.usage is not None:
            check(usage is None, "usage comes once", first=usage, second=chunk.usage)
            usage = chunk.usage
        if not chunk.choices:
            check(chunk.usage is not None, "a chunk without choices carries usage", got=chunk)
            continue
        check(finish is None, "no content after the finish_reason chunk", got=chunk)
        c = chunk.choices[0]
        if item["kind"] == "chat":
            check(chunk.object == "chat.completion.chunk", "object chat.completion.chunk", got=chunk.object)
            piece = c.delta.content or ""
        else:
            check(chunk.object == "text_completion", "streamed object text_completion", got=chunk.object)
            piece = c.text or ""
        text += piece
        if c.finish_reason is not None:
            finish = c.finish_reason
            finishes += 1
    check(finishes == 1, "exactly one chunk carries a finish_reason", got=finishes)
    check(len(ids) == 1, "every chunk of a stream has the same id", got=ids)
    if include_usage:
        check(usage is not None, "include_usage: a usage chunk at the end")
    return text, finish, usage, ids, chunks


def check_usage(usage, item, what, completion=None):
    check(usage is not None, f"{what}: usage present")
    want_completion = item["completion_tokens"] if completion is None else completion
    check(usage.prompt_tokens == item["prompt_tokens"], f"{what}: usage.prompt_tokens equals `omex run`'s",
          want=item["prompt_tokens"], got=usage.prompt_tokens)
    check(usage.completion_tokens == want_completion, f"{what}: usage.completion_tokens",
          want=want_completion, got=usage.completion_tokens)
    check(usage.total_tokens == usage.prompt_tokens + usage.completion_tokens, f"{what}: total = prompt + completion",
          got=usage)
    details = usage.prompt_tokens_details
    check(details is not None and details.cached_tokens is not None, f"{what}: prompt_tokens_details.cached_tokens",
          got=usage)
    check(0 <= details.cached_tokens <= usage.prompt_tokens, f"{what}: 0 <= cached_tokens <= prompt_tokens", got=usage)


def want_finish(item):
    return "length" if item["stop"] in ("MaxTokens", "ContextFull") else "stop"


def greedy_equal(client, item, tag):
    what = f"{item['kind']} {item['prompt'][:30]!r} ({tag})"
    text, finish, usage, _, _ = request(client, item)
    check(text == item["text"], f"{what}: greedy text equals `omex run`", want=item["text"], got=text)
    check(finish == want_finish(item), f"{what}: finish_reason", want=want_finish(item), got=finish, stop=item["stop"])
    check_usage(usage, item, what)
    text, finish, usage, _, chunks = request(client, item, stream=True, include_usage=True)
    check(text == item["text"], f"{what}, streamed: greedy text equals `omex run`", want=item["text"], got=text)
    check(finish == want_finish(item), f"{what}, streamed: finish_reason", want=want_finish(item), got=finish)
    check(chunks >= 2, f"{what}, streamed: the text comes in several chunks", got=chunks)
    check_usage(usage, item, what + ", streamed")


def test_models(client):
    models = client.models.list()
    ids = [m.id for m in models.data]
    check(MODEL in ids, "models.list names the model", want=MODEL, got=ids)
    check(all(m.object == "model" for m in models.data), "every entry is a model object", got=models.data)
    ok(f"models.list: {ids}")


def test_greedy_alone(client):
    for item in EXPECTED:
        greedy_equal(client, item, "alone")
    ok(f"greedy equal to `omex run`, alone: {len(EXPECTED)} prompts, streamed and not")


BACKGROUND = [
    ("completion", "The history of the Roman Empire", {"temperature": 0.8, "seed": 1}),
    ("chat", "Tell me a long story about a dragon.", {"temperature": 0.7, "seed": 2}),
    ("completion", "import numpy as np\n", {}),
    ("chat", "List ten animals.", {"temperature": 1.0, "top_p": 0.9, "seed": 3}),
    ("completion", "In the beginning", {"temperature": 0.9, "extra_body": {"top_k": 40, "min_p": 0.05}}),
    ("chat", "Explain photosynthesis.", {"extra_body": {"repetition_penalty": 1.1}}),
    ("completion", "Dear Sir or Madam,", {"temperature": 0.6, "seed": 7}),
]


def test_greedy_concurrent(client):
    """The expected prompts again while 7 other streams decode beside them (loops, so they overlap)."""
    stop = threading.Event()
    in_flight = [0]
    lock = threading.Lock()
    done = [0] * len(BACKGROUND)
    errors = []

    def worker(i, kind, prompt, kw):
        c = OpenAI(base_url=BASE + "/v1", api_key=KEY, max_retries=0, timeout=120)
        item = {"kind": kind, "prompt": prompt, "max_tokens": 48}
        kw = dict(kw)
        kw["extra_body"] = dict(kw.get("extra_body", {}), ignore_eos=True)
        while not stop.is_set():
            with lock:
                in_flight[0] += 1
            try:
                _, finish, usage, _, _ = request(c, item, stream=True, include_usage=True, **kw)
                if finish != "length" or usage.completion_tokens != 48:
                    errors.append(f"background {i}: finish {finish}, usage {usage}")
                done[i] += 1
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(f"background {i}: {type(e).__name__}: {e}")
                return
            finally:
                with lock:
                    in_flight[0] -= 1

    threads = [threading.Thread(target=worker, args=(i, *b), daemon=True) for i, b in enumerate(BACKGROUND)]
    for t in threads:
        t.start()
    # Let them all start decoding.
    t0 = time.time()
    while in_flight[0] < len(BACKGROUND) and time.time() - t0 < 10:
        time.sleep(0.05)
    time.sleep(0.5)
    seen = []
    try:
        for item in EXPECTED:
            seen.append(in_flight[0])
            greedy_equal(client, item, "beside 7 others")
            seen.append(in_flight[0])
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=120)
    check(not errors, "the background requests succeeded", got=errors)
    check(all(d >= 1 for d in done), "every background stream finished at least one request", got=done)
    check(min(seen) >= 1 and sum(seen) / len(seen) >= 4, "the background streams ran beside the checked ones",
          in_flight_samples=seen)
    ok(f"greedy equal to `omex run` beside 7 concurrent streams (background requests done: {done}, "
       f"in flight when sampled: {seen})")


def test_stop_strings(client):
    # A stop string taken from the middle of an expected text: the output is that text cut before it.
    n = 0
    for item in EXPECTED:
        text = item["text"]
        if len(text) < 12:
            continue
        mid = len(text) // 2
        stop = text[mid:mid + 3]
        if not stop.strip():
            continue
        cut = text[: text.find(stop)]
        for stream in (False, True):
            for stops in ([stop], ["\u2603never\u2603", stop]):
                got, finish, usage, _, _ = request(client, item, stream=stream, include_usage=stream, stop=stops)
                what = f"{item['kind']} stop={stops!r} stream={stream}"
                check(got == cut, f"{what}: text cut before the stop string", want=cut, got=got, full=text)
                check(finish == "stop", f"{what}: finish_reason stop", got=finish)
                check(usage.completion_tokens <= item["completion_tokens"], f"{what}: fewer tokens", got=usage)
                n += 1
    check(n >= 8, "stop strings were exercised", got=n)
    # A stop string as a plain string (not a list) is accepted too.
    item = EXPECTED[0]
    stop = item["text"][len(item["text"]) // 2:][:4]
    got, finish, _, _, _ = request(client, item, stop=stop)
    check(got == item["text"][: item["text"].find(stop)] and finish == "stop", "stop as a string", got=got)
    ok(f"stop strings: {n + 1} requests cut before the stop string, finish_reason stop")


def test_max_tokens(client):
    for kind, prompt in (("completion", "Once upon a time"), ("chat", "Say hello.")):
        for stream in (False, True):
            item = {"kind": kind, "prompt": prompt, "max_tokens": 5}
            _, finish, usage, _, _ = request(client, item, stream=stream, include_usage=True,
                                             extra_body={"ignore_eos": True})
            what = f"{kind} max_tokens=5 stream={stream}"
            check(finish == "length", f"{what}: finish_reason length", got=finish)
            check(usage.completion_tokens == 5, f"{what}: completion_tokens == max_tokens", got=usage)
            check(usage.total_tokens == usage.prompt_tokens + 5, f"{what}: total", got=usage)
    # max_tokens shorter than the expected text: its first tokens, finish_reason length.
    item = dict(EXPECTED[0])
    full = item["text"]
    item["max_tokens"] = 3
    got, finish, usage, _, _ = request(client, item)
    check(full.startswith(got) and 0 < len(got) < len(full), "max_tokens=3 is a prefix of the greedy text",
          full=full, got=got)
    check(finish == "length" and usage.completion_tokens == 3, "max_tokens=3: length, 3 tokens", got=(finish, usage))
    ok("max_tokens: finish_reason length, completion_tokens == max_tokens, streamed and not")


def test_usage_streamed_without_include(client):
    item = EXPECTED[0]
    text, finish, usage, _, _ = request(client, item, stream=True, include_usage=False)
    check(text == item["text"], "streamed without include_usage: same text", got=text)
    check(usage is None, "streamed without include_usage: no usage chunk", got=usage)
    ok("stream without include_usage: no usage chunk")


def test_cached_tokens(client):
    prompt = ("The following is a list of the planets of the solar system, from the closest to the sun to the "
              "farthest away, with one fact about each of them:")
    item = {"kind": "completion", "prompt": prompt, "max_tokens": 4}
    _, _, first, _, _ = request(client, item)
    _, _, second, _, _ = request(client, item)
    check(first.prompt_tokens >= 32, "the long prompt has at least two cache blocks of tokens", got=first)
    c2 = second.prompt_tokens_details.cached_tokens
    check(c2 >= 16, "a repeated prompt reuses its cached prefix (cached_tokens >= 16)", first=first, second=second)
    check(c2 < second.prompt_tokens, "the last prompt token is always computed", got=second)
    ok(f"cached prompt tokens: first {first.prompt_tokens_details.cached_tokens}, "
       f"repeat {c2} of {second.prompt_tokens}")


def test_seed_and_extensions(client):
    item = {"kind": "completion", "prompt": "Once upon a time", "max_tokens": 16}
    a = request(client, item, temperature=0.9, seed=42, extra_body={"ignore_eos": True})[0]
    b = request(client, item, temperature=0.9, seed=42, extra_body={"ignore_eos": True})[0]
    check(a == b, "same seed, same sampled text", a=a, b=b)
    others = {request(client, item, temperature=1.2, seed=s, extra_body={"ignore_eos": True})[0] for s in range(3)}
    check(len(others) > 1, "different seeds give different texts", got=others)
    # top_k=1 keeps only the argmax: sampling at temperature 1 is then greedy.
    for e in EXPECTED[:2]:
        got = request(client, e, temperature=1.0, seed=5, extra_body={"top_k": 1})[0]
        check(got == e["text"], "top_k=1 (extra_body) at temperature 1 is greedy", want=e["text"], got=got)
    got = request(client, EXPECTED[0], extra_body={"repetition_penalty": 1.0, "min_p": 0.0})[0]
    check(got == EXPECTED[0]["text"], "repetition_penalty=1, min_p=0 change nothing", got=got)
    ok("seed reproducible, top_k/min_p/repetition_penalty/ignore_eos through extra_body")


def expect_error(cls, what, fn, code=None):
    try:
        fn()
    except cls as e:
        check(e.status_code == {openai.BadRequestError: 400, openai.AuthenticationError: 401,
                                openai.NotFoundError: 404}.get(cls, e.status_code), f"{what}: status", got=e.status_code)
        body = e.body
        check(isinstance(body, dict) and isinstance(body.get("message"), str) and body["message"],
              f"{what}: OpenAI error shape with a message", got=body)
        check("type" in body, f"{what}: the error has a type", got=body)
        if code is not None:
            check(e.code == code, f"{what}: error code", want=code, got=e.code)
        return e
    except openai.APIStatusError as e:
        check(False, f"{what}: wrong exception", want=cls.__name__, got=f"{type(e).__name__} {e.status_code} {e.body}")
    check(False, f"{what}: no exception", want=cls.__name__)


def test_errors(client):
    msgs = [{"role": "user", "content": "hi"}]
    e = expect_error(openai.BadRequestError, "unknown model",
                     lambda: client.chat.completions.create(model="no-such-model", messages=msgs, max_tokens=4),
                     code="model_not_found")
    expect_error(openai.BadRequestError, "unknown model (completions)",
                 lambda: client.completions.create(model="no-such-model", prompt="hi", max_tokens=4),
                 code="model_not_found")
    expect_error(openai.BadRequestError, "prompt longer than the context",
                 lambda: client.completions.create(model=MODEL, prompt="word " * 2000, max_tokens=4),
                 code="context_length_exceeded")
    expect_error(openai.BadRequestError, "n=2",
                 lambda: client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=4, n=2))
    expect_error(openai.BadRequestError, "temperature -1",
                 lambda: client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=4, temperature=-1))
    expect_error(openai.BadRequestError, "top_p 1.5",
                 lambda: client.completions.create(model=MODEL, prompt="hi", max_tokens=4, top_p=1.5))
    expect_error(openai.BadRequestError, "empty messages",
                 lambda: client.chat.completions.create(model=MODEL, messages=[], max_tokens=4))
    expect_error(openai.BadRequestError, "streamed request with a bad model fails before streaming",
                 lambda: list(client.chat.completions.create(model="nope", messages=msgs, max_tokens=4, stream=True)),
                 code="model_not_found")
    wrong = OpenAI(base_url=BASE + "/v1", api_key="wrong-key", max_retries=0, timeout=60)
    expect_error(openai.AuthenticationError, "wrong key (chat)",
                 lambda: wrong.chat.completions.create(model=MODEL, messages=msgs, max_tokens=4))
    expect_error(openai.AuthenticationError, "wrong key (models.list)", lambda: wrong.models.list())
    expect_error(openai.AuthenticationError, "wrong key (stream)",
                 lambda: list(wrong.completions.create(model=MODEL, prompt="hi", max_tokens=4, stream=True)))
    expect_error(openai.NotFoundError, "unknown route",
                 lambda: client.get("/no/such/route", cast_to=object))
    # /health needs no key.
    with urllib.request.urlopen(BASE + "/health", timeout=30) as r:
        check(r.status == 200, "/health without a key", got=r.status)
    try:
        urllib.request.urlopen(BASE + "/metrics", timeout=30)
        check(False, "/metrics without a key is refused")
    except urllib.error.HTTPError as err:
        check(err.code == 401, "/metrics without a key: 401", got=err.code)
    ok(f"errors: BadRequestError ({e.code}, context_length_exceeded, n, temperature, top_p, empty messages), "
       "AuthenticationError, NotFoundError, /health open")


def main():
    global BASE, KEY, MODEL, EXPECTED
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    BASE, KEY, MODEL = sys.argv[1].rstrip("/"), sys.argv[2], sys.argv[3]
    if BASE.endswith("/v1"):
        BASE = BASE[:-3]
    with open(sys.argv[4]) as f:
        EXPECTED = json.load(f)
    assert EXPECTED, "no expected outputs"
    client = OpenAI(base_url=BASE + "/v1", api_key=KEY, max_retries=0, timeout=120)
    t0 = time.time()
    test_models(client)
    test_greedy_alone(client)
    test_errors(client)
    test_max_tokens(client)
    test_stop_strings(client)
    test_usage_streamed_without_include(client)
    test_cached_tokens(client)
    test_seed_and_extensions(client)
    test_greedy_concurrent(client)
    print(f"openai_client.py: all {CHECKS} checks passed in {time.time() - t0:.1f} s (openai {openai.__version__})")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(e, file=sys.stderr)
        sys.exit(1)
