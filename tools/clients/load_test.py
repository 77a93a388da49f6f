"""A bounded loopback load test of `kairos serve` (stdlib only).

    python tools/clients/load_test.py --url http://127.0.0.1:7860 --pids 1234[,5678] \
        [--clients 8] [--requests 50] [--burst 40]

1. `--clients` threads each send `--requests` small txt2img requests one after another.
2. A burst of `--burst` concurrent requests, past the server's --queue-size.

Every answer must be 200 or 503 (with Retry-After); nothing else, no dropped connection. Reports
the count per status, latency p50/p99 of the 200s, the servers' peak RSS (VmHWM) and whether
their RSS, measured after a warm-up and again after the load, stayed within 10%. Prints
`N passed, N failed`; exits 1 on any failure.
"""

import argparse
import json
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request

BODY = {"prompt": "a red cube", "steps": 2, "width": 32, "height": 24, "seed": 1, "sampler_name": "Euler",
        "override_settings": {"randn_source": "CPU"}}


def post(url, body):
    data = json.dumps(body).encode()
    req = urllib.request.Request(url + "/sdapi/v1/txt2img", data=data, headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            r.read()
            return r.status, time.perf_counter() - start, None
    except urllib.error.HTTPError as e:
        e.read()
        return e.code, time.perf_counter() - start, e.headers.get("Retry-After")
    except Exception as e:  # a dropped connection is a failure
        return f"error: {type(e).__name__}: {e}", time.perf_counter() - start, None


def rss_kib(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def percentile(values, p):
    values = sorted(values)
    if not values:
        return float("nan")
    k = min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))
    return values[k]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="http://127.0.0.1:7860")
    parser.add_argument("--pids", required=True, help="the server process ids, comma-separated")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--burst", type=int, default=40)
    parser.add_argument("--label", default="direct")
    args = parser.parse_args()
    pids = [int(p) for p in args.pids.split(",")]
    url = args.url.rstrip("/")
    results, lock = [], threading.Lock()

    # Warm-up: load the model, then take the baseline RSS.
    for _ in range(3):
        status, _, _ = post(url, BODY)
        assert status == 200, f"warm-up got {status}"
    time.sleep(0.5)
    before = {p: rss_kib(p) for p in pids}

    def client(i):
        for j in range(args.requests):
            r = post(url, dict(BODY, seed=i * 1000 + j))
            with lock:
                results.append(("steady",) + r)

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    steady_s = time.perf_counter() - start

    def burst(i):
        r = post(url, dict(BODY, seed=90000 + i))
        with lock:
            results.append(("burst",) + r)

    threads = [threading.Thread(target=burst, args=(i,)) for i in range(args.burst)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    time.sleep(1.0)
    after = {p: rss_kib(p) for p in pids}
    peak = {p: rss_kib(p, "VmHWM") for p in pids}

    checks = []
    by_status = {}
    for phase, status, _, _ in results:
        by_status.setdefault((phase, status), 0)
        by_status[(phase, status)] += 1
    bad = [r for r in results if r[1] not in (200, 503)]
    checks.append(("every answer is 200 or 503", not bad, f"{len(bad)} others: {bad[:3]}"))
    no_retry = [r for r in results if r[1] == 503 and not r[3]]
    checks.append(("every 503 has Retry-After", not no_retry, f"{len(no_retry)} without"))
    burst_503 = by_status.get(("burst", 503), 0)
    checks.append(("the burst past --queue-size gets 503s", burst_503 > 0, f"{burst_503} of {args.burst}"))
    steady_ok = [r[2] for r in results if r[0] == "steady" and r[1] == 200]
    checks.append(("steady requests answered", len(steady_ok) > 0, ""))
    within = {p: abs(after[p] - before[p]) / before[p] <= 0.10 for p in pids}
    checks.append(("RSS back within 10% of the warm baseline", all(within.values()), ""))

    lat = [r[2] for r in results if r[1] == 200]
    print(f"[{args.label}] {args.clients} clients x {args.requests} requests in {steady_s:.1f} s, burst {args.burst}")
    print(f"[{args.label}] statuses: " + ", ".join(f"{ph} {st}: {n}" for (ph, st), n in sorted(by_status.items(), key=str)))
    print(f"[{args.label}] latency of 200s: p50 {percentile(lat, 50) * 1000:.0f} ms, p99 {percentile(lat, 99) * 1000:.0f} ms ({len(lat)} requests)")
    for p in pids:
        change = (after[p] - before[p]) / before[p] * 100
        print(f"[{args.label}] pid {p}: RSS {before[p] / 1024:.1f} MiB warm -> {after[p] / 1024:.1f} MiB after ({change:+.1f}%), peak {peak[p] / 1024:.1f} MiB")
    failed = 0
    for name, ok, detail in checks:
        print(f"{'ok  ' if ok else 'FAIL'} {name}" + (f" ({detail})" if detail and not ok else ""))
        failed += not ok
    print(f"{len(checks) - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
