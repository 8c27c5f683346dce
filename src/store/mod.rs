//! All SQL lives here. SQLite in WAL mode; every write is a `BEGIN IMMEDIATE` transaction taken
//! under one in-process lock, so writers never meet `SQLITE_BUSY` and events are published in
//! the order of their `seq`. Each state change writes its event row in the same transaction.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde_json::Value;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool, Transaction};
use tokio::sync::Mutex;

use crate::events::{state_wire, Events, StateEvent, TaskSummary};
use crate::model::{
    now_rfc3339, ContainerRef, ContainerState, FunctionRef, Locality, Outcome, TaskId, TaskRecord,
    TaskState,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("the queue is full ({0} tasks waiting)")]
    QueueFull(u32),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// A write past a limit of what may be stored (`faasm`'s quotas): why.
    #[error("{0}")]
    Quota(String),
}

#[derive(sqlx::FromRow)]
struct TaskRow {
    id: String,
    task_name: String,
    state: String,
    image: String,
    priority: i64,
    spec: String,
    created_at: String,
    started_at: Option<String>,
    finished_at: Option<String>,
    exit_code: Option<i64>,
    stdout: String,
    stderr: String,
    output_truncated: bool,
    error: Option<String>,
    container_id: Option<String>,
    container_state: Option<String>,
    reuse_of: Option<String>,
    locality: Option<String>,
    exec_id: Option<String>,
    stdout_bytes: i64,
    stderr_bytes: i64,
    function: Option<String>,
    function_version: Option<i64>,
    result: Option<String>,
    steps: Option<String>,
}

/// The columns of a [`TaskRow`], as a macro so that queries stay `&'static str` (sqlx 0.9
/// refuses SQL built at run time unless it is marked as audited).
macro_rules! columns {
    () => {
        "id, task_name, state, image, priority, spec, created_at, started_at, finished_at, \
             exit_code, stdout, stderr, output_truncated, error, container_id, container_state, reuse_of, \
         locality, exec_id, stdout_bytes, stderr_bytes, function, function_version, result, steps"
    };
}

// After `columns!`, which it uses.
mod functions;
pub use functions::{LoggedTask, NewFunction, NewInvocation, StoredFunction, PIPELINE};
mod faasm;
pub use faasm::FaasmFile;

impl TryFrom<TaskRow> for TaskRecord {
    type Error = StoreError;
    fn try_from(r: TaskRow) -> Result<Self, StoreError> {
        let corrupt =
            |what: &str, v: &str| StoreError::Corrupt(format!("{what} `{v}` of task {}", r.id));
        let container = match (&r.container_id, &r.container_state) {
            (Some(id), Some(st)) => Some(ContainerRef {
                id: id.clone(),
                state: ContainerState::from_str(st).map_err(|_| corrupt("container state", st))?,
            }),
            _ => None,
        };
        let locality = match r.locality.as_deref() {
            None => None,
            Some("hit") => Some(Locality::Hit),
            Some("miss") => Some(Locality::Miss),
            Some(other) => return Err(corrupt("locality", other)),
        };
        let function = match (&r.function, r.function_version) {
            (Some(f), Some(version)) => {
                let (ns, name) = f.split_once('/').ok_or_else(|| corrupt("function", f))?;
                Some(FunctionRef {
                    namespace: ns.to_string(),
                    name: name.to_string(),
                    version,
                })
            }
            _ => None,
        };
        let result = match &r.result {
            Some(s) => Some(serde_json::from_str(s).map_err(|_| corrupt("result", s))?),
            None => None,
        };
        let steps = match &r.steps {
            Some(s) => Some(serde_json::from_str(s).map_err(|_| corrupt("steps", s))?),
            None => None,
        };
        Ok(TaskRecord {
            function,
            result,
            steps,
            id: TaskId::from_str(&r.id).map_err(|_| corrupt("id", &r.id))?,
            state: TaskState::from_str(&r.state).map_err(|_| corrupt("state", &r.state))?,
            spec: serde_json::from_str(&r.spec).map_err(|_| corrupt("spec", &r.spec))?,
            reused_container_of: match &r.reuse_of {
                Some(s) => Some(TaskId::from_str(s).map_err(|_| corrupt("reuse_of", s))?),
                None => None,
            },
            container,
            locality,
            task_name: r.task_name,
            image: r.image,
            priority: r.priority,
            created_at: r.created_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
            exit_code: r.exit_code,
            stdout: r.stdout,
            stderr: r.stderr,
            output_truncated: r.output_truncated,
            error: r.error,
            exec_id: r.exec_id,
            output_stored: (
                u64::try_from(r.stdout_bytes).unwrap_or(0),
                u64::try_from(r.stderr_bytes).unwrap_or(0),
            ),
        })
    }
}

/// A task to insert.
pub struct NewTask<'a> {
    pub id: TaskId,
    pub task_name: &'a str,
    pub image: &'a str,
    pub priority: i64,
    pub spec: &'a Value,
    pub reuse_of: Option<TaskId>,
}

/// Filters of `GET /fn`.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub states: Vec<TaskState>,
    pub name: Option<String>,
    pub limit: u32,
    pub before: Option<TaskId>,
}

#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
    events: Events,
    write: std::sync::Arc<Mutex<()>>,
    /// Invocation writes waiting to be made together (group commit, see `functions`).
    queued: functions::Queued,
    writes: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

type Tx<'a> = Transaction<'a, Sqlite>;

impl Store {
    /// Opens (creating if needed) the database and runs the embedded migrations.
    pub async fn open(path: &Path, events: Events) -> Result<Store, StoreError> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            // A file on this machine does not go away under a held connection: the ping sqlx
            // makes before every acquire would be one more round trip to the database's
            // thread on every read and write (every call's path).
            .test_before_acquire(false)
            .connect_with(opts)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Store {
            pool,
            events,
            write: std::sync::Arc::new(Mutex::new(())),
            queued: functions::Queued::default(),
            writes: std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0)),
        })
    }

    /// The right to write, counted: every write (a transaction or a single statement) takes
    /// it once, so [`Store::writes`] is the number of writes made.
    async fn writer(&self) -> tokio::sync::MutexGuard<'_, ()> {
        let guard = self.write.lock().await;
        self.writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        guard
    }

    /// Writes made since the store was opened (the bench prints writes per task).
    pub fn writes(&self) -> u64 {
        self.writes.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn events(&self) -> &Events {
        &self.events
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// This database's instance id, made on first use: it labels the containers this server
    /// owns, so a restart finds its own and never touches another server's.
    pub async fn instance_id(&self) -> Result<String, StoreError> {
        let _w = self.writer().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let existing: Option<String> =
            sqlx::query_scalar("SELECT value FROM meta WHERE key = 'instance'")
                .fetch_optional(&mut *tx)
                .await?;
        let id = match existing {
            Some(id) => id,
            None => {
                let id = uuid::Uuid::new_v4().simple().to_string();
                sqlx::query("INSERT INTO meta (key, value) VALUES ('instance', ?)")
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
                id
            }
        };
        tx.commit().await?;
        Ok(id)
    }

    async fn fetch_in(tx: &mut Tx<'_>, id: &str) -> Result<Option<TaskRecord>, StoreError> {
        let row: Option<TaskRow> =
            sqlx::query_as(concat!("SELECT ", columns!(), " FROM tasks WHERE id = ?"))
                .bind(id)
                .fetch_optional(&mut **tx)
                .await?;
        row.map(TaskRecord::try_from).transpose()
    }

    /// Writes the event row for a change made in `tx` and returns it for publishing after commit.
    async fn event_in(
        tx: &mut Tx<'_>,
        task: TaskRecord,
        state: TaskState,
        at: &str,
    ) -> Result<StateEvent, StoreError> {
        let id = task.id.to_string();
        let summary = serde_json::to_value(TaskSummary::from(&task))
            .map_err(|e| StoreError::Corrupt(format!("summary of task {id}: {e}")))?;
        let seq: i64 = sqlx::query_scalar(
            "INSERT INTO events (task_id, state, at, task) VALUES (?, ?, ?, ?) RETURNING seq",
        )
        .bind(&id)
        .bind(state.as_str())
        .bind(at)
        .bind(summary.to_string())
        .fetch_one(&mut **tx)
        .await?;
        Ok(StateEvent {
            seq,
            task_id: task.id,
            state,
            wire: state_wire(seq, task.id, state, at, &summary),
            task,
        })
    }

    /// One state change: `update` (an `UPDATE … WHERE … AND state IN (…) RETURNING` the
    /// row's columns) and the change's event, in one write transaction. `None` when no row
    /// matched (the task was not in a state the change starts from).
    async fn transition(
        &self,
        to: TaskState,
        at: &str,
        update: sqlx::query::QueryAs<'_, Sqlite, TaskRow, sqlx::sqlite::SqliteArguments>,
    ) -> Result<Option<TaskRecord>, StoreError> {
        let _w = self.writer().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let Some(ev) = Self::transition_in(&mut tx, to, at, update).await? else {
            return Ok(None);
        };
        let record = ev.task.clone();
        self.commit_and_publish(tx, vec![ev]).await?;
        Ok(Some(record))
    }

    /// [`Store::transition`] inside a transaction of the caller's: the change and its event.
    async fn transition_in(
        tx: &mut Tx<'_>,
        to: TaskState,
        at: &str,
        update: sqlx::query::QueryAs<'_, Sqlite, TaskRow, sqlx::sqlite::SqliteArguments>,
    ) -> Result<Option<StateEvent>, StoreError> {
        let Some(row) = update.fetch_optional(&mut **tx).await? else {
            return Ok(None);
        };
        Ok(Some(
            Self::event_in(tx, TaskRecord::try_from(row)?, to, at).await?,
        ))
    }

    async fn commit_and_publish(
        &self,
        tx: Tx<'_>,
        events: Vec<StateEvent>,
    ) -> Result<(), StoreError> {
        tx.commit().await?;
        for e in events {
            self.events.publish(e);
        }
        Ok(())
    }

    pub async fn get(&self, id: TaskId) -> Result<Option<TaskRecord>, StoreError> {
        let row: Option<TaskRow> =
            sqlx::query_as(concat!("SELECT ", columns!(), " FROM tasks WHERE id = ?"))
                .bind(id.to_string())
                .fetch_optional(&self.pool)
                .await?;
        row.map(TaskRecord::try_from).transpose()
    }

    /// Stores a new task as RECEIVED and queues it as PENDING, refusing it when `max_queue`
    /// tasks already wait. Both changes and their events are one transaction: an accepted
    /// task is on disk before the caller answers.
    pub async fn insert(
        &self,
        task: NewTask<'_>,
        max_queue: u32,
    ) -> Result<TaskRecord, StoreError> {
        let _w = self.writer().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let waiting: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM tasks WHERE state IN ('RECEIVED', 'PENDING') \
                 AND function IS NULL",
        )
        .fetch_one(&mut *tx)
        .await?;
        if waiting >= i64::from(max_queue) {
            return Err(StoreError::QueueFull(max_queue));
        }
        let id = task.id.to_string();
        let now = now_rfc3339();
        let row: TaskRow = sqlx::query_as(concat!(
            "INSERT INTO tasks (id, task_name, state, image, priority, spec, created_at, reuse_of) \
             VALUES (?, ?, 'RECEIVED', ?, ?, ?, ?, ?) RETURNING ",
            columns!()
        ))
        .bind(&id)
        .bind(task.task_name)
        .bind(task.image)
        .bind(task.priority)
        .bind(task.spec.to_string())
        .bind(&now)
        .bind(task.reuse_of.map(|r| r.to_string()))
        .fetch_one(&mut *tx)
        .await?;
        let received = Self::event_in(&mut tx, row.try_into()?, TaskState::Received, &now).await?;
        let row: TaskRow = sqlx::query_as(concat!(
            "UPDATE tasks SET state = 'PENDING' WHERE id = ? RETURNING ",
            columns!()
        ))
        .bind(&id)
        .fetch_one(&mut *tx)
        .await?;
        let pending =
            Self::event_in(&mut tx, row.try_into()?, TaskState::Pending, &now_rfc3339()).await?;
        let record = pending.task.clone();
        self.commit_and_publish(tx, vec![received, pending]).await?;
        Ok(record)
    }

    /// Claims the next PENDING task (highest priority, then oldest) and marks it STARTING,
    /// in one `UPDATE … RETURNING`.
    pub async fn claim_next(&self) -> Result<Option<TaskRecord>, StoreError> {
        // A read first: the dispatcher asks until the queue is empty, and an empty claim
        // would otherwise be a write transaction of its own. A task queued after this read
        // wakes the dispatcher, which asks again.
        let waiting: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM tasks WHERE state = 'PENDING' AND function IS NULL LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        if waiting.is_none() {
            return Ok(None);
        }
        self.transition(
            TaskState::Starting,
            &now_rfc3339(),
            sqlx::query_as(concat!(
                "UPDATE tasks SET state = 'STARTING', container_state = NULL \
                 WHERE num = (SELECT num FROM tasks WHERE state = 'PENDING' AND function IS NULL \
                 ORDER BY priority DESC, num ASC LIMIT 1) RETURNING ",
                columns!()
            )),
        )
        .await
    }

    /// Tasks a previous run left STARTING or RUNNING.
    pub async fn unfinished(&self) -> Result<Vec<TaskRecord>, StoreError> {
        let rows: Vec<TaskRow> = sqlx::query_as(concat!(
            "SELECT ",
            columns!(),
            " FROM tasks WHERE state IN ('STARTING', 'RUNNING') AND function IS NULL ORDER BY num"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(TaskRecord::try_from).collect()
    }

    /// A STARTING task whose command never began goes back to the queue.
    pub async fn requeue(&self, id: TaskId) -> Result<bool, StoreError> {
        let requeued = self
            .transition(
                TaskState::Pending,
                &now_rfc3339(),
                sqlx::query_as(concat!(
                    "UPDATE tasks SET state = 'PENDING', container_id = NULL, container_state = NULL, \
                     locality = NULL WHERE id = ? AND state = 'STARTING' RETURNING ",
                    columns!()
                ))
                .bind(id.to_string()),
            )
            .await?;
        Ok(requeued.is_some())
    }

    /// Marks every task that used `container_id` with the container's new state.
    pub async fn set_container_state(
        &self,
        container_id: &str,
        state: ContainerState,
    ) -> Result<(), StoreError> {
        let _w = self.writer().await;
        sqlx::query("UPDATE tasks SET container_state = ? WHERE container_id = ?")
            .bind(state.as_str())
            .bind(container_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// STARTING → RUNNING, with the container the task runs in and the job it runs as (known
    /// before the job starts, so a restarted server can always ask how it ended): one write.
    pub async fn mark_running(
        &self,
        id: TaskId,
        container: &str,
        locality: Option<Locality>,
        exec_id: &str,
    ) -> Result<Option<TaskRecord>, StoreError> {
        let now = now_rfc3339();
        self.transition(
            TaskState::Running,
            &now,
            sqlx::query_as(concat!(
                "UPDATE tasks SET state = 'RUNNING', started_at = ?, container_id = ?, \
                 container_state = 'ready', locality = ?, exec_id = ? \
                 WHERE id = ? AND state = 'STARTING' RETURNING ",
                columns!()
            ))
            .bind(&now)
            .bind(container)
            .bind(locality.map(Locality::as_str))
            .bind(exec_id)
            .bind(id.to_string()),
        )
        .await
    }

    /// Appends output of a RUNNING task as it comes (no state change, so no event): `stdout`
    /// and `stderr` are the text of the raw bytes that bring the stored counts to
    /// `stored`. A task that has ended meanwhile is left as its end wrote it.
    pub async fn append_output(
        &self,
        id: TaskId,
        stdout: &str,
        stderr: &str,
        stored: (u64, u64),
        truncated: bool,
    ) -> Result<(), StoreError> {
        let _w = self.writer().await;
        sqlx::query(
            "UPDATE tasks SET stdout = stdout || ?, stderr = stderr || ?, stdout_bytes = ?, \
             stderr_bytes = ?, output_truncated = (output_truncated OR ?) \
             WHERE id = ? AND state = 'RUNNING'",
        )
        .bind(stdout)
        .bind(stderr)
        .bind(i64::try_from(stored.0).unwrap_or(i64::MAX))
        .bind(i64::try_from(stored.1).unwrap_or(i64::MAX))
        .bind(truncated)
        .bind(id.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Ends a task that is STARTING or RUNNING. Returns `None` if it had already ended.
    pub async fn finish(
        &self,
        id: TaskId,
        state: TaskState,
        outcome: &Outcome,
        container_state: Option<ContainerState>,
    ) -> Result<Option<TaskRecord>, StoreError> {
        let now = now_rfc3339();
        self.transition(
            state,
            &now,
            sqlx::query_as(concat!(
                "UPDATE tasks SET state = ?, finished_at = ?, exit_code = ?, stdout = ?, stderr = ?, \
                 output_truncated = ?, error = ?, container_state = COALESCE(?, container_state) \
                 WHERE id = ? AND state IN ('STARTING', 'RUNNING') RETURNING ",
                columns!()
            ))
            .bind(state.as_str())
            .bind(&now)
            .bind(outcome.exit_code)
            .bind(&outcome.stdout)
            .bind(&outcome.stderr)
            .bind(outcome.output_truncated)
            .bind(&outcome.error)
            .bind(container_state.map(ContainerState::as_str))
            .bind(id.to_string()),
        )
        .await
    }

    /// Cancels a task that has not started. `None` if it is not queued (or unknown).
    pub async fn cancel_queued(&self, id: TaskId) -> Result<Option<TaskRecord>, StoreError> {
        let now = now_rfc3339();
        self.transition(
            TaskState::Cancelled,
            &now,
            sqlx::query_as(concat!(
                "UPDATE tasks SET state = 'CANCELLED', finished_at = ? \
                 WHERE id = ? AND state IN ('RECEIVED', 'PENDING') RETURNING ",
                columns!()
            ))
            .bind(&now)
            .bind(id.to_string()),
        )
        .await
    }

    /// Replaces the spec of a task that has not started, reading the current spec and
    /// writing the new one in one transaction. `update` gets the stored spec and returns the
    /// new spec with its name, image and priority, or an error that aborts the change.
    pub async fn update_queued<E, F>(
        &self,
        id: TaskId,
        update: F,
    ) -> Result<UpdateResult<E>, StoreError>
    where
        F: FnOnce(&TaskRecord) -> Result<(Value, String, String, i64), E>,
    {
        let _w = self.writer().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let Some(current) = Self::fetch_in(&mut tx, &id.to_string()).await? else {
            return Ok(UpdateResult::NotFound);
        };
        if !current.state.is_queued() {
            return Ok(UpdateResult::Started(current));
        }
        let (spec, name, image, priority) = match update(&current) {
            Ok(v) => v,
            Err(e) => return Ok(UpdateResult::Refused(e)),
        };
        sqlx::query(
            "UPDATE tasks SET spec = ?, task_name = ?, image = ?, priority = ? WHERE id = ?",
        )
        .bind(spec.to_string())
        .bind(name)
        .bind(image)
        .bind(priority)
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
        let record = Self::fetch_in(&mut tx, &id.to_string())
            .await?
            .ok_or_else(|| {
                StoreError::Corrupt(format!("task {id} vanished inside its own transaction"))
            })?;
        tx.commit().await?;
        Ok(UpdateResult::Updated(record))
    }

    /// Forgets an ended task. Its events stay in the log.
    pub async fn purge(&self, id: TaskId) -> Result<bool, StoreError> {
        let _w = self.writer().await;
        let done = sqlx::query(
            "DELETE FROM tasks WHERE id = ? AND state IN ('FINISHED', 'FAILED', 'CANCELLED', 'EXPIRED')",
        )
        .bind(id.to_string())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Tasks newest first, and the id to pass as `before` for the next page.
    pub async fn list(
        &self,
        filter: &ListFilter,
    ) -> Result<(Vec<TaskRecord>, Option<TaskId>), StoreError> {
        let mut sql = concat!("SELECT ", columns!(), " FROM tasks WHERE 1 = 1").to_string();
        if !filter.states.is_empty() {
            let marks = vec!["?"; filter.states.len()].join(", ");
            sql.push_str(&format!(" AND state IN ({marks})"));
        }
        if filter.name.is_some() {
            sql.push_str(" AND task_name = ?");
        }
        if filter.before.is_some() {
            sql.push_str(" AND num < (SELECT num FROM tasks WHERE id = ?)");
        }
        sql.push_str(" ORDER BY num DESC LIMIT ?");
        // Audited: `sql` is made of the fixed fragments above; every value is bound.
        let mut q = sqlx::query_as::<_, TaskRow>(sqlx::AssertSqlSafe(sql));
        for st in &filter.states {
            q = q.bind(st.as_str());
        }
        if let Some(name) = &filter.name {
            q = q.bind(name);
        }
        if let Some(before) = filter.before {
            q = q.bind(before.to_string());
        }
        q = q.bind(i64::from(filter.limit) + 1);
        let rows = q.fetch_all(&self.pool).await?;
        let mut tasks = rows
            .into_iter()
            .map(TaskRecord::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        let next = if tasks.len() > filter.limit as usize {
            tasks.truncate(filter.limit as usize);
            tasks.last().map(|t| t.id)
        } else {
            None
        };
        Ok((tasks, next))
    }

    /// Stored events after `since`, oldest first, at most `limit`: (seq, task id, wire form).
    pub async fn events_after(
        &self,
        since: i64,
        limit: u32,
    ) -> Result<Vec<(i64, TaskId, String)>, StoreError> {
        let rows: Vec<(i64, String, String, String, String)> = sqlx::query_as(
            "SELECT seq, task_id, state, at, task FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(since)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(seq, task_id, state, at, task)| {
                let id = TaskId::from_str(&task_id)
                    .map_err(|_| StoreError::Corrupt(format!("event {seq} task id")))?;
                let st = TaskState::from_str(&state)
                    .map_err(|_| StoreError::Corrupt(format!("event {seq} state")))?;
                let summary: Value = serde_json::from_str(&task).unwrap_or(Value::Null);
                Ok((seq, id, state_wire(seq, id, st, &at, &summary)))
            })
            .collect()
    }

    /// Highest seq pruned so far (0 when nothing was): a `since` below it cannot be replayed.
    pub async fn pruned_through(&self) -> Result<i64, StoreError> {
        let v: Option<String> =
            sqlx::query_scalar("SELECT value FROM meta WHERE key = 'events_pruned_through'")
                .fetch_optional(&self.pool)
                .await?;
        Ok(v.and_then(|v| v.parse().ok()).unwrap_or(0))
    }

    /// Drops events older than `retention`, but never the last event of a task that has not
    /// ended. Returns how many rows went.
    pub async fn prune_events(&self, retention: Retention) -> Result<u64, StoreError> {
        let _w = self.writer().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let cutoff: Option<i64> = match retention {
            Retention::Count(n) => {
                sqlx::query_scalar("SELECT MAX(seq) - ? FROM events")
                    .bind(n as i64)
                    .fetch_one(&mut *tx)
                    .await?
            }
            Retention::Age(age) => {
                let limit = chrono::Utc::now()
                    - chrono::Duration::from_std(age).unwrap_or(chrono::Duration::MAX);
                let limit = limit.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
                sqlx::query_scalar("SELECT MAX(seq) FROM events WHERE at < ?")
                    .bind(limit)
                    .fetch_one(&mut *tx)
                    .await?
            }
        };
        let Some(cutoff) = cutoff.filter(|c| *c > 0) else {
            return Ok(0);
        };
        let done = sqlx::query(
            "DELETE FROM events WHERE seq <= ? AND seq NOT IN ( \
                 SELECT MAX(e.seq) FROM events e JOIN tasks t ON t.id = e.task_id \
                 WHERE t.state NOT IN ('FINISHED', 'FAILED', 'CANCELLED', 'EXPIRED') GROUP BY e.task_id)",
        )
        .bind(cutoff)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO meta (key, value) VALUES ('events_pruned_through', ?) \
             ON CONFLICT (key) DO UPDATE SET value = MAX(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER))",
        )
        .bind(cutoff.to_string())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    pub async fn exists(&self, id: TaskId) -> Result<bool, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tasks WHERE id = ?")
            .bind(id.to_string())
            .fetch_one(&self.pool)
            .await?;
        Ok(n > 0)
    }

    /// At start: queue what was received but not yet queued.
    pub async fn recover(&self) -> Result<(), StoreError> {
        let _w = self.writer().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let mut events = Vec::new();
        let received: Vec<TaskRow> = sqlx::query_as(concat!(
            "UPDATE tasks SET state = 'PENDING' WHERE state = 'RECEIVED' RETURNING ",
            columns!()
        ))
        .fetch_all(&mut *tx)
        .await?;
        for row in received {
            let task = TaskRecord::try_from(row)?;
            events.push(Self::event_in(&mut tx, task, TaskState::Pending, &now_rfc3339()).await?);
        }
        self.commit_and_publish(tx, events).await?;
        Ok(())
    }
}

/// How long the event log keeps events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// The newest N events.
    Count(u64),
    /// Events younger than this.
    Age(std::time::Duration),
}

impl FromStr for Retention {
    type Err = String;
    /// `100000` (a count) or `90s`, `30m`, `12h`, `7d` (an age).
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let bad = || format!("`{s}` is neither a count (100000) nor an age (90s, 30m, 12h, 7d)");
        if let Ok(n) = s.parse::<u64>() {
            return Ok(Retention::Count(n));
        }
        let (num, unit) = s.split_at(s.len().saturating_sub(1));
        let n: u64 = num.parse().map_err(|_| bad())?;
        let secs = match unit {
            "s" => n,
            "m" => n * 60,
            "h" => n * 3600,
            "d" => n * 86400,
            _ => return Err(bad()),
        };
        Ok(Retention::Age(std::time::Duration::from_secs(secs)))
    }
}

pub enum UpdateResult<E> {
    Updated(TaskRecord),
    NotFound,
    Started(TaskRecord),
    Refused(E),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_parses_counts_and_ages() {
        assert_eq!("5000".parse(), Ok(Retention::Count(5000)));
        assert_eq!("90s".parse(), Ok(Retention::Age(Duration::from_secs(90))));
        assert_eq!("2h".parse(), Ok(Retention::Age(Duration::from_secs(7200))));
        assert_eq!(
            "7d".parse(),
            Ok(Retention::Age(Duration::from_secs(7 * 86400)))
        );
        assert!("7w".parse::<Retention>().is_err());
        assert!("".parse::<Retention>().is_err());
        assert!("h".parse::<Retention>().is_err());
    }
}
