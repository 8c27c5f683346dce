//! One invocation, sync or async, and pipelines: the call is stored as a task, given to a
//! warm worker, and its answer (or error) recorded with what the handler printed.
//!
//! When a worker is free the task is stored already RUNNING (one write) and ended with its
//! result (a second); a call that waits is stored PENDING first, so an accepted call is on
//! disk before anything runs, and a restarted server runs the ones that still waited.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use serde_json::{json, Value};

use super::pool::WorkerEvent;
use super::pool::{Lease, LeaseError, CODE_DIR};
use super::protocol::{self, Message};
use super::spec::Runtime;
use super::{Deployed, Functions};
use crate::agent::{ExecResult, JobRequest};
use crate::model::{Outcome, TaskId, TaskRecord, TaskState};
use crate::store::{NewInvocation, PIPELINE};

/// An HTTP call to a function, as the handler sees it.
#[derive(Debug, Clone, Default)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    /// Lower-case names.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// Had a body at all (a tinyFaaS `fn(input)` gets `None` without one).
    pub has_body: bool,
}

/// Headers never stored in a task record nor passed to a handler: they carry the server's
/// own credentials.
const PRIVATE_HEADERS: &[&str] = &["authorization", "cookie", "proxy-authorization"];

impl Call {
    fn visible_headers(&self) -> impl Iterator<Item = &(String, String)> {
        self.headers
            .iter()
            .filter(|(k, _)| !PRIVATE_HEADERS.contains(&k.as_str()))
    }

    /// The call as a task record's spec shows it (and as a restarted server reads it back).
    pub fn to_spec(&self, function: &str, version: i64, callback: Option<&str>) -> Value {
        let headers: BTreeMap<&str, &str> = self
            .visible_headers()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let mut request = json!({
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": headers,
        });
        if self.has_body {
            request["body"] = match std::str::from_utf8(&self.body) {
                Ok(text) => json!(text),
                Err(_) => {
                    json!({"base64": base64::engine::general_purpose::STANDARD.encode(&self.body)})
                }
            };
        }
        let mut spec = json!({"function": function, "version": version, "request": request});
        if let Some(url) = callback {
            spec["callback_url"] = json!(url);
        }
        spec
    }

    /// Reads back [`Call::to_spec`].
    pub fn from_spec(spec: &Value) -> Option<Call> {
        let r = spec.get("request")?;
        let pairs = |v: Option<&Value>| -> Vec<(String, String)> {
            match v {
                Some(Value::Array(items)) => items
                    .iter()
                    .filter_map(|p| {
                        Some((
                            p.get(0)?.as_str()?.to_string(),
                            p.get(1)?.as_str()?.to_string(),
                        ))
                    })
                    .collect(),
                Some(Value::Object(m)) => m
                    .iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect(),
                _ => Vec::new(),
            }
        };
        let (body, has_body) = match r.get("body") {
            Some(Value::String(s)) => (Bytes::from(s.clone().into_bytes()), true),
            Some(v) => (
                Bytes::from(
                    base64::engine::general_purpose::STANDARD
                        .decode(v.get("base64")?.as_str()?)
                        .ok()?,
                ),
                true,
            ),
            None => (Bytes::new(), false),
        };
        Some(Call {
            method: r.get("method")?.as_str()?.to_string(),
            path: r.get("path")?.as_str()?.to_string(),
            query: pairs(r.get("query")),
            headers: pairs(r.get("headers")),
            body,
            has_body,
        })
    }
}

/// A handler's answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub content_type: String,
    pub body: Vec<u8>,
}

impl Answer {
    /// The `result` of the task record.
    pub fn to_json(&self) -> Value {
        let headers: BTreeMap<&str, &str> = self
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let mut r = json!({
            "status": self.status,
            "content_type": self.content_type,
            "headers": headers,
        });
        match std::str::from_utf8(&self.body) {
            Ok(text) => r["body"] = json!(text),
            Err(_) => {
                r["body"] = json!(base64::engine::general_purpose::STANDARD.encode(&self.body));
                r["encoding"] = json!("base64");
            }
        }
        r
    }
}

/// How an invocation ended, beyond success.
#[derive(Debug, Clone)]
pub enum Failure {
    /// The handler threw, exited non-zero, could not load, or its runtime crashed.
    Function(String),
    /// Past its timeout.
    Timeout(u64),
    /// No worker could be had.
    QueueFull(u32),
    Unavailable(String),
    /// The function went away while the call waited.
    Gone,
}

/// What one invocation gave.
#[derive(Debug)]
pub struct Invoked {
    pub task: TaskRecord,
    pub answer: Result<Answer, Failure>,
}

/// What a call printed and answered, before it is recorded.
#[derive(Default)]
struct Ran {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    truncated: bool,
    answer: Option<Result<Answer, Failure>>,
    /// The worker can serve another call.
    healthy: bool,
    /// The call never reached the runtime (it had died while idle): another worker may take
    /// it.
    not_sent: bool,
}

impl Ran {
    fn log(&mut self, stream: &str, data: &[u8], cap: usize) {
        let buf = if stream == "stdout" {
            &mut self.stdout
        } else {
            &mut self.stderr
        };
        let room = cap.saturating_sub(buf.len());
        if data.len() > room {
            self.truncated = true;
        }
        buf.extend_from_slice(&data[..data.len().min(room)]);
    }
}

/// Refused before anything was stored.
#[derive(Debug)]
pub enum Refusal {
    NotFound(String),
    QueueFull(u32),
    Store(crate::store::StoreError),
}

impl Functions {
    /// Stores the call as a task and runs it to its end: a sync invocation.
    pub async fn invoke(
        self: &Arc<Self>,
        namespace: &str,
        name: &str,
        call: Call,
    ) -> Result<Invoked, Refusal> {
        let d = self
            .get(namespace, name)
            .ok_or_else(|| Refusal::NotFound(format!("{namespace}/{name}")))?;
        if let Some(w) = d.pool.try_lease() {
            // A free worker: the record (RUNNING, in that container) is written while the
            // call runs, not before it, so the worker never waits on the database. Both end
            // before the call is answered; a call whose record cannot be written is
            // answered with the database's error.
            let id = TaskId::new();
            let function = d.full_name();
            let spec = call.to_spec(&function, d.version, None);
            let insert = self.store().insert_invocation(d.invocation(
                id,
                &function,
                &spec,
                Some(&w.container.id),
            ));
            let (stored, ran) = tokio::join!(insert, self.call_worker(&d, &w, &call));
            if let Err(e) = stored {
                let todo = d.pool.release(w, ran.healthy);
                self.act(&d, todo);
                return Err(Refusal::Store(e));
            }
            return Ok(self.run_call(d, id, w, Some(ran), &call).await);
        }
        let (task, lease) = self.accept(&d, &call, None, false).await?;
        Ok(self.run_accepted(d, task, lease, call).await)
    }

    /// A call made by a running call of `d` that will wait for it (Faasm's `chain`): stored
    /// and run in the background as an async call is, but it never waits behind its caller
    /// for a worker ([`super::pool::Pool::enqueue_nested`]). A boxed future rather than an
    /// `async fn`: the call it starts may come back here (a chained call chaining), and the
    /// compiler cannot see through that cycle to prove it `Send`.
    pub fn invoke_nested(
        self: &Arc<Self>,
        d: Arc<Deployed>,
        call: Call,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<TaskRecord, Refusal>> + Send>>
    {
        let me = self.clone();
        Box::pin(async move {
            let (task, lease) = me.accept(&d, &call, None, true).await?;
            let record = task.clone();
            tokio::spawn(async move { me.run_accepted(d, task, lease, call).await });
            Ok(record)
        })
    }

    /// Stores the call and answers at once; it runs in the background (and its result goes
    /// to `callback` when given).
    pub async fn invoke_async(
        self: &Arc<Self>,
        namespace: &str,
        name: &str,
        call: Call,
        callback: Option<String>,
    ) -> Result<TaskRecord, Refusal> {
        let d = self
            .get(namespace, name)
            .ok_or_else(|| Refusal::NotFound(format!("{namespace}/{name}")))?;
        let (task, lease) = self.accept(&d, &call, callback.as_deref(), false).await?;
        let me = self.clone();
        let record = task.clone();
        tokio::spawn(async move {
            let done = me.run_accepted(d, task, lease, call).await;
            if let Some(url) = callback {
                me.send_callback(url, done).await;
            }
        });
        Ok(record)
    }

    /// Stores the call: RUNNING when a worker is free now (it is returned), else PENDING
    /// with a place in the function's queue (429 when that is full); `nested` for a call
    /// whose caller holds a worker of `d` ([`Self::invoke_nested`]).
    async fn accept(
        self: &Arc<Self>,
        d: &Arc<Deployed>,
        call: &Call,
        callback: Option<&str>,
        nested: bool,
    ) -> Result<(TaskRecord, Accepted), Refusal> {
        let function = d.full_name();
        let spec = call.to_spec(&function, d.version, callback);
        let id = TaskId::new();
        if let Some(w) = d.pool.try_lease() {
            let stored = self
                .store()
                .insert_invocation(d.invocation(id, &function, &spec, Some(&w.container.id)))
                .await;
            return match stored {
                Ok(task) => Ok((task, Accepted::Now(w))),
                Err(e) => {
                    let todo = d.pool.release(w, true);
                    self.act(d, todo);
                    Err(Refusal::Store(e))
                }
            };
        }
        let (rx, todo) = if nested {
            d.pool.enqueue_nested()
        } else {
            d.pool.enqueue()
        };
        self.act(d, todo);
        let mut rx = rx;
        if let Ok(Err(LeaseError::QueueFull(n))) = rx.try_recv() {
            return Err(Refusal::QueueFull(n));
        }
        let task = self
            .store()
            .insert_invocation(d.invocation(id, &function, &spec, None))
            .await
            .map_err(Refusal::Store)?;
        Ok((task, Accepted::Waiting(rx)))
    }

    /// Runs an accepted call to its end and records it.
    async fn run_accepted(
        self: &Arc<Self>,
        mut d: Arc<Deployed>,
        task: TaskRecord,
        accepted: Accepted,
        call: Call,
    ) -> Invoked {
        let id = task.id;
        let (w, first) = match accepted {
            Accepted::Now(w) => (w, None),
            Accepted::Waiting(rx) => {
                let w = match self.wait_for_worker(&mut d, rx).await {
                    Ok(w) => w,
                    Err(failure) => return self.record(id, &d, Ran::default(), Err(failure)).await,
                };
                // RUNNING is recorded while the call runs: the worker does not wait on it.
                let running = self
                    .store()
                    .invocation_running(id, &w.container.id, d.version);
                let (marked, ran) = tokio::join!(running, self.call_worker(&d, &w, &call));
                match marked {
                    Ok(Some(_)) => {}
                    // Cancelled while it waited: what it answers is not recorded (the record
                    // stays CANCELLED).
                    Ok(None) => tracing::debug!(task = %id, "a call cancelled while it waited ran"),
                    Err(e) => tracing::warn!(task = %id, error = %e, "recording RUNNING failed"),
                }
                (w, Some(ran))
            }
        };
        self.run_call(d, id, w, first, &call).await
    }

    /// Runs the call on `w` (unless `first` is how it already ran there), gives the worker
    /// back, and records the end. A call that never reached a runtime (it had died while
    /// idle) goes to another worker.
    async fn run_call(
        self: &Arc<Self>,
        d: Arc<Deployed>,
        id: TaskId,
        mut w: Lease,
        mut first: Option<Ran>,
        call: &Call,
    ) -> Invoked {
        let mut tries = 0;
        let ran = loop {
            let ran = match first.take() {
                Some(ran) => ran,
                None => self.call_worker(&d, &w, call).await,
            };
            let todo = d.pool.release(w, ran.healthy);
            self.act(&d, todo);
            if !(ran.not_sent && tries < 3) {
                break ran;
            }
            // Its runtime had died while idle (a daemon it left ate the memory, say): the
            // call goes to another worker rather than fail for what an earlier one did.
            tries += 1;
            let (rx, todo) = d.pool.enqueue();
            self.act(&d, todo);
            w = match rx.await {
                Ok(Ok(next)) => next,
                Ok(Err(e)) => {
                    let failure = match e {
                        LeaseError::QueueFull(n) => Failure::QueueFull(n),
                        LeaseError::Unavailable(why) => Failure::Unavailable(why),
                        LeaseError::Retired => Failure::Gone,
                    };
                    return self.record(id, &d, Ran::default(), Err(failure)).await;
                }
                Err(_) => break ran,
            };
        };
        let answer = ran
            .answer
            .clone()
            .unwrap_or_else(|| Err(Failure::Function("the runtime gave no answer".into())));
        self.record(id, &d, ran, answer).await
    }

    /// Waits in the queue for a worker; a version replaced meanwhile sends the call to the
    /// new one.
    async fn wait_for_worker(
        self: &Arc<Self>,
        d: &mut Arc<Deployed>,
        mut rx: tokio::sync::oneshot::Receiver<Result<Lease, LeaseError>>,
    ) -> Result<Lease, Failure> {
        loop {
            let got = rx.await;
            match got {
                Ok(Ok(w)) => return Ok(w),
                Ok(Err(LeaseError::Retired)) => {
                    let Some(next) = self.get(&d.namespace, &d.name) else {
                        return Err(Failure::Gone);
                    };
                    if Arc::ptr_eq(&next, d) {
                        return Err(Failure::Gone);
                    }
                    *d = next;
                    let (next_rx, todo) = d.pool.enqueue();
                    self.act(d, todo);
                    rx = next_rx;
                }
                Ok(Err(LeaseError::QueueFull(n))) => return Err(Failure::QueueFull(n)),
                Ok(Err(LeaseError::Unavailable(why))) => return Err(Failure::Unavailable(why)),
                Err(_) => return Err(Failure::Unavailable("the function's queue closed".into())),
            }
        }
    }

    /// Sends the call to the worker and reads what it prints and answers, within the
    /// function's timeout.
    async fn call_worker(self: &Arc<Self>, d: &Deployed, w: &Lease, call: &Call) -> Ran {
        let cap = self.runner.config().max_output_bytes;
        let timeout = Duration::from_secs(d.spec.timeout);
        match (&w.runtime, d.spec.runtime) {
            (Some(rt), _) => {
                let n = self.next_call();
                let request = protocol::Request {
                    id: n,
                    body: call.has_body.then(|| call.body.to_vec()),
                    method: call.method.clone(),
                    path: call.path.clone(),
                    query: call.query.iter().cloned().collect(),
                    headers: call.visible_headers().cloned().collect(),
                };
                let line = match request.to_line() {
                    Ok(l) => l,
                    Err(e) => {
                        return Ran {
                            healthy: true,
                            answer: Some(Err(Failure::Function(format!(
                                "the call could not be encoded: {e}"
                            )))),
                            ..Ran::default()
                        }
                    }
                };
                let mut events = rt.events.lock().await;
                // What came while the worker was idle is not this call's; a runtime that
                // died meanwhile is found here.
                let mut ran = Ran {
                    healthy: true,
                    ..Ran::default()
                };
                while let Ok(ev) = events.try_recv() {
                    if matches!(ev, WorkerEvent::Exited(..) | WorkerEvent::Lost) {
                        ran.healthy = false;
                        ran.not_sent = true;
                        ran.answer = Some(Err(Failure::Function(
                            "the function's runtime had stopped; the next call gets a new one"
                                .into(),
                        )));
                        return ran;
                    }
                }
                self.place_faasm_files(d, &w.container).await;
                rt.active.store(true, Ordering::Relaxed);
                if let Err(e) = w.container.agent.input(rt.job, &line).await {
                    rt.active.store(false, Ordering::Relaxed);
                    ran.healthy = false;
                    ran.answer = Some(Err(Failure::Function(format!(
                        "the call could not be sent to the runtime: {e}"
                    ))));
                    return ran;
                }
                let deadline = tokio::time::Instant::now() + timeout;
                loop {
                    let ev = tokio::time::timeout_at(deadline, events.recv()).await;
                    match ev {
                        Err(_) => {
                            let _ = w.container.agent.kill(rt.job, 9).await;
                            ran.healthy = false;
                            ran.answer = Some(Err(Failure::Timeout(d.spec.timeout)));
                            break;
                        }
                        Ok(Some(WorkerEvent::Message(m))) => match m {
                            Message::Log { id, stream, data } if id == n => {
                                ran.log(stream.as_str(), data.as_bytes(), cap)
                            }
                            Message::Result {
                                id,
                                status,
                                headers,
                                body,
                            } if id == n => {
                                ran.answer = Some(Ok(answer_of(
                                    status,
                                    headers.into_iter().collect(),
                                    body,
                                )));
                                break;
                            }
                            Message::Error { id, message } if id == Some(n) || id.is_none() => {
                                ran.answer = Some(Err(Failure::Function(message)));
                                break;
                            }
                            // The handler waits for the answer on its stdin (see `host`).
                            Message::Host { id, op } if id == n => {
                                let done =
                                    tokio::time::timeout_at(deadline, self.host_op(d, call, op))
                                        .await;
                                let Ok(reply) = done else {
                                    let _ = w.container.agent.kill(rt.job, 9).await;
                                    ran.healthy = false;
                                    ran.answer = Some(Err(Failure::Timeout(d.spec.timeout)));
                                    break;
                                };
                                let line = protocol::host_reply(&reply);
                                if let Err(e) = w.container.agent.input(rt.job, &line).await {
                                    ran.healthy = false;
                                    ran.answer = Some(Err(Failure::Function(format!(
                                        "the answer to the function's request could not be sent: {e}"
                                    ))));
                                    break;
                                }
                            }
                            _ => {}
                        },
                        Ok(Some(WorkerEvent::Raw(data))) => ran.log("stderr", &data, cap),
                        Ok(Some(WorkerEvent::Garbled(why))) => {
                            let _ = w.container.agent.kill(rt.job, 9).await;
                            ran.healthy = false;
                            ran.answer = Some(Err(Failure::Function(why)));
                            break;
                        }
                        Ok(Some(WorkerEvent::Exited(code, _))) => {
                            ran.healthy = false;
                            ran.answer = Some(Err(Failure::Function(format!(
                                "the function's runtime exited (code {code}) during the call"
                            ))));
                            break;
                        }
                        Ok(Some(WorkerEvent::Lost)) | Ok(None) => {
                            ran.healthy = false;
                            ran.answer = Some(Err(Failure::Function(
                                "the function's container stopped during the call".into(),
                            )));
                            break;
                        }
                    }
                }
                rt.active.store(false, Ordering::Relaxed);
                ran
            }
            (None, Runtime::Shell) => self.call_shell(d, w, call, timeout, cap).await,
            (None, _) => Ran {
                answer: Some(Err(Failure::Function("no runtime in this worker".into()))),
                ..Ran::default()
            },
        }
    }

    /// A shell function: `fn.sh` run as one job, the input on its stdin, its stdout the
    /// answer and its stderr the logs.
    async fn call_shell(
        &self,
        d: &Deployed,
        w: &Lease,
        call: &Call,
        timeout: Duration,
        cap: usize,
    ) -> Ran {
        let job = w.container.next_job();
        let script = &d.spec.handler.file;
        let mut env: Vec<String> = d.spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        env.push(format!("UFAAS_METHOD={}", call.method));
        env.push(format!("UFAAS_PATH={}", call.path));
        let query = call
            .query
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        env.push(format!("UFAAS_QUERY={query}"));
        for (k, v) in call.visible_headers() {
            let name: String = k
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() {
                        c.to_ascii_uppercase()
                    } else {
                        '_'
                    }
                })
                .collect();
            env.push(format!("HTTP_{name}={v}"));
        }
        let req = JobRequest {
            argv: vec!["/bin/sh".into(), format!("{CODE_DIR}/{script}")],
            env,
            cwd: CODE_DIR.into(),
            stdin: Some(call.body.to_vec()),
            stdin_open: false,
            ends_with_process: false,
            keep: 0,
        };
        let mut ran = Ran {
            healthy: true,
            ..Ran::default()
        };
        let max = self.max_output();
        let mut result = ExecResult::default();
        let started = w.container.agent.start(job, &req).await;
        let mut rx = match started {
            Ok(rx) => rx,
            Err(e) => {
                ran.healthy = false;
                ran.answer = Some(Err(Failure::Function(format!(
                    "fn.sh could not start: {e}"
                ))));
                return ran;
            }
        };
        let collected = tokio::time::timeout(
            timeout,
            crate::agent::collect_each(&mut rx, (max, cap), &|_, _| {}, &mut result),
        )
        .await;
        let _ = w.container.agent.ack(job).await;
        ran.stderr = result.stderr.clone();
        ran.truncated = result.truncated;
        if collected.is_err() || result.overflowed {
            let _ = w.container.agent.kill(job, 9).await;
            ran.healthy = false;
            ran.answer = Some(Err(if collected.is_err() {
                Failure::Timeout(d.spec.timeout)
            } else {
                Failure::Function(format!("fn.sh printed more than the cap of {max} bytes"))
            }));
            return ran;
        }
        if let Some(lost) = result.lost {
            ran.healthy = false;
            ran.answer = Some(Err(Failure::Function(lost)));
            return ran;
        }
        ran.answer = Some(match (result.exit_code, result.error) {
            (_, Some(e)) => Err(Failure::Function(format!("fn.sh could not run: {e}"))),
            (Some(0), None) if result.stdout.len() >= max => Err(Failure::Function(format!(
                "the output is over the cap of {max} bytes"
            ))),
            (Some(0), None) => Ok(answer_of(None, Vec::new(), result.stdout)),
            (code, None) => {
                let said = String::from_utf8_lossy(&result.stderr);
                let tail: String = said
                    .chars()
                    .rev()
                    .take(2000)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                Err(Failure::Function(format!(
                    "fn.sh exited with code {}{}",
                    code.unwrap_or(-1),
                    if tail.trim().is_empty() {
                        String::new()
                    } else {
                        format!(": {}", tail.trim())
                    }
                )))
            }
        });
        ran
    }

    /// Ends the task with what the call gave.
    async fn record(
        &self,
        id: TaskId,
        d: &Deployed,
        ran: Ran,
        answer: Result<Answer, Failure>,
    ) -> Invoked {
        let mut outcome = Outcome {
            stdout: String::from_utf8_lossy(&ran.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&ran.stderr).into_owned(),
            output_truncated: ran.truncated,
            ..Outcome::default()
        };
        let (state, result) = match &answer {
            Ok(a) => {
                outcome.exit_code = Some(0);
                (TaskState::Finished, Some(a.to_json()))
            }
            Err(f) => {
                outcome.error = Some(failure_message(f, d));
                let state = match f {
                    Failure::Timeout(_) => TaskState::Expired,
                    Failure::Gone => TaskState::Cancelled,
                    _ => TaskState::Failed,
                };
                (state, None)
            }
        };
        let task = match self
            .store()
            .finish_invocation(id, state, &outcome, result.as_ref(), None)
            .await
        {
            Ok(Some(t)) => t,
            Ok(None) | Err(_) => match self.store().get(id).await {
                Ok(Some(t)) => t,
                _ => placeholder(id, d.full_name(), d.spec.image.clone()),
            },
        };
        Invoked { task, answer }
    }

    /// Settles what a previous run left: calls that were running failed with it (their
    /// container is gone), calls that waited run now.
    pub(super) async fn settle_unended(self: &Arc<Self>) -> Result<(), crate::store::StoreError> {
        for task in self.store().unended_invocations().await? {
            let waited = task.state.is_queued();
            let function = task
                .spec
                .get("function")
                .and_then(Value::as_str)
                .unwrap_or("");
            let call = Call::from_spec(&task.spec);
            let live = function
                .split_once('/')
                .and_then(|(ns, name)| self.get(ns, name));
            let (Some(d), Some(call), true) = (live, call, waited) else {
                let why = if waited {
                    "the function no longer exists"
                } else if task.function.is_none() {
                    "the server stopped during the pipeline"
                } else {
                    "the server stopped during the invocation"
                };
                let outcome = Outcome {
                    error: Some(why.into()),
                    ..Outcome::default()
                };
                self.store()
                    .finish_invocation(task.id, TaskState::Failed, &outcome, None, None)
                    .await?;
                continue;
            };
            let callback = task
                .spec
                .get("callback_url")
                .and_then(Value::as_str)
                .map(str::to_string);
            let (rx, todo) = d.pool.enqueue();
            self.act(&d, todo);
            let me = self.clone();
            tokio::spawn(async move {
                let done = me.run_accepted(d, task, Accepted::Waiting(rx), call).await;
                if let Some(url) = callback {
                    me.send_callback(url, done).await;
                }
            });
        }
        Ok(())
    }

    /// POSTs an async call's result to its callback URL (checked like a `uri` resource at
    /// every connection), retried with backoff for up to an hour.
    async fn send_callback(&self, url: String, done: Invoked) {
        let status = match &done.answer {
            Ok(a) => a.status,
            Err(Failure::Timeout(_)) => 504,
            Err(Failure::QueueFull(_)) => 429,
            Err(_) => 500,
        };
        let (body, content_type) = match &done.answer {
            Ok(a) => (a.body.clone(), a.content_type.clone()),
            Err(_) => (
                json!({"code": if status == 504 { "function_timeout" } else { "function_error" },
                       "message": done.task.error.clone().unwrap_or_default(),
                       "task_id": done.task.id})
                .to_string()
                .into_bytes(),
                "application/json".to_string(),
            ),
        };
        let give_up = tokio::time::Instant::now() + Duration::from_secs(3600);
        let mut wait = Duration::from_millis(500);
        loop {
            let sent = self
                .callbacks
                .post(&url)
                .header("content-type", &content_type)
                .header("x-ufaas-task-id", done.task.id.to_string())
                .header("x-ufaas-status", status.to_string())
                .body(body.clone())
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => return,
                Ok(r) => {
                    tracing::warn!(task = %done.task.id, status = %r.status(), "the callback was refused; will retry")
                }
                Err(e) => {
                    tracing::warn!(task = %done.task.id, error = %e, "the callback failed; will retry")
                }
            }
            if tokio::time::Instant::now() + wait > give_up {
                tracing::error!(task = %done.task.id, url = %url, "giving up on the callback after an hour");
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.runner.stopping() => return,
            }
            wait = (wait * 2).min(Duration::from_secs(300));
        }
    }

    /// `POST /functions/pipeline`: each step's answer is the next one's input; the pipeline
    /// is a task listing its steps' task ids.
    pub async fn pipeline(
        self: &Arc<Self>,
        steps: Vec<(String, String)>,
        input: Call,
        run_async: bool,
    ) -> Result<PipelineRun, Refusal> {
        let mut deployed = Vec::new();
        for (ns, name) in &steps {
            deployed.push(
                self.get(ns, name)
                    .ok_or_else(|| Refusal::NotFound(format!("{ns}/{name}")))?,
            );
        }
        let names: Vec<String> = deployed.iter().map(|d| d.full_name()).collect();
        let mut spec = input.to_spec(PIPELINE, 0, None);
        spec["steps"] = json!(names);
        let id = TaskId::new();
        let task = self
            .store()
            .insert_invocation(NewInvocation {
                id,
                function: PIPELINE,
                version: None,
                image: "",
                spec: &spec,
                running: true,
                container: None,
            })
            .await
            .map_err(Refusal::Store)?;
        let me = self.clone();
        let run = async move { me.run_pipeline(id, deployed, input).await };
        if run_async {
            tokio::spawn(run);
            return Ok(PipelineRun {
                task,
                outcome: None,
            });
        }
        Ok(run.await)
    }

    async fn run_pipeline(
        self: &Arc<Self>,
        id: TaskId,
        deployed: Vec<Arc<Deployed>>,
        mut call: Call,
    ) -> PipelineRun {
        let mut step_ids = Vec::new();
        let mut last: Option<Answer> = None;
        let mut failed: Option<StepFailure> = None;
        for (i, d) in deployed.iter().enumerate() {
            let step = self.invoke(&d.namespace, &d.name, call.clone()).await;
            match step {
                Ok(inv) => {
                    step_ids.push(inv.task.id);
                    match inv.answer {
                        Ok(a) => {
                            call.body = Bytes::from(a.body.clone());
                            call.has_body = true;
                            call.headers = vec![("content-type".into(), a.content_type.clone())];
                            last = Some(a);
                        }
                        Err(f) => {
                            failed = Some(StepFailure {
                                index: i,
                                function: d.full_name(),
                                task_id: Some(inv.task.id),
                                message: failure_message(&f, d),
                            });
                            break;
                        }
                    }
                }
                Err(r) => {
                    failed = Some(StepFailure {
                        index: i,
                        function: d.full_name(),
                        task_id: None,
                        message: match r {
                            Refusal::NotFound(n) => format!("function {n} no longer exists"),
                            Refusal::QueueFull(n) => format!("its queue is full ({n} calls wait)"),
                            Refusal::Store(e) => e.to_string(),
                        },
                    });
                    break;
                }
            }
        }
        let (state, outcome, result) = match (&failed, &last) {
            (None, Some(a)) => (
                TaskState::Finished,
                Outcome {
                    exit_code: Some(0),
                    ..Outcome::default()
                },
                Some(a.to_json()),
            ),
            (Some(f), _) => (
                TaskState::Failed,
                Outcome {
                    error: Some(format!(
                        "step {} ({}) failed: {}",
                        f.index, f.function, f.message
                    )),
                    ..Outcome::default()
                },
                None,
            ),
            (None, None) => (TaskState::Finished, Outcome::default(), None),
        };
        let task = self
            .store()
            .finish_invocation(id, state, &outcome, result.as_ref(), Some(&step_ids))
            .await
            .ok()
            .flatten();
        let task = match task {
            Some(t) => t,
            None => self
                .store()
                .get(id)
                .await
                .ok()
                .flatten()
                .unwrap_or_else(|| placeholder(id, PIPELINE.into(), String::new())),
        };
        PipelineRun {
            task,
            outcome: Some(match failed {
                Some(f) => Err(f),
                None => Ok(last),
            }),
        }
    }
}

/// How a call was accepted.
enum Accepted {
    /// A worker was free.
    Now(Lease),
    /// It waits in the queue.
    Waiting(tokio::sync::oneshot::Receiver<Result<Lease, LeaseError>>),
}

impl Deployed {
    /// A call of this version to store: RUNNING in `container` when a worker has it, else
    /// PENDING.
    fn invocation<'a>(
        &'a self,
        id: TaskId,
        function: &'a str,
        spec: &'a Value,
        container: Option<&'a str>,
    ) -> NewInvocation<'a> {
        NewInvocation {
            id,
            function,
            version: Some(self.version),
            image: &self.spec.image,
            spec,
            running: container.is_some(),
            container,
        }
    }
}

/// A pipeline's task and, unless it runs in the background, how it ended.
pub struct PipelineRun {
    pub task: TaskRecord,
    pub outcome: Option<Result<Option<Answer>, StepFailure>>,
}

/// The step a pipeline failed at.
#[derive(Debug, Clone)]
pub struct StepFailure {
    pub index: usize,
    pub function: String,
    pub task_id: Option<TaskId>,
    pub message: String,
}

pub fn failure_message(f: &Failure, d: &Deployed) -> String {
    match f {
        Failure::Function(m) => m.clone(),
        Failure::Timeout(s) => format!("{} ran past its timeout of {s} s", d.full_name()),
        Failure::QueueFull(n) => format!("the queue of {} is full ({n} calls wait)", d.full_name()),
        Failure::Unavailable(m) => {
            format!("no container of {} could be started: {m}", d.full_name())
        }
        Failure::Gone => format!(
            "{} was removed or the call cancelled before it ran",
            d.full_name()
        ),
    }
}

/// The answer from a runtime's result: its status (200 unless set), its headers, and a
/// content type from its headers, else from the body (JSON when it parses as JSON).
fn answer_of(status: Option<u16>, headers: Vec<(String, String)>, body: Vec<u8>) -> Answer {
    let set_type = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.clone());
    let content_type = set_type.unwrap_or_else(|| content_type_of(&body).to_string());
    Answer {
        status: status.filter(|s| (100..=999).contains(s)).unwrap_or(200),
        headers: headers
            .into_iter()
            .filter(|(k, _)| !k.eq_ignore_ascii_case("content-type"))
            .collect(),
        content_type,
        body,
    }
}

/// `application/json` for a body that is a JSON value, `text/plain` for other text,
/// `application/octet-stream` for bytes that are not UTF-8.
pub fn content_type_of(body: &[u8]) -> &'static str {
    if body.is_empty() {
        return "text/plain; charset=utf-8";
    }
    if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok() {
        "application/json"
    } else if std::str::from_utf8(body).is_ok() {
        "text/plain; charset=utf-8"
    } else {
        "application/octet-stream"
    }
}

/// What a call's answer carries when its record could not be read back (the database
/// failed after the call was stored): the id, and why.
fn placeholder(id: TaskId, task_name: String, image: String) -> TaskRecord {
    TaskRecord {
        id,
        task_name,
        state: TaskState::Failed,
        image,
        priority: 0,
        created_at: crate::model::now_rfc3339(),
        started_at: None,
        finished_at: None,
        exit_code: None,
        stdout: String::new(),
        stderr: String::new(),
        output_truncated: false,
        error: Some("the record could not be read back".into()),
        container: None,
        reused_container_of: None,
        locality: None,
        spec: Value::Null,
        function: None,
        result: None,
        steps: None,
        exec_id: None,
        output_stored: (0, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_type_follows_the_body() {
        assert_eq!(content_type_of(b"{\"a\":1}"), "application/json");
        assert_eq!(content_type_of(b"42"), "application/json");
        assert_eq!(content_type_of(b"\"s\""), "application/json");
        assert_eq!(content_type_of(b"hello"), "text/plain; charset=utf-8");
        assert_eq!(content_type_of(&[0xff, 0xfe]), "application/octet-stream");
    }

    #[test]
    fn a_call_round_trips_through_its_spec_without_credentials() {
        let call = Call {
            method: "POST".into(),
            path: "/functions/a/b/invoke".into(),
            query: vec![("x".into(), "1".into())],
            headers: vec![
                ("authorization".into(), "Bearer s3cret".into()),
                ("x-a".into(), "b".into()),
            ],
            body: Bytes::from_static(&[0xff, 0x00]),
            has_body: true,
        };
        let spec = call.to_spec("a/b", 3, Some("http://cb"));
        assert!(!spec.to_string().contains("s3cret"));
        let back = Call::from_spec(&spec).unwrap_or_default();
        assert_eq!(back.body, call.body);
        assert_eq!(back.query, call.query);
        assert_eq!(back.headers, vec![("x-a".to_string(), "b".to_string())]);
        assert!(back.has_body);
    }
}
