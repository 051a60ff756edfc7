#!/usr/bin/env python3
"""Studio benchmarks (not tests): kill -9 restart cycles, polling load and request checking
under a burst, printed as tables.

  python3 scripts/studio-bench.py [--cycles 5] [--clients 50] [--seconds 60] [--only restart|load|checks]

Needs target/release/tenpak (cargo build --release) and assets/ (scripts/fetch-assets.sh).
Everything runs on 127.0.0.1 against a temporary data directory.

restart: each cycle submits a pack whose evaluation runs for a while, waits until it runs,
kills the server with SIGKILL, starts it again on the same data directory and waits for the job
to end. A job is lost if it is still queued/running after 10 minutes or vanished; it must end
done, or failed with a reason.
load: `--clients` threads poll GET /status/{id} and GET /jobs as fast as they can for
`--seconds` while a `balanced` pack runs; latency percentiles and errors per endpoint.
checks: 8 clients at once send requests that are checked in full and then refused (nothing is
queued): a `fast` pack whose evaluation text is shorter than one window (the whole check:
model, plan, tokenizer, text), an evaluation with a text too short, an 11 MB inline preset with
200,000 overrides (refused by its size) and a preset with group_size = 10^9; latency percentiles
per kind, and whether any answer was not the expected 400. Needs a quiet machine.
"""
import argparse
import http.client
import os
import sys
import tempfile
import threading
import time

from studio_server import BIN, MODEL, TOKEN, Server

SLOW = {"toml": "name = \"slow\"\n[evaluation]\nwindows = 8\nctx = 512\n[allocator]\nid = \"role_rules\"\n"
                "[codec]\ncodec = \"int4_residual\"\ngroup_size = 64\n"}


def wait_for(server, job, predicate, seconds):
    deadline = time.time() + seconds
    while time.time() < deadline:
        state = server.status(job)
        if isinstance(state, dict) and "state" in state and predicate(state):
            return state
        time.sleep(0.25)
    return server.status(job)


def restart_cycles(cycles):
    lost, rows = 0, []
    with tempfile.TemporaryDirectory() as directory:
        server = Server(directory)
        for cycle in range(cycles):
            job = server.submit({"model": MODEL, "preset": SLOW, "eval_text": "assets/eval.txt"})
            wait_for(server, job, lambda s: s["state"] == "running" and s["progress"] > 0.1, 300)
            server.kill9()
            server = Server(directory)
            final = wait_for(server, job, lambda s: s["state"] in ("done", "failed", "cancelled"), 600)
            ok = final is not None and (final["state"] == "done" or
                                        (final["state"] == "failed" and final.get("error")))
            lost += 0 if ok else 1
            rows.append((cycle + 1, job, final["state"] if final else "vanished", final["attempts"] if final else "-"))
        _, listing = server.request("GET", "/jobs?limit=100")
        server.stop()
    print(f"\n## kill -9 restart cycles: {cycles - lost} of {cycles} jobs ended done or failed-with-reason; jobs lost = {lost}\n")
    print("| cycle | job | final state | attempts |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")
    print(f"\njobs recorded after the last restart: {listing['total']}")
    return lost


def load(clients, seconds):
    with tempfile.TemporaryDirectory() as directory:
        server = Server(directory)
        job = server.submit({"model": MODEL, "preset": "balanced", "calib_text": "assets/calib.txt",
                             "eval_text": "assets/eval.txt"})
        wait_for(server, job, lambda s: s["state"] == "running", 120)
        samples = {"/status/{id}": [], "/jobs": []}
        errors = {"/status/{id}": 0, "/jobs": 0}
        lock = threading.Lock()
        stop = time.time() + seconds

        def client(index):
            connection = http.client.HTTPConnection(server.host, server.port, timeout=30)
            headers = {"Authorization": f"Bearer {TOKEN}"}
            n = 0
            while time.time() < stop:
                name, path = ("/status/{id}", f"/status/{job}") if n % 2 == 0 else ("/jobs", "/jobs?limit=20")
                n += 1
                started = time.perf_counter()
                try:
                    connection.request("GET", path, headers=headers)
                    response = connection.getresponse()
                    response.read()
                    ok = response.status == 200
                except Exception:
                    ok = False
                    connection = http.client.HTTPConnection(server.host, server.port, timeout=30)
                elapsed = time.perf_counter() - started
                with lock:
                    samples[name].append(elapsed)
                    errors[name] += 0 if ok else 1

        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        state = server.status(job)
        server.stop()
    print(f"\n## polling load: {clients} clients for {seconds} s while a balanced pack runs "
          f"(job was {state['state']}, {100 * state['progress']:.0f}% at the end)\n")
    print("| endpoint | requests | req/s | p50 ms | p99 ms | max ms | errors |\n|---|---|---|---|---|---|---|")
    for name, values in samples.items():
        values.sort()
        if not values:
            continue
        p = lambda q: 1000 * values[min(len(values) - 1, int(q * len(values)))]
        print(f"| {name} | {len(values)} | {len(values) / seconds:.0f} | {p(0.5):.1f} | {p(0.99):.1f} | "
              f"{1000 * values[-1]:.1f} | {errors[name]} |")
    return sum(errors.values())


def checks(rounds=40, clients=8):
    huge = ('name = "p"\n[allocator]\nid = "role_rules"\n[codec]\ncodec = "int4_residual"\ngroup_size = 64\n' +
            "".join(f'[[overrides]]\npattern = "model.layers.{i}.*"\ncodec = "keep"\n' for i in range(200_000)))
    kinds = {
        "compress, full check": {"model": MODEL, "preset": "fast", "eval_text": {"inline": "word " * 100}},
        "evaluate, full check": ("/evaluate", {"model": MODEL, "text": {"inline": "word " * 100}}),
        "11 MB preset": {"model": MODEL, "preset": {"toml": huge}},
        "group_size 1e9": {"model": MODEL, "preset": {"toml": huge.split("[[overrides]]")[0].replace("group_size = 64", "group_size = 1000000000")}},
    }
    samples = {name: [] for name in kinds}
    unexpected = {name: 0 for name in kinds}
    lock = threading.Lock()
    with tempfile.TemporaryDirectory() as directory:
        server = Server(directory)

        def client(index):
            for r in range(rounds):
                for name, spec in kinds.items():
                    path, body = spec if isinstance(spec, tuple) else ("/compress", spec)
                    started = time.perf_counter()
                    status, _ = server.request("POST", path, body)
                    elapsed = time.perf_counter() - started
                    with lock:
                        samples[name].append(elapsed)
                        unexpected[name] += 0 if status == 400 else 1

        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        server.stop()
    print(f"\n## request checks under a burst: {clients} clients x {rounds} rounds of each kind\n")
    print("| request | requests | p50 ms | p99 ms | max ms | not 400 |\n|---|---|---|---|---|---|")
    for name, values in samples.items():
        values.sort()
        p = lambda q: 1000 * values[min(len(values) - 1, int(q * len(values)))]
        print(f"| {name} | {len(values)} | {p(0.5):.1f} | {p(0.99):.1f} | {1000 * values[-1]:.1f} | {unexpected[name]} |")
    return sum(unexpected.values())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--only", choices=["restart", "load", "checks"])
    args = parser.parse_args()
    if not os.path.exists(BIN):
        sys.exit(f"{BIN} is missing: cargo build --release -p tenpak --bin tenpak")
    print(f"machine: {os.cpu_count()} cores; {time.strftime('%Y-%m-%d %H:%M')}")
    failures = 0
    if args.only in (None, "restart"):
        failures += restart_cycles(args.cycles)
    if args.only in (None, "load"):
        failures += load(args.clients, args.seconds)
    if args.only in (None, "checks"):
        failures += checks()
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
