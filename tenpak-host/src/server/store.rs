//! The job records (`studio_jobs`), in the same SQLite database as apalis's queue: what a client
//! asked for, where the job is, and what came out. apalis decides *when* a job runs; this table
//! says *what happened*, and survives restarts with the queue.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;
use serde::Serialize;
use sqlx::{Row, SqlitePool};

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

/// Seconds since the epoch.
pub fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

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
    /// `{code, message}` when failed or cancelled.
    pub error: Option<serde_json::Value>,
    /// The figures, when done.
    pub result: Option<serde_json::Value>,
}

/// The columns a [`JobRecord`] is read from (a macro, so queries stay literal strings).
macro_rules! columns {
    () => {
        "id, kind, state, stage, detail, progress, created, started, finished, attempts, cancel_requested, error_code, error, result"
    };
}

fn record(row: &sqlx::sqlite::SqliteRow) -> Result<JobRecord> {
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
        error: code.map(|code| serde_json::json!({"code": code, "message": message.unwrap_or_default()})),
        result: result.map(|r| serde_json::from_str(&r)).transpose()?,
    })
}

/// The job table on a pool.
#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
}

impl Store {
    /// Create the table if needed.
    pub async fn open(pool: SqlitePool) -> Result<Self> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS studio_jobs (
                id TEXT PRIMARY KEY,
                kind TEXT NOT NULL,
                request TEXT NOT NULL,
                state TEXT NOT NULL,
                stage TEXT,
                detail TEXT,
                progress REAL NOT NULL DEFAULT 0,
                created REAL NOT NULL,
                started REAL,
                finished REAL,
                attempts INTEGER NOT NULL DEFAULT 0,
                cancel_requested INTEGER NOT NULL DEFAULT 0,
                error_code TEXT,
                error TEXT,
                result TEXT
            )",
        )
        .execute(&pool)
        .await?;
        sqlx::query("CREATE INDEX IF NOT EXISTS studio_jobs_state ON studio_jobs (state, created)").execute(&pool).await?;
        Ok(Self { pool })
    }

    /// Record a new queued job.
    pub async fn insert(&self, id: &str, kind: &str, request: &str) -> Result<()> {
        sqlx::query("INSERT INTO studio_jobs (id, kind, request, state, created) VALUES (?, ?, ?, ?, ?)")
            .bind(id)
            .bind(kind)
            .bind(request)
            .bind(QUEUED)
            .bind(now())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The job `id`.
    pub async fn get(&self, id: &str) -> Result<Option<JobRecord>> {
        let row = sqlx::query(concat!("SELECT ", columns!(), " FROM studio_jobs WHERE id = ?")).bind(id).fetch_optional(&self.pool).await?;
        row.as_ref().map(record).transpose()
    }

    /// The request a job was accepted with, and its kind.
    pub async fn request(&self, id: &str) -> Result<Option<(String, String)>> {
        let row = sqlx::query("SELECT kind, request FROM studio_jobs WHERE id = ?").bind(id).fetch_optional(&self.pool).await?;
        Ok(row.map(|r| (r.get("kind"), r.get("request"))))
    }

    /// Jobs newest first, `limit` from `offset`, optionally in one state.
    pub async fn list(&self, state: Option<&str>, limit: i64, offset: i64) -> Result<(Vec<JobRecord>, i64)> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM studio_jobs WHERE (?1 IS NULL OR state = ?1) ORDER BY created DESC, id DESC LIMIT ?2 OFFSET ?3"
        ))
        .bind(state)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await?;
        let total: i64 = sqlx::query("SELECT COUNT(*) AS n FROM studio_jobs WHERE (?1 IS NULL OR state = ?1)")
            .bind(state)
            .fetch_one(&self.pool)
            .await?
            .get("n");
        Ok((rows.iter().map(record).collect::<Result<_>>()?, total))
    }

    /// Jobs queued or running.
    pub async fn active(&self) -> Result<i64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM studio_jobs WHERE state IN (?, ?)")
            .bind(QUEUED)
            .bind(RUNNING)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.get("n"))
    }

    /// Mark a queued job running; returns its attempt number, or `None` if it is not queued
    /// (cancelled while waiting, or finished by an earlier attempt).
    pub async fn start(&self, id: &str) -> Result<Option<i64>> {
        let row = sqlx::query(
            "UPDATE studio_jobs SET state = ?, started = ?, attempts = attempts + 1, stage = NULL, progress = 0
             WHERE id = ? AND state = ? RETURNING attempts",
        )
        .bind(RUNNING)
        .bind(now())
        .bind(id)
        .bind(QUEUED)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.get("attempts")))
    }

    /// Store progress; returns whether a cancellation was asked for.
    pub async fn progress(&self, id: &str, stage: &str, detail: &str, fraction: f64) -> Result<bool> {
        let row = sqlx::query(
            "UPDATE studio_jobs SET stage = ?, detail = ?, progress = ? WHERE id = ? AND state = ? RETURNING cancel_requested",
        )
        .bind(stage)
        .bind(detail)
        .bind(fraction)
        .bind(id)
        .bind(RUNNING)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some_and(|r| r.get::<i64, _>("cancel_requested") != 0))
    }

    /// Whether a cancellation was asked for.
    pub async fn cancel_requested(&self, id: &str) -> Result<bool> {
        let row = sqlx::query("SELECT cancel_requested FROM studio_jobs WHERE id = ?").bind(id).fetch_optional(&self.pool).await?;
        Ok(row.is_some_and(|r| r.get::<i64, _>("cancel_requested") != 0))
    }

    /// Finish a running job: done with `result`, or ended with an error `code` (`cancelled` makes
    /// the state cancelled, anything else failed).
    pub async fn finish(&self, id: &str, outcome: std::result::Result<serde_json::Value, (String, String)>) -> Result<()> {
        let (state, result, code, message) = match outcome {
            Ok(result) => (DONE, Some(result.to_string()), None, None),
            Err((code, message)) => (if code == "cancelled" { CANCELLED } else { FAILED }, None, Some(code), Some(message)),
        };
        let progress = if state == DONE { 1.0 } else { -1.0 };
        sqlx::query(
            "UPDATE studio_jobs SET state = ?, result = ?, error_code = ?, error = ?, finished = ?,
             progress = CASE WHEN ? >= 0 THEN ? ELSE progress END, detail = ? WHERE id = ?",
        )
        .bind(state)
        .bind(result)
        .bind(code)
        .bind(message)
        .bind(now())
        .bind(progress)
        .bind(progress)
        .bind(state)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Fail a job that is not running (given up on after restarts).
    pub async fn fail_queued(&self, id: &str, message: &str) -> Result<()> {
        sqlx::query("UPDATE studio_jobs SET state = ?, error_code = 'interrupted', error = ?, finished = ? WHERE id = ? AND state IN (?, ?)")
            .bind(FAILED)
            .bind(message)
            .bind(now())
            .bind(id)
            .bind(QUEUED)
            .bind(RUNNING)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Ask job `id` to stop: a queued job is cancelled at once, a running one at its next step.
    /// Returns the state the job was in (`None`: no such job).
    pub async fn cancel(&self, id: &str) -> Result<Option<String>> {
        let Some(job) = self.get(id).await? else { return Ok(None) };
        match job.state.as_str() {
            QUEUED => {
                sqlx::query(
                    "UPDATE studio_jobs SET state = ?, cancel_requested = 1, error_code = 'cancelled',
                     error = 'cancelled before it started', finished = ? WHERE id = ? AND state = ?",
                )
                .bind(CANCELLED)
                .bind(now())
                .bind(id)
                .bind(QUEUED)
                .execute(&self.pool)
                .await?;
            }
            RUNNING => {
                sqlx::query("UPDATE studio_jobs SET cancel_requested = 1 WHERE id = ?").bind(id).execute(&self.pool).await?;
            }
            _ => {}
        }
        Ok(Some(job.state))
    }

    /// After a restart of the only server on this database: jobs left running were interrupted
    /// by the stop; they go back to queued, with a note. Returns their ids and attempts so far.
    pub async fn requeue_interrupted(&self) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query(
            "UPDATE studio_jobs SET state = ?, detail = 'interrupted by a server stop; queued to run again'
             WHERE state = ? RETURNING id, attempts",
        )
        .bind(QUEUED)
        .bind(RUNNING)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| (r.get("id"), r.get("attempts"))).collect())
    }
}
