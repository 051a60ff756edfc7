//! TenPak Studio: `tenpak serve`, the HTTP job service.
//!
//! A client posts a compress or evaluate request; it is checked by the same code as the CLI
//! ([`tenpak_pack::plan::PackPlan::build`]) before it is accepted, recorded in the job table
//! ([`store`]) and queued on [apalis](https://docs.rs/apalis) with its embedded SQLite storage, in
//! one database file under `data_dir`. A worker runs it on a blocking thread under a
//! [`tenpak_pack::observe::PackObserver`] whose progress goes into the job record and whose
//! cancellation comes from it; artifacts are written by the temp-directory-then-rename path
//! and kept in an [`artifacts::ArtifactStore`] (`data_dir/artifacts` by default, or an S3
//! bucket), from which they are served as deterministic tars.
//!
//! A `kill -9` loses nothing: queued jobs are in the database; a job that was running is run
//! again (on SQLite when the server restarts; on PostgreSQL by another server once the dead one's
//! heartbeat is stale), and given up, with the reason, after [`jobs::MAX_ATTEMPTS`] interrupted
//! attempts; its half-written artifact was only ever a temporary directory.

pub mod artifacts;
pub mod config;
mod http;
pub mod jobs;
pub mod roots;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tenpak_error::{Context, Result, bail};
use apalis::prelude::{BackendExt, BoxDynError, Data, TaskBuilder, TaskId, TaskSink, WorkerBuilder, WorkerBuilderExt};
use apalis_postgres::{PgPool, PostgresStorage};
use apalis_sqlite::{SqliteConnectOptions, SqlitePoolOptions, SqliteStorage};
use tenpak_api::registry::Registry;
use warp::http::StatusCode;

use tenpak_error::Kind;
use artifacts::ArtifactStore;
use config::StudioConfig;
use jobs::{JobTask, Limits, MAX_ATTEMPTS, Worker};
use roots::Roots;
use store::Store;

/// The apalis queue name.
const QUEUE: &str = "tenpak-jobs";

/// How long a stopping server waits for running jobs before it leaves them to be run again.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// apalis worker heartbeat; a worker silent for three is taken for gone.
const HEARTBEAT: Duration = Duration::from_secs(2);

/// A refusal: status, stable code, message.
#[derive(Clone, Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: String,
    /// For people.
    pub message: String,
}

impl warp::reject::Reject for ApiError {}

impl ApiError {
    /// A refusal.
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self { status, code: code.to_owned(), message: message.into() }
    }
    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, Kind::BadRequest.code(), message)
    }
    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, Kind::NotFound.code(), message)
    }
    /// 413.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
    }
    /// The host error kind closest to this refusal.
    pub fn kind(&self) -> Kind {
        match self.status.as_u16() {
            404 => Kind::NotFound,
            422 => Kind::Unsupported,
            400..=499 => Kind::BadRequest,
            _ => Kind::Internal,
        }
    }
}

/// The apalis queue, on the database the configuration names.
#[derive(Clone)]
enum Queue {
    Sqlite(SqliteStorage<JobTask>),
    Postgres(PostgresStorage<JobTask>),
}

/// A task as apalis stores it, with its ULID.
impl Queue {
    /// Queue a task for job `id` (the task id is the job id when given, else a fresh one).
    async fn push(&self, id: &str, task_id: Option<ulid::Ulid>) -> Result<()> {
        let job = JobTask { id: id.to_owned() };
        let result = match self.clone() {
            Queue::Sqlite(mut queue) => {
                let mut task = TaskBuilder::new(job).max_attempts(MAX_ATTEMPTS as usize);
                if let Some(t) = task_id {
                    task = task.task_id(TaskId::from_ulid(t));
                }
                queue.push_task(task.build()).await.map_err(|e| tenpak_error::err!("{e}"))
            }
            Queue::Postgres(mut queue) => {
                let mut task = TaskBuilder::new(job).max_attempts(MAX_ATTEMPTS as usize);
                if let Some(t) = task_id {
                    task = task.task_id(TaskId::from_ulid(t));
                }
                queue.push_task(task.build()).await.map_err(|e| tenpak_error::err!("{e}"))
            }
        };
        result.with_context(|| format!("queueing job {id}"))
    }
}

/// What the routes share.
pub struct App {
    worker: Arc<Worker>,
    queue: Queue,
    token: Option<Arc<String>>,
    max_body_bytes: u64,
    max_queued: usize,
}

async fn run_job(task: JobTask, worker: Data<Arc<Worker>>) -> Result<(), BoxDynError> {
    let worker: Arc<Worker> = (*worker).clone();
    worker.run(task.id).await.map_err(|e| -> BoxDynError { format!("{e:#}").into() })
}

/// Start the service and block until SIGINT or SIGTERM. `ready` is called with the bound address
/// once the server accepts connections (the CLI prints it).
pub fn run(config: StudioConfig, registry: Registry, ready: impl FnOnce(SocketAddr)) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = runtime.block_on(serve(config, Arc::new(registry), ready));
    // A job still running on a blocking thread is abandoned (it is re-run at the next start).
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

async fn serve(config: StudioConfig, registry: Arc<Registry>, ready: impl FnOnce(SocketAddr)) -> Result<()> {
    let token = config.token()?.map(Arc::new);
    let roots = Roots::new(&config.model_roots)?;
    std::fs::create_dir_all(&config.data_dir).with_context(|| format!("creating {}", config.data_dir.display()))?;
    let data_dir = config.data_dir.canonicalize()?;
    let artifacts = Arc::new(ArtifactStore::open(&config.artifacts, &data_dir).await?);
    for dir in artifacts.local_dirs() {
        tenpak_pack::artifact::remove_stale_temporaries(dir, None)?;
    }


    // One process name: apalis re-queues the tasks of a worker that stopped sending heartbeats
    // and refuses a new worker under a name seen alive a moment ago; the job table records which
    // worker runs a job under the same name.
    let name = format!("tenpak-{}-{}", std::process::id(), ulid::Ulid::generate());
    sqlx::any::install_default_drivers();
    let (url, postgres) = match config.database_url.clone() {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => (url, true),
        Some(url) if url.starts_with("sqlite:") => (url, false),
        Some(url) => bail!("database_url `{url}`: expected postgres://… or sqlite:…"),
        None => (format!("sqlite://{}?mode=rwc", data_dir.join("studio.db").display()), false),
    };
    let shown = url.split('@').next_back().unwrap_or(&url).to_owned(); // no password in errors
    let queue = if postgres {
        let pool = PgPool::connect(&url).await.with_context(|| format!("database {shown}"))?;
        PostgresStorage::setup(&pool).await.map_err(|e| tenpak_error::err!("setting up the job queue in {shown}: {e}"))?;
        // missed_heartbeats is set explicitly: apalis-postgres defaults to 10, not its documented 2.
        let config = apalis_postgres::Config::default().queue(QUEUE).batch_size(1).heartbeat_interval(HEARTBEAT).missed_heartbeats(3);
        Queue::Postgres(PostgresStorage::new(&pool).with_config(config))
    } else {
        let options: SqliteConnectOptions = url.parse().with_context(|| format!("database_url {shown}"))?;
        let pool = SqlitePoolOptions::new().max_connections(4).connect_with(options.create_if_missing(true)).await.with_context(|| format!("database {shown}"))?;
        SqliteStorage::setup(&pool).await.map_err(|e| tenpak_error::err!("setting up the job queue in {shown}: {e}"))?;
        let config = apalis_sqlite::Config::default().queue(QUEUE).batch_size(1).heartbeat_interval(HEARTBEAT).missed_heartbeats(3);
        Queue::Sqlite(SqliteStorage::new(&pool).with_config(config))
    };
    let records = sqlx::any::AnyPoolOptions::new().max_connections(4).connect(&url).await.with_context(|| format!("database {shown}"))?;
    let store = Store::open(records).await?;

    // SQLite has one server: jobs it left running were interrupted; queue them again at once
    // with a fresh task (a stale task of the same job finds it no longer queued and does
    // nothing), or give up after too many tries. Several PostgreSQL servers may be alive: there,
    // apalis hands a dead worker's tasks on and the job table's heartbeat decides.
    if !postgres {
        for (id, attempts) in store.requeue_interrupted().await? {
            if attempts >= MAX_ATTEMPTS {
                store.fail(&id, "interrupted", &format!("interrupted {attempts} times by server stops; not tried again")).await?;
                continue;
            }
            queue.push(&id, None).await?;
        }
    }

    let worker = Arc::new(Worker {
        name: name.clone(),
        store,
        limits: Limits { roots, max_text_bytes: config.max_text_bytes, artifacts },
        registry,
    });
    let app = Arc::new(App {
        worker: worker.clone(),
        queue: queue.clone(),
        token,
        max_body_bytes: config.max_body_bytes,
        max_queued: config.max_queued,
    });

    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            shutdown.cancel();
        }
    });

    let listener = tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("listening on {}", config.listen))?;
    let address = listener.local_addr()?;
    let server = warp::serve(http::routes(app)).incoming(listener).graceful({
        let shutdown = shutdown.clone();
        async move { shutdown.cancelled().await }
    });
    let server = tokio::spawn(server.run());
    ready(address);

    let stop = {
        let shutdown = shutdown.clone();
        async move {
            shutdown.cancelled().await;
            Ok::<(), std::io::Error>(())
        }
    };
    let poll = Duration::from_millis(250);
    let jobs = async {
        match queue {
            Queue::Sqlite(queue) => {
                let jobs = WorkerBuilder::new(name).backend(queue.poll_with_interval(poll)).data(worker).concurrency(config.workers).build(run_job);
                jobs.run_until(stop).await
            }
            Queue::Postgres(queue) => {
                let jobs = WorkerBuilder::new(name).backend(queue.poll_with_interval(poll)).data(worker).concurrency(config.workers).build(run_job);
                jobs.run_until(stop).await
            }
        }
    };
    // On SIGINT/SIGTERM the worker takes no new task and waits for those in flight; a pack can
    // take minutes, so after a short grace the server stops anyway and the job, still marked
    // running, is run again (restart on SQLite, another server on PostgreSQL).
    let worked = tokio::select! {
        worked = jobs => worked,
        _ = async { shutdown.cancelled().await; tokio::time::sleep(SHUTDOWN_GRACE).await } => Ok(()),
    };
    shutdown.cancel();
    server.await?;
    worked.map_err(|e| tenpak_error::err!("job worker: {e}"))
}
