"""Bounded load test of `kiln serve` on loopback: a fixed number of chat completions from N
concurrent clients; reports p50/p99 latency, tokens/s, errors, and the server's resident memory
before and after (flat memory means no per-request leak). Opt-in, like peers.py; figures go to
docs/benchmarks.md.

    python tests/bench/load.py MODEL [--clients 4] [--requests 64] [--max-tokens 32] \
        [--max-concurrent 2] [--kiln target/release/kiln] [--stream]

needs the `openai` package (tests/python/requirements.txt).
"""

import argparse
import json
import re
import signal
import statistics
import subprocess
import threading
import time
from pathlib import Path

import openai

PROMPTS = [
    "What is the capital of France?",
    "Name three colours.",
    "Explain what a compiler does in one sentence.",
    "Write a haiku about the sea.",
    "What is 12 times 7?",
    "Give me a word that rhymes with cat.",
    "Why is the sky blue?",
    "Say hello in Spanish.",
]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--kiln", default="target/release/kiln")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--requests", type=int, default=64, help="in all, split over the clients")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--max-concurrent", type=int, default=2)
    ap.add_argument("--stream", action="store_true")
    a = ap.parse_args()

    proc = subprocess.Popen(
        [a.kiln, "serve", a.model, "--port", "0", "--max-concurrent", str(a.max_concurrent), "--max-queue", "64"],
        stderr=subprocess.PIPE,
        text=True,
    )
    url = model_id = None
    for line in proc.stderr:
        m = re.search(r"`(.*)` listening on (http://\S+)", line)
        if m:
            model_id, url = m.group(1), m.group(2)
            break
    if url is None:
        raise SystemExit("kiln serve did not start")
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=600)

    def one(i):
        t0 = time.perf_counter()
        args = dict(
            model=model_id,
            messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
            temperature=0.7,
            seed=i,
            max_tokens=a.max_tokens,
        )
        if a.stream:
            first, n = None, 0
            for c in client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **args):
                if first is None:
                    first = time.perf_counter() - t0
                if c.usage:
                    n = c.usage.completion_tokens
            return time.perf_counter() - t0, n, first
        r = client.chat.completions.create(**args)
        return time.perf_counter() - t0, r.usage.completion_tokens, None

    # Warm up (first-touch of the weights), then measure.
    one(0)
    rss_before = rss_kib(proc.pid)
    lat, toks, ttft, errors = [], [], [], []
    samples = []  # (requests done, server RSS MiB) at each quarter: flat memory means no leak
    lock = threading.Lock()
    per_client = [list(range(c, a.requests, a.clients)) for c in range(a.clients)]

    def client_loop(ids):
        for i in ids:
            try:
                dt, n, first = one(i)
                with lock:
                    lat.append(dt)
                    toks.append(n)
                    if first is not None:
                        ttft.append(first)
                    done = len(lat) + len(errors)
                    if done % max(1, a.requests // 4) == 0:
                        samples.append((done, round(rss_kib(proc.pid) / 1024, 1)))
            except Exception as e:  # noqa: BLE001 - counted and reported
                with lock:
                    errors.append(repr(e))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client_loop, args=(ids,)) for ids in per_client]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    rss_after = rss_kib(proc.pid)
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=60)

    q = lambda xs, p: sorted(xs)[min(len(xs) - 1, int(round(p * (len(xs) - 1))))] if xs else float("nan")  # noqa: E731
    report = {
        "model": model_id,
        "clients": a.clients,
        "requests": a.requests,
        "max_tokens": a.max_tokens,
        "max_concurrent": a.max_concurrent,
        "stream": a.stream,
        "ok": len(lat),
        "errors": len(errors),
        "p50_s": round(q(lat, 0.5), 3),
        "p99_s": round(q(lat, 0.99), 3),
        "mean_s": round(statistics.mean(lat), 3) if lat else None,
        "ttft_p50_s": round(q(ttft, 0.5), 3) if ttft else None,
        "tokens_per_s": round(sum(toks) / wall, 1),
        "requests_per_s": round(len(lat) / wall, 2),
        "wall_s": round(wall, 2),
        "rss_before_mib": round(rss_before / 1024, 1),
        "rss_after_mib": round(rss_after / 1024, 1),
        "rss_by_requests_mib": samples,
        "server_exit": code,
    }
    print(json.dumps(report))
    if errors:
        print("errors:", *errors[:5], sep="\n  ")
        raise SystemExit(1)


if __name__ == "__main__":
    main()
