//! The job records (`studio_jobs`), in the same database as apalis's queue (SQLite or
//! PostgreSQL, one SQL text for both through sqlx's `Any` driver): what a client asked for, where
//! the job is, and what came out. apalis decides *when* a job runs; this table says *what
//! happened*, and survives restarts with the queue.
//!
//! A running job belongs to one worker (a server process), which refreshes the row's `heartbeat`
//! a few times a second. apalis hands the task of a worker that stopped sending its own
//! heartbeats to another worker; that worker takes the job over only once the row's heartbeat is
//! [`STALE_SECONDS`] old, so a job never runs in two places at once. Heartbeats are stamped and
//! compared on the *database's* clock, never a server's: two servers whose clocks disagree by
//! more than those ten seconds would otherwise each see the other's job as abandoned.

use std::time::{SystemTime, UNIX_EPOCH};

use tenpak_error::{Kind, Result};
use serde::Serialize;
use sqlx::{AnyPool, Row};

/// A database failure as a TenPak error: [`Kind::Unavailable`] when the database cannot be
/// written or reached for now (SQLite's disk full, read-only or I/O errors; PostgreSQL's
/// connection, resource and shutdown errors; a pool that timed out), so a request meets 503 and a
/// worker waits and tries again; [`Kind::Internal`] otherwise (a bug in a query).
pub fn db_error(error: sqlx::Error) -> tenpak_error::Error {
    let unavailable = match &error {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) => true,
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed | sqlx::Error::BeginFailed => true,
        sqlx::Error::Database(e) => e.code().is_some_and(|code| unavailable_code(&code)),
        _ => false,
    };
    let kind = if unavailable { Kind::Unavailable } else { Kind::Internal };
    kind.tag(tenpak_error::Error::new(error).context("the job database"))
}

/// Whether a database error code says "not now" rather than "wrong": a PostgreSQL SQLSTATE
/// (always five characters: connection exceptions 08…, insufficient resources 53…, operator
/// intervention 57P0…, system errors 58…, read-only transaction 25006) or an SQLite extended
/// result code (at most four digits; the primary code is its low byte: BUSY 5, LOCKED 6, READONLY 8, IOERR 10, CORRUPT 11, FULL 13,
/// CANTOPEN 14, NOTADB 26).
fn unavailable_code(code: &str) -> bool {
    if code.len() == 5 {
        return ["08", "53", "57P0", "58", "25006"].iter().any(|prefix| code.starts_with(prefix));
    }
    code.parse::<i64>().is_ok_and(|c| matches!(c & 0xff, 5 | 6 | 8 | 10 | 11 | 13 | 14 | 26))
}

/// `.db()?`: a query's error as [`db_error`] classifies it.
trait Db<T> {
    fn db(self) -> Result<T>;
}

impl<T> Db<T> for std::result::Result<T, sqlx::Error> {
    fn db(self) -> Result<T> {
        self.map_err(db_error)
    }
}

/// A job's state.
pub const QUEUED: &str = "queued";
/// Running in some worker.
pub const RUNNING: &str = "running";
/// Finished; `result` holds the figures.
pub const DONE: &str = "done";
/// Failed; `error` says why.
pub const FAILED: &str = "failed";
/// Cancelled before or while running.
pub const CANCELLED: &str = "cancelled";

/// A running job whose heartbeat is this old belongs to a worker that is gone.
pub const STALE_SECONDS: f64 = 10.0;

/// Seconds since the epoch, on this server's clock (the times a job record shows).
///
/// `TENPAK_STUDIO_CLOCK_SKEW` (seconds, may be negative) shifts this clock: the fault bench
/// (`scripts/studio-faults.py`) sets it to run two servers whose clocks disagree, without
/// faketime. Nothing else should.
pub fn now() -> f64 {
    static SKEW: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    let skew = *SKEW.get_or_init(|| std::env::var("TENPAK_STUDIO_CLOCK_SKEW").ok().and_then(|v| v.parse().ok()).unwrap_or(0.0));
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()) + skew
}

/// The database's clock in seconds since the epoch, as SQL (one clock for every server).
const SQLITE_NOW: &str = "((julianday('now') - 2440587.5) * 86400.0)";
const POSTGRES_NOW: &str = "CAST(EXTRACT(EPOCH FROM CLOCK_TIMESTAMP()) AS DOUBLE PRECISION)";

/// One job, as `/status/{id}` and `/jobs` show it.
#[derive(Clone, Debug, Serialize)]
pub struct JobRecord {
    /// The job id (a ULID).
    pub id: String,
    /// `compress` or `evaluate`.
    pub kind: String,
    /// queued, running, done, failed, cancelled.
    pub state: String,
    /// The pipeline stage last reported.
    pub stage: Option<String>,
    /// What the stage is doing.
    pub detail: Option<String>,
    /// 0..1.
    pub progress: f64,
    /// Submission time (Unix seconds).
    pub created: f64,
    /// Start of the last attempt.
    pub started: Option<f64>,
    /// End.
    pub finished: Option<f64>,
    /// Attempts started (more than one after a restart).
    pub attempts: i64,
    /// Whether a cancellation was asked for.
    pub cancel_requested: bool,
    /// The server process (worker) that ran it last.
    pub worker: Option<String>,
    /// `{code, message}` when failed or cancelled.
    pub error: Option<serde_json::Value>,
    /// The figures, when done.
    pub result: Option<serde_json::Value>,
}

/// The columns a [`JobRecord`] is read from (a macro, so queries stay literal strings).
macro_rules! columns {
    () => {
        "id, kind, state, stage, detail, progress, created, started, finished, attempts, cancel_requested, worker, error_code, error, result"
    };
}

fn record(row: &sqlx::any::AnyRow) -> Result<JobRecord> {
    let code: Option<String> = row.try_get("error_code")?;
    let message: Option<String> = row.try_get("error")?;
    let result: Option<String> = row.try_get("result")?;
    Ok(JobRecord {
        id: row.try_get("id")?,
        kind: row.try_get("kind")?,
        state: row.try_get("state")?,
        stage: row.try_get("stage")?,
        detail: row.try_get("detail")?,
        progress: row.try_get("progress")?,
        created: row.try_get("created")?,
        started: row.try_get("started")?,
        finished: row.try_get("finished")?,
        attempts: row.try_get("attempts")?,
        cancel_requested: row.try_get::<i64, _>("cancel_requested")? != 0,
        worker: row.try_get("worker")?,
        error: code.map(|code| serde_json::json!({"code": code, "message": message.unwrap_or_default()})),
        result: result.map(|r| serde_json::from_str(&r)).transpose()?,
    })
}

/// The job table on a pool.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    /// The database's clock, as SQL.
    clock: &'static str,
}

/// Whether job `id` was started by this worker.
pub enum Start {
    /// Started: the attempt number.
    Started(i64),
    /// Not queued any more (cancelled, finished) or running elsewhere.
    Skip,
    /// Running in another worker whose heartbeat is recent: ask again later.
    Busy,
}

impl Store {
    /// Create the table if needed; `postgres` says which SQL dialect tells the time.
    pub async fn open(pool: AnyPool, postgres: bool) -> Result<Self> {
        // Types both databases accept (SQLite maps them to REAL and INTEGER affinity).
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS studio_jobs (
                id TEXT PRIMARY KEY,
                kind TEXT NOT NULL,
                request TEXT NOT NULL,
                state TEXT NOT NULL,
                stage TEXT,
                detail TEXT,
                progress DOUBLE PRECISION NOT NULL DEFAULT 0,
                created DOUBLE PRECISION NOT NULL,
                started DOUBLE PRECISION,
                finished DOUBLE PRECISION,
                attempts BIGINT NOT NULL DEFAULT 0,
                cancel_requested BIGINT NOT NULL DEFAULT 0,
                worker TEXT,
                heartbeat DOUBLE PRECISION,
                error_code TEXT,
                error TEXT,
                result TEXT
            )",
        )
        .execute(&pool)
        .await
        .db()?;
        sqlx::query("CREATE INDEX IF NOT EXISTS studio_jobs_state ON studio_jobs (state, created)").execute(&pool).await.db()?;
        Ok(Self { pool, clock: if postgres { POSTGRES_NOW } else { SQLITE_NOW } })
    }

    /// Record a new queued job.
    pub async fn insert(&self, id: &str, kind: &str, request: &str) -> Result<()> {
        sqlx::query("INSERT INTO studio_jobs (id, kind, request, state, created) VALUES ($1, $2, $3, $4, $5)")
            .bind(id)
            .bind(kind)
            .bind(request)
            .bind(QUEUED)
            .bind(now())
            .execute(&self.pool)
            .await
            .db()?;
        Ok(())
    }

    /// The job `id`.
    pub async fn get(&self, id: &str) -> Result<Option<JobRecord>> {
        let row = sqlx::query(concat!("SELECT ", columns!(), " FROM studio_jobs WHERE id = $1")).bind(id).fetch_optional(&self.pool).await.db()?;
        row.as_ref().map(record).transpose()
    }

    /// The request a job was accepted with, and its kind.
    pub async fn request(&self, id: &str) -> Result<Option<(String, String)>> {
        let row = sqlx::query("SELECT kind, request FROM studio_jobs WHERE id = $1").bind(id).fetch_optional(&self.pool).await.db()?;
        Ok(row.map(|r| (r.get("kind"), r.get("request"))))
    }

    /// Jobs newest first, `limit` from `offset`, optionally in one state.
    pub async fn list(&self, state: Option<&str>, limit: i64, offset: i64) -> Result<(Vec<JobRecord>, i64)> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM studio_jobs WHERE (CAST($1 AS TEXT) IS NULL OR state = $1) ORDER BY created DESC, id DESC LIMIT $2 OFFSET $3"
        ))
        .bind(state)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await
        .db()?;
        let total: i64 = sqlx::query("SELECT COUNT(*) AS n FROM studio_jobs WHERE (CAST($1 AS TEXT) IS NULL OR state = $1)")
            .bind(state)
            .fetch_one(&self.pool)
            .await
            .db()?
            .get("n");
        Ok((rows.iter().map(record).collect::<Result<_>>()?, total))
    }

    /// Jobs queued or running.
    pub async fn active(&self) -> Result<i64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM studio_jobs WHERE state IN ($1, $2)")
            .bind(QUEUED)
            .bind(RUNNING)
            .fetch_one(&self.pool)
            .await
            .db()?;
        Ok(row.get("n"))
    }

    /// Start job `id` in `worker`: a queued job, or a running one whose worker is gone (its
    /// heartbeat is [`STALE_SECONDS`] old).
    pub async fn start(&self, id: &str, worker: &str) -> Result<Start> {
        let clock = self.clock;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE studio_jobs SET state = $1, started = $2, heartbeat = {clock}, worker = $3, attempts = attempts + 1,
             stage = NULL, progress = 0
             WHERE id = $4 AND (state = $5 OR (state = $1 AND (heartbeat IS NULL OR heartbeat < {clock} - $6))) RETURNING attempts",
        )))
        .bind(RUNNING)
        .bind(now())
        .bind(worker)
        .bind(id)
        .bind(QUEUED)
        .bind(STALE_SECONDS)
        .fetch_optional(&self.pool)
        .await
        .db()?;
        if let Some(row) = row {
            return Ok(Start::Started(row.get("attempts")));
        }
        Ok(match self.get(id).await? {
            Some(job) if job.state == RUNNING => Start::Busy,
            _ => Start::Skip,
        })
    }

    /// Store progress and refresh the heartbeat; returns whether a cancellation was asked for,
    /// or `None` if the job is not this worker's any more (another worker took it over after
    /// this one's heartbeat went stale, or it ended). `update` is `None` when only the heartbeat
    /// is due.
    pub async fn beat(&self, id: &str, worker: &str, update: Option<(&str, &str, f64)>) -> Result<Option<bool>> {
        // Two statements rather than COALESCE over NULL parameters: through sqlx's Any driver a
        // NULL bound for a DOUBLE PRECISION column reaches PostgreSQL in the wrong binary format.
        let clock = self.clock;
        let row = match update {
            Some((stage, detail, fraction)) => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE studio_jobs SET stage = $1, detail = $2, progress = $3, heartbeat = {clock}
                     WHERE id = $4 AND state = $5 AND worker = $6 RETURNING cancel_requested",
                )))
                .bind(stage)
                .bind(detail)
                .bind(fraction)
                .bind(id)
                .bind(RUNNING)
                .bind(worker)
                .fetch_optional(&self.pool)
                .await
                .db()?
            }
            None => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE studio_jobs SET heartbeat = {clock} WHERE id = $1 AND state = $2 AND worker = $3 RETURNING cancel_requested"
                )))
                .bind(id)
                .bind(RUNNING)
                .bind(worker)
                .fetch_optional(&self.pool)
                .await
                .db()?
            }
        };
        Ok(row.map(|r| r.get::<i64, _>("cancel_requested") != 0))
    }

    /// Finish job `id` running in `worker`: done with `result`, or ended with an error `code`
    /// (`cancelled` makes the state cancelled, anything else failed).
    pub async fn finish(&self, id: &str, worker: &str, outcome: std::result::Result<serde_json::Value, (String, String)>) -> Result<()> {
        let (state, result, code, message) = match outcome {
            Ok(result) => (DONE, Some(result.to_string()), None, None),
            Err((code, message)) => (if code == "cancelled" { CANCELLED } else { FAILED }, None, Some(code), Some(message)),
        };
        let done = state == DONE;
        sqlx::query(
            "UPDATE studio_jobs SET state = $1, result = $2, error_code = $3, error = $4, finished = $5,
             progress = CASE WHEN $6 = 1 THEN 1.0 ELSE progress END, detail = $1
             WHERE id = $7 AND worker = $8 AND state = $9",
        )
        .bind(state)
        .bind(result)
        .bind(code)
        .bind(message)
        .bind(now())
        .bind(i64::from(done))
        .bind(id)
        .bind(worker)
        .bind(RUNNING)
        .execute(&self.pool)
        .await
        .db()?;
        Ok(())
    }

    /// Fail a job that is not running any more (given up on after restarts, or never queued).
    pub async fn fail(&self, id: &str, code: &str, message: &str) -> Result<()> {
        sqlx::query(
            "UPDATE studio_jobs SET state = $1, error_code = $2, error = $3, finished = $4, detail = $1
             WHERE id = $5 AND state IN ($6, $7)",
        )
            .bind(FAILED)
            .bind(code)
            .bind(message)
            .bind(now())
            .bind(id)
            .bind(QUEUED)
            .bind(RUNNING)
            .execute(&self.pool)
            .await
            .db()?;
        Ok(())
    }

    /// Ask job `id` to stop: a queued job is cancelled at once, a running one at its next step.
    /// Returns the state the job was in (`None`: no such job).
    pub async fn cancel(&self, id: &str) -> Result<Option<String>> {
        let Some(job) = self.get(id).await? else { return Ok(None) };
        match job.state.as_str() {
            QUEUED => {
                sqlx::query(
                    "UPDATE studio_jobs SET state = $1, cancel_requested = 1, error_code = 'cancelled',
                     error = 'cancelled before it started', finished = $2 WHERE id = $3 AND state = $4",
                )
                .bind(CANCELLED)
                .bind(now())
                .bind(id)
                .bind(QUEUED)
                .execute(&self.pool)
                .await
                .db()?;
            }
            RUNNING => {
                sqlx::query("UPDATE studio_jobs SET cancel_requested = 1 WHERE id = $1").bind(id).execute(&self.pool).await.db()?;
            }
            _ => {}
        }
        Ok(Some(job.state))
    }

    /// After a restart of the only server on an SQLite database: jobs left running were
    /// interrupted by the stop. Those tried fewer than `max_attempts` times go back to queued,
    /// with a note, and their ids are returned; the others are given up, failed with the reason
    /// (and no note that promises another run).
    pub async fn requeue_interrupted(&self, max_attempts: i64) -> Result<Vec<String>> {
        sqlx::query(
            "UPDATE studio_jobs SET state = $1, error_code = 'interrupted', detail = $1, finished = $2,
             error = 'interrupted ' || CAST(attempts AS TEXT) || ' times by server stops; not tried again'
             WHERE state = $3 AND attempts >= $4",
        )
        .bind(FAILED)
        .bind(now())
        .bind(RUNNING)
        .bind(max_attempts)
        .execute(&self.pool)
        .await
        .db()?;
        let rows = sqlx::query(
            "UPDATE studio_jobs SET state = $1, detail = 'interrupted by a server stop; queued to run again'
             WHERE state = $2 RETURNING id",
        )
        .bind(QUEUED)
        .bind(RUNNING)
        .fetch_all(&self.pool)
        .await
        .db()?;
        Ok(rows.iter().map(|r| r.get("id")).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::unavailable_code;

    #[test]
    fn database_codes_that_mean_not_now() {
        // SQLite: FULL, READONLY, IOERR_WRITE (778), CANTOPEN, BUSY; PostgreSQL: disk full,
        // connection failure, admin shutdown, read-only transaction.
        for code in ["13", "8", "778", "14", "5", "53100", "08006", "57P01", "25006"] {
            assert!(unavailable_code(code), "{code}");
        }
        // SQLite: constraint (2067: UNIQUE), no such table is a plain error (1); PostgreSQL:
        // unique violation, undefined table, syntax error.
        for code in ["2067", "1", "23505", "42P01", "42601"] {
            assert!(!unavailable_code(code), "{code}");
        }
    }
}
