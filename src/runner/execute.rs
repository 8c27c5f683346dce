//! Running one claimed task: find or make its container, place its files, run its command
//! through the container's agent, and record how it ended. Timeout, ttl and cancel end the
//! run by killing the container, which is the one way to stop a process tree for sure (a
//! command may leave its process group); in a container lent to the task, timeout and cancel
//! first try killing just its process group, so the others in it live on.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::containers::{Kept, Key};
use super::spool::{self, Spool};
use super::{terminal_for_exit, Runner};
use crate::agent::{self, Agent, AgentMount, ExecResult, JobRequest};
use crate::docker::{ContainerSpec, Hardening, LABEL_BOOT, LABEL_INSTANCE, LABEL_TASK};
use crate::model::{ContainerState, Locality, Outcome, TaskId, TaskRecord, TaskState};
use crate::resources::{self, FetchLimits};
use crate::spec::{self, ParseContext, TaskSpec};

/// Why a run stopped early.
enum Stop {
    Cancelled,
    /// The command printed past `--max-output-bytes`.
    Overflow,
    Shutdown,
    Timeout(u64),
    Ttl(u64),
}

/// The container a task runs in.
struct Placement {
    container: String,
    agent: Arc<Agent>,
    /// Where the command runs: the spec's `pwd`, else the image's WORKDIR.
    workdir: String,
    /// Whether it outlives the task.
    keep: bool,
    /// Lent to this task (a hit): others may be running in it too. A lent or kept container
    /// is named by other tasks' records too.
    lent: bool,
    /// When the container's life (`ttl`) ends.
    expires_at: Instant,
    /// For `POST /fn/{id}`: whether the container asked for was there.
    locality: Option<Locality>,
    ttl: u64,
}

impl Runner {
    pub(super) async fn execute(&self, task: TaskRecord, cancel: CancellationToken) {
        let id = task.id;
        let (state, outcome, container_state, discard) = match self.run(&task, &cancel).await {
            Ok(done) => done,
            Err(message) => {
                let stop_state = if cancel.is_cancelled() && !self.shutdown.is_cancelled() {
                    TaskState::Cancelled
                } else {
                    TaskState::Failed
                };
                self.cleanup_task_containers(id).await;
                let outcome = Outcome {
                    error: Some(message),
                    ..Outcome::default()
                };
                // A container this task was lent (a hit) lives on; one it made is gone.
                let lent = match self.store.get(id).await {
                    Ok(Some(r)) => r.container.is_some_and(|c| self.containers.is_kept(&c.id)),
                    _ => false,
                };
                let container_state = (!lent).then_some(ContainerState::Removed);
                (stop_state, outcome, container_state, None)
            }
        };
        // A task that never had a container shows none: the record pairs the state with an
        // id, so no extra read is needed to leave it out.
        match self
            .store
            .finish(id, state, &outcome, container_state)
            .await
        {
            Ok(_) => {}
            Err(e) => tracing::error!(task = %id, error = %e, "could not record the end of a task"),
        }
        // The container goes after the task's end is recorded (and answered): the removal is
        // tens of ms of the engine's time that nobody needs to wait for, and a server killed
        // in between must find the container, and so the job's end, at its restart. It still
        // holds the task's slot, so the engine never has more than --max-concurrent
        // containers of ours being made, run or removed.
        match discard {
            Some(Discard::Own(cid)) => self.remove_or_retry(&cid).await,
            // Other records name it too: each must say it is gone.
            Some(Discard::Shared(cid)) => self.drop_container(&cid).await,
            None => {}
        }
    }

    /// Removes any container labelled with this task: one whose creation was interrupted
    /// leaves no id behind, but it carries the label.
    async fn cleanup_task_containers(&self, id: TaskId) {
        if let Ok(ids) = self.engine.list_labelled(LABEL_TASK, &id.to_string()).await {
            for c in ids {
                if !self.containers.is_kept(&c) {
                    let _ = self.engine.remove(&c).await;
                }
            }
        }
    }

    async fn run(
        &self,
        task: &TaskRecord,
        cancel: &CancellationToken,
    ) -> Result<(TaskState, Outcome, Option<ContainerState>, Option<Discard>), String> {
        let spec = self.load_spec(task)?;
        let placement = self.place(task, &spec, cancel).await?;
        let job = self.next_job();
        let rx = self.start_job(task.id, &spec, &placement, job).await?;
        let ran = self
            .follow_job(task.id, &spec, &placement, job, rx, cancel)
            .await;
        Ok(self.settle(&spec, &placement, job, ran).await)
    }

    /// The spec as parsed at submit; parsed again from the record when it was stored before a
    /// restart (or past the budget of kept specs).
    fn load_spec(&self, task: &TaskRecord) -> Result<TaskSpec, String> {
        if let Some(spec) = self.specs.take(task.id) {
            return Ok(spec);
        }
        let reuse_image = task.reused_container_of.map(|_| task.image.as_str());
        spec::parse(
            task.spec.clone(),
            &self.policy,
            ParseContext { reuse_image },
        )
        .map_err(|e| {
            format!(
                "the stored spec is no longer valid on this server: {}",
                e.message
            )
        })
    }

    /// Records RUNNING, then has the agent start the command. The job is recorded before it
    /// starts, with the container and RUNNING, in one write: a restarted server can always
    /// ask the agent how it ended.
    async fn start_job(
        &self,
        task_id: TaskId,
        spec: &TaskSpec,
        placement: &Placement,
        job: u32,
    ) -> Result<tokio::sync::mpsc::Receiver<agent::JobEvent>, String> {
        if let Err(e) = self
            .store
            .mark_running(
                task_id,
                &placement.container,
                placement.locality,
                &format!("agent:{job}"),
            )
            .await
        {
            self.drop_or_release(placement).await;
            return Err(format!("could not record RUNNING: {e}"));
        }
        let req = JobRequest {
            argv: spec.cmd_list.clone(),
            env: spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            cwd: placement.workdir.clone(),
            stdin: spec.stdin.as_ref().map(|s| s.as_bytes().to_vec()),
            keep: u32::try_from(self.cfg.max_output_bytes).unwrap_or(u32::MAX),
            stdin_open: false,
            ends_with_process: false,
        };
        match placement.agent.start(job, &req).await {
            Ok(rx) => Ok(rx),
            Err(e) => {
                self.drop_or_release(placement).await;
                Err(format!("starting the command failed: {e}"))
            }
        }
    }

    /// Reads the job to its end (its output stored as it comes), or ends it early at its
    /// timeout, its container's ttl, a cancel or an output flood.
    async fn follow_job(
        &self,
        task_id: TaskId,
        spec: &TaskSpec,
        placement: &Placement,
        job: u32,
        mut rx: tokio::sync::mpsc::Receiver<agent::JobEvent>,
        cancel: &CancellationToken,
    ) -> Ran {
        let cid = &placement.container;
        let timeout = spec.timeout.unwrap_or(self.cfg.default_timeout);
        let run_deadline = Instant::now() + Duration::from_secs(timeout);
        let (deadline, by_ttl) = if placement.expires_at < run_deadline {
            (placement.expires_at, true)
        } else {
            (run_deadline, false)
        };
        let spool = Arc::new(Spool::new(self.cfg.max_output_bytes, (0, 0)));
        let live_output = self.output_sink(task_id, spool.clone());
        let stop_spool = CancellationToken::new();
        let spooling = tokio::spawn(spool::run(
            self.store.clone(),
            task_id,
            spool,
            stop_spool.clone(),
        ));
        let mut ran = Ran::default();
        {
            let exec = agent::collect(
                &mut rx,
                self.cfg.max_output_bytes,
                &live_output,
                &mut ran.result,
            );
            tokio::pin!(exec);
            tokio::select! {
                () = &mut exec => {}
                _ = tokio::time::sleep_until(deadline) => {
                    ran.stop = Some(if by_ttl { Stop::Ttl(placement.ttl) } else { Stop::Timeout(timeout) });
                    // A ttl is the container's own life: it goes whatever else runs in it.
                    ran.container_killed = if by_ttl {
                        self.kill_and_collect(cid, exec).await;
                        true
                    } else {
                        self.stop_job(placement, job, exec).await
                    };
                }
                _ = cancel.cancelled() => {
                    ran.stop = Some(if self.shutdown.is_cancelled() { Stop::Shutdown } else { Stop::Cancelled });
                    ran.container_killed = self.stop_job(placement, job, exec).await;
                }
            }
        }
        // The end writes the whole output; no batch may land after it.
        stop_spool.cancel();
        let _ = spooling.await;
        if ran.result.overflowed && ran.stop.is_none() {
            ran.stop = Some(Stop::Overflow);
            if placement.lent {
                // Its output is no longer read; the agent drops it until the job is gone.
                if let Err(e) = placement.agent.kill(job, 9).await {
                    tracing::warn!(container = %cid, error = %e, "kill after an output flood failed");
                }
            } else {
                ran.container_killed = true;
                if let Err(e) = self.engine.kill(cid).await {
                    tracing::warn!(container = %cid, error = %e, "kill after an output flood failed");
                }
            }
        }
        ran
    }

    /// How the run ended (asking Docker what only it knows: is the container there, did it
    /// hit its memory limit), what becomes of the container, and the task's final state.
    async fn settle(
        &self,
        spec: &TaskSpec,
        placement: &Placement,
        job: u32,
        ran: Ran,
    ) -> (TaskState, Outcome, Option<ContainerState>, Option<Discard>) {
        let cid = &placement.container;
        let Ran {
            result,
            stop,
            container_killed,
        } = ran;
        let lost = match &result.lost {
            Some(why) if self.engine.ping().await.is_err() => Some(format!(
                "the Docker engine stopped answering while the task ran ({why})"
            )),
            Some(why) => Some(format!("lost the task's container while it ran ({why})")),
            None => None,
        };
        let mut outcome = Outcome::default();
        let mut facts = Facts {
            never_ran: result.error.clone(),
            // Told to stop from outside (`docker stop`, the engine shutting down): the agent
            // passed the signal on, and the command's end is that signal's doing.
            stopped_outside: placement
                .agent
                .stopped_by()
                .filter(|_| stop.is_none() && result.exit_code != Some(0)),
            gone: false,
            oom: false,
            lost,
        };
        fill_output(&mut outcome, result);
        facts.gone = facts.lost.is_some() && !self.engine.is_running(cid).await.unwrap_or(true);
        // A command SIGKILLed by nobody we know of, in a container at its memory limit: the
        // OOM killer. Asked before the container may go.
        facts.oom = stop.is_none()
            && outcome.exit_code == Some(137)
            && self.engine.memory_limit_hit(cid).await.unwrap_or(false);
        // A killed container cannot be reused; anything not kept goes now. A container whose
        // agent we lost touch with is not lent again.
        let keep = placement.keep
            && !container_killed
            && facts.lost.is_none()
            && placement.agent.stopped_by().is_none();
        let (container_state, discard) = self.after_run(placement, job, keep).await;
        let limits = Limits {
            max_output_bytes: self.cfg.max_output_bytes,
            memory_mb: spec.limits.memory_mb.unwrap_or(self.cfg.default_memory_mb),
            command: spec.cmd_list.first().map(String::as_str).unwrap_or(""),
        };
        let state = verdict(stop, facts, &limits, &mut outcome);
        (state, outcome, Some(container_state), discard)
    }

    /// What becomes of the container once the job has ended: kept for more work, or no
    /// longer used by any task and removed once the task's end is recorded.
    async fn after_run(
        &self,
        placement: &Placement,
        job: u32,
        keep: bool,
    ) -> (ContainerState, Option<Discard>) {
        let cid = &placement.container;
        if keep {
            // The agent may forget the job now that its end is ours.
            let _ = placement.agent.ack(job).await;
        }
        if placement.keep {
            self.containers.release(cid);
        }
        if keep {
            (ContainerState::Ready, None)
        } else {
            // No task can use it any more.
            self.forget_container(cid);
            let discard = if placement.lent || placement.keep {
                Discard::Shared(cid.clone())
            } else {
                Discard::Own(cid.clone())
            };
            (ContainerState::Removed, Some(discard))
        }
    }

    /// A run that ends before its command: a kept container is handed back, another removed.
    async fn drop_or_release(&self, placement: &Placement) {
        if placement.keep {
            self.containers.release(&placement.container);
        } else {
            self.drop_container(&placement.container).await;
        }
    }

    /// Ends a running job early. In a container lent to it (where other tasks may run) only
    /// the job's process group is killed, if it then ends within 2 s; otherwise, and in a
    /// container of its own, the container is killed: the one sure way to stop a process
    /// tree that may have left its group. Returns whether the container was killed.
    async fn stop_job(
        &self,
        placement: &Placement,
        job: u32,
        mut exec: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    ) -> bool {
        if placement.lent
            && !self.shutdown.is_cancelled()
            && placement.agent.kill(job, 9).await.is_ok()
            && tokio::time::timeout(Duration::from_secs(2), exec.as_mut())
                .await
                .is_ok()
        {
            return false;
        }
        self.kill_and_collect(&placement.container, exec).await;
        true
    }

    async fn kill_and_collect(
        &self,
        cid: &str,
        exec: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    ) {
        if let Err(e) = self.engine.kill(cid).await {
            tracing::warn!(container = %cid, error = %e, "kill failed; removing instead");
            let _ = self.engine.remove(cid).await;
        }
        // The agent's stream ends with the container; what the command printed until then
        // is kept (and kept too if the stream outlasts this wait).
        let _ = tokio::time::timeout(Duration::from_secs(10), exec).await;
    }

    fn stop_message(&self, cancel: &CancellationToken) -> String {
        if self.shutdown.is_cancelled() {
            "the server shut down before the task started".into()
        } else if cancel.is_cancelled() {
            "cancelled while starting".into()
        } else {
            "stopped".into()
        }
    }

    /// A new container: its limits, labels (`label`, beside the instance and boot ones),
    /// mounts and the hardening defaults.
    fn container_spec(&self, plan: ContainerPlan<'_>, mount: AgentMount) -> ContainerSpec {
        let memory_mb = plan.limits.memory_mb.unwrap_or(self.cfg.default_memory_mb);
        let cpus = plan.limits.cpus.unwrap_or(self.cfg.default_cpus);
        let pids = plan.limits.pids.unwrap_or(self.cfg.default_pids);
        let mut labels = HashMap::new();
        labels.insert(LABEL_INSTANCE.to_string(), self.instance.clone());
        labels.insert(plan.label.0.to_string(), plan.label.1);
        labels.insert(LABEL_BOOT.to_string(), self.boot.clone());
        ContainerSpec {
            image: plan.image.to_string(),
            labels,
            working_dir: plan.working_dir,
            memory_bytes: (memory_mb as i64).saturating_mul(1 << 20),
            nano_cpus: (cpus * 1e9) as i64,
            pids: pids as i64,
            tmpfs: plan.tmpfs,
            binds: plan.binds,
            network: plan.network,
            hardening: Hardening {
                // With a read-only root, what must stay writable (and take our uploads) are
                // anonymous volumes, removed with the container.
                writable: writable_roots(plan.workdir),
                log: plan.log,
                ..self.hardening.clone()
            },
            main: agent::PATH.to_string(),
            main_bind: match mount {
                AgentMount::Bind(host) => Some(host),
                AgentMount::Upload => None,
            },
        }
    }

    /// A container for a function's runtimes (crate::functions): made with the hardening
    /// every task container gets, its files placed, started, its agent attached. Removed
    /// again when any step fails.
    pub(crate) async fn start_function_container(
        &self,
        plan: ContainerPlan<'_>,
        files: Vec<u8>,
    ) -> Result<(String, Arc<Agent>), String> {
        self.engine
            .ensure_image(plan.image)
            .await
            .map_err(|e| e.to_string())?;
        let mount = self.agent_mount();
        let uploaded = match mount {
            AgentMount::Upload => {
                let mut tar = resources::TarWriter::new();
                tar.file(agent::PATH, agent::BINARY, 0o755)
                    .and_then(|()| tar.finish())
                    .map(Some)
                    .map_err(|e| e.to_string())?
            }
            AgentMount::Bind(_) => None,
        };
        let workdir = plan.workdir.to_string();
        let cspec = self.container_spec(plan, mount);
        let (cid, switched) = self
            .create_container(cspec)
            .await
            .map_err(|e| format!("creating the container failed: {e}"))?;
        let agent_uploaded = uploaded.or(switched);
        match self
            .start_container(&cid, Some(files), agent_uploaded, &workdir)
            .await
        {
            Ok(agent) => Ok((cid, agent)),
            Err(e) => {
                self.containers.forget(&cid);
                let _ = self.engine.remove(&cid).await;
                Err(e)
            }
        }
    }

    /// Places more files (a tar) in a running function container (crate::functions), as
    /// its code was placed at its start (`workdir` stays writable under a read-only root).
    pub(crate) async fn place_function_files(
        &self,
        cid: &str,
        tar: Vec<u8>,
        workdir: &str,
    ) -> Result<(), PlaceError> {
        self.place_files_as(cid, tar, workdir).await
    }

    /// Removes a function's container (crate::functions), now or, when Docker is away,
    /// later by the reaper.
    pub(crate) async fn remove_function_container(&self, cid: &str) {
        self.forget_container(cid);
        self.remove_or_retry(cid).await;
    }

    /// Places the files (and the agent, when it is uploaded), attaches to the agent, and
    /// starts the container.
    async fn start_container(
        &self,
        cid: &str,
        files: Option<Vec<u8>>,
        agent_uploaded: Option<Vec<u8>>,
        workdir: &str,
    ) -> Result<Arc<Agent>, String> {
        let fail = |what: &str, e: &dyn std::fmt::Display| format!("{what} failed: {e}");
        if let Some(tar) = files {
            self.place_files(cid, tar, workdir)
                .await
                .map_err(|e| fail("placing the resources", &e))?;
        }
        if let Some(tar) = agent_uploaded {
            self.place_files(cid, tar, workdir)
                .await
                .map_err(|e| fail("placing the agent", &e))?;
        }
        // Attached before start, so the agent's first byte is ours.
        let attached = self
            .engine
            .attach(cid)
            .await
            .map_err(|e| fail("attaching to the container", &e))?;
        let (agent, _) = Agent::new(super::transport(attached), true);
        let agent = Arc::new(agent);
        self.containers.set_agent(cid, agent.clone());
        self.engine
            .start(cid)
            .await
            .map_err(|e| fail("starting the container", &e))?;
        Ok(agent)
    }

    /// Places the task in the kept container it asked for (a hit): its files go in; the
    /// container is handed back if that fails.
    async fn place_in_kept(
        &self,
        spec: &TaskSpec,
        (cid, kept, agent): (String, Kept, Arc<Agent>),
        keep: bool,
        limits: &FetchLimits,
        cancel: &CancellationToken,
    ) -> Result<Placement, String> {
        let workdir = spec.pwd.clone().unwrap_or_else(|| kept.workdir.clone());
        let prepared = tokio::select! {
            p = resources::prepare(spec, &workdir, &[], &self.http, limits) => p.map_err(|e| e.to_string()),
            _ = cancel.cancelled() => Err(self.stop_message(cancel)),
        };
        let prepared = prepared.inspect_err(|_| self.containers.release(&cid))?;
        if let Some(tar) = prepared.tar {
            if let Err(e) = self.place_files(&cid, tar, &workdir).await {
                self.containers.release(&cid);
                return Err(format!("placing the resources failed: {e}"));
            }
        }
        Ok(Placement {
            container: cid,
            agent,
            workdir,
            keep,
            lent: true,
            expires_at: kept.expires_at,
            locality: Some(Locality::Hit),
            ttl: spec.ttl.unwrap_or(self.cfg.default_ttl),
        })
    }

    /// Finds the container asked for (a hit) or makes a new one, and places the task's files.
    /// Waits that only read (image pull, fetches) give way to `cancel` at once; Docker calls
    /// that make something run to their end, and a cancel is honoured after them, so a
    /// container is never created behind our back.
    async fn place(
        &self,
        task: &TaskRecord,
        spec: &TaskSpec,
        cancel: &CancellationToken,
    ) -> Result<Placement, String> {
        let limits = FetchLimits {
            max_fetch_bytes: self.cfg.max_fetch_bytes,
            max_extract_bytes: self.cfg.max_extract_bytes,
        };
        let keep_default = |hit_or_miss: bool| {
            spec.rm
                .map(|rm| !rm)
                .unwrap_or(hit_or_miss || spec.is_daemon)
        };

        if let Some(target) = task.reused_container_of {
            if let Some(found) = self.find_kept(target).await {
                return self
                    .place_in_kept(spec, found, keep_default(true), &limits, cancel)
                    .await;
            }
        }
        let locality = task.reused_container_of.map(|_| Locality::Miss);

        let image_workdir = tokio::select! {
            w = self.engine.ensure_image(&spec.image) => w.map_err(|e| e.to_string())?,
            _ = cancel.cancelled() => return Err(self.stop_message(cancel)),
        };
        let workdir = spec.pwd.clone().unwrap_or(image_workdir);
        let mount = self.agent_mount();
        let extra: Vec<(&str, &[u8], u32)> = match mount {
            AgentMount::Upload => vec![(agent::PATH, agent::BINARY, 0o755)],
            AgentMount::Bind(_) => Vec::new(),
        };
        let prepared = tokio::select! {
            p = resources::prepare(spec, &workdir, &extra, &self.http, &limits) => p.map_err(|e| e.to_string())?,
            _ = cancel.cancelled() => return Err(self.stop_message(cancel)),
        };

        let cspec = self.container_spec(
            ContainerPlan {
                label: (LABEL_TASK, task.id.to_string()),
                image: &spec.image,
                working_dir: spec.pwd.clone(),
                workdir: &workdir,
                limits: &spec.limits,
                network: spec.network,
                tmpfs: prepared.tmpfs,
                binds: prepared.binds,
                log: true,
            },
            mount,
        );
        let ttl = spec.ttl.unwrap_or(self.cfg.default_ttl);
        let expires_at = Instant::now() + Duration::from_secs(ttl);
        let (cid, agent_uploaded) = self
            .create_container(cspec)
            .await
            .map_err(|e| format!("creating the container failed: {e}"))?;
        let keep = keep_default(locality.is_some());
        let setup = self
            .start_container(&cid, prepared.tar, agent_uploaded, &workdir)
            .await;
        let setup = setup.and_then(|agent| match cancel.is_cancelled() {
            true => Err(self.stop_message(cancel)),
            false => Ok(agent),
        });
        let agent = match setup {
            Ok(agent) => agent,
            Err(e) => {
                self.containers.forget(&cid);
                let _ = self.engine.remove(&cid).await;
                return Err(e);
            }
        };
        if keep {
            self.containers.keep(
                &cid,
                Kept {
                    key: Key::Task(task.id),
                    workdir: workdir.clone(),
                    expires_at,
                    last_used: Instant::now(),
                    busy: 1,
                },
            );
        }
        Ok(Placement {
            container: cid,
            agent,
            workdir,
            keep,
            lent: false,
            expires_at,
            locality,
            ttl,
        })
    }

    /// Creates the container; when the engine cannot see our copy of the agent (it runs on
    /// another machine or in another filesystem), switches to uploading it, for this container
    /// (the tar returned) and every later one.
    async fn create_container(
        &self,
        mut cspec: ContainerSpec,
    ) -> Result<(String, Option<Vec<u8>>), crate::docker::DockerError> {
        match self.engine.create(&cspec).await {
            Err(e)
                if cspec.main_bind.is_some()
                    && e.to_string().contains("bind source path does not exist") =>
            {
                tracing::warn!(error = %e, "the engine cannot see the agent's file; uploading it to each container from now on");
                self.set_agent_mount(AgentMount::Upload);
                cspec.main_bind = None;
                let cid = self.engine.create(&cspec).await?;
                let mut tar = resources::TarWriter::new();
                let tar = tar
                    .file(agent::PATH, agent::BINARY, 0o755)
                    .and_then(|()| tar.finish())
                    .map_err(|e| crate::docker::DockerError::Api(e.to_string()))?;
                Ok((cid, Some(tar)))
            }
            other => Ok((other?, None)),
        }
    }

    /// Uploads a task's files: one tar at `/`, or with a read-only root one tar per writable
    /// volume (the only places Docker will unpack into then).
    async fn place_files(&self, cid: &str, tar: Vec<u8>, workdir: &str) -> Result<(), String> {
        self.place_files_as(cid, tar, workdir)
            .await
            .map_err(|e| e.to_string())
    }

    /// [`Self::place_files`], saying whether placing the same files again could work.
    async fn place_files_as(
        &self,
        cid: &str,
        tar: Vec<u8>,
        workdir: &str,
    ) -> Result<(), PlaceError> {
        let docker = |e: crate::docker::DockerError| match e {
            crate::docker::DockerError::Api(why) => PlaceError::Refused(why),
            other => PlaceError::Unavailable(other.to_string()),
        };
        if !self.hardening.read_only_root {
            return self.engine.upload(cid, tar).await.map_err(docker);
        }
        let roots: Vec<String> = writable_roots(workdir);
        let parts = resources::split_by_root(&tar, &roots).map_err(PlaceError::Refused)?;
        for (root, part) in parts {
            self.engine
                .upload_at(cid, &root, part)
                .await
                .map_err(docker)?;
        }
        Ok(())
    }

    /// The kept, running container of task `target`, taken for one more task.
    async fn find_kept(&self, target: TaskId) -> Option<(String, Kept, Arc<Agent>)> {
        // The container the task made is found by its key; one it was lent (it ran in another
        // task's kept container) through its record.
        let (cid, kept) = match self.containers.acquire_key(&Key::Task(target)) {
            Some(found) => found,
            None => {
                let record = self.store.get(target).await.ok().flatten()?;
                let cid = record.container?.id;
                let kept = self.containers.acquire(&cid)?;
                (cid, kept)
            }
        };
        // A live connection to its agent says it runs; without one, Docker is asked.
        match self.agent_for(&cid).await {
            Ok(agent) => Some((cid, kept, agent)),
            Err(_) => {
                // Gone from under us (removed from outside, or died): forget it.
                self.containers.release(&cid);
                self.drop_container(&cid).await;
                None
            }
        }
    }
}

/// What a new container is made of, beyond the server's defaults.
pub(crate) struct ContainerPlan<'a> {
    /// A label of its own: the task it is for, or the function.
    pub label: (&'static str, String),
    pub image: &'a str,
    /// The working directory asked for (else the image's).
    pub working_dir: Option<String>,
    /// The working directory it will have.
    pub workdir: &'a str,
    pub limits: &'a spec::Limits,
    pub network: bool,
    pub tmpfs: HashMap<String, String>,
    pub binds: Vec<String>,
    /// Whether the engine keeps a log of what it prints (`Hardening::log`).
    pub log: bool,
}

/// A container to remove once the task's end is recorded.
enum Discard {
    /// Only this task's record names it.
    Own(String),
    /// Kept or lent: other records name it too.
    Shared(String),
}

/// How a job's run went.
#[derive(Default)]
struct Ran {
    result: ExecResult,
    stop: Option<Stop>,
    container_killed: bool,
}

/// What is known of a run that ended without a stop of ours.
struct Facts {
    /// Why the command never ran (not found, bad working directory).
    never_ran: Option<String>,
    /// The signal the container was told to stop with from outside.
    stopped_outside: Option<u32>,
    /// The connection to the container was lost: why.
    lost: Option<String>,
    /// ... and the container is gone (removed from outside).
    gone: bool,
    /// SIGKILLed at the container's memory limit.
    oom: bool,
}

/// What the messages of [`verdict`] quote.
struct Limits<'a> {
    max_output_bytes: usize,
    memory_mb: u64,
    command: &'a str,
}

/// A run's final state, with the error it reports set in `outcome`.
fn verdict(stop: Option<Stop>, facts: Facts, limits: &Limits, outcome: &mut Outcome) -> TaskState {
    let (state, error) = match stop {
        Some(Stop::Cancelled) => (TaskState::Cancelled, "cancelled while running".to_string()),
        Some(Stop::Shutdown) => (
            TaskState::Failed,
            "the server shut down while the task ran".to_string(),
        ),
        Some(Stop::Overflow) => (
            TaskState::Failed,
            format!(
                "the output passed the server's cap of {} bytes many times over; the task was killed",
                limits.max_output_bytes
            ),
        ),
        Some(Stop::Timeout(s)) => (TaskState::Expired, format!("timed out after {s} s")),
        Some(Stop::Ttl(s)) => (
            TaskState::Expired,
            format!("the container's ttl of {s} s passed"),
        ),
        None => match facts {
            Facts { lost: Some(_), gone: true, .. } => (
                TaskState::Failed,
                "the task's container was removed from outside while it ran".to_string(),
            ),
            Facts { lost: Some(e), .. } => (TaskState::Failed, e),
            Facts { oom: true, .. } => (
                TaskState::Failed,
                format!(
                    "out of memory: the task passed its memory limit of {} MiB and was killed",
                    limits.memory_mb
                ),
            ),
            Facts { stopped_outside: Some(signal), .. } => (
                TaskState::Failed,
                format!(
                    "the container was told to stop from outside (signal {signal}: `docker stop`, or the engine shutting down) while the task ran"
                ),
            ),
            Facts { never_ran: Some(why), .. } => (
                TaskState::Failed,
                format!("could not run `{}`: {why}", limits.command),
            ),
            _ => return terminal_for_exit(outcome.exit_code),
        },
    };
    outcome.error = Some(error);
    state
}

/// What stays writable under `--read-only-root`.
/// Why files could not be placed in a running container.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PlaceError {
    /// The files were refused (a path outside the writable roots, an archive Docker would
    /// not unpack there): placing them again would fail again.
    #[error("{0}")]
    Refused(String),
    /// Docker did not answer, or the container is gone: later may work.
    #[error("{0}")]
    Unavailable(String),
}

/// Where files can be placed in a container with a read-only root (`workdir` is its
/// working directory).
pub(crate) fn writable_roots(workdir: &str) -> Vec<String> {
    let mut roots: Vec<String> = ["/tmp", "/.ufaas", workdir]
        .into_iter()
        .filter(|p| *p != "/")
        .map(str::to_string)
        .collect();
    roots.dedup();
    roots
}

fn fill_output(outcome: &mut Outcome, r: ExecResult) {
    outcome.exit_code = r.exit_code;
    outcome.stdout = String::from_utf8_lossy(&r.stdout).into_owned();
    outcome.stderr = String::from_utf8_lossy(&r.stderr).into_owned();
    outcome.output_truncated = r.truncated;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts {
        Facts {
            never_ran: None,
            stopped_outside: None,
            lost: None,
            gone: false,
            oom: false,
        }
    }

    fn judge(
        stop: Option<Stop>,
        facts: Facts,
        exit_code: Option<i64>,
    ) -> (TaskState, Option<String>) {
        let limits = Limits {
            max_output_bytes: 10,
            memory_mb: 64,
            command: "sh",
        };
        let mut outcome = Outcome {
            exit_code,
            ..Outcome::default()
        };
        let state = verdict(stop, facts, &limits, &mut outcome);
        (state, outcome.error)
    }

    #[test]
    fn a_stop_of_ours_decides_before_what_the_command_did() {
        let (st, e) = judge(Some(Stop::Timeout(5)), facts(), Some(0));
        assert_eq!(
            (st, e.as_deref()),
            (TaskState::Expired, Some("timed out after 5 s"))
        );
        let (st, _) = judge(Some(Stop::Cancelled), facts(), None);
        assert_eq!(st, TaskState::Cancelled);
        let (st, e) = judge(Some(Stop::Overflow), facts(), Some(0));
        assert_eq!(st, TaskState::Failed);
        assert!(e.is_some_and(|e| e.contains("cap of 10 bytes")));
    }

    #[test]
    fn without_a_stop_the_facts_then_the_exit_code_decide() {
        assert_eq!(judge(None, facts(), Some(0)), (TaskState::Finished, None));
        assert_eq!(judge(None, facts(), Some(3)), (TaskState::Failed, None));
        let gone = Facts {
            lost: Some("x".into()),
            gone: true,
            ..facts()
        };
        let (st, e) = judge(None, gone, None);
        assert_eq!(st, TaskState::Failed);
        assert!(e.is_some_and(|e| e.contains("removed from outside")));
        let oom = Facts {
            oom: true,
            stopped_outside: Some(15),
            ..facts()
        };
        let (_, e) = judge(None, oom, Some(137));
        assert!(
            e.is_some_and(|e| e.contains("64 MiB")),
            "the OOM killer before a stop"
        );
        let missing = Facts {
            never_ran: Some("not found".into()),
            ..facts()
        };
        let (_, e) = judge(None, missing, Some(127));
        assert_eq!(e.as_deref(), Some("could not run `sh`: not found"));
    }
}
