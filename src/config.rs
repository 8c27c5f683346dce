//! Command-line and environment configuration: one clap `Config` per subcommand; every flag of
//! `ufaas serve` is also read from a `UFAAS_*` variable.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::spec::Policy;
use crate::store::Retention;

#[derive(Debug, Parser)]
#[command(
    name = "ufaas",
    version,
    about = "A small, fast, single-binary FaaS and job runner on Docker"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP/WebSocket server.
    Serve(Box<ServeConfig>),
    /// Print task events as they happen.
    Watch(crate::cli::WatchArgs),
    /// Submit a task spec; with --follow, stream its events and output until it ends.
    Run(crate::cli::RunArgs),
    /// List tasks, newest first.
    Ls(crate::cli::tasks::LsArgs),
    /// Show one task's record.
    Get(crate::cli::tasks::TaskArgs),
    /// Cancel a task (a running one is killed).
    Cancel(crate::cli::tasks::TaskArgs),
    /// Print what a task printed; with -f, follow it until it ends.
    Logs(crate::cli::tasks::LogsArgs),
    /// Named functions: init, deploy, invoke, ls, describe, rm, logs.
    #[command(name = "fn")]
    Fn(Box<crate::cli::functions::FnArgs>),
    /// Run functions one after the other, each one's output the next one's input.
    Pipeline(crate::cli::functions::PipelineArgs),
    /// Set or remove the secrets functions read from /run/secrets.
    Secret(crate::cli::functions::SecretArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address to listen on.
    #[arg(long, env = "UFAAS_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// SQLite database file (created if missing).
    #[arg(long, env = "UFAAS_DB", default_value = "./ufaas.db")]
    pub db: PathBuf,
    /// Tasks running at once.
    #[arg(long, env = "UFAAS_MAX_CONCURRENT", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent: u32,
    /// Waiting tasks (RECEIVED and PENDING) past which `POST /fn` answers 429.
    #[arg(long, env = "UFAAS_MAX_QUEUE", default_value_t = 1000)]
    pub max_queue: u32,
    /// Seconds a kept container may stay idle before it is removed.
    #[arg(long, env = "UFAAS_KEEP_ALIVE", default_value_t = 300)]
    pub keep_alive: u64,
    /// Default run limit of a task, in seconds, when its spec gives no `timeout`.
    #[arg(long, env = "UFAAS_DEFAULT_TIMEOUT", default_value_t = 3600)]
    pub default_timeout: u64,
    /// Default maximum life of a container, in seconds, when the spec gives no `ttl`.
    #[arg(long, env = "UFAAS_DEFAULT_TTL", default_value_t = 86400)]
    pub default_ttl: u64,
    /// Memory of a task's container when its spec sets none, in MiB.
    #[arg(long, env = "UFAAS_DEFAULT_MEMORY_MB", default_value_t = 512)]
    pub default_memory_mb: u64,
    /// Highest `limits.memory_mb` a spec may ask for.
    #[arg(long, env = "UFAAS_MAX_MEMORY_MB", default_value_t = 4096)]
    pub max_memory_mb: u64,
    /// CPUs of a task's container when its spec sets none.
    #[arg(long, env = "UFAAS_DEFAULT_CPUS", default_value_t = 1.0)]
    pub default_cpus: f64,
    /// Highest `limits.cpus` a spec may ask for (default: the machine's cores).
    #[arg(long, env = "UFAAS_MAX_CPUS")]
    pub max_cpus: Option<f64>,
    /// Process limit of a task's container when its spec sets none.
    #[arg(long, env = "UFAAS_DEFAULT_PIDS", default_value_t = 256)]
    pub default_pids: u64,
    /// Highest `limits.pids` a spec may ask for.
    #[arg(long, env = "UFAAS_MAX_PIDS", default_value_t = 4096)]
    pub max_pids: u64,
    /// Bytes of stdout, and of stderr, kept per task; the rest is dropped and
    /// `output_truncated` set.
    #[arg(long, env = "UFAAS_MAX_OUTPUT_BYTES", default_value_t = 1 << 20)]
    pub max_output_bytes: usize,
    /// Largest request body, in bytes (413 past it).
    #[arg(long, env = "UFAAS_MAX_BODY_BYTES", default_value_t = 64 << 20)]
    pub max_body_bytes: u64,
    /// Decoded bytes of a task's inline resources (413 past it).
    #[arg(long, env = "UFAAS_MAX_INLINE_BYTES", default_value_t = 32 << 20)]
    pub max_inline_bytes: u64,
    /// Bytes a `uri` resource may have when fetched.
    #[arg(long, env = "UFAAS_MAX_FETCH_BYTES", default_value_t = 256 << 20)]
    pub max_fetch_bytes: u64,
    /// Seconds a `uri` resource's fetch may take.
    #[arg(long, env = "UFAAS_FETCH_TIMEOUT", default_value_t = 60)]
    pub fetch_timeout: u64,
    /// Bytes an archive resource may unpack to.
    #[arg(long, env = "UFAAS_MAX_EXTRACT_BYTES", default_value_t = 512 << 20)]
    pub max_extract_bytes: u64,
    /// Largest tmpfs `size` a spec may ask for, in bytes.
    #[arg(long, env = "UFAAS_MAX_TMPFS_BYTES", default_value_t = 1 << 30)]
    pub max_tmpfs_bytes: u64,
    /// Let specs ask for `"network": true`.
    #[arg(long, env = "UFAAS_ALLOW_NETWORK")]
    pub allow_network: bool,
    /// Host paths (and what is below them) that `bind` resources may mount; repeatable.
    #[arg(long = "allow-bind", env = "UFAAS_ALLOW_BIND", value_delimiter = ',')]
    pub allow_bind: Vec<PathBuf>,
    /// How long the event log keeps events: a count (`1000000`) or an age (`90s`, `30m`,
    /// `12h`, `7d`). The last event of a task that has not ended is always kept.
    #[arg(long, env = "UFAAS_EVENT_RETENTION", default_value = "1000000")]
    pub event_retention: Retention,
    /// Seconds between prunings of the event log.
    #[arg(long, env = "UFAAS_EVENT_PRUNE_EVERY", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub event_prune_every: u64,
    /// Events a WebSocket subscriber may fall behind before it gets `lagged` and is closed.
    #[arg(long, env = "UFAAS_WS_QUEUE", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub ws_queue: u32,
    /// Seconds between WebSocket pings; a peer silent for two of them is closed.
    #[arg(long, env = "UFAAS_WS_PING", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub ws_ping: u64,
    /// Kernel send buffer of each connection, in bytes (0: the system's autotuning, up to
    /// megabytes per socket).
    #[arg(long, env = "UFAAS_SOCKET_SEND_BUFFER", default_value_t = 256 << 10)]
    pub socket_send_buffer: usize,
    /// File of API tokens, one per line (blank lines and lines starting with `#` are
    /// skipped). With it, or with a token in UFAAS_TOKEN, every request must send
    /// `Authorization: Bearer <token>`.
    #[arg(long, env = "UFAAS_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// One API token, read from the environment variable UFAAS_TOKEN only (a flag would show
    /// it in the process list). `serve` keeps only its digest.
    #[arg(skip = std::env::var("UFAAS_TOKEN").ok())]
    pub token: Option<String>,
    /// Serve without authentication even on a non-loopback address (refused otherwise).
    #[arg(long, env = "UFAAS_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
    /// Docker engine to use: `unix:///path` or `tcp://host:port` (default: DOCKER_HOST, else
    /// the local socket).
    #[arg(long, env = "UFAAS_DOCKER_HOST")]
    pub docker_host: Option<String>,
    /// Drop every Linux capability in task containers.
    #[arg(long, env = "UFAAS_DROP_CAPS", default_value_t = true, action = clap::ArgAction::Set)]
    pub drop_caps: bool,
    /// Set `no-new-privileges` on task containers.
    #[arg(long, env = "UFAAS_NO_NEW_PRIVILEGES", default_value_t = true, action = clap::ArgAction::Set)]
    pub no_new_privileges: bool,
    /// Open files per task process (RLIMIT_NOFILE).
    #[arg(long, env = "UFAAS_NOFILE", default_value_t = 1024)]
    pub nofile: i64,
    /// Largest file a task process may write, in bytes (RLIMIT_FSIZE).
    #[arg(long, env = "UFAAS_MAX_FILE_BYTES", default_value_t = 1 << 30)]
    pub max_file_bytes: i64,
    /// Size cap of each container's json-file log.
    #[arg(long, env = "UFAAS_LOG_MAX_SIZE", default_value = "1m")]
    pub log_max_size: String,
    /// Give task containers a read-only root; `/tmp` and the working directory stay writable.
    #[arg(long, env = "UFAAS_READ_ONLY_ROOT")]
    pub read_only_root: bool,
    /// Run task commands as this user (`uid[:gid]`) instead of the image's.
    #[arg(long, env = "UFAAS_USER")]
    pub user: Option<String>,
    /// OCI runtime for task containers (`runsc` for gVisor).
    #[arg(long, env = "UFAAS_RUNTIME")]
    pub runtime: Option<String>,
    /// A seccomp profile (JSON file) instead of Docker's default.
    #[arg(long, env = "UFAAS_SECCOMP_PROFILE")]
    pub seccomp_profile: Option<PathBuf>,
    /// Hosts (`name`, `name:port`) or networks (`10.0.0.0/8`) that `uri` resources may reach
    /// although they are loopback, link-local or private; repeatable.
    #[arg(long = "allow-fetch", env = "UFAAS_ALLOW_FETCH", value_delimiter = ',')]
    pub allow_fetch: Vec<String>,
    /// Upload the agent (each container's main process) into every container instead of
    /// bind-mounting it from beside the database. Automatic for a remote engine, and when the
    /// engine says it cannot see the file; force it when the engine sees another filesystem
    /// at the same path.
    #[arg(long, env = "UFAAS_AGENT_UPLOAD")]
    pub agent_upload: bool,
    /// tinyFaaS's HTTP gateway (`GET|POST /{name}`); `off` to serve none.
    #[arg(long, env = "UFAAS_GATEWAY_LISTEN", default_value = "127.0.0.1:8000")]
    pub gateway_listen: Listen,
    /// tinyFaaS's gRPC endpoint (`tinyfaas.proto`); `off` to serve none.
    #[arg(long, env = "UFAAS_GRPC_LISTEN", default_value = "127.0.0.1:9000")]
    pub grpc_listen: Listen,
    /// tinyFaaS's CoAP endpoint (UDP); `off` to serve none.
    #[arg(long, env = "UFAAS_COAP_LISTEN", default_value = "127.0.0.1:5683")]
    pub coap_listen: Listen,
}

/// The address of an extra listener, or none (`off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen(pub Option<SocketAddr>);

impl std::str::FromStr for Listen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            // tinyFaaS turns an endpoint off with the port -1.
            "off" | "none" | "-1" => Ok(Listen(None)),
            addr => addr.parse().map(|a| Listen(Some(a))).map_err(|e| {
                format!("`{addr}` is not `off` nor an address such as 127.0.0.1:8000: {e}")
            }),
        }
    }
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(a) => write!(f, "{a}"),
            None => f.write_str("off"),
        }
    }
}

impl ServeConfig {
    /// A configuration with every default, for tests and embedders.
    pub fn defaults() -> Self {
        let cli = Cli::parse_from(["ufaas", "serve"]);
        match cli.command {
            Command::Serve(c) => *c,
            _ => unreachable!("parsed `serve`"),
        }
    }

    pub fn max_cpus(&self) -> f64 {
        self.max_cpus.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get() as f64)
                .unwrap_or(1.0)
        })
    }

    /// The container defaults, read once at start (the seccomp profile is a file).
    pub fn hardening(&self) -> anyhow::Result<crate::docker::Hardening> {
        let seccomp_profile =
            match &self.seccomp_profile {
                Some(p) => Some(std::fs::read_to_string(p).map_err(|e| {
                    anyhow::anyhow!("reading --seccomp-profile {}: {e}", p.display())
                })?),
                None => None,
            };
        Ok(crate::docker::Hardening {
            drop_all_caps: self.drop_caps,
            no_new_privileges: self.no_new_privileges,
            nofile: self.nofile,
            fsize_bytes: self.max_file_bytes,
            log_max_size: self.log_max_size.clone(),
            log: true,
            read_only_root: self.read_only_root,
            writable: Vec::new(),
            user: self.user.clone(),
            runtime: self.runtime.clone(),
            seccomp_profile,
        })
    }

    pub fn policy(&self) -> Policy {
        Policy {
            max_memory_mb: self.max_memory_mb,
            max_cpus: self.max_cpus(),
            max_pids: self.max_pids,
            allow_network: self.allow_network,
            bind_allow: self.allow_bind.clone(),
            max_inline_bytes: self.max_inline_bytes,
            max_tmpfs_bytes: self.max_tmpfs_bytes,
            // Checked at start by `serve`, so a bad entry never gets this far.
            fetch_guard: std::sync::Arc::new(
                crate::netguard::FetchGuard::new(&self.allow_fetch).unwrap_or_default(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_contract() {
        let c = ServeConfig::defaults();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.db, PathBuf::from("./ufaas.db"));
        assert_eq!(c.keep_alive, 300);
        assert!(!c.agent_upload);
        assert_eq!(c.gateway_listen.to_string(), "127.0.0.1:8000");
        assert_eq!(c.grpc_listen.to_string(), "127.0.0.1:9000");
        assert_eq!(c.coap_listen.to_string(), "127.0.0.1:5683");
    }

    #[test]
    fn an_extra_listener_is_an_address_or_off() {
        use super::Listen;
        assert_eq!("off".parse::<Listen>(), Ok(Listen(None)));
        assert_eq!("-1".parse::<Listen>(), Ok(Listen(None)));
        assert_eq!(
            "0.0.0.0:9000".parse::<Listen>().map(|l| l.to_string()),
            Ok("0.0.0.0:9000".to_string())
        );
        assert!("9000".parse::<Listen>().is_err());
    }

    #[test]
    fn flags_parse() {
        let cli = Cli::parse_from([
            "ufaas",
            "serve",
            "--max-concurrent",
            "1",
            "--allow-bind",
            "/a,/b",
            "--agent-upload",
        ]);
        let Command::Serve(c) = cli.command else {
            panic!("expected serve");
        };
        assert_eq!(c.max_concurrent, 1);
        assert_eq!(c.allow_bind.len(), 2);
        assert!(c.agent_upload);
        assert!(Cli::try_parse_from(["ufaas", "serve", "--max-concurrent", "0"]).is_err());
    }
}
