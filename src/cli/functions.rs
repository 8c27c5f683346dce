//! `ufaas fn …` (init, deploy, invoke, ls, describe, rm, logs), `ufaas pipeline` and
//! `ufaas secret …`: named functions (API.md section 5) from the command line, through
//! [`crate::client`].
//!
//! A function lives in a directory: the runtime's default file (`fn.py`, `index.js` or
//! `fn.sh`), any other files it needs, and an optional `ufaas.json` holding its name, runtime
//! and settings (the body of `PUT /functions/{ns}/{name}` without the code; flags override
//! it). `ufaas.json` is the CLI's and is never uploaded. A directory holding only the default
//! file is sent as `code`; anything more as a tar.gz in `archive` (`.git` left out).

use std::collections::{HashMap, HashSet};
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use base64::Engine as _;
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::{print_json, ServerArg};
use crate::client::{
    Client, ClientError, Function, FunctionName, Invocation, InvokeRequest, LogLine, LogQuery,
};
use crate::functions::spec::Runtime;
use crate::model::TaskId;

/// The file a directory's settings are read from.
pub const CONFIG_FILE: &str = "ufaas.json";

/// What a server takes in one request by default (`--max-body-bytes`): a deploy's whole
/// JSON body, the code base64-encoded in it.
pub const SERVER_MAX_BODY_BYTES: u64 = 64 << 20;
/// What an archive may unpack to on a server by default (`--max-extract-bytes`).
pub const SERVER_MAX_EXTRACT_BYTES: u64 = 512 << 20;
/// Room in a deploy's body for what is not the code (the settings).
const BODY_SLACK: u64 = 64 << 10;
/// The most lines `GET /functions/{ns}/{name}/logs` gives at once.
const MAX_TAIL: u32 = 10_000;
/// How often `ufaas fn logs -f` asks for new lines.
const FOLLOW_EVERY: Duration = Duration::from_secs(1);

/// What `ufaas fn init` writes into the runtime's default file.
fn starter(runtime: Runtime) -> &'static str {
    match runtime {
        Runtime::Python => "def main(event):\n    return {\"hello\": \"world\"}\n",
        Runtime::Node => "module.exports = (context, cb) => cb({hello: \"world\"})\n",
        Runtime::Shell => {
            "#!/bin/sh\n# The input is on standard input; what is printed is the output.\n\
             echo '{\"hello\": \"world\"}'\n"
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct FnArgs {
    #[command(subcommand)]
    pub command: FnCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum FnCommand {
    /// Write a starter function (the runtime's default file and ufaas.json) into DIR.
    Init(InitArgs),
    /// Deploy (create or replace) the function in DIR.
    #[command(alias = "build")]
    Deploy(DeployArgs),
    /// Call a function: its output goes to stdout as it came.
    Invoke(InvokeArgs),
    /// List functions.
    Ls(FnLsArgs),
    /// Show one function: version, code, settings, containers, invocations.
    Describe(FnNameArgs),
    /// Remove a function (calls in flight finish first).
    Rm(FnRmArgs),
    /// What a function's handler printed.
    Logs(FnLogsArgs),
}

#[derive(Debug, Clone, Args)]
pub struct InitArgs {
    /// Where to write it (created when missing).
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    #[arg(long, value_enum, default_value = "python")]
    pub runtime: Runtime,
    /// ns/name to deploy it as (default: `default/` and the directory's name).
    #[arg(long)]
    pub name: Option<FunctionName>,
}

/// `KEY=VALUE` of `--env`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvVar(pub String, pub String);

fn parse_env(s: &str) -> Result<EnvVar, String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok(EnvVar(k.to_string(), v.to_string())),
        _ => Err(format!("`{s}` is not KEY=VALUE")),
    }
}

#[derive(Debug, Clone, Args)]
pub struct DeployArgs {
    #[command(flatten)]
    pub server: ServerArg,
    /// The function's directory.
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// ns/name (default: ufaas.json's `name`).
    #[arg(long)]
    pub name: Option<FunctionName>,
    /// Default: ufaas.json's, else the one whose default file the directory holds.
    #[arg(long, value_enum)]
    pub runtime: Option<Runtime>,
    /// The file and entry point, e.g. `main.py:handle`, when not the runtime's default.
    #[arg(long)]
    pub handler: Option<String>,
    /// The image to run it in (default: the runtime's).
    #[arg(long)]
    pub image: Option<String>,
    /// What it does, in a line.
    #[arg(long)]
    pub description: Option<String>,
    /// An environment variable (repeatable; added to ufaas.json's `env`).
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<EnvVar>,
    /// A secret the handler may read as /run/secrets/NAME (repeatable; added to ufaas.json's).
    #[arg(long = "secret", value_name = "NAME")]
    pub secrets: Vec<String>,
    /// Containers kept ready (default 1).
    #[arg(long)]
    pub warm: Option<u32>,
    /// Most containers at once (default 4).
    #[arg(long)]
    pub max_containers: Option<u32>,
    /// Calls one container serves at once (default 1).
    #[arg(long)]
    pub concurrency: Option<u32>,
    /// Calls that may wait beyond those (default 100; then 429).
    #[arg(long)]
    pub max_queue: Option<u32>,
    /// Seconds per call (default 30).
    #[arg(long)]
    pub timeout: Option<u64>,
    /// `limits.memory_mb`.
    #[arg(long)]
    pub memory_mb: Option<u64>,
    /// `limits.cpus`.
    #[arg(long)]
    pub cpus: Option<f64>,
    /// `limits.pids`.
    #[arg(long)]
    pub pids: Option<u64>,
    /// Give its containers a network (the server must allow it).
    #[arg(long)]
    pub network: bool,
    /// Print the function as the server answered it.
    #[arg(long)]
    pub json: bool,
}

/// `K:V` of `--header`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header(pub String, pub String);

/// Parses `Name: value` (spaces around the value dropped); the name must be an HTTP token
/// and the value printable.
pub fn parse_header(s: &str) -> Result<Header, String> {
    let Some((name, value)) = s.split_once(':') else {
        return Err(format!("`{s}` is not NAME:VALUE"));
    };
    let name = name.trim();
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    {
        return Err(format!("`{name}` is not a header name"));
    }
    let value = value.trim();
    if value.chars().any(|c| c.is_control() && c != '\t') {
        return Err(format!(
            "the value of header `{name}` holds control characters"
        ));
    }
    Ok(Header(name.to_string(), value.to_string()))
}

#[derive(Debug, Clone, Args)]
pub struct InvokeArgs {
    #[command(flatten)]
    pub server: ServerArg,
    /// ns/name.
    pub function: FunctionName,
    /// The input: a file, or `-` for standard input (none: an empty call).
    #[arg(short = 'd', long = "data", value_name = "FILE|-")]
    pub data: Option<PathBuf>,
    /// Answer at once with the call's task id (its result: `ufaas get ID`).
    #[arg(long = "async")]
    pub run_async: bool,
    /// A request header the handler sees (repeatable).
    #[arg(short = 'H', long = "header", value_name = "NAME:VALUE", value_parser = parse_header)]
    pub headers: Vec<Header>,
}

#[derive(Debug, Clone, Args)]
pub struct FnLsArgs {
    #[command(flatten)]
    pub server: ServerArg,
    /// Only this namespace's.
    #[arg(long)]
    pub namespace: Option<String>,
    /// Print `{"functions": [...]}` as the server answered it.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct FnNameArgs {
    #[command(flatten)]
    pub server: ServerArg,
    /// ns/name.
    pub function: FunctionName,
    /// Print the function as the server answered it.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct FnRmArgs {
    #[command(flatten)]
    pub server: ServerArg,
    /// ns/name.
    pub function: FunctionName,
}

#[derive(Debug, Clone, Args)]
pub struct FnLogsArgs {
    #[command(flatten)]
    pub server: ServerArg,
    /// ns/name.
    pub function: FunctionName,
    /// The last N lines (1 to 10000; the server's default is 100).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub tail: Option<u32>,
    /// Only this invocation's lines.
    #[arg(long)]
    pub task: Option<TaskId>,
    /// Keep printing new lines until Ctrl-C.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// One JSON object per line, as the server gives them.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct PipelineArgs {
    #[command(flatten)]
    pub server: ServerArg,
    /// The steps, in order: each one's output is the next one's input.
    #[arg(required = true, value_name = "NS/NAME")]
    pub steps: Vec<FunctionName>,
    /// The first step's input: a file or `-` for standard input, sent as its JSON, or as
    /// text when it is not JSON.
    #[arg(short = 'd', long = "data", value_name = "FILE|-")]
    pub data: Option<PathBuf>,
    /// Answer at once with the pipeline's task id.
    #[arg(long = "async")]
    pub run_async: bool,
}

#[derive(Debug, Clone, Args)]
pub struct SecretArgs {
    #[command(subcommand)]
    pub command: SecretCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum SecretCommand {
    /// Set a secret. The value is never shown again, by this command or the server.
    Set(SecretSetArgs),
    /// Remove a secret.
    Rm(SecretRmArgs),
}

#[derive(Debug, Clone, Args)]
pub struct SecretSetArgs {
    #[command(flatten)]
    pub server: ServerArg,
    pub name: String,
    /// The value; `-` or none reads it from standard input (byte for byte; from a terminal,
    /// one line, not echoed). A value given here shows in the process list.
    pub value: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct SecretRmArgs {
    #[command(flatten)]
    pub server: ServerArg,
    pub name: String,
}

// ---------------------------------------------------------------------------------------
// ufaas.json

/// `ufaas.json`: a function's name, runtime and settings. Every key is optional; unknown
/// keys are refused (a typo would otherwise be silently ignored).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<Runtime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_containers: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queue: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<bool>,
}

impl FunctionConfig {
    /// `dir/ufaas.json`, or the empty configuration when there is none.
    pub fn read(dir: &Path) -> anyhow::Result<FunctionConfig> {
        let path = dir.join(CONFIG_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(FunctionConfig::default())
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))
    }

    /// The flags of `ufaas fn deploy` over the file's settings: each flag replaces its key;
    /// `--env` and `--secret` add to the file's.
    pub fn apply(&mut self, a: &DeployArgs) {
        fn set<T: Clone>(slot: &mut Option<T>, flag: &Option<T>) {
            if flag.is_some() {
                slot.clone_from(flag);
            }
        }
        if let Some(n) = &a.name {
            self.name = Some(n.to_string());
        }
        set(&mut self.runtime, &a.runtime);
        set(&mut self.handler, &a.handler);
        set(&mut self.image, &a.image);
        set(&mut self.description, &a.description);
        set(&mut self.warm, &a.warm);
        set(&mut self.max_containers, &a.max_containers);
        set(&mut self.concurrency, &a.concurrency);
        set(&mut self.max_queue, &a.max_queue);
        set(&mut self.timeout, &a.timeout);
        if a.network {
            self.network = Some(true);
        }
        if !a.env.is_empty() {
            let env = self.env.get_or_insert_with(Map::new);
            for EnvVar(k, v) in &a.env {
                env.insert(k.clone(), json!(v));
            }
        }
        if !a.secrets.is_empty() {
            let secrets = self.secrets.get_or_insert_with(Vec::new);
            for s in &a.secrets {
                if !secrets.contains(s) {
                    secrets.push(s.clone());
                }
            }
        }
        let limits = [
            ("memory_mb", a.memory_mb.map(|v| json!(v))),
            ("cpus", a.cpus.map(|v| json!(v))),
            ("pids", a.pids.map(|v| json!(v))),
        ];
        for (k, v) in limits {
            if let Some(v) = v {
                self.limits.get_or_insert_with(Map::new).insert(k.into(), v);
            }
        }
    }

    /// The function's name: the configured one.
    pub fn function_name(&self) -> anyhow::Result<FunctionName> {
        let Some(name) = &self.name else {
            bail!("no function name: pass --name ns/name, or set \"name\" in {CONFIG_FILE}");
        };
        name.parse()
            .map_err(|e: String| anyhow!("{CONFIG_FILE}: {e}"))
    }

    /// The body of `PUT /functions/{ns}/{name}`: the settings, `runtime`, and the code.
    pub fn body(&self, runtime: Runtime, package: &Package) -> Value {
        let mut v = match serde_json::to_value(self) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        };
        v.remove("name");
        v.insert("runtime".into(), json!(runtime.as_str()));
        match package {
            Package::Code { text, .. } => v.insert("code".into(), json!(text)),
            Package::Archive { gz, .. } => v.insert(
                "archive".into(),
                json!(base64::engine::general_purpose::STANDARD.encode(gz)),
            ),
        };
        Value::Object(v)
    }
}

/// The runtime of `dir`: the configured one, else the one whose default file is the only
/// default file there.
pub fn infer_runtime(dir: &Path, configured: Option<Runtime>) -> anyhow::Result<Runtime> {
    if let Some(r) = configured {
        return Ok(r);
    }
    let found: Vec<Runtime> = Runtime::ALL
        .into_iter()
        .filter(|r| dir.join(r.default_file()).is_file())
        .collect();
    match found.as_slice() {
        [r] => Ok(*r),
        [] => bail!(
            "{} holds none of fn.py, index.js and fn.sh: pass --runtime (and --handler), \
             or start one with `ufaas fn init`",
            dir.display()
        ),
        _ => bail!(
            "{} holds the default files of several runtimes: pass --runtime",
            dir.display()
        ),
    }
}

// ---------------------------------------------------------------------------------------
// init

/// A valid function name made of a directory's name (`default` namespace).
pub fn name_for_dir(dir: &Path) -> FunctionName {
    let base = std::fs::canonicalize(dir)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let mut name: String = base
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || "_.-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .skip_while(|c| !c.is_ascii_alphanumeric())
        .take(63)
        .collect();
    if !crate::client::valid_part(&name) {
        name = "function".into();
    }
    FunctionName {
        namespace: crate::client::DEFAULT_NAMESPACE.into(),
        name,
    }
}

/// `ufaas fn init`: writes the runtime's starter and a `ufaas.json` into `dir` (made when
/// missing), and gives the files written. Refuses, writing nothing, when either exists.
pub fn init(
    dir: &Path,
    runtime: Runtime,
    name: Option<&FunctionName>,
) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let code = dir.join(runtime.default_file());
    let config = dir.join(CONFIG_FILE);
    for p in [&code, &config] {
        if p.symlink_metadata().is_ok() {
            bail!(
                "{} exists; init writes only into a directory without {} and {CONFIG_FILE}",
                p.display(),
                runtime.default_file()
            );
        }
    }
    let name = name.cloned().unwrap_or_else(|| name_for_dir(dir));
    let settings = FunctionConfig {
        name: Some(name.to_string()),
        runtime: Some(runtime),
        ..FunctionConfig::default()
    };
    let settings = format!("{}\n", serde_json::to_string_pretty(&settings)?);
    let executable = runtime == Runtime::Shell;
    write_new(&code, starter(runtime), executable)?;
    if let Err(e) = write_new(&config, &settings, false) {
        let _ = std::fs::remove_file(&code);
        return Err(e);
    }
    Ok(vec![code, config])
}

/// Creates `path` with `text`, failing if it exists.
fn write_new(path: &Path, text: &str, executable: bool) -> anyhow::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if executable { 0o755 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = executable;
    let mut f = opts
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

// ---------------------------------------------------------------------------------------
// deploy packing

/// What a directory is sent as.
#[derive(Debug, Clone, PartialEq)]
pub enum Package {
    /// Only the runtime's default file, as text.
    Code { file: String, text: String },
    /// A tar.gz of the directory, and the paths in it (directories end with `/`).
    Archive { gz: Vec<u8>, files: Vec<String> },
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Dir,
    File,
    Link,
}

struct Entry {
    /// With `/` between components.
    rel: String,
    abs: PathBuf,
    kind: Kind,
}

/// Every entry below `dir` in path order, `.git` and the top `ufaas.json` left out; the
/// total size of the files is held to `max_bytes`.
fn walk(dir: &Path, max_bytes: u64) -> anyhow::Result<Vec<Entry>> {
    let mut out = Vec::new();
    let mut total = 0u64;
    walk_into(dir, "", &mut out, &mut total, max_bytes)?;
    Ok(out)
}

fn walk_into(
    dir: &Path,
    prefix: &str,
    out: &mut Vec<Entry>,
    total: &mut u64,
    max_bytes: u64,
) -> anyhow::Result<()> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .with_context(|| format!("reading {}", dir.display()))?;
    names.sort();
    for name in names {
        let name_text = name.to_string_lossy();
        if name_text == ".git" || (prefix.is_empty() && name_text == CONFIG_FILE) {
            continue;
        }
        let abs = dir.join(&name);
        let rel = format!("{prefix}{name_text}");
        let meta = abs
            .symlink_metadata()
            .with_context(|| format!("reading {}", abs.display()))?;
        let ft = meta.file_type();
        if ft.is_dir() {
            out.push(Entry {
                rel: rel.clone(),
                abs: abs.clone(),
                kind: Kind::Dir,
            });
            walk_into(&abs, &format!("{rel}/"), out, total, max_bytes)?;
        } else if ft.is_symlink() {
            out.push(Entry {
                rel,
                abs,
                kind: Kind::Link,
            });
        } else if ft.is_file() {
            *total += meta.len();
            if *total > max_bytes {
                bail!(
                    "the files of {} add up to more than the {} a server unpacks by default \
                     (--max-extract-bytes); leave out what the function does not need",
                    dir.display(),
                    mib(max_bytes)
                );
            }
            out.push(Entry {
                rel,
                abs,
                kind: Kind::File,
            });
        } else {
            bail!(
                "{} is not a file, a directory or a link: it cannot be deployed",
                abs.display()
            );
        }
    }
    Ok(())
}

fn mib(n: u64) -> String {
    format!("{} MiB", n >> 20)
}

/// Packs `dir` for `runtime`: its default file as `code` when it is all the directory holds
/// (and `handler` names no other file), else a tar.gz of everything. Refuses what a server
/// with default limits would: a body past `--max-body-bytes`, files past
/// `--max-extract-bytes`.
pub fn pack(dir: &Path, runtime: Runtime, handler: Option<&str>) -> anyhow::Result<Package> {
    pack_limited(
        dir,
        runtime,
        handler,
        SERVER_MAX_BODY_BYTES,
        SERVER_MAX_EXTRACT_BYTES,
    )
}

fn pack_limited(
    dir: &Path,
    runtime: Runtime,
    handler: Option<&str>,
    max_body: u64,
    max_extract: u64,
) -> anyhow::Result<Package> {
    let entries = walk(dir, max_extract)?;
    if entries.iter().all(|e| e.kind == Kind::Dir) {
        bail!(
            "{} holds no file to deploy; `ufaas fn init` writes a starter",
            dir.display()
        );
    }
    let default = runtime.default_file();
    let handler_file = handler.map(|h| h.split(':').next().unwrap_or(h));
    if let [only] = entries.as_slice() {
        if only.kind == Kind::File
            && only.rel == default
            && handler_file.is_none_or(|f| f == default)
        {
            let bytes =
                std::fs::read(&only.abs).with_context(|| format!("reading {}", only.rel))?;
            // Not text: it goes in an archive, which carries bytes.
            if let Ok(text) = String::from_utf8(bytes) {
                let sent = text.len() as u64 + BODY_SLACK;
                if sent > max_body {
                    bail!(
                        "{} is {} bytes: past the {} a server takes in one request by \
                         default (--max-body-bytes)",
                        only.abs.display(),
                        text.len(),
                        mib(max_body)
                    );
                }
                return Ok(Package::Code {
                    file: only.rel.clone(),
                    text,
                });
            }
        }
    }
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::default(),
    ));
    // No owner, fixed times, only the executable bit of the mode: the same files make the
    // same archive.
    tar.mode(tar::HeaderMode::Deterministic);
    tar.follow_symlinks(false);
    let mut files = Vec::new();
    for e in &entries {
        match e.kind {
            Kind::Dir => {
                tar.append_dir(&e.rel, &e.abs)
                    .with_context(|| format!("packing {}", e.rel))?;
                files.push(format!("{}/", e.rel));
            }
            Kind::File | Kind::Link => {
                tar.append_path_with_name(&e.abs, &e.rel)
                    .with_context(|| format!("packing {}", e.rel))?;
                files.push(e.rel.clone());
            }
        }
    }
    let gz = tar
        .into_inner()
        .and_then(|gz| gz.finish())
        .context("packing the archive")?;
    let encoded = (gz.len() as u64).div_ceil(3) * 4;
    if encoded + BODY_SLACK > max_body {
        bail!(
            "{} packs to {} bytes ({encoded} as base64): past the {} a server takes in one \
             request by default (--max-body-bytes); leave out what the function does not need \
             (.git is left out already)",
            dir.display(),
            gz.len(),
            mib(max_body)
        );
    }
    Ok(Package::Archive { gz, files })
}

// ---------------------------------------------------------------------------------------
// input and output

/// The bytes of `-d FILE`, or of standard input for `-`.
pub fn read_data(path: &Path) -> anyhow::Result<Vec<u8>> {
    if path.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("reading standard input")?;
        Ok(buf)
    } else {
        std::fs::read(path).with_context(|| format!("reading {}", path.display()))
    }
}

/// The `Content-Type` an input is sent with when no `--header` gives one.
pub fn content_type_of(body: &[u8]) -> &'static str {
    if serde_json::from_slice::<Value>(body).is_ok() {
        "application/json"
    } else if std::str::from_utf8(body).is_ok() {
        "text/plain; charset=utf-8"
    } else {
        "application/octet-stream"
    }
}

/// A pipeline's `input`: the data's JSON, or its text when it is not JSON.
pub fn pipeline_input(data: &[u8]) -> anyhow::Result<Value> {
    if let Ok(v) = serde_json::from_slice::<Value>(data) {
        return Ok(v);
    }
    match std::str::from_utf8(data) {
        Ok(t) => Ok(Value::String(t.to_string())),
        Err(_) => bail!("a pipeline's input must be JSON or text (UTF-8), and this is neither"),
    }
}

/// A failed call in one line: the server's error, and the task it was.
pub fn call_error(e: &ClientError) -> String {
    let mut s = e.to_string();
    // A transport failure says why only in its sources.
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        s.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    if let Some(id) = e.task_id() {
        s.push_str(&format!(" (task {id})"));
    }
    if let Some(p) = e.detail("pipeline_id").and_then(Value::as_str) {
        s.push_str(&format!(" (pipeline {p})"));
    }
    s
}

/// Writes an answer's body to stdout as it came, or its task id for an async call.
fn print_answer(inv: &Invocation) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if inv.accepted() {
        let id = inv
            .task_id()
            .ok_or_else(|| anyhow!("the server accepted the call without naming its task"))?;
        writeln!(out, "{id}")?;
    } else {
        out.write_all(&inv.body)?;
    }
    out.flush()?;
    Ok(())
}

/// One function as a line of `ufaas fn ls`.
fn function_row(f: &Function) -> [String; 7] {
    let c = f.containers();
    [
        f.full_name(),
        f.version().map(|v| v.to_string()).unwrap_or_default(),
        f.runtime().to_string(),
        format!("{}/{}", c.ready, c.busy),
        c.waiting.to_string(),
        f.invocations().to_string(),
        f.get("updated_at")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
    ]
}

/// `rows` as columns padded to their widest cell, the last column unpadded.
pub fn table<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(str::len);
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == N {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

/// `ufaas fn describe` in words: `key  value` lines.
pub fn describe_function(f: &Function) -> String {
    let mut out = String::new();
    let mut row = |k: &str, v: String| {
        if !v.is_empty() {
            out.push_str(&format!("{k:<16}{v}\n"));
        }
    };
    let text = |k: &str| match f.get(k) {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    };
    row("function", f.full_name());
    row("version", text("version"));
    row("runtime", text("runtime"));
    row("handler", text("handler"));
    row("image", text("image"));
    row("description", text("description"));
    row("code sha256", text("code_sha256"));
    for k in [
        "warm",
        "max_containers",
        "concurrency",
        "max_queue",
        "timeout",
    ] {
        row(k, text(k));
    }
    row("limits", text("limits"));
    row("network", text("network"));
    let env: Vec<String> = f
        .get("env")
        .and_then(Value::as_object)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    row("env", env.join(", "));
    let secrets: Vec<String> = f
        .get("secrets")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    row("secrets", secrets.join(", "));
    let c = f.containers();
    row(
        "containers",
        format!(
            "{} ready, {} busy, {} starting, {} calls waiting",
            c.ready, c.busy, c.starting, c.waiting
        ),
    );
    row("last start error", text("last_start_error"));
    let by_state = f
        .get("invocations")
        .and_then(|i| i.get("by_state"))
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    let calls = if by_state.is_empty() {
        f.invocations().to_string()
    } else {
        format!("{} ({by_state})", f.invocations())
    };
    row("invocations", calls);
    row("created", text("created_at"));
    row("updated", text("updated_at"));
    out
}

/// One log line in words.
pub fn log_line(l: &LogLine) -> String {
    let mark = if l.stream == "stderr" { "!" } else { "|" };
    format!("{} {} {mark} {}", l.at, l.task_id, l.line)
}

/// How far before the last line's `at` a follow-up poll asks from: an invocation's `at` is
/// when it finished, stamped a moment before its record is written, so one written just
/// after a poll may carry an `at` before the last one that poll showed.
const SINCE_SLACK: chrono::TimeDelta = chrono::TimeDelta::seconds(2);

/// The `since` of the poll after one whose last line was at `at`: a little earlier (the
/// lines seen again are not printed again).
pub fn since_for(at: &str) -> String {
    match chrono::DateTime::parse_from_rfc3339(at) {
        Ok(t) => (t.with_timezone(&chrono::Utc) - SINCE_SLACK)
            .format("%Y-%m-%dT%H:%M:%S%.3fZ")
            .to_string(),
        Err(_) => at.to_string(),
    }
}

/// Remembers which log lines were printed, so that `ufaas fn logs -f` prints each once
/// although each poll gives again the lines of the invocations at its `since`.
#[derive(Debug, Default)]
pub struct LogFollower {
    seen: HashSet<(TaskId, usize)>,
    /// The last printed line's `at`: the next poll's `since`.
    pub since: Option<String>,
}

impl LogFollower {
    /// The lines of a batch not printed yet, in order. A task's lines in a batch are its
    /// lines from the `offset`-th on (the first task's when the batch was cut by `tail`; 0
    /// for every other), so each line is known by its task and its index in that task.
    pub fn fresh(&mut self, batch: Vec<LogLine>, first_offset: usize) -> Vec<LogLine> {
        let first = batch.first().map(|l| l.task_id);
        let mut index: HashMap<TaskId, usize> = HashMap::new();
        let mut out = Vec::new();
        for l in batch {
            let i = index
                .entry(l.task_id)
                .or_insert(if Some(l.task_id) == first {
                    first_offset
                } else {
                    0
                });
            let key = (l.task_id, *i);
            *i += 1;
            if self.seen.insert(key) {
                self.since = Some(l.at.clone());
                out.push(l);
            }
        }
        out
    }
}

/// Lines of `f` for `q`, and where the first task's lines start in its whole log: when the
/// batch is as long as asked, the first task's earlier lines may have been cut, so its line
/// count is asked for.
async fn log_batch(
    client: &Client,
    f: &FunctionName,
    q: &LogQuery,
) -> Result<(Vec<LogLine>, usize), ClientError> {
    let lines = client.function_logs(f, q).await?;
    let asked = q.tail.unwrap_or(100) as usize;
    let Some(first) = lines.first().map(|l| l.task_id) else {
        return Ok((lines, 0));
    };
    if lines.len() < asked {
        return Ok((lines, 0));
    }
    let shown = lines.iter().filter(|l| l.task_id == first).count();
    let all = client
        .function_logs(
            f,
            &LogQuery {
                tail: Some(MAX_TAIL),
                since: None,
                task: Some(first),
            },
        )
        .await?
        .len();
    Ok((lines, all.saturating_sub(shown)))
}

// ---------------------------------------------------------------------------------------
// commands

/// `ufaas fn …`.
pub async fn run_fn(args: FnArgs) -> anyhow::Result<i32> {
    match args.command {
        FnCommand::Init(a) => fn_init(a),
        FnCommand::Deploy(a) => deploy(a).await,
        FnCommand::Invoke(a) => invoke(a).await,
        FnCommand::Ls(a) => list(a).await,
        FnCommand::Describe(a) => describe(a).await,
        FnCommand::Rm(a) => remove(a).await,
        FnCommand::Logs(a) => logs(a).await,
    }
}

fn fn_init(a: InitArgs) -> anyhow::Result<i32> {
    let written = init(&a.dir, a.runtime, a.name.as_ref())?;
    for p in &written {
        println!("created {}", p.display());
    }
    println!(
        "deploy it with: ufaas fn deploy {}",
        shell_word(&a.dir.display().to_string())
    );
    Ok(0)
}

/// `s` quoted for a POSIX shell when it needs it.
fn shell_word(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:@%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

async fn deploy(a: DeployArgs) -> anyhow::Result<i32> {
    if !a.dir.is_dir() {
        bail!("{} is not a directory", a.dir.display());
    }
    let mut cfg = FunctionConfig::read(&a.dir)?;
    cfg.apply(&a);
    let name = cfg.function_name()?;
    let runtime = infer_runtime(&a.dir, cfg.runtime)?;
    let package = pack(&a.dir, runtime, cfg.handler.as_deref())?;
    let body = cfg.body(runtime, &package);
    let client = a.server.client()?;
    let deployed = client.deploy(&name, &body).await?;
    if a.json {
        print_json(&deployed.function.to_json())?;
        return Ok(0);
    }
    let f = &deployed.function;
    let sent = match &package {
        Package::Code { file, .. } => file.clone(),
        Package::Archive { files, .. } => format!("{} files", files.len()),
    };
    let sha = f.code_sha256();
    println!(
        "{} {} version {} ({}, {sent}, sha256 {})",
        if deployed.created {
            "created"
        } else {
            "replaced"
        },
        f.full_name(),
        f.version().map(|v| v.to_string()).unwrap_or_default(),
        f.runtime(),
        sha.get(..12).unwrap_or(sha)
    );
    if let Some(e) = f.get("last_start_error").and_then(Value::as_str) {
        eprintln!("ufaas: its containers did not start: {e}");
    }
    Ok(0)
}

async fn invoke(a: InvokeArgs) -> anyhow::Result<i32> {
    let body = a.data.as_deref().map(read_data).transpose()?;
    let mut headers: Vec<(String, String)> =
        a.headers.into_iter().map(|Header(k, v)| (k, v)).collect();
    if let Some(b) = &body {
        if !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        {
            headers.push(("Content-Type".into(), content_type_of(b).into()));
        }
    }
    let req = InvokeRequest {
        body,
        headers,
        run_async: a.run_async,
    };
    let client = a.server.client()?;
    match client.invoke(&a.function, &req).await {
        Ok(inv) => {
            print_answer(&inv)?;
            Ok(0)
        }
        Err(e) => {
            eprintln!("ufaas: {}", call_error(&e));
            Ok(1)
        }
    }
}

async fn list(a: FnLsArgs) -> anyhow::Result<i32> {
    let client = a.server.client()?;
    let functions = client.functions(a.namespace.as_deref()).await?;
    if a.json {
        print_json(&json!({ "functions": functions }))?;
        return Ok(0);
    }
    let rows: Vec<[String; 7]> = functions.iter().map(function_row).collect();
    print!(
        "{}",
        table(
            [
                "FUNCTION",
                "VERSION",
                "RUNTIME",
                "READY/BUSY",
                "WAITING",
                "CALLS",
                "UPDATED"
            ],
            &rows
        )
    );
    Ok(0)
}

async fn describe(a: FnNameArgs) -> anyhow::Result<i32> {
    let client = a.server.client()?;
    let f = client.function(&a.function).await?;
    if a.json {
        print_json(&f.to_json())?;
    } else {
        print!("{}", describe_function(&f));
    }
    Ok(0)
}

async fn remove(a: FnRmArgs) -> anyhow::Result<i32> {
    let client = a.server.client()?;
    client.delete_function(&a.function).await?;
    println!("removed {}", a.function);
    Ok(0)
}

async fn logs(a: FnLogsArgs) -> anyhow::Result<i32> {
    let client = a.server.client()?;
    let mut follower = LogFollower::default();
    let print = |lines: Vec<LogLine>| -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        for l in &lines {
            let text = if a.json {
                serde_json::to_string(l)?
            } else {
                log_line(l)
            };
            writeln!(out, "{text}")?;
        }
        out.flush()?;
        Ok(())
    };
    let q = LogQuery {
        tail: a.tail,
        since: None,
        task: a.task,
    };
    let (batch, offset) = log_batch(&client, &a.function, &q).await?;
    print(follower.fresh(batch, offset))?;
    if !a.follow {
        return Ok(0);
    }
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = &mut ctrl_c => return Ok(0),
            _ = tokio::time::sleep(FOLLOW_EVERY) => {}
        }
        let q = LogQuery {
            tail: Some(MAX_TAIL),
            since: follower.since.as_deref().map(since_for),
            task: a.task,
        };
        let (batch, offset) = log_batch(&client, &a.function, &q).await?;
        print(follower.fresh(batch, offset))?;
    }
}

/// `ufaas pipeline ns/a ns/b … [-d FILE|-]`.
pub async fn pipeline(a: PipelineArgs) -> anyhow::Result<i32> {
    let input = match &a.data {
        Some(p) => Some(pipeline_input(&read_data(p)?)?),
        None => None,
    };
    let client = a.server.client()?;
    match client.pipeline(&a.steps, input.as_ref(), a.run_async).await {
        Ok(inv) => {
            print_answer(&inv)?;
            Ok(0)
        }
        Err(e) => {
            eprintln!("ufaas: {}", call_error(&e));
            Ok(1)
        }
    }
}

/// `ufaas secret set|rm`.
pub async fn secret(a: SecretArgs) -> anyhow::Result<i32> {
    match a.command {
        SecretCommand::Set(s) => {
            let value = match s.value.as_deref() {
                Some(v) if v != "-" => v.as_bytes().to_vec(),
                _ => read_secret(&s.name)?,
            };
            s.server.client()?.set_secret(&s.name, &value).await?;
            println!("set secret {}", s.name);
        }
        SecretCommand::Rm(r) => {
            r.server.client()?.delete_secret(&r.name).await?;
            println!("removed secret {}", r.name);
        }
    }
    Ok(0)
}

/// A secret's value from standard input: all of it byte for byte, or from a terminal one
/// line typed without echo (the line's end left out).
fn read_secret(name: &str) -> anyhow::Result<Vec<u8>> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        let mut buf = Vec::new();
        stdin
            .lock()
            .read_to_end(&mut buf)
            .context("reading the secret from standard input")?;
        return Ok(buf);
    }
    eprint!("value of secret {name} (not shown): ");
    let _ = std::io::stderr().flush();
    let echo_off = stty("-echo");
    let mut line = String::new();
    let read = stdin.read_line(&mut line);
    if echo_off {
        stty("echo");
    }
    eprintln!();
    read.context("reading the secret from the terminal")?;
    if !echo_off {
        eprintln!("ufaas: could not turn the terminal's echo off");
    }
    let line = line.strip_suffix('\n').unwrap_or(&line);
    let line = line.strip_suffix('\r').unwrap_or(line);
    Ok(line.as_bytes().to_vec())
}

/// Runs `stty ARG` on the terminal of standard input; whether it worked.
fn stty(arg: &str) -> bool {
    std::process::Command::new("stty")
        .arg(arg)
        .stdin(std::process::Stdio::inherit())
        .status()
        .is_ok_and(|s| s.success())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn tmp() -> tempfile::TempDir {
        tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"))
    }

    fn write(dir: &Path, rel: &str, text: &str) {
        let p = dir.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("{e}"));
        }
        std::fs::write(&p, text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }

    /// The paths in a tar.gz, as the server would read them (directories with a `/`).
    fn tar_paths(gz: &[u8]) -> Vec<String> {
        let mut a = tar::Archive::new(flate2::read::GzDecoder::new(gz));
        let entries = a.entries().unwrap_or_else(|e| panic!("{e}"));
        entries
            .map(|e| {
                let e = e.unwrap_or_else(|e| panic!("{e}"));
                let p = e.path().unwrap_or_else(|e| panic!("{e}"));
                let slash = if e.header().entry_type().is_dir() {
                    "/"
                } else {
                    ""
                };
                format!("{}{slash}", p.to_string_lossy().trim_end_matches('/'))
            })
            .collect()
    }

    #[test]
    fn headers_parse() {
        assert_eq!(
            parse_header("X-Thing: a b:c "),
            Ok(Header("X-Thing".into(), "a b:c".into()))
        );
        assert_eq!(
            parse_header("content-type:text/plain"),
            Ok(Header("content-type".into(), "text/plain".into()))
        );
        assert_eq!(
            parse_header("X-Empty:"),
            Ok(Header("X-Empty".into(), String::new()))
        );
        for bad in [
            "novalue",
            ":v",
            "a b: c",
            "x\u{e9}: v",
            "X: a\nb",
            "X: \u{7f}",
        ] {
            assert!(parse_header(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_env("A=b=c"), Ok(EnvVar("A".into(), "b=c".into())));
        assert!(parse_env("=x").is_err() && parse_env("A").is_err());
    }

    #[test]
    fn the_command_line_parses_names_and_headers() {
        #[derive(Parser)]
        struct T {
            #[command(subcommand)]
            c: FnCommand,
        }
        let t = T::try_parse_from([
            "t", "invoke", "ns/hi", "-d", "-", "-H", "A: 1", "--header", "B:2", "--async",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        let FnCommand::Invoke(i) = t.c else {
            panic!("not invoke")
        };
        assert_eq!(i.function.to_string(), "ns/hi");
        assert_eq!(i.data.as_deref(), Some(Path::new("-")));
        assert_eq!(
            i.headers,
            vec![
                Header("A".into(), "1".into()),
                Header("B".into(), "2".into())
            ]
        );
        assert!(i.run_async);
        assert!(T::try_parse_from(["t", "invoke", "NS/Hi"]).is_err());
        assert!(T::try_parse_from(["t", "invoke", "ns/hi", "-H", "bad"]).is_err());
        let t = T::try_parse_from(["t", "build", "dir", "--name", "a/b", "--warm", "0"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            matches!(t.c, FnCommand::Deploy(d) if d.warm == Some(0) && d.dir == Path::new("dir"))
        );
    }

    #[test]
    fn ufaas_json_is_read_and_flags_override_it() {
        let d = tmp();
        assert_eq!(
            FunctionConfig::read(d.path()).ok(),
            Some(FunctionConfig::default())
        );
        write(
            d.path(),
            CONFIG_FILE,
            r#"{"name": "ns/fn1", "runtime": "node", "warm": 2, "env": {"A": "1", "N": 3},
                "secrets": ["s1"], "limits": {"memory_mb": 64}, "timeout": 5}"#,
        );
        let mut cfg = FunctionConfig::read(d.path()).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(cfg.runtime, Some(Runtime::Node));
        assert_eq!(
            cfg.function_name().map(|n| n.to_string()).ok(),
            Some("ns/fn1".into())
        );
        let args = DeployArgs::try_parse_from_flags(&[
            "--warm", "0", "--env", "A=2", "--secret", "s2", "--secret", "s1", "--cpus", "0.5",
        ]);
        cfg.apply(&args);
        assert_eq!(cfg.warm, Some(0));
        assert_eq!(cfg.timeout, Some(5), "kept");
        assert_eq!(
            cfg.env.as_ref().map(|e| Value::Object(e.clone())),
            Some(json!({"A": "2", "N": 3}))
        );
        assert_eq!(cfg.secrets, Some(vec!["s1".into(), "s2".into()]));
        let body = cfg.body(
            Runtime::Node,
            &Package::Code {
                file: "index.js".into(),
                text: "x".into(),
            },
        );
        assert_eq!(
            body,
            json!({"runtime": "node", "code": "x", "warm": 0, "timeout": 5,
                   "env": {"A": "2", "N": 3}, "secrets": ["s1", "s2"],
                   "limits": {"memory_mb": 64, "cpus": 0.5}})
        );

        write(d.path(), CONFIG_FILE, r#"{"name": "ns/x", "wram": 1}"#);
        let e = FunctionConfig::read(d.path())
            .err()
            .map(|e| format!("{e:#}"));
        assert!(e.as_deref().is_some_and(|e| e.contains("wram")), "{e:?}");
        write(d.path(), CONFIG_FILE, r#"{"name": "Bad Name"}"#);
        let cfg = FunctionConfig::read(d.path()).unwrap_or_else(|e| panic!("{e:#}"));
        assert!(cfg.function_name().is_err());
        assert!(FunctionConfig::default().function_name().is_err());
    }

    impl DeployArgs {
        fn try_parse_from_flags(flags: &[&str]) -> DeployArgs {
            #[derive(Parser)]
            struct T {
                #[command(flatten)]
                a: DeployArgs,
            }
            let argv = std::iter::once("t").chain(flags.iter().copied());
            T::try_parse_from(argv).unwrap_or_else(|e| panic!("{e}")).a
        }
    }

    #[test]
    fn the_runtime_is_found_by_its_default_file() {
        let d = tmp();
        assert!(infer_runtime(d.path(), None).is_err());
        assert_eq!(
            infer_runtime(d.path(), Some(Runtime::Shell)).ok(),
            Some(Runtime::Shell)
        );
        write(d.path(), "index.js", "");
        assert_eq!(infer_runtime(d.path(), None).ok(), Some(Runtime::Node));
        write(d.path(), "fn.py", "");
        assert!(infer_runtime(d.path(), None).is_err(), "two runtimes");
    }

    #[test]
    fn a_lone_default_file_is_sent_as_code() {
        let d = tmp();
        write(d.path(), "fn.py", "def main(e):\n    return e\n");
        write(d.path(), CONFIG_FILE, "{}");
        write(d.path(), ".git/HEAD", "ref");
        let p = pack(d.path(), Runtime::Python, None).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(
            p,
            Package::Code {
                file: "fn.py".into(),
                text: "def main(e):\n    return e\n".into()
            }
        );
        assert!(matches!(
            pack(d.path(), Runtime::Python, Some("fn.py:main")),
            Ok(Package::Code { .. })
        ));
        // A handler naming another file, or another runtime: the file goes as it is named.
        assert!(matches!(
            pack(d.path(), Runtime::Python, Some("other.py:main")),
            Ok(Package::Archive { .. })
        ));
        assert!(matches!(
            pack(d.path(), Runtime::Shell, None),
            Ok(Package::Archive { .. })
        ));
    }

    #[test]
    fn several_files_are_sent_as_a_tar_gz_without_git() {
        let d = tmp();
        write(d.path(), "fn.py", "import helper\n");
        write(d.path(), "helper.py", "X = 1\n");
        write(d.path(), "lib/dep/__init__.py", "");
        write(d.path(), ".git/config", "[core]");
        write(d.path(), "lib/.git", "gitdir: elsewhere");
        write(d.path(), CONFIG_FILE, "{}");
        #[cfg(unix)]
        std::os::unix::fs::symlink("helper.py", d.path().join("link.py"))
            .unwrap_or_else(|e| panic!("{e}"));
        let p = pack(d.path(), Runtime::Python, None).unwrap_or_else(|e| panic!("{e:#}"));
        let Package::Archive { gz, files } = p else {
            panic!("expected an archive, got {p:?}")
        };
        let mut expected = vec![
            "fn.py",
            "helper.py",
            "lib/",
            "lib/dep/",
            "lib/dep/__init__.py",
        ];
        #[cfg(unix)]
        expected.push("link.py");
        assert_eq!(files, expected);
        assert_eq!(tar_paths(&gz), expected);
        // The same files make the same archive.
        let again = pack(d.path(), Runtime::Python, None).unwrap_or_else(|e| panic!("{e:#}"));
        assert!(matches!(again, Package::Archive { gz: g, .. } if g == gz));
    }

    #[test]
    fn a_directory_past_the_limits_is_refused_clearly() {
        let d = tmp();
        assert!(pack(d.path(), Runtime::Python, None).is_err(), "empty");
        write(d.path(), "fn.py", &"x".repeat(1000));
        write(d.path(), "b.bin", &"y".repeat(1000));
        let e = pack_limited(d.path(), Runtime::Python, None, 1 << 30, 1500)
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(e.contains("--max-extract-bytes"), "{e}");
        let e = pack_limited(d.path(), Runtime::Python, None, BODY_SLACK + 10, 1 << 30)
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(
            e.contains("--max-body-bytes") && e.contains("base64"),
            "{e}"
        );
    }

    #[test]
    fn init_writes_a_starter_and_refuses_to_overwrite() {
        for (runtime, file, says) in [
            (Runtime::Python, "fn.py", "def main(event):"),
            (
                Runtime::Node,
                "index.js",
                "module.exports = (context, cb) =>",
            ),
            (Runtime::Shell, "fn.sh", "#!/bin/sh"),
        ] {
            let d = tmp();
            let dir = d.path().join("My Func");
            let written = init(&dir, runtime, None).unwrap_or_else(|e| panic!("{e:#}"));
            assert_eq!(written, vec![dir.join(file), dir.join(CONFIG_FILE)]);
            let code = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
            assert!(code.contains(says) && code.contains("hello"), "{code}");
            let cfg = FunctionConfig::read(&dir).unwrap_or_else(|e| panic!("{e:#}"));
            assert_eq!(cfg.name.as_deref(), Some("default/my-func"));
            assert_eq!(cfg.runtime, Some(runtime));
            // What init writes deploys as it is: the lone default file as code.
            assert!(matches!(
                pack(&dir, runtime, None),
                Ok(Package::Code { .. })
            ));
            #[cfg(unix)]
            if runtime == Runtime::Shell {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(dir.join(file)).map(|m| m.permissions().mode());
                assert_eq!(mode.ok().map(|m| m & 0o111), Some(0o111));
            }
            // A second init changes nothing.
            std::fs::write(dir.join(file), "mine").unwrap_or_else(|e| panic!("{e}"));
            assert!(init(&dir, runtime, None).is_err());
            assert_eq!(
                std::fs::read_to_string(dir.join(file)).ok().as_deref(),
                Some("mine")
            );
        }
        // An existing ufaas.json alone also stops it, before the code is written.
        let d = tmp();
        write(d.path(), CONFIG_FILE, "{}");
        let name: FunctionName = "ns/x".parse().unwrap_or_else(|e| panic!("{e}"));
        assert!(init(d.path(), Runtime::Python, Some(&name)).is_err());
        assert!(!d.path().join("fn.py").exists());
    }

    #[test]
    fn names_made_of_directories() {
        let d = tmp();
        for (dir, name) in [
            ("Hello World", "hello-world"),
            ("_x.y", "x.y"),
            ("ÿ", "function"),
        ] {
            let p = d.path().join(dir);
            std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                name_for_dir(&p).to_string(),
                format!("default/{name}"),
                "{dir}"
            );
        }
    }

    #[test]
    fn inputs() {
        assert_eq!(content_type_of(br#"{"a": 1}"#), "application/json");
        assert_eq!(content_type_of(b"hi"), "text/plain; charset=utf-8");
        assert_eq!(content_type_of(b"\xff"), "application/octet-stream");
        assert_eq!(pipeline_input(b" [1, 2] ").ok(), Some(json!([1, 2])));
        assert_eq!(
            pipeline_input(b"hi there\n").ok(),
            Some(json!("hi there\n"))
        );
        assert!(pipeline_input(b"\xff").is_err());
        let d = tmp();
        write(d.path(), "in.json", "{}");
        assert_eq!(
            read_data(&d.path().join("in.json")).ok(),
            Some(b"{}".to_vec())
        );
        assert!(read_data(&d.path().join("missing")).is_err());
    }

    fn line(task: TaskId, at: &str, text: &str) -> LogLine {
        LogLine {
            at: at.into(),
            task_id: task,
            stream: "stdout".into(),
            line: text.into(),
        }
    }

    #[test]
    fn following_logs_prints_each_line_once() {
        let (a, b) = (TaskId::new(), TaskId::new());
        let mut f = LogFollower::default();
        // The first batch was cut by `tail`: a's last two of its four lines.
        let first = f.fresh(vec![line(a, "t1", "a2"), line(a, "t1", "a3")], 2);
        assert_eq!(first.len(), 2);
        assert_eq!(f.since.as_deref(), Some("t1"));
        // The next poll gives all of a again, and b.
        let batch = vec![
            line(a, "t1", "a0"),
            line(a, "t1", "a1"),
            line(a, "t1", "a2"),
            line(a, "t1", "a3"),
            line(b, "t2", "b0"),
            line(b, "t2", "same"),
            line(b, "t2", "same"),
        ];
        let texts: Vec<String> = f
            .fresh(batch.clone(), 0)
            .into_iter()
            .map(|l| l.line)
            .collect();
        assert_eq!(texts, ["a0", "a1", "b0", "same", "same"].map(String::from));
        assert_eq!(f.since.as_deref(), Some("t2"));
        assert!(f.fresh(batch, 0).is_empty(), "nothing twice");
        assert_eq!(
            since_for("2026-12-02T10:00:01.250Z"),
            "2026-12-02T09:59:59.250Z"
        );
        assert_eq!(since_for("t2"), "t2");
    }

    #[test]
    fn tables_and_descriptions() {
        let t = table(
            ["A", "LONGER", "C"],
            &[
                ["xx".into(), "y".into(), "z z".into()],
                ["".into(), "".into(), "".into()],
            ],
        );
        assert_eq!(t, "A   LONGER  C\nxx  y       z z\n\n");
        let f: Function = serde_json::from_value(json!({
            "namespace": "ns", "name": "hi", "version": 2, "runtime": "python",
            "handler": "fn.py:main", "env": {"B": "1", "A": "2"}, "secrets": ["k"],
            "containers": {"ready": 1, "busy": 0, "starting": 0, "waiting": 0},
            "invocations": {"total": 3, "by_state": {"FINISHED": 2, "FAILED": 1}},
            "last_start_error": null, "description": null
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let d = describe_function(&f);
        for says in [
            "function        ns/hi\n",
            "version         2\n",
            "env             A, B\n",
            "secrets         k\n",
            "containers      1 ready, 0 busy, 0 starting, 0 calls waiting\n",
            "invocations     3 (FAILED 1, FINISHED 2)\n",
        ] {
            assert!(d.contains(says), "{says:?} in\n{d}");
        }
        assert!(
            !d.contains("last start error") && !d.contains("description"),
            "{d}"
        );
        assert_eq!(
            function_row(&f),
            ["ns/hi", "2", "python", "1/0", "0", "3", ""].map(String::from)
        );
    }

    #[test]
    fn the_limits_are_the_servers_defaults() {
        let c = crate::config::ServeConfig::defaults();
        if std::env::var_os("UFAAS_MAX_BODY_BYTES").is_none() {
            assert_eq!(c.max_body_bytes, SERVER_MAX_BODY_BYTES);
        }
        if std::env::var_os("UFAAS_MAX_EXTRACT_BYTES").is_none() {
            assert_eq!(c.max_extract_bytes, SERVER_MAX_EXTRACT_BYTES);
        }
    }

    #[test]
    fn errors_name_their_task() {
        let id = TaskId::new();
        let body = json!({"code": "function_error", "message": "boom", "task_id": id});
        let e = ClientError::from_response(500, body.to_string().as_bytes());
        assert_eq!(call_error(&e), format!("function_error: boom (task {id})"));
    }
}
