#!/usr/bin/env python3
"""Soak of the control plane's HTTP front under an unauthenticated flood (issue 11).

For --duration seconds (default 600) it keeps, against a running control plane:
  * --logins (500) workers each sending wrong logins back to back, from random loopback
    source addresses (127.x.y.z) and a mix of the real `admin` and unknown user names, with
    1 KiB passwords — what an attacker does to burn Argon2 memory and CPU;
  * --idle (2000) connections open and silent (reopened whenever the server closes one) —
    slowloris-style descriptor exhaustion;
and once a second a separate prober process (its own interpreter, so the flood's 2,500
coroutines never delay the measurement) times a fresh `GET /health` (as a load balancer probe
would) and reads the server's RSS from /proc. It prints one JSON summary and exits 1 if /health
ever took longer than --max-health-ms (100) or failed, or RSS exceeded --max-rss-mb (200).

  benches/soak/auth_flood.py --port 3000 --pid $(pgrep -f hais-control-plane)

`benches/soak/run.sh` builds the release binary, starts it on a fresh data directory and runs
this script. Standard library only.
"""

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import resource
import statistics
import sys
import time


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=3000)
    p.add_argument("--pid", type=int, required=True, help="the control plane's pid (for RSS)")
    p.add_argument("--duration", type=float, default=600)
    p.add_argument("--logins", type=int, default=500)
    p.add_argument("--idle", type=int, default=2000)
    p.add_argument("--max-health-ms", type=float, default=100)
    p.add_argument("--max-rss-mb", type=float, default=200)
    p.add_argument("--flood-nice", type=int, default=0,
                   help="nice increment of the flood process, so that on a shared machine the load "
                        "generator does not starve the server it measures")
    return p.parse_args()


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def random_loopback():
    return f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"


async def request(host, port, raw, local=None, timeout=30):
    """Sends one HTTP/1.1 request on a new connection; returns (status, seconds)."""
    start = time.monotonic()
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port, local_addr=(local, 0) if local else None), timeout
    )
    try:
        writer.write(raw)
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
        status = int(line.split()[1]) if line else 0
        return status, time.monotonic() - start
    finally:
        writer.close()


def login_request(host, user):
    body = json.dumps({"username": user, "password": "x" * 1024}).encode()
    return (
        f"POST /api/auth/login HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


async def login_worker(args, stop, stats):
    while not stop.is_set():
        user = "admin" if random.random() < 0.5 else f"ghost{random.randint(0, 10**6)}"
        try:
            status, _ = await request(args.host, args.port, login_request(args.host, user), random_loopback())
            stats[status] = stats.get(status, 0) + 1
        except (OSError, asyncio.TimeoutError, ValueError, IndexError):
            stats["error"] = stats.get("error", 0) + 1
            await asyncio.sleep(0.05)


async def idle_worker(args, stop, stats):
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(args.host, args.port, local_addr=(random_loopback(), 0))
        except OSError:
            stats["connect_error"] = stats.get("connect_error", 0) + 1
            await asyncio.sleep(0.5)
            continue
        stats["opened"] = stats.get("opened", 0) + 1
        try:
            # Silent until the server gives up on us (or the soak ends).
            while not stop.is_set():
                try:
                    if await asyncio.wait_for(reader.read(1), 1.0) == b"":
                        stats["closed_by_server"] = stats.get("closed_by_server", 0) + 1
                        break
                except asyncio.TimeoutError:
                    continue
        except OSError:
            stats["reset"] = stats.get("reset", 0) + 1
        finally:
            writer.close()


def probe(args, out):
    """The prober process: one fresh-connection GET /health and one RSS reading per second."""
    async def run():
        health_ms, rss, failures = [], [], []
        req = f"GET /health HTTP/1.1\r\nHost: {args.host}\r\nConnection: close\r\n\r\n".encode()
        end = time.monotonic() + args.duration
        while time.monotonic() < end:
            await asyncio.sleep(1)
            try:
                status, secs = await request(args.host, args.port, req, timeout=5)
                health_ms.append(secs * 1000)
                if status != 200:
                    failures.append(f"/health answered {status}")
            except (OSError, asyncio.TimeoutError, ValueError, IndexError) as e:
                failures.append(f"/health failed: {e!r}")
            rss.append(rss_mb(args.pid))
            if len(rss) % 30 == 0:
                print(f"{len(rss)} s: /health max {max(health_ms, default=0):.1f} ms, RSS {rss[-1]:.0f} MB",
                      file=sys.stderr, flush=True)
        out.put((health_ms, rss, failures))
    asyncio.run(run())


async def flood(args):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    stop = asyncio.Event()
    logins, idle = {}, {}
    tasks = [asyncio.create_task(login_worker(args, stop, logins)) for _ in range(args.logins)]
    tasks += [asyncio.create_task(idle_worker(args, stop, idle)) for _ in range(args.idle)]
    await asyncio.sleep(args.duration)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    return logins, idle


def main():
    args = parse_args()
    out = multiprocessing.Queue()
    prober = multiprocessing.Process(target=probe, args=(args, out))
    prober.start()
    os.nice(args.flood_nice)
    logins, idle = asyncio.run(flood(args))
    health_ms, rss, failures = out.get()
    prober.join()
    hs = sorted(health_ms)
    summary = {
        "duration_s": args.duration,
        "login_workers": args.logins,
        "idle_connections": args.idle,
        "flood_nice": args.flood_nice,
        "login_answers": {str(k): v for k, v in sorted(logins.items(), key=lambda kv: str(kv[0]))},
        "idle": idle,
        "health_probes": len(hs),
        "health_ms": {
            "p50": round(statistics.median(hs), 2) if hs else None,
            "p99": round(hs[max(int(len(hs) * 0.99) - 1, 0)], 2) if hs else None,
            "max": round(hs[-1], 2) if hs else None,
        },
        "rss_mb": {"start": round(rss[0], 1) if rss else None, "max": round(max(rss), 1) if rss else None},
        "failures": failures[:20],
    }
    ok = not failures and bool(hs) and hs[-1] <= args.max_health_ms and max(rss) <= args.max_rss_mb
    summary["ok"] = ok
    print(json.dumps(summary, indent=2))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
