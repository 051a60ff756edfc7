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
//!
//! A fault of a resource degrades the service instead of ending it: with the disk full, the
//! database read-only or out of reach, or the object store down, the requests that need it are
//! refused with 503, a running job that cannot write fails with the reason (its temporaries
//! removed), the job queue's worker is started again until the database answers, and
//! everything works again once the operator has fixed the fault.

pub mod artifacts;
pub mod config;
mod http;
pub mod jobs;
mod listen;
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
use jobs::{JobTask, MAX_ATTEMPTS, Requests, Worker};
use roots::Roots;
use store::Store;

/// The apalis queue name.
const QUEUE: &str = "tenpak-jobs";

/// How long a stopping server waits for running jobs before it leaves them to be run again.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// apalis worker heartbeat; a worker silent for three is taken for gone.
const HEARTBEAT: Duration = Duration::from_secs(2);

/// How long a pooled SQLite connection is kept. SQLite opens a database it may not write (made
/// read-only, or immutable, for a while) read-only without saying so, and such a connection
/// stays read-only after the file is writable again: retiring connections after this long
/// makes the service write again within about this long once the operator has fixed the file.
const SQLITE_CONNECTION_LIFETIME: Duration = Duration::from_secs(10);

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
            503 => Kind::Unavailable,
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
                queue.push_task(task.build()).await.map_err(queue_error)
            }
            Queue::Postgres(mut queue) => {
                let mut task = TaskBuilder::new(job).max_attempts(MAX_ATTEMPTS as usize);
                if let Some(t) = task_id {
                    task = task.task_id(TaskId::from_ulid(t));
                }
                queue.push_task(task.build()).await.map_err(queue_error)
            }
        };
        result.with_context(|| format!("queueing job {id}"))
    }
}

/// A failure to queue a task: the queue lives in the job database, so (as for the job table) a
/// database that cannot be written now is "unavailable", not a bug.
fn queue_error(e: impl std::fmt::Display) -> tenpak_error::Error {
    Kind::Unavailable.error(format!("the job queue: {e}"))
}

/// A pool's `after_release` hook for SQLite: a connection goes back to the pool only outside any
/// transaction. A write that fails for want of space can leave SQLite inside a transaction that
/// holds the database's write lock (a COMMIT that meets a full disk stays open), and a
/// connection left so, idle in the pool, would keep every other writer out long after the disk
/// has room again. `BEGIN` tells (it fails inside a transaction); such a connection is rolled
/// back, or closed if even that fails; one sqlx itself still counts as in a transaction is
/// closed.
macro_rules! no_open_transaction {
    () => {
        |conn, _meta| {
            Box::pin(async move {
                if sqlx::Connection::is_in_transaction(&*conn) {
                    return Ok(false);
                }
                match sqlx::query("BEGIN").execute(&mut *conn).await {
                    Ok(_) => Ok(sqlx::query("COMMIT").execute(&mut *conn).await.is_ok()),
                    Err(_) => Ok(sqlx::query("ROLLBACK").execute(&mut *conn).await.is_ok()),
                }
            })
        }
    };
}

/// What the routes share.
pub struct App {
    worker: Arc<Worker>,
    queue: Queue,
    token: Option<Arc<String>>,
    max_body_bytes: u64,
    max_queued: usize,
    /// One permit per core: requests checked at once.
    checking: Arc<tokio::sync::Semaphore>,
}

/// apalis's handler. The job runs in a task of its own, so that if apalis drops this future (its
/// worker stopped on a database fault and is started again) the job goes on and records its own
/// end; a task delivered again meanwhile finds the job running here and leaves it alone.
async fn run_job(task: JobTask, worker: Data<Arc<Worker>>) -> Result<(), BoxDynError> {
    let worker: Arc<Worker> = (*worker).clone();
    let ran = tokio::spawn(worker.run(task.id)).await.map_err(|e| -> BoxDynError { format!("the job task failed: {e}").into() })?;
    ran.map_err(|e| -> BoxDynError { format!("{e:#}").into() })
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
    let database_file = data_dir.join("studio.db");
    let (url, postgres) = match config.database_url.clone() {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => (url, true),
        Some(url) if url.starts_with("sqlite:") => (url, false),
        Some(url) => bail!("database_url `{url}`: expected postgres://… or sqlite:…"),
        None => (format!("sqlite://{}?mode=rwc", database_file.display()), false),
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
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .max_lifetime(SQLITE_CONNECTION_LIFETIME)
            .after_release(no_open_transaction!())
            .connect_with(options.create_if_missing(true))
            .await
            .with_context(|| format!("database {shown}"))?;
        SqliteStorage::setup(&pool).await.map_err(|e| tenpak_error::err!("setting up the job queue in {shown}: {e}"))?;
        let config = apalis_sqlite::Config::default().queue(QUEUE).batch_size(1).heartbeat_interval(HEARTBEAT).missed_heartbeats(3);
        Queue::Sqlite(SqliteStorage::new(&pool).with_config(config))
    };
    let mut records = sqlx::any::AnyPoolOptions::new().max_connections(4);
    if !postgres {
        records = records.max_lifetime(SQLITE_CONNECTION_LIFETIME).after_release(no_open_transaction!());
    }
    let records = records.connect(&url).await.with_context(|| format!("database {shown}"))?;
    let store = Store::open(records, postgres).await?;

    // SQLite has one server: jobs it left running were interrupted; queue them again at once
    // with a fresh task (a stale task of the same job finds it no longer queued and does
    // nothing), or give up after too many tries. Several PostgreSQL servers may be alive: there,
    // apalis hands a dead worker's tasks on and the job table's heartbeat decides.
    if !postgres {
        for id in store.requeue_interrupted(MAX_ATTEMPTS).await? {
            queue.push(&id, None).await?;
        }
    }

    let shutdown = tokio_util::sync::CancellationToken::new();
    if config.database_url.is_none() {
        tokio::spawn(keep_database_file(database_file, shutdown.clone()));
    }

    let worker = Arc::new(Worker {
        name: name.clone(),
        store,
        requests: Requests { roots, max_text_bytes: config.max_text_bytes, limits: config.limits.clone(), artifacts, data_dir: data_dir.clone() },
        registry,
        running: Default::default(),
        slots: tokio::sync::Semaphore::new(config.workers.max(1)),
    });
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let app = Arc::new(App {
        worker: worker.clone(),
        queue: queue.clone(),
        token,
        max_body_bytes: config.max_body_bytes,
        max_queued: config.max_queued,
        checking: Arc::new(tokio::sync::Semaphore::new(cores)),
    });

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
    let server = tokio::spawn(listen::serve(listener, http::routes(app), config.max_header_bytes, shutdown.clone()));
    ready(address);

    // On SIGINT/SIGTERM the worker takes no new task and waits for those in flight; a pack can
    // take minutes, so after a short grace the server stops anyway and the job, still marked
    // running, is run again (restart on SQLite, another server on PostgreSQL).
    tokio::select! {
        () = work(queue, &name, worker, config.workers, shutdown.clone()) => {}
        _ = async { shutdown.cancelled().await; tokio::time::sleep(SHUTDOWN_GRACE).await } => {}
    };
    shutdown.cancel();
    server.await?;
    Ok(())
}

/// Run the apalis worker until `shutdown`, starting it again whenever it stops on a fault of
/// the job database (a full disk, a database file made read-only, PostgreSQL restarting): apalis
/// ends a worker whose heartbeat cannot be written, and the server must outlive that. Each
/// start registers under a fresh apalis name (apalis refuses a name it saw alive a moment ago);
/// the job table keeps the server's one name, so a job running meanwhile stays this server's.
async fn work(queue: Queue, name: &str, worker: Arc<Worker>, workers: usize, shutdown: tokio_util::sync::CancellationToken) {
    let poll = Duration::from_millis(250);
    let mut wait = Duration::from_secs(1);
    for start in 1u64.. {
        let stop = {
            let shutdown = shutdown.clone();
            async move {
                shutdown.cancelled().await;
                Ok::<(), std::io::Error>(())
            }
        };
        let apalis_name = if start == 1 { name.to_owned() } else { format!("{name}-{start}") };
        let started = std::time::Instant::now();
        let ended = match queue.clone() {
            Queue::Sqlite(queue) => {
                let jobs = WorkerBuilder::new(apalis_name).backend(queue.poll_with_interval(poll)).data(worker.clone()).concurrency(workers).build(run_job);
                jobs.run_until(stop).await
            }
            Queue::Postgres(queue) => {
                let jobs = WorkerBuilder::new(apalis_name).backend(queue.poll_with_interval(poll)).data(worker.clone()).concurrency(workers).build(run_job);
                jobs.run_until(stop).await
            }
        };
        if shutdown.is_cancelled() {
            return;
        }
        match ended {
            Ok(()) => eprintln!("studio: the job worker stopped; starting it again"),
            Err(e) => eprintln!("studio: the job worker stopped ({e}); starting it again in {} s", wait.as_secs()),
        }
        // A worker that ran a while had recovered: start the next one soon again.
        if started.elapsed() > Duration::from_secs(60) {
            wait = Duration::from_secs(1);
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return,
        }
        wait = (wait * 2).min(Duration::from_secs(16));
    }
}

/// Put the SQLite database file back if it is removed while the server runs.
///
/// The server's connections hold the file open, so a removed `studio.db` goes on working for
/// them, unseen, until a connection is opened anew: that one would create an empty database
/// beside them, and at the next start every job record would be gone. A second name for the
/// same file (a hard link, `.studio.db.keep`, made at start) keeps it reachable; when
/// `studio.db` is gone, it is linked back from there, with every write made meanwhile. (SQLite
/// never removes or renames the main database file itself; its `-wal` and `-shm` files come and
/// go with the connections, so they are not linked.)
async fn keep_database_file(database: std::path::PathBuf, shutdown: tokio_util::sync::CancellationToken) {
    let keep = database.with_file_name(".studio.db.keep");
    let _ = std::fs::remove_file(&keep);
    if let Err(e) = std::fs::hard_link(&database, &keep) {
        eprintln!("studio: cannot keep a second name for the job database ({e}); a removed database file will not be put back");
        return;
    }
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.cancelled() => break,
        }
        if database.symlink_metadata().is_err() && keep.is_file() {
            match std::fs::hard_link(&keep, &database) {
                Ok(()) => eprintln!("studio: the job database file was removed while the server ran; it is back, with every record"),
                Err(e) => eprintln!("studio: the job database file was removed while the server ran, and cannot be put back: {e}"),
            }
        }
    }
    let _ = std::fs::remove_file(&keep);
}
