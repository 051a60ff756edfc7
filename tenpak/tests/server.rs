//! TenPak Studio over real HTTP on loopback: the `tenpak serve` binary started on 127.0.0.1:0 in
//! the test, a reqwest client, the real model. (Needs `assets/`: `bash scripts/fetch-assets.sh`.)

#![cfg(feature = "studio")]

mod faults;

use tenpak_testkit as util;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::blocking::{Client, RequestBuilder, Response};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const TOKEN: &str = "studio-test-token";
const MODEL: &str = "assets/SmolLM2-135M-Instruct.Q4_1.gguf";

/// A `tenpak serve` process on its own data directory.
struct Server {
    child: Child,
    base: String,
    dir: PathBuf,
}

impl Server {
    /// Write `studio.toml` (the real assets as root `assets`, `extra` appended) in `dir` and start.
    fn start(dir: &Path, extra: &str) -> Server {
        Self::start_as(dir, "studio", extra)
    }

    /// [`Server::start`] with the configuration in `<name>.toml` (several servers, one directory).
    fn start_as(dir: &Path, name: &str, extra: &str) -> Server {
        let assets = util::repo_root().join("assets");
        util::asset("SmolLM2-135M-Instruct.Q4_1.gguf");
        let config = format!(
            "data_dir = \"data\"\ntoken = \"{TOKEN}\"\n{extra}\n[model_roots]\nassets = \"{}\"\nscratch = \"{}\"\n",
            assets.display(),
            dir.join("scratch").display()
        );
        std::fs::create_dir_all(dir.join("scratch")).unwrap();
        std::fs::write(dir.join(format!("{name}.toml")), config).unwrap();
        Self::restart_as(dir, name)
    }

    /// Start on the existing configuration and data directory.
    fn restart(dir: &Path) -> Server {
        Self::restart_as(dir, "studio")
    }

    fn restart_as(dir: &Path, name: &str) -> Server {
        let stderr = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("serve.log")).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_tenpak"))
            .args(["serve", "--config"])
            .arg(dir.join(format!("{name}.toml")))
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let Some(address) = line.trim().strip_prefix("listening on ") else {
            let log = std::fs::read_to_string(dir.join("serve.log")).unwrap_or_default();
            panic!("tenpak serve did not start: {line:?}\n{log}");
        };
        Server { child, base: address.to_owned(), dir: dir.to_owned() }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn kill_9(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client() -> Client {
    Client::builder().timeout(Duration::from_secs(120)).build().unwrap()
}

fn authed(request: RequestBuilder) -> RequestBuilder {
    request.bearer_auth(TOKEN)
}

/// Status and JSON body; every error body has the `{"error": {"code", "message"}}` shape.
fn call(request: RequestBuilder) -> (u16, Value) {
    let response: Response = request.send().unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().unwrap_or(Value::Null);
    if status >= 400 {
        assert!(body["error"]["code"].is_string() && body["error"]["message"].is_string(), "{status}: {body}");
    }
    (status, body)
}

fn submit(server: &Server, path: &str, body: Value) -> String {
    let (status, reply) = call(authed(client().post(server.url(path))).json(&body));
    assert_eq!(status, 202, "{reply}");
    reply["id"].as_str().unwrap().to_owned()
}

fn job_status(server: &Server, id: &str) -> Value {
    let (status, body) = call(authed(client().get(server.url(&format!("/status/{id}")))));
    assert_eq!(status, 200, "{body}");
    body
}

/// Poll `/status/{id}` until `until` holds (at most `seconds`); returns the last status.
fn wait(server: &Server, id: &str, seconds: u64, until: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        let job = job_status(server, id);
        if until(&job) {
            return job;
        }
        assert!(Instant::now() < deadline, "job {id} did not get there in {seconds} s: {job}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn finished(job: &Value) -> bool {
    matches!(job["state"].as_str(), Some("done" | "failed" | "cancelled"))
}

/// A preset like `fast` scoring `windows` evaluation windows (a job that runs for a while).
fn slow_preset(windows: usize) -> Value {
    json!({"toml": format!(
        "name = \"slow\"\n[evaluation]\nwindows = {windows}\nctx = 512\n[allocator]\nid = \"role_rules\"\n\
         [codec]\ncodec = \"int4_residual\"\ngroup_size = 64\n"
    )})
}

fn download(server: &Server, id: &str) -> (Vec<u8>, String) {
    let response = authed(client().get(server.url(&format!("/artifact/{id}")))).send().unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let sha = response.headers()["x-tenpak-sha256"].to_str().unwrap().to_owned();
    let bytes = response.bytes().unwrap().to_vec();
    (bytes, sha)
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn tenpak(args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tenpak")).args(args).output().unwrap()
}

/// The whole round: a real `fast` pack through POST /compress, /status polling, GET /artifact
/// (a tar whose sha256 is the one announced), `tenpak info` on what it holds; /evaluate on the
/// job's artifact equals `tenpak eval` on the untarred copy; the listing endpoints.
#[test]
fn studio_packs_the_real_model_and_serves_it() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path(), "");

    let (status, health) = call(client().get(server.url("/health")));
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));
    let (status, codecs) = call(authed(client().get(server.url("/codecs"))));
    assert_eq!(status, 200);
    assert!(codecs["codecs"].as_array().unwrap().iter().any(|c| c["id"] == "int4_awq"), "{codecs}");
    let (_, presets) = call(authed(client().get(server.url("/presets"))));
    let names: Vec<&str> = presets["presets"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["fast", "quality", "balanced", "size", "budget", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k_m", "q4_k_m", "q5_k_m", "q6_k", "iq4_nl", "iq4_xs", "gguf-budget"]
    );
    let (_, openapi) = call(authed(client().get(server.url("/openapi.json"))));
    for path in ["/compress", "/status/{id}", "/artifact/{id}", "/evaluate", "/jobs", "/jobs/{id}", "/health", "/codecs", "/presets", "/openapi.json"] {
        assert!(openapi["paths"][path].is_object(), "openapi.json lacks {path}");
    }

    let id = submit(&server, "/compress", json!({"model": MODEL, "preset": "fast"}));
    let job = wait(&server, &id, 600, finished);
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(job["result"]["linear_bits_per_weight"], 4.5, "fast is 4.5 bits on the linears: {job}");
    assert_eq!(job["progress"], 1.0);

    let (tar, announced) = download(&server, &id);
    assert_eq!(hex_sha256(&tar), announced);
    assert_eq!(job["result"]["artifact"]["tar_sha256"], announced.as_str());
    assert_eq!(job["result"]["artifact"]["tar_bytes"], tar.len());
    let out = tmp.path().join("downloaded");
    tar::Archive::new(tar.as_slice()).unpack(&out).unwrap();
    let artifact = out.join(format!("{id}.tenpak"));
    let info = tenpak(&["info".as_ref(), artifact.as_os_str()]);
    assert!(info.status.success(), "{}", String::from_utf8_lossy(&info.stderr));
    assert!(String::from_utf8_lossy(&info.stdout).contains("verified (sha256)"));

    let eval_id = submit(&server, "/evaluate", json!({"job": id, "text": "assets/eval.txt", "windows": 3}));
    let evaluation = wait(&server, &eval_id, 600, finished);
    assert_eq!(evaluation["state"], "done", "{evaluation}");
    let eval_text = util::asset("eval.txt");
    let cli = tenpak(&["eval".as_ref(), artifact.as_os_str(), "--text".as_ref(), eval_text.as_os_str(), "--samples".as_ref(), "3".as_ref()]);
    assert!(cli.status.success(), "{}", String::from_utf8_lossy(&cli.stderr));
    let stdout = String::from_utf8_lossy(&cli.stdout);
    let cli_ppl: f64 = stdout.lines().find_map(|l| l.strip_prefix("ppl")).unwrap().trim().parse().unwrap();
    let served = evaluation["result"]["ppl"].as_f64().unwrap();
    assert!((served - cli_ppl).abs() < 5e-5 * cli_ppl, "served {served} vs tenpak eval {cli_ppl}");

    let (_, listed) = call(authed(client().get(server.url("/jobs?state=done&limit=10"))));
    assert_eq!(listed["total"], 2, "{listed}");
    let (_, page) = call(authed(client().get(server.url("/jobs?limit=1&offset=1"))));
    assert_eq!(page["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(page["jobs"][0]["id"], id.as_str(), "newest first");

    // With a base: the divergence of the artifact from the model it came from, as `tenpak eval
    // --base` prints it.
    let compared_id = submit(
        &server,
        "/evaluate",
        json!({"job": id, "text": "assets/eval.txt", "windows": 2, "base": MODEL, "tasks": "assets/tasks/piqa.jsonl", "task_limit": 3}),
    );
    let compared = wait(&server, &compared_id, 600, finished);
    assert_eq!(compared["state"], "done", "{compared}");
    let served = &compared["result"]["divergence"];
    let kld = served["kld_mean"].as_f64().unwrap();
    assert!(kld > 0.0 && served["tokens"] == 2 * 511 && compared["result"]["baseline_ppl"].as_f64().is_some(), "{compared}");
    let model = util::repo_root().join(MODEL);
    let cli = tenpak(&[
        "eval".as_ref(), artifact.as_os_str(), "--text".as_ref(), eval_text.as_os_str(), "--samples".as_ref(), "2".as_ref(),
        "--base".as_ref(), model.as_os_str(),
    ]);
    assert!(cli.status.success(), "{}", String::from_utf8_lossy(&cli.stderr));
    let stdout = String::from_utf8_lossy(&cli.stdout);
    let cli_kld: f64 = stdout.lines().find_map(|l| l.strip_prefix("KL divergence mean ")).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!((kld - cli_kld).abs() <= 1e-6 + 1e-5 * cli_kld, "served KLD {kld} vs tenpak eval --base {cli_kld}");

    // And the accuracies on three PIQA items, the artifact's and the base's, as `tenpak eval
    // --tasks --base` prints them.
    let tasks = util::asset("tasks/piqa.jsonl");
    let cli = tenpak(&[
        "eval".as_ref(), artifact.as_os_str(), "--tasks".as_ref(), tasks.as_os_str(), "--task-limit".as_ref(), "3".as_ref(),
        "--base".as_ref(), model.as_os_str(),
    ]);
    assert!(cli.status.success(), "{}", String::from_utf8_lossy(&cli.stderr));
    let stdout = String::from_utf8_lossy(&cli.stdout);
    let row: Vec<&str> = stdout.lines().find(|l| l.starts_with("piqa ")).expect("a piqa row").split_whitespace().collect();
    let pct = |v: &serde_json::Value| format!("{:.2}", 100.0 * v.as_f64().unwrap());
    let result = &compared["result"];
    assert_eq!((result["tasks"][0]["task"].as_str(), result["tasks"][0]["items"].as_u64()), (Some("piqa"), Some(3)), "{compared}");
    assert_eq!((pct(&result["tasks"][0]["acc"]), pct(&result["baseline_tasks"][0]["acc"])), (row[2].to_owned(), row[8].to_owned()), "{stdout}");
}

/// Everything a client can get wrong is refused with the right status and nothing is queued;
/// a running job is cancelled at its next step and leaves no artifact.
#[test]
fn studio_refuses_what_it_should_and_cancels_a_running_job() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path(), "max_body_bytes = 4096\nmax_queued = 1");
    let url = |p: &str| server.url(p);

    // Token: absent or wrong.
    assert_eq!(call(client().get(url("/jobs"))).0, 401);
    assert_eq!(call(client().get(url("/jobs")).bearer_auth("nope")).0, 401);
    assert_eq!(call(client().post(url("/compress")).json(&json!({"model": MODEL}))).0, 401);

    // Names that leave their root, or are not names.
    std::os::unix::fs::symlink(util::real_gguf(), tmp.path().join("scratch/escape.gguf")).unwrap();
    for (name, status) in [
        ("assets/../assets/SmolLM2-135M-Instruct.Q4_1.gguf", 400),
        ("/etc/passwd", 400),
        ("assets/./x.gguf", 400),
        ("assets/a\0b.gguf", 400),
        ("assets\\x.gguf", 400),
        ("scratch/escape.gguf", 400),
        ("elsewhere/x.gguf", 404),
        ("assets/no-such-model.gguf", 404),
        ("no-root-at-all", 400),
    ] {
        let (got, body) = call(authed(client().post(url("/compress"))).json(&json!({"model": name, "preset": "fast"})));
        assert_eq!(got, status, "{name:?}: {body}");
    }

    // Bodies: too large, malformed, unknown field, wrong type (texts: studio_bounds_texts_inline_and_named).
    let big = json!({"model": MODEL, "preset": "fast", "eval_text": {"inline": "x".repeat(5000)}});
    assert_eq!(call(authed(client().post(url("/compress"))).json(&big)).0, 413);
    let (got, body) = call(authed(client().post(url("/compress"))).header("content-type", "application/json").body("{\"model\": "));
    assert_eq!(got, 400, "{body}");
    let (got, body) = call(authed(client().post(url("/compress"))).json(&json!({"model": MODEL, "presett": "fast"})));
    assert_eq!(got, 400);
    assert!(body["error"]["message"].as_str().unwrap().contains("presett"), "{body}");
    let (got, body) = call(authed(client().post(url("/compress"))).json(&json!({"model": MODEL, "preset": "turbo"})));
    assert_eq!(got, 404, "{body}");
    let (got, body) = call(authed(client().post(url("/compress"))).json(&json!({"model": MODEL, "preset": "balanced"})));
    assert_eq!(got, 400, "a calibrating preset without a calibration text: {body}");
    let (got, _) = call(authed(client().get(url("/jobs?state=sleeping"))));
    assert_eq!(got, 400);

    // Unknown ids.
    for path in ["/status/01ARZ3NDEKTSV4RRFFQ69G5FAV", "/artifact/01ARZ3NDEKTSV4RRFFQ69G5FAV", "/status/not-an-id"] {
        assert_eq!(call(authed(client().get(url(path)))).0, 404, "{path}");
    }
    assert_eq!(call(authed(client().delete(url("/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV")))).0, 404);
    let (_, listed) = call(authed(client().get(url("/jobs"))));
    assert_eq!(listed["total"], 0, "nothing refused was queued: {listed}");

    // A running job: a second one is refused (max_queued = 1), then the first is cancelled.
    let id = submit(&server, "/compress", json!({"model": MODEL, "preset": slow_preset(24), "eval_text": "assets/eval.txt"}));
    wait(&server, &id, 300, |j| j["state"] == "running" && j["stage"] == "evaluate");
    let (got, body) = call(authed(client().post(url("/compress"))).json(&json!({"model": MODEL, "preset": "fast"})));
    assert_eq!(got, 429, "{body}");
    let (got, body) = call(authed(client().delete(url(&format!("/jobs/{id}")))));
    assert_eq!(got, 202, "{body}");
    let job = wait(&server, &id, 120, finished);
    assert_eq!(job["state"], "cancelled", "{job}");
    assert_eq!(job["error"]["code"], "cancelled");
    let artifacts: Vec<_> = std::fs::read_dir(server.dir.join("data/artifacts")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(artifacts.is_empty(), "a cancelled job leaves nothing: {artifacts:?}");
    assert_eq!(call(authed(client().get(url(&format!("/artifact/{id}"))))).0, 409);
    assert_eq!(call(authed(client().delete(url(&format!("/jobs/{id}"))))).0, 409, "already cancelled");
}

/// kill -9 mid-job: on restart the job ends (done, or failed with a reason), never stuck
/// running; the job finished before the kill and its artifact are intact; no temporary
/// directory is left.
#[test]
fn studio_survives_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path(), "");
    let first = submit(&server, "/compress", json!({"model": MODEL, "preset": "fast"}));
    assert_eq!(wait(&server, &first, 600, finished)["state"], "done");
    let (tar, sha) = download(&server, &first);

    let second = submit(&server, "/compress", json!({"model": MODEL, "preset": slow_preset(8), "eval_text": "assets/eval.txt"}));
    wait(&server, &second, 300, |j| j["state"] == "running" && j["progress"].as_f64().unwrap() > 0.1);
    server.kill_9();

    let server = Server::restart(tmp.path());
    let job = wait(&server, &second, 600, finished);
    assert!(job["state"] == "done" || (job["state"] == "failed" && job["error"]["message"].is_string()), "{job}");
    assert_eq!(job["attempts"], 2, "{job}");
    let again = job_status(&server, &first);
    assert_eq!(again["state"], "done");
    let (tar_again, sha_again) = download(&server, &first);
    assert_eq!((hex_sha256(&tar_again), sha_again), (hex_sha256(&tar), sha));
    let leftovers: Vec<String> = std::fs::read_dir(server.dir.join("data/artifacts"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// Run `scripts/<script>` (it installs and starts a throwaway service on loopback, or finds it
/// running) and return the last line it prints, the service's address; fail loudly if it cannot.
fn start_service(script: &str) -> String {
    let script = util::repo_root().join("scripts").join(script);
    let out = Command::new("bash").arg(&script).output().unwrap();
    assert!(out.status.success(), "{} failed:\n{}", script.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().last().unwrap().trim().to_owned()
}

/// A fresh database on the project's throwaway PostgreSQL (`scripts/start-postgres.sh` installs
/// and starts it on loopback; the test fails loudly if it cannot).
fn postgres_database() -> String {
    // Started once per test binary: the tests run on parallel threads.
    static SERVER: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let url = SERVER.get_or_init(|| start_service("start-postgres.sh"));
    let name = format!("tenpak_{}", ulid::Ulid::generate().to_string().to_lowercase());
    let created = Command::new("psql").args([url.as_str(), "-q", "-c", &format!("CREATE DATABASE {name}")]).output().unwrap();
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    format!("{}/{name}", url.rsplit_once('/').unwrap().0)
}

/// Two servers on one fresh PostgreSQL database, sharing the data directory `dir`.
fn two_postgres_servers(dir: &Path) -> (Server, Server) {
    let extra = format!("database_url = \"{}\"", postgres_database());
    (Server::start_as(dir, "a", &extra), Server::start_as(dir, "b", &extra))
}

/// Two servers on one PostgreSQL queue (and one data directory): four jobs submitted to
/// either, each runs exactly once, both servers see all four and serve their artifacts.
#[test]
fn studio_two_servers_share_one_postgres_queue() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = two_postgres_servers(tmp.path());
    let ids: Vec<String> =
        (0..4).map(|i| submit(if i % 2 == 0 { &a } else { &b }, "/compress", json!({"model": MODEL, "preset": "fast"}))).collect();
    let mut workers = std::collections::BTreeSet::new();
    for id in &ids {
        let job = wait(&a, id, 900, finished);
        assert_eq!(job["state"], "done", "{job}");
        assert_eq!(job["attempts"], 1, "ran exactly once: {job}");
        workers.insert(job["worker"].as_str().unwrap().to_owned());
        assert_eq!(job_status(&b, id)["state"], "done");
    }
    eprintln!("jobs ran on {} workers: {workers:?}", workers.len());
    for server in [&a, &b] {
        let (_, listed) = call(authed(client().get(server.url("/jobs?state=done"))));
        assert_eq!(listed["total"], 4, "{listed}");
        let (tar, sha) = download(server, &ids[0]);
        assert_eq!(hex_sha256(&tar), sha);
    }
}

/// Two servers on PostgreSQL, the one running a job killed with SIGKILL: the other takes the job
/// over once the dead worker's heartbeat is stale and finishes it; nothing stays running.
#[test]
fn studio_postgres_job_moves_to_the_surviving_server() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = two_postgres_servers(tmp.path());
    let id = submit(&a, "/compress", json!({"model": MODEL, "preset": slow_preset(8), "eval_text": "assets/eval.txt"}));
    let running = wait(&a, &id, 300, |j| j["state"] == "running" && j["progress"].as_f64().unwrap() > 0.1);
    let owner = running["worker"].as_str().unwrap().to_owned();
    let (victim, survivor) = if owner.starts_with(&format!("tenpak-{}-", a.child.id())) { (a, b) } else { (b, a) };
    assert!(owner.starts_with(&format!("tenpak-{}-", victim.child.id())), "{owner}");
    victim.kill_9();
    let job = wait(&survivor, &id, 600, finished);
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(job["attempts"], 2, "{job}");
    assert!(job["worker"].as_str().unwrap().starts_with(&format!("tenpak-{}-", survivor.child.id())), "{job}");
}

/// The project's throwaway S3-compatible store (`scripts/start-s3.sh`: moto's server on
/// loopback, installed from PyPI; the test fails loudly if it cannot), as an `[artifacts]`
/// table under a fresh prefix of its bucket; returns the table and the prefix's listing URL.
fn s3_artifacts() -> (String, String) {
    static ENDPOINT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let endpoint = ENDPOINT.get_or_init(|| start_service("start-s3.sh"));
    let prefix = format!("studio-{}", ulid::Ulid::generate().to_string().to_lowercase());
    let table = format!(
        "[artifacts]\nurl = \"s3://tenpak-test/{prefix}\"\noptions = {{ endpoint = \"{endpoint}\", allow_http = \"true\", \
         region = \"us-east-1\", access_key_id = \"test\", secret_access_key = \"test\" }}\n"
    );
    (table, format!("{endpoint}/tenpak-test?list-type=2&prefix={prefix}/"))
}

/// Artifacts in an S3 bucket, two servers on one PostgreSQL queue with data directories of
/// their own: a job's artifact goes to the bucket (manifest and shards, nothing left in either
/// data directory), downloads from either server with the digest announced, and the other
/// server evaluates it from a copy it fetches.
#[test]
fn studio_keeps_artifacts_in_s3_for_every_server() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (table, listing) = s3_artifacts();
    let extra = format!("database_url = \"{}\"\n{table}", postgres_database());
    let a = Server::start(a_dir.path(), &extra);
    let b = Server::start(b_dir.path(), &extra);
    let id = submit(&a, "/compress", json!({"model": MODEL, "preset": "fast"}));
    let job = wait(&a, &id, 600, finished);
    assert_eq!(job["state"], "done", "{job}");

    let keys = client().get(&listing).send().unwrap().text().unwrap();
    for file in ["manifest.json", ".safetensors"] {
        assert!(keys.contains(&format!("{id}.tenpak/")) && keys.contains(file), "{file} not in the bucket: {keys}");
    }
    for dir in [a_dir.path(), b_dir.path()] {
        let staged = std::fs::read_dir(dir.join("data/staging")).unwrap().count();
        assert_eq!(staged, 0, "nothing staged is left in {}", dir.display());
        assert!(!dir.join("data/artifacts").exists(), "no local artifact directory with S3 storage");
    }
    for server in [&a, &b] {
        let (tar, sha) = download(server, &id);
        assert_eq!(hex_sha256(&tar), sha);
        assert_eq!(job["result"]["artifact"]["tar_sha256"], sha.as_str());
    }

    let eval_id = submit(&b, "/evaluate", json!({"job": id, "text": "assets/eval.txt", "windows": 2}));
    let evaluation = wait(&b, &eval_id, 600, finished);
    assert_eq!(evaluation["state"], "done", "{evaluation}");
    assert!(evaluation["result"]["ppl"].as_f64().unwrap().is_finite(), "{evaluation}");
    let cached = |dir: &Path| dir.join(format!("data/cache/{id}.tenpak/manifest.json")).is_file();
    assert!(cached(a_dir.path()) || cached(b_dir.path()), "the evaluating server fetched a copy");

    let unknown = ulid::Ulid::generate().to_string();
    let (got, body) = call(authed(client().post(b.url("/evaluate"))).json(&json!({"job": unknown, "text": "assets/eval.txt"})));
    assert_eq!(got, 404, "{body}");
}
