//! The only module that talks to Docker (through bollard). Everything else asks it for
//! containers, uploads and commands in its own terms.
//!
//! The API version is negotiated with the engine on first use (Debian's engine speaks 1.41),
//! and renegotiated after a failure, so the server starts, and says so on `/readyz`, while
//! Docker is away.

use std::collections::HashMap;

use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, HostConfig, HostConfigLogConfig, Mount, MountType, ResourcesUlimits,
};
use bollard::query_parameters::{
    AttachContainerOptions, CreateImageOptions, KillContainerOptions, ListContainersOptions,
    RemoveContainerOptions, StatsOptions, UploadToContainerOptions,
};
use bollard::Docker;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::AsyncWrite;
use tokio::sync::RwLock;

use crate::model::Stream;

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
/// What a container's main process prints, chunk by chunk, as it comes.
pub type OutputStream = std::pin::Pin<
    Box<dyn futures_util::Stream<Item = Result<(Stream, Bytes), DockerError>> + Send>,
>;

/// A container's attached stdio: what its main process prints, and its stdin.
pub struct Attached {
    pub output: OutputStream,
    pub input: std::pin::Pin<Box<dyn AsyncWrite + Send>>,
}

/// What a new container looks like. Its main process is `main`, run with no arguments and
/// its stdin open (ufaas's agent, which runs the tasks sent to it; this module does not need
/// to know).
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
    pub hardening: Hardening,
    /// The main process: a path in the container.
    pub main: String,
    /// A host file bind-mounted read-only at `main` (else `main` must be in the image or
    /// uploaded before start).
    pub main_bind: Option<std::path::PathBuf>,
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
    /// Whether the engine logs what the container prints. A function's container prints
    /// only the agent's frames (the protocol of every call): logging them would cost the
    /// engine a JSON encoding and a file write per call, and show nothing a person reads.
    pub log: bool,
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
            log: true,
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
        host.log_config = Some(if h.log {
            HostConfigLogConfig {
                typ: Some("json-file".into()),
                config: Some(HashMap::from([
                    ("max-size".to_string(), h.log_max_size.clone()),
                    ("max-file".to_string(), "1".to_string()),
                ])),
            }
        } else {
            HostConfigLogConfig {
                typ: Some("none".into()),
                config: None,
            }
        });
        host.readonly_rootfs = Some(h.read_only_root);
        if h.read_only_root {
            host.mounts = Some(
                h.writable
                    .iter()
                    .map(|target| Mount {
                        target: Some(target.clone()),
                        typ: Some(MountType::VOLUME),
                        ..Default::default()
                    })
                    .collect(),
            );
        }
        host.runtime = h.runtime.clone();
    }
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

    /// Whether the engine runs on this machine (a unix socket), so it can bind-mount our
    /// files.
    pub fn is_local(&self) -> bool {
        let host = self
            .host
            .clone()
            .or_else(|| std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()));
        host.is_none_or(|h| h.starts_with("unix://") || h.starts_with('/'))
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
                from_image: Some(image.to_string()),
                ..Default::default()
            };
            let mut pull = d.create_image(Some(opts), None, None);
            while let Some(item) = pull.next().await {
                match item {
                    Ok(info) => {
                        if let Some(err) = info.error_detail.and_then(|d| d.message) {
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

    /// Creates a container whose main process is the agent, with its stdin open for
    /// [`Engine::attach`], and returns its id.
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
                // The agent is PID 1 and reaps orphans itself; with Docker's init above it,
                // a task could write into the agent's stdout through /proc/1/fd/1.
                init: Some(false),
                privileged: Some(false),
                ..Default::default()
            };
            spec.hardening.apply(&mut host_config);
            if let Some(host) = &spec.main_bind {
                host_config.mounts.get_or_insert_with(Vec::new).push(Mount {
                    target: Some(spec.main.clone()),
                    source: Some(host.to_string_lossy().into_owned()),
                    typ: Some(MountType::BIND),
                    read_only: Some(true),
                    ..Default::default()
                });
            }
            let config = ContainerCreateBody {
                image: Some(spec.image.clone()),
                cmd: Some(vec![spec.main.clone()]),
                entrypoint: Some(Vec::new()),
                open_stdin: Some(true),
                stdin_once: Some(false),
                attach_stdin: Some(true),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                tty: Some(false),
                labels: Some(spec.labels.clone()),
                working_dir: spec.working_dir.clone(),
                user: spec.hardening.user.clone(),
                network_disabled: Some(!spec.network),
                host_config: Some(host_config),
                ..Default::default()
            };
            let created = d.create_container(None, config).await?;
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
            d.upload_to_container(id, Some(opts), bollard::body_full(Bytes::from(tar)))
                .await
                .map_err(|e| map_container_err(id, e))
        })
        .await
    }

    pub async fn start(&self, id: &str) -> Result<(), DockerError> {
        self.call(|d| async move {
            d.start_container(id, None)
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

    /// Attaches to the container's stdio (before start, nothing it prints is missed). The
    /// detach keys are a control character the agent protocol never sends.
    pub async fn attach(&self, id: &str) -> Result<Attached, DockerError> {
        self.call(|d| async move {
            let opts = AttachContainerOptions {
                stdin: true,
                stdout: true,
                stderr: true,
                stream: true,
                logs: false,
                detach_keys: Some("ctrl-_".into()),
            };
            let attached = d
                .attach_container(id, Some(opts))
                .await
                .map_err(|e| map_container_err(id, e))?;
            let output = attached.output.filter_map(|item| async move {
                match item {
                    Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                        Some(Ok((Stream::Stdout, message)))
                    }
                    Ok(LogOutput::StdErr { message }) => Some(Ok((Stream::Stderr, message))),
                    Ok(LogOutput::StdIn { .. }) => None,
                    Err(e) => Some(Err(DockerError::from(e))),
                }
            });
            Ok(Attached {
                output: Box::pin(output),
                input: attached.input,
            })
        })
        .await
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
            let opts = StatsOptions {
                stream: false,
                one_shot: true,
            };
            let mut stats = d.stats(id, Some(opts));
            match stats.next().await {
                Some(Ok(s)) => {
                    let m = s.memory_stats.unwrap_or_default();
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
                .kill_container(
                    id,
                    Some(KillContainerOptions {
                        signal: "SIGKILL".into(),
                    }),
                )
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
                filters: Some(filters),
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
