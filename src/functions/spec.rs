//! The body of `PUT /functions/{ns}/{name}` (API.md section 5), parsed and checked into a
//! [`FunctionSpec`], and the rules for namespace, function and secret names. As for a task
//! spec (`crate::spec`, whose helpers this reuses), every refusal is an [`ApiError`] naming
//! the field at fault, and nothing is kept from a body that is refused.
//!
//! The code arrives as `code` (the text of one file) or `archive` (base64 of a tar, tar.gz or
//! zip) and becomes a bundle, [`FunctionSpec::files`]: the files to place in the function's
//! code directory ([`bundle_tar`]). An archive is unpacked by `crate::resources::unpack`, so
//! it is refused exactly where a task's archive resource would be (entries climbing out or
//! absolute, links pointing out or followed by later entries, hard links, more than
//! `max_extract_bytes` unpacked, not an archive at all), with 400 `invalid_archive`. Beyond
//! that:
//!
//! - a tar that ends right after its last file's bytes, without the final padding and
//!   end-of-archive blocks (FAAS's example payload), is accepted when every entry in it is
//!   whole; one cut inside an entry is refused;
//! - paths are kept as the archive has them, except when the handler's file (or the
//!   runtime's default file) is not at the top, everything sits under one top-level directory
//!   and that directory holds the file: then that directory is stripped (a zip of a folder,
//!   as GitHub and most archivers make them). A `__MACOSX/` tree beside it (macOS Finder's
//!   resource forks) is dropped with it;
//! - symbolic links that stay inside the bundle are kept (vendored `node_modules/.bin`);
//!   hard links, devices and FIFOs are not (resources.rs refuses the first, skips the others);
//! - modes lose setuid, setgid and sticky bits and gain read for everyone (and search on
//!   directories): the code belongs to root in the container, and a runtime that runs as
//!   another user must still read it. A shell handler's file is made executable.
//!
//! A [`FunctionSpec`] is stored as [`FunctionSpec::stored_config`] (the body without the
//! code) beside its bundle, and rebuilt from the two by [`from_stored`].

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

use base64::Engine as _;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::error::{ApiError, Code};
use crate::resources::{self, TarWriter};
use crate::spec::{self as task, Limits, Policy};

/// File-type bits of a bundle entry's mode, as in `st_mode`: a directory (no bytes).
pub const MODE_DIR: u32 = 0o040000;
/// File-type bits of a bundle entry's mode: a symbolic link, whose bytes are its target.
pub const MODE_SYMLINK: u32 = 0o120000;
const MODE_TYPE: u32 = 0o170000;

/// One entry of a bundle: its path relative to the code directory (normalised: no `.`, `..`,
/// empty or leading `/` components), its bytes and its mode. The mode's file-type bits say
/// what it is ([`MODE_DIR`], [`MODE_SYMLINK`], none for a regular file); the rest are its
/// permission bits.
pub type BundleFile = (String, Vec<u8>, u32);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
}

/// What the mode of a [`BundleFile`] says it is.
pub fn entry_kind(mode: u32) -> EntryKind {
    match mode & MODE_TYPE {
        MODE_DIR => EntryKind::Dir,
        MODE_SYMLINK => EntryKind::Symlink,
        _ => EntryKind::File,
    }
}

pub const MAX_SECRETS: usize = 64;
pub const MAX_DESCRIPTION_CHARS: usize = 1024;
/// Upper bound of `max_containers` and `concurrency`.
pub const MAX_CONTAINERS: u64 = 64;
pub const MAX_QUEUE: u64 = 100_000;
/// Upper bound of `timeout`: an hour. An invocation is a request someone waits on; longer work
/// is a task.
pub const MAX_TIMEOUT: u64 = 3600;

/// A function's language (also the CLI's `--runtime` and `ufaas.json`'s `runtime`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    Python,
    Node,
    Shell,
}

impl Runtime {
    pub const ALL: [Runtime; 3] = [Runtime::Python, Runtime::Node, Runtime::Shell];

    /// The name the body's `runtime` gives.
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Python => "python",
            Runtime::Node => "node",
            Runtime::Shell => "shell",
        }
    }

    pub fn from_name(s: &str) -> Option<Runtime> {
        Runtime::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The image when the body gives none: the runtime's local image.
    pub fn default_image(self) -> &'static str {
        match self {
            Runtime::Python => "ufaas/python:3",
            Runtime::Node => "ufaas/node:18",
            Runtime::Shell => "ufaas/busybox:latest",
        }
    }

    /// The file `code` becomes, and the handler's file when `handler` names none.
    pub fn default_file(self) -> &'static str {
        match self {
            Runtime::Python => "fn.py",
            Runtime::Node => "index.js",
            Runtime::Shell => "fn.sh",
        }
    }
}

/// The handler: its file (the runtime's default when `handler` names none) and entry point
/// (`None`: the runtime looks for the shapes of API.md section 5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handler {
    pub file: String,
    pub entry: Option<String>,
}

impl std::fmt::Display for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.entry {
            Some(e) => write!(f, "{}:{e}", self.file),
            None => f.write_str(&self.file),
        }
    }
}

/// A checked function body. `raw` is the body as accepted (`null`s dropped), code included
/// when it came from [`parse`], without it when it came from [`from_stored`].
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionSpec {
    pub runtime: Runtime,
    pub handler: Handler,
    pub image: String,
    pub env: BTreeMap<String, String>,
    /// Secret names, in the order given; each becomes `/run/secrets/NAME`.
    pub secrets: Vec<String>,
    pub warm: u32,
    pub max_containers: u32,
    pub concurrency: u32,
    pub max_queue: u32,
    /// Seconds per invocation.
    pub timeout: u64,
    pub limits: Limits,
    pub network: bool,
    pub description: Option<String>,
    /// The code bundle, sorted by path (so parents come before what they hold).
    pub files: Vec<BundleFile>,
    /// [`bundle_sha256`] of `files`.
    pub code_sha256: String,
    pub raw: Value,
}

impl FunctionSpec {
    /// What the server stores of the body: all of it but `code` and `archive` (the bundle is
    /// stored on its own, so an archive's base64 is never kept twice). With the bundle it is
    /// what [`from_stored`] takes.
    pub fn stored_config(&self) -> Value {
        let mut config = self.raw.clone();
        if let Value::Object(map) = &mut config {
            map.remove("code");
            map.remove("archive");
        }
        config
    }

    /// Checks `limits` and `network` against `policy` again: [`from_stored`] does not (a
    /// stored function stays readable when the operator lowers a maximum), so a server that
    /// wants the current policy to hold for every invocation asks this.
    pub fn check_policy(&self, policy: &Policy) -> Result<(), ApiError> {
        if let Value::Object(obj) = &self.raw {
            task::parse_limits(obj, policy)?;
            task::parse_network(obj, policy)?;
        }
        Ok(())
    }
}

const FIELDS: &[&str] = &[
    "runtime",
    "code",
    "archive",
    "handler",
    "image",
    "env",
    "secrets",
    "warm",
    "max_containers",
    "concurrency",
    "max_queue",
    "timeout",
    "limits",
    "network",
    "description",
];

use crate::spec::bad;

/// `s` for a message, cut to 64 characters: a refused name may be of any length.
fn shown(s: &str) -> String {
    if s.chars().count() <= 64 {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(64).collect::<String>())
    }
}

/// A namespace or function name: `[a-z0-9][a-z0-9_.-]{0,62}`. They appear in URLs, container
/// names and labels, so nothing that needs escaping in any of them.
pub fn check_name(s: &str, field: &str) -> Result<(), ApiError> {
    let b = s.as_bytes();
    let first_ok = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let ok = !b.is_empty()
        && b.len() <= 63
        && first_ok(b[0])
        && b[1..]
            .iter()
            .all(|&c| first_ok(c) || matches!(c, b'_' | b'.' | b'-'));
    if !ok {
        return Err(bad(
            Code::InvalidValue,
            field,
            format!(
                "`{field}` must be 1 to 63 characters of a-z, 0-9, `_`, `.` and `-`, starting \
                 with a letter or digit, not \"{}\"",
                shown(s)
            ),
        ));
    }
    Ok(())
}

/// A secret name: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}` without `..`. Each becomes the file
/// `/run/secrets/NAME`, so no name may be `.`, `..` or hold a `/`; upper case is allowed
/// because secrets are often named like the variables they replace (`DB_PASSWORD`).
pub fn check_secret_name(s: &str, field: &str) -> Result<(), ApiError> {
    let b = s.as_bytes();
    let first_ok = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let ok = !b.is_empty()
        && b.len() <= 63
        && first_ok(b[0])
        && b[1..]
            .iter()
            .all(|&c| first_ok(c) || matches!(c, b'.' | b'-'))
        && !s.contains("..");
    if !ok {
        return Err(bad(
            Code::InvalidValue,
            field,
            format!(
                "a secret name must be 1 to 63 characters of A-Z, a-z, 0-9, `_`, `.` and `-`, \
                 starting with a letter, digit or `_`, without `..`, not \"{}\"",
                shown(s)
            ),
        ));
    }
    Ok(())
}

/// Where the code came from, decoded.
enum CodeSource {
    Text(String),
    Archive(Vec<u8>),
}

/// Every field but the code, checked.
struct Settings {
    runtime: Runtime,
    handler: Handler,
    /// Whether `handler` named the file (else it is the runtime's default): a missing file is
    /// then the handler's fault, not the archive's.
    handler_names_file: bool,
    image: String,
    env: BTreeMap<String, String>,
    secrets: Vec<String>,
    warm: u32,
    max_containers: u32,
    concurrency: u32,
    max_queue: u32,
    timeout: u64,
    limits: Limits,
    network: bool,
    description: Option<String>,
}

/// Parses and checks the body of `PUT /functions/{ns}/{name}`. The fields are checked in the
/// order of API.md's list (`runtime`, the code, `handler`, `image`, `env`, `secrets`, the
/// counts, `limits`, `network`, `description`), so a body with several faults is refused for
/// the first; only unpacking an archive (and looking for the handler's file in it) comes
/// last, so a body with a cheap fault costs no unpack. That unpack is CPU work bounded by
/// `max_extract_bytes`: call this off the async threads (`spawn_blocking`).
///
/// `max_code_bytes` caps the decoded code (the text, or the archive before unpacking: 413);
/// `max_extract_bytes` what an archive may unpack to (400 `invalid_archive`, as for a task).
pub fn parse(
    mut raw: Value,
    policy: &Policy,
    max_code_bytes: u64,
    max_extract_bytes: u64,
) -> Result<FunctionSpec, ApiError> {
    task::strip_nulls(&mut raw);
    let obj = body_object(&raw)?;
    task::check_unknown(obj, FIELDS, "")?;
    let runtime = parse_runtime(obj)?;
    let code = parse_code(obj, max_code_bytes)?;
    let settings = parse_settings(obj, runtime, policy)?;
    let tree = match code {
        CodeSource::Text(text) => {
            let mode = if runtime == Runtime::Shell {
                0o755
            } else {
                0o644
            };
            BTreeMap::from([(settings.handler.file.clone(), (text.into_bytes(), mode))])
        }
        CodeSource::Archive(bytes) => archive_tree(&bytes, &settings, max_extract_bytes)?,
    };
    Ok(build(settings, tree, raw))
}

/// Rebuilds a function from what the server stored: [`FunctionSpec::stored_config`] and the
/// bundle ([`FunctionSpec::files`]). The config is checked as [`parse`] checks a body, except
/// that `limits` and `network` are not held to the server's policy (see
/// [`FunctionSpec::check_policy`]); the bundle's paths, links and handler file are checked
/// again. The `Err` says what is wrong, for the server's log: stored data is not a request.
pub fn from_stored(mut config: Value, files: Vec<BundleFile>) -> Result<FunctionSpec, String> {
    let fail = |e: ApiError| match &e.field {
        Some(f) => format!("stored function config, `{f}`: {}", e.message),
        None => format!("stored function config: {}", e.message),
    };
    task::strip_nulls(&mut config);
    let obj = body_object(&config).map_err(fail)?;
    task::check_unknown(obj, FIELDS, "").map_err(fail)?;
    if obj.contains_key("code") || obj.contains_key("archive") {
        return Err("the stored function config holds the code itself; store \
                    FunctionSpec::stored_config() and the bundle apart"
            .into());
    }
    let runtime = parse_runtime(obj).map_err(fail)?;
    let anything_goes = Policy {
        max_memory_mb: u64::MAX,
        max_cpus: f64::MAX,
        max_pids: u64::MAX,
        allow_network: true,
        ..Policy::default()
    };
    let settings = parse_settings(obj, runtime, &anything_goes).map_err(fail)?;
    let mut tree = BTreeMap::new();
    for (path, bytes, mode) in files {
        if resources::entry_path(&path).as_deref() != Some(path.as_str()) || path.is_empty() {
            return Err(format!(
                "stored bundle: `{path}` is not a clean relative path"
            ));
        }
        if tree.insert(path.clone(), (bytes, mode)).is_some() {
            return Err(format!("stored bundle: `{path}` appears twice"));
        }
    }
    check_tree(&tree).map_err(|e| format!("stored bundle: {e}"))?;
    if !holds_file(&tree, &settings.handler.file) {
        return Err(format!(
            "stored bundle: the handler's file `{}` is missing",
            settings.handler.file
        ));
    }
    Ok(build(settings, tree, config))
}

/// The tar of `spec`'s bundle, every path under the absolute directory `dir` (such as
/// `/function`), to unpack at `/` of the container. `dir` itself and parents are not written
/// (Docker makes them, see [`TarWriter`]).
pub fn bundle_tar(spec: &FunctionSpec, dir: &str) -> std::io::Result<Vec<u8>> {
    if !dir.starts_with('/') || dir.split('/').any(|c| c == "..") {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("the code directory must be absolute and without `..`, not `{dir}`"),
        ));
    }
    let base = dir.trim_end_matches('/');
    let mut w = TarWriter::new();
    for (path, bytes, mode) in &spec.files {
        let abs = format!("{base}/{path}");
        match entry_kind(*mode) {
            EntryKind::Dir => w.dir(&abs, mode & 0o7777)?,
            EntryKind::Symlink => w.symlink(&abs, &String::from_utf8_lossy(bytes))?,
            EntryKind::File => w.file(&abs, bytes, mode & 0o7777)?,
        }
    }
    w.finish()
}

/// Hex SHA-256 of a bundle: of each entry in path order, its path, mode and bytes, each
/// length-prefixed so that no two bundles hash alike by shifting bytes between fields. The
/// same files give the same hash whatever order or archive format they came in.
pub fn bundle_sha256(files: &[BundleFile]) -> String {
    let mut sorted: Vec<&BundleFile> = files.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut h = Sha256::new();
    for (path, bytes, mode) in sorted {
        h.update((path.len() as u64).to_be_bytes());
        h.update(path.as_bytes());
        h.update(mode.to_be_bytes());
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    }
    hex::encode(h.finalize())
}

fn build(s: Settings, tree: BTreeMap<String, (Vec<u8>, u32)>, raw: Value) -> FunctionSpec {
    let files: Vec<BundleFile> = tree.into_iter().map(|(p, (b, m))| (p, b, m)).collect();
    let code_sha256 = bundle_sha256(&files);
    FunctionSpec {
        runtime: s.runtime,
        handler: s.handler,
        image: s.image,
        env: s.env,
        secrets: s.secrets,
        warm: s.warm,
        max_containers: s.max_containers,
        concurrency: s.concurrency,
        max_queue: s.max_queue,
        timeout: s.timeout,
        limits: s.limits,
        network: s.network,
        description: s.description,
        files,
        code_sha256,
        raw,
    }
}

fn body_object(raw: &Value) -> Result<&Map<String, Value>, ApiError> {
    match raw {
        Value::Object(o) => Ok(o),
        other => Err(ApiError::new(
            Code::InvalidType,
            format!(
                "the function body must be a JSON object, not {}",
                task::type_name(other)
            ),
        )),
    }
}

/// `runtime`: `python`, `node` or `shell`; without one, `node` (Backstage Functions'
/// clients send only `code` and `env`, and their code is JavaScript).
fn parse_runtime(obj: &Map<String, Value>) -> Result<Runtime, ApiError> {
    let Some(name) = task::get_str(obj, "runtime", "runtime")? else {
        return Ok(Runtime::Node);
    };
    Runtime::from_name(name).ok_or_else(|| {
        bad(
            Code::InvalidValue,
            "runtime",
            format!(
                "`runtime` must be \"python\", \"node\" or \"shell\", not \"{}\"",
                shown(name)
            ),
        )
    })
}

fn too_large(field: &str, max: u64) -> ApiError {
    ApiError::new(
        Code::PayloadTooLarge,
        format!("`{field}` is larger than the server's limit of {max} bytes of code"),
    )
    .with_field(field)
}

/// Exactly one of `code` (text) and `archive` (base64), decoded and at most `max` bytes.
fn parse_code(obj: &Map<String, Value>, max: u64) -> Result<CodeSource, ApiError> {
    match (obj.get("code"), obj.get("archive")) {
        (None, None) => Err(bad(
            Code::MissingField,
            "code",
            "the function needs its code: `code` (the text of its file) or `archive` (base64 \
             of a tar, tar.gz or zip)",
        )),
        (Some(_), Some(_)) => Err(bad(
            Code::InvalidValue,
            "code",
            "give `code` or `archive`, not both",
        )),
        (Some(v), None) => {
            let Value::String(text) = v else {
                return Err(task::wrong_type("code", "a string", v));
            };
            if text.is_empty() {
                return Err(bad(Code::InvalidValue, "code", "`code` is empty"));
            }
            if text.len() as u64 > max {
                return Err(too_large("code", max));
            }
            Ok(CodeSource::Text(text.clone()))
        }
        (None, Some(v)) => {
            let Value::String(b64) = v else {
                return Err(task::wrong_type("archive", "a base64 string", v));
            };
            decode_archive(b64, max).map(CodeSource::Archive)
        }
    }
}

/// Base64 with whitespace (line breaks) ignored and the final `=` padding optional, in the
/// standard alphabet or, when a `-` or `_` shows it, the URL-safe one: what encoders in the
/// wild produce.
fn decode_archive(b64: &str, max: u64) -> Result<Vec<u8>, ApiError> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    let cleaned: String = b64.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    if cleaned.is_empty() {
        return Err(bad(Code::InvalidValue, "archive", "`archive` is empty"));
    }
    // Four characters make three bytes: refused before decoding anything.
    if (cleaned.len() as u64 / 4).saturating_mul(3) > max {
        return Err(too_large("archive", max));
    }
    let config =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    let alphabet = if cleaned.contains(['-', '_']) {
        &base64::alphabet::URL_SAFE
    } else {
        &base64::alphabet::STANDARD
    };
    let bytes = GeneralPurpose::new(alphabet, config)
        .decode(cleaned.as_bytes())
        .map_err(|e| {
            bad(
                Code::InvalidBase64,
                "archive",
                format!("`archive` is not valid base64: {e}"),
            )
        })?;
    if bytes.len() as u64 > max {
        return Err(too_large("archive", max));
    }
    Ok(bytes)
}

/// Everything after the code, in API.md's order.
fn parse_settings(
    obj: &Map<String, Value>,
    runtime: Runtime,
    policy: &Policy,
) -> Result<Settings, ApiError> {
    let (handler, handler_names_file) = parse_handler(obj, runtime)?;
    let image = match task::get_str(obj, "image", "image")? {
        None => runtime.default_image().to_string(),
        Some(img) if task::valid_image_ref(img) => img.to_string(),
        Some(_) => {
            return Err(bad(
                Code::InvalidImage,
                "image",
                "`image` must be a valid Docker reference of 1 to 255 characters, without `!`",
            ))
        }
    };
    let env = task::parse_env(obj)?;
    let secrets = parse_secrets(obj)?;
    let warm = get_count(obj, "warm", 0, MAX_CONTAINERS, 1)?;
    let max_containers = get_count(obj, "max_containers", 1, MAX_CONTAINERS, 4)?;
    if warm > max_containers {
        return Err(bad(
            Code::InvalidValue,
            "warm",
            format!("`warm` ({warm}) must be at most `max_containers` ({max_containers})"),
        ));
    }
    let concurrency = get_count(obj, "concurrency", 1, MAX_CONTAINERS, 1)?;
    let max_queue = get_count(obj, "max_queue", 0, MAX_QUEUE, 100)?;
    let timeout = get_count(obj, "timeout", 1, MAX_TIMEOUT, 30)?;
    let limits = task::parse_limits(obj, policy)?;
    let network = task::parse_network(obj, policy)?;
    let description = match task::get_str(obj, "description", "description")? {
        None => None,
        Some(d) => {
            task::no_nul(d, "description")?;
            if d.chars().count() > MAX_DESCRIPTION_CHARS {
                return Err(bad(
                    Code::InvalidValue,
                    "description",
                    format!("`description` may be at most {MAX_DESCRIPTION_CHARS} characters"),
                ));
            }
            Some(d.to_string())
        }
    };
    // The bounds above are all far below u32::MAX.
    let narrow = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
    Ok(Settings {
        runtime,
        handler,
        handler_names_file,
        image,
        env,
        secrets,
        warm: narrow(warm),
        max_containers: narrow(max_containers),
        concurrency: narrow(concurrency),
        max_queue: narrow(max_queue),
        timeout,
        limits,
        network,
        description,
    })
}

/// A whole number from `min` to `max`, `default` when not given: `invalid_type` for anything
/// but a whole number, `invalid_value` (naming the range) for one outside it.
fn get_count(
    obj: &Map<String, Value>,
    key: &str,
    min: u64,
    max: u64,
    default: u64,
) -> Result<u64, ApiError> {
    let out_of_range = |n: &dyn std::fmt::Display| {
        bad(
            Code::InvalidValue,
            key,
            format!("`{key}` must be from {min} to {max}, not {n}"),
        )
    };
    match obj.get(key) {
        None => Ok(default),
        Some(Value::Number(n)) if n.is_u64() || n.is_i64() => match n.as_u64() {
            Some(x) if (min..=max).contains(&x) => Ok(x),
            _ => Err(out_of_range(n)),
        },
        Some(other) => Err(task::wrong_type(
            key,
            &format!("a whole number from {min} to {max}"),
            other,
        )),
    }
}

/// `handler`: `FILE:ENTRY`, `FILE` or `:ENTRY`, split at the last `:`. Returns the handler
/// with its file filled in, and whether the body named that file.
fn parse_handler(obj: &Map<String, Value>, runtime: Runtime) -> Result<(Handler, bool), ApiError> {
    let default = || Handler {
        file: runtime.default_file().to_string(),
        entry: None,
    };
    let Some(h) = task::get_str(obj, "handler", "handler")? else {
        return Ok((default(), false));
    };
    if h.is_empty() {
        return Err(bad(
            Code::InvalidValue,
            "handler",
            "`handler` is empty: give \"FILE:ENTRY\", \"FILE\" or \":ENTRY\", or leave it out",
        ));
    }
    let (file, entry) = match h.rsplit_once(':') {
        Some((f, e)) => (f, Some(e)),
        None => (h, None),
    };
    if let Some(e) = entry {
        if runtime == Runtime::Shell {
            return Err(bad(
                Code::InvalidValue,
                "handler",
                "a shell handler is a script run whole: `handler` names its file, with no \
                 `:ENTRY`",
            ));
        }
        check_entry(e, runtime)?;
    }
    let entry = entry.map(str::to_string);
    if file.is_empty() {
        return Ok((Handler { entry, ..default() }, false));
    }
    Ok((
        Handler {
            file: check_handler_file(file)?,
            entry,
        },
        true,
    ))
}

/// An entry point: an identifier, `[A-Za-z_$][A-Za-z0-9_$]*` (no `$` in Python, which has
/// none), at most 255 characters.
fn check_entry(e: &str, runtime: Runtime) -> Result<(), ApiError> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '$';
    let ok = e.len() <= 255
        && e.chars()
            .next()
            .is_some_and(|c| ident(c) && !c.is_ascii_digit())
        && e.chars().all(ident)
        && !(runtime == Runtime::Python && e.contains('$'));
    if !ok {
        let want = if runtime == Runtime::Python {
            "[A-Za-z_][A-Za-z0-9_]*"
        } else {
            "[A-Za-z_$][A-Za-z0-9_$]*"
        };
        return Err(bad(
            Code::InvalidValue,
            "handler",
            format!(
                "the handler's entry point must be an identifier ({want}), not \"{}\"",
                shown(e)
            ),
        ));
    }
    Ok(())
}

/// The handler's file: a relative path without `..` or NUL, normalised (`./a//b.py` is
/// `a/b.py`).
fn check_handler_file(file: &str) -> Result<String, ApiError> {
    let fault = if file.contains('\0') {
        Some("must not contain NUL")
    } else if file.starts_with('/') {
        Some("must be relative to the code directory, not start with `/`")
    } else if file.split('/').any(|c| c == "..") {
        Some("must not contain `..`")
    } else if file.ends_with('/') {
        Some("must name a file, not a directory")
    } else if file.len() > 4096 || file.split('/').any(|c| c.len() > 255) {
        Some("is too long (4096 bytes, 255 a component)")
    } else {
        None
    };
    if let Some(why) = fault {
        return Err(bad(
            Code::InvalidValue,
            "handler",
            format!("the handler's file {why}"),
        ));
    }
    match resources::entry_path(file) {
        Some(p) if !p.is_empty() => Ok(p),
        _ => Err(bad(
            Code::InvalidValue,
            "handler",
            "the handler's file must name a file",
        )),
    }
}

/// `secrets`: at most [`MAX_SECRETS`] distinct secret names.
fn parse_secrets(obj: &Map<String, Value>) -> Result<Vec<String>, ApiError> {
    let items = match obj.get("secrets") {
        None => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(other) => return Err(task::wrong_type("secrets", "an array of names", other)),
    };
    if items.len() > MAX_SECRETS {
        return Err(bad(
            Code::InvalidValue,
            "secrets",
            format!(
                "`secrets` may name at most {MAX_SECRETS} secrets, not {}",
                items.len()
            ),
        ));
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let field = format!("secrets[{i}]");
        let Value::String(name) = item else {
            return Err(task::wrong_type(&field, "a string", item));
        };
        check_secret_name(name, &field)?;
        if !seen.insert(name.as_str()) {
            return Err(bad(
                Code::InvalidValue,
                &field,
                format!("secret `{name}` is listed twice"),
            ));
        }
        out.push(name.clone());
    }
    Ok(out)
}

/// Where [`archive_tree`] has `resources::unpack` put the archive, to take it back out.
const UNPACK_DIR: &str = "/bundle";

fn invalid_archive(why: impl std::fmt::Display) -> ApiError {
    bad(
        Code::InvalidArchive,
        "archive",
        format!("the archive cannot be unpacked: {why}"),
    )
}

/// Unpacks the archive as a task's archive resource is unpacked, then applies the rules of
/// the module's doc (top directory, modes) and looks for the handler's file.
fn archive_tree(
    bytes: &[u8],
    s: &Settings,
    max_extract_bytes: u64,
) -> Result<BTreeMap<String, (Vec<u8>, u32)>, ApiError> {
    let mut out = TarWriter::new();
    resources::unpack(0, bytes, UNPACK_DIR, &mut out, max_extract_bytes).map_err(|e| match e {
        resources::ResourceError::Archive { reason, .. } => invalid_archive(reason),
        other => invalid_archive(other),
    })?;
    let tar = out
        .finish()
        .map_err(|e| ApiError::internal(format!("unpacking the archive: {e}")))?;
    let mut tree = read_unpacked(&tar)?;
    let file = &s.handler.file;
    if !holds_file(&tree, file) {
        if let Some(top) = single_top_dir(&tree) {
            if holds_file(&tree, &format!("{top}/{file}")) {
                tree = strip_top(tree, &top);
            }
        }
    }
    check_tree(&tree).map_err(invalid_archive)?;
    if !holds_file(&tree, file) {
        let (field, whose) = if s.handler_names_file {
            ("handler", "the handler's file")
        } else {
            ("archive", "the runtime's default file")
        };
        return Err(bad(
            Code::InvalidValue,
            field,
            format!(
                "the archive has no `{file}` ({whose}); {}",
                list_files(&tree)
            ),
        ));
    }
    for (path, (_, mode)) in tree.iter_mut() {
        *mode = match entry_kind(*mode) {
            EntryKind::Dir => MODE_DIR | (*mode & 0o777) | 0o555,
            EntryKind::Symlink => MODE_SYMLINK | 0o777,
            EntryKind::File if s.runtime == Runtime::Shell && path == file => {
                (*mode & 0o777) | 0o555
            }
            EntryKind::File => (*mode & 0o777) | 0o444,
        };
    }
    Ok(tree)
}

/// Reads back the tar `resources::unpack` wrote under [`UNPACK_DIR`]: paths relative to it,
/// file-type bits in the mode; a path given twice keeps the later entry, as tar would.
fn read_unpacked(tar: &[u8]) -> Result<BTreeMap<String, (Vec<u8>, u32)>, ApiError> {
    read_tree(tar, UNPACK_DIR)
}

/// The bundle back from [`bundle_tar`]'s tar (as the server stores it) under `dir`.
pub fn bundle_from_tar(tar: &[u8], dir: &str) -> Result<Vec<BundleFile>, String> {
    let tree = read_tree(tar, dir).map_err(|e| e.message)?;
    Ok(tree
        .into_iter()
        .map(|(path, (bytes, mode))| (path, bytes, mode))
        .collect())
}

/// The entries of `tar` under the absolute directory `dir`: paths relative to it, file-type
/// bits in the mode; a path given twice keeps the later entry, as tar would.
fn read_tree(tar: &[u8], dir: &str) -> Result<BTreeMap<String, (Vec<u8>, u32)>, ApiError> {
    let internal =
        |e: std::io::Error| ApiError::internal(format!("reading the unpacked archive: {e}"));
    let prefix = format!("{}/", dir.trim_start_matches('/').trim_end_matches('/'));
    let mut tree = BTreeMap::new();
    let mut archive = tar::Archive::new(tar);
    for entry in archive.entries().map_err(internal)? {
        let mut entry = entry.map_err(internal)?;
        let raw_path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let Some(rel) = format!("{}/", raw_path.trim_end_matches('/'))
            .strip_prefix(&prefix)
            .map(|r| r.trim_end_matches('/').to_string())
        else {
            continue;
        };
        if rel.is_empty() {
            continue; // the directory itself (an entry `./`)
        }
        let mode = entry.header().mode().map_err(internal)? & 0o7777;
        let (bytes, mode) = match entry.header().entry_type() {
            tar::EntryType::Directory => (Vec::new(), MODE_DIR | mode),
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                (target, MODE_SYMLINK | 0o777)
            }
            _ => {
                let mut data = Vec::new();
                entry.read_to_end(&mut data).map_err(internal)?;
                (data, mode)
            }
        };
        tree.insert(rel, (bytes, mode));
    }
    Ok(tree)
}

/// Whether `path` is in the tree as a file or a link (to one, presumably: a link's target is
/// resolved only in the container).
fn holds_file(tree: &BTreeMap<String, (Vec<u8>, u32)>, path: &str) -> bool {
    tree.get(path)
        .is_some_and(|(_, m)| entry_kind(*m) != EntryKind::Dir)
}

/// macOS Finder's resource forks, beside the folder it zipped.
fn is_macos_metadata(path: &str) -> bool {
    path == "__MACOSX" || path.starts_with("__MACOSX/")
}

/// The one top-level directory that holds every entry (ignoring `__MACOSX`), if there is one.
fn single_top_dir(tree: &BTreeMap<String, (Vec<u8>, u32)>) -> Option<String> {
    let mut tops = tree
        .keys()
        .filter(|p| !is_macos_metadata(p))
        .map(|p| p.split('/').next().unwrap_or(p.as_str()));
    let first = tops.next()?;
    if !tops.all(|t| t == first) {
        return None;
    }
    // A top-level file of that name, or a link, is not a directory to strip.
    match tree.get(first) {
        Some((_, m)) if entry_kind(*m) != EntryKind::Dir => None,
        _ => Some(first.to_string()),
    }
}

/// The entries under `top/`, with that prefix taken off; `top` itself and `__MACOSX` go.
fn strip_top(
    tree: BTreeMap<String, (Vec<u8>, u32)>,
    top: &str,
) -> BTreeMap<String, (Vec<u8>, u32)> {
    let prefix = format!("{top}/");
    tree.into_iter()
        .filter_map(|(p, v)| p.strip_prefix(&prefix).map(|r| (r.to_string(), v)))
        .collect()
}

/// A bundle's shape: nothing sits under a file or a link (its parent must be a directory),
/// and every link stays inside the bundle. Checked again after a top directory is stripped,
/// since a link that pointed into the archive's top level would then point out of it.
fn check_tree(tree: &BTreeMap<String, (Vec<u8>, u32)>) -> Result<(), String> {
    for (path, (bytes, mode)) in tree {
        let mut parent = path.as_str();
        while let Some((p, _)) = parent.rsplit_once('/') {
            parent = p;
            if holds_file(tree, parent) {
                return Err(format!(
                    "`{path}` is under `{parent}`, which is not a directory"
                ));
            }
        }
        if entry_kind(*mode) == EntryKind::Symlink {
            let target = String::from_utf8_lossy(bytes);
            if !resources::link_target_ok(path, &target) {
                return Err(format!(
                    "link `{path}` → `{target}` points outside the bundle"
                ));
            }
        }
    }
    Ok(())
}

/// "it holds: a, b, … (and N more)": the first ten files, to show what the archive has.
fn list_files(tree: &BTreeMap<String, (Vec<u8>, u32)>) -> String {
    let files: Vec<&str> = tree
        .iter()
        .filter(|(_, (_, m))| entry_kind(*m) != EntryKind::Dir)
        .map(|(p, _)| p.as_str())
        .collect();
    if files.is_empty() {
        return "it holds no files".into();
    }
    let mut s = format!("it holds: {}", files[..files.len().min(10)].join(", "));
    if files.len() > 10 {
        s.push_str(&format!(" (and {} more)", files.len() - 10));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::io::Write;

    const MAX_CODE: u64 = 1 << 20;
    const MAX_EXTRACT: u64 = 1 << 20;

    fn try_parse(v: Value) -> Result<FunctionSpec, ApiError> {
        parse(v, &Policy::default(), MAX_CODE, MAX_EXTRACT)
    }

    fn ok(v: Value) -> FunctionSpec {
        match try_parse(v) {
            Ok(s) => s,
            Err(e) => panic!("expected ok, got {e:?}"),
        }
    }

    fn err(v: Value) -> ApiError {
        match try_parse(v) {
            Ok(s) => panic!("expected an error, got {:?}", s.raw),
            Err(e) => e,
        }
    }

    /// Asserts the refusal's code and field; hands back its message.
    fn refused(v: Value, code: Code, field: &str) -> String {
        let e = err(v.clone());
        assert_eq!(
            (e.code, e.field.as_deref()),
            (code, Some(field)),
            "{v}: {}",
            e.message
        );
        e.message
    }

    fn base() -> Value {
        json!({"runtime": "python", "code": "def main(event):\n    return event\n"})
    }

    fn with(key: &str, v: Value) -> Value {
        let mut b = base();
        b[key] = v;
        b
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    fn archive(runtime: &str, bytes: &[u8]) -> Value {
        json!({"runtime": runtime, "archive": b64(bytes)})
    }

    /// A tar of regular files, written with raw names so hostile ones (`../x`, `/x`) can be
    /// built too.
    fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_cksum();
            b.append(&h, *data).ok();
        }
        b.into_inner().unwrap_or_default()
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(bytes).ok();
        enc.finish().unwrap_or_default()
    }

    fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .unix_permissions(0o644);
        for (name, data) in entries {
            if name.ends_with('/') {
                z.add_directory(*name, opts).ok();
            } else {
                z.start_file(*name, opts).ok();
                z.write_all(data).ok();
            }
        }
        z.finish().map(|c| c.into_inner()).unwrap_or_default()
    }

    fn file<'a>(s: &'a FunctionSpec, path: &str) -> Option<&'a BundleFile> {
        s.files.iter().find(|f| f.0 == path)
    }

    fn paths(s: &FunctionSpec) -> Vec<&str> {
        s.files.iter().map(|f| f.0.as_str()).collect()
    }

    #[test]
    fn names() {
        for good in ["a", "default", "my-fn_2.v1", &"a".repeat(63), "0"] {
            assert!(check_name(good, "name").is_ok(), "{good}");
        }
        for badname in [
            "",
            "A",
            "-a",
            ".a",
            "_a",
            "a/b",
            "a b",
            "é",
            &"a".repeat(64),
        ] {
            let e = check_name(badname, "namespace").err();
            assert_eq!(
                e.map(|e| (e.code, e.field)),
                Some((Code::InvalidValue, Some("namespace".to_string()))),
                "{badname:?}"
            );
        }
        for good in ["DB_PASSWORD", "_x", "a.b-c", "0", &"S".repeat(63)] {
            assert!(check_secret_name(good, "name").is_ok(), "{good}");
        }
        for badname in [
            "",
            ".",
            "..",
            "a..b",
            ".hidden",
            "-a",
            "a/b",
            "a b",
            &"S".repeat(64),
        ] {
            assert_eq!(
                check_secret_name(badname, "name").err().map(|e| e.code),
                Some(Code::InvalidValue),
                "{badname:?}"
            );
        }
    }

    #[test]
    fn text_code_for_each_runtime_with_defaults() {
        for (rt, file, image, mode) in [
            ("python", "fn.py", "ufaas/python:3", 0o644),
            ("node", "index.js", "ufaas/node:18", 0o644),
            ("shell", "fn.sh", "ufaas/busybox:latest", 0o755),
        ] {
            let s = ok(json!({"runtime": rt, "code": "x"}));
            assert_eq!(s.runtime.as_str(), rt);
            assert_eq!(s.image, image);
            assert_eq!(
                s.handler,
                Handler {
                    file: file.into(),
                    entry: None
                }
            );
            assert_eq!(s.files, vec![(file.to_string(), b"x".to_vec(), mode)]);
            assert_eq!((s.warm, s.max_containers, s.concurrency), (1, 4, 1));
            assert_eq!((s.max_queue, s.timeout), (100, 30));
            assert!(s.env.is_empty() && s.secrets.is_empty() && !s.network);
            assert_eq!(
                (s.limits.clone(), s.description.clone()),
                (Limits::default(), None)
            );
            assert_eq!(s.code_sha256, bundle_sha256(&s.files));
            assert_eq!(s.code_sha256.len(), 64);
        }
    }

    #[test]
    fn every_field_given() {
        let s = ok(json!({
            "runtime": "node", "code": "module.exports = x", "handler": "src/app.js:handler",
            "image": "node:20-alpine", "env": {"A": 1, "B": "b"}, "secrets": ["DB_PASSWORD", "api.key"],
            "warm": 0, "max_containers": 64, "concurrency": 8, "max_queue": 0, "timeout": 3600,
            "limits": {"memory_mb": 256}, "network": null, "description": "adds numbers"
        }));
        assert_eq!(s.handler.to_string(), "src/app.js:handler");
        assert_eq!(paths(&s), vec!["src/app.js"]);
        assert_eq!(s.image, "node:20-alpine");
        assert_eq!(s.env.get("A").map(String::as_str), Some("1"));
        assert_eq!(s.secrets, vec!["DB_PASSWORD", "api.key"]);
        assert_eq!(
            (
                s.warm,
                s.max_containers,
                s.concurrency,
                s.max_queue,
                s.timeout
            ),
            (0, 64, 8, 0, 3600)
        );
        assert_eq!(s.limits.memory_mb, Some(256));
        assert_eq!(s.description.as_deref(), Some("adds numbers"));
        assert!(s.raw.get("network").is_none(), "nulls are dropped");
        // `:ENTRY` keeps the default file; `FILE` alone names no entry.
        let s = ok(with("handler", json!(":fn")));
        assert_eq!(
            (s.handler.file.as_str(), s.handler.entry.as_deref()),
            ("fn.py", Some("fn"))
        );
        let s = ok(with("handler", json!("./lib//main.py")));
        assert_eq!(
            (s.handler.file.as_str(), s.handler.entry),
            ("lib/main.py", None)
        );
        let s = ok(json!({"runtime": "shell", "code": "cat", "handler": "run.sh"}));
        assert_eq!(
            s.files,
            vec![("run.sh".to_string(), b"cat".to_vec(), 0o755)]
        );
    }

    #[test]
    fn body_and_top_level_refusals() {
        assert_eq!(err(json!([1])).code, Code::InvalidType);
        assert_eq!(err(json!("code")).code, Code::InvalidType);
        refused(with("colour", json!("red")), Code::UnknownField, "colour");
        assert_eq!(ok(json!({"code": "x"})).runtime, Runtime::Node);
        assert_eq!(ok(json!({"code": "x"})).handler.file, "index.js");
        refused(
            with("runtime", json!("ruby")),
            Code::InvalidValue,
            "runtime",
        );
        refused(with("runtime", json!(3)), Code::InvalidType, "runtime");
        refused(json!({"runtime": "python"}), Code::MissingField, "code");
        let mut both = base();
        both["archive"] = json!(b64(&tar_of(&[("fn.py", b"x")])));
        refused(both, Code::InvalidValue, "code");
        refused(with("code", json!(["x"])), Code::InvalidType, "code");
        refused(with("code", json!("")), Code::InvalidValue, "code");
        refused(
            json!({"runtime": "node", "archive": 5}),
            Code::InvalidType,
            "archive",
        );
    }

    #[test]
    fn handler_refusals() {
        for h in [
            "/abs/fn.py",
            "../fn.py",
            "a/../../fn.py",
            "a\0b",
            "dir/",
            "fn.py:",
            "fn.py:1x",
            "fn.py:a-b",
            "fn.py:main$",
            ".:main",
            "",
        ] {
            refused(with("handler", json!(h)), Code::InvalidValue, "handler");
        }
        refused(with("handler", json!(7)), Code::InvalidType, "handler");
        // `$` is an identifier character in JavaScript only.
        ok(json!({"runtime": "node", "code": "x", "handler": "index.js:$main"}));
        let m = refused(
            json!({"runtime": "shell", "code": "cat", "handler": "fn.sh:main"}),
            Code::InvalidValue,
            "handler",
        );
        assert!(m.contains("no `:ENTRY`"), "{m}");
        refused(
            json!({"runtime": "shell", "code": "cat", "handler": ":main"}),
            Code::InvalidValue,
            "handler",
        );
    }

    #[test]
    fn image_env_secrets_refusals() {
        refused(with("image", json!("BAD!")), Code::InvalidImage, "image");
        refused(with("image", json!(1)), Code::InvalidType, "image");
        refused(
            with("env", json!({"1A": "x"})),
            Code::InvalidEnvName,
            "env.1A",
        );
        refused(with("env", json!({"A": [1]})), Code::InvalidType, "env.A");
        refused(with("env", json!("A=1")), Code::InvalidType, "env");
        refused(with("secrets", json!("DB")), Code::InvalidType, "secrets");
        refused(
            with("secrets", json!(["ok", 3])),
            Code::InvalidType,
            "secrets[1]",
        );
        refused(
            with("secrets", json!(["ok", "../etc/passwd"])),
            Code::InvalidValue,
            "secrets[1]",
        );
        refused(
            with("secrets", json!(["a/b"])),
            Code::InvalidValue,
            "secrets[0]",
        );
        let m = refused(
            with("secrets", json!(["A", "B", "A"])),
            Code::InvalidValue,
            "secrets[2]",
        );
        assert!(m.contains("twice"), "{m}");
        let many: Vec<String> = (0..65).map(|i| format!("s{i}")).collect();
        refused(with("secrets", json!(many)), Code::InvalidValue, "secrets");
        let most: Vec<String> = (0..64).map(|i| format!("s{i}")).collect();
        assert_eq!(ok(with("secrets", json!(most))).secrets.len(), 64);
    }

    #[test]
    fn counts_refusals() {
        for (key, low, high) in [
            ("warm", -1, 65),
            ("max_containers", 0, 65),
            ("concurrency", 0, 65),
            ("max_queue", -1, 100_001),
            ("timeout", 0, 3601),
        ] {
            for n in [low, high] {
                let m = refused(with(key, json!(n)), Code::InvalidValue, key);
                assert!(m.contains(" to "), "the range is in the message: {m}");
            }
            refused(with(key, json!("5")), Code::InvalidType, key);
            refused(with(key, json!(1.5)), Code::InvalidType, key);
            refused(with(key, json!(true)), Code::InvalidType, key);
        }
        refused(
            with("timeout", json!(u64::MAX)),
            Code::InvalidValue,
            "timeout",
        );
        let mut v = with("warm", json!(5));
        v["max_containers"] = json!(4);
        let m = refused(v, Code::InvalidValue, "warm");
        assert!(m.contains("max_containers"), "{m}");
        let mut v = with("warm", json!(2));
        v["max_containers"] = json!(2);
        assert_eq!(ok(v).warm, 2);
    }

    #[test]
    fn limits_network_description_refusals() {
        refused(
            with("limits", json!({"memory_mb": 1 << 30})),
            Code::LimitExceeded,
            "limits.memory_mb",
        );
        refused(
            with("limits", json!({"gpus": 1})),
            Code::UnknownField,
            "limits.gpus",
        );
        refused(with("limits", json!(5)), Code::InvalidType, "limits");
        refused(
            with("network", json!(true)),
            Code::NetworkNotAllowed,
            "network",
        );
        refused(with("network", json!("yes")), Code::InvalidType, "network");
        let policy = Policy {
            allow_network: true,
            ..Policy::default()
        };
        let s =
            parse(with("network", json!(true)), &policy, MAX_CODE, MAX_EXTRACT).map(|s| s.network);
        assert_eq!(s.ok(), Some(true));
        refused(
            with("description", json!(1)),
            Code::InvalidType,
            "description",
        );
        refused(
            with("description", json!("é".repeat(1025))),
            Code::InvalidValue,
            "description",
        );
        ok(with("description", json!("é".repeat(1024))));
    }

    #[test]
    fn code_size_is_capped_with_413() {
        let e = parse(
            with("code", json!("x".repeat(11))),
            &Policy::default(),
            10,
            MAX_EXTRACT,
        )
        .err();
        assert_eq!(
            e.map(|e| (e.status(), e.field)),
            Some((413, Some("code".into())))
        );
        let v = archive("python", &tar_of(&[("fn.py", b"x")]));
        let e = parse(v, &Policy::default(), 100, MAX_EXTRACT).err();
        assert_eq!(
            e.map(|e| (e.code, e.field)),
            Some((Code::PayloadTooLarge, Some("archive".into())))
        );
        assert!(parse(
            with("code", json!("x".repeat(10))),
            &Policy::default(),
            10,
            MAX_EXTRACT
        )
        .is_ok());
    }

    #[test]
    fn tar_tar_gz_and_zip_archives() {
        let files: &[(&str, &[u8])] = &[
            ("fn.py", b"def main(e): return e"),
            ("lib/util.py", b"X = 1"),
        ];
        for bytes in [tar_of(files), gz(&tar_of(files)), zip_of(files)] {
            let s = ok(archive("python", &bytes));
            assert_eq!(
                file(&s, "fn.py").map(|f| f.1.as_slice()),
                Some(&b"def main(e): return e"[..])
            );
            assert_eq!(
                file(&s, "lib/util.py").map(|f| (f.1.as_slice(), f.2)),
                Some((&b"X = 1"[..], 0o644))
            );
        }
        // The same files give the same hash, whatever the archive's format.
        let a = ok(archive("python", &tar_of(files))).code_sha256;
        assert_eq!(a, ok(archive("python", &zip_of(files))).code_sha256);
        assert_ne!(
            a,
            ok(archive("python", &tar_of(&[("fn.py", b"other")]))).code_sha256
        );
        // Base64 broken over lines and without its padding is still base64.
        let raw = [tar_of(files), gz(&tar_of(files)), zip_of(files)]
            .iter()
            .map(|a| b64(a))
            .find(|b| b.ends_with('='))
            .unwrap_or_default();
        assert!(raw.ends_with('='), "one of them needs padding");
        let wrapped: Vec<String> = raw
            .trim_end_matches('=')
            .as_bytes()
            .chunks(76)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        ok(json!({"runtime": "python", "archive": wrapped.join("\n")}));
    }

    #[test]
    fn modes_in_an_archive_are_readable_and_never_setuid() {
        let mut b = tar::Builder::new(Vec::new());
        for (name, mode) in [("fn.sh", 0o600), ("suid", 0o4755), ("private", 0o600)] {
            let mut h = tar::Header::new_gnu();
            h.set_size(1);
            h.set_mode(mode);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, name, &b"x"[..]).ok();
        }
        let s = ok(archive("shell", &b.into_inner().unwrap_or_default()));
        let mode = |p: &str| file(&s, p).map(|f| f.2);
        assert_eq!(
            (mode("fn.sh"), mode("suid"), mode("private")),
            (Some(0o755), Some(0o755), Some(0o644))
        );
    }

    #[test]
    fn bad_archives_are_invalid_archive() {
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("escape", tar_of(&[("fn.py", b"x"), ("../evil", b"x")])),
            ("absolute", tar_of(&[("fn.py", b"x"), ("/etc/evil", b"x")])),
            (
                "garbage",
                b"this is not an archive, not even close to one".to_vec(),
            ),
            ("zip escape", zip_of(&[("fn.py", b"x"), ("../evil", b"x")])),
        ];
        for (what, bytes) in cases {
            let m = refused(archive("python", &bytes), Code::InvalidArchive, "archive");
            assert!(
                m.starts_with("the archive cannot be unpacked: "),
                "{what}: {m}"
            );
        }
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        b.append_link(&mut h, "fn.py", "../../etc/passwd").ok();
        let m = refused(
            archive("python", &b.into_inner().unwrap_or_default()),
            Code::InvalidArchive,
            "archive",
        );
        assert!(m.contains("points outside"), "{m}");
        // A zip bomb: a megabyte and a bit of zeros, deflated to a few kilobytes.
        let bomb = zip_of(&[
            ("fn.py", b"x"),
            ("zeros", &vec![0u8; MAX_EXTRACT as usize + 1]),
        ]);
        assert!(bomb.len() < 10_000);
        let m = refused(archive("python", &bomb), Code::InvalidArchive, "archive");
        assert!(m.contains("limit"), "{m}");
        refused(
            json!({"runtime": "python", "archive": "not base64!"}),
            Code::InvalidBase64,
            "archive",
        );
        refused(
            json!({"runtime": "python", "archive": " \n"}),
            Code::InvalidValue,
            "archive",
        );
    }

    #[test]
    fn links_inside_are_kept_and_re_checked_when_the_top_dir_goes() {
        let link = |b: &mut tar::Builder<Vec<u8>>, name: &str, target: &str| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            h.set_mode(0o777);
            b.append_link(&mut h, name, target).ok();
        };
        let add = |b: &mut tar::Builder<Vec<u8>>, name: &str| {
            let mut h = tar::Header::new_gnu();
            h.set_size(1);
            h.set_mode(0o644);
            b.append_data(&mut h, name, &b"x"[..]).ok();
        };
        let mut b = tar::Builder::new(Vec::new());
        add(&mut b, "index.js");
        add(&mut b, "node_modules/x/cli.js");
        link(&mut b, "node_modules/.bin/x", "../x/cli.js");
        let s = ok(archive("node", &b.into_inner().unwrap_or_default()));
        assert_eq!(
            file(&s, "node_modules/.bin/x").map(|f| (f.1.as_slice(), entry_kind(f.2))),
            Some((&b"../x/cli.js"[..], EntryKind::Symlink))
        );
        let tar = bundle_tar(&s, "/function").unwrap_or_default();
        let mut names = Vec::new();
        if let Ok(entries) = tar::Archive::new(tar.as_slice()).entries() {
            for e in entries.flatten() {
                names.push((
                    String::from_utf8_lossy(&e.path_bytes()).into_owned(),
                    e.header().entry_type(),
                ));
            }
        }
        assert!(
            names.contains(&(
                "function/node_modules/.bin/x".into(),
                tar::EntryType::Symlink
            )),
            "{names:?}"
        );
        assert!(
            names.contains(&("function/index.js".into(), tar::EntryType::Regular)),
            "{names:?}"
        );
        // Inside `top/`, `top/l -> ../x` stays in the archive; with `top/` stripped it would not.
        let mut b = tar::Builder::new(Vec::new());
        add(&mut b, "top/index.js");
        link(&mut b, "top/l", "../x");
        let m = refused(
            archive("node", &b.into_inner().unwrap_or_default()),
            Code::InvalidArchive,
            "archive",
        );
        assert!(m.contains("points outside the bundle"), "{m}");
    }

    #[test]
    fn a_file_cannot_also_be_a_directory() {
        let bytes = zip_of(&[("fn.py", b"x"), ("fn.py/inner", b"y")]);
        refused(archive("python", &bytes), Code::InvalidArchive, "archive");
    }

    #[test]
    fn a_missing_handler_file_is_named_with_what_is_there() {
        let many: Vec<(String, &[u8])> = (0..12)
            .map(|i| (format!("f{i:02}.txt"), &b"x"[..]))
            .collect();
        let refs: Vec<(&str, &[u8])> = many.iter().map(|(n, d)| (n.as_str(), *d)).collect();
        let bytes = tar_of(&refs);
        let m = refused(archive("python", &bytes), Code::InvalidValue, "archive");
        assert!(
            m.contains("`fn.py`") && m.contains("f00.txt") && m.contains("f09.txt"),
            "{m}"
        );
        assert!(!m.contains("f10.txt") && m.contains("and 2 more"), "{m}");
        let mut v = archive("python", &bytes);
        v["handler"] = json!("app.py:main");
        let m = refused(v, Code::InvalidValue, "handler");
        assert!(m.contains("`app.py`"), "{m}");
        // The handler's file found, the default one not needed.
        let mut v = archive("python", &tar_of(&[("app.py", b"x")]));
        v["handler"] = json!("app.py:main");
        assert_eq!(ok(v).handler.to_string(), "app.py:main");
        let m = refused(archive("node", &tar_of(&[])), Code::InvalidValue, "archive");
        assert!(m.contains("no files"), "{m}");
    }

    #[test]
    fn a_single_top_directory_is_stripped_only_when_it_holds_the_file() {
        let zipped = zip_of(&[
            ("myfn-main/", b""),
            ("myfn-main/fn.py", b"x"),
            ("myfn-main/lib/a.py", b"y"),
            ("__MACOSX/myfn-main/._fn.py", b"z"),
        ]);
        let s = ok(archive("python", &zipped));
        assert_eq!(paths(&s), vec!["fn.py", "lib/a.py"]);
        // Kept as they are when the handler names the path inside.
        let mut v = archive("python", &zipped);
        v["handler"] = json!("myfn-main/fn.py");
        let s = ok(v);
        assert!(paths(&s).contains(&"myfn-main/fn.py"), "{:?}", paths(&s));
        // Not stripped when the file is at the top already, nor with two top directories.
        let s = ok(archive(
            "python",
            &tar_of(&[("fn.py", b"x"), ("d/fn.py", b"y")]),
        ));
        assert_eq!(paths(&s), vec!["d/fn.py", "fn.py"]);
        refused(
            archive("python", &tar_of(&[("a/fn.py", b"x"), ("b/fn.py", b"y")])),
            Code::InvalidValue,
            "archive",
        );
    }

    /// FAAS's README example: a tar of a node function whose end-of-archive blocks are
    /// missing; `index.js` is in the `(context, cb)` shape.
    #[test]
    fn the_faas_example_payload_deploys() {
        let payload = include_str!("../../tests/data/faas_example.tar.b64");
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(payload.trim())
            .unwrap_or_default();
        assert_eq!(
            decoded.len() % 512,
            195,
            "the payload is cut short of its padding"
        );
        let s = ok(json!({"runtime": "node", "archive": payload}));
        assert_eq!(
            paths(&s),
            vec![
                "Dockerfile",
                "fn.yaml",
                "index.js",
                "package.json",
                "server.js"
            ]
        );
        let index = file(&s, "index.js").map(|f| String::from_utf8_lossy(&f.1).into_owned());
        assert!(index.is_some_and(|t| t.contains("module.exports = (context, cb)")));
        // The last file, right against the cut, is whole: its 195 bytes end with the CMD.
        let docker = file(&s, "Dockerfile")
            .map(|f| f.1.clone())
            .unwrap_or_default();
        assert_eq!(docker.len(), 195);
        assert!(docker.ends_with(b"CMD [ \"node\", \"server.js\" ]"));
        // Written 0600 by the FAAS CLI; readable here.
        assert_eq!(file(&s, "server.js").map(|f| f.2), Some(0o644));
    }

    #[test]
    fn stored_config_round_trips_through_from_stored() {
        let mut body = archive(
            "python",
            &zip_of(&[("d/", b""), ("d/fn.py", b"x"), ("d/m.py", b"m")]),
        );
        body["handler"] = json!("fn.py:main");
        body["env"] = json!({"N": 3});
        body["secrets"] = json!(["TOKEN"]);
        body["warm"] = json!(0);
        body["limits"] = json!({"cpus": 0.5});
        let first = ok(body);
        let config = first.stored_config();
        assert!(config.get("archive").is_none() && config.get("code").is_none());
        assert_eq!(config.get("handler"), Some(&json!("fn.py:main")));
        let text = serde_json::to_string(&config).unwrap_or_default();
        let again = from_stored(
            serde_json::from_str(&text).unwrap_or_default(),
            first.files.clone(),
        );
        let again = match again {
            Ok(s) => s,
            Err(e) => panic!("from_stored: {e}"),
        };
        assert_eq!(again.raw, config);
        assert_eq!(
            FunctionSpec {
                raw: config.clone(),
                ..first.clone()
            },
            again
        );
        // Text code too.
        let text = ok(base());
        let back = from_stored(text.stored_config(), text.files.clone()).map(|s| s.code_sha256);
        assert_eq!(back.ok(), Some(text.code_sha256.clone()));
        // What from_stored refuses: the code in the config, a bundle without the handler's
        // file, a path that climbs, a link that points out.
        assert!(from_stored(base(), text.files.clone()).is_err());
        assert!(from_stored(text.stored_config(), vec![]).is_err());
        let climbing = vec![
            ("fn.py".into(), b"x".to_vec(), 0o644),
            ("../x".into(), b"x".to_vec(), 0o644),
        ];
        assert!(from_stored(text.stored_config(), climbing).is_err());
        let link = vec![(
            "fn.py".into(),
            b"/etc/passwd".to_vec(),
            MODE_SYMLINK | 0o777,
        )];
        assert!(from_stored(text.stored_config(), link).is_err());
        // A policy lowered since: from_stored still reads it; check_policy says so.
        let policy = Policy {
            max_cpus: 0.25,
            ..Policy::default()
        };
        assert_eq!(
            again.check_policy(&policy).err().map(|e| e.code),
            Some(Code::LimitExceeded)
        );
        assert!(again.check_policy(&Policy::default()).is_ok());
    }

    #[test]
    fn bundle_tar_places_files_under_the_directory() {
        let s = ok(json!({"runtime": "shell", "code": "cat"}));
        let tar = bundle_tar(&s, "/function/").unwrap_or_default();
        let mut got = Vec::new();
        if let Ok(entries) = tar::Archive::new(tar.as_slice()).entries() {
            for mut e in entries.flatten() {
                let mut data = Vec::new();
                e.read_to_end(&mut data).ok();
                let mode = e.header().mode().unwrap_or(0);
                got.push((
                    String::from_utf8_lossy(&e.path_bytes()).into_owned(),
                    data,
                    mode,
                ));
            }
        }
        assert_eq!(
            got,
            vec![("function/fn.sh".to_string(), b"cat".to_vec(), 0o755)]
        );
        assert!(bundle_tar(&s, "function").is_err());
        assert!(bundle_tar(&s, "/a/../b").is_err());
    }
}
