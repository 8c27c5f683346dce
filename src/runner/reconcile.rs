//! After a restart: settle what the previous run left unfinished. A task still STARTING never
//! began its command, so it is queued again. A RUNNING one is picked up again from its
//! container's agent: the agent replays the output the record does not have yet (it keeps
//! each job's output until the job is acknowledged), then the job goes on live to its end,
//! which is recorded with its real exit code and its whole output. A task whose container is
//! gone fails saying so. (An exec recorded by a version before the agent is asked of Docker;
//! its output is lost and the record says so.) Containers of the previous run that no
//! watched task needs are removed. While Docker does not answer, this retries, so no task
//! stays unfinished for good.

use std::collections::HashSet;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::spool::{self, Spool};
use super::{Runner, Running};
use crate::agent::{self, Agent, ExecResult};
use crate::docker::{DockerError, LABEL_BOOT, LABEL_INSTANCE};
use crate::model::{ContainerState, Outcome, TaskRecord, TaskState};
use crate::spec::{self, ParseContext};

const RESTARTED: &str = "the server restarted while the task ran; its output was not captured";

impl Runner {
    pub(super) async fn reconcile(self: std::sync::Arc<Self>, unfinished: Vec<TaskRecord>) {
        loop {
            match self.reconcile_once(&unfinished).await {
                Ok(()) => return,
                Err(e) => tracing::warn!(error = %e, "cannot reconcile with Docker yet; retrying"),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                _ = self.shutdown.cancelled() => return,
            }
        }
    }

    async fn reconcile_once(
        self: &std::sync::Arc<Self>,
        unfinished: &[TaskRecord],
    ) -> Result<(), String> {
        let containers = self
            .engine
            .list_labelled_with(LABEL_INSTANCE, &self.instance)
            .await
            .map_err(|e| e.to_string())?;
        let mut needed: HashSet<String> = HashSet::new();
        for task in unfinished {
            if task.state == TaskState::Starting {
                self.store
                    .requeue(task.id)
                    .await
                    .map_err(|e| e.to_string())?;
                self.wake.notify_one();
                continue;
            }
            let (Some(container), Some(exec_id)) = (&task.container, &task.exec_id) else {
                self.end(
                    task,
                    TaskState::Failed,
                    None,
                    "the server stopped while the task ran",
                )
                .await;
                continue;
            };
            if let Some(job) = exec_id
                .strip_prefix("agent:")
                .and_then(|j| j.parse::<u32>().ok())
            {
                let agent = match self.agent_for(&container.id).await {
                    Ok(a) => a,
                    Err(DockerError::NoSuchContainer(_)) => {
                        self.end(
                            task,
                            TaskState::Failed,
                            None,
                            "the task's container is gone (removed while the server was down)",
                        )
                        .await;
                        continue;
                    }
                    Err(e) => return Err(e.to_string()),
                };
                needed.insert(container.id.clone());
                let cancel = self.shutdown.child_token();
                self.running().insert(
                    task.id,
                    Running {
                        cancel: cancel.clone(),
                    },
                );
                let me = self.clone();
                let task = task.clone();
                self.tracker.spawn(async move {
                    let id = task.id;
                    me.resume(task, agent, job, cancel).await;
                    me.running().remove(&id);
                });
                continue;
            }
            match self.job_state(&container.id, exec_id).await? {
                Some((false, code)) => {
                    let state = super::terminal_for_exit(code);
                    self.end(task, state, code, RESTARTED).await;
                }
                Some((true, _)) => {
                    needed.insert(container.id.clone());
                    let me = self.clone();
                    let task = task.clone();
                    let exec_id = exec_id.clone();
                    let cancel = self.shutdown.child_token();
                    self.running().insert(
                        task.id,
                        Running {
                            cancel: cancel.clone(),
                        },
                    );
                    self.tracker.spawn(async move {
                        let id = task.id;
                        me.watch(task, exec_id, cancel).await;
                        me.running().remove(&id);
                    });
                }
                None => {
                    self.end(
                        task,
                        TaskState::Failed,
                        None,
                        "the task's container is gone (removed while the server was down)",
                    )
                    .await;
                }
            }
        }
        for (id, labels) in containers {
            let ours_now = labels.get(LABEL_BOOT).is_some_and(|b| *b == self.boot);
            if !ours_now && !needed.contains(&id) {
                self.drop_container(&id).await;
            }
        }
        Ok(())
    }

    /// How a recorded command stands: `Some((running, exit code))`, or `None` when nothing
    /// knows it any more (its container is gone).
    async fn job_state(
        &self,
        cid: &str,
        exec_ref: &str,
    ) -> Result<Option<(bool, Option<i64>)>, String> {
        let Some(job) = exec_ref.strip_prefix("agent:") else {
            return self
                .engine
                .exec_state(exec_ref)
                .await
                .map_err(|e| e.to_string());
        };
        let Ok(job) = job.parse::<u32>() else {
            return Ok(None);
        };
        let agent = match self.agent_for(cid).await {
            Ok(a) => a,
            Err(DockerError::NoSuchContainer(_)) => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let known = agent
            .query(None, Duration::from_secs(5))
            .await
            .map_err(|e| e.to_string())?;
        Ok(known.get(&job).map(|code| (code.is_none(), *code)))
    }

    /// The time a re-attached task has left: its timeout less what it ran before.
    fn time_left(&self, task: &TaskRecord) -> (u64, Instant) {
        let reuse_image = task.reused_container_of.map(|_| task.image.as_str());
        let timeout = spec::parse(
            task.spec.clone(),
            &self.policy,
            ParseContext { reuse_image },
        )
        .ok()
        .and_then(|s| s.timeout)
        .unwrap_or(self.cfg.default_timeout);
        let ran_for = task
            .started_at
            .as_deref()
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .map(|t| {
                (chrono::Utc::now() - t.with_timezone(&chrono::Utc))
                    .to_std()
                    .unwrap_or_default()
            })
            .unwrap_or_default();
        let deadline = Instant::now() + Duration::from_secs(timeout).saturating_sub(ran_for);
        (timeout, deadline)
    }

    /// Picks a job of the previous run up again: the agent replays what the record lacks,
    /// then the job goes on live (stored as it comes) until it ends, its time is up, or it
    /// is cancelled.
    async fn resume(
        &self,
        task: TaskRecord,
        agent: std::sync::Arc<Agent>,
        job: u32,
        cancel: CancellationToken,
    ) {
        let Some(cid) = task.container.as_ref().map(|c| c.id.clone()) else {
            return;
        };
        let cap = self.cfg.max_output_bytes;
        let stored = task.output_stored;
        let spool = std::sync::Arc::new(Spool::new(cap, stored));
        let sink = self.output_sink(task.id, spool.clone());
        let (timeout, deadline) = self.time_left(&task);
        let mut result = ExecResult::default();
        let mut stop = None;
        match agent.replay(job, stored).await {
            Err(e) => result.lost = Some(e.to_string()),
            Ok(mut rx) => {
                let stop_spool = CancellationToken::new();
                let spooling = tokio::spawn(spool::run(
                    self.store.clone(),
                    task.id,
                    spool,
                    stop_spool.clone(),
                ));
                let room = cap.saturating_sub(usize::try_from(stored.0).unwrap_or(usize::MAX));
                let room_err = cap.saturating_sub(usize::try_from(stored.1).unwrap_or(usize::MAX));
                {
                    let exec = agent::collect_each(&mut rx, (room, room_err), &sink, &mut result);
                    tokio::pin!(exec);
                    tokio::select! {
                        () = &mut exec => {}
                        _ = tokio::time::sleep_until(deadline) => {
                            stop = Some((TaskState::Expired, format!("timed out after {timeout} s")));
                        }
                        _ = cancel.cancelled() => {
                            stop = Some(if self.shutdown.is_cancelled() {
                                (TaskState::Failed, "the server shut down while the task ran".to_string())
                            } else {
                                (TaskState::Cancelled, "cancelled while running".to_string())
                            });
                        }
                    }
                }
                stop_spool.cancel();
                let _ = spooling.await;
            }
        }
        let printed_past_cap = result.printed.is_some_and(|(o, e)| o.max(e) > cap as u64);
        let mut outcome = Outcome {
            exit_code: result.exit_code,
            stdout: task.stdout.clone() + &String::from_utf8_lossy(&result.stdout),
            stderr: task.stderr.clone() + &String::from_utf8_lossy(&result.stderr),
            output_truncated: task.output_truncated || result.truncated || printed_past_cap,
            error: None,
        };
        let state = match (stop, &result.lost) {
            (Some((state, why)), _) => {
                outcome.exit_code = None;
                outcome.error = Some(why);
                state
            }
            (None, Some(why)) => {
                outcome.error = Some(format!(
                    "lost the task's container while it ran, across a restart of the server ({why})"
                ));
                TaskState::Failed
            }
            (None, None) => match result.error.take() {
                Some(why) => {
                    outcome.error = Some(format!("could not run the command: {why}"));
                    TaskState::Failed
                }
                None => super::terminal_for_exit(result.exit_code),
            },
        };
        self.finish_then_drop(&task, &cid, state, &outcome).await;
    }

    /// Records the end of a task picked up after a restart, then removes its container.
    /// Only in that order: a server killed in between finds the container, and the job's end
    /// in it, at its next start.
    async fn finish_then_drop(
        &self,
        task: &TaskRecord,
        cid: &str,
        state: TaskState,
        outcome: &Outcome,
    ) {
        if let Err(e) = self
            .store
            .finish(task.id, state, outcome, Some(ContainerState::Removed))
            .await
        {
            tracing::error!(task = %task.id, error = %e, "could not record a re-attached task");
        }
        self.drop_container(cid).await;
    }

    async fn end(&self, task: &TaskRecord, state: TaskState, exit_code: Option<i64>, why: &str) {
        let outcome = Outcome {
            exit_code,
            error: (state != TaskState::Finished).then(|| why.to_string()),
            ..Outcome::default()
        };
        let container_state = task.container.as_ref().map(|_| ContainerState::Removed);
        if let Err(e) = self
            .store
            .finish(task.id, state, &outcome, container_state)
            .await
        {
            tracing::error!(task = %task.id, error = %e, "could not record a reconciled task");
        }
    }

    /// Follows a command that outlived the previous run until it ends, its time is up, or it
    /// is cancelled.
    async fn watch(&self, task: TaskRecord, exec_id: String, cancel: CancellationToken) {
        let Some(cid) = task.container.as_ref().map(|c| c.id.clone()) else {
            return;
        };
        let (timeout, deadline) = self.time_left(&task);
        let mut poll = tokio::time::interval(Duration::from_millis(200));
        let (state, code, why) = loop {
            tokio::select! {
                _ = poll.tick() => match self.job_state(&cid, &exec_id).await {
                    Ok(Some((true, _))) => {}
                    Ok(Some((false, code))) => break (super::terminal_for_exit(code), code, RESTARTED.to_string()),
                    Ok(None) => break (TaskState::Failed, None, "the task's container is gone".to_string()),
                    Err(e) => tracing::debug!(error = %e, "polling a re-attached exec"),
                },
                _ = tokio::time::sleep_until(deadline) => {
                    break (TaskState::Expired, None, format!("timed out after {timeout} s"));
                }
                _ = cancel.cancelled() => {
                    let (st, why) = if self.shutdown.is_cancelled() {
                        (TaskState::Failed, "the server shut down while the task ran")
                    } else {
                        (TaskState::Cancelled, "cancelled while running")
                    };
                    break (st, None, why.to_string());
                }
            }
        };
        let outcome = Outcome {
            exit_code: code,
            error: (state != TaskState::Finished).then_some(why),
            ..Outcome::default()
        };
        self.finish_then_drop(&task, &cid, state, &outcome).await;
    }
}
