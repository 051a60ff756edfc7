#!/usr/bin/env python3
"""Studio fault bench: each fault on a real `tenpak serve` on loopback, one table row per fault.

  sudo python3 scripts/studio-faults.py [--only NAME,...] [--list]

Needs root (tmpfs mounts, `chattr +i`, the loopback PostgreSQL), target/release/tenpak
(cargo build --release -p tenpak) and assets/ (scripts/fetch-assets.sh). PostgreSQL and the S3
store (moto) are private instances on their own ports and directories (55442/55443 under
/tmp/tenpak-faults-*), started with scripts/start-postgres.sh / start-s3.sh and stopped at the
end, so a test suite using the usual ones is not disturbed.

Per fault the table says whether every server process stayed up through the fault, how each
job ended (done, or failed with the reason's code), how many requests were answered 500, and
how many finished artifacts were lost (no longer downloadable) or corrupted (their bytes no
longer match the sha256 announced when they finished). The goal: servers up, every job done or
failed with a reason, 0 lost, 0 corrupted, 0 answers of 500.

Faults:
  disk-full-idle     data_dir on a tmpfs; the disk is filled while no job runs, then freed
  disk-full-job      the same, filled while a pack writes its artifact
  db-removed         studio.db deleted while a job runs; then a restart (records must survive)
  db-read-only       studio.db and its WAL made immutable (chattr +i, which stops root too)
                     while a job runs, then writable again; then a restart
  postgres-restart   two servers on one PostgreSQL; PostgreSQL restarted while a job runs
  s3-unreachable     artifacts on S3 (moto); moto paused (SIGSTOP) while a job uploads, for
                     longer than object_store's request timeout, then resumed
  kill-9-upload      artifacts on S3; the server killed with SIGKILL while it uploads, restarted
  clock-skew         two servers on PostgreSQL, one with its clock 60 s ahead
                     (TENPAK_STUDIO_CLOCK_SKEW=60: the server's own clock; no faketime needed),
                     the other paused 8 s (SIGSTOP) while it runs a job, so that apalis hands the
                     job's task to the skewed server, which must not take the job over
"""
import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback

from studio_server import BIN, FINISHED, MODEL, ROOT, Fault, Server

PG_PORT, PG_DIR = "55442", "/tmp/tenpak-faults-postgres"
S3_PORT, S3_DIR = "55443", "/tmp/tenpak-faults-s3"


def slow(windows):
    """A `fast`-like preset that scores `windows` evaluation windows: a job that runs a while."""
    return {"toml": f'name = "slow"\n[evaluation]\nwindows = {windows}\nctx = 512\n[allocator]\nid = "role_rules"\n'
                    '[codec]\ncodec = "int4_residual"\ngroup_size = 64\n'}


class Row:
    """One fault's outcome."""

    def __init__(self, name):
        self.name = name
        self.survived = True
        self.jobs = []
        self.lost = 0
        self.corrupted = 0
        self.notes = []
        self.servers = []

    def server(self, *args, **kwargs):
        server = Server(*args, **kwargs)
        self.servers.append(server)
        return server

    def watch(self, *servers):
        for s in servers:
            if not s.alive():
                self.survived = False
                self.notes.append(f"{s.name} exited with {s.process.returncode}")

    def ended(self, label, state):
        if state["state"] == "done":
            self.jobs.append(f"{label} done")
        else:
            error = state.get("error") or {}
            reason = error.get("code") if error.get("message") else "NO REASON"
            self.jobs.append(f"{label} {state['state']} ({reason})")

    def check_artifacts(self, server, finished):
        """`finished`: {job: sha256 announced when it finished}."""
        for job, announced in finished.items():
            status, sha, header = server.download(job)
            if status != 200:
                self.lost += 1
                self.notes.append(f"artifact of {job[-6:]}: {status}")
            elif sha != announced or header != announced:
                self.corrupted += 1

    def fives(self):
        return sum(s.statuses.get(500, 0) for s in self.servers)

    def settle(self, server, seconds=900):
        """Wait until no job is queued or running, then count how every job ended."""
        deadline = time.time() + seconds
        while True:
            listed = server.request("GET", "/jobs?limit=100")[1]
            jobs = listed.get("jobs", []) if isinstance(listed, dict) else []
            open_jobs = [j for j in jobs if j["state"] not in FINISHED]
            if not open_jobs or time.time() > deadline:
                break
            time.sleep(1)
        counts = {}
        for j in jobs:
            if j["state"] in FINISHED:
                error = j.get("error") or {}
                key = j["state"] if j["state"] == "done" else f"{j['state']} ({error.get('code') if error.get('message') else 'NO REASON'})"
            else:
                key = f"STUCK {j['state']}"
            counts[key] = counts.get(key, 0) + 1
        self.jobs.append("all " + str(len(jobs)) + ": " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))


def run(cmd, check=True, **kwargs):
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if check and result.returncode != 0:
        raise Fault(f"{' '.join(cmd)}: {result.stderr.strip()}")
    return result


def mount_tmpfs(directory, size):
    os.makedirs(directory, exist_ok=True)
    run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", directory])


def umount(directory):
    subprocess.run(["umount", "-l", directory], capture_output=True)


def fill(directory):
    """Fill the file system under `directory`; returns the filler's path."""
    path = os.path.join(directory, "filler")
    block = b"\0" * (1 << 16)
    with open(path, "wb") as f:
        try:
            while True:
                f.write(block)
        except OSError:
            pass
    return path


def done_artifact(server, row, label="A"):
    """A finished `fast` pack and the sha256 its download must keep."""
    job = server.submit({"model": MODEL, "preset": "fast"})
    state = server.finish(job)
    row.ended(label, state)
    if state["state"] != "done":
        raise Fault(f"the reference pack did not finish: {state}")
    return job, state["result"]["artifact"]["tar_sha256"]


def small_eval(server, patient=False):
    """A cheap evaluation job; `patient`: sent again on 503 (the answer to a resource still out:
    "send it again once fixed") for up to 60 s."""
    deadline = time.time() + (60 if patient else 0)
    while True:
        try:
            return server.submit({"model": MODEL, "text": {"inline": "word " * 400}, "ctx": 64, "windows": 1}, "/evaluate")
        except Fault as e:
            if not str(e).startswith("submit refused: 503") or time.time() > deadline:
                raise
            time.sleep(0.5)


def leftovers(data):
    """Temporaries and staged packs left in a data directory."""
    found = []
    for sub in ("artifacts", "staging", "cache"):
        directory = os.path.join(data, sub)
        if os.path.isdir(directory):
            found += [f"{sub}/{n}" for n in os.listdir(directory) if ".tmp-" in n or sub == "staging"]
    return found


# ----- the faults -----

def disk_full(row, during_job):
    with tempfile.TemporaryDirectory() as directory:
        data = os.path.join(directory, "data")
        mount_tmpfs(data, "260m")
        try:
            server = row.server(directory)
            a, sha_a = done_artifact(server, row)
            if during_job:
                b = server.submit({"model": MODEL, "preset": slow(4), "eval_text": "assets/eval.txt"})
                server.wait(b, lambda s: s["state"] == "running" and s["stage"] == "encode" and s["progress"] > 0.05, 600)
            filler = fill(data)
            time.sleep(10)
            row.watch(server)
            # What needs the disk: a new job's record (a cheap evaluation, in case it is accepted).
            refused = [server.request("POST", "/evaluate", {"model": MODEL, "text": {"inline": "word " * 400}, "ctx": 64, "windows": 1})[0] for _ in range(3)]
            row.notes.append(f"POST /evaluate while full: {refused}")
            if during_job:
                state = server.finish(b)
                row.ended("B (running when the disk filled)", state)
            os.remove(filler)
            row.notes.append(f"leftovers after the fault: {leftovers(data) or 'none'}")
            c = small_eval(server)
            row.ended("C (submitted after)", server.finish(c))
            row.settle(server)
            row.watch(server)
            row.check_artifacts(server, {a: sha_a})
            server.stop()
        finally:
            for s in row.servers:
                s.stop()
            umount(data)


def database(row, how):
    with tempfile.TemporaryDirectory() as directory:
        data = os.path.join(directory, "data")
        server = row.server(directory)
        a, sha_a = done_artifact(server, row)
        b = server.submit({"model": MODEL, "preset": slow(6), "eval_text": "assets/eval.txt"})
        server.wait(b, lambda s: s["state"] == "running" and s["progress"] > 0.05, 600)
        db = os.path.join(data, "studio.db")
        immutable = [db, db + "-wal"]
        try:
            if how == "removed":
                os.remove(db)
                time.sleep(10)
            else:
                run(["chattr", "+i", *[p for p in immutable if os.path.exists(p)]])
                time.sleep(12)
                row.watch(server)
                refused = [server.request("POST", "/evaluate", {"model": MODEL, "text": {"inline": "word " * 400}, "ctx": 64, "windows": 1})[0] for _ in range(3)]
                row.notes.append(f"POST /evaluate while read-only: {refused}")
        finally:
            subprocess.run(["chattr", "-i", *immutable], capture_output=True)
        row.watch(server)
        row.ended("B (running during the fault)", server.finish(b))
        fixed = time.time()
        c = small_eval(server, patient=True)
        row.notes.append(f"C accepted {time.time() - fixed:.1f} s after B ended")
        row.ended("C (submitted after)", server.finish(c))
        row.settle(server)
        row.check_artifacts(server, {a: sha_a})
        row.watch(server)
        # The records outlive a restart.
        server.stop()
        server.start()
        listed = server.request("GET", "/jobs?limit=100")[1]
        known = {j["id"] for j in listed.get("jobs", [])} if isinstance(listed, dict) else set()
        missing = [j for j in (a, b, c) if j not in known]
        row.notes.append(f"records after a restart: {len(known)} jobs" + (f", MISSING {missing}" if missing else ""))
        if missing:
            row.lost += 1 if a in missing else 0
        row.check_artifacts(server, {a: sha_a})
        server.stop()


def start_postgres():
    env = dict(os.environ, TENPAK_PG_PORT=PG_PORT, TENPAK_PG_DIR=PG_DIR)
    url = run(["bash", os.path.join(ROOT, "scripts", "start-postgres.sh")], env=env).stdout.strip().splitlines()[-1]
    name = f"faults_{int(time.time() * 1000)}"
    run(["psql", url, "-q", "-c", f"CREATE DATABASE {name}"])
    return url.rsplit("/", 1)[0] + "/" + name


def pg_ctl(*args):
    binary = sorted(d for d in os.listdir("/usr/lib/postgresql"))[-1]
    run(["runuser", "-u", "postgres", "--", f"/usr/lib/postgresql/{binary}/bin/pg_ctl", "-D", PG_DIR, *args])


def postgres_restart(row):
    url = start_postgres()
    with tempfile.TemporaryDirectory() as directory:
        extra = f'database_url = "{url}"'
        a_server = row.server(directory, "a", extra)
        b_server = row.server(directory, "b", extra)
        a, sha_a = done_artifact(a_server, row)
        b = a_server.submit({"model": MODEL, "preset": slow(6), "eval_text": "assets/eval.txt"})
        running = a_server.wait(b, lambda s: s["state"] == "running" and s["progress"] > 0.05, 600)
        # -l: the restarted server writes to its log, not to pg_ctl's output (which this script
        # reads to its end: a server holding it open would hang the bench).
        pg_ctl("restart", "-m", "fast", "-w", "-t", "60", "-l", os.path.join(PG_DIR, "server.log"))
        time.sleep(5)
        row.watch(a_server, b_server)
        state = b_server.finish(b)
        row.ended("B (running during the restart)", state)
        if state.get("attempts") != 1 or state.get("worker") != running.get("worker"):
            row.notes.append(f"B ran {state.get('attempts')} times, last on {state.get('worker')}")
        c = small_eval(b_server)
        row.ended("C (submitted after)", a_server.finish(c))
        row.settle(a_server)
        row.watch(a_server, b_server)
        for s in (a_server, b_server):
            row.check_artifacts(s, {a: sha_a})
        for s in row.servers:
            s.stop()


def start_s3():
    env = dict(os.environ, TENPAK_S3_PORT=S3_PORT, TENPAK_S3_DIR=S3_DIR)
    endpoint = run(["bash", os.path.join(ROOT, "scripts", "start-s3.sh")], env=env).stdout.strip().splitlines()[-1]
    prefix = f"faults-{int(time.time() * 1000)}"
    table = (f'[artifacts]\nurl = "s3://tenpak-test/{prefix}"\noptions = {{ endpoint = "{endpoint}", allow_http = "true", '
             f'region = "us-east-1", access_key_id = "test", secret_access_key = "test" }}\n')
    return table


def moto_pid():
    out = run(["pgrep", "-f", f"moto_server -H 127.0.0.1 -p {S3_PORT}"], check=False).stdout.split()
    if not out:
        raise Fault("moto_server is not running")
    return int(out[0])


def staged(data, job):
    return os.path.isfile(os.path.join(data, "staging", f"{job}.tenpak", "manifest.json"))


def wait_until(predicate, seconds, what):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise Fault(f"{what}: not within {seconds} s")


def s3_fault(row, how):
    table = start_s3()
    with tempfile.TemporaryDirectory() as directory:
        data = os.path.join(directory, "data")
        server = row.server(directory, extra=table)
        a, sha_a = done_artifact(server, row)
        b = server.submit({"model": MODEL, "preset": "fast"})
        wait_until(lambda: staged(data, b), 900, "the pack of B reaching its upload")
        if how == "unreachable":
            moto = moto_pid()
            os.kill(moto, signal.SIGSTOP)
            try:
                time.sleep(45)
                row.watch(server)
                listed = server.request("GET", "/jobs?limit=5")[0]
                row.notes.append(f"GET /jobs while S3 is paused: {listed}")
            finally:
                os.kill(moto, signal.SIGCONT)
            state = server.finish(b)
            row.ended("B (uploading when S3 stopped answering)", state)
            finished = {a: sha_a}
            if state["state"] == "done":
                finished[b] = state["result"]["artifact"]["tar_sha256"]
        else:
            server.kill9()
            server.start()
            state = server.finish(b)
            row.ended(f"B (killed mid-upload; {state.get('attempts')} attempts)", state)
            finished = {a: sha_a}
            if state["state"] == "done":
                finished[b] = state["result"]["artifact"]["tar_sha256"]
        row.notes.append(f"leftovers: {leftovers(data) or 'none'}")
        c = small_eval(server)
        row.ended("C (submitted after)", server.finish(c))
        row.settle(server)
        row.watch(server)
        row.check_artifacts(server, finished)
        server.stop()


def clock_skew(row):
    url = start_postgres()
    with tempfile.TemporaryDirectory() as directory:
        extra = f'database_url = "{url}"'
        a_server = row.server(directory, "a", extra)
        b_server = row.server(directory, "b", extra, env={"TENPAK_STUDIO_CLOCK_SKEW": "60"})
        # The job must run on the server whose clock is right: submit until one lands there.
        a_prefix = f"tenpak-{a_server.process.pid}-"
        for attempt in range(6):
            b = a_server.submit({"model": MODEL, "preset": slow(8), "eval_text": "assets/eval.txt"})
            running = a_server.wait(b, lambda s: s["state"] == "running" and s["progress"] > 0.05, 600)
            if running["worker"].startswith(a_prefix):
                break
            row.ended(f"B{attempt} (ran on the skewed server)", a_server.finish(b))
        else:
            raise Fault("no job ran on the unskewed server")
        a_server.signal(signal.SIGSTOP)
        try:
            time.sleep(8)
        finally:
            a_server.signal(signal.SIGCONT)
        state = a_server.finish(b)
        row.ended("B (its server paused 8 s)", state)
        if state.get("attempts") != 1 or state.get("worker") != running["worker"]:
            row.notes.append(f"B TAKEN OVER: {state.get('attempts')} attempts, last on {state.get('worker')}")
        else:
            row.notes.append("B kept its worker, 1 attempt")
        row.settle(a_server)
        row.watch(a_server, b_server)
        a_artifact = {b: state["result"]["artifact"]["tar_sha256"]} if state["state"] == "done" else {}
        for s in (a_server, b_server):
            row.check_artifacts(s, a_artifact)
        for s in row.servers:
            s.stop()


FAULTS = {
    "disk-full-idle": lambda row: disk_full(row, during_job=False),
    "disk-full-job": lambda row: disk_full(row, during_job=True),
    "db-removed": lambda row: database(row, "removed"),
    "db-read-only": lambda row: database(row, "read-only"),
    "postgres-restart": postgres_restart,
    "s3-unreachable": lambda row: s3_fault(row, "unreachable"),
    "kill-9-upload": lambda row: s3_fault(row, "kill"),
    "clock-skew": clock_skew,
}


def stop_private_services():
    pid = None
    try:
        pid = moto_pid()
    except Fault:
        pass
    if pid:
        os.kill(pid, signal.SIGCONT)
        os.kill(pid, signal.SIGTERM)
    if os.path.exists(os.path.join(PG_DIR, "postmaster.pid")):
        try:
            pg_ctl("stop", "-m", "fast")
        except Fault:
            pass


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated fault names")
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args()
    if args.list:
        print("\n".join(FAULTS))
        return
    names = args.only.split(",") if args.only else list(FAULTS)
    unknown = [n for n in names if n not in FAULTS]
    if unknown:
        sys.exit(f"unknown faults {unknown}; --list shows them")
    if os.geteuid() != 0:
        sys.exit("run as root: the bench mounts tmpfs, sets chattr +i and runs PostgreSQL")
    if not os.path.exists(BIN):
        sys.exit(f"{BIN} is missing: cargo build --release -p tenpak")
    print(f"machine: {os.cpu_count()} cores, {os.uname().sysname} {os.uname().release}; {time.strftime('%Y-%m-%d %H:%M')}")
    rows = []
    try:
        for name in names:
            row = Row(name)
            started = time.time()
            try:
                FAULTS[name](row)
            except Exception as e:  # the bench could not finish this fault: say so in the row
                row.notes.append(f"BENCH STOPPED: {e}")
                traceback.print_exc()
                for s in row.servers:
                    row.watch(s)
                    s.stop()
            row.notes.append(f"{time.time() - started:.0f} s")
            rows.append(row)
            print(f"{name}: survived={row.survived} jobs={row.jobs} lost={row.lost} corrupted={row.corrupted} "
                  f"500s={row.fives()} {row.notes}", flush=True)
    finally:
        stop_private_services()
    print("\n| fault | servers survived | how jobs ended | artifacts lost | artifacts corrupted | 500s | notes |")
    print("|---|---|---|---|---|---|---|")
    bad = 0
    for r in rows:
        ok = r.survived and r.lost == 0 and r.corrupted == 0 and r.fives() == 0 and \
            not any("NO REASON" in j or "STUCK" in j for j in r.jobs) and not any("BENCH STOPPED" in n or "TAKEN OVER" in n for n in r.notes)
        bad += 0 if ok else 1
        print(f"| {r.name} | {'yes' if r.survived else 'NO'} | {'; '.join(r.jobs)} | {r.lost} | {r.corrupted} | "
              f"{r.fives()} | {'; '.join(r.notes)} |")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
