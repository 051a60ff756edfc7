//! What a job is and how one runs: request bodies turned into the same [`PackRequest`] /
//! [`EvalRequest`] the CLI builds (names resolved under the roots, never a path from the
//! client), and the worker that runs them under a [`PackObserver`] whose progress goes to the job
//! record and whose cancellation comes from it.

use std::path::PathBuf;
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
use tenpak_pack::eval::{self, EvalRequest, PplOptions};
use tenpak_pack::observe::{PackObserver, Update};
use tenpak_pack::plan::{PackPlan, PackRequest, PresetSpec};
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
}

fn default_ctx() -> usize {
    eval::DEFAULT_CTX
}

/// What a request may name and how big inline texts may be.
#[derive(Clone)]
pub struct Limits {
    /// Model and text roots.
    pub roots: Roots,
    /// Largest inline text.
    pub max_text_bytes: u64,
    /// Where artifacts are kept.
    pub artifacts: Arc<ArtifactStore>,
}

impl Limits {
    fn text(&self, field: &str, value: &Value) -> Result<TextSpec, ApiError> {
        match value {
            Value::String(name) => Ok(TextSpec::File(self.resolve(field, name)?)),
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

    fn resolve(&self, field: &str, name: &str) -> Result<PathBuf, ApiError> {
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
                let text = toml::to_string(&body.preset)
                    .map_err(|e| ApiError::bad_request(format!("`preset` is not a preset: {e}")))?;
                PresetSpec::Inline { origin: "`preset` of the request".into(), text }
            }
            _ => return Err(ApiError::bad_request("`preset` must be a built-in name, {\"toml\": \"...\"} or a preset object")),
        };
        Ok(PackRequest {
            model: self.resolve("model", &body.model)?.into(),
            preset,
            output,
            force: true,
            calib: body.calib_text.as_ref().map(|v| self.text("calib_text", v)).transpose()?,
            eval: body.eval_text.as_ref().map(|v| self.text("eval_text", v)).transpose()?,
            target_bpw: body.target_bpw,
        })
    }

    /// The evaluation request of an evaluate body; `artifact` gives a local directory holding
    /// job `id`'s artifact, `None` if there is none.
    pub fn eval_request(
        &self,
        body: &EvaluateBody,
        artifact: impl FnOnce(&str) -> tenpak_error::Result<Option<PathBuf>>,
    ) -> Result<EvalRequest, ApiError> {
        let model = match (&body.model, &body.job) {
            (Some(name), None) => self.resolve("model", name)?,
            (None, Some(job)) => {
                let missing = || ApiError::not_found(format!("no finished compress job `{job}`"));
                if ulid::Ulid::from_string(job).is_err() {
                    return Err(missing());
                }
                artifact(job).map_err(ApiError::internal)?.ok_or_else(missing)?
            }
            _ => return Err(ApiError::bad_request("give exactly one of `model` and `job`")),
        };
        if body.windows == Some(0) {
            return Err(ApiError::bad_request("`windows` must be at least 1"));
        }
        Ok(EvalRequest { model, text: self.text("text", &body.text)?, options: PplOptions { ctx: body.ctx, samples: body.windows, batch: 1 }, protocol: Default::default() })
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
    pub limits: Limits,
    /// Codecs and friends, plugins included.
    pub registry: Arc<Registry>,
}

impl Worker {
    /// Run job `id` if it is still queued; record its outcome. An `Err` is a failure of the job
    /// database, which apalis retries; a failed pack is recorded and is not an `Err`.
    pub async fn run(self: Arc<Self>, id: String) -> tenpak_error::Result<()> {
        let me = self.name.as_str();
        // A job running elsewhere is handed over only once that worker's heartbeat is stale:
        // apalis re-delivers a task when the worker stops beating, which can be a little sooner.
        let mut waited = 0.0;
        let attempt = loop {
            match self.store.start(&id, me).await? {
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
            self.store.finish(&id, me, Err(("interrupted".into(), message))).await?;
            return Ok(());
        }
        let (kind, request) = self.store.request(&id).await?.context("the job record vanished")?;
        let observer = Arc::new(JobObserver::default());
        let job = {
            let (worker, observer, id) = (self.clone(), observer.clone(), id.clone());
            tokio::task::spawn_blocking(move || worker.execute(&id, &kind, &request, observer.as_ref()))
        };
        // Mirror progress into the record, beat, and bring cancellation back, until the job ends.
        let mut job = std::pin::pin!(job);
        let mut last: Option<Update> = None;
        let outcome = loop {
            tokio::select! {
                outcome = &mut job => break outcome,
                _ = tokio::time::sleep(Duration::from_millis(300)) => {}
            }
            let latest = observer.latest.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let fresh = latest.filter(|u| last.as_ref() != Some(u));
            let update = fresh.as_ref().map(|u| (u.stage.name(), u.detail.as_str(), u.fraction()));
            // A failed write is logged and tried again at the next beat: the job goes on.
            match self.store.beat(&id, me, update).await {
                Ok(cancel) => {
                    if cancel {
                        observer.cancel.store(true, Ordering::SeqCst);
                    }
                    if fresh.is_some() {
                        last = fresh;
                    }
                }
                Err(e) => eprintln!("studio: job {id}: recording progress: {e:#}"),
            }
        };
        let outcome = match outcome {
            Ok(Ok(mut result)) => {
                let warnings = observer.warnings.lock().unwrap_or_else(|e| e.into_inner()).clone();
                result["warnings"] = json!(warnings);
                Ok(result)
            }
            Ok(Err(e)) => Err((e.kind().code().to_owned(), e.to_string())),
            Err(panic) => Err(("internal".to_owned(), format!("the job panicked: {panic}"))),
        };
        self.store.finish(&id, me, outcome).await
    }

    /// Run a job on this (blocking) thread.
    fn execute(&self, id: &str, kind: &str, request: &str, observer: &dyn PackObserver) -> Result<Value, Error> {
        let bad = |e: serde_json::Error| Kind::Internal.tag(tenpak_error::err!("stored request of job {id}: {e}"));
        let refused = |e: ApiError| e.kind().tag(tenpak_error::err!("{}", e.message));
        match kind {
            "compress" => {
                let body: CompressBody = serde_json::from_str(request).map_err(bad)?;
                let output = self.limits.artifacts.work_dir(id);
                let request = self.limits.pack_request(&body, output.clone()).map_err(refused)?;
                let plan = PackPlan::build(&request, &self.registry)?;
                let manifest = tenpak_pack::pack::run(&plan, &self.registry, observer)?;
                let (tar_bytes, tar_sha256) = tar_digest(&output, id).map_err(|e| Kind::Internal.tag(e))?;
                let runtime = tokio::runtime::Handle::current();
                runtime.block_on(self.limits.artifacts.publish(id)).map_err(|e| Kind::Internal.tag(e))?;
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
                    "artifact": {"tar_bytes": tar_bytes, "tar_sha256": tar_sha256},
                }))
            }
            "evaluate" => {
                let body: EvaluateBody = serde_json::from_str(request).map_err(bad)?;
                let artifacts = &self.limits.artifacts;
                let runtime = tokio::runtime::Handle::current();
                let request = self.limits.eval_request(&body, |job| runtime.block_on(artifacts.local_copy(job))).map_err(refused)?;
                let report = eval::run(&request, &self.registry, observer)?;
                Ok(json!({
                    "model": body.model,
                    "job": body.job,
                    "ppl": report.ppl,
                    "mean_nll": report.mean_nll,
                    "tokens_scored": report.tokens_scored,
                    "windows": report.windows,
                    "ctx": report.ctx,
                    "seconds": report.seconds,
                    "protocol": report.protocol,
                }))
            }
            other => Err(Kind::Internal.tag(tenpak_error::err!("job {id}: unknown kind `{other}`"))),
        }
    }
}
