//! The engine behind the HTTP layer: takes commands (submit, update, cancel, remove, purge),
//! keeps the queue (at most `--max-concurrent` running, higher priority first), runs each task
//! in a container ([`execute`]) and keeps containers for reuse ([`keep`]).

mod containers;
mod error;
mod execute;
mod reconcile;
mod specs;
mod spool;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{broadcast, Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::agent::{Agent, AgentMount};
use crate::config::ServeConfig;
use crate::docker::{DockerError, Engine, Hardening, LABEL_INSTANCE};
use crate::error::{ApiError, Code};
use crate::events::StateEvent;
use crate::model::{ContainerState, Stream, TaskId, TaskRecord, TaskState};
use crate::spec::{self, ParseContext, Policy};
use crate::store::{NewTask, Store, StoreError, UpdateResult};

use containers::Containers;
pub use error::RunnerError;
pub(crate) use execute::{writable_roots, ContainerPlan, PlaceError};

/// Bytes of parsed specs kept for queued tasks (past it, a spec is parsed again when its task
/// runs). Small: a deep queue of small specs is cheap to parse again, and the bench's 10,000
/// queued tasks grew the resident set by 35 MiB under a 64 MiB budget.
const SPEC_BUDGET: usize = 8 << 20;

/// A running task's handle: cancelling it kills the task's process.
struct Running {
    cancel: CancellationToken,
}

pub struct Runner {
    store: Store,
    hardening: Hardening,
    engine: Arc<Engine>,
    cfg: ServeConfig,
    policy: Policy,
    instance: String,
    http: reqwest::Client,
    wake: Notify,
    /// Held while a task is claimed and registered, and while a cancel looks for it, so a
    /// cancel never sees a STARTING task that has no handle yet.
    claim_lock: tokio::sync::Mutex<()>,
    running: Mutex<HashMap<TaskId, Running>>,
    /// What the server knows of its containers: agents, kept ones, failed removals.
    containers: Containers,
    /// Specs parsed at submit, until their task runs.
    specs: specs::Specs,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    /// This start's id, on every container it makes (label `ufaas.boot`).
    boot: String,
    /// How new containers get the agent.
    agent_mount: RwLock<AgentMount>,
    /// Job ids for the agents; random start, so a restarted server's ids do not meet the
    /// previous run's in a container that outlived it.
    next_job: AtomicU32,
}

/// What `DELETE /fn/{id}` may do beyond cancelling.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeleteOptions {
    pub remove_container: bool,
    pub purge: bool,
}

impl Runner {
    pub fn new(
        store: Store,
        engine: Arc<Engine>,
        cfg: ServeConfig,
        instance: String,
        hardening: Hardening,
        agent_mount: AgentMount,
    ) -> anyhow::Result<Arc<Runner>> {
        let policy = cfg.policy();
        let http = crate::resources::http_client(
            Duration::from_secs(cfg.fetch_timeout),
            policy.fetch_guard.clone(),
        )
        .map_err(anyhow::Error::msg)?;
        Ok(Arc::new(Runner {
            hardening,
            http,
            policy,
            store,
            engine,
            cfg,
            instance,
            wake: Notify::new(),
            claim_lock: tokio::sync::Mutex::new(()),
            running: Mutex::new(HashMap::new()),
            containers: Containers::default(),
            specs: specs::Specs::new(SPEC_BUDGET),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            boot: uuid::Uuid::new_v4().simple().to_string(),
            agent_mount: RwLock::new(agent_mount),
            next_job: AtomicU32::new(u32::from_le_bytes(
                uuid::Uuid::new_v4().as_bytes()[..4]
                    .try_into()
                    .unwrap_or([1, 0, 0, 0]),
            )),
        }))
    }

    fn agent_mount(&self) -> AgentMount {
        self.agent_mount
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_agent_mount(&self, mount: AgentMount) {
        *self.agent_mount.write().unwrap_or_else(|p| p.into_inner()) = mount;
    }

    fn next_job(&self) -> u32 {
        loop {
            let job = self.next_job.fetch_add(1, Ordering::Relaxed);
            if job != 0 {
                return job;
            }
        }
    }

    /// The connection to a running container's agent: the one we hold, else a new one to an
    /// agent that outlived its connection (a previous run of the server).
    /// What a running job's output goes to as it comes: the spool that stores it, and
    /// WebSocket subscribers asking for output.
    fn output_sink(
        &self,
        task_id: TaskId,
        spool: Arc<spool::Spool>,
    ) -> impl Fn(Stream, &[u8]) + Send + Sync + use<> {
        let events = self.store.events().clone();
        move |stream: Stream, data: &[u8]| {
            spool.push(stream, data);
            if events.has_output_listeners() {
                events.publish_output(crate::events::OutputEvent::new(
                    task_id,
                    stream.as_str(),
                    data,
                ));
            }
        }
    }

    async fn agent_for(&self, cid: &str) -> Result<Arc<Agent>, DockerError> {
        if let Some(a) = self.containers.agent(cid) {
            if !a.is_lost() {
                return Ok(a);
            }
        }
        if !self.engine.is_running(cid).await? {
            return Err(DockerError::NoSuchContainer(cid.to_string()));
        }
        let attached = self.engine.attach(cid).await?;
        let (agent, nonce) = Agent::new(transport(attached), false);
        // The answer to this first query is where the stream becomes readable.
        agent
            .query(nonce, Duration::from_secs(5))
            .await
            .map_err(|e| DockerError::Api(e.to_string()))?;
        let agent = Arc::new(agent);
        self.containers.set_agent(cid, agent.clone());
        Ok(agent)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn config(&self) -> &ServeConfig {
        &self.cfg
    }

    pub fn max_body_bytes(&self) -> u64 {
        self.cfg.max_body_bytes
    }

    /// Runs `fut` as part of the server's work: the shutdown waits for it before it removes
    /// the server's containers (so a container being made is never left behind).
    pub(crate) fn track<F>(&self, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(fut);
    }

    /// Whether the server has begun to shut down.
    pub fn is_stopping(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// Completes when the server begins to shut down.
    pub async fn stopping(&self) {
        self.shutdown.cancelled().await
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<TaskId, Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Cleans up after a previous run of this database, then starts the dispatcher and the
    /// reaper.
    pub async fn start(self: &Arc<Self>) -> Result<(), StoreError> {
        self.store.recover().await?;
        let unfinished = self.store.unfinished().await?;
        let me = self.clone();
        self.tracker
            .spawn(async move { me.reconcile(unfinished).await });
        let me = self.clone();
        self.tracker.spawn(async move { me.dispatch().await });
        let me = self.clone();
        self.tracker.spawn(async move { me.reap().await });
        Ok(())
    }

    /// Stops taking work and ends running tasks (FAILED, "server shut down"); requests waiting
    /// on a task are answered with what there is. [`Runner::shutdown`] finishes the job.
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// [`Runner::begin_shutdown`], then waits for every task to be recorded and removes every
    /// container this server made.
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        for id in self.containers.drain_kept() {
            if let Err(e) = self.engine.remove(&id).await {
                tracing::warn!(container = %id, error = %e, "could not remove a kept container");
            }
            let _ = self
                .store
                .set_container_state(&id, ContainerState::Removed)
                .await;
        }
        if let Ok(left) = self
            .engine
            .list_labelled(LABEL_INSTANCE, &self.instance)
            .await
        {
            for id in left {
                let _ = self.engine.remove(&id).await;
            }
        }
    }

    /// `POST /fn` and `POST /fn/{reuse_of}`.
    pub async fn submit(
        &self,
        body: Value,
        reuse_of: Option<TaskId>,
    ) -> Result<TaskRecord, RunnerError> {
        let reuse_image = match reuse_of {
            Some(target) => Some(
                self.store
                    .get(target)
                    .await?
                    .ok_or(RunnerError::NoTask(target))?
                    .image,
            ),
            None => None,
        };
        let ctx = ParseContext {
            reuse_image: reuse_image.as_deref(),
        };
        let spec = spec::parse(body, &self.policy, ctx)?;
        self.check_fetch_names(&spec).await?;
        self.check_inline_archives(&spec).await?;
        let record = self
            .store
            .insert(
                NewTask {
                    id: TaskId::new(),
                    task_name: &spec.task_name,
                    image: &spec.image,
                    priority: spec.priority,
                    spec: &spec.raw,
                    reuse_of,
                },
                self.cfg.max_queue,
            )
            .await?;
        // Typed from here on: the dispatcher takes it rather than parsing the record again.
        self.specs.put(record.id, spec);
        self.wake.notify_one();
        Ok(record)
    }

    /// Resolves the host names of `uri` resources now, so one that points at this machine or
    /// a private network is refused before the task is stored (it is checked again when
    /// fetched). A name that does not resolve now is left for the fetch to report.
    async fn check_fetch_names(&self, spec: &spec::TaskSpec) -> Result<(), ApiError> {
        for (i, res) in spec.resource_list.iter().enumerate() {
            let spec::Resource::File {
                source: spec::Source::Uri { uri, .. },
                ..
            } = res
            else {
                continue;
            };
            let Ok(url) = reqwest::Url::parse(uri) else {
                continue;
            };
            self.check_fetch_url(&url)
                .await
                .map_err(|e| e.with_field(format!("resource_list[{i}].uri")))?;
        }
        Ok(())
    }

    /// Resolves the host of a URL the server is to fetch or post to, and refuses one that
    /// points at this machine or a private network (unless `--allow-fetch` opens it). A name
    /// that does not resolve now is left for the connection to report.
    pub async fn check_fetch_url(&self, url: &reqwest::Url) -> Result<(), ApiError> {
        let Some(host) = url.host_str() else {
            return Ok(());
        };
        if let Ok(ip) = host.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
            let port = url.port_or_known_default().unwrap_or(80);
            return self
                .policy
                .fetch_guard
                .check_resolved(host, &[std::net::SocketAddr::new(ip, port)])
                .map_err(|why| {
                    ApiError::new(Code::UriNotAllowed, format!("`{url}` may not be fetched: {why} (the operator can allow it with --allow-fetch)"))
                });
        }
        let port = url.port_or_known_default().unwrap_or(80);
        let lookup = tokio::time::timeout(
            Duration::from_secs(3),
            tokio::net::lookup_host((host, port)),
        )
        .await;
        if let Ok(Ok(addrs)) = lookup {
            let addrs: Vec<_> = addrs.collect();
            if let Err(why) = self.policy.fetch_guard.check_resolved(host, &addrs) {
                return Err(ApiError::new(Code::UriNotAllowed,
                    format!("`uri` may not be fetched: {why} (the operator can allow it with --allow-fetch)"),
                ));
            }
        }
        Ok(())
    }

    /// Unpacks inline archives without keeping anything, so an archive that escapes its
    /// directory, holds a bad link, is not an archive or unpacks past the cap (a zip bomb) is
    /// a 400 now, not a failed task later. Runs off the async threads: it is CPU work.
    async fn check_inline_archives(&self, spec: &spec::TaskSpec) -> Result<(), ApiError> {
        let max = self.cfg.max_extract_bytes;
        for (i, res) in spec.resource_list.iter().enumerate() {
            let spec::Resource::File {
                source: spec::Source::Inline(bytes),
                extract: true,
                ..
            } = res
            else {
                continue;
            };
            let bytes = bytes.clone();
            let checked = tokio::task::spawn_blocking(move || {
                crate::resources::check_archive(i, &bytes, max)
            })
            .await
            .map_err(|e| ApiError::internal(format!("checking an archive: {e}")))?;
            if let Err(e) = checked {
                let why = match e {
                    crate::resources::ResourceError::Archive { reason, .. } => reason,
                    other => other.to_string(),
                };
                return Err(ApiError::bad_request(
                    Code::InvalidArchive,
                    format!("resource_list[{i}].data"),
                    format!("the archive cannot be unpacked: {why}"),
                ));
            }
        }
        Ok(())
    }

    /// `PUT /fn/{id}`: replaces (or merge-patches) the spec of a task that has not started.
    pub async fn update(
        &self,
        id: TaskId,
        body: Value,
        merge: bool,
    ) -> Result<TaskRecord, RunnerError> {
        let policy = &self.policy;
        let new_spec = |current: &TaskRecord| {
            let raw = if merge {
                let mut t = current.spec.clone();
                spec::merge_patch(&mut t, &body);
                t
            } else {
                body.clone()
            };
            let reuse_image = current.reused_container_of.map(|_| current.image.as_str());
            spec::parse(raw, policy, ParseContext { reuse_image })
        };
        // The checks that take time (names resolved, archives unpacked) run before the
        // write, on the spec as it would become, exactly as a submit's do: what POST refuses,
        // PUT refuses too.
        let current = self.store.get(id).await?.ok_or(RunnerError::NoTask(id))?;
        if current.spec.get("function").is_some() {
            // Its spec is the request it was called with, not a task spec.
            return Err(ApiError::bad_request(
                Code::InvalidValue,
                "id",
                format!(
                    "task {id} is a function call (or a pipeline): its request cannot be replaced"
                ),
            )
            .into());
        }
        if current.state.is_queued() {
            let checked = new_spec(&current)?;
            self.check_fetch_names(&checked).await?;
            self.check_inline_archives(&checked).await?;
        }
        // Another update landing meanwhile changes nothing of that: a merge patch replaces
        // `resource_list` whole, so every resource comes from a spec that was checked.
        let mut parsed = None;
        let result = self
            .store
            .update_queued(id, |current| {
                let spec = new_spec(current)?;
                let parts = (
                    spec.raw.clone(),
                    spec.task_name.clone(),
                    spec.image.clone(),
                    spec.priority,
                );
                parsed = Some(spec);
                Ok::<_, ApiError>(parts)
            })
            .await?;
        match result {
            UpdateResult::Updated(r) => {
                if let Some(spec) = parsed {
                    self.specs.put(id, spec);
                }
                // A new priority may change what runs next.
                self.wake.notify_one();
                Ok(r)
            }
            UpdateResult::NotFound => Err(RunnerError::NoTask(id)),
            UpdateResult::Started(r) => Err(RunnerError::AlreadyStarted { id, state: r.state }),
            UpdateResult::Refused(e) => Err(e.into()),
        }
    }

    /// `DELETE /fn/{id}`.
    pub async fn delete(&self, id: TaskId, opts: DeleteOptions) -> Result<TaskRecord, RunnerError> {
        let mut record = self
            .cancel(id, !(opts.remove_container || opts.purge))
            .await?;
        if opts.remove_container || opts.purge {
            if let Some(c) = record
                .container
                .as_ref()
                .filter(|c| c.state != ContainerState::Removed)
            {
                let cid = c.id.clone();
                self.containers.forget(&cid);
                self.engine.remove(&cid).await?;
                self.store
                    .set_container_state(&cid, ContainerState::Removed)
                    .await?;
                record = self.store.get(id).await?.unwrap_or(record);
            }
        }
        if opts.purge {
            self.store.purge(id).await?;
        }
        Ok(record)
    }

    /// Cancels a queued or running task and returns its record once it has ended. An ended
    /// task is a 409 when `refuse_ended`, else returned as it is.
    async fn cancel(&self, id: TaskId, refuse_ended: bool) -> Result<TaskRecord, RunnerError> {
        let guard = self.claim_lock.lock().await;
        if let Some(r) = self.store.cancel_queued(id).await? {
            self.specs.take(id);
            return Ok(r);
        }
        let record = self.store.get(id).await?.ok_or(RunnerError::NoTask(id))?;
        if record.state.is_terminal() {
            if refuse_ended {
                return Err(RunnerError::AlreadyEnded {
                    id,
                    state: record.state,
                });
            }
            return Ok(record);
        }
        let events = self.store.events().subscribe();
        let token = self.running().get(&id).map(|r| r.cancel.clone());
        drop(guard);
        match token {
            Some(t) => t.cancel(),
            // Claimed tasks always have a handle (claim_lock); none means it just ended.
            None => return Ok(self.store.get(id).await?.unwrap_or(record)),
        }
        self.wait_ended(events, id, Duration::from_secs(60))
            .await?
            .ok_or(RunnerError::CancelPending(id))
    }

    /// Waits, up to `wait`, for task `id` to reach a terminal state; `events` must have been
    /// subscribed before the caller last saw the task non-terminal, so the change is not missed.
    pub async fn wait_ended(
        &self,
        mut events: broadcast::Receiver<Arc<StateEvent>>,
        id: TaskId,
        wait: Duration,
    ) -> Result<Option<TaskRecord>, RunnerError> {
        let deadline = Instant::now() + wait;
        // The task may have ended before we subscribed.
        if let Some(r) = self.store.get(id).await?.filter(|r| r.state.is_terminal()) {
            return Ok(Some(r));
        }
        loop {
            let next = tokio::select! {
                n = tokio::time::timeout_at(deadline, events.recv()) => n,
                _ = self.shutdown.cancelled() => return Ok(None),
            };
            match next {
                Err(_) => return Ok(None),
                Ok(Ok(ev)) => {
                    if ev.task_id == id && ev.state.is_terminal() {
                        return Ok(Some(ev.task.clone()));
                    }
                }
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => {
                    if let Some(r) = self.store.get(id).await?.filter(|r| r.state.is_terminal()) {
                        return Ok(Some(r));
                    }
                }
                Ok(Err(broadcast::error::RecvError::Closed)) => return Ok(None),
            }
        }
    }

    /// Claims PENDING tasks while fewer than `--max-concurrent` run.
    async fn dispatch(self: Arc<Self>) {
        let slots = Arc::new(Semaphore::new(self.cfg.max_concurrent as usize));
        loop {
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                _ = self.shutdown.cancelled() => return,
            };
            let claimed = {
                let _guard = self.claim_lock.lock().await;
                match self.store.claim_next().await {
                    Ok(Some(task)) => {
                        let cancel = self.shutdown.child_token();
                        self.running().insert(
                            task.id,
                            Running {
                                cancel: cancel.clone(),
                            },
                        );
                        Some((task, cancel))
                    }
                    Ok(None) => None,
                    Err(e) => {
                        tracing::error!(error = %e, "claiming a task failed");
                        None
                    }
                }
            };
            match claimed {
                Some((task, cancel)) => {
                    let me = self.clone();
                    self.tracker.spawn(async move {
                        let id = task.id;
                        me.execute(task, cancel).await;
                        me.running().remove(&id);
                        drop(permit);
                    });
                }
                None => {
                    drop(permit);
                    tokio::select! {
                        _ = self.wake.notified() => {}
                        _ = self.shutdown.cancelled() => return,
                    }
                }
            }
        }
    }

    /// Removes kept containers idle past `--keep-alive` or past their `ttl`, and prunes the
    /// event log every `--event-prune-every`.
    async fn reap(self: Arc<Self>) {
        let keep_alive = Duration::from_secs(self.cfg.keep_alive);
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let prune_every = Duration::from_secs(self.cfg.event_prune_every);
        let mut last_prune = Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.shutdown.cancelled() => return,
            }
            if last_prune.elapsed() >= prune_every {
                last_prune = Instant::now();
                match self.store.prune_events(self.cfg.event_retention).await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(pruned = n, "event log pruned"),
                    Err(e) => tracing::warn!(error = %e, "pruning the event log failed"),
                }
            }
            self.retry_removals().await;
            for id in self.containers.take_expired(Instant::now(), keep_alive) {
                tracing::debug!(container = %id, "removing an idle or expired container");
                self.drop_container(&id).await;
            }
        }
    }

    /// Removes a container and marks every task that used it.
    async fn drop_container(&self, id: &str) {
        self.forget_container(id);
        // Docker may be away: the reaper then retries until it is gone.
        self.remove_or_retry(id).await;
        if let Err(e) = self
            .store
            .set_container_state(id, ContainerState::Removed)
            .await
        {
            tracing::warn!(container = %id, error = %e, "could not record a container's removal");
        }
    }

    /// Forgets a container no task will use again (it is no longer kept or talked to).
    fn forget_container(&self, id: &str) {
        self.containers.forget(id);
    }

    /// Removes a container, leaving it to the reaper to retry when that fails.
    async fn remove_or_retry(&self, id: &str) {
        if let Err(e) = self.engine.remove(id).await {
            tracing::warn!(container = %id, error = %e, "could not remove a container; will retry");
            self.containers.removal_failed(id);
        }
    }

    /// Retries removals that failed (the engine was away).
    async fn retry_removals(&self) {
        for id in self.containers.take_unremoved() {
            if self.engine.remove(&id).await.is_err() {
                self.containers.removal_failed(&id);
            }
        }
    }

    /// Containers kept for reuse right now.
    pub fn kept_count(&self) -> usize {
        self.containers.kept_count()
    }
}

/// Final states a task's run can end in, with the error it reports.
pub(crate) fn terminal_for_exit(code: Option<i64>) -> TaskState {
    if code == Some(0) {
        TaskState::Finished
    } else {
        TaskState::Failed
    }
}

/// The agent's ends of a container's attached stdio.
fn transport(attached: crate::docker::Attached) -> crate::agent::Transport {
    use futures_util::StreamExt;
    crate::agent::Transport {
        output: Box::pin(attached.output.map(|r| r.map_err(|e| e.to_string()))),
        input: attached.input,
    }
}
