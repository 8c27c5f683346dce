//! The server's side of ufaas-agent (`agent/agent.c`), the main process of every container.
//! A task in a live container is one line to the agent, which forks and execs the command and
//! streams its output back over the container's attached stdio: no Docker exec per task,
//! whose engine and runc work (~40 ms here) would otherwise be most of a warm task's time.
//!
//! The wire format is described at the top of `agent/agent.c`. We send text lines (base64
//! payloads), so nothing we send can contain the attach stream's detach-key sequence; the
//! agent answers in binary frames. A connection made to an agent that has been running (after
//! a restart) may begin mid-frame: the decoder then skips to the answer of a query carrying a
//! fresh nonce.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use bytes::{Buf, Bytes, BytesMut};
use futures_util::StreamExt;
use sha2::Digest;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use crate::model::Stream;

/// The agent program, built by build.rs for the machine the server is built for.
pub static BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/ufaas-agent"));

/// Where the agent sits in every container.
pub const PATH: &str = "/.ufaas/agent";

/// Stdin is sent in pieces of this size, each one line.
const STDIN_PIECE: usize = 48 * 1024;
/// Output frames queued for one job before the agent is made to wait.
const JOB_QUEUE: usize = 64;
/// No frame of the agent is longer (its output chunks are 64 KiB). A longer one means the
/// stream is not the agent's (a task in the container can write to it): the connection is
/// dropped rather than a buffer grown to whatever it says.
const MAX_FRAME: usize = 1 << 20;
/// Jobs one query answer may list.
const MAX_KNOWN: usize = 65_536;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The attached stream ended or broke: the container stopped, was removed, or the engine
    /// went away.
    #[error("the connection to the container's agent was lost ({0})")]
    Lost(String),
    #[error("the agent did not answer in time")]
    Timeout,
}

/// How the agent (the main process of every container) gets into it.
#[derive(Debug, Clone, Default)]
pub enum AgentMount {
    /// Bind-mounted read-only from this host file: no copy per container.
    Bind(std::path::PathBuf),
    /// Uploaded with the task's files before start (a remote engine cannot see our files).
    #[default]
    Upload,
}

/// What the agent prints, chunk by chunk, as it comes (from a container's attached stdio);
/// an error says why the stream broke.
pub type OutputStream =
    Pin<Box<dyn futures_util::Stream<Item = Result<(Stream, Bytes), String>> + Send>>;

/// The agent's two ends: what it prints, and its stdin.
pub struct Transport {
    pub output: OutputStream,
    pub input: Pin<Box<dyn AsyncWrite + Send>>,
}

/// Held for writing while [`install`] has the program open for writing, and for reading by
/// whoever in this process starts a program ([`spawn_guarded`]).
///
/// Why: a child forked by another thread inherits every open file of the process until it
/// execs (close-on-exec takes effect only then). If that happens while the agent's file is
/// open for writing, executing the agent fails with ETXTBSY ("Text file busy") for as long as
/// the child has not exec'd. `Command::spawn` returns only once the child has exec'd, so no
/// spawn made under the read lock can overlap a write made under the write lock.
static FORKS: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Starts `cmd` so that it cannot overlap an [`install`] (see [`FORKS`]).
pub fn spawn_guarded(cmd: &mut tokio::process::Command) -> std::io::Result<tokio::process::Child> {
    let _no_install = FORKS.read().unwrap_or_else(|p| p.into_inner());
    cmd.spawn()
}

/// Writes the agent to `dir` (once per build: its name carries its digest) and returns its
/// path, for bind-mounting into containers.
pub fn install(dir: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let digest = hex::encode(sha2::Sha256::digest(BINARY));
    let path = dir.join(format!(".ufaas-agent-{}", &digest[..16]));
    if std::fs::read(&path).is_ok_and(|b| b == BINARY) {
        return Ok(path);
    }
    let _no_spawn = FORKS.write().unwrap_or_else(|p| p.into_inner());
    std::fs::create_dir_all(dir)?;
    // Written aside and renamed, so a container never sees half a program.
    let tmp = dir.join(format!(
        ".ufaas-agent-{}.{}",
        &digest[..16],
        std::process::id()
    ));
    std::fs::write(&tmp, BINARY)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

// ---- what we send -------------------------------------------------------------------------

fn line(kind: u8, job: u32, payload: Option<&[u8]>) -> Vec<u8> {
    let mut l = Vec::with_capacity(16 + payload.map_or(0, |p| p.len() * 4 / 3 + 4));
    l.push(kind);
    l.push(b' ');
    l.extend_from_slice(job.to_string().as_bytes());
    if let Some(p) = payload {
        l.push(b' ');
        let b64 = base64::engine::general_purpose::STANDARD.encode(p);
        l.extend_from_slice(b64.as_bytes());
    }
    l.push(b'\n');
    l
}

/// One command for the agent.
#[derive(Debug, Clone, Default)]
pub struct JobRequest {
    pub argv: Vec<String>,
    /// `K=V`, laid over the container's environment.
    pub env: Vec<String>,
    pub cwd: String,
    pub stdin: Option<Vec<u8>>,
    /// The job's stdin stays open after `stdin` (if any): more is sent with
    /// [`Agent::input`] (a function's runtime reads its invocations there).
    pub stdin_open: bool,
    /// The first this many bytes of each stream stay with the agent until the job is
    /// acknowledged, so a restarted server can ask for what it had not stored
    /// ([`Agent::replay`]).
    pub keep: u32,
}

fn run_payload(req: &JobRequest) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&(req.argv.len() as u32).to_le_bytes());
    p.extend_from_slice(&(req.env.len() as u32).to_le_bytes());
    p.push(u8::from(req.stdin.is_some() || req.stdin_open) | 2);
    p.extend_from_slice(&req.keep.to_le_bytes());
    for s in std::iter::once(&req.cwd)
        .chain(req.argv.iter())
        .chain(req.env.iter())
    {
        // A NUL cannot be passed to exec; validation refuses it, and here it would only
        // shift the fields.
        p.extend(s.bytes().filter(|b| *b != 0));
        p.push(0);
    }
    p
}

// ---- what we receive -----------------------------------------------------------------------

/// One frame from the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Hello(String),
    Started {
        job: u32,
        pid: u32,
    },
    /// The command never ran.
    Failed {
        job: u32,
        code: u32,
        message: String,
    },
    Output {
        job: u32,
        stream: Stream,
        data: Bytes,
    },
    /// Output sent again, in answer to a replay.
    Replayed {
        job: u32,
        stream: Stream,
        data: Bytes,
    },
    /// The end of a replay: how many bytes the job has printed on each stream so far, or
    /// `None` when the agent does not know the job.
    ReplayEnd {
        job: u32,
        totals: Option<(u64, u64)>,
    },
    Exited {
        job: u32,
        code: u32,
    },
    Running {
        job: u32,
    },
    Sync([u8; 16]),
    SyncEnd,
    /// The container was told to stop with this signal, from outside.
    Stopping(u32),
}

const HEADER: usize = 9;

/// Splits the agent's stdout into frames. Unsynced, it discards bytes until the answer to the
/// query with its nonce.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: BytesMut,
    resync: Option<[u8; 16]>,
}

impl Decoder {
    pub fn synced() -> Decoder {
        Decoder::default()
    }

    /// For a stream that may start mid-frame: everything before the `Y` frame carrying
    /// `nonce` is skipped.
    pub fn unsynced(nonce: [u8; 16]) -> Decoder {
        Decoder {
            buf: BytesMut::new(),
            resync: Some(nonce),
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next whole frame, if there is one; an error when the stream cannot be the agent's.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, String> {
        if let Some(nonce) = self.resync {
            let mut marker = [0u8; HEADER + 16];
            marker[0] = b'Y';
            marker[5..9].copy_from_slice(&16u32.to_le_bytes());
            marker[HEADER..].copy_from_slice(&nonce);
            match self.buf.windows(marker.len()).position(|w| w == marker) {
                Some(at) => {
                    self.buf.advance(at);
                    self.resync = None;
                }
                None => {
                    // Keep a tail that may be the start of the marker.
                    let keep = (marker.len() - 1).min(self.buf.len());
                    let drop = self.buf.len() - keep;
                    self.buf.advance(drop);
                    return Ok(None);
                }
            }
        }
        if self.buf.len() < HEADER {
            return Ok(None);
        }
        let kind = self.buf[0];
        let job = u32::from_le_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
        let len = u32::from_le_bytes([self.buf[5], self.buf[6], self.buf[7], self.buf[8]]) as usize;
        // Each kind of frame has its size; anything else is not the agent speaking.
        let fits = match kind {
            b'S' | b'X' | b'T' => len == 4,
            b'F' => (4..=4096).contains(&len),
            b'P' | b'Z' => len == 0,
            b'Y' => len == 16,
            b'H' => len <= 256,
            b'O' | b'E' | b'o' | b'e' => len <= MAX_FRAME,
            b'W' => len == 0 || len == 16,
            _ => false,
        };
        if !fits {
            return Err(format!(
                "a frame of kind {kind} and {len} bytes: not the agent's stream"
            ));
        }
        if self.buf.len() < HEADER + len {
            self.buf.reserve(HEADER + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(HEADER);
        let payload = self.buf.split_to(len).freeze();
        let u32_at = |p: &Bytes| {
            p.get(..4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .unwrap_or(0)
        };
        Ok(Some(match kind {
            b'H' => Frame::Hello(String::from_utf8_lossy(&payload).into_owned()),
            b'S' => Frame::Started {
                job,
                pid: u32_at(&payload),
            },
            b'F' => Frame::Failed {
                job,
                code: u32_at(&payload),
                message: String::from_utf8_lossy(payload.get(4..).unwrap_or_default()).into_owned(),
            },
            b'O' => Frame::Output {
                job,
                stream: Stream::Stdout,
                data: payload,
            },
            b'E' => Frame::Output {
                job,
                stream: Stream::Stderr,
                data: payload,
            },
            b'o' | b'e' => Frame::Replayed {
                job,
                stream: if kind == b'o' {
                    Stream::Stdout
                } else {
                    Stream::Stderr
                },
                data: payload,
            },
            b'W' => Frame::ReplayEnd {
                job,
                totals: (payload.len() == 16).then(|| {
                    let u64_at = |at: usize| {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&payload[at..at + 8]);
                        u64::from_le_bytes(b)
                    };
                    (u64_at(0), u64_at(8))
                }),
            },
            b'X' => Frame::Exited {
                job,
                code: u32_at(&payload),
            },
            b'P' => Frame::Running { job },
            b'Y' => {
                let mut n = [0u8; 16];
                let take = payload.len().min(16);
                n[..take].copy_from_slice(&payload[..take]);
                Frame::Sync(n)
            }
            b'T' => Frame::Stopping(u32_at(&payload)),
            _ => Frame::SyncEnd,
        }))
    }
}

/// What a job printed (each stream kept up to a cap) and how it ended.
#[derive(Debug, Clone, Default)]
pub struct ExecResult {
    pub exit_code: Option<i64>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub truncated: bool,
    /// Output passed eight times the cap plus 1 MiB and we stopped reading: the command may
    /// still run, and the caller must kill it.
    pub overflowed: bool,
    /// Why the command never ran (not found, bad working directory), when it did not.
    pub error: Option<String>,
    /// The connection to the container broke before the command's end was known: why.
    pub lost: Option<String>,
    /// After a replay: how many bytes the job had printed on each stream by then.
    pub printed: Option<(u64, u64)>,
}

// ---- the connection -------------------------------------------------------------------------

/// What happens to one job.
#[derive(Debug)]
pub enum JobEvent {
    Output(Stream, Bytes),
    /// A replay has sent all it kept; the job printed this many bytes on each stream so far.
    Replayed(u64, u64),
    /// The agent does not know the job.
    Unknown,
    /// The job ended: its exit code, and why when the command never ran.
    Ended {
        code: i64,
        error: Option<String>,
    },
}

/// How each job the agent knows stands: `None` while it runs, else its exit code.
pub type Known = HashMap<u32, Option<i64>>;

struct Query {
    nonce: [u8; 16],
    collecting: bool,
    known: Known,
    done: oneshot::Sender<Known>,
}

#[derive(Default)]
struct Shared {
    jobs: Mutex<HashMap<u32, mpsc::Sender<JobEvent>>>,
    /// Jobs whose replay has not ended: their live output is covered by the replay.
    replaying: Mutex<std::collections::HashSet<u32>>,
    query: Mutex<Option<Query>>,
    /// Why the stream ended, once it has.
    lost: Mutex<Option<String>>,
    /// The signal the container was told to stop with, if it was.
    stopping: Mutex<Option<u32>>,
}

impl Shared {
    fn jobs(&self) -> std::sync::MutexGuard<'_, HashMap<u32, mpsc::Sender<JobEvent>>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn replaying(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<u32>> {
        self.replaying.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn query(&self) -> std::sync::MutexGuard<'_, Option<Query>> {
        self.query.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn lost(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.lost.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn stopping(&self) -> std::sync::MutexGuard<'_, Option<u32>> {
        self.stopping.lock().unwrap_or_else(|p| p.into_inner())
    }
}

type Input = Arc<tokio::sync::Mutex<Pin<Box<dyn AsyncWrite + Send>>>>;

/// A live connection to one container's agent.
pub struct Agent {
    input: Input,
    shared: Arc<Shared>,
    reader: tokio::task::JoinHandle<()>,
    /// Serialises queries: one nonce in flight.
    querying: tokio::sync::Mutex<()>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Agent {
    /// Talks to the agent over `attached`. `fresh`: attached before the container started,
    /// so the stream begins at the agent's first byte.
    pub fn new(attached: Transport, fresh: bool) -> (Agent, Option<[u8; 16]>) {
        let nonce = (!fresh).then(|| *uuid::Uuid::new_v4().as_bytes());
        let decoder = match nonce {
            Some(n) => Decoder::unsynced(n),
            None => Decoder::synced(),
        };
        let shared = Arc::new(Shared::default());
        let reader = tokio::spawn(read_frames(attached.output, decoder, shared.clone()));
        let agent = Agent {
            input: Arc::new(tokio::sync::Mutex::new(attached.input)),
            shared,
            reader,
            querying: tokio::sync::Mutex::new(()),
        };
        (agent, nonce)
    }

    /// The signal the container was told to stop with from outside (`docker stop`, the
    /// engine shutting down), if it was: the agent passed it on to every job.
    pub fn stopped_by(&self) -> Option<u32> {
        *self.shared.stopping()
    }

    /// Whether the stream has ended (nothing more will come).
    pub fn is_lost(&self) -> bool {
        self.shared.lost().is_some()
    }

    fn lost_error(&self) -> AgentError {
        AgentError::Lost(
            self.shared
                .lost()
                .clone()
                .unwrap_or_else(|| "closed".into()),
        )
    }

    async fn send(&self, bytes: &[u8]) -> Result<(), AgentError> {
        let mut input = self.input.lock().await;
        let r = async {
            input.write_all(bytes).await?;
            input.flush().await
        }
        .await;
        r.map_err(|e| AgentError::Lost(e.to_string()))
    }

    /// Starts a job; its output and end arrive on the returned channel, which closes without
    /// an end if the connection is lost.
    pub async fn start(
        &self,
        job: u32,
        req: &JobRequest,
    ) -> Result<mpsc::Receiver<JobEvent>, AgentError> {
        if self.is_lost() {
            return Err(self.lost_error());
        }
        let (tx, rx) = mpsc::channel(JOB_QUEUE);
        self.shared.jobs().insert(job, tx);
        // The reader marks the stream lost before it drops every job's sender: a job added
        // after that drop sees the mark here.
        if self.is_lost() {
            self.shared.jobs().remove(&job);
            return Err(self.lost_error());
        }
        if let Err(e) = self.send(&line(b'R', job, Some(&run_payload(req)))).await {
            self.shared.jobs().remove(&job);
            return Err(e);
        }
        if let Some(data) = req.stdin.clone() {
            // From its own task: a command that prints before it reads must not wait on us.
            let input = self.input.clone();
            let open = req.stdin_open;
            tokio::spawn(async move {
                let mut w = input.lock().await;
                for piece in data.chunks(STDIN_PIECE) {
                    if w.write_all(&line(b'I', job, Some(piece))).await.is_err() {
                        return;
                    }
                }
                if !open {
                    let _ = w.write_all(&line(b'C', job, None)).await;
                }
                let _ = w.flush().await;
            });
        }
        Ok(rx)
    }

    /// Sends more bytes to the stdin of a job started with `stdin_open`, in order with
    /// everything sent before.
    pub async fn input(&self, job: u32, data: &[u8]) -> Result<(), AgentError> {
        if self.is_lost() {
            return Err(self.lost_error());
        }
        let mut lines = Vec::with_capacity(data.len() * 4 / 3 + 32);
        for piece in data.chunks(STDIN_PIECE) {
            lines.extend_from_slice(&line(b'I', job, Some(piece)));
        }
        self.send(&lines).await
    }

    /// Watches a job started by an earlier connection; see [`Agent::query`] for how it
    /// stands.
    pub fn follow(&self, job: u32) -> mpsc::Receiver<JobEvent> {
        let (tx, rx) = mpsc::channel(JOB_QUEUE);
        self.shared.jobs().insert(job, tx);
        rx
    }

    /// Follows a job started by an earlier connection from where the caller's copy of its
    /// output ends (`from`: bytes of stdout and of stderr already had): the agent sends
    /// what it kept past those offsets, then [`JobEvent::Replayed`], then what comes live
    /// and the end. Live output that overtakes the replay is dropped: the replay covers it.
    pub async fn replay(
        &self,
        job: u32,
        from: (u64, u64),
    ) -> Result<mpsc::Receiver<JobEvent>, AgentError> {
        let (tx, rx) = mpsc::channel(JOB_QUEUE);
        self.shared.replaying().insert(job);
        self.shared.jobs().insert(job, tx);
        let clamp = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
        let mut offsets = clamp(from.0).to_le_bytes().to_vec();
        offsets.extend_from_slice(&clamp(from.1).to_le_bytes());
        if let Err(e) = self.send(&line(b'G', job, Some(&offsets))).await {
            self.shared.jobs().remove(&job);
            self.shared.replaying().remove(&job);
            return Err(e);
        }
        Ok(rx)
    }

    /// Sends `signal` to the job's process group.
    pub async fn kill(&self, job: u32, signal: u32) -> Result<(), AgentError> {
        self.send(&line(b'K', job, Some(&signal.to_le_bytes())))
            .await
    }

    /// Lets the agent forget an ended job.
    pub async fn ack(&self, job: u32) -> Result<(), AgentError> {
        self.send(&line(b'A', job, None)).await
    }

    /// Every job the agent knows, and how it stands. On a connection made by [`Agent::new`]
    /// with a nonce, pass it: the answer to that query is where the stream becomes readable.
    pub async fn query(
        &self,
        nonce: Option<[u8; 16]>,
        within: std::time::Duration,
    ) -> Result<Known, AgentError> {
        let _one = self.querying.lock().await;
        let nonce = nonce.unwrap_or_else(|| *uuid::Uuid::new_v4().as_bytes());
        let (tx, rx) = oneshot::channel();
        *self.shared.query() = Some(Query {
            nonce,
            collecting: false,
            known: Known::new(),
            done: tx,
        });
        if self.is_lost() {
            self.shared.query().take();
            return Err(self.lost_error());
        }
        self.send(&line(b'Q', 0, Some(&nonce))).await?;
        match tokio::time::timeout(within, rx).await {
            Ok(Ok(known)) => Ok(known),
            Ok(Err(_)) => Err(self.lost_error()),
            Err(_) => Err(AgentError::Timeout),
        }
    }
}

async fn read_frames(mut output: OutputStream, mut decoder: Decoder, shared: Arc<Shared>) {
    let why = loop {
        match output.next().await {
            Some(Ok((Stream::Stdout, data))) => {
                decoder.push(&data);
                let corrupt = loop {
                    match decoder.next_frame() {
                        Ok(Some(frame)) => dispatch(&shared, frame).await,
                        Ok(None) => break None,
                        Err(e) => break Some(e),
                    }
                };
                if let Some(e) = corrupt {
                    break e;
                }
            }
            Some(Ok((Stream::Stderr, data))) => {
                let said = String::from_utf8_lossy(&data[..data.len().min(200)]).into_owned();
                tracing::warn!(agent = %said.trim_end(), "the agent says");
            }
            Some(Err(e)) => break e,
            None => break "the container's output ended".to_string(),
        }
    };
    *shared.lost() = Some(why);
    // Every waiting job sees its channel close; a waiting query is dropped.
    shared.jobs().clear();
    shared.query().take();
}

async fn dispatch(shared: &Shared, frame: Frame) {
    let (job, event, ends) = match frame {
        Frame::Output { job, .. } if shared.replaying().contains(&job) => return,
        Frame::Output { job, stream, data } | Frame::Replayed { job, stream, data } => {
            (job, JobEvent::Output(stream, data), false)
        }
        Frame::ReplayEnd { job, totals } => {
            shared.replaying().remove(&job);
            match totals {
                Some((out, err)) => (job, JobEvent::Replayed(out, err), false),
                None => (job, JobEvent::Unknown, true),
            }
        }
        Frame::Exited { job, code } => {
            note_known(shared, job, Some(i64::from(code)));
            (
                job,
                JobEvent::Ended {
                    code: i64::from(code),
                    error: None,
                },
                true,
            )
        }
        Frame::Failed { job, code, message } => (
            job,
            JobEvent::Ended {
                code: i64::from(code),
                error: Some(message),
            },
            true,
        ),
        Frame::Running { job } => {
            note_known(shared, job, None);
            return;
        }
        Frame::Sync(nonce) => {
            if let Some(q) = shared.query().as_mut() {
                if q.nonce == nonce {
                    q.collecting = true;
                }
            }
            return;
        }
        Frame::SyncEnd => {
            let mut slot = shared.query();
            if slot.as_ref().is_some_and(|q| q.collecting) {
                if let Some(q) = slot.take() {
                    let _ = q.done.send(q.known);
                }
            }
            return;
        }
        Frame::Stopping(signal) => {
            *shared.stopping() = Some(signal);
            return;
        }
        Frame::Started { .. } | Frame::Hello(_) => return,
    };
    let tx = {
        let mut jobs = shared.jobs();
        if ends {
            jobs.remove(&job)
        } else {
            jobs.get(&job).cloned()
        }
    };
    if let Some(tx) = tx {
        // Waits when the job's reader is behind: the agent then waits too, and so does the
        // command (back-pressure rather than memory). A reader that went away is ignored.
        let _ = tx.send(event).await;
    }
}

fn note_known(shared: &Shared, job: u32, code: Option<i64>) {
    if let Some(q) = shared.query().as_mut() {
        if q.collecting && q.known.len() < MAX_KNOWN {
            q.known.insert(job, code);
        }
    }
}

/// Reads a job to its end into `result`, keeping up to `cap` bytes of each stream and handing
/// every chunk to `on_chunk` as it comes. Past eight times the cap plus 1 MiB it stops
/// reading and reports an overflow: the caller kills the command. When the connection is
/// lost first, `lost` says why. Whatever came stays in `result` if this is dropped midway.
/// The channel is closed on return, so a job left unread never holds up the container's
/// other jobs.
pub async fn collect(
    rx: &mut mpsc::Receiver<JobEvent>,
    cap: usize,
    on_chunk: &(dyn Fn(Stream, &[u8]) + Send + Sync),
    result: &mut ExecResult,
) {
    collect_each(rx, (cap, cap), on_chunk, result).await
}

/// [`collect`] with a cap of its own for stdout and for stderr (a resumed job whose record
/// already holds some of each has that much less room left on each).
pub async fn collect_each(
    rx: &mut mpsc::Receiver<JobEvent>,
    caps: (usize, usize),
    on_chunk: &(dyn Fn(Stream, &[u8]) + Send + Sync),
    result: &mut ExecResult,
) {
    let flood = caps.0.max(caps.1).saturating_mul(8).saturating_add(1 << 20);
    let mut produced = 0usize;
    loop {
        match rx.recv().await {
            Some(JobEvent::Output(stream, data)) => {
                on_chunk(stream, &data);
                let (buf, cap) = match stream {
                    Stream::Stdout => (&mut result.stdout, caps.0),
                    Stream::Stderr => (&mut result.stderr, caps.1),
                };
                let room = cap.saturating_sub(buf.len());
                buf.extend_from_slice(&data[..data.len().min(room)]);
                if data.len() > room {
                    result.truncated = true;
                }
                produced = produced.saturating_add(data.len());
                if produced > flood {
                    result.overflowed = true;
                    break;
                }
            }
            Some(JobEvent::Ended { code, error }) => {
                result.exit_code = Some(code);
                result.error = error;
                break;
            }
            Some(JobEvent::Replayed(out, err)) => result.printed = Some((out, err)),
            Some(JobEvent::Unknown) => {
                result.lost = Some("the container's agent no longer knows the command".into());
                break;
            }
            None => {
                result.lost = Some("the container's output ended".into());
                break;
            }
        }
    }
    rx.close();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, job: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![kind];
        f.extend_from_slice(&job.to_le_bytes());
        f.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn frames_split_anywhere_decode_whole() {
        let mut bytes = frame(b'H', 0, b"ufaas-agent/1");
        bytes.extend(frame(b'O', 7, b"hello\n"));
        bytes.extend(frame(b'X', 7, &3u32.to_le_bytes()));
        bytes.extend(frame(b'F', 8, b"\x7f\0\0\0exec: nope"));
        for split in 0..bytes.len() {
            let mut d = Decoder::synced();
            let mut got = Vec::new();
            d.push(&bytes[..split]);
            while let Ok(Some(f)) = d.next_frame() {
                got.push(f);
            }
            d.push(&bytes[split..]);
            while let Ok(Some(f)) = d.next_frame() {
                got.push(f);
            }
            assert_eq!(
                got,
                vec![
                    Frame::Hello("ufaas-agent/1".into()),
                    Frame::Output {
                        job: 7,
                        stream: Stream::Stdout,
                        data: Bytes::from_static(b"hello\n")
                    },
                    Frame::Exited { job: 7, code: 3 },
                    Frame::Failed {
                        job: 8,
                        code: 127,
                        message: "exec: nope".into()
                    },
                ],
                "split at {split}"
            );
        }
    }

    #[test]
    fn an_unsynced_stream_starts_at_the_answer_to_our_query() {
        let nonce = *b"0123456789abcdef";
        // The tail of an earlier frame, a whole frame, an answer to someone else's query,
        // then ours.
        let mut bytes = b"lo\n\x01\x02".to_vec();
        bytes.extend(frame(b'O', 1, b"late output"));
        bytes.extend(frame(b'Y', 0, b"fedcba9876543210"));
        bytes.extend(frame(b'Y', 0, &nonce));
        bytes.extend(frame(b'X', 4, &0u32.to_le_bytes()));
        bytes.extend(frame(b'Z', 0, b""));
        for piece in [1, 3, 7, 1000] {
            let mut d = Decoder::unsynced(nonce);
            let mut got = Vec::new();
            for chunk in bytes.chunks(piece) {
                d.push(chunk);
                while let Ok(Some(f)) = d.next_frame() {
                    got.push(f);
                }
            }
            assert_eq!(
                got,
                vec![
                    Frame::Sync(nonce),
                    Frame::Exited { job: 4, code: 0 },
                    Frame::SyncEnd
                ],
                "pieces of {piece}"
            );
        }
    }

    #[test]
    fn a_frame_longer_than_any_of_the_agents_is_refused_not_buffered() {
        let mut d = Decoder::synced();
        let mut f = vec![b'O'];
        f.extend_from_slice(&1u32.to_le_bytes());
        f.extend_from_slice(&u32::MAX.to_le_bytes());
        d.push(&f);
        assert!(d.next_frame().is_err());
        assert!(d.buf.capacity() < 1 << 16);
        // So is a kind the agent never sends, or a known kind of the wrong size.
        for bad in [
            frame(b'q', 0, b""),
            frame(b'X', 1, b"12345"),
            frame(b'Z', 0, b"x"),
        ] {
            let mut d = Decoder::synced();
            d.push(&bad);
            assert!(d.next_frame().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn lines_carry_no_control_bytes_but_newline() {
        let req = JobRequest {
            argv: vec!["sh".into(), "-c".into(), "printf '\\x10\\x11'".into()],
            env: vec!["A=\u{10}\u{11}".into()],
            cwd: "/".into(),
            stdin: Some(vec![0x10, 0x11, 0, 255]),
            keep: 1 << 20,
            stdin_open: false,
        };
        let l = line(b'R', 42, Some(&run_payload(&req)));
        assert!(l.starts_with(b"R 42 "));
        assert_eq!(l.iter().filter(|b| b.is_ascii_control()).count(), 1);
        assert_eq!(l.last(), Some(&b'\n'));
        let body = &l[5..l.len() - 1];
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap_or_default();
        // argc 3, envc 1, flags: stdin follows (1) and a keep (2), keep = 1 MiB.
        assert_eq!(&decoded[..13], &[3, 0, 0, 0, 1, 0, 0, 0, 3, 0, 0, 16, 0]);
        assert!(decoded.ends_with(b"A=\x10\x11\0"));
        assert_eq!(line(b'A', 5, None), b"A 5\n");
    }

    #[test]
    fn install_writes_the_program_once() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let a = install(dir.path()).unwrap_or_else(|e| panic!("install: {e}"));
        let b = install(dir.path()).unwrap_or_else(|e| panic!("install: {e}"));
        assert_eq!(a, b);
        assert_eq!(std::fs::read(&a).unwrap_or_default(), BINARY);
        assert_eq!(&BINARY[..4], b"\x7fELF");
    }

    /// The agent as a local process, talked to over its stdio exactly as over a container's
    /// attached stdio: the protocol and the agent's job handling, without Docker.
    struct Local {
        agent: Agent,
        child: tokio::process::Child,
        dir: tempfile::TempDir,
    }

    fn local(fresh: bool) -> (Local, Option<[u8; 16]>) {
        use tokio::process::Command;
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let path = install(dir.path()).unwrap_or_else(|e| panic!("install: {e}"));
        let mut child = spawn_guarded(
            Command::new(path)
                .env("FROM_AGENT", "inherited")
                .env("REPLACED", "old")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true),
        )
        .unwrap_or_else(|e| panic!("spawn the agent: {e}"));
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            panic!("no stdio")
        };
        let output = tokio_util::io::ReaderStream::new(stdout)
            .map(|r| r.map(|b| (Stream::Stdout, b)).map_err(|e| e.to_string()));
        let attached = Transport {
            output: Box::pin(output),
            input: Box::pin(stdin),
        };
        let (agent, nonce) = Agent::new(attached, fresh);
        (Local { agent, child, dir }, nonce)
    }

    fn req(argv: &[&str]) -> JobRequest {
        JobRequest {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            cwd: "/".into(),
            ..Default::default()
        }
    }

    async fn run(agent: &Agent, job: u32, r: &JobRequest) -> ExecResult {
        let mut rx = agent
            .start(job, r)
            .await
            .unwrap_or_else(|e| panic!("start: {e}"));
        let mut out = ExecResult::default();
        let r = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            collect(&mut rx, 1 << 20, &|_, _| {}, &mut out),
        )
        .await;
        r.unwrap_or_else(|_| panic!("job {job} did not end"));
        out
    }

    #[tokio::test]
    async fn a_job_gets_its_env_cwd_and_streams_and_reports_its_code() {
        let (l, _) = local(true);
        let mut r = req(&[
            "sh",
            "-c",
            "echo $FROM_AGENT $REPLACED $ADDED; pwd; echo oops >&2; exit 3",
        ]);
        r.env = vec!["REPLACED=new".into(), "ADDED=yes".into()];
        r.cwd = "/tmp".into();
        let out = run(&l.agent, 1, &r).await;
        assert_eq!(out.exit_code, Some(3));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "inherited new yes\n/tmp\n"
        );
        assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");
        assert_eq!((out.error, out.lost), (None, None));
    }

    #[tokio::test]
    async fn stdin_of_any_bytes_and_size_arrives_whole() {
        let (l, _) = local(true);
        // Detach keys (ctrl-p ctrl-q), NULs, newlines: 300 KB of every byte value.
        let data: Vec<u8> = (0..300_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .chain([0x10, 0x11, 0, b'\n'])
            .collect();
        let mut r = req(&["cat"]);
        r.stdin = Some(data.clone());
        let out = run(&l.agent, 2, &r).await;
        assert_eq!(out.exit_code, Some(0));
        assert!(
            out.stdout == data,
            "cat gave {} bytes back",
            out.stdout.len()
        );
    }

    #[tokio::test]
    async fn commands_that_cannot_start_say_why() {
        let (l, _) = local(true);
        let out = run(&l.agent, 3, &req(&["no-such-command-here"])).await;
        assert_eq!(out.exit_code, Some(127));
        assert_eq!(
            out.error.as_deref(),
            Some("exec: \"no-such-command-here\": executable file not found in $PATH")
        );
        let mut r = req(&["true"]);
        r.cwd = "/no/such/dir".into();
        let out = run(&l.agent, 4, &r).await;
        assert_eq!(out.exit_code, Some(126));
        assert!(
            out.error
                .as_deref()
                .is_some_and(|e| e.contains("/no/such/dir") && e.contains("No such file")),
            "{:?}",
            out.error
        );
        let out = run(&l.agent, 5, &req(&["/"])).await;
        assert_eq!(out.exit_code, Some(126), "{:?}", out.error);
    }

    #[tokio::test]
    async fn a_job_sees_only_stdio_and_a_kill_reaches_its_group() {
        let (l, _) = local(true);
        let out = run(&l.agent, 6, &req(&["sh", "-c", "ls /proc/$$/fd"])).await;
        assert_eq!(String::from_utf8_lossy(&out.stdout), "0\n1\n2\n");
        let mut rx = l
            .agent
            .start(7, &req(&["sh", "-c", "sleep 100 & sleep 100"]))
            .await
            .unwrap_or_else(|e| panic!("start: {e}"));
        l.agent
            .kill(7, 9)
            .await
            .unwrap_or_else(|e| panic!("kill: {e}"));
        let mut out = ExecResult::default();
        tokio::time::timeout(
            std::time::Duration::from_secs(20),
            collect(&mut rx, 1024, &|_, _| {}, &mut out),
        )
        .await
        .unwrap_or_else(|_| panic!("the killed job (and its background child) did not end"));
        assert_eq!(out.exit_code, Some(137));
    }

    #[tokio::test]
    async fn a_job_ends_when_whatever_holds_its_output_is_done() {
        let (l, _) = local(true);
        let out = run(
            &l.agent,
            8,
            &req(&["sh", "-c", "echo a; (sleep 0.2; echo b) &"]),
        )
        .await;
        assert_eq!(String::from_utf8_lossy(&out.stdout), "a\nb\n");
        assert_eq!(out.exit_code, Some(0));
    }

    /// What a restarted server does: ask for a job's output from where its copy ends. The
    /// agent sends what it kept past that (up to `keep` bytes of each stream), the totals,
    /// then the job's end; an unknown job says so.
    #[tokio::test]
    async fn a_replay_sends_the_kept_output_from_an_offset_then_the_end() {
        let (l, _) = local(true);
        let mut r = req(&["sh", "-c", "printf 0123456789; printf abc >&2"]);
        r.keep = 8;
        let first = run(&l.agent, 20, &r).await;
        assert_eq!(first.stdout, b"0123456789");
        let mut rx = l
            .agent
            .replay(20, (3, 1))
            .await
            .unwrap_or_else(|e| panic!("replay: {e}"));
        let mut again = ExecResult::default();
        tokio::time::timeout(
            std::time::Duration::from_secs(20),
            collect(&mut rx, 1 << 20, &|_, _| {}, &mut again),
        )
        .await
        .unwrap_or_else(|_| panic!("the replay did not end"));
        assert_eq!(again.stdout, b"34567", "kept: the first 8 bytes");
        assert_eq!(again.stderr, b"bc");
        assert_eq!(again.printed, Some((10, 3)));
        assert_eq!(again.exit_code, Some(0));
        let mut rx = l
            .agent
            .replay(99, (0, 0))
            .await
            .unwrap_or_else(|e| panic!("replay: {e}"));
        let mut unknown = ExecResult::default();
        collect(&mut rx, 1024, &|_, _| {}, &mut unknown).await;
        assert!(unknown.lost.is_some_and(|w| w.contains("no longer knows")));
    }

    /// Each stream is kept up to its own cap.
    #[tokio::test]
    async fn each_stream_has_its_own_cap() {
        let (l, _) = local(true);
        let mut rx = l
            .agent
            .start(
                22,
                &req(&["sh", "-c", "printf 0123456789; printf abcdefghij >&2"]),
            )
            .await
            .unwrap_or_else(|e| panic!("start: {e}"));
        let mut out = ExecResult::default();
        tokio::time::timeout(
            std::time::Duration::from_secs(20),
            collect_each(&mut rx, (3, 20), &|_, _| {}, &mut out),
        )
        .await
        .unwrap_or_else(|_| panic!("the job did not end"));
        assert_eq!(
            (&out.stdout[..], &out.stderr[..]),
            (&b"012"[..], &b"abcdefghij"[..])
        );
        assert!(out.truncated);
    }

    /// A replay asked while the job still runs: live output that overtakes the replay is
    /// not counted twice, and what comes after it arrives once.
    #[tokio::test]
    async fn a_replay_of_a_running_job_goes_on_live_without_duplicates() {
        let (l, _) = local(true);
        let mut r = req(&["sh", "-c", "echo a; sleep 100; echo b"]);
        r.keep = 1 << 20;
        let mut first = l
            .agent
            .start(21, &r)
            .await
            .unwrap_or_else(|e| panic!("start: {e}"));
        match first.recv().await {
            Some(JobEvent::Output(Stream::Stdout, d)) => assert_eq!(&d[..], b"a\n"),
            other => panic!("expected output, got {other:?}"),
        }
        drop(first);
        let mut rx = l
            .agent
            .replay(21, (0, 0))
            .await
            .unwrap_or_else(|e| panic!("replay: {e}"));
        l.agent
            .kill(21, 15)
            .await
            .unwrap_or_else(|e| panic!("kill: {e}"));
        let mut out = ExecResult::default();
        tokio::time::timeout(
            std::time::Duration::from_secs(20),
            collect(&mut rx, 1 << 20, &|_, _| {}, &mut out),
        )
        .await
        .unwrap_or_else(|_| panic!("the job did not end"));
        assert_eq!(out.stdout, b"a\n");
        assert_eq!(out.printed, Some((2, 0)));
        assert_eq!(out.exit_code, Some(128 + 15));
    }

    #[tokio::test]
    async fn jobs_run_side_by_side_and_are_remembered_until_acknowledged() {
        let (l, nonce) = local(false);
        // An unsynced connection skips the hello and starts at its first query's answer.
        let known = l
            .agent
            .query(nonce, std::time::Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("query: {e}"));
        assert!(known.is_empty(), "{known:?}");
        let mut slow = l
            .agent
            .start(10, &req(&["sleep", "100"]))
            .await
            .unwrap_or_else(|e| panic!("start: {e}"));
        let fast = run(&l.agent, 11, &req(&["echo", "fast"])).await;
        assert_eq!(fast.stdout, b"fast\n");
        let known = l
            .agent
            .query(None, std::time::Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("query: {e}"));
        assert_eq!(known.get(&10), Some(&None), "{known:?}");
        assert_eq!(known.get(&11), Some(&Some(0)), "{known:?}");
        l.agent.ack(11).await.unwrap_or_else(|e| panic!("ack: {e}"));
        l.agent
            .kill(10, 15)
            .await
            .unwrap_or_else(|e| panic!("kill: {e}"));
        let mut out = ExecResult::default();
        collect(&mut slow, 1024, &|_, _| {}, &mut out).await;
        assert_eq!(out.exit_code, Some(128 + 15));
        let known = l
            .agent
            .query(None, std::time::Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("query: {e}"));
        assert_eq!(known.get(&11), None, "acknowledged: {known:?}");
        assert_eq!(known.get(&10), Some(&Some(143)), "{known:?}");
    }

    #[tokio::test]
    async fn sigterm_passes_to_the_jobs_and_the_agent_leaves_once_they_end() {
        let (mut l, _) = local(true);
        let mark = l.dir.path().join("got-term");
        let mut r = req(&[
            "sh",
            "-c",
            "trap 'echo > \"$MARK\"; exit 7' TERM; echo up; while :; do sleep 0.05; done",
        ]);
        r.env = vec![format!("MARK={}", mark.display())];
        let mut rx = l
            .agent
            .start(12, &r)
            .await
            .unwrap_or_else(|e| panic!("start: {e}"));
        // Once the job has printed, its trap is set.
        match rx.recv().await {
            Some(JobEvent::Output(_, data)) => assert_eq!(&data[..], b"up\n"),
            other => panic!("expected output, got {other:?}"),
        }
        let pid = l.child.id().unwrap_or_else(|| panic!("no pid"));
        let killed =
            spawn_guarded(tokio::process::Command::new("kill").args(["-TERM", &pid.to_string()]))
                .unwrap_or_else(|e| panic!("kill: {e}"))
                .wait()
                .await
                .unwrap_or_else(|e| panic!("kill: {e}"));
        assert!(killed.success());
        // The job handles the signal and ends; its end still reaches us; then the agent goes.
        let mut out = ExecResult::default();
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            collect(&mut rx, 1024, &|_, _| {}, &mut out),
        )
        .await
        .unwrap_or_else(|_| panic!("the job did not end on SIGTERM"));
        assert_eq!(out.exit_code, Some(7), "{out:?}");
        assert_eq!(l.agent.stopped_by(), Some(15));
        let status = tokio::time::timeout(std::time::Duration::from_secs(10), l.child.wait())
            .await
            .unwrap_or_else(|_| panic!("the agent did not leave on SIGTERM"))
            .unwrap_or_else(|e| panic!("wait: {e}"));
        assert_eq!(status.code(), Some(128 + 15));
        assert!(mark.exists(), "the job never saw SIGTERM");
    }
}
