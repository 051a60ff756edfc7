//! The HTTP surface: routes, the bearer token, refusals as `{"error": {"code", "message"}}`.

use std::convert::Infallible;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use super::artifacts::write_tar;
use super::jobs::{CompressBody, EvalModel, EvaluateBody};
use super::store::{self, QUEUED, RUNNING};
use super::{ApiError, App};
use tenpak_error::{Context, Error, Kind};
use tenpak_model::{ModelConfig, TokenizerSource, tokenize};
use tenpak_pack::artifact::Manifest;
use tenpak_pack::model::{ModelSpec, is_artifact};
use tenpak_pack::plan::PackPlan;
use tenpak_pack::preset::{BUILTIN, Preset};

/// Every route, with refusals turned into JSON.
pub fn routes(app: Arc<App>) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    let with = {
        let app = app.clone();
        warp::any().map(move || app.clone())
    };
    let auth = auth(app.token.clone());
    let limit = warp::body::content_length_limit(app.max_body_bytes);

    let health = warp::path!("health").and(warp::get()).map(|| warp::reply::json(&json!({"status": "ok"})));
    let index = warp::path::end().and(warp::get()).map(|| warp::reply::html(include_str!("index.html")));
    let openapi = warp::path!("openapi.json")
        .and(warp::get())
        .and(auth.clone())
        .map(|| warp::reply::with_header(include_str!("openapi.json"), "content-type", "application/json"));
    let codecs = warp::path!("codecs").and(warp::get()).and(auth.clone()).and(with.clone()).map(|app: Arc<App>| codecs(&app));
    let presets = warp::path!("presets").and(warp::get()).and(auth.clone()).and(with.clone()).map(|app: Arc<App>| presets(&app));
    let compress = warp::path!("compress")
        .and(warp::post())
        .and(auth.clone())
        .and(limit)
        .and(warp::body::bytes())
        .and(with.clone())
        .and_then(|body: Bytes, app: Arc<App>| async move { compress(body, app).await.map_err(warp::reject::custom) });
    let evaluate = warp::path!("evaluate")
        .and(warp::post())
        .and(auth.clone())
        .and(limit)
        .and(warp::body::bytes())
        .and(with.clone())
        .and_then(|body: Bytes, app: Arc<App>| async move { evaluate(body, app).await.map_err(warp::reject::custom) });
    let status = warp::path!("status" / String)
        .and(warp::get())
        .and(auth.clone())
        .and(with.clone())
        .and_then(|id: String, app: Arc<App>| async move { status(id, app).await.map_err(warp::reject::custom) });
    let artifact = warp::path!("artifact" / String)
        .and(warp::get())
        .and(auth.clone())
        .and(with.clone())
        .and_then(|id: String, app: Arc<App>| async move { artifact(id, app).await.map_err(warp::reject::custom) });
    let jobs = warp::path!("jobs")
        .and(warp::get())
        .and(auth.clone())
        .and(warp::query::<JobsQuery>())
        .and(with.clone())
        .and_then(|q: JobsQuery, app: Arc<App>| async move { jobs(q, app).await.map_err(warp::reject::custom) });
    let cancel = warp::path!("jobs" / String)
        .and(warp::delete())
        .and(auth)
        .and(with)
        .and_then(|id: String, app: Arc<App>| async move { cancel(id, app).await.map_err(warp::reject::custom) });

    health
        .or(index)
        .or(openapi)
        .or(codecs)
        .or(presets)
        .or(compress)
        .or(evaluate)
        .or(status)
        .or(artifact)
        .or(jobs)
        .or(cancel)
        .recover(refusal)
}

/// `Authorization: Bearer <token>`, compared in constant time; no token configured: open. The
/// header is compared as bytes: a value that is not text (not UTF-8, say) is a wrong token, 401
/// like any other.
fn auth(token: Option<Arc<String>>) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::header::headers_cloned()
        .and_then(move |headers: warp::http::HeaderMap| {
            let token = token.clone();
            async move {
                let Some(token) = token else { return Ok(()) };
                let header = headers.get("authorization").map_or(&b""[..], |v| v.as_bytes());
                let given = header.strip_prefix(b"Bearer ").unwrap_or(b"");
                if bool::from(given.ct_eq(token.as_bytes())) {
                    Ok(())
                } else {
                    Err(warp::reject::custom(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "missing or wrong bearer token")))
                }
            }
        })
        .untuple_one()
}

fn accepted(body: serde_json::Value) -> warp::reply::Response {
    warp::reply::with_status(warp::reply::json(&body), StatusCode::ACCEPTED).into_response()
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_json", format!("request body: {e}")))
}

/// Refuse a new job when `max_queued` jobs are waiting or running.
async fn check_capacity(app: &App) -> Result<(), ApiError> {
    let active = app.worker.store.active().await.map_err(|e| app.refusal(e, "counting jobs"))?;
    if active >= app.max_queued as i64 {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_jobs",
            format!("{active} jobs are queued or running (at most {}); try again later", app.max_queued),
        ));
    }
    Ok(())
}

/// Run a request's checks on a blocking thread, at most one per core at a time: a burst of
/// requests that are costly to check waits here (and is refused with 429 after a while) rather
/// than taking every core from the jobs.
async fn check<T: Send + 'static>(app: &App, what: &str, work: impl FnOnce() -> Result<T, Error> + Send + 'static) -> Result<T, ApiError> {
    let busy = || ApiError::new(StatusCode::TOO_MANY_REQUESTS, "busy", "the server is checking other requests; try again in a moment");
    let permit = tokio::time::timeout(CHECK_WAIT, app.checking.clone().acquire_owned()).await.map_err(|_| busy())?.map_err(|_| busy())?;
    let checked = tokio::task::spawn_blocking(move || {
        let checked = work();
        drop(permit);
        checked
    })
    .await
    .map_err(|e| app.refusal(tenpak_error::err!("{what}: the check panicked: {e}"), what))?;
    checked.map_err(|e| app.refusal(e.or_kind(Kind::BadRequest), what))
}

/// How long a request waits for a free core to be checked on before it is refused.
const CHECK_WAIT: Duration = Duration::from_secs(10);

/// Record the job and queue its task.
async fn enqueue(app: &App, id: ulid::Ulid, kind: &str, request: String) -> Result<warp::reply::Response, ApiError> {
    let id_text = id.to_string();
    app.worker.store.insert(&id_text, kind, &request).await.map_err(|e| app.refusal(e, "recording the job"))?;
    if let Err(e) = app.queue.push(&id_text, Some(id)).await {
        let refusal = app.refusal(e, "queueing the job");
        let _ = app.worker.store.fail(&id_text, refusal.code.as_str(), &format!("could not queue the job: {}", refusal.message)).await;
        return Err(refusal);
    }
    Ok(accepted(json!({"id": id_text, "state": QUEUED, "status": format!("/status/{id_text}")})))
}

async fn compress(body: Bytes, app: Arc<App>) -> Result<warp::reply::Response, ApiError> {
    let body: CompressBody = parse(&body)?;
    check_capacity(&app).await?;
    let id = ulid::Ulid::generate();
    let requests = &app.worker.requests;
    let request = requests.pack_request(&body, requests.artifacts.work_dir(&id.to_string()))?;
    // The same checks as `tenpak pack`, before the job is accepted.
    let (registry, limits) = (app.worker.registry.clone(), requests.limits.clone());
    check(&app, "checking the request", move || PackPlan::check_within(&request, &registry, &limits)).await?;
    enqueue(&app, id, "compress", serde_json::to_string(&body).map_err(|e| app.refusal(e.into(), "recording the job"))?).await
}

/// `POST /evaluate`: everything an evaluation needs is checked before it is accepted — the model
/// or job (a finished compress job's artifact: 404 if there is none, 409 if it is not done yet),
/// the window settings within the limits and the model's context, and a text holding at least
/// one window — from the model's configuration and tokenizer, without loading its weights.
async fn evaluate(body: Bytes, app: Arc<App>) -> Result<warp::reply::Response, ApiError> {
    let body: EvaluateBody = parse(&body)?;
    check_capacity(&app).await?;
    let requests = &app.worker.requests;
    let (config, tokenizer, name) = match requests.eval_model(&body)? {
        EvalModel::Job(job) => {
            done_compress_job(&app, &job).await?;
            let read = |file: &'static str| {
                let (artifacts, job) = (requests.artifacts.clone(), job.clone());
                async move { artifacts.read(&job, file).await }
            };
            let gone = || ApiError::not_found(format!("the artifact of job `{job}` is gone from the artifact store"));
            let manifest = read("manifest.json").await.map_err(|e| app.refusal(e, "reading the artifact"))?.ok_or_else(gone)?;
            let tokenizer = read("tokenizer.json").await.map_err(|e| app.refusal(e, "reading the artifact"))?;
            let name = format!("job {job}");
            let shown = name.clone();
            let facts = check(&app, "reading the artifact", move || artifact_facts(&manifest, tokenizer.as_deref(), &shown)).await?;
            (facts.0, facts.1, name)
        }
        EvalModel::Root { name, path } => {
            let shown = name.clone();
            let facts = check(&app, "opening the model", move || model_facts(&path, &shown)).await?;
            (facts.0, facts.1, name)
        }
    };
    // The text and windows, as `tenpak eval` checks them (the model is a placeholder here: the
    // job resolves it again when it runs).
    let request = requests.eval_request(&body, ModelSpec::Named { name: name.clone(), path: Default::default() })?;
    if let Some(base) = &body.base {
        let path = requests.resolve("base", base)?;
        let shown = base.clone();
        let (base_config, _) = check(&app, "opening the base model", move || model_facts(&path, &shown)).await?;
        let same = base_config.vocab_size == config.vocab_size
            && base_config.hidden_size == config.hidden_size
            && base_config.num_hidden_layers == config.num_hidden_layers;
        if !same {
            return Err(ApiError::bad_request(format!(
                "`{}` (vocabulary {}, hidden {}, {} blocks) is not the base of {name} (vocabulary {}, hidden {}, {} blocks)",
                base.escape_debug(),
                base_config.vocab_size,
                base_config.hidden_size,
                base_config.num_hidden_layers,
                config.vocab_size,
                config.hidden_size,
                config.num_hidden_layers
            )));
        }
    }
    if let Some(spec) = requests.tasks(body.tasks.as_deref(), body.task_limit)? {
        // Every item parses, and there are not too many (the same checks the job makes).
        let limits = requests.limits.clone();
        check(&app, "reading the tasks", move || {
            let items = tenpak_pack::tasks::read_items(&spec.file, &spec.name, spec.limit)?;
            limits.check_task_items(items.len(), &spec.name)
        })
        .await?;
    }
    let limits = requests.limits.clone();
    check(&app, "checking the request", move || tenpak_pack::eval::check(&request, &config, &tokenizer, &name, &limits).map(drop)).await?;
    enqueue(&app, ulid::Ulid::generate(), "evaluate", serde_json::to_string(&body).map_err(|e| app.refusal(e.into(), "recording the job"))?).await
}

/// The configuration and tokenizer of the model or artifact directory at `path`, called `name`,
/// without reading weights (an artifact's shards are verified when the job runs).
fn model_facts(path: &std::path::Path, name: &str) -> Result<(ModelConfig, tokenize::Tokenizer), Error> {
    if is_artifact(path) {
        let manifest = std::fs::read(path.join("manifest.json")).with_context(|| format!("{name}: reading manifest.json"))?;
        let tokenizer = match std::fs::read(path.join("tokenizer.json")) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::new(e).context(format!("{name}: reading tokenizer.json"))),
        };
        return artifact_facts(&manifest, tokenizer.as_deref(), name);
    }
    let model = tenpak_model::open_named(path, std::path::Path::new(name))?;
    let tokenizer = tokenize::for_model(model.as_ref())?;
    Ok((model.config().clone(), tokenizer))
}

/// The configuration (from its manifest) and tokenizer of an artifact called `name`.
fn artifact_facts(manifest: &[u8], tokenizer: Option<&[u8]>, name: &str) -> Result<(ModelConfig, tokenize::Tokenizer), Error> {
    let manifest: Manifest = serde_json::from_slice(manifest).with_context(|| format!("{name}: manifest.json is not a TenPak manifest"))?;
    let source = match tokenizer {
        Some(bytes) => TokenizerSource::Json(String::from_utf8_lossy(bytes).into_owned()),
        None => TokenizerSource::Missing,
    };
    let tokenizer = tokenize::load(&source, name)?;
    Ok((manifest.model_config, tokenizer))
}

async fn status(id: String, app: Arc<App>) -> Result<warp::reply::Response, ApiError> {
    match app.worker.store.get(&id).await.map_err(|e| app.refusal(e, "reading the job"))? {
        Some(job) => Ok(warp::reply::json(&job).into_response()),
        None => Err(ApiError::not_found(format!("no job `{id}`"))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobsQuery {
    state: Option<String>,
    limit: Option<i64>,
    offset: Option<i64>,
}

async fn jobs(query: JobsQuery, app: Arc<App>) -> Result<warp::reply::Response, ApiError> {
    let states = [store::QUEUED, store::RUNNING, store::DONE, store::FAILED, store::CANCELLED];
    if let Some(state) = &query.state
        && !states.contains(&state.as_str())
    {
        return Err(ApiError::bad_request(format!("`state` must be one of {}", states.join(", "))));
    }
    let limit = query.limit.unwrap_or(20);
    let offset = query.offset.unwrap_or(0);
    if !(1..=100).contains(&limit) || offset < 0 {
        return Err(ApiError::bad_request("`limit` must be 1..=100 and `offset` at least 0"));
    }
    let (jobs, total) = app.worker.store.list(query.state.as_deref(), limit, offset).await.map_err(|e| app.refusal(e, "listing jobs"))?;
    Ok(warp::reply::json(&json!({"jobs": jobs, "total": total, "limit": limit, "offset": offset})).into_response())
}

async fn cancel(id: String, app: Arc<App>) -> Result<warp::reply::Response, ApiError> {
    match app.worker.store.cancel(&id).await.map_err(|e| app.refusal(e, "cancelling the job"))?.as_deref() {
        None => Err(ApiError::not_found(format!("no job `{id}`"))),
        Some(QUEUED) => Ok(warp::reply::json(&json!({"id": id, "state": store::CANCELLED})).into_response()),
        Some(RUNNING) => Ok(accepted(json!({"id": id, "state": RUNNING, "cancel_requested": true}))),
        Some(state) => Err(ApiError::new(StatusCode::CONFLICT, "conflict", format!("job `{id}` is already {state}"))),
    }
}

/// A `Write` that hands 64 KiB chunks to the response body; a client that went away ends the
/// writing with a broken pipe.
struct ChunkWriter {
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

impl ChunkWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(1 << 16)));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client gone"))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= 1 << 16 {
            self.send()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

/// The record of compress job `id` if it is done (so it has an artifact): 404 for no such job or
/// an evaluation, 409 for a compress job in any other state.
async fn done_compress_job(app: &App, id: &str) -> Result<store::JobRecord, ApiError> {
    let Some(job) = app.worker.store.get(id).await.map_err(|e| app.refusal(e, "reading the job"))? else {
        return Err(ApiError::not_found(format!("no job `{id}`")));
    };
    if job.kind != "compress" {
        return Err(ApiError::not_found(format!("job `{id}` is an evaluation; it has no artifact")));
    }
    if job.state != store::DONE || job.result.is_none() {
        let why = if matches!(job.state.as_str(), store::QUEUED | store::RUNNING) { "it has no artifact yet" } else { "it has no artifact" };
        return Err(ApiError::new(StatusCode::CONFLICT, "conflict", format!("job `{id}` is {}, not done: {why}", job.state)));
    }
    Ok(job)
}

async fn artifact(id: String, app: Arc<App>) -> Result<warp::reply::Response, ApiError> {
    let job = done_compress_job(&app, &id).await?;
    let result = job.result.expect("checked: a done compress job has its result");
    let artifacts = app.worker.requests.artifacts.clone();
    let Some(entries) = artifacts.entries(&id).await.map_err(|e| app.refusal(e, "listing the artifact"))? else {
        return Err(ApiError::not_found(format!("the artifact of job `{id}` is gone from the artifact store")));
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let name = id.clone();
    tokio::task::spawn_blocking(move || {
        let mut writer = ChunkWriter { tx: tx.clone(), buf: Vec::with_capacity(1 << 16) };
        let open = |file: &str| artifacts.reader(&name, file).map_err(|e| std::io::Error::other(e.into_std()));
        if let Err(e) = write_tar(&name, &entries, open, &mut writer).and_then(|()| writer.flush()) {
            let _ = tx.blocking_send(Err(e));
        }
    });
    let mut response = warp::reply::stream(tokio_stream::wrappers::ReceiverStream::new(rx)).into_response();
    let headers = response.headers_mut();
    headers.insert("content-type", "application/x-tar".parse().expect("static"));
    let disposition = format!("attachment; filename=\"{id}.tenpak.tar\"");
    headers.insert("content-disposition", disposition.parse().map_err(|e| app.refusal(tenpak_error::err!("{e}"), "naming the tar"))?);
    if let Some(bytes) = result["artifact"]["tar_bytes"].as_u64() {
        headers.insert("content-length", bytes.into());
    }
    if let Some(sha) = result["artifact"]["tar_sha256"].as_str() {
        headers.insert("x-tenpak-sha256", sha.parse().map_err(|e| app.refusal(tenpak_error::err!("{e}"), "the tar digest"))?);
    }
    Ok(response)
}

fn codecs(app: &App) -> warp::reply::Json {
    let registry = &app.worker.registry;
    let codecs: Vec<_> = registry
        .codecs()
        .map(|(id, source, codec)| {
            let params: Vec<_> = codec.params().iter().map(|p| json!({"name": p.name, "default": p.default, "doc": p.doc})).collect();
            json!({"id": id, "source": source.to_string(), "description": codec.description(), "params": params})
        })
        .collect();
    let calibrators: Vec<_> = registry.calibrators().map(|(id, source)| json!({"id": id, "source": source.to_string()})).collect();
    let allocators: Vec<_> = registry
        .allocators()
        .map(|(id, source, a)| json!({"id": id, "source": source.to_string(), "description": a.description()}))
        .collect();
    warp::reply::json(&json!({"codecs": codecs, "calibrators": calibrators, "allocators": allocators}))
}

fn presets(app: &App) -> warp::reply::Json {
    let presets: Vec<_> = BUILTIN
        .iter()
        .map(|(name, text)| {
            let preset = Preset::parse(text, name).expect("built-in presets parse (tested)");
            let runnable = preset.validate(&app.worker.registry).map_err(|e| format!("{e:#}"));
            json!({"name": name, "description": preset.description, "runnable": runnable.is_ok(), "why_not": runnable.err(), "toml": text})
        })
        .collect();
    warp::reply::json(&json!({"presets": presets}))
}

/// Every refusal as `{"error": {"code", "message"}}` with its status. No response carries a
/// Rust debug rendering: a rejection this server does not know is logged and answered in
/// general terms.
async fn refusal(rejection: Rejection) -> Result<warp::reply::Response, Infallible> {
    let error = if let Some(e) = rejection.find::<ApiError>() {
        e.clone()
    } else if rejection.is_not_found() {
        ApiError::not_found("no such route (see /openapi.json)")
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        ApiError::too_large("the request body is larger than this server's max_body_bytes")
    } else if rejection.find::<warp::reject::LengthRequired>().is_some() {
        ApiError::new(StatusCode::LENGTH_REQUIRED, "length_required", "send a Content-Length")
    } else if rejection.find::<warp::reject::InvalidQuery>().is_some() {
        ApiError::bad_request("the query string is not valid for this route (see /openapi.json)")
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this route")
    } else if let Some(e) = rejection.find::<warp::reject::InvalidHeader>() {
        ApiError::bad_request(format!("header `{}` is not valid", e.name()))
    } else if let Some(e) = rejection.find::<warp::reject::MissingHeader>() {
        ApiError::bad_request(format!("header `{}` is missing", e.name()))
    } else if rejection.find::<warp::reject::UnsupportedMediaType>().is_some() {
        ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", "send application/json")
    } else {
        eprintln!("studio: unhandled rejection: {rejection:?}");
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", "the request could not be read (the server's log has the details)")
    };
    let body = warp::reply::json(&json!({"error": {"code": error.code, "message": error.message}}));
    Ok(warp::reply::with_status(body, error.status).into_response())
}

impl ApiError {
    /// The refusal for a host error, by its kind.
    pub fn from_host(e: Error) -> Self {
        let kind = e.kind();
        let status = StatusCode::from_u16(kind.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Self { status, code: kind.code().to_owned(), message: e.to_string() }
    }
}

impl App {
    /// The refusal for a failure while serving a request (`what` it was doing, for the log): its
    /// status by its kind (internal unless someone said otherwise: 503 when a resource is out,
    /// 500 for a bug), and a message that shows none of the server's own files.
    pub fn refusal(&self, e: Error, what: &str) -> ApiError {
        let e = e.or_kind(Kind::Internal);
        let kind = e.kind();
        let status = StatusCode::from_u16(kind.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        ApiError { status, code: kind.code().to_owned(), message: self.worker.requests.for_client(&e, what) }
    }
}
