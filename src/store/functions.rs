//! The SQL of named functions (API.md section 5): functions and their versions, sealed
//! secrets, and invocations, which are tasks with a function, a result and (pipelines) steps.
//!
//! An invocation costs two writes when a warm runtime is free: it is stored already RUNNING
//! (its RECEIVED, PENDING and RUNNING events in the one transaction), then ended with its
//! result. One that has to wait is stored PENDING and marked RUNNING when a runtime takes it.

use std::collections::BTreeMap;

use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::oneshot;

use super::{Store, StoreError, TaskRow};
use crate::model::{now_rfc3339, Outcome, TaskId, TaskRecord, TaskState};

/// The `function` column of a pipeline's task: not a function, but not a plain task either
/// (the task dispatcher must never claim it).
pub const PIPELINE: &str = "pipeline";

/// One stored version of a function.
#[derive(Debug, Clone)]
pub struct StoredFunction {
    pub namespace: String,
    pub name: String,
    pub version: i64,
    pub runtime: String,
    /// The deploy body without its code.
    pub config: Value,
    /// A tar of the code directory.
    pub code: Vec<u8>,
    pub code_sha256: String,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(sqlx::FromRow)]
struct FunctionRow {
    namespace: String,
    name: String,
    version: i64,
    runtime: String,
    config: String,
    code: Vec<u8>,
    code_sha256: String,
    created_at: String,
    updated_at: String,
}

impl TryFrom<FunctionRow> for StoredFunction {
    type Error = StoreError;
    fn try_from(r: FunctionRow) -> Result<Self, StoreError> {
        Ok(StoredFunction {
            config: serde_json::from_str(&r.config).map_err(|_| {
                StoreError::Corrupt(format!("config of function {}/{}", r.namespace, r.name))
            })?,
            namespace: r.namespace,
            name: r.name,
            version: r.version,
            runtime: r.runtime,
            code: r.code,
            code_sha256: r.code_sha256,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

macro_rules! function_columns {
    () => {
        "f.namespace, f.name, f.version, v.runtime, v.config, v.code, v.code_sha256, \
         f.created_at, f.updated_at FROM functions f JOIN function_versions v \
         ON v.namespace = f.namespace AND v.name = f.name AND v.version = f.version"
    };
}

/// A function version to store.
pub struct NewFunction<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub runtime: &'a str,
    pub config: &'a Value,
    pub code: &'a [u8],
    pub code_sha256: &'a str,
}

/// An invocation (or a pipeline) to store as a task.
pub struct NewInvocation<'a> {
    pub id: TaskId,
    /// `ns/name`, or [`PIPELINE`].
    pub function: &'a str,
    pub version: Option<i64>,
    pub image: &'a str,
    /// What the task record shows as its spec: the request.
    pub spec: &'a Value,
    /// Stored RUNNING at once (a runtime has taken it); else PENDING.
    pub running: bool,
    /// The container it runs in.
    pub container: Option<&'a str>,
}

/// One stored line of a function's logs.
#[derive(Debug, Clone)]
pub struct LoggedTask {
    pub task_id: TaskId,
    pub at: String,
    pub stdout: String,
    pub stderr: String,
}

/// An invocation write waiting for the next transaction.
pub(super) enum Op {
    Insert {
        id: TaskId,
        function: String,
        version: Option<i64>,
        image: String,
        spec: String,
        running: bool,
        container: Option<String>,
    },
    Running {
        id: TaskId,
        container: String,
        version: i64,
    },
    Finish {
        id: TaskId,
        state: TaskState,
        outcome: Outcome,
        result: Option<String>,
        steps: Option<String>,
    },
}

type Reply = oneshot::Sender<Result<Option<TaskRecord>, StoreError>>;

/// The invocation writes queued for the next transaction.
#[derive(Default, Clone)]
pub(super) struct Queued(Arc<Mutex<Vec<(Op, Reply)>>>);

impl Queued {
    fn push(&self, op: Op, reply: Reply) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((op, reply));
    }

    fn take(&self) -> Vec<(Op, Reply)> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Store {
    /// Stores a new version of `ns/name` and makes it current. Returns the stored function
    /// and whether it was created (rather than replaced).
    pub async fn put_function(
        &self,
        f: NewFunction<'_>,
    ) -> Result<(StoredFunction, bool), StoreError> {
        let _w = self.writer().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let now = now_rfc3339();
        let last: Option<i64> = sqlx::query_scalar(
            "SELECT MAX(version) FROM function_versions WHERE namespace = ? AND name = ?",
        )
        .bind(f.namespace)
        .bind(f.name)
        .fetch_one(&mut *tx)
        .await?;
        let version = last.unwrap_or(0) + 1;
        sqlx::query(
            "INSERT INTO function_versions \
             (namespace, name, version, runtime, config, code, code_sha256, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(f.namespace)
        .bind(f.name)
        .bind(version)
        .bind(f.runtime)
        .bind(f.config.to_string())
        .bind(f.code)
        .bind(f.code_sha256)
        .bind(&now)
        .execute(&mut *tx)
        .await?;
        let replaced = sqlx::query(
            "UPDATE functions SET version = ?, updated_at = ? WHERE namespace = ? AND name = ?",
        )
        .bind(version)
        .bind(&now)
        .bind(f.namespace)
        .bind(f.name)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            > 0;
        if !replaced {
            sqlx::query(
                "INSERT INTO functions (namespace, name, version, created_at, updated_at) \
                 VALUES (?, ?, ?, ?, ?)",
            )
            .bind(f.namespace)
            .bind(f.name)
            .bind(version)
            .bind(&now)
            .bind(&now)
            .execute(&mut *tx)
            .await?;
        }
        let row: FunctionRow = sqlx::query_as(concat!(
            "SELECT ",
            function_columns!(),
            " WHERE f.namespace = ? AND f.name = ?"
        ))
        .bind(f.namespace)
        .bind(f.name)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((row.try_into()?, !replaced))
    }

    /// The current version of `ns/name`.
    pub async fn get_function(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<StoredFunction>, StoreError> {
        let row: Option<FunctionRow> = sqlx::query_as(concat!(
            "SELECT ",
            function_columns!(),
            " WHERE f.namespace = ? AND f.name = ?"
        ))
        .bind(namespace)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.map(StoredFunction::try_from).transpose()
    }

    /// Every function at its current version, by namespace and name.
    pub async fn list_functions(&self) -> Result<Vec<StoredFunction>, StoreError> {
        let rows: Vec<FunctionRow> = sqlx::query_as(concat!(
            "SELECT ",
            function_columns!(),
            " ORDER BY f.namespace, f.name"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(StoredFunction::try_from).collect()
    }

    /// Removes `ns/name` and all its versions. Its invocations' records stay.
    pub async fn delete_function(&self, namespace: &str, name: &str) -> Result<bool, StoreError> {
        let _w = self.writer().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let gone = sqlx::query("DELETE FROM functions WHERE namespace = ? AND name = ?")
            .bind(namespace)
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            > 0;
        sqlx::query("DELETE FROM function_versions WHERE namespace = ? AND name = ?")
            .bind(namespace)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(gone)
    }

    /// How many invocations of `ns/name` are in each state.
    pub async fn invocation_counts(
        &self,
        function: &str,
    ) -> Result<BTreeMap<String, i64>, StoreError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, COUNT(*) FROM tasks WHERE function = ? GROUP BY state")
                .bind(function)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().collect())
    }

    /// Stores an invocation: RECEIVED and PENDING, and RUNNING too when a runtime has
    /// already taken it, with their events, in one write (shared with the invocation writes
    /// made at the same moment, see [`Store::combined`]).
    pub async fn insert_invocation(
        &self,
        inv: NewInvocation<'_>,
    ) -> Result<TaskRecord, StoreError> {
        let id = inv.id;
        self.combined(Op::Insert {
            id: inv.id,
            function: inv.function.to_string(),
            version: inv.version,
            image: inv.image.to_string(),
            spec: inv.spec.to_string(),
            running: inv.running,
            container: inv.container.map(str::to_string),
        })
        .await?
        .ok_or_else(|| StoreError::Corrupt(format!("invocation {id} was not stored")))
    }

    /// PENDING → RUNNING in `container` (a runtime of `version` took the waiting
    /// invocation: a replace meanwhile sends it to the new version). `None` when it is no
    /// longer PENDING (cancelled meanwhile).
    pub async fn invocation_running(
        &self,
        id: TaskId,
        container: &str,
        version: i64,
    ) -> Result<Option<TaskRecord>, StoreError> {
        self.combined(Op::Running {
            id,
            container: container.to_string(),
            version,
        })
        .await
    }

    /// Ends an invocation (or a pipeline) that has not ended, with its result and steps.
    pub async fn finish_invocation(
        &self,
        id: TaskId,
        state: TaskState,
        outcome: &Outcome,
        result: Option<&Value>,
        steps: Option<&[TaskId]>,
    ) -> Result<Option<TaskRecord>, StoreError> {
        self.combined(Op::Finish {
            id,
            state,
            outcome: outcome.clone(),
            result: result.map(Value::to_string),
            steps: steps.map(|s| serde_json::to_string(s).unwrap_or_else(|_| "[]".into())),
        })
        .await
    }

    /// Group commit: the write joins the queue, and whoever holds the right to write next
    /// makes every queued write in one transaction. Under load many calls share one
    /// transaction (a statement costs a round trip to the database's thread, a transaction
    /// two more); alone, a write is its own transaction as before. A batch that fails is
    /// made again one write at a time, so one bad write fails only itself.
    async fn combined(&self, op: Op) -> Result<Option<TaskRecord>, StoreError> {
        let (reply, done) = oneshot::channel();
        self.queued.push(op, reply);
        {
            let _w = self.write.lock().await;
            let batch = self.queued.take();
            if !batch.is_empty() {
                self.writes
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.run_batch(batch).await;
            }
        }
        done.await
            .map_err(|_| StoreError::Corrupt("a queued write was dropped".into()))?
    }

    async fn run_batch(&self, batch: Vec<(Op, Reply)>) {
        if batch.len() > 1 {
            match self.apply_all(batch.iter().map(|(op, _)| op)).await {
                Ok(results) => {
                    for ((_, reply), r) in batch.into_iter().zip(results) {
                        let _ = reply.send(Ok(r));
                    }
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "a batch of writes failed; making them one by one")
                }
            }
        }
        for (op, reply) in batch {
            let r = self.apply_all(std::iter::once(&op)).await;
            let _ = reply.send(r.and_then(|mut v| {
                v.pop()
                    .ok_or_else(|| StoreError::Corrupt("a write gave no result".into()))
            }));
        }
    }

    /// Makes `ops` in one transaction, then publishes their events in seq order.
    async fn apply_all<'o>(
        &self,
        ops: impl Iterator<Item = &'o Op>,
    ) -> Result<Vec<Option<TaskRecord>>, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let mut results = Vec::new();
        let mut changes = Vec::new();
        for op in ops {
            results.push(Self::apply(&mut tx, op, &mut changes).await?);
        }
        // Every event of the batch in one statement.
        let events = Self::events_in(&mut tx, changes).await?;
        self.commit_and_publish(tx, events).await?;
        Ok(results)
    }

    /// Makes one write's change to `tasks`; the state changes it made (the record as each
    /// saw it, the state, when) go to `changes`, for their events.
    async fn apply(
        tx: &mut super::Tx<'_>,
        op: &Op,
        changes: &mut Vec<(TaskRecord, TaskState, String)>,
    ) -> Result<Option<TaskRecord>, StoreError> {
        let now = now_rfc3339();
        match op {
            Op::Insert {
                id,
                function,
                version,
                image,
                spec,
                running,
                container,
            } => {
                // The row goes in in its last state and the events in one statement: every
                // statement is a round trip to the database's thread.
                let last = if *running {
                    TaskState::Running
                } else {
                    TaskState::Pending
                };
                let row: TaskRow = sqlx::query_as(concat!(
                    "INSERT INTO tasks (id, task_name, state, image, priority, spec, created_at, \
                     function, function_version, started_at, container_id, container_state) \
                     VALUES (?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, \
                     CASE WHEN ? IS NULL THEN NULL ELSE 'ready' END) RETURNING ",
                    columns!()
                ))
                .bind(id.to_string())
                .bind(function)
                .bind(last.as_str())
                .bind(image)
                .bind(spec)
                .bind(&now)
                .bind(function)
                .bind(version)
                .bind(running.then_some(&now))
                .bind(container)
                .bind(container)
                .fetch_one(&mut **tx)
                .await?;
                let record = TaskRecord::try_from(row)?;
                // The record as each event saw it.
                let mut received = record.clone();
                received.state = TaskState::Received;
                received.started_at = None;
                received.container = None;
                let mut pending = received.clone();
                pending.state = TaskState::Pending;
                changes.push((received, TaskState::Received, now.clone()));
                changes.push((pending, TaskState::Pending, now.clone()));
                if *running {
                    changes.push((record.clone(), TaskState::Running, now.clone()));
                }
                Ok(Some(record))
            }
            Op::Running {
                id,
                container,
                version,
            } => {
                let row: Option<TaskRow> = sqlx::query_as(concat!(
                    "UPDATE tasks SET state = 'RUNNING', started_at = ?, container_id = ?, \
                         container_state = 'ready', function_version = ? \
                         WHERE id = ? AND state = 'PENDING' RETURNING ",
                    columns!()
                ))
                .bind(&now)
                .bind(container)
                .bind(version)
                .bind(id.to_string())
                .fetch_optional(&mut **tx)
                .await?;
                Self::changed(row, TaskState::Running, now, changes)
            }
            Op::Finish {
                id,
                state,
                outcome,
                result,
                steps,
            } => {
                let row: Option<TaskRow> = sqlx::query_as(concat!(
                    "UPDATE tasks SET state = ?, finished_at = ?, exit_code = ?, stdout = ?, \
                         stderr = ?, output_truncated = ?, error = ?, result = ?, \
                         steps = COALESCE(?, steps), started_at = COALESCE(started_at, ?) \
                         WHERE id = ? AND state IN ('RECEIVED', 'PENDING', 'STARTING', 'RUNNING') \
                         RETURNING ",
                    columns!()
                ))
                .bind(state.as_str())
                .bind(&now)
                .bind(outcome.exit_code)
                .bind(&outcome.stdout)
                .bind(&outcome.stderr)
                .bind(outcome.output_truncated)
                .bind(&outcome.error)
                .bind(result)
                .bind(steps)
                .bind(&now)
                .bind(id.to_string())
                .fetch_optional(&mut **tx)
                .await?;
                Self::changed(row, *state, now, changes)
            }
        }
    }

    /// The record of a row an UPDATE … RETURNING changed (none: it was not in a state the
    /// change starts from), its change noted for its event.
    fn changed(
        row: Option<TaskRow>,
        state: TaskState,
        at: String,
        changes: &mut Vec<(TaskRecord, TaskState, String)>,
    ) -> Result<Option<TaskRecord>, StoreError> {
        let Some(row) = row else { return Ok(None) };
        let record = TaskRecord::try_from(row)?;
        changes.push((record.clone(), state, at));
        Ok(Some(record))
    }

    /// The event rows of `changes`, written by one statement, in seq order.
    async fn events_in(
        tx: &mut super::Tx<'_>,
        changes: Vec<(TaskRecord, TaskState, String)>,
    ) -> Result<Vec<crate::events::StateEvent>, StoreError> {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        let mut summaries = Vec::with_capacity(changes.len());
        for (task, _, _) in &changes {
            summaries.push(
                serde_json::to_value(crate::events::TaskSummary::from(task)).map_err(|e| {
                    StoreError::Corrupt(format!("summary of task {}: {e}", task.id))
                })?,
            );
        }
        let mut sql = String::from("INSERT INTO events (task_id, state, at, task) VALUES ");
        sql.push_str(&vec!["(?, ?, ?, ?)"; changes.len()].join(", "));
        sql.push_str(" RETURNING seq, task_id, state");
        // Audited: `sql` is fixed text and placeholders; every value is bound.
        let mut q = sqlx::query_as::<_, (i64, String, String)>(sqlx::AssertSqlSafe(sql));
        for ((task, state, at), summary) in changes.iter().zip(&summaries) {
            q = q
                .bind(task.id.to_string())
                .bind(state.as_str())
                .bind(at.as_str())
                .bind(summary.to_string());
        }
        let mut rows = q.fetch_all(&mut **tx).await?;
        let mut events = Vec::with_capacity(changes.len());
        for ((task, state, at), summary) in changes.into_iter().zip(summaries) {
            // RETURNING's order is not promised: each row is found by its task and state.
            let id = task.id.to_string();
            let i = rows
                .iter()
                .position(|(_, t, st)| *t == id && st == state.as_str())
                .ok_or_else(|| {
                    StoreError::Corrupt(format!("no seq for the {state} event of {id}"))
                })?;
            let (seq, _, _) = rows.swap_remove(i);
            events.push(crate::events::StateEvent {
                seq,
                task_id: task.id,
                state,
                wire: crate::events::state_wire(seq, task.id, state, &at, &summary),
                task,
            });
        }
        // Published in seq order, as every other change's events are.
        events.sort_by_key(|e| e.seq);
        Ok(events)
    }

    /// Invocations and pipelines a previous run left unended: those that waited come back to
    /// be run; those that ran are reported.
    pub async fn unended_invocations(&self) -> Result<Vec<TaskRecord>, StoreError> {
        let rows: Vec<TaskRow> = sqlx::query_as(concat!(
            "SELECT ",
            columns!(),
            " FROM tasks WHERE function IS NOT NULL \
             AND state IN ('RECEIVED', 'PENDING', 'STARTING', 'RUNNING') ORDER BY num"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(TaskRecord::try_from).collect()
    }

    /// What the newest ended invocations of `function` that printed anything printed, newest
    /// first (only task `task`, and only those ended at `since` or later, when given),
    /// reading only what a tail of `chars` characters needs: at most `limit` of them, none
    /// wholly older than the newest `chars` characters, and each stream cut to its last
    /// `chars` characters; so about three times `chars` at most, however much they printed.
    pub async fn function_log_tail(
        &self,
        function: &str,
        task: Option<TaskId>,
        since: Option<&str>,
        limit: u32,
        chars: u32,
    ) -> Result<Vec<LoggedTask>, StoreError> {
        // `newer`: how much the newer ones printed; the contents are read only for the rows
        // kept, and cut (a negative substr start counts from the end).
        let rows: Vec<(String, Option<String>, String, String)> = sqlx::query_as(
            "SELECT t.id, t.finished_at, substr(t.stdout, -?1), substr(t.stderr, -?1) \
             FROM tasks t JOIN (SELECT num, SUM(len) OVER (ORDER BY num DESC) - len AS newer \
             FROM (SELECT num, length(stdout) + length(stderr) AS len FROM tasks \
             WHERE function = ?2 AND finished_at IS NOT NULL AND (stdout != '' OR stderr != '') \
             AND (?4 IS NULL OR id = ?4) AND (?5 IS NULL OR finished_at >= ?5) \
             ORDER BY num DESC LIMIT ?3)) w ON t.num = w.num \
             WHERE w.newer < ?1 ORDER BY t.num DESC",
        )
        .bind(i64::from(chars))
        .bind(function)
        .bind(i64::from(limit))
        .bind(task.map(|t| t.to_string()))
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(id, at, stdout, stderr)| {
                Ok(LoggedTask {
                    task_id: id
                        .parse()
                        .map_err(|_| StoreError::Corrupt(format!("task id {id}")))?,
                    at: at.unwrap_or_default(),
                    stdout,
                    stderr,
                })
            })
            .collect()
    }

    /// Sets a sealed secret.
    pub async fn put_secret(
        &self,
        name: &str,
        nonce: &[u8],
        sealed: &[u8],
    ) -> Result<(), StoreError> {
        let _w = self.writer().await;
        sqlx::query(
            "INSERT INTO secrets (name, nonce, sealed, updated_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (name) DO UPDATE SET nonce = excluded.nonce, sealed = excluded.sealed, \
             updated_at = excluded.updated_at",
        )
        .bind(name)
        .bind(nonce)
        .bind(sealed)
        .bind(now_rfc3339())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A sealed secret: (nonce, sealed bytes).
    pub async fn get_secret(&self, name: &str) -> Result<Option<(Vec<u8>, Vec<u8>)>, StoreError> {
        Ok(
            sqlx::query_as("SELECT nonce, sealed FROM secrets WHERE name = ?")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    pub async fn delete_secret(&self, name: &str) -> Result<bool, StoreError> {
        let _w = self.writer().await;
        let done = sqlx::query("DELETE FROM secrets WHERE name = ?")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}
