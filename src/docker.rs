//! The only module that talks to Docker (through bollard). Everything else asks it for
//! containers, uploads and commands in its own terms.
//!
//! The API version is negotiated with the engine on first use (Debian's engine speaks 1.41),
//! and renegotiated after a failure, so the server starts, and says so on `/readyz`, while
//! Docker is away.

use std::collections::HashMap;
use std::time::Duration;

use bollard::container::{
    Config, CreateContainerOptions, KillContainerOptions, ListContainersOptions, LogOutput,
    RemoveContainerOptions, UploadToContainerOptions,
};
use bollard::errors::Error as BollardError;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::image::CreateImageOptions;
use bollard::models::{HostConfig, HostConfigLogConfig, Mount, MountTypeEnum, ResourcesUlimits};
use bollard::Docker;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::RwLock;

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("the Docker engine does not answer: {0}")]
    Unavailable(String),
    #[error("image `{image}` is not on this machine and could not be pulled: {reason}")]
    ImageUnavailable { image: String, reason: String },
    #[error("no such container `{0}`")]
    NoSuchContainer(String),
    #[error("Docker refused: {0}")]
    Api(String),
}

impl From<BollardError> for DockerError {
    fn from(e: BollardError) -> Self {
        match e {
            BollardError::DockerResponseServerError {
                status_code,
                message,
            } => DockerError::Api(format!("{message} (HTTP {status_code})")),
            other => DockerError::Unavailable(other.to_string()),
        }
    }
}

fn status_of(e: &BollardError) -> Option<u16> {
    match e {
        BollardError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// The label every container of this server carries, with the database's instance id.
pub const LABEL_INSTANCE: &str = "ufaas.instance";
/// The label naming the server process (one id per start) that made the container: what an
/// earlier run left is told apart from what this one makes.
pub const LABEL_BOOT: &str = "ufaas.boot";
/// The label naming the task that made the container.
pub const LABEL_TASK: &str = "ufaas.task";
/// Where the idle main process of every container is placed.
pub const PAUSE_PATH: &str = ".ufaas/pause";

/// What a new container looks like. Its main process only idles; tasks run in it as execs.
#[derive(Debug, Clone, Default)]
pub struct ContainerSpec {
    pub image: String,
    pub labels: HashMap<String, String>,
    pub working_dir: Option<String>,
    pub memory_bytes: i64,
    pub nano_cpus: i64,
    pub pids: i64,
    /// Mount point → tmpfs options (`size=…,mode=…`).
    pub tmpfs: HashMap<String, String>,
    /// `host:dest[:ro]`.
    pub binds: Vec<String>,
    pub network: bool,
    pub init: bool,
    pub hardening: Hardening,
}

/// Container defaults that keep a task in its box. The operator sets them (flags of
/// `ufaas serve`); no task spec can loosen them.
#[derive(Debug, Clone)]
pub struct Hardening {
    /// `cap_drop: ALL`.
    pub drop_all_caps: bool,
    /// `no-new-privileges`: setuid binaries gain nothing.
    pub no_new_privileges: bool,
    /// Open files per process (RLIMIT_NOFILE).
    pub nofile: i64,
    /// Largest file a process may write, in bytes (RLIMIT_FSIZE).
    pub fsize_bytes: i64,
    /// Size cap of the container's json-file log.
    pub log_max_size: String,
    /// Read-only root filesystem; `writable` paths become anonymous volumes.
    pub read_only_root: bool,
    pub writable: Vec<String>,
    /// Run as this user (`uid[:gid]`) instead of the image's.
    pub user: Option<String>,
    /// OCI runtime (`runsc` for gVisor); Docker's default when `None`.
    pub runtime: Option<String>,
    /// A seccomp profile (JSON text); Docker's default profile when `None`.
    pub seccomp_profile: Option<String>,
}

impl Default for Hardening {
    fn default() -> Self {
        Hardening {
            drop_all_caps: true,
            no_new_privileges: true,
            nofile: 1024,
            fsize_bytes: 1 << 30,
            log_max_size: "1m".into(),
            read_only_root: false,
            writable: Vec::new(),
            user: None,
            runtime: None,
            seccomp_profile: None,
        }
    }
}

impl Hardening {
    fn apply(&self, host: &mut HostConfig) {
        let h = self;
        if h.drop_all_caps {
            host.cap_drop = Some(vec!["ALL".into()]);
        }
        let mut security = Vec::new();
        if h.no_new_privileges {
            security.push("no-new-privileges".to_string());
        }
        if let Some(profile) = &h.seccomp_profile {
            security.push(format!("seccomp={profile}"));
        }
        host.security_opt = Some(security);
        host.ulimits = Some(vec![
            ResourcesUlimits {
                name: Some("nofile".into()),
                soft: Some(h.nofile),
                hard: Some(h.nofile),
            },
            ResourcesUlimits {
                name: Some("fsize".into()),
                soft: Some(h.fsize_bytes),
                hard: Some(h.fsize_bytes),
            },
        ]);
        host.log_config = Some(HostConfigLogConfig {
            typ: Some("json-file".into()),
            config: Some(HashMap::from([
                ("max-size".to_string(), h.log_max_size.clone()),
                ("max-file".to_string(), "1".to_string()),
            ])),
        });
        host.readonly_rootfs = Some(h.read_only_root);
        if h.read_only_root {
            host.mounts = Some(
                h.writable
                    .iter()
                    .map(|target| Mount {
                        target: Some(target.clone()),
                        typ: Some(MountTypeEnum::VOLUME),
                        ..Default::default()
                    })
                    .collect(),
            );
        }
        host.runtime = h.runtime.clone();
    }
}

/// One command to run in a live container.
#[derive(Debug, Clone, Default)]
pub struct ExecRequest {
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub stdin: Option<Vec<u8>>,
    pub user: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// What a command printed (each stream kept up to a cap) and how it ended.
#[derive(Debug, Clone, Default)]
pub struct ExecResult {
    pub exit_code: Option<i64>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub truncated: bool,
    /// Output passed eight times the cap plus 1 MiB and we stopped reading: the command may
    /// still run, and the caller must kill it.
    pub overflowed: bool,
}

pub struct Engine {
    host: Option<String>,
    negotiated: RwLock<Option<Docker>>,
}

impl Engine {
    /// An engine at `host` (`unix:///path`, `tcp://…`), else `DOCKER_HOST` or the local
    /// socket. Nothing is opened yet: the server starts (and `/readyz` says why it is not
    /// ready) even when no engine is there.
    pub fn new(host: Option<&str>) -> Engine {
        Engine {
            host: host.map(str::to_string),
            negotiated: RwLock::new(None),
        }
    }

    fn connect(&self) -> Result<Docker, BollardError> {
        const TIMEOUT_SECS: u64 = 120;
        match self.host.as_deref() {
            None => Docker::connect_with_local_defaults(),
            Some(h) if h.starts_with("unix://") || h.starts_with('/') => {
                Docker::connect_with_unix(h, TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
            }
            Some(h) => Docker::connect_with_http(h, TIMEOUT_SECS, bollard::API_DEFAULT_VERSION),
        }
    }

    async fn client(&self) -> Result<Docker, DockerError> {
        if let Some(c) = self.negotiated.read().await.as_ref() {
            return Ok(c.clone());
        }
        let mut slot = self.negotiated.write().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let client = self
            .connect()
            .map_err(|e| DockerError::Unavailable(e.to_string()))?
            .negotiate_version()
            .await
            .map_err(|e| DockerError::Unavailable(e.to_string()))?;
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Forgets the negotiated client after a connection failure, so the next call renegotiates
    /// (the engine may have come back as another version).
    async fn on_error(&self, e: &DockerError) {
        if matches!(e, DockerError::Unavailable(_)) {
            *self.negotiated.write().await = None;
        }
    }

    async fn call<T, F, Fut>(&self, f: F) -> Result<T, DockerError>
    where
        F: FnOnce(Docker) -> Fut,
        Fut: std::future::Future<Output = Result<T, DockerError>>,
    {
        let client = self.client().await?;
        let result = f(client).await;
        if let Err(e) = &result {
            self.on_error(e).await;
        }
        result
    }

    pub async fn ping(&self) -> Result<(), DockerError> {
        self.call(|d| async move {
            d.ping().await?;
            Ok(())
        })
        .await
    }

    /// Makes sure `image` is here (pulling it if a registry answers) and returns its WORKDIR
    /// (`/` when it sets none).
    pub async fn ensure_image(&self, image: &str) -> Result<String, DockerError> {
        self.call(|d| async move {
            match d.inspect_image(image).await {
                Ok(info) => return Ok(workdir_of(&info)),
                Err(e) if status_of(&e) == Some(404) => {}
                Err(e) => return Err(e.into()),
            }
            let opts = CreateImageOptions {
                from_image: image,
                ..Default::default()
            };
            let mut pull = d.create_image(Some(opts), None, None);
            while let Some(item) = pull.next().await {
                match item {
                    Ok(info) => {
                        if let Some(err) = info.error {
                            return Err(DockerError::ImageUnavailable {
                                image: image.to_string(),
                                reason: err,
                            });
                        }
                    }
                    Err(e) => {
                        let reason = match e {
                            BollardError::DockerResponseServerError { message, .. } => message,
                            other => other.to_string(),
                        };
                        return Err(DockerError::ImageUnavailable {
                            image: image.to_string(),
                            reason,
                        });
                    }
                }
            }
            let info = d.inspect_image(image).await?;
            Ok(workdir_of(&info))
        })
        .await
    }

    /// Creates a container whose main process idles (the pause program placed by
    /// [`Engine::upload`] before start) and returns its id.
    pub async fn create(&self, spec: &ContainerSpec) -> Result<String, DockerError> {
        self.call(|d| async move {
            let mut host_config = HostConfig {
                memory: Some(spec.memory_bytes),
                // Equal to memory: no swap on top, so a memory hog is stopped, not slowed.
                memory_swap: Some(spec.memory_bytes),
                nano_cpus: Some(spec.nano_cpus),
                pids_limit: Some(spec.pids),
                tmpfs: (!spec.tmpfs.is_empty()).then(|| spec.tmpfs.clone()),
                binds: (!spec.binds.is_empty()).then(|| spec.binds.clone()),
                network_mode: Some(if spec.network { "bridge" } else { "none" }.to_string()),
                init: Some(spec.init),
                privileged: Some(false),
                ..Default::default()
            };
            spec.hardening.apply(&mut host_config);
            let config = Config {
                image: Some(spec.image.clone()),
                cmd: Some(pause_cmd()),
                entrypoint: Some(Vec::new()),
                labels: Some(spec.labels.clone()),
                working_dir: spec.working_dir.clone(),
                user: spec.hardening.user.clone(),
                network_disabled: Some(!spec.network),
                host_config: Some(host_config),
                ..Default::default()
            };
            let created = d
                .create_container(None::<CreateContainerOptions<String>>, config)
                .await?;
            Ok(created.id)
        })
        .await
    }

    /// Unpacks an uncompressed tar at `/` of the container.
    pub async fn upload(&self, id: &str, tar: Vec<u8>) -> Result<(), DockerError> {
        self.upload_at(id, "/", tar).await
    }

    /// Unpacks an uncompressed tar at `path` of the container.
    pub async fn upload_at(&self, id: &str, path: &str, tar: Vec<u8>) -> Result<(), DockerError> {
        self.call(|d| async move {
            let opts = UploadToContainerOptions {
                path: path.to_string(),
                ..Default::default()
            };
            d.upload_to_container(id, Some(opts), Bytes::from(tar))
                .await
                .map_err(|e| map_container_err(id, e))
        })
        .await
    }

    pub async fn start(&self, id: &str) -> Result<(), DockerError> {
        self.call(|d| async move {
            d.start_container::<String>(id, None)
                .await
                .map_err(|e| map_container_err(id, e))
        })
        .await
    }

    /// Whether the container exists and runs.
    pub async fn is_running(&self, id: &str) -> Result<bool, DockerError> {
        self.call(|d| async move {
            match d.inspect_container(id, None).await {
                Ok(info) => Ok(info.state.and_then(|s| s.running).unwrap_or(false)),
                Err(e) if status_of(&e) == Some(404) => Ok(false),
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    /// Creates (does not start) the exec that will run `req` in container `id`.
    pub async fn create_exec(&self, id: &str, req: &ExecRequest) -> Result<String, DockerError> {
        self.call(|d| async move {
            let opts = CreateExecOptions {
                cmd: Some(req.cmd.clone()),
                env: Some(req.env.clone()),
                working_dir: req.working_dir.clone(),
                user: req.user.clone(),
                attach_stdin: Some(req.stdin.is_some()),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                tty: Some(false),
                ..Default::default()
            };
            let exec = d
                .create_exec(id, opts)
                .await
                .map_err(|e| map_container_err(id, e))?;
            Ok(exec.id)
        })
        .await
    }

    /// Starts exec `exec_id`, feeding `stdin`, keeping up to `cap` bytes of each stream and
    /// handing every chunk to `on_chunk` as it comes.
    pub async fn run_exec(
        &self,
        exec_id: &str,
        stdin: Option<Vec<u8>>,
        cap: usize,
        on_chunk: &(dyn Fn(Stream, &[u8]) + Send + Sync),
    ) -> Result<ExecResult, DockerError> {
        let d = self.client().await?;
        let result = run_exec_with(&d, exec_id, stdin, cap, on_chunk).await;
        if let Err(e) = &result {
            self.on_error(e).await;
        }
        result
    }

    /// How an exec stands: `Some((running, exit code))`, or `None` when Docker no longer knows
    /// it (its container is gone).
    pub async fn exec_state(
        &self,
        exec_id: &str,
    ) -> Result<Option<(bool, Option<i64>)>, DockerError> {
        self.call(|d| async move {
            match d.inspect_exec(exec_id).await {
                Ok(info) => Ok(Some((info.running == Some(true), info.exit_code))),
                Err(e) if status_of(&e) == Some(404) => Ok(None),
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    /// Whether the container's memory cgroup has hit its limit (cgroup v1's `failcnt`, or a
    /// peak at the limit): with a SIGKILLed command, that means the OOM killer.
    pub async fn memory_limit_hit(&self, id: &str) -> Result<bool, DockerError> {
        self.call(|d| async move {
            let opts = bollard::container::StatsOptions {
                stream: false,
                one_shot: true,
            };
            let mut stats = d.stats(id, Some(opts));
            match stats.next().await {
                Some(Ok(s)) => {
                    let m = s.memory_stats;
                    let failed = m.failcnt.unwrap_or(0) > 0;
                    let peaked =
                        matches!((m.max_usage, m.limit), (Some(u), Some(l)) if l > 0 && u >= l);
                    Ok(failed || peaked)
                }
                Some(Err(e)) => Err(e.into()),
                None => Ok(false),
            }
        })
        .await
    }

    pub async fn kill(&self, id: &str) -> Result<(), DockerError> {
        self.call(|d| async move {
            match d
                .kill_container(id, Some(KillContainerOptions { signal: "SIGKILL" }))
                .await
            {
                Ok(()) => Ok(()),
                // Gone, or not running: either way nothing runs in it any more.
                Err(e) if matches!(status_of(&e), Some(404) | Some(409)) => Ok(()),
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    /// Removes a container, killing it first; an unknown one counts as removed.
    pub async fn remove(&self, id: &str) -> Result<(), DockerError> {
        self.call(|d| async move {
            let opts = RemoveContainerOptions {
                force: true,
                v: true,
                ..Default::default()
            };
            match d.remove_container(id, Some(opts)).await {
                Ok(()) => Ok(()),
                Err(e) if status_of(&e) == Some(404) => Ok(()),
                // 409: removal already in progress.
                Err(e) if status_of(&e) == Some(409) => Ok(()),
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    /// Every container (running or not) carrying `key=value`, with its labels.
    pub async fn list_labelled_with(
        &self,
        key: &str,
        value: &str,
    ) -> Result<Vec<(String, HashMap<String, String>)>, DockerError> {
        self.call(|d| async move {
            let mut filters = HashMap::new();
            filters.insert("label".to_string(), vec![format!("{key}={value}")]);
            let opts = ListContainersOptions {
                all: true,
                filters,
                ..Default::default()
            };
            let list = d.list_containers(Some(opts)).await?;
            Ok(list
                .into_iter()
                .filter_map(|c| Some((c.id?, c.labels.unwrap_or_default())))
                .collect())
        })
        .await
    }

    /// Ids of every container (running or not) carrying `key=value`.
    pub async fn list_labelled(&self, key: &str, value: &str) -> Result<Vec<String>, DockerError> {
        let list = self.list_labelled_with(key, value).await?;
        Ok(list.into_iter().map(|(id, _)| id).collect())
    }
}

fn map_container_err(id: &str, e: BollardError) -> DockerError {
    if status_of(&e) == Some(404) {
        DockerError::NoSuchContainer(id.to_string())
    } else {
        e.into()
    }
}

fn workdir_of(info: &bollard::models::ImageInspect) -> String {
    info.config
        .as_ref()
        .and_then(|c| c.working_dir.clone())
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".to_string())
}

async fn run_exec_with(
    d: &Docker,
    exec_id: &str,
    stdin: Option<Vec<u8>>,
    cap: usize,
    on_chunk: &(dyn Fn(Stream, &[u8]) + Send + Sync),
) -> Result<ExecResult, DockerError> {
    let started = d.start_exec(exec_id, None).await?;
    let StartExecResults::Attached {
        mut output,
        mut input,
    } = started
    else {
        return Err(DockerError::Api("exec started detached".into()));
    };
    // Feed stdin from its own task so a command that prints before it reads cannot deadlock.
    let feeder = stdin.map(|data| {
        tokio::spawn(async move {
            let _ = input.write_all(&data).await;
            let _ = input.flush().await;
            // Half-close: the command sees end of input.
            let _ = input.shutdown().await;
        })
    });
    let mut result = ExecResult::default();
    // Past the cap, output is read and dropped up to this much, so a task that prints a
    // little too much still ends on its own; beyond it, it is a flood.
    let flood = cap.saturating_mul(8).saturating_add(1 << 20);
    let mut produced = 0usize;
    while let Some(item) = output.next().await {
        let (stream, message) = match item {
            Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                (Stream::Stdout, message)
            }
            Ok(LogOutput::StdErr { message }) => (Stream::Stderr, message),
            Ok(LogOutput::StdIn { .. }) => continue,
            Err(e) => {
                if let Some(f) = feeder {
                    f.abort();
                }
                return Err(e.into());
            }
        };
        on_chunk(stream, &message);
        let buf = match stream {
            Stream::Stdout => &mut result.stdout,
            Stream::Stderr => &mut result.stderr,
        };
        let room = cap.saturating_sub(buf.len());
        buf.extend_from_slice(&message[..message.len().min(room)]);
        if message.len() > room {
            result.truncated = true;
        }
        produced = produced.saturating_add(message.len());
        if produced > flood {
            // A flood (`yes`): stop reading rather than drain it until the timeout; the
            // caller kills the command.
            result.overflowed = true;
            if let Some(f) = feeder {
                f.abort();
            }
            return Ok(result);
        }
    }
    if let Some(f) = feeder {
        f.abort();
    }
    // The stream closes as the process exits; Docker may take a moment to record the code.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let info = d.inspect_exec(exec_id).await?;
        if info.running != Some(true) || tokio::time::Instant::now() >= deadline {
            result.exit_code = info.exit_code;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(result)
}

/// The idle main process: the pause program we upload, where we have one for this machine.
fn pause_cmd() -> Vec<String> {
    if pause_program().is_some() {
        vec![format!("/{PAUSE_PATH}")]
    } else {
        vec!["sleep".into(), "2147483647".into()]
    }
}

/// A 129-byte static x86-64 ELF that loops on `pause(2)`: every image can idle with it, even
/// one without a shell or `sleep`.
pub fn pause_program() -> Option<Vec<u8>> {
    if std::env::consts::ARCH != "x86_64" {
        return None;
    }
    const BASE: u64 = 0x40_0000;
    // mov eax, 34 (pause); syscall; jmp back to the mov.
    const CODE: [u8; 9] = [0xb8, 0x22, 0, 0, 0, 0x0f, 0x05, 0xeb, 0xf7];
    let total = (64 + 56 + CODE.len()) as u64;
    let mut elf = Vec::with_capacity(total as usize);
    elf.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&(BASE + 64 + 56).to_le_bytes()); // entry
    elf.extend_from_slice(&64u64.to_le_bytes()); // program headers
    elf.extend_from_slice(&0u64.to_le_bytes()); // no section headers
    elf.extend_from_slice(&0u32.to_le_bytes());
    elf.extend_from_slice(&64u16.to_le_bytes());
    elf.extend_from_slice(&56u16.to_le_bytes());
    elf.extend_from_slice(&1u16.to_le_bytes());
    elf.extend_from_slice(&[0; 6]);
    elf.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    elf.extend_from_slice(&5u32.to_le_bytes()); // R + X
    elf.extend_from_slice(&0u64.to_le_bytes());
    elf.extend_from_slice(&BASE.to_le_bytes());
    elf.extend_from_slice(&BASE.to_le_bytes());
    elf.extend_from_slice(&total.to_le_bytes());
    elf.extend_from_slice(&total.to_le_bytes());
    elf.extend_from_slice(&0x1000u64.to_le_bytes());
    elf.extend_from_slice(&CODE);
    Some(elf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_program_is_a_well_formed_elf() {
        let Some(elf) = pause_program() else { return };
        assert_eq!(elf.len(), 129);
        assert_eq!(&elf[..4], b"\x7fELF");
        let entry = u64::from_le_bytes(elf[24..32].try_into().unwrap_or([0; 8]));
        assert_eq!(entry, 0x40_0078);
        assert_eq!(&elf[120..], &[0xb8, 0x22, 0, 0, 0, 0x0f, 0x05, 0xeb, 0xf7]);
    }
}
