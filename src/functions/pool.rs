//! The warm containers of one function version, and the workers in them that invocations
//! lease.
//!
//! A python or node container runs `concurrency` runtime processes, each an agent job started
//! once with its stdin left open: the code is imported once, and each invocation is one
//! request line sent to a free process and one result line read back (over the agent's
//! channel: the container keeps no network). A shell container has `concurrency` slots, and
//! each invocation is one agent job (`fn.sh` with the input on its stdin).
//!
//! Calls take a free worker; when none is free they wait in order (at most `max_queue`), and
//! more containers are started, up to `max_containers`, while calls wait (one more per call
//! that holds a worker while it awaits a chained call, see [`Pool::enter_await`]). Containers above
//! `warm` are removed once idle past `--keep-alive`. A worker whose process crashed, or whose
//! call ran past its timeout, breaks its container: it takes no more calls, and is replaced
//! (and removed once its other calls end).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::protocol::{self, Message};
use super::spec::MAX_CONTAINERS;
use crate::agent::{Agent, JobEvent, JobRequest};
use crate::model::Stream;

/// How long a new runtime may take to import the code and say it is ready.
pub const READY_WITHIN: Duration = Duration::from_secs(60);
/// Where the code is placed in every function container (and the runtimes' working dir).
pub const CODE_DIR: &str = "/function";

/// What a worker's reader hands to whoever holds the worker.
#[derive(Debug)]
pub enum WorkerEvent {
    Message(Message),
    /// Bytes a child process wrote straight to fd 1 or 2 (the runtime's stderr).
    Raw(Vec<u8>),
    /// A line too long to be the runtime's, or not JSON.
    Garbled(String),
    /// The runtime process ended.
    Exited(i64, Option<String>),
    /// The connection to the container was lost.
    Lost,
}

/// One container of a function version.
pub struct WarmContainer {
    pub id: String,
    pub agent: Arc<Agent>,
    /// Calls running in it now.
    pub busy: AtomicUsize,
    /// It takes no more calls: a worker crashed or timed out, or its version was retired.
    pub broken: AtomicBool,
    last_used: Mutex<Instant>,
    next_job: AtomicU32,
    /// The newest Faasm file (`PUT /file`) placed in it (`crate::functions::host`).
    pub files_seq: AtomicI64,
}

impl WarmContainer {
    pub fn new(id: String, agent: Arc<Agent>, first_free_job: u32) -> WarmContainer {
        WarmContainer {
            id,
            agent,
            busy: AtomicUsize::new(0),
            broken: AtomicBool::new(false),
            last_used: Mutex::new(Instant::now()),
            next_job: AtomicU32::new(first_free_job),
            files_seq: AtomicI64::new(0),
        }
    }

    /// A job id of this container's agent no other job has.
    pub fn next_job(&self) -> u32 {
        self.next_job.fetch_add(1, Ordering::Relaxed)
    }

    fn idle_since(&self) -> Instant {
        *self.last_used.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn touch(&self) {
        *self.last_used.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Relaxed)
    }
}

/// A runtime process (python, node) or a slot (shell) in a warm container.
pub struct Worker {
    pub container: Arc<WarmContainer>,
    /// The runtime's agent job and what its reader hands on; `None` for a shell slot.
    pub runtime: Option<Runtime>,
}

pub struct Runtime {
    pub job: u32,
    pub events: tokio::sync::Mutex<mpsc::UnboundedReceiver<WorkerEvent>>,
    /// Set while a call holds the worker: raw output outside a call is dropped.
    pub active: Arc<AtomicBool>,
    pub dead: AtomicBool,
}

impl Worker {
    pub fn usable(&self) -> bool {
        !self.container.is_broken()
            && !self
                .runtime
                .as_ref()
                .is_some_and(|r| r.dead.load(Ordering::Relaxed))
    }
}

/// Starts a runtime process in `container` and waits until it has loaded the code; `Err`
/// carries the runtime's load error (or why it could not start).
pub async fn start_runtime(
    container: &Arc<WarmContainer>,
    lang: protocol::Lang,
    env: Vec<String>,
    max_output: usize,
) -> Result<Worker, String> {
    let job = container.next_job();
    let req = JobRequest {
        argv: protocol::runtime_argv(lang),
        env,
        cwd: CODE_DIR.to_string(),
        stdin: None,
        stdin_open: true,
        ends_with_process: true,
        keep: 0,
    };
    let rx = container
        .agent
        .start(job, &req)
        .await
        .map_err(|e| format!("starting the runtime failed: {e}"))?;
    let (tx, mut events) = mpsc::unbounded_channel();
    let active = Arc::new(AtomicBool::new(false));
    tokio::spawn(read_runtime(
        rx,
        tx,
        active.clone(),
        protocol::max_line(max_output),
    ));
    let ready = tokio::time::timeout(READY_WITHIN, async {
        let mut said = Vec::new();
        loop {
            match events.recv().await {
                Some(WorkerEvent::Message(Message::Ready)) => return Ok(()),
                Some(WorkerEvent::Message(Message::LoadError(why))) => return Err(why),
                Some(WorkerEvent::Raw(b)) => {
                    if said.len() < 8192 {
                        said.extend_from_slice(&b);
                    }
                }
                Some(WorkerEvent::Exited(code, error)) => {
                    let printed = String::from_utf8_lossy(&said).trim().to_string();
                    return Err(match error {
                        Some(e) => format!("the runtime could not start: {e}"),
                        None if printed.is_empty() => {
                            format!("the runtime exited with code {code} before it was ready")
                        }
                        None => format!(
                            "the runtime exited with code {code} before it was ready: {printed}"
                        ),
                    });
                }
                Some(WorkerEvent::Lost) | None => {
                    return Err("the container stopped before the runtime was ready".into())
                }
                Some(_) => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        Err(format!(
            "the runtime was not ready within {} s",
            READY_WITHIN.as_secs()
        ))
    });
    if let Err(e) = ready {
        let _ = container.agent.kill(job, 9).await;
        return Err(e);
    }
    Ok(Worker {
        container: container.clone(),
        runtime: Some(Runtime {
            job,
            events: tokio::sync::Mutex::new(events),
            active,
            dead: AtomicBool::new(false),
        }),
    })
}

/// Reads a runtime job's frames: its stdout (fd 3 in the runtime) is protocol lines, its
/// stderr is what child processes wrote straight to fd 1 or 2. Always drained, so a runtime
/// never holds up the container's other jobs; raw output outside a call is dropped.
async fn read_runtime(
    mut rx: mpsc::Receiver<JobEvent>,
    tx: mpsc::UnboundedSender<WorkerEvent>,
    active: Arc<AtomicBool>,
    max_line: usize,
) {
    let mut line: Vec<u8> = Vec::new();
    let mut skipping = false;
    loop {
        let ev = match rx.recv().await {
            Some(JobEvent::Output(Stream::Stdout, data)) => {
                let mut rest: &[u8] = &data;
                while let Some(nl) = rest.iter().position(|b| *b == b'\n') {
                    if skipping {
                        skipping = false;
                    } else {
                        line.extend_from_slice(&rest[..nl]);
                        let ev = match Message::parse(&line) {
                            Ok(m) => WorkerEvent::Message(m),
                            Err(e) => WorkerEvent::Garbled(e),
                        };
                        if tx.send(ev).is_err() {
                            return;
                        }
                    }
                    line.clear();
                    rest = &rest[nl + 1..];
                }
                if !skipping {
                    line.extend_from_slice(rest);
                    if line.len() > max_line {
                        line = Vec::new();
                        skipping = true;
                        let _ = tx.send(WorkerEvent::Garbled(format!(
                            "the runtime sent a line over {max_line} bytes"
                        )));
                    }
                }
                continue;
            }
            Some(JobEvent::Output(Stream::Stderr, data)) => {
                if !active.load(Ordering::Relaxed) {
                    continue;
                }
                WorkerEvent::Raw(data.to_vec())
            }
            Some(JobEvent::Ended { code, error }) => {
                let _ = tx.send(WorkerEvent::Exited(code, error));
                return;
            }
            Some(_) => continue,
            None => {
                let _ = tx.send(WorkerEvent::Lost);
                return;
            }
        };
        if tx.send(ev).is_err() {
            return;
        }
    }
}

/// A worker taken for one call; given back with [`Pool::release`].
pub type Lease = Arc<Worker>;

/// Why no worker could be had.
#[derive(Debug)]
pub enum LeaseError {
    /// `max_queue` calls wait already.
    QueueFull(u32),
    /// No container could be started: why.
    Unavailable(String),
    /// The version was retired while the call waited (replaced or deleted): ask again.
    Retired,
}

type Waiter = oneshot::Sender<Result<Lease, LeaseError>>;

#[derive(Default)]
struct PoolState {
    containers: Vec<Arc<WarmContainer>>,
    idle: VecDeque<Lease>,
    waiters: VecDeque<Waiter>,
    starting: usize,
    /// Calls holding a worker while they wait in `await_call` for a call of this pool.
    blocked: usize,
    retired: bool,
    last_error: Option<String>,
}

/// What a pool is asked to do after a state change (outside its lock).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Todo {
    /// Containers to start.
    pub start: usize,
    /// Containers to remove.
    pub remove: Vec<String>,
}

/// How many containers the pool has, for `GET /functions/{ns}/{name}`.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct PoolCounts {
    pub ready: usize,
    pub busy: usize,
    pub starting: usize,
    pub waiting: usize,
}

/// The sizes a pool keeps to.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub warm: usize,
    pub max_containers: usize,
    pub concurrency: usize,
    pub max_queue: u32,
}

pub struct Pool {
    sizes: Sizes,
    state: Mutex<PoolState>,
}

impl Pool {
    pub fn new(sizes: Sizes) -> Pool {
        Pool {
            sizes,
            state: Mutex::new(PoolState::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Containers to start so that `warm` are there (at start, after a replace).
    pub fn fill(&self) -> Todo {
        let mut st = self.lock();
        let have = st.containers.len() + st.starting;
        let start = self.sizes.warm.saturating_sub(have);
        st.starting += start;
        Todo {
            start,
            remove: Vec::new(),
        }
    }

    /// A free worker now, if there is one.
    pub fn try_lease(&self) -> Option<Lease> {
        let mut st = self.lock();
        if st.retired {
            return None;
        }
        Self::pop_idle(&mut st)
    }

    fn pop_idle(st: &mut PoolState) -> Option<Lease> {
        while let Some(w) = st.idle.pop_front() {
            if w.usable() {
                w.container.busy.fetch_add(1, Ordering::Relaxed);
                return Some(w);
            }
        }
        None
    }

    /// Joins the queue for a worker (a free one is taken at once). The returned `Todo` says
    /// how many containers to start for the queue.
    pub fn enqueue(&self) -> (oneshot::Receiver<Result<Lease, LeaseError>>, Todo) {
        self.join_queue(false)
    }

    /// Joins the queue for a call made by a running call of this pool (Faasm's `chain`).
    /// Such a call goes first but starts no container past `max_containers` by itself: only
    /// a caller blocked waiting for it ([`Self::enter_await`]) lets the pool go past, one
    /// container per blocked caller, so a function chaining without end cannot start
    /// containers without end.
    pub fn enqueue_nested(&self) -> (oneshot::Receiver<Result<Lease, LeaseError>>, Todo) {
        self.join_queue(true)
    }

    /// [`Self::enqueue`], at the queue's head when `first`.
    fn join_queue(&self, first: bool) -> (oneshot::Receiver<Result<Lease, LeaseError>>, Todo) {
        let (tx, rx) = oneshot::channel();
        let mut st = self.lock();
        if st.retired {
            let _ = tx.send(Err(LeaseError::Retired));
            return (rx, Todo::default());
        }
        if let Some(w) = Self::pop_idle(&mut st) {
            let _ = tx.send(Ok(w));
            return (rx, Todo::default());
        }
        st.waiters.retain(|w| !w.is_closed());
        if st.waiters.len() >= self.sizes.max_queue as usize {
            let _ = tx.send(Err(LeaseError::QueueFull(self.sizes.max_queue)));
            return (rx, Todo::default());
        }
        if first {
            st.waiters.push_front(tx);
        } else {
            st.waiters.push_back(tx);
        }
        let todo = self.scale_up(&mut st);
        (rx, todo)
    }

    /// A call holding a worker starts waiting for a call of this pool (Faasm's
    /// `await_call`): while it waits the pool may run one container more than
    /// `max_containers` (never more than [`MAX_CONTAINERS`] in all), since waiting for the
    /// worker it holds would never end (a function with `max_containers` 1 chaining itself).
    /// Returns the containers to start; [`Self::leave_await`] when the wait ends. Containers
    /// above `warm` go once idle past `--keep-alive`, as any others.
    pub fn enter_await(&self) -> Todo {
        let mut st = self.lock();
        st.blocked += 1;
        if st.retired {
            return Todo::default();
        }
        self.scale_up(&mut st)
    }

    /// The wait of [`Self::enter_await`] ended.
    pub fn leave_await(&self) {
        let mut st = self.lock();
        st.blocked = st.blocked.saturating_sub(1);
    }

    /// How many containers the pool may have now: `max_containers`, plus one per caller
    /// blocked in `await_call`, up to [`MAX_CONTAINERS`].
    fn cap(&self, st: &PoolState) -> usize {
        let most = usize::try_from(MAX_CONTAINERS).unwrap_or(usize::MAX);
        let max = self.sizes.max_containers;
        max.max(max.saturating_add(st.blocked).min(most))
    }

    /// The containers of the pool that take calls.
    pub fn live_containers(&self) -> Vec<Arc<WarmContainer>> {
        let st = self.lock();
        st.containers
            .iter()
            .filter(|c| !c.is_broken())
            .cloned()
            .collect()
    }

    /// More containers while calls wait that the starting ones will not serve.
    fn scale_up(&self, st: &mut PoolState) -> Todo {
        let live = st.containers.iter().filter(|c| !c.is_broken()).count();
        let room = self.cap(st).saturating_sub(live + st.starting);
        let unserved = st
            .waiters
            .len()
            .saturating_sub(st.starting * self.sizes.concurrency);
        let start = room.min(unserved.div_ceil(self.sizes.concurrency.max(1)));
        st.starting += start;
        Todo {
            start,
            remove: Vec::new(),
        }
    }

    /// A container started: its workers go to the waiting calls, then to the free list.
    /// Returns false (and the caller removes it) when the pool was retired meanwhile.
    pub fn started(&self, container: Arc<WarmContainer>, workers: Vec<Worker>) -> bool {
        let mut st = self.lock();
        st.starting = st.starting.saturating_sub(1);
        if st.retired {
            return false;
        }
        st.last_error = None;
        st.containers.push(container);
        for w in workers {
            Self::hand_over(&mut st, Arc::new(w));
        }
        true
    }

    /// A container could not be started. Calls waiting fail with the reason when nothing
    /// else will serve them (no container up or starting); returns what to do next.
    pub fn start_failed(&self, why: String) {
        let mut st = self.lock();
        st.starting = st.starting.saturating_sub(1);
        let live = st.containers.iter().any(|c| !c.is_broken());
        if !live && st.starting == 0 {
            for w in st.waiters.drain(..) {
                let _ = w.send(Err(LeaseError::Unavailable(why.clone())));
            }
        }
        st.last_error = Some(why);
    }

    fn hand_over(st: &mut PoolState, mut w: Lease) {
        if !w.usable() {
            return;
        }
        while let Some(waiter) = st.waiters.pop_front() {
            w.container.busy.fetch_add(1, Ordering::Relaxed);
            match waiter.send(Ok(w)) {
                Ok(()) => return,
                // That caller gave up waiting: the next one gets it.
                Err(back) => match back {
                    Ok(back) => {
                        back.container.busy.fetch_sub(1, Ordering::Relaxed);
                        w = back;
                    }
                    Err(_) => return,
                },
            }
        }
        st.idle.push_back(w);
    }

    /// A call gives its worker back; `healthy` false breaks its container (crash, timeout,
    /// garbled protocol). Returns what to do: containers to remove (broken and now idle) and
    /// replacements to start.
    pub fn release(&self, w: Lease, healthy: bool) -> Todo {
        let mut st = self.lock();
        w.container.busy.fetch_sub(1, Ordering::Relaxed);
        w.container.touch();
        let mut todo = Todo::default();
        if !healthy {
            w.container.broken.store(true, Ordering::Relaxed);
            if let Some(r) = &w.runtime {
                r.dead.store(true, Ordering::Relaxed);
            }
        }
        if st.retired || w.container.is_broken() {
            let retired = st.retired;
            todo.remove = Self::take_removable(&mut st, retired);
            if !st.retired {
                // Keep `warm` containers, and serve whoever waits.
                let live = st.containers.iter().filter(|c| !c.is_broken()).count();
                let want = self.sizes.warm.max(usize::from(!st.waiters.is_empty()));
                let start = want
                    .saturating_sub(live + st.starting)
                    .min(self.cap(&st).saturating_sub(live + st.starting));
                st.starting += start;
                todo.start = start;
                let more = self.scale_up(&mut st);
                todo.start += more.start;
            }
            return todo;
        }
        Self::hand_over(&mut st, w);
        todo
    }

    /// Broken (or, when retiring, all) containers with no call in them, taken out.
    fn take_removable(st: &mut PoolState, all: bool) -> Vec<String> {
        let (gone, kept): (Vec<_>, Vec<_>) = st
            .containers
            .drain(..)
            .partition(|c| (all || c.is_broken()) && c.busy.load(Ordering::Relaxed) == 0);
        st.containers = kept;
        st.idle
            .retain(|w| st.containers.iter().any(|c| Arc::ptr_eq(c, &w.container)));
        gone.into_iter().map(|c| c.id.clone()).collect()
    }

    /// No more calls: waiting ones are told to ask the new version; containers are removed
    /// once their calls end (those idle now are returned).
    pub fn retire(&self) -> Vec<String> {
        let mut st = self.lock();
        st.retired = true;
        for w in st.waiters.drain(..) {
            let _ = w.send(Err(LeaseError::Retired));
        }
        for c in &st.containers {
            c.broken.store(true, Ordering::Relaxed);
        }
        Self::take_removable(&mut st, true)
    }

    /// Containers above `warm` idle past `keep_alive`, and broken idle ones, taken out.
    pub fn reap(&self, keep_alive: Duration) -> Vec<String> {
        let mut st = self.lock();
        let retired = st.retired;
        let mut gone = Self::take_removable(&mut st, retired);
        let now = Instant::now();
        let warm = self.sizes.warm;
        while st.containers.len() > warm {
            let idle = st.containers.iter().position(|c| {
                c.busy.load(Ordering::Relaxed) == 0
                    && now.duration_since(c.idle_since()) >= keep_alive
            });
            let Some(i) = idle else { break };
            let c = st.containers.remove(i);
            st.idle.retain(|w| !Arc::ptr_eq(&w.container, &c));
            gone.push(c.id.clone());
        }
        gone
    }

    pub fn counts(&self) -> PoolCounts {
        let st = self.lock();
        let live: Vec<_> = st.containers.iter().filter(|c| !c.is_broken()).collect();
        let busy = live
            .iter()
            .filter(|c| c.busy.load(Ordering::Relaxed) > 0)
            .count();
        PoolCounts {
            ready: live.len() - busy,
            busy,
            starting: st.starting,
            waiting: st.waiters.iter().filter(|w| !w.is_closed()).count(),
        }
    }

    pub fn last_error(&self) -> Option<String> {
        self.lock().last_error.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_calls_pass_max_containers_only_for_blocked_callers() {
        let pool = Pool::new(Sizes {
            warm: 1,
            max_containers: 1,
            concurrency: 1,
            max_queue: 10_000,
        });
        assert_eq!(pool.fill().start, 1);
        // The one container is starting: chained calls wait for it and start none, however
        // many there are (the queue, not the containers, takes them).
        let mut waiting = Vec::new();
        for _ in 0..200 {
            let (rx, todo) = pool.enqueue_nested();
            assert_eq!(todo.start, 0);
            waiting.push(rx);
        }
        assert_eq!(pool.counts().starting, 1);
        // A caller blocked in await_call lets one more container start.
        assert_eq!(pool.enter_await().start, 1);
        assert_eq!(pool.counts().starting, 2);
        // Never more than MAX_CONTAINERS in all, however many callers block.
        let mut started = 2;
        for _ in 0..200 {
            started += pool.enter_await().start;
        }
        assert_eq!(started as u64, MAX_CONTAINERS);
        assert_eq!(pool.counts().starting as u64, MAX_CONTAINERS);
        // Once they stop waiting, nested calls start none past max_containers again.
        for _ in 0..201 {
            pool.leave_await();
        }
        let (_rx, todo) = pool.enqueue_nested();
        assert_eq!(todo.start, 0);
    }
}
