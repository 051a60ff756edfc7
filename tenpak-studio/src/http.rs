//! The HTTP surface: routes, the bearer token, refusals as `{"error": {"code", "message"}}`.

use std::convert::Infallible;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use super::artifacts::write_tar;
use super::jobs::{CompressBody, EvaluateBody};
use super::store::{self, QUEUED, RUNNING};
use super::{ApiError, App};
use tenpak_error::{Error, Kind};
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

/// `Authorization: Bearer <token>`, compared in constant time; no token configured: open.
fn auth(token: Option<Arc<String>>) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::header::optional::<String>("authorization")
        .and_then(move |header: Option<String>| {
            let token = token.clone();
            async move {
                let Some(token) = token else { return Ok(()) };
                let given = header.as_deref().and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("");
                if bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
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
    let active = app.worker.store.active().await.map_err(ApiError::internal)?;
    if active >= app.max_queued as i64 {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_jobs",
            format!("{active} jobs are queued or running (at most {}); try again later", app.max_queued),
        ));
    }
    Ok(())
}

/// Record the job and queue its task.
async fn enqueue(app: &App, id: ulid::Ulid, kind: &str, request: String) -> Result<warp::reply::Response, ApiError> {
    let id_text = id.to_string();
    app.worker.store.insert(&id_text, kind, &request).await.map_err(ApiError::internal)?;
    if let Err(e) = app.queue.push(&id_text, Some(id)).await {
        let message = format!("could not queue the job: {e:#}");
        let _ = app.worker.store.fail(&id_text, "internal", &message).await;
        return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message));
    }
    Ok(accepted(json!({"id": id_text, "state": QUEUED, "status": format!("/status/{id_text}")})))
}

async fn compress(body: Bytes, app: Arc<App>) -> Result<warp::reply::Response, ApiError> {
    let body: CompressBody = parse(&body)?;
    check_capacity(&app).await?;
    let id = ulid::Ulid::generate();
    let request = app.worker.limits.pack_request(&body, app.worker.limits.artifacts.work_dir(&id.to_string()))?;
    // The same checks as `tenpak pack`, before the job is accepted.
    let registry = app.worker.registry.clone();
    let checked = tokio::task::spawn_blocking(move || PackPlan::build(&request, &registry).map(drop))
        .await
        .map_err(|e| ApiError::internal(tenpak_error::err!("validating the request: {e}")))?;
    checked.map_err(ApiError::from_host)?;
    enqueue(&app, id, "compress", serde_json::to_string(&body).map_err(|e| ApiError::internal(e.into()))?).await
}

async fn evaluate(body: Bytes, app: Arc<App>) -> Result<warp::reply::Response, ApiError> {
    let body: EvaluateBody = parse(&body)?;
    check_capacity(&app).await?;
    // Whether the job's artifact is there; it is fetched (from S3, say) when the job runs.
    let there = match &body.job {
        Some(job) if ulid::Ulid::from_string(job).is_ok() => app.worker.limits.artifacts.entries(job).await.map_err(ApiError::internal)?.is_some(),
        _ => false,
    };
    app.worker.limits.eval_request(&body, |_| Ok(there.then(PathBuf::new)))?;
    enqueue(&app, ulid::Ulid::generate(), "evaluate", serde_json::to_string(&body).map_err(|e| ApiError::internal(e.into()))?).await
}

async fn status(id: String, app: Arc<App>) -> Result<warp::reply::Response, ApiError> {
    match app.worker.store.get(&id).await.map_err(ApiError::internal)? {
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
    let (jobs, total) = app.worker.store.list(query.state.as_deref(), limit, offset).await.map_err(ApiError::internal)?;
    Ok(warp::reply::json(&json!({"jobs": jobs, "total": total, "limit": limit, "offset": offset})).into_response())
}

async fn cancel(id: String, app: Arc<App>) -> Result<warp::reply::Response, ApiError> {
    match app.worker.store.cancel(&id).await.map_err(ApiError::internal)?.as_deref() {
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

async fn artifact(id: String, app: Arc<App>) -> Result<warp::reply::Response, ApiError> {
    let Some(job) = app.worker.store.get(&id).await.map_err(ApiError::internal)? else {
        return Err(ApiError::not_found(format!("no job `{id}`")));
    };
    if job.kind != "compress" {
        return Err(ApiError::not_found(format!("job `{id}` is an evaluation; it has no artifact")));
    }
    let Some(result) = job.result.filter(|_| job.state == store::DONE) else {
        return Err(ApiError::new(StatusCode::CONFLICT, "conflict", format!("job `{id}` is {}, not done", job.state)));
    };
    let artifacts = app.worker.limits.artifacts.clone();
    let Some(entries) = artifacts.entries(&id).await.map_err(ApiError::internal)? else {
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
    headers.insert("content-disposition", disposition.parse().map_err(|e| ApiError::internal(tenpak_error::err!("{e}")))?);
    if let Some(bytes) = result["artifact"]["tar_bytes"].as_u64() {
        headers.insert("content-length", bytes.into());
    }
    if let Some(sha) = result["artifact"]["tar_sha256"].as_str() {
        headers.insert("x-tenpak-sha256", sha.parse().map_err(|e| ApiError::internal(tenpak_error::err!("{e}")))?);
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

/// Every refusal as `{"error": {"code", "message"}}` with its status.
async fn refusal(rejection: Rejection) -> Result<warp::reply::Response, Infallible> {
    let error = if let Some(e) = rejection.find::<ApiError>() {
        e.clone()
    } else if rejection.is_not_found() {
        ApiError::not_found("no such route (see /openapi.json)")
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        ApiError::too_large("the request body is larger than this server's max_body_bytes")
    } else if rejection.find::<warp::reject::LengthRequired>().is_some() {
        ApiError::new(StatusCode::LENGTH_REQUIRED, "length_required", "send a Content-Length")
    } else if let Some(e) = rejection.find::<warp::reject::InvalidQuery>() {
        ApiError::bad_request(format!("query string: {e}"))
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this route")
    } else {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("{rejection:?}"))
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

    /// 500, for a failure of the server rather than of the request.
    pub fn internal(e: tenpak_error::Error) -> Self {
        Self::from_host(e.or_kind(Kind::Internal))
    }
}
