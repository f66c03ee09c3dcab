#!/usr/bin/env python3
"""`omex serve` under load (run by tests/serve_openai.rs).

    load.py BASE_URL API_KEY MODEL_ID [--pid PID] [--clients 32] [--duration 24] [--max-tokens 24]
            [--max-rss-mb 1500] [--expect-429] [--seed 1]

CLIENTS concurrent streaming clients (asyncio + AsyncOpenAI, no retries) each send requests one after the other
(chat and text completions, greedy and sampled, some with ignore_eos) until DURATION seconds have passed; about
one request in ten is dropped on purpose after its second chunk (the connection closes). Every request must
end one way only: a stream with exactly one finish_reason and a usage chunk, a deliberate drop, or a clean 429
(counted, then the client backs off). No other error is allowed, and no response id may repeat.

Then /metrics (the difference from before the run) must account for every request: finished + cancelled +
failed == accepted (the requests that were not refused), no failures, 429s counted as rejected; completion
tokens equal the sum of the finished requests' usage plus at most what the dropped ones could have generated;
the queue depth and active sequences go back to 0. With --pid, the server's VmRSS (from /proc/PID/status) stays
under --max-rss-mb and does not keep growing: the peak of the second half of the run is within 10% + 64 MiB of
the first half's peak. /health answers within 2 s throughout.
"""

import argparse
import asyncio
import json
import random
import re
import sys
import threading
import time
import urllib.request

import openai
from openai import AsyncOpenAI

PROMPTS = [
    ("completion", "The capital of France is"),
    ("chat", "What is the capital of France?"),
    ("completion", "def fibonacci(n):"),
    ("chat", "Write a haiku about the sea."),
    ("completion", "Once upon a time, in a small village,"),
    ("chat", "Give me three tips for learning a language."),
    ("completion", "The three primary colors are"),
    ("completion", "1, 2, 3, 4, 5,"),
    ("chat", "Why is the sky blue?"),
    ("completion", "The quick brown fox"),
]


def fail(what, **detail):
    extra = "".join(f"\n    {k}: {v!r}" for k, v in detail.items())
    print(f"FAILED: {what}{extra}", file=sys.stderr, flush=True)
    sys.exit(1)


def check(cond, what, **detail):
    if not cond:
        fail(what, **detail)


def get(base, path, key, timeout=30):
    req = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.read().decode()


LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)')


def parse_metrics(text):
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = LINE.match(line)
        if not m:
            fail("a /metrics line that is not Prometheus text", line=line)
        out[(m.group(1), m.group(2) or "")] = float(m.group(3))
    return out


def metric(ms, name, labels=""):
    if (name, labels) not in ms:
        fail(f"/metrics has no {name}{labels}", names=sorted({n for n, _ in ms}))
    return ms[(name, labels)]


def metric_or(ms, name, labels, default):
    return ms.get((name, labels), default)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Stats:
    def __init__(self):
        self.ok = []  # (finish_reason, completion_tokens, prompt_tokens, max_tokens)
        self.dropped = []  # (max_tokens, chunks seen, prompt key)
        self.rejected = 0
        self.errors = []
        self.ids = {}
        self.prompt_tokens = {}  # prompt key -> prompt tokens, from finished requests
        self.in_flight = 0
        self.peak_in_flight = 0


async def one_request(client, args, stats, rng, model, cid, k):
    kind, prompt = PROMPTS[(cid + k) % len(PROMPTS)]
    max_tokens = rng.randint(4, args.max_tokens)
    ignore_eos = rng.random() < 0.5
    sampled = rng.random() < 0.5
    drop = rng.random() < 0.1
    if drop:
        max_tokens = max(max_tokens, 64)  # long enough that it cannot finish before the drop is noticed
        ignore_eos = True
    kw = dict(model=model, max_tokens=max_tokens, stream=True, stream_options={"include_usage": True},
              extra_body={"ignore_eos": ignore_eos})
    if sampled:
        kw.update(temperature=0.8, top_p=0.95, seed=rng.randint(0, 1 << 30))
    else:
        kw.update(temperature=0.0)
    stats.in_flight += 1
    stats.peak_in_flight = max(stats.peak_in_flight, stats.in_flight)
    try:
        if kind == "chat":
            stream = await client.chat.completions.create(messages=[{"role": "user", "content": prompt}], **kw)
        else:
            stream = await client.completions.create(prompt=prompt, **kw)
    except openai.RateLimitError as e:
        stats.in_flight -= 1
        stats.rejected += 1
        body = e.body if isinstance(e.body, dict) else {}
        if not body.get("message"):
            stats.errors.append(f"429 without an OpenAI error body: {e.body!r}")
        await asyncio.sleep(0.2 + 0.3 * rng.random())
        return
    except Exception as e:  # noqa: BLE001 - every other error fails the run
        stats.in_flight -= 1
        stats.errors.append(f"client {cid} request {k}: {type(e).__name__}: {e}")
        return
    chunks, finishes, usage, rid, after_finish, finish = 0, 0, None, None, False, None
    try:
        async for chunk in stream:
            if rid is None:
                rid = chunk.id
            elif chunk.id != rid:
                stats.errors.append(f"client {cid} request {k}: chunk ids differ: {rid} {chunk.id}")
            if chunk.usage is not None:
                usage = chunk.usage
            if chunk.choices:
                if finishes:
                    after_finish = True
                chunks += 1
                if chunk.choices[0].finish_reason is not None:
                    finishes += 1
                    finish = chunk.choices[0].finish_reason
            if drop and chunks >= 2:
                await stream.close()
                stats.dropped.append((max_tokens, chunks, (kind, prompt)))
                return
    except Exception as e:  # noqa: BLE001
        stats.errors.append(f"client {cid} request {k}: stream broke after {chunks} chunks: {type(e).__name__}: {e}")
        return
    finally:
        stats.in_flight -= 1
    tag = f"client {cid} request {k} ({kind}, max_tokens {max_tokens}, ignore_eos {ignore_eos})"
    if finishes != 1:
        stats.errors.append(f"{tag}: {finishes} chunks with a finish_reason (want exactly 1)")
        return
    if after_finish:
        stats.errors.append(f"{tag}: content after the finish_reason chunk")
    if usage is None:
        stats.errors.append(f"{tag}: no usage chunk despite include_usage")
        return
    if rid in stats.ids:
        stats.errors.append(f"{tag}: response id {rid} repeats ({stats.ids[rid]})")
    stats.ids[rid] = tag
    n = usage.completion_tokens
    if n > max_tokens or (finish == "length") != (n == max_tokens):
        stats.errors.append(f"{tag}: finish {finish} with {n} tokens")
    if ignore_eos and (finish != "length" or n != max_tokens):
        stats.errors.append(f"{tag}: ignore_eos but finish {finish} with {n} tokens")
    if finish not in ("stop", "length"):
        stats.errors.append(f"{tag}: finish_reason {finish!r}")
    if usage.total_tokens != usage.prompt_tokens + n:
        stats.errors.append(f"{tag}: usage total != prompt + completion: {usage}")
    prev = stats.prompt_tokens.setdefault((kind, prompt), usage.prompt_tokens)
    if prev != usage.prompt_tokens:
        stats.errors.append(f"{tag}: prompt_tokens {usage.prompt_tokens}, earlier {prev} for the same prompt")
    stats.ok.append((finish, n, usage.prompt_tokens, max_tokens))


async def client_loop(args, stats, model, cid, deadline):
    client = AsyncOpenAI(base_url=args.base + "/v1", api_key=args.key, max_retries=0, timeout=120)
    rng = random.Random(args.seed * 1000 + cid)
    k = 0
    try:
        while time.monotonic() < deadline and k < args.max_requests:
            await one_request(client, args, stats, rng, model, cid, k)
            k += 1
    finally:
        await client.close()
    return k


def sample(args, samples, health, stop):
    """A thread: the server's RSS, and how long /health takes (timed here, not on the busy event loop)."""
    t0 = time.monotonic()
    while not stop.is_set():
        if args.pid:
            samples.append((time.monotonic() - t0, rss_kib(args.pid)))
        h0 = time.monotonic()
        try:
            status, _ = get(args.base, "/health", args.key, timeout=10)
            health.append((time.monotonic() - h0, status))
        except Exception as e:  # noqa: BLE001
            health.append((time.monotonic() - h0, repr(e)))
        stop.wait(0.5)


async def run(args):
    _, text = get(args.base, "/metrics", args.key)
    before = parse_metrics(text)
    stats = Stats()
    rss, health = [], []
    stop = threading.Event()
    sampler = threading.Thread(target=sample, args=(args, rss, health, stop))
    sampler.start()
    t0 = time.monotonic()
    deadline = t0 + args.duration
    counts = await asyncio.gather(*(client_loop(args, stats, args.model, c, deadline) for c in range(args.clients)))
    wall = time.monotonic() - t0
    stop.set()
    sampler.join()
    return before, stats, rss, health, counts, wall


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base")
    ap.add_argument("key")
    ap.add_argument("model")
    ap.add_argument("--pid", type=int, default=0)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--duration", type=float, default=24.0)
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--max-requests", type=int, default=200, help="per client, at most")
    ap.add_argument("--max-rss-mb", type=float, default=1500.0)
    ap.add_argument("--expect-429", action="store_true", help="fail unless some requests were refused with 429")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    args.base = args.base.rstrip("/").removesuffix("/v1")

    before, stats, rss, health, counts, wall = asyncio.run(run(args))
    sent = sum(counts)
    ok_n, drop_n = len(stats.ok), len(stats.dropped)
    print(f"load: {args.clients} clients, {sent} requests in {wall:.1f} s: {ok_n} finished, {drop_n} dropped on "
          f"purpose, {stats.rejected} refused (429), {len(stats.errors)} errors; peak {stats.peak_in_flight} "
          f"in flight", flush=True)
    check(not stats.errors, f"{len(stats.errors)} requests went wrong", first=stats.errors[:10])
    check(ok_n + drop_n + stats.rejected == sent, "every request is accounted for on the client side",
          sent=sent, ok=ok_n, dropped=drop_n, rejected=stats.rejected)
    check(ok_n >= args.clients, "at least one finished request per client", ok=ok_n)
    check(drop_n >= 1, "some requests were dropped on purpose", dropped=drop_n)
    if args.expect_429:
        check(stats.rejected >= 1, "the small queue refused some requests with 429")

    # /metrics: wait for the scheduler to notice the last drops and go idle.
    t0 = time.monotonic()
    while True:
        _, text = get(args.base, "/metrics", args.key)
        after = parse_metrics(text)
        idle = metric(after, "omex_queue_depth") == 0 and metric(after, "omex_active_sequences") == 0
        if idle or time.monotonic() - t0 > 15:
            break
        time.sleep(0.2)
    check(idle, "queue depth and active sequences go back to 0 within 15 s",
          queue=metric(after, "omex_queue_depth"), active=metric(after, "omex_active_sequences"))

    def d(name, labels=""):
        return metric_or(after, name, labels, 0.0) - metric_or(before, name, labels, 0.0)

    accepted = ok_n + drop_n
    fin, canc, failed = d("omex_requests_finished_total"), d("omex_requests_cancelled_total"), \
        d("omex_requests_failed_total")
    req, rej = d("omex_requests_total"), d("omex_requests_rejected_total")
    print(f"metrics: requests {req:.0f}, finished {fin:.0f}, cancelled {canc:.0f}, failed {failed:.0f}, "
          f"rejected {rej:.0f}", flush=True)
    check(failed == 0, "no request failed on the server", failed=failed)
    check(fin + canc + failed == accepted, "finished + cancelled + failed == accepted requests",
          finished=fin, cancelled=canc, failed=failed, accepted=accepted)
    check(req in (accepted, accepted + stats.rejected), "omex_requests_total counts the requests",
          requests_total=req, accepted=accepted, rejected=stats.rejected)
    check(rej == stats.rejected, "omex_requests_rejected_total == the 429s the clients saw",
          rejected_total=rej, client_429=stats.rejected)
    check(ok_n <= fin <= ok_n + drop_n, "finished: the clients' finished ones (a drop may have finished first)",
          finished=fin, ok=ok_n, dropped=drop_n)
    check(canc >= 1, "the dropped requests were cancelled", cancelled=canc, dropped=drop_n)
    h429 = d("omex_http_responses_total", '{code="429"}')
    h200 = d("omex_http_responses_total", '{code="200"}')
    check(h429 == stats.rejected, 'omex_http_responses_total{code="429"} == the 429s', got=h429, want=stats.rejected)
    check(h200 >= ok_n, 'omex_http_responses_total{code="200"} counts the finished streams', got=h200, ok=ok_n)

    tokens = d("omex_completion_tokens_total")
    ok_tokens = sum(n for _, n, _, _ in stats.ok)
    drop_bound = sum(m for m, _, _ in stats.dropped)
    check(ok_tokens <= tokens <= ok_tokens + drop_bound,
          "completion tokens: the finished requests' usage plus at most the dropped ones' max_tokens",
          server=tokens, clients=ok_tokens, dropped_max=drop_bound)
    ptoks = d("omex_prompt_tokens_total")
    ok_ptoks = sum(p for _, _, p, _ in stats.ok)
    drop_ptoks = sum(stats.prompt_tokens.get(key, 10**6) for _, _, key in stats.dropped)
    check(ok_ptoks <= ptoks <= ok_ptoks + drop_ptoks, "prompt tokens: the finished requests' plus the dropped ones'",
          server=ptoks, clients=ok_ptoks, dropped=drop_ptoks)
    ttft = d("omex_time_to_first_token_seconds_count")
    check(ok_n - sum(1 for _, n, _, _ in stats.ok if n == 0) <= ttft <= accepted,
          "one time-to-first-token observation per request that got a token", ttft_count=ttft, ok=ok_n)
    buckets = sorted(((float(re.search(r'le="([^"]+)"', lab).group(1)), v) for (n, lab), v in after.items()
                      if n == "omex_time_to_first_token_seconds_bucket"))
    check(buckets and buckets[-1][0] == float("inf"), "the TTFT histogram has a +Inf bucket", got=buckets)
    check(all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:])), "TTFT buckets are cumulative", got=buckets)
    check(buckets[-1][1] == metric(after, "omex_time_to_first_token_seconds_count"), "+Inf bucket == count")
    kv_used, kv_total = metric(after, "omex_kv_blocks_used"), metric(after, "omex_kv_blocks_total")
    check(0 <= kv_used <= kv_total and kv_total > 0, "KV blocks used within the total", used=kv_used, total=kv_total)
    check(metric(after, "omex_batch_size") >= 0, "omex_batch_size present")
    print(f"metrics: completion tokens {tokens:.0f} (clients saw {ok_tokens} finished + dropped ones), "
          f"prompt tokens {ptoks:.0f}, TTFT observations {ttft:.0f}, KV blocks {kv_used:.0f}/{kv_total:.0f}; "
          f"{tokens / wall:.0f} completion tok/s overall", flush=True)

    slow = [h for h in health if not (h[1] == 200 and h[0] < 2.0)]
    check(not slow, "/health answered 200 within 2 s throughout", bad=slow[:5], samples=len(health))
    print(f"health: {len(health)} checks during the run, slowest {max(h[0] for h in health) * 1000:.0f} ms", flush=True)
    if args.pid:
        check(len(rss) >= 8, "RSS samples", got=len(rss))
        half = rss[-1][0] / 2
        first = [v for t, v in rss if t <= half]
        second = [v for t, v in rss if t > half]
        peak1, peak2, peak = max(first), max(second), max(v for _, v in rss)
        print(f"rss: peak {peak / 1024:.0f} MiB; first half peak {peak1 / 1024:.0f} MiB, second half peak "
              f"{peak2 / 1024:.0f} MiB, last {rss[-1][1] / 1024:.0f} MiB", flush=True)
        check(peak / 1024 <= args.max_rss_mb, "server RSS under the bound", peak_mib=peak / 1024,
              bound_mib=args.max_rss_mb)
        check(peak2 <= peak1 * 1.10 + 64 * 1024, "server RSS does not keep growing (second half vs first)",
              first_mib=peak1 / 1024, second_mib=peak2 / 1024)
    print(json.dumps({"requests": sent, "finished": ok_n, "dropped": drop_n, "rejected": stats.rejected,
                      "seconds": round(wall, 1), "completion_tokens": tokens}))
    print("load.py: all checks passed", flush=True)


if __name__ == "__main__":
    main()
