#!/usr/bin/env python3
"""Serving benchmark for OpenAI-compatible servers: `omex serve` and llama.cpp's `llama-server` alike.

    scripts/serve_bench.py http://127.0.0.1:8080 [--api-key KEY] [--model ID] [--concurrency 1,4,16,64]
                           [--rounds 3] [--max-tokens 128] [--prompt TEXT] [--endpoint completions|chat] [--json]

For each concurrency level C it runs ROUNDS rounds; a round starts C streaming requests at once (the same
prompt, max_tokens, temperature 0, ignore_eos so every request generates exactly max_tokens) and waits for all
of them. One warm-up request runs first. It prints one table:

    concurrency | aggregate decode tok/s | per-stream tok/s | TTFT p50 ms | TTFT p99 ms | requests | errors

- aggregate decode tok/s: all completion tokens of a round over the round's wall time (first request sent to
  last stream ended), mean over the rounds; prompt processing is inside that time, as a user sees it;
- per-stream tok/s: per request, (tokens - 1) over the time from its first to its last token (the decode rate a
  reader of that stream sees), mean over all requests;
- TTFT: time from sending the request to the first text in its stream, percentiles over all requests.

Tokens are counted from the final usage chunk (stream_options.include_usage, which both servers send); when a
server sends none, from the number of text chunks (one per token in both servers).

The client is the standard library only (http.client, one thread and one connection per stream, SSE parsed by
hand), not the openai package: with 64 streams on a small machine, a heavier client would take CPU from the
server and show up in the numbers. ignore_eos goes in the body as an extension field (llama-server honours it
too). Run the client on the same machine as the server only if you account for that.
"""

import argparse
import http.client
import json
import math
import statistics
import sys
import threading
import time
import urllib.parse


def percentile(xs, q):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


class Target:
    def __init__(self, url, key, timeout):
        u = urllib.parse.urlparse(url)
        self.host, self.port = u.hostname, u.port or (443 if u.scheme == "https" else 80)
        self.https = u.scheme == "https"
        self.prefix = u.path.rstrip("/").removesuffix("/v1")
        self.key, self.timeout = key, timeout

    def conn(self):
        cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        return cls(self.host, self.port, timeout=self.timeout)

    def headers(self):
        h = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if self.key:
            h["Authorization"] = f"Bearer {self.key}"
        return h

    def get_json(self, path):
        c = self.conn()
        try:
            c.request("GET", self.prefix + path, headers=self.headers())
            r = c.getresponse()
            body = r.read()
            if r.status != 200:
                raise RuntimeError(f"GET {path}: {r.status} {body[:300]!r}")
            return json.loads(body)
        finally:
            c.close()


def one_stream(target, path, body, start_gate, result):
    """One streaming request; fills result with t_sent, t_first, t_last, t_end, tokens, error."""
    c = target.conn()
    payload = json.dumps(body).encode()
    try:
        start_gate.wait()
        t_sent = time.perf_counter()
        c.request("POST", target.prefix + path, body=payload, headers=target.headers())
        r = c.getresponse()
        if r.status != 200:
            result.update(error=f"{r.status} {r.read()[:200]!r}", t_sent=t_sent, t_end=time.perf_counter())
            return
        t_first = t_last = None
        chunks, usage = 0, None
        while True:
            line = r.readline()
            if not line:
                break
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                break
            ev = json.loads(data)
            if ev.get("usage"):
                usage = ev["usage"]
            for ch in ev.get("choices") or []:
                piece = ch.get("text")
                if piece is None:
                    piece = (ch.get("delta") or {}).get("content")
                if piece:
                    now = time.perf_counter()
                    t_first = t_first or now
                    t_last = now
                    chunks += 1
        t_end = time.perf_counter()
        tokens = usage["completion_tokens"] if usage and "completion_tokens" in usage else chunks
        result.update(t_sent=t_sent, t_first=t_first, t_last=t_last, t_end=t_end, tokens=tokens, error=None,
                      counted="usage" if usage else "chunks")
    except Exception as e:  # noqa: BLE001 - reported per request
        result.update(error=f"{type(e).__name__}: {e}", t_sent=result.get("t_sent", 0.0), t_end=time.perf_counter())
    finally:
        c.close()


def run_round(target, path, body, concurrency):
    gate = threading.Event()
    results = [{} for _ in range(concurrency)]
    threads = [threading.Thread(target=one_stream, args=(target, path, body, gate, results[i]), daemon=True)
               for i in range(concurrency)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    gate.set()
    for t in threads:
        t.join()
    return results


def bench(args):
    target = Target(args.url, args.api_key, args.timeout)
    model = args.model
    if not model:
        models = target.get_json("/v1/models")
        model = models["data"][0]["id"]
    if args.endpoint == "chat":
        path = "/v1/chat/completions"
        body = {"messages": [{"role": "user", "content": args.prompt}]}
    else:
        path = "/v1/completions"
        body = {"prompt": args.prompt}
    body.update(model=model, max_tokens=args.max_tokens, temperature=0.0, stream=True, ignore_eos=True,
                stream_options={"include_usage": True})
    for _ in range(args.warmup):
        warm = run_round(target, path, dict(body, max_tokens=min(8, args.max_tokens)), 1)
        if warm[0].get("error"):
            sys.exit(f"serve_bench: the warm-up request failed: {warm[0]['error']}")
    rows = []
    for conc in args.concurrency:
        agg, per_stream, ttft, errors, n, tokens_seen = [], [], [], [], 0, []
        for _ in range(args.rounds):
            res = run_round(target, path, body, conc)
            n += len(res)
            good = [r for r in res if not r.get("error") and r.get("t_first")]
            errors += [r["error"] for r in res if r.get("error")]
            if not good:
                continue
            wall = max(r["t_end"] for r in good) - min(r["t_sent"] for r in good)
            agg.append(sum(r["tokens"] for r in good) / wall)
            for r in good:
                ttft.append((r["t_first"] - r["t_sent"]) * 1e3)
                tokens_seen.append(r["tokens"])
                if r["tokens"] > 1 and r["t_last"] > r["t_first"]:
                    per_stream.append((r["tokens"] - 1) / (r["t_last"] - r["t_first"]))
        rows.append({
            "concurrency": conc,
            "aggregate_tok_s": statistics.mean(agg) if agg else float("nan"),
            "per_stream_tok_s": statistics.mean(per_stream) if per_stream else float("nan"),
            "ttft_p50_ms": percentile(ttft, 0.50),
            "ttft_p99_ms": percentile(ttft, 0.99),
            "requests": n,
            "errors": len(errors),
            "mean_tokens": statistics.mean(tokens_seen) if tokens_seen else 0,
            "first_error": errors[0] if errors else None,
        })
        if not args.json:
            print(f"  concurrency {conc}: done", file=sys.stderr, flush=True)
    return model, rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("url", help="the server's root, e.g. http://127.0.0.1:8080 (a trailing /v1 is fine)")
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--model", default=None, help="model id (default: the first of /v1/models)")
    ap.add_argument("--concurrency", default="1,4,16,64",
                    type=lambda s: [int(x) for x in s.split(",") if x.strip()])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--prompt", default="Write a long story about a robot who learns to paint.")
    ap.add_argument("--endpoint", choices=["completions", "chat"], default="completions")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds, per request")
    ap.add_argument("--json", action="store_true", help="print the rows as one JSON object instead of a table")
    args = ap.parse_args()
    model, rows = bench(args)
    if args.json:
        print(json.dumps({"url": args.url, "model": model, "endpoint": args.endpoint, "max_tokens": args.max_tokens,
                          "rounds": args.rounds, "prompt": args.prompt, "rows": rows}, indent=1))
        return
    print(f"{args.url} model {model}, {args.endpoint}, max_tokens {args.max_tokens} (ignore_eos), "
          f"{args.rounds} rounds per level")
    print(f"{'concurrency':>11} | {'aggregate tok/s':>15} | {'per-stream tok/s':>16} | {'TTFT p50 ms':>11} | "
          f"{'TTFT p99 ms':>11} | {'requests':>8} | {'errors':>6}")
    print("-" * 98)
    for r in rows:
        print(f"{r['concurrency']:>11} | {r['aggregate_tok_s']:>15.1f} | {r['per_stream_tok_s']:>16.1f} | "
              f"{r['ttft_p50_ms']:>11.1f} | {r['ttft_p99_ms']:>11.1f} | {r['requests']:>8} | {r['errors']:>6}")
    for r in rows:
        if r["first_error"]:
            print(f"concurrency {r['concurrency']}: {r['errors']} errors, first: {r['first_error']}")
        if r["mean_tokens"] and abs(r["mean_tokens"] - args.max_tokens) > 0.5:
            print(f"concurrency {r['concurrency']}: streams averaged {r['mean_tokens']:.1f} tokens, not "
                  f"{args.max_tokens} (ignore_eos not honoured?)")


if __name__ == "__main__":
    main()
