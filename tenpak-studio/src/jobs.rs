//! What a job is and how one runs: request bodies turned into the same [`PackRequest`] /
//! [`EvalRequest`] the CLI builds (names resolved under the roots, never a path from the
//! client), and the worker that runs them under a [`PackObserver`] whose progress goes to the job
//! record and whose cancellation comes from it.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tenpak_error::Context;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tenpak_api::registry::Registry;

use super::ApiError;
use super::artifacts::{ArtifactStore, tar_digest};
use super::roots::Roots;
use super::store::{STALE_SECONDS, Start, Store};
use tenpak_error::{Error, Kind};
use tenpak_pack::eval::{self, BaseSpec, CompareRequest, EvalRequest, PplOptions};
use tenpak_pack::limits::Limits as PackLimits;
use tenpak_pack::model::ModelSpec;
use tenpak_pack::observe::{PackObserver, Update};
use tenpak_pack::plan::{PackPlan, PackRequest, PresetSpec, TaskSpec};
use tenpak_pack::text::TextSpec;

/// Attempts before a job interrupted by server stops is given up.
pub const MAX_ATTEMPTS: i64 = 3;

/// The apalis task: only the job id; the request lives in the job record.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobTask {
    /// The job id.
    pub id: String,
}

/// `POST /compress`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompressBody {
    /// `root/path` of the model under a model root.
    pub model: String,
    /// A built-in preset name, `{"toml": "..."}`, or a preset as a JSON object.
    #[serde(default = "default_preset")]
    pub preset: Value,
    /// Calibration text: `root/path`, or `{"inline": "..."}`.
    #[serde(default)]
    pub calib_text: Option<Value>,
    /// Evaluation text (baseline and compressed PPL in the manifest): `root/path` or inline.
    #[serde(default)]
    pub eval_text: Option<Value>,
    /// Bits per weight on the block linears, overriding a `bit_budget` preset's target.
    #[serde(default)]
    pub target_bpw: Option<f64>,
    /// `root/path` of multiple-choice items (JSONL): the source's and the artifact's accuracies
    /// go into the manifest and the result beside the perplexities (needs `eval_text`).
    #[serde(default)]
    pub tasks: Option<String>,
    /// With `tasks`: only the first this-many items of each task.
    #[serde(default)]
    pub task_limit: Option<usize>,
}

fn default_preset() -> Value {
    Value::String("balanced".into())
}

/// `POST /evaluate`: a model under a root or a finished compress job's artifact, on a text.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluateBody {
    /// `root/path` of a model.
    #[serde(default)]
    pub model: Option<String>,
    /// Id of a finished compress job, whose artifact is scored.
    #[serde(default)]
    pub job: Option<String>,
    /// The text: `root/path` or `{"inline": "..."}`.
    pub text: Value,
    /// Score only the first this-many windows.
    #[serde(default)]
    pub windows: Option<usize>,
    /// Window length in tokens.
    #[serde(default = "default_ctx")]
    pub ctx: usize,
    /// `root/path` of a base model to compare with: the result then holds both perplexities and
    /// the KL divergence, same-top-token rate, Δp and PPL ratio on the same tokens.
    #[serde(default)]
    pub base: Option<String>,
    /// `root/path` of multiple-choice items (JSONL): the result adds each task's accuracy (and
    /// the base's, with `base`).
    #[serde(default)]
    pub tasks: Option<String>,
    /// With `tasks`: only the first this-many items of each task.
    #[serde(default)]
    pub task_limit: Option<usize>,
}

fn default_ctx() -> usize {
    eval::DEFAULT_CTX
}

/// How a request body becomes a job: the roots its names resolve under (shown to clients by
/// those names, never by the server's paths), the sizes and counts it may ask for, and where
/// artifacts are kept.
#[derive(Clone)]
pub struct Requests {
    /// Model and text roots.
    pub roots: Roots,
    /// Largest text, inline or a named file.
    pub max_text_bytes: u64,
    /// What one request may ask for (preset size and entries, group sizes, windows, ctx).
    pub limits: PackLimits,
    /// Where artifacts are kept.
    pub artifacts: Arc<ArtifactStore>,
    /// The server's data directory (the job database, artifacts, staging): never shown.
    pub data_dir: PathBuf,
}

/// Which model an evaluation scores.
pub enum EvalModel {
    /// `root/path` of a model or an artifact directory: its name and where it is.
    Root {
        /// The name the client gave.
        name: String,
        /// Where it is.
        path: PathBuf,
    },
    /// The artifact of compress job `id`.
    Job(String),
}

impl Requests {
    fn text(&self, field: &str, value: &Value) -> Result<TextSpec, ApiError> {
        match value {
            Value::String(name) => {
                let path = self.resolve(field, name)?;
                // Checking reads the text whole: a named file is held to the inline bound too (a
                // model file named as a text is refused here, not read into memory).
                let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                if bytes > self.max_text_bytes {
                    return Err(ApiError::too_large(format!(
                        "`{field}` ({name}) is {bytes} bytes; this server takes texts up to {} bytes",
                        self.max_text_bytes
                    )));
                }
                Ok(TextSpec::Named { name: name.clone(), path })
            }
            Value::Object(map) if map.len() == 1 && map.contains_key("inline") => {
                let Some(text) = map["inline"].as_str() else {
                    return Err(ApiError::bad_request(format!("`{field}.inline` must be a string")));
                };
                if text.len() as u64 > self.max_text_bytes {
                    return Err(ApiError::too_large(format!(
                        "`{field}.inline` is {} bytes; this server takes inline texts up to {} bytes",
                        text.len(),
                        self.max_text_bytes
                    )));
                }
                Ok(TextSpec::Inline { name: format!("{field} (inline)"), text: text.to_owned() })
            }
            _ => Err(ApiError::bad_request(format!("`{field}` must be a name `root/path` or {{\"inline\": \"...\"}}"))),
        }
    }

    pub fn resolve(&self, field: &str, name: &str) -> Result<PathBuf, ApiError> {
        self.roots.resolve(name).map_err(|e| ApiError::from_host(e.context(format!("`{field}`")).or_kind(Kind::BadRequest)))
    }

    /// The pack request of a compress body, writing to `output`.
    pub fn pack_request(&self, body: &CompressBody, output: PathBuf) -> Result<PackRequest, ApiError> {
        let preset = match &body.preset {
            Value::String(name) => PresetSpec::Builtin(name.clone()),
            Value::Object(map) if map.len() == 1 && map.contains_key("toml") => match map["toml"].as_str() {
                Some(text) => PresetSpec::Inline { origin: "`preset.toml` of the request".into(), text: text.to_owned() },
                None => return Err(ApiError::bad_request("`preset.toml` must be a string")),
            },
            Value::Object(_) => {
                // Bounded before it is converted: the TOML text is checked again when parsed.
                let json = serde_json::to_vec(&body.preset).map_err(|e| ApiError::bad_request(format!("`preset`: {e}")))?;
                if json.len() > self.limits.preset_bytes {
                    return Err(ApiError::bad_request(format!(
                        "`preset` is {} bytes of JSON; at most {} bytes are accepted (limit `preset_bytes`)",
                        json.len(),
                        self.limits.preset_bytes
                    )));
                }
                let text = toml::to_string(&body.preset)
                    .map_err(|e| ApiError::bad_request(format!("`preset` is not a preset: {e}")))?;
                PresetSpec::Inline { origin: "`preset` of the request".into(), text }
            }
            _ => return Err(ApiError::bad_request("`preset` must be a built-in name, {\"toml\": \"...\"} or a preset object")),
        };
        Ok(PackRequest {
            model: ModelSpec::Named { name: body.model.clone(), path: self.resolve("model", &body.model)? },
            preset,
            output,
            force: true,
            calib: body.calib_text.as_ref().map(|v| self.text("calib_text", v)).transpose()?,
            eval: body.eval_text.as_ref().map(|v| self.text("eval_text", v)).transpose()?,
            target_bpw: body.target_bpw,
            tasks: self.tasks(body.tasks.as_deref(), body.task_limit)?,
        })
    }

    /// The task file a body names (resolved under the roots, held to the text size bound).
    pub fn tasks(&self, name: Option<&str>, limit: Option<usize>) -> Result<Option<TaskSpec>, ApiError> {
        let Some(name) = name else {
            if limit.is_some() {
                return Err(ApiError::bad_request("`task_limit` without `tasks`"));
            }
            return Ok(None);
        };
        let file = self.resolve("tasks", name)?;
        let bytes = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        if bytes > self.max_text_bytes {
            return Err(ApiError::too_large(format!("`tasks` ({name}) is {bytes} bytes; this server takes texts up to {} bytes", self.max_text_bytes)));
        }
        Ok(Some(TaskSpec { file, name: name.to_owned(), limit }))
    }

    /// Which model an evaluate body names: exactly one of `model` (resolved under the roots) and
    /// `job` (a job id; whether it has an artifact is the caller's to check).
    pub fn eval_model(&self, body: &EvaluateBody) -> Result<EvalModel, ApiError> {
        match (&body.model, &body.job) {
            (Some(name), None) => Ok(EvalModel::Root { name: name.clone(), path: self.resolve("model", name)? }),
            (None, Some(job)) if ulid::Ulid::from_string(job).is_ok() => Ok(EvalModel::Job(job.clone())),
            (None, Some(job)) => Err(ApiError::not_found(format!("no job `{}`", job.escape_debug()))),
            _ => Err(ApiError::bad_request("give exactly one of `model` and `job`")),
        }
    }

    /// The evaluation request of an evaluate body, scoring `model`.
    pub fn eval_request(&self, body: &EvaluateBody, model: ModelSpec) -> Result<EvalRequest, ApiError> {
        if body.windows == Some(0) {
            return Err(ApiError::bad_request("`windows` must be at least 1"));
        }
        Ok(EvalRequest {
            model,
            text: self.text("text", &body.text)?,
            options: PplOptions { ctx: body.ctx, samples: body.windows, batch: 1 },
            protocol: Default::default(),
        })
    }

    /// What a client is told about a failure: the error's message, except that a resource fault
    /// is said in general terms (its root cause, which names no file), and a message that
    /// would show one of the server's own directories (a bug: names should have been given
    /// relative to their root) is withheld and written to the server's log instead.
    pub fn for_client(&self, error: &Error, what: &str) -> String {
        if error.kind() == Kind::Unavailable {
            let cause = error.chain().pop().unwrap_or_default();
            eprintln!("studio: {what}: {error}");
            return format!(
                "the server could not write or reach what this needs ({cause}); nothing half-written is kept, and the same \
                 request can be sent again once the operator has fixed it"
            );
        }
        let message = error.to_string();
        if self.shows_server_paths(&message) {
            eprintln!("studio: {what}: {message}");
            return format!("{}: the reason names the server's own files; it is in the server's log", error.kind().code());
        }
        message
    }

    /// Whether `text` holds one of the server's own directories (its data directory, a root's
    /// real path, a local artifact store's directories or the measurement cache).
    pub fn shows_server_paths(&self, text: &str) -> bool {
        let shown = |dir: &Path| dir.to_str().is_some_and(|d| !d.is_empty() && text.contains(d));
        shown(&self.data_dir)
            || self.roots.real_dirs().any(shown)
            || self.artifacts.local_dirs().into_iter().any(shown)
            || tenpak_pack::allocate::cache_dir().is_some_and(|dir| shown(&dir))
    }
}

/// A job's observer: the latest update and a cancellation flag, shared between the blocking
/// thread that runs the job and the task that mirrors it into the job record.
#[derive(Default)]
pub struct JobObserver {
    latest: Mutex<Option<Update>>,
    warnings: Mutex<Vec<String>>,
    cancel: AtomicBool,
}

impl PackObserver for JobObserver {
    fn update(&self, update: &Update) {
        *self.latest.lock().unwrap_or_else(|e| e.into_inner()) = Some(update.clone());
    }
    fn warning(&self, message: &str) {
        self.warnings.lock().unwrap_or_else(|e| e.into_inner()).push(message.to_owned());
    }
    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }
}

/// Everything a worker needs.
pub struct Worker {
    /// This process's worker name (also its apalis worker name).
    pub name: String,
    /// Job records.
    pub store: Store,
    /// Names, limits, artifact paths.
    pub requests: Requests,
    /// Codecs and friends, plugins included.
    pub registry: Arc<Registry>,
    /// The jobs this process runs now. Jobs run in tasks of their own (they outlive an apalis
    /// worker stopped by a database fault), so a task delivered again for one of them, by the
    /// worker started next or after beats that could not be written, must leave it alone.
    pub running: Mutex<std::collections::HashSet<String>>,
    /// `workers` permits: jobs run at once in this process, whichever apalis worker delivered
    /// them (one started again after a fault finds the old one's jobs still running).
    pub slots: tokio::sync::Semaphore,
}

/// A job id in [`Worker::running`] for as long as this lives.
struct RunningHere<'a> {
    running: &'a Mutex<std::collections::HashSet<String>>,
    id: String,
}

impl<'a> RunningHere<'a> {
    /// `None` when the job already runs in this process.
    fn enter(running: &'a Mutex<std::collections::HashSet<String>>, id: &str) -> Option<Self> {
        let fresh = running.lock().unwrap_or_else(|e| e.into_inner()).insert(id.to_owned());
        fresh.then(|| RunningHere { running, id: id.to_owned() })
    }
}

impl Drop for RunningHere<'_> {
    fn drop(&mut self) {
        self.running.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.id);
    }
}

/// How long a worker waits before it tries an unavailable database again: doubling from one
/// second up to this.
const RETRY_MAX: Duration = Duration::from_secs(8);

/// Run `op` until it does not fail for want of a resource ([`Kind::Unavailable`]: a full disk,
/// a database that does not answer), waiting between tries; any other error is returned. A
/// worker that cannot record what happened waits for the database rather than dropping the
/// record: a job never stays "running" because a write failed once.
pub async fn patiently<T, F, Fut>(what: &str, mut op: F) -> tenpak_error::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = tenpak_error::Result<T>>,
{
    let mut wait = Duration::from_secs(1);
    let mut logged = false;
    loop {
        match op().await {
            Err(e) if e.kind() == Kind::Unavailable => {
                if !logged {
                    eprintln!("studio: {what}: {e}; trying again until it answers");
                    logged = true;
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(RETRY_MAX);
            }
            done => {
                if logged && done.is_ok() {
                    eprintln!("studio: {what}: done");
                }
                return done;
            }
        }
    }
}

impl Worker {
    /// Run job `id` if it is still queued; record its outcome. A database that cannot be written
    /// for now is waited for ([`patiently`]); an `Err` is any other failure of the job database,
    /// which apalis retries. A failed job is recorded and is not an `Err`.
    pub async fn run(self: Arc<Self>, id: String) -> tenpak_error::Result<()> {
        let me = self.name.as_str();
        let Some(_here) = RunningHere::enter(&self.running, &id) else { return Ok(()) };
        let _slot = self.slots.acquire().await.expect("the semaphore is never closed");
        // A job running elsewhere is handed over only once that worker's heartbeat is stale:
        // apalis re-delivers a task when the worker stops beating, which can be a little sooner.
        let mut waited = 0.0;
        let attempt = loop {
            match patiently(&format!("job {id}: starting"), || self.store.start(&id, me)).await? {
                Start::Started(attempt) => break attempt,
                Start::Skip => return Ok(()),
                Start::Busy if waited > 2.0 * STALE_SECONDS => return Ok(()), // alive: not ours
                Start::Busy => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    waited += 1.0;
                }
            }
        };
        if attempt > MAX_ATTEMPTS {
            let message = format!("interrupted {} times by server stops; not tried again", attempt - 1);
            let outcome = Err(("interrupted".to_owned(), message));
            return patiently(&format!("job {id}: recording its end"), || self.store.finish(&id, me, outcome.clone())).await;
        }
        let (kind, request) =
            patiently(&format!("job {id}: reading its request"), || self.store.request(&id)).await?.context("the job record vanished")?;
        let observer = Arc::new(JobObserver::default());
        let job = {
            let (worker, observer, id) = (self.clone(), observer.clone(), id.clone());
            tokio::task::spawn_blocking(move || worker.execute(&id, &kind, &request, observer.as_ref()))
        };
        // Mirror progress into the record, beat, and bring cancellation back, until the job ends.
        let mut job = std::pin::pin!(job);
        let mut last: Option<Update> = None;
        let mut failing = false;
        let outcome = loop {
            tokio::select! {
                outcome = &mut job => break outcome,
                _ = tokio::time::sleep(Duration::from_millis(300)) => {}
            }
            let latest = observer.latest.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let fresh = latest.filter(|u| last.as_ref() != Some(u));
            let update = fresh.as_ref().map(|u| (u.stage.name(), u.detail.as_str(), u.fraction()));
            // A failed write is logged (once per run of failures) and tried again at the next
            // beat: the job goes on.
            match self.store.beat(&id, me, update).await {
                Ok(None) => {
                    // Not ours any more: another worker took it over while this one could not
                    // beat (the database was out of reach for longer than the stale limit).
                    // Stop here; the record is the other worker's to write.
                    if !observer.cancel.swap(true, Ordering::SeqCst) {
                        eprintln!("studio: job {id}: taken over by another worker; stopping this run");
                    }
                }
                Ok(Some(cancel)) => {
                    if cancel {
                        observer.cancel.store(true, Ordering::SeqCst);
                    }
                    if fresh.is_some() {
                        last = fresh;
                    }
                    failing = false;
                }
                Err(e) if !failing => {
                    eprintln!("studio: job {id}: recording progress: {e}");
                    failing = true;
                }
                Err(_) => {}
            }
        };
        let outcome = match outcome {
            Ok(Ok(mut result)) => {
                let warnings = observer.warnings.lock().unwrap_or_else(|e| e.into_inner()).clone();
                result["warnings"] = json!(warnings);
                Ok(result)
            }
            Ok(Err(e)) => Err((e.kind().code().to_owned(), self.requests.for_client(&e, &format!("job {id}")))),
            Err(panic) => Err(("internal".to_owned(), format!("the job panicked: {panic}"))),
        };
        patiently(&format!("job {id}: recording its end"), || self.store.finish(&id, me, outcome.clone())).await
    }

    /// Run a job on this (blocking) thread.
    fn execute(&self, id: &str, kind: &str, request: &str, observer: &dyn PackObserver) -> Result<Value, Error> {
        let bad = |e: serde_json::Error| Kind::Internal.tag(tenpak_error::err!("stored request of job {id}: {e}"));
        let refused = |e: ApiError| e.kind().tag(tenpak_error::err!("{}", e.message));
        let runtime = tokio::runtime::Handle::current();
        let artifacts = &self.requests.artifacts;
        match kind {
            "compress" => {
                let body: CompressBody = serde_json::from_str(request).map_err(bad)?;
                let output = artifacts.work_dir(id);
                let request = self.requests.pack_request(&body, output.clone()).map_err(refused)?;
                let plan = PackPlan::build_within(&request, &self.registry, &self.requests.limits)?;
                let manifest = tenpak_pack::pack::run(&plan, &self.registry, observer)?;
                // The pack is in place (in the store, or staged for it): from here a failure
                // removes it, so a failed job leaves no artifact behind.
                let published = tar_digest(&output, id)
                    .map_err(|e| tenpak_error::Error::new(e).context("measuring the artifact's tar").or_kind(Kind::Internal))
                    .and_then(|digest| runtime.block_on(artifacts.publish(id)).map(|()| digest).map_err(|e| e.or_kind(Kind::Internal)));
                let (tar_bytes, tar_sha256) = match published {
                    Ok(digest) => digest,
                    Err(e) => {
                        runtime.block_on(artifacts.discard(id));
                        return Err(e);
                    }
                };
                let t = &manifest.totals;
                Ok(json!({
                    "model": body.model,
                    "preset": manifest.preset.name,
                    "bits_per_weight": t.bits_per_weight,
                    "linear_bits_per_weight": t.linear_bits_per_weight,
                    "stored_bytes": t.stored_bytes,
                    "ratio_vs_fp16": t.ratio_vs_fp16,
                    "ratio_vs_source": t.ratio_vs_source,
                    "baseline_ppl": manifest.evaluation.as_ref().map(|e| e.baseline_ppl),
                    "compressed_ppl": manifest.evaluation.as_ref().map(|e| e.compressed_ppl),
                    "delta_pct": manifest.evaluation.as_ref().map(|e| e.delta_pct),
                    "protocol": manifest.evaluation.as_ref().map(|e| e.protocol.clone()),
                    "divergence": manifest.evaluation.as_ref().and_then(|e| e.divergence.clone()),
                    "tasks": manifest.evaluation.as_ref().map(|e| e.tasks.clone()).unwrap_or_default(),
                    "baseline_tasks": manifest.evaluation.as_ref().map(|e| e.baseline_tasks.clone()).unwrap_or_default(),
                    "artifact": {"tar_bytes": tar_bytes, "tar_sha256": tar_sha256},
                }))
            }
            "evaluate" => {
                let body: EvaluateBody = serde_json::from_str(request).map_err(bad)?;
                let model = match self.requests.eval_model(&body).map_err(refused)? {
                    EvalModel::Root { name, path } => ModelSpec::Named { name, path },
                    EvalModel::Job(job) => {
                        let dir = runtime.block_on(artifacts.local_copy(&job))?;
                        let dir = dir.ok_or_else(|| Kind::NotFound.error(format!("the artifact of job `{job}` is gone from the artifact store")))?;
                        ModelSpec::Named { name: format!("job {job}"), path: dir }
                    }
                };
                let request = self.requests.eval_request(&body, model).map_err(refused)?;
                let tasks = self.requests.tasks(body.tasks.as_deref(), body.task_limit).map_err(refused)?;
                let items = match &tasks {
                    Some(spec) => {
                        let items = tenpak_pack::tasks::read_items(&spec.file, &spec.name, spec.limit)?;
                        self.requests.limits.check_task_items(items.len(), &spec.name)?;
                        Some(items)
                    }
                    None => None,
                };
                let base_model = match &body.base {
                    Some(base) => Some(ModelSpec::Named { name: base.clone(), path: self.requests.resolve("base", base).map_err(refused)? }),
                    None => None,
                };
                let candidate_model = request.model.clone();
                let (report, record) = match &base_model {
                    Some(base) => {
                        let base = base.clone();
                        let compare = CompareRequest {
                            candidate: request.model,
                            base: BaseSpec::Model(base),
                            text: request.text,
                            options: request.options,
                            protocol: request.protocol,
                        };
                        let (record, report) = eval::compare(&compare, &self.registry, observer, &self.requests.limits)?;
                        (report, Some(record))
                    }
                    None => (eval::run_within(&request, &self.registry, observer, &self.requests.limits)?, None),
                };
                let mut result = json!({
                    "model": body.model,
                    "job": body.job,
                    "ppl": report.ppl,
                    "mean_nll": report.mean_nll,
                    "tokens_scored": report.tokens_scored,
                    "windows": report.windows,
                    "ctx": report.ctx,
                    "seconds": report.seconds,
                    "protocol": report.protocol,
                });
                if let Some(record) = record {
                    // With a base: both perplexities and the divergence, and the record's protocol
                    // (which names the base).
                    result["base"] = json!(body.base);
                    result["baseline_ppl"] = json!(record.baseline_ppl);
                    result["delta_pct"] = json!(record.delta_pct);
                    result["divergence"] = json!(record.divergence);
                    result["protocol"] = json!(record.protocol);
                }
                if let Some(items) = &items {
                    let score = |model: &ModelSpec| -> tenpak_error::Result<Vec<tenpak_pack::tasks::TaskScore>> {
                        let check = &mut |_, _| if observer.cancelled() { Err(Kind::Cancelled.error("cancelled")) } else { Ok(()) };
                        Ok(tenpak_pack::tasks::run(model, &self.registry, items, check)?.scores)
                    };
                    result["tasks"] = json!(score(&candidate_model)?);
                    if let Some(base) = &base_model {
                        result["baseline_tasks"] = json!(score(base)?);
                    }
                }
                Ok(result)
            }
            other => Err(Kind::Internal.tag(tenpak_error::err!("job {id}: unknown kind `{other}`"))),
        }
    }
}
