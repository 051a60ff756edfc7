"""A `tenpak serve` process on loopback for the Studio scripts (studio-bench.py, studio-faults.py):
started on a data directory with a configuration written there, and its HTTP API with the token."""
import hashlib
import http.client
import json
import os
import signal
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "tenpak")
MODEL = "assets/SmolLM2-135M-Instruct.Q4_1.gguf"
TOKEN = "studio-scripts-token"
FINISHED = ("done", "failed", "cancelled")


class Fault(Exception):
    """The bench itself could not do what it meant to (not a finding about the server)."""


class Server:
    """A `tenpak serve` process on `directory` (config `name`.toml)."""

    def __init__(self, directory, name="studio", extra="", env=None):
        self.directory, self.name = directory, name
        self.config = os.path.join(directory, f"{name}.toml")
        if not os.path.exists(self.config):
            with open(self.config, "w") as f:
                f.write(f'data_dir = "data"\ntoken = "{TOKEN}"\nmax_queued = 64\n{extra}\n'
                        f'[model_roots]\nassets = "{os.path.join(ROOT, "assets")}"\n')
        self.env = dict(os.environ, **(env or {}))
        self.statuses = {}
        self.start()

    def start(self):
        log = open(os.path.join(self.directory, f"{self.name}.log"), "a")
        self.process = subprocess.Popen([BIN, "serve", "--config", self.config, "--listen", "127.0.0.1:0"],
                                        stdout=subprocess.PIPE, stderr=log, text=True, env=self.env)
        line = self.process.stdout.readline().strip()
        if not line.startswith("listening on http://"):
            raise Fault(f"tenpak serve did not start: {line!r}; see {self.directory}/{self.name}.log")
        self.host, port = line.removeprefix("listening on http://").split(":")
        self.port = int(port)

    def alive(self):
        return self.process.poll() is None

    def request(self, method, path, body=None, timeout=60):
        connection = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            connection.request(method, path, body=data, headers=headers)
            response = connection.getresponse()
            payload = response.read()
        except OSError as e:
            self.statuses["no answer"] = self.statuses.get("no answer", 0) + 1
            return None, {"error": {"code": "no answer", "message": str(e)}}
        finally:
            connection.close()
        self.statuses[response.status] = self.statuses.get(response.status, 0) + 1
        try:
            parsed = json.loads(payload) if payload else None
        except ValueError:
            parsed = payload
        return response.status, parsed

    def submit(self, body, path="/compress"):
        status, reply = self.request("POST", path, body)
        if status != 202:
            raise Fault(f"submit refused: {status} {reply}")
        return reply["id"]

    def status(self, job):
        return self.request("GET", f"/status/{job}")[1]

    def wait(self, job, predicate, seconds):
        deadline = time.time() + seconds
        state = None
        while time.time() < deadline:
            state = self.status(job)
            if isinstance(state, dict) and "state" in state and predicate(state):
                return state
            time.sleep(0.5)
        raise Fault(f"job {job} did not get there in {seconds} s: {state}")

    def finish(self, job, seconds=900):
        return self.wait(job, lambda s: s["state"] in FINISHED, seconds)

    def download(self, job):
        connection = http.client.HTTPConnection(self.host, self.port, timeout=300)
        connection.request("GET", f"/artifact/{job}", headers={"Authorization": f"Bearer {TOKEN}"})
        response = connection.getresponse()
        data = response.read()
        connection.close()
        return response.status, hashlib.sha256(data).hexdigest(), response.getheader("x-tenpak-sha256")

    def signal(self, sig):
        self.process.send_signal(sig)

    def kill9(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self):
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill9()
