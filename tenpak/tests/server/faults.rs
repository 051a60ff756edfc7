//! Studio under hostile and careless use (issue 30), each on a real `tenpak serve` on loopback:
//! refusals that are checked before a job is accepted, the JSON error form for what hyper and
//! warp refuse themselves, no server path in anything a client sees, bounded checking cost, and
//! a full data disk that degrades the service instead of ending it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{MODEL, Server, authed, call, client, download, finished, job_status, slow_preset, submit, wait};

/// A request written by hand (for what an HTTP client library will not send) and the answer:
/// status and JSON body. The connection is closed by the server after the answer.
fn raw(server: &Server, head: &[u8]) -> (u16, Value) {
    let address = server.base.strip_prefix("http://").unwrap();
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    // The server may answer (and close) before it has read all of a large head: write on another
    // thread and read the answer here.
    let mut writer = stream.try_clone().unwrap();
    let head = head.to_vec();
    let writing = std::thread::spawn(move || {
        let _ = writer.write_all(&head);
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if !answer.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("reading the answer: {e} (so far {:?})", String::from_utf8_lossy(&answer)),
        }
        // One answer per request: stop once its body is complete.
        if let Some((head, body)) = split(&answer)
            && content_length(head).is_some_and(|n| body.len() >= n)
        {
            break;
        }
    }
    drop(stream);
    let _ = writing.join();
    let (head, body) = split(&answer).unwrap_or_else(|| panic!("no complete answer: {:?}", String::from_utf8_lossy(&answer)));
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let body: Value = serde_json::from_slice(body).unwrap_or_else(|e| panic!("{status}: body is not JSON ({e}): {head}"));
    assert!(body["error"]["code"].is_string() && body["error"]["message"].is_string(), "{status}: {body}");
    (status, body)
}

fn split(answer: &[u8]) -> Option<(&str, &[u8])> {
    let end = answer.windows(4).position(|w| w == b"\r\n\r\n")?;
    Some((std::str::from_utf8(&answer[..end]).ok()?, &answer[end + 4..]))
}

fn content_length(head: &str) -> Option<usize> {
    head.lines().find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().ok()))?
}

/// What the bearer check and the HTTP layer refuse themselves is in the JSON error form too: a
/// token that is not UTF-8 is a wrong token (401), a 1 MB request head is 431, a request hyper
/// cannot parse is 400; none shows Rust debug text.
#[test]
fn studio_refuses_a_bad_header_in_json() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path(), "");
    let host = server.base.strip_prefix("http://").unwrap().to_owned();

    let mut request = format!("POST /compress HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer ").into_bytes();
    request.extend_from_slice(b"\xff\xfe");
    request.extend_from_slice(b"\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}");
    let (status, body) = raw(&server, &request);
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthorized")), "{body}");
    assert!(!body.to_string().contains("Rejection"), "{body}");

    let big = format!("GET /health HTTP/1.1\r\nHost: {host}\r\nX-Filler: {}\r\nConnection: close\r\n\r\n", "a".repeat(1 << 20));
    let (status, body) = raw(&server, big.as_bytes());
    assert_eq!((status, body["error"]["code"].as_str()), (431, Some("header_too_large")), "{body}");

    // What hyper refuses to parse (a control byte in a header value, a request line that is not
    // HTTP) is its automatic 400, in the JSON form too.
    let control = format!("GET /health HTTP/1.1\r\nHost: {host}\r\nX-Bad: a\x01b\r\nConnection: close\r\n\r\n");
    let (status, body) = raw(&server, control.as_bytes());
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("bad_request")), "{body}");
    let (status, body) = raw(&server, b"GARBAGE\r\n\r\n");
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("bad_request")), "{body}");

    // The server is still there, and a normal request on a fresh connection is served.
    assert_eq!(call(client().get(server.url("/health"))).0, 200);
}

/// `POST /evaluate` checks everything before it accepts: text length against one window, `ctx`
/// (range and the model's max_position_embeddings), `windows`, that the model is a model, that
/// the job exists and is done (409 while it runs). Nothing refused takes a queue slot.
#[test]
fn studio_checks_an_evaluation_before_accepting_it() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path(), "max_queued = 3");
    let scratch = tmp.path().join("scratch");
    std::fs::write(scratch.join("notes.txt"), "a text, not a model").unwrap();
    std::fs::create_dir_all(scratch.join("subdir")).unwrap();

    let evaluate = |body: Value| call(authed(client().post(server.url("/evaluate"))).json(&body));
    let text = json!({"inline": "word ".repeat(2000)});
    for (body, status, says) in [
        (json!({"model": MODEL, "text": {"inline": "too short"}}), 400, "fewer than one window"),
        (json!({"model": MODEL, "text": text, "ctx": 0}), 400, "at least 2 tokens"),
        (json!({"model": MODEL, "text": text, "ctx": 99999999999u64}), 400, "limit `ctx`"),
        (json!({"model": MODEL, "text": text, "ctx": 9000}), 400, "max_position_embeddings 8192"),
        (json!({"model": MODEL, "text": text, "windows": 100000}), 400, "limit `windows`"),
        (json!({"model": MODEL, "text": text, "windows": 0}), 400, "at least 1"),
        (json!({"model": "scratch/notes.txt", "text": text}), 400, "scratch/notes.txt: not a model"),
        (json!({"model": "scratch/subdir", "text": text}), 400, "scratch/subdir: no config.json"),
        (json!({"model": "assets/no-such.gguf", "text": text}), 404, "no such file"),
        (json!({"job": "01ARZ3NDEKTSV4RRFFQ69G5FAV", "text": text}), 404, "no job"),
        (json!({"job": "not-a-job", "text": text}), 404, "no job"),
        (json!({"model": MODEL, "job": "01ARZ3NDEKTSV4RRFFQ69G5FAV", "text": text}), 400, "exactly one"),
    ] {
        let (got, reply) = evaluate(body.clone());
        let message = reply["error"]["message"].as_str().unwrap_or_default();
        assert_eq!(got, status, "{body}: {reply}");
        assert!(message.contains(says), "{body}: {message:?} should say {says:?}");
        assert!(!message.contains(tmp.path().to_str().unwrap()), "a server path in {message:?}");
    }
    let (_, listed) = call(authed(client().get(server.url("/jobs"))));
    assert_eq!(listed["total"], 0, "nothing refused was queued: {listed}");

    // A job that is not done has no artifact yet: 409, as the README says.
    let id = submit(&server, "/compress", json!({"model": MODEL, "preset": slow_preset(8), "eval_text": "assets/eval.txt"}));
    wait(&server, &id, 300, |j| j["state"] == "running");
    let (got, reply) = evaluate(json!({"job": id, "text": text}));
    assert_eq!(got, 409, "{reply}");
    // An evaluation is accepted once it checks out.
    let (got, reply) = evaluate(json!({"model": MODEL, "text": text, "windows": 1, "ctx": 64}));
    assert_eq!(got, 202, "{reply}");
    assert_eq!(call(authed(client().delete(server.url(&format!("/jobs/{id}"))))).0, 202);
}

/// No absolute server path reaches a client: refusals name models and texts by `root/path`, a
/// finished job's record (its `protocol` too) and its artifact's manifest (`source.path`) name
/// the model as the client did, and no message cites a CLI flag or a script.
#[test]
fn studio_shows_no_server_path() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path(), "");
    let assets = std::fs::canonicalize(util_assets()).unwrap();
    let secrets = [tmp.path().to_str().unwrap().to_owned(), assets.to_str().unwrap().to_owned()];
    let clean = |what: &str, text: &str| {
        for secret in &secrets {
            assert!(!text.contains(secret.as_str()), "{what} shows the server path {secret}: {text}");
        }
        for flag in ["--eval", "--calib", "--ctx", "--text", "fetch-assets"] {
            assert!(!text.contains(flag), "{what} cites `{flag}`: {text}");
        }
    };

    std::fs::create_dir_all(tmp.path().join("scratch/m/subdir")).unwrap();
    for body in [
        json!({"model": "scratch/m/subdir", "preset": "fast"}),
        json!({"model": MODEL, "preset": "balanced"}),
        json!({"model": MODEL, "preset": "fast", "eval_text": {"inline": "short"}}),
        json!({"model": MODEL, "preset": "fast", "eval_text": "scratch/missing.txt"}),
    ] {
        let (status, reply) = call(authed(client().post(server.url("/compress"))).json(&body));
        assert!((400..500).contains(&status), "{body}: {status} {reply}");
        clean(&format!("the refusal of {body}"), &reply.to_string());
    }
    let (_, reply) = call(authed(client().post(server.url("/compress"))).json(&json!({"model": "scratch/m/subdir", "preset": "fast"})));
    assert!(reply["error"]["message"].as_str().unwrap().contains("scratch/m/subdir: no config.json"), "{reply}");

    let id = submit(&server, "/compress", json!({"model": MODEL, "preset": slow_preset(2), "eval_text": "assets/eval.txt"}));
    let job = wait(&server, &id, 600, finished);
    assert_eq!(job["state"], "done", "{job}");
    clean("the job record", &job.to_string());
    let protocol = job["result"]["protocol"].as_str().unwrap();
    assert!(protocol.starts_with("assets/eval.txt tokenized whole"), "{protocol}");

    let (tar, _) = download(&server, &id);
    let mut archive = tar::Archive::new(tar.as_slice());
    let mut manifest = String::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.path().unwrap().ends_with("manifest.json") {
            entry.read_to_string(&mut manifest).unwrap();
        }
    }
    let manifest: Value = serde_json::from_str(&manifest).unwrap();
    assert_eq!(manifest["source"]["path"], MODEL, "{}", manifest["source"]);
    clean("the served manifest", &manifest.to_string());

    let eval_id = submit(&server, "/evaluate", json!({"job": id, "text": "assets/eval.txt", "windows": 1}));
    let evaluation = wait(&server, &eval_id, 600, finished);
    assert_eq!(evaluation["state"], "done", "{evaluation}");
    clean("the evaluation record", &evaluation.to_string());
    let (_, listed) = call(authed(client().get(server.url("/jobs"))));
    clean("the job list", &listed.to_string());
}

fn util_assets() -> PathBuf {
    tenpak_testkit::repo_root().join("assets")
}

/// Checking a request costs little whatever it holds: an 11 MB inline preset with 200,000
/// overrides (TOML text or JSON object) is refused by its size at once, a preset with more
/// entries than the limits or an absurd group size or window count is refused naming the limit,
/// and no refusal is a 500.
#[test]
fn studio_bounds_what_checking_a_request_costs() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path(), "");
    let preset = |extra: &str| {
        format!("name = \"p\"\n[allocator]\nid = \"role_rules\"\n[codec]\ncodec = \"int4_residual\"\ngroup_size = 64\n{extra}")
    };
    let overrides: String = (0..200_000).map(|i| format!("[[overrides]]\npattern = \"model.layers.{i}.*\"\ncodec = \"keep\"\n")).collect();
    let huge = preset(&overrides);
    assert!(huge.len() > 10 << 20, "{} bytes", huge.len());
    let as_object: Value = {
        let list: Vec<Value> = (0..200_000).map(|i| json!({"pattern": format!("model.layers.{i}.*"), "codec": "keep"})).collect();
        json!({"name": "p", "allocator": {"id": "role_rules"}, "codec": {"codec": "int4_residual", "group_size": 64}, "overrides": list})
    };
    let few_hundred: String = (0..300).map(|i| format!("[[overrides]]\npattern = \"x{i}\"\ncodec = \"keep\"\n")).collect();
    for (preset, says) in [
        (json!({"toml": huge}), "limit `preset_bytes`"),
        (as_object, "limit `preset_bytes`"),
        (json!({"toml": preset(&few_hundred)}), "limit `overrides`"),
        (json!({"toml": preset("[roles.attention]\ngroup_size = 1000000000\n")}), "group_size = 1000000000"),
        (json!({"name": "p", "allocator": {"id": "role_rules"}, "codec": {"codec": "int4_residual", "group_size": 1e9}}), "group_size = 1000000000"),
        (json!({"toml": preset("[evaluation]\nwindows = 1000000\n")}), "limit `windows`"),
        (json!({"toml": preset("[calibration]\nctx = 99999999999\n")}), "limit `ctx`"),
    ] {
        let started = Instant::now();
        let (status, reply) = call(authed(client().post(server.url("/compress"))).json(&json!({"model": MODEL, "preset": preset})));
        let seconds = started.elapsed().as_secs_f64();
        assert_eq!(status, 400, "{reply}");
        assert!(reply["error"]["message"].as_str().unwrap().contains(says), "{reply} should say {says:?}");
        // Loose on purpose (a busy 2-core machine; sending 11 MB counts too): it was 12.7 s.
        assert!(seconds < 3.0, "refused in {seconds:.2} s: {reply}");
    }
}

/// Texts are bounded whole, inline or named: a named file over `max_text_bytes` (a model named
/// as a text, say) is refused with 413 before it is read, by its name, not its path.
#[test]
fn studio_bounds_texts_inline_and_named() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path(), "max_text_bytes = 1000");
    let inline = json!({"inline": "word ".repeat(300)});
    for (path, body) in [
        ("/compress", json!({"model": MODEL, "preset": "fast", "eval_text": inline})),
        ("/compress", json!({"model": MODEL, "preset": "fast", "eval_text": "assets/eval.txt"})),
        ("/compress", json!({"model": MODEL, "preset": "balanced", "calib_text": MODEL})),
        ("/evaluate", json!({"model": MODEL, "text": MODEL})),
    ] {
        let (status, reply) = call(authed(client().post(server.url(path))).json(&body));
        assert_eq!(status, 413, "{body}: {reply}");
        let message = reply["error"]["message"].as_str().unwrap();
        assert!(message.contains("up to 1000 bytes") && !message.contains(tmp.path().to_str().unwrap()), "{message}");
    }
}

/// A job given up after three interrupted attempts says so, and nothing in its record still
/// promises another run.
#[test]
fn studio_gives_up_a_job_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = Server::start(tmp.path(), "");
    let id = submit(&server, "/compress", json!({"model": MODEL, "preset": slow_preset(8), "eval_text": "assets/eval.txt"}));
    for attempt in 1..=3 {
        wait(&server, &id, 300, |j| j["state"] == "running" && j["attempts"] == attempt);
        server.kill_9();
        server = Server::restart(tmp.path());
    }
    let job = wait(&server, &id, 60, finished);
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(job["error"]["code"], "interrupted", "{job}");
    assert!(job["error"]["message"].as_str().unwrap().contains("interrupted 3 times"), "{job}");
    assert!(!job.to_string().contains("queued to run again"), "{job}");
}

/// A small file system mounted for one test (root only: `mount -t tmpfs`; CI runs as root, and
/// elsewhere the test fails saying so rather than passing unchecked), unmounted when dropped,
/// also when the test fails.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(dir).output().unwrap();
        assert!(
            out.status.success(),
            "a full disk is simulated with a tmpfs, and mounting one needs root: run the tests as root ({})",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Tmpfs(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fill `dir`'s file system: a file grown until the disk is full.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let block = vec![0u8; 64 << 10];
    while file.write_all(&block).is_ok() {}
    let _ = file.sync_all();
    path
}

/// A full data disk degrades the service instead of ending it (it used to exit 3 s after the
/// disk filled): a job that cannot write its artifact fails with the reason and leaves no
/// temporary; with the disk full the server stays up and refuses what needs the disk with 503
/// in the JSON form, answers what only reads, and once space is back it accepts and runs jobs.
#[test]
fn studio_survives_a_full_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let _mount = Tmpfs::mount(&data, "5m");
    let mut server = Server::start(tmp.path(), "");

    // An artifact of 70 MB does not fit in 5 MB.
    let id = submit(&server, "/compress", json!({"model": MODEL, "preset": "fast"}));
    let job = wait(&server, &id, 600, finished);
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(job["error"]["code"], "unavailable", "{job}");
    let message = job["error"]["message"].as_str().unwrap();
    assert!(message.contains("No space left on device") && !message.contains(tmp.path().to_str().unwrap()), "{message}");
    let leftovers: Vec<String> =
        std::fs::read_dir(data.join("artifacts")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(leftovers.is_empty(), "a failed job leaves nothing: {leftovers:?}");

    // Idle with the disk full: the job worker's heartbeat cannot be written; the server stays.
    let filler = fill(&data);
    std::thread::sleep(Duration::from_secs(8));
    assert!(server.child.try_wait().unwrap().is_none(), "the server exited: {}", log(tmp.path()));
    assert_eq!(call(client().get(server.url("/health"))).0, 200);
    assert_eq!(job_status(&server, &id)["state"], "failed", "reads are answered");
    // Writes: refused with 503 (the JSON form checked by `call`), never 500; a few tries, since
    // SQLite may still have room in pages it had before the disk filled.
    let mut statuses = Vec::new();
    for _ in 0..20 {
        let (status, reply) = call(authed(client().post(server.url("/evaluate"))).json(&json!({"model": MODEL, "text": {"inline": "word ".repeat(400)}, "ctx": 64, "windows": 1})));
        assert!(status == 202 || status == 503, "{status}: {reply}");
        statuses.push(status);
        if status == 503 {
            assert_eq!(reply["error"]["code"], "unavailable", "{reply}");
            break;
        }
    }
    assert_eq!(statuses.last(), Some(&503), "a full disk is refused with 503: {statuses:?}");

    // Space is back: the server accepts and runs jobs again, without a restart.
    std::fs::remove_file(filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let id = loop {
        let body = json!({"model": MODEL, "text": {"inline": "word ".repeat(400)}, "ctx": 64, "windows": 1});
        let (status, reply) = call(authed(client().post(server.url("/evaluate"))).json(&body));
        if status == 202 {
            break reply["id"].as_str().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "still refused after space came back: {status} {reply}");
        std::thread::sleep(Duration::from_secs(1));
    };
    let job = wait(&server, &id, 300, finished);
    assert_eq!(job["state"], "done", "{job}");
    assert!(server.child.try_wait().unwrap().is_none());
}

fn log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("serve.log")).unwrap_or_default()
}
