//! The task spec of API.md section 1: parsing a JSON body into a checked [`TaskSpec`], with an
//! error that names the field at fault. Validation is hand-written over `serde_json::Value`
//! rather than derived, because every refusal must name its field path
//! (`resource_list[3].dest`), which serde's messages do not give reliably.

use std::collections::BTreeMap;
use std::path::PathBuf;

use base64::Engine as _;
use serde_json::{Map, Value};

use crate::error::{ApiError, Code};

/// What the server allows; the spec is checked against it before anything runs.
#[derive(Debug, Clone)]
pub struct Policy {
    pub max_memory_mb: u64,
    pub max_cpus: f64,
    pub max_pids: u64,
    pub allow_network: bool,
    pub bind_allow: Vec<PathBuf>,
    /// Decoded bytes of all inline (text and base64) resources of one task.
    pub max_inline_bytes: u64,
    pub max_tmpfs_bytes: u64,
    /// Where `uri` resources may be fetched from.
    pub fetch_guard: std::sync::Arc<crate::netguard::FetchGuard>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_memory_mb: 4096,
            max_cpus: 2.0,
            max_pids: 4096,
            allow_network: false,
            bind_allow: Vec::new(),
            max_inline_bytes: 32 << 20,
            max_tmpfs_bytes: 1 << 30,
            fetch_guard: Default::default(),
        }
    }
}

pub const MAX_RESOURCES: usize = 256;
/// A year: long enough for any job, short enough that deadlines never overflow.
pub const MAX_SECONDS: u64 = 365 * 24 * 3600;

/// Where a file resource's bytes come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    Inline(Vec<u8>),
    Uri { uri: String, sha256: Option<String> },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Resource {
    /// A file (or, with `extract`, an archive unpacked into the directory `dest`).
    File {
        dest: String,
        source: Source,
        mode: Option<u32>,
        extract: bool,
    },
    Tmpfs {
        dest: String,
        size: Option<u64>,
        mode: Option<u32>,
    },
    Bind {
        dest: String,
        host: String,
        readonly: bool,
    },
}

impl Resource {
    pub fn is_mount(&self) -> bool {
        matches!(self, Resource::Tmpfs { .. } | Resource::Bind { .. })
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    pub memory_mb: Option<u64>,
    pub cpus: Option<f64>,
    pub pids: Option<u64>,
}

/// A checked task spec. `raw` is the JSON object as the user sent it (after `null`s are
/// dropped): it is what the record shows and what a merge-patch applies to.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSpec {
    pub task_name: String,
    pub image: String,
    pub cmd_list: Vec<String>,
    pub pwd: Option<String>,
    pub env: BTreeMap<String, String>,
    pub resource_list: Vec<Resource>,
    pub stdin: Option<String>,
    pub is_daemon: bool,
    pub ttl: Option<u64>,
    pub timeout: Option<u64>,
    pub rm: Option<bool>,
    pub priority: i64,
    pub limits: Limits,
    pub network: bool,
    pub raw: Value,
}

const TOP_FIELDS: &[&str] = &[
    "task_name",
    "image",
    "cmd_list",
    "pwd",
    "env",
    "resource_list",
    "stdin",
    "is_daemon",
    "ttl",
    "timeout",
    "rm",
    "priority",
    "limits",
    "network",
];

pub(crate) fn bad(code: Code, field: &str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request(code, field, message)
}

pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub(crate) fn wrong_type(field: &str, want: &str, got: &Value) -> ApiError {
    bad(
        Code::InvalidType,
        field,
        format!("`{field}` must be {want}, not {}", type_name(got)),
    )
}

pub(crate) fn get_str<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    field: &str,
) -> Result<Option<&'a str>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(wrong_type(field, "a string", other)),
    }
}

fn get_bool(obj: &Map<String, Value>, key: &str, field: &str) -> Result<Option<bool>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(wrong_type(field, "true or false", other)),
    }
}

fn get_positive_int(
    obj: &Map<String, Value>,
    key: &str,
    field: &str,
    max: u64,
) -> Result<Option<u64>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v @ Value::Number(n)) => match (n.as_u64(), n.as_i64()) {
            (Some(x), _) if x > 0 && x <= max => Ok(Some(x)),
            (Some(x), _) if x > max => Err(bad(
                Code::InvalidValue,
                field,
                format!("`{field}` must be at most {max}"),
            )),
            // Whole, but zero or negative: the right type with a wrong value.
            (Some(_), _) | (None, Some(_)) => Err(bad(
                Code::InvalidValue,
                field,
                format!("`{field}` must be greater than 0, not {n}"),
            )),
            _ => Err(wrong_type(field, "a whole number greater than 0", v)),
        },
        Some(other) => Err(wrong_type(field, "a whole number greater than 0", other)),
    }
}

pub(crate) fn no_nul(s: &str, field: &str) -> Result<(), ApiError> {
    if s.contains('\0') {
        return Err(bad(
            Code::InvalidValue,
            field,
            format!("`{field}` must not contain NUL"),
        ));
    }
    Ok(())
}

pub(crate) fn check_unknown(
    obj: &Map<String, Value>,
    allowed: &[&str],
    prefix: &str,
) -> Result<(), ApiError> {
    for key in obj.keys() {
        if !allowed.contains(&key.as_str()) {
            let field = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            return Err(bad(
                Code::UnknownField,
                &field,
                format!("unknown field `{field}`"),
            ));
        }
    }
    Ok(())
}

/// Drops object members whose value is `null`, at every depth: `null` means "not given"
/// (and merge-patch uses it to delete), so the stored spec never holds one.
pub fn strip_nulls(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(strip_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// RFC 7386 JSON merge-patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(patch_map) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            if let Value::Object(target_map) = target {
                for (key, value) in patch_map {
                    if value.is_null() {
                        target_map.remove(key);
                    } else {
                        merge_patch(target_map.entry(key.clone()).or_insert(Value::Null), value);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// Checks a Docker image reference: `[host[:port]/]path[:tag][@algo:hex]`, lower-case path
/// components as the distribution spec allows them.
pub fn valid_image_ref(s: &str) -> bool {
    if s.is_empty() || s.len() > 255 || s.contains('!') {
        return false;
    }
    let (name_tag, digest) = match s.split_once('@') {
        Some((a, d)) => (a, Some(d)),
        None => (s, None),
    };
    if let Some(d) = digest {
        let Some((algo, hex)) = d.split_once(':') else {
            return false;
        };
        if algo.is_empty()
            || !algo
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+._-".contains(c))
            || hex.len() < 32
            || !hex.chars().all(|c| c.is_ascii_hexdigit())
        {
            return false;
        }
    }
    // A tag is what follows the last ':' when no '/' comes after it (a ':' before a '/' is a port).
    let (name, tag) = match name_tag.rfind(':') {
        Some(i) if !name_tag[i..].contains('/') => (&name_tag[..i], Some(&name_tag[i + 1..])),
        _ => (name_tag, None),
    };
    if let Some(t) = tag {
        let mut chars = t.chars();
        match chars.next() {
            Some(c) if c.is_ascii_alphanumeric() || c == '_' => {}
            _ => return false,
        }
        if t.len() > 128 || !chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) {
            return false;
        }
    }
    let mut parts: Vec<&str> = name.split('/').collect();
    if parts.len() > 1 {
        let first = parts[0];
        let looks_like_host = first.contains('.') || first.contains(':') || first == "localhost";
        if looks_like_host {
            let (host, port) = match first.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (first, None),
            };
            if let Some(p) = port {
                if p.is_empty() || !p.chars().all(|c| c.is_ascii_digit()) {
                    return false;
                }
            }
            if host.is_empty()
                || !host.split('.').all(|label| {
                    !label.is_empty()
                        && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                        && !label.starts_with('-')
                        && !label.ends_with('-')
                })
            {
                return false;
            }
            parts.remove(0);
        }
    }
    !parts.is_empty() && parts.iter().all(|p| valid_path_component(p))
}

fn valid_path_component(p: &str) -> bool {
    // [a-z0-9]+ ((\.|_|__|-+) [a-z0-9]+)*
    let bytes = p.as_bytes();
    if bytes.is_empty() || !is_alnum_lower(bytes[0]) || !is_alnum_lower(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if is_alnum_lower(c) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !is_alnum_lower(bytes[i]) {
            i += 1;
        }
        let sep = &p[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.chars().all(|c| c == '-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_alnum_lower(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// Joins `dest` onto `base` (when relative) and normalises `.` away; `None` if a `..` climbs
/// anywhere (refused outright rather than resolved, so no path can sneak out of a directory).
pub fn resolve_dest(base: &str, dest: &str) -> Option<String> {
    let joined = if dest.starts_with('/') {
        dest.to_string()
    } else {
        format!("{}/{}", base.trim_end_matches('/'), dest)
    };
    let mut out: Vec<&str> = Vec::new();
    for part in joined.split('/') {
        match part {
            "" | "." => {}
            ".." => return None,
            p => out.push(p),
        }
    }
    Some(format!("/{}", out.join("/")))
}

fn forbidden_root(path: &str) -> bool {
    ["/proc", "/sys", "/dev"]
        .iter()
        .any(|root| path == *root || path.starts_with(&format!("{root}/")))
}

fn check_dest(dest: &str, pwd: Option<&str>, field: &str) -> Result<(), ApiError> {
    if dest.is_empty() {
        return Err(bad(Code::InvalidDest, field, "`dest` must not be empty"));
    }
    if dest.contains('\0') {
        return Err(bad(Code::InvalidDest, field, "`dest` must not contain NUL"));
    }
    if dest.len() > 4096 || dest.split('/').any(|c| c.len() > 255) {
        return Err(bad(
            Code::InvalidDest,
            field,
            "`dest` is too long (4096 bytes, 255 a component)",
        ));
    }
    if dest.split('/').any(|c| c == "..") {
        return Err(bad(
            Code::InvalidDest,
            field,
            "`dest` must not contain `..`",
        ));
    }
    let resolved = resolve_dest(pwd.unwrap_or("/"), dest)
        .ok_or_else(|| bad(Code::InvalidDest, field, "`dest` must not contain `..`"))?;
    if forbidden_root(&resolved) || (dest.starts_with('/') && forbidden_root(dest)) {
        return Err(bad(
            Code::InvalidDest,
            field,
            "`dest` must not point into /proc, /sys or /dev",
        ));
    }
    Ok(())
}

fn parse_mode(obj: &Map<String, Value>, field: &str) -> Result<Option<u32>, ApiError> {
    match get_str(obj, "mode", field)? {
        None => Ok(None),
        Some(s) => {
            let ok = (1..=4).contains(&s.len()) && s.chars().all(|c| ('0'..='7').contains(&c));
            if !ok {
                return Err(bad(
                    Code::InvalidValue,
                    field,
                    format!("`{field}` must be an octal string such as \"0644\""),
                ));
            }
            u32::from_str_radix(s, 8)
                .map(Some)
                .map_err(|_| bad(Code::InvalidValue, field, "bad octal mode"))
        }
    }
}

/// Options of [`parse`] that depend on the route, not the body.
#[derive(Debug, Clone, Copy, Default)]
pub struct ParseContext<'a> {
    /// `POST /fn/{id}`: the image of the task whose container is asked for; the spec may leave
    /// `image` out, and if it gives one it must match.
    pub reuse_image: Option<&'a str>,
}

/// Parses and checks a spec. Nothing is touched before this returns `Ok`. The fields are
/// checked in the order below, so a spec with several faults is refused for the first.
pub fn parse(mut raw: Value, policy: &Policy, ctx: ParseContext<'_>) -> Result<TaskSpec, ApiError> {
    strip_nulls(&mut raw);
    let obj = match &raw {
        Value::Object(o) => o,
        other => {
            return Err(ApiError::new(
                Code::InvalidType,
                format!(
                    "the task spec must be a JSON object, not {}",
                    type_name(other)
                ),
            ))
        }
    };
    check_unknown(obj, TOP_FIELDS, "")?;
    let task_name = parse_task_name(obj)?;
    let image = parse_image(obj, ctx.reuse_image)?;
    let cmd_list = parse_cmd_list(obj)?;
    let pwd = parse_pwd(obj)?;
    let env = parse_env(obj)?;
    let resource_list = parse_resource_list(obj, pwd.as_deref(), policy, ctx)?;
    let stdin = get_str(obj, "stdin", "stdin")?.map(str::to_string);
    let is_daemon = get_bool(obj, "is_daemon", "is_daemon")?.unwrap_or(false);
    let ttl = get_positive_int(obj, "ttl", "ttl", MAX_SECONDS)?;
    let timeout = get_positive_int(obj, "timeout", "timeout", MAX_SECONDS)?;
    let rm = get_bool(obj, "rm", "rm")?;
    let priority = parse_priority(obj)?;
    let limits = parse_limits(obj, policy)?;
    let network = parse_network(obj, policy)?;
    Ok(TaskSpec {
        task_name,
        image,
        cmd_list,
        pwd,
        env,
        resource_list,
        stdin,
        is_daemon,
        ttl,
        timeout,
        rm,
        priority,
        limits,
        network,
        raw,
    })
}

/// `task_name`: required; spaces become underscores; 1 to 127 characters, none a control.
fn parse_task_name(obj: &Map<String, Value>) -> Result<String, ApiError> {
    let name = get_str(obj, "task_name", "task_name")?
        .ok_or_else(|| bad(Code::MissingField, "task_name", "`task_name` is required"))?;
    let task_name = name.replace(' ', "_");
    let name_len = task_name.chars().count();
    if name_len == 0 || name_len > 127 {
        return Err(bad(
            Code::InvalidValue,
            "task_name",
            "`task_name` must be 1 to 127 characters",
        ));
    }
    if task_name.chars().any(char::is_control) {
        return Err(bad(
            Code::InvalidValue,
            "task_name",
            "`task_name` must not contain control characters",
        ));
    }
    Ok(task_name)
}

/// `image`: a valid reference; required unless the task reuses a container (`reuse`), whose
/// image it then defaults to and, when given, must be.
fn parse_image(obj: &Map<String, Value>, reuse: Option<&str>) -> Result<String, ApiError> {
    let image = match (get_str(obj, "image", "image")?, reuse) {
        (Some(img), Some(reuse)) if img != reuse => {
            return Err(bad(
                Code::ImageMismatch,
                "image",
                format!("`image` must be `{reuse}`, the image of the container asked for"),
            ))
        }
        (Some(img), _) => img.to_string(),
        (None, Some(reuse)) => reuse.to_string(),
        (None, None) => return Err(bad(Code::MissingField, "image", "`image` is required")),
    };
    if !valid_image_ref(&image) {
        return Err(bad(
            Code::InvalidImage,
            "image",
            "`image` must be a valid Docker reference of 1 to 255 characters, without `!`",
        ));
    }
    Ok(image)
}

/// `cmd_list`: required, a non-empty array of strings without NUL whose first (the program)
/// is not empty.
fn parse_cmd_list(obj: &Map<String, Value>) -> Result<Vec<String>, ApiError> {
    let items = match obj.get("cmd_list") {
        None => {
            return Err(bad(
                Code::MissingField,
                "cmd_list",
                "`cmd_list` is required",
            ))
        }
        Some(Value::Array(items)) => items,
        Some(other) => return Err(wrong_type("cmd_list", "an array of strings", other)),
    };
    if items.is_empty() {
        return Err(bad(
            Code::InvalidValue,
            "cmd_list",
            "`cmd_list` must hold at least the program to run",
        ));
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let field = format!("cmd_list[{i}]");
        match item {
            Value::String(s) => {
                no_nul(s, &field)?;
                out.push(s.clone());
            }
            other => return Err(wrong_type(&field, "a string", other)),
        }
    }
    if out[0].is_empty() {
        return Err(bad(
            Code::InvalidValue,
            "cmd_list[0]",
            "the program to run must not be empty",
        ));
    }
    Ok(out)
}

/// `pwd`: an absolute path without `..`, normalised.
fn parse_pwd(obj: &Map<String, Value>) -> Result<Option<String>, ApiError> {
    let Some(p) = get_str(obj, "pwd", "pwd")? else {
        return Ok(None);
    };
    no_nul(p, "pwd")?;
    if !p.starts_with('/') {
        return Err(bad(
            Code::InvalidValue,
            "pwd",
            "`pwd` must be an absolute path",
        ));
    }
    let resolved = resolve_dest("/", p)
        .ok_or_else(|| bad(Code::InvalidValue, "pwd", "`pwd` must not contain `..`"))?;
    if p.len() > 4096 {
        return Err(bad(Code::InvalidValue, "pwd", "`pwd` is too long"));
    }
    Ok(Some(resolved))
}

/// `env`: an object of shell-style names; numbers and booleans become their JSON text.
pub(crate) fn parse_env(obj: &Map<String, Value>) -> Result<BTreeMap<String, String>, ApiError> {
    let mut env = BTreeMap::new();
    let map = match obj.get("env") {
        None => return Ok(env),
        Some(Value::Object(map)) => map,
        Some(other) => return Err(wrong_type("env", "an object", other)),
    };
    for (key, value) in map {
        let field = format!("env.{key}");
        let mut chars = key.chars();
        let key_ok = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !key_ok {
            return Err(bad(
                Code::InvalidEnvName,
                &field,
                format!("environment name `{key}` must match [A-Za-z_][A-Za-z0-9_]*"),
            ));
        }
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            other => return Err(wrong_type(&field, "a string, number or boolean", other)),
        };
        no_nul(&text, &field)?;
        env.insert(key.clone(), text);
    }
    Ok(env)
}

/// `resource_list`: at most [`MAX_RESOURCES`] resources, whose inline bytes add up to at most
/// the policy's cap; no mounts on a reused container (it is running already).
fn parse_resource_list(
    obj: &Map<String, Value>,
    pwd: Option<&str>,
    policy: &Policy,
    ctx: ParseContext<'_>,
) -> Result<Vec<Resource>, ApiError> {
    let items = match obj.get("resource_list") {
        None => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(other) => return Err(wrong_type("resource_list", "an array", other)),
    };
    if items.len() > MAX_RESOURCES {
        return Err(bad(
            Code::TooManyResources,
            "resource_list",
            format!(
                "`resource_list` may hold at most {MAX_RESOURCES} entries, not {}",
                items.len()
            ),
        ));
    }
    let mut inline_total: u64 = 0;
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let res = parse_resource(item, i, pwd, policy)?;
        if let Resource::File {
            source: Source::Inline(bytes),
            ..
        } = &res
        {
            inline_total += bytes.len() as u64;
            if inline_total > policy.max_inline_bytes {
                return Err(ApiError::new(
                    Code::PayloadTooLarge,
                    format!(
                        "inline resources add up to more than the server's limit of {} bytes",
                        policy.max_inline_bytes
                    ),
                )
                .with_field(format!("resource_list[{i}].data")));
            }
        }
        if ctx.reuse_image.is_some() && res.is_mount() {
            return Err(bad(
                Code::MountOnReuse,
                &format!("resource_list[{i}]"),
                "tmpfs and bind resources cannot be added to a running container: give them to \
                 the task that creates it",
            ));
        }
        out.push(res);
    }
    Ok(out)
}

/// `priority`: a whole number from -1000000 to 1000000, 0 when not given.
fn parse_priority(obj: &Map<String, Value>) -> Result<i64, ApiError> {
    match obj.get("priority") {
        None => Ok(0),
        Some(v @ Value::Number(n)) => match (n.as_i64(), n.as_u64()) {
            (Some(p), _) if (-1_000_000..=1_000_000).contains(&p) => Ok(p),
            (Some(_), _) | (None, Some(_)) => Err(bad(
                Code::InvalidValue,
                "priority",
                format!("`priority` must be from -1000000 to 1000000, not {n}"),
            )),
            _ => Err(wrong_type("priority", "a whole number", v)),
        },
        Some(other) => Err(wrong_type("priority", "a whole number", other)),
    }
}

/// `limits`: `memory_mb`, `cpus` and `pids`, each within what the policy allows.
pub(crate) fn parse_limits(obj: &Map<String, Value>, policy: &Policy) -> Result<Limits, ApiError> {
    let map = match obj.get("limits") {
        None => return Ok(Limits::default()),
        Some(Value::Object(map)) => map,
        Some(other) => return Err(wrong_type("limits", "an object", other)),
    };
    check_unknown(map, &["memory_mb", "cpus", "pids"], "limits")?;
    Ok(Limits {
        memory_mb: parse_memory_mb(map, policy)?,
        cpus: parse_cpus(map, policy)?,
        pids: parse_pids(map, policy)?,
    })
}

/// `limits.memory_mb`: from Docker's minimum of 6 to the policy's maximum.
fn parse_memory_mb(limits: &Map<String, Value>, policy: &Policy) -> Result<Option<u64>, ApiError> {
    let memory_mb = get_positive_int(limits, "memory_mb", "limits.memory_mb", u64::MAX)?;
    if let Some(m) = memory_mb {
        if m > policy.max_memory_mb {
            return Err(bad(
                Code::LimitExceeded,
                "limits.memory_mb",
                format!(
                    "`limits.memory_mb` may be at most {} on this server",
                    policy.max_memory_mb
                ),
            ));
        }
        if m < 6 {
            return Err(bad(
                Code::InvalidValue,
                "limits.memory_mb",
                "`limits.memory_mb` must be at least 6 (Docker's minimum)",
            ));
        }
    }
    Ok(memory_mb)
}

/// `limits.cpus`: a number from 0.01 to the policy's maximum.
fn parse_cpus(limits: &Map<String, Value>, policy: &Policy) -> Result<Option<f64>, ApiError> {
    let (v, n) = match limits.get("cpus") {
        None => return Ok(None),
        Some(v @ Value::Number(n)) => (v, n),
        Some(other) => return Err(wrong_type("limits.cpus", "a number greater than 0", other)),
    };
    let c = match n.as_f64() {
        Some(c) if c > 0.0 && c.is_finite() => c,
        _ => return Err(wrong_type("limits.cpus", "a number greater than 0", v)),
    };
    if c > policy.max_cpus {
        return Err(bad(
            Code::LimitExceeded,
            "limits.cpus",
            format!(
                "`limits.cpus` may be at most {} on this server",
                policy.max_cpus
            ),
        ));
    }
    if c < 0.01 {
        return Err(bad(
            Code::InvalidValue,
            "limits.cpus",
            "`limits.cpus` must be at least 0.01",
        ));
    }
    Ok(Some(c))
}

/// `limits.pids`: at most the policy's maximum.
fn parse_pids(limits: &Map<String, Value>, policy: &Policy) -> Result<Option<u64>, ApiError> {
    let pids = get_positive_int(limits, "pids", "limits.pids", u64::MAX)?;
    if let Some(p) = pids {
        if p > policy.max_pids {
            return Err(bad(
                Code::LimitExceeded,
                "limits.pids",
                format!(
                    "`limits.pids` may be at most {} on this server",
                    policy.max_pids
                ),
            ));
        }
    }
    Ok(pids)
}

/// `network`: false unless given, and true only where the policy allows it.
pub(crate) fn parse_network(obj: &Map<String, Value>, policy: &Policy) -> Result<bool, ApiError> {
    let network = get_bool(obj, "network", "network")?.unwrap_or(false);
    if network && !policy.allow_network {
        return Err(ApiError::new(
            Code::NetworkNotAllowed,
            "this server does not give tasks a network (start it with --allow-network)",
        )
        .with_field("network"));
    }
    Ok(network)
}

/// Host paths that hold the container engine's socket or state: a task given any of them, or
/// a directory above them, could take the host. Never mounted, whatever the allow-list says.
const ENGINE_PATHS: &[&str] = &[
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/run/containerd",
    "/var/run/containerd",
    "/var/lib/docker",
    "/var/lib/containerd",
];

const FILE_FIELDS: &[&str] = &[
    "dest",
    "data",
    "encoding",
    "content_type",
    "mode",
    "extract",
    "uri",
    "sha256",
];

/// The kinds of resource, each named by the one key that sets it apart.
#[derive(Debug, Clone, Copy, PartialEq)]
enum ResourceKind {
    Data,
    Uri,
    Tmpfs,
    Bind,
}

impl ResourceKind {
    const ALL: [(&'static str, ResourceKind); 4] = [
        ("data", ResourceKind::Data),
        ("uri", ResourceKind::Uri),
        ("tmpfs", ResourceKind::Tmpfs),
        ("bind", ResourceKind::Bind),
    ];

    /// The kind of the resource `obj`: it must have exactly one of the four keys.
    fn of(obj: &Map<String, Value>, prefix: &str) -> Result<Self, ApiError> {
        let mut kinds = ResourceKind::ALL
            .into_iter()
            .filter(|(key, _)| obj.contains_key(*key));
        match (kinds.next(), kinds.next()) {
            (Some((_, kind)), None) => Ok(kind),
            _ => Err(bad(
                Code::InvalidResource,
                prefix,
                "a resource must have exactly one of `data`, `uri`, `tmpfs` or `bind`",
            )),
        }
    }
}

/// `resource_list[i]`: an object of one [`ResourceKind`] with a checked `dest`.
fn parse_resource(
    item: &Value,
    i: usize,
    pwd: Option<&str>,
    policy: &Policy,
) -> Result<Resource, ApiError> {
    let prefix = format!("resource_list[{i}]");
    let obj = match item {
        Value::Object(o) => o,
        other => return Err(wrong_type(&prefix, "an object", other)),
    };
    let kind = ResourceKind::of(obj, &prefix)?;
    let field = format!("{prefix}.dest");
    let dest = get_str(obj, "dest", &field)?
        .ok_or_else(|| bad(Code::MissingField, &field, "a resource needs a `dest`"))?;
    check_dest(dest, pwd, &field)?;
    let dest = dest.to_string();
    match kind {
        ResourceKind::Tmpfs => parse_tmpfs(obj, dest, pwd, policy, &prefix),
        ResourceKind::Bind => parse_bind(obj, dest, policy, &prefix),
        ResourceKind::Data | ResourceKind::Uri => parse_file(obj, kind, dest, pwd, policy, &prefix),
    }
}

/// Whether `dest` (relative to `pwd`) is the root itself.
fn is_root(pwd: Option<&str>, dest: &str) -> bool {
    resolve_dest(pwd.unwrap_or("/"), dest).as_deref() == Some("/")
}

/// A tmpfs resource: `tmpfs: true`, an optional `size` (up to the policy's cap) and `mode`;
/// never on `/`.
fn parse_tmpfs(
    obj: &Map<String, Value>,
    dest: String,
    pwd: Option<&str>,
    policy: &Policy,
    prefix: &str,
) -> Result<Resource, ApiError> {
    let f = |name: &str| format!("{prefix}.{name}");
    check_unknown(obj, &["dest", "tmpfs", "size", "mode"], prefix)?;
    if get_bool(obj, "tmpfs", &f("tmpfs"))? != Some(true) {
        return Err(bad(Code::InvalidValue, &f("tmpfs"), "`tmpfs` must be true"));
    }
    let size = get_positive_int(obj, "size", &f("size"), u64::MAX)?;
    if let Some(s) = size {
        if s > policy.max_tmpfs_bytes {
            return Err(ApiError::new(
                Code::PayloadTooLarge,
                format!(
                    "tmpfs size may be at most {} bytes on this server",
                    policy.max_tmpfs_bytes
                ),
            )
            .with_field(f("size")));
        }
    }
    let mode = parse_mode(obj, &f("mode"))?;
    if is_root(pwd, &dest) {
        return Err(bad(
            Code::InvalidDest,
            &f("dest"),
            "a tmpfs cannot be mounted on /",
        ));
    }
    Ok(Resource::Tmpfs { dest, size, mode })
}

/// A bind resource: a host path under the policy's allow-list and clear of the engine's
/// paths ([`ENGINE_PATHS`]), read-only unless `readonly: false`.
fn parse_bind(
    obj: &Map<String, Value>,
    dest: String,
    policy: &Policy,
    prefix: &str,
) -> Result<Resource, ApiError> {
    let f = |name: &str| format!("{prefix}.{name}");
    check_unknown(obj, &["dest", "bind", "readonly"], prefix)?;
    let host = get_str(obj, "bind", &f("bind"))?.unwrap_or_default();
    no_nul(host, &f("bind"))?;
    let readonly = get_bool(obj, "readonly", &f("readonly"))?.unwrap_or(true);
    let host_norm = if host.starts_with('/') {
        resolve_dest("/", host)
    } else {
        None
    };
    let allowed = host_norm.as_ref().is_some_and(|h| {
        policy
            .bind_allow
            .iter()
            .any(|a| std::path::Path::new(h).starts_with(a))
    });
    let exposes_engine = host_norm.as_ref().is_some_and(|h| {
        ENGINE_PATHS.iter().any(|p| {
            std::path::Path::new(p).starts_with(h) || std::path::Path::new(h).starts_with(p)
        })
    });
    if exposes_engine {
        return Err(ApiError::new(
            Code::BindNotAllowed,
            format!("host path `{host}` would expose the container engine; it is never mounted"),
        )
        .with_field(f("bind")));
    }
    if !allowed {
        return Err(ApiError::new(
            Code::BindNotAllowed,
            format!("host path `{host}` is not on this server's bind allow-list"),
        )
        .with_field(f("bind")));
    }
    Ok(Resource::Bind {
        dest,
        host: host_norm.unwrap_or_default(),
        readonly,
    })
}

/// A file resource (`data` or `uri`, by `kind`): its `mode`, `extract` and source; a file
/// that is not extracted cannot be written at `/`.
fn parse_file(
    obj: &Map<String, Value>,
    kind: ResourceKind,
    dest: String,
    pwd: Option<&str>,
    policy: &Policy,
    prefix: &str,
) -> Result<Resource, ApiError> {
    let f = |name: &str| format!("{prefix}.{name}");
    check_unknown(obj, FILE_FIELDS, prefix)?;
    let mode = parse_mode(obj, &f("mode"))?;
    let extract = get_bool(obj, "extract", &f("extract"))?.unwrap_or(false);
    get_str(obj, "content_type", &f("content_type"))?;
    let source = if kind == ResourceKind::Uri {
        parse_uri_source(obj, policy, prefix)?
    } else {
        parse_inline_source(obj, prefix)?
    };
    if !extract && is_root(pwd, &dest) {
        return Err(bad(
            Code::InvalidDest,
            &f("dest"),
            "a file cannot be written at /",
        ));
    }
    Ok(Resource::File {
        dest,
        source,
        mode,
        extract,
    })
}

/// A `uri` source: an http or https URL whose host the fetch guard allows, with an optional
/// `sha256` (kept in lower case); no `encoding`.
fn parse_uri_source(
    obj: &Map<String, Value>,
    policy: &Policy,
    prefix: &str,
) -> Result<Source, ApiError> {
    let f = |name: &str| format!("{prefix}.{name}");
    if obj.contains_key("encoding") {
        return Err(bad(
            Code::UnknownField,
            &f("encoding"),
            "`encoding` goes with `data`, not `uri`",
        ));
    }
    let uri = get_str(obj, "uri", &f("uri"))?.unwrap_or_default();
    let parsed = reqwest::Url::parse(uri).map_err(|e| {
        bad(
            Code::InvalidUri,
            &f("uri"),
            format!("`uri` is not a URL: {e}"),
        )
    })?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(bad(
            Code::InvalidUri,
            &f("uri"),
            "`uri` must be an http or https URL with a host",
        ));
    }
    if let Err(why) = policy
        .fetch_guard
        .check_host(parsed.host_str().unwrap_or_default())
    {
        return Err(ApiError::new(
            Code::UriNotAllowed,
            format!(
                "`uri` may not be fetched: {why} (the operator can allow it with --allow-fetch)"
            ),
        )
        .with_field(f("uri")));
    }
    let sha256 = match get_str(obj, "sha256", &f("sha256"))? {
        None => None,
        Some(h) => {
            if h.len() != 64 || !h.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(bad(
                    Code::InvalidValue,
                    &f("sha256"),
                    "`sha256` must be 64 hex digits",
                ));
            }
            Some(h.to_ascii_lowercase())
        }
    };
    Ok(Source::Uri {
        uri: uri.to_string(),
        sha256,
    })
}

/// A `data` source: text, or base64 (whitespace ignored) with `encoding: "base64"`; no
/// `sha256`.
fn parse_inline_source(obj: &Map<String, Value>, prefix: &str) -> Result<Source, ApiError> {
    let f = |name: &str| format!("{prefix}.{name}");
    if obj.contains_key("sha256") {
        return Err(bad(
            Code::UnknownField,
            &f("sha256"),
            "`sha256` goes with `uri`, not `data`",
        ));
    }
    let data = get_str(obj, "data", &f("data"))?.unwrap_or_default();
    match get_str(obj, "encoding", &f("encoding"))? {
        None | Some("text") | Some("utf-8") | Some("utf8") => {
            Ok(Source::Inline(data.as_bytes().to_vec()))
        }
        Some("base64") => {
            let cleaned: String = data.chars().filter(|c| !c.is_ascii_whitespace()).collect();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(cleaned.as_bytes())
                .map_err(|e| {
                    bad(
                        Code::InvalidBase64,
                        &f("data"),
                        format!("`data` is not valid base64: {e}"),
                    )
                })?;
            Ok(Source::Inline(bytes))
        }
        Some(other) => Err(bad(
            Code::InvalidValue,
            &f("encoding"),
            format!("`encoding` must be \"base64\" or \"text\", not \"{other}\""),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok(v: Value) -> TaskSpec {
        match parse(v, &Policy::default(), ParseContext::default()) {
            Ok(s) => s,
            Err(e) => panic!("expected ok, got {e:?}"),
        }
    }

    fn err(v: Value) -> ApiError {
        match parse(v, &Policy::default(), ParseContext::default()) {
            Ok(s) => panic!("expected an error, got {s:?}"),
            Err(e) => e,
        }
    }

    fn base() -> Value {
        json!({"task_name": "t", "image": "ufaas/busybox:latest", "cmd_list": ["echo", "hi"]})
    }

    fn with(key: &str, v: Value) -> Value {
        let mut b = base();
        b[key] = v;
        b
    }

    #[test]
    fn minimal_spec_parses_with_defaults() {
        let s = ok(base());
        assert_eq!(s.task_name, "t");
        assert_eq!(s.cmd_list, vec!["echo", "hi"]);
        assert_eq!(s.priority, 0);
        assert!(!s.is_daemon && !s.network && s.rm.is_none());
    }

    #[test]
    fn spaces_in_name_become_underscores() {
        assert_eq!(ok(with("task_name", json!("my task"))).task_name, "my_task");
        let e = err(with("task_name", json!("")));
        assert_eq!(e.field.as_deref(), Some("task_name"));
        let e = err(with("task_name", json!("x".repeat(128))));
        assert_eq!(e.field.as_deref(), Some("task_name"));
        ok(with("task_name", json!("x".repeat(127))));
    }

    #[test]
    fn unknown_fields_are_named() {
        let e = err(with("colour", json!("red")));
        assert_eq!(
            (e.code.as_str(), e.field.as_deref()),
            ("unknown_field", Some("colour"))
        );
        let e = err(with("limits", json!({"gpus": 1})));
        assert_eq!(e.field.as_deref(), Some("limits.gpus"));
        let e = err(with(
            "resource_list",
            json!([{"dest": "a", "data": "x", "owner": "me"}]),
        ));
        assert_eq!(e.field.as_deref(), Some("resource_list[0].owner"));
    }

    #[test]
    fn image_references() {
        for good in [
            "busybox",
            "ufaas/python:3",
            "localhost:5000/a/b:tag",
            "registry.example.com/x/y_z__w-v:1.2.3",
            "alpine@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            assert!(valid_image_ref(good), "{good}");
        }
        for badref in [
            "",
            "Busybox",
            "a!b",
            "a//b",
            "a:",
            "-a",
            "a:-x",
            "a b",
            &"a".repeat(256),
        ] {
            assert!(!valid_image_ref(badref), "{badref}");
        }
        assert_eq!(
            err(with("image", json!("BAD!"))).field.as_deref(),
            Some("image")
        );
    }

    #[test]
    fn cmd_list_rules() {
        assert_eq!(
            err(with("cmd_list", json!([]))).field.as_deref(),
            Some("cmd_list")
        );
        assert_eq!(err(with("cmd_list", json!("echo hi"))).code, "invalid_type");
        assert_eq!(
            err(with("cmd_list", json!(["echo", 3]))).field.as_deref(),
            Some("cmd_list[1]")
        );
        let mut missing = base();
        missing.as_object_mut().map(|o| o.remove("cmd_list"));
        assert_eq!(err(missing).code, "missing_field");
    }

    #[test]
    fn env_values_become_strings_and_names_are_checked() {
        let s = ok(with("env", json!({"A": "x", "N": 3, "B": true})));
        assert_eq!(s.env.get("N").map(String::as_str), Some("3"));
        assert_eq!(s.env.get("B").map(String::as_str), Some("true"));
        assert_eq!(
            err(with("env", json!({"1A": "x"}))).field.as_deref(),
            Some("env.1A")
        );
        assert_eq!(
            err(with("env", json!({"A": {"x": 1}}))).field.as_deref(),
            Some("env.A")
        );
        assert_eq!(err(with("env", json!(["A"]))).field.as_deref(), Some("env"));
    }

    #[test]
    fn dest_rules() {
        for (dest, pwd) in [
            ("", None),
            ("../x", None),
            ("a/../../b", None),
            ("/proc/x", None),
            ("/dev", None),
            ("self/status", Some("/proc")),
            ("a\0b", None),
        ] {
            let mut v = with("resource_list", json!([{"dest": dest, "data": "x"}]));
            if let Some(p) = pwd {
                v["pwd"] = json!(p);
            }
            let e = err(v);
            assert_eq!(
                e.field.as_deref(),
                Some("resource_list[0].dest"),
                "{dest:?}"
            );
        }
        ok(with(
            "resource_list",
            json!([{"dest": "/work/a.txt", "data": "x"}]),
        ));
        ok(with(
            "resource_list",
            json!([{"dest": "/processing/a", "data": "x"}]),
        ));
    }

    #[test]
    fn resource_kinds() {
        let s = ok(with(
            "resource_list",
            json!([
                {"dest": "a.py", "data": "print(1)", "content_type": "text/plain", "mode": "0644"},
                {"dest": "b.bin", "data": "AAEC", "encoding": "base64", "mode": "0755"},
                {"dest": "in/d.csv", "uri": "https://example.com/d.csv", "sha256": "A".repeat(64)},
                {"dest": "/scratch", "tmpfs": true, "size": 16777216, "mode": "1777"},
                {"dest": "arch", "data": "AAEC", "encoding": "base64", "extract": true}
            ]),
        ));
        assert_eq!(s.resource_list.len(), 5);
        assert!(
            matches!(&s.resource_list[1], Resource::File { source: Source::Inline(b), mode: Some(0o755), .. } if b == &[0u8, 1, 2])
        );
        assert!(
            matches!(&s.resource_list[2], Resource::File { source: Source::Uri { sha256: Some(h), .. }, .. } if h == &"a".repeat(64))
        );
        assert!(matches!(
            &s.resource_list[3],
            Resource::Tmpfs {
                mode: Some(0o1777),
                ..
            }
        ));
    }

    #[test]
    fn bad_resources_name_their_field() {
        let cases = [
            (
                json!({"dest": "a", "data": "!!", "encoding": "base64"}),
                "resource_list[0].data",
                400,
            ),
            (
                json!({"dest": "a", "data": "x", "encoding": "rot13"}),
                "resource_list[0].encoding",
                400,
            ),
            (
                json!({"dest": "a", "uri": "file:///etc/passwd"}),
                "resource_list[0].uri",
                400,
            ),
            (
                json!({"dest": "a", "uri": "ftp://h/x"}),
                "resource_list[0].uri",
                400,
            ),
            (
                json!({"dest": "a", "uri": "https://h/x", "sha256": "abc"}),
                "resource_list[0].sha256",
                400,
            ),
            (
                json!({"dest": "a", "data": "x", "uri": "https://h/x"}),
                "resource_list[0]",
                400,
            ),
            (json!({"dest": "a"}), "resource_list[0]", 400),
            (json!({"data": "x"}), "resource_list[0].dest", 400),
            (
                json!({"dest": "a", "data": "x", "mode": "999"}),
                "resource_list[0].mode",
                400,
            ),
            (
                json!({"dest": "a", "data": "x", "mode": 644}),
                "resource_list[0].mode",
                400,
            ),
            (
                json!({"dest": "/s", "tmpfs": false}),
                "resource_list[0].tmpfs",
                400,
            ),
            (
                json!({"dest": "/s", "tmpfs": true, "size": 1u64 << 40}),
                "resource_list[0].size",
                413,
            ),
            (
                json!({"dest": "/d", "bind": "/srv/data"}),
                "resource_list[0].bind",
                403,
            ),
            (json!("text"), "resource_list[0]", 400),
        ];
        for (res, field, status) in cases {
            let e = err(with("resource_list", json!([res])));
            assert_eq!(
                (e.field.as_deref(), e.status()),
                (Some(field), status),
                "{res}"
            );
        }
        let many: Vec<Value> = (0..257)
            .map(|i| json!({"dest": format!("f{i}"), "data": ""}))
            .collect();
        assert_eq!(
            err(with("resource_list", json!(many))).code,
            "too_many_resources"
        );
    }

    #[test]
    fn inline_size_is_capped_with_413() {
        let policy = Policy {
            max_inline_bytes: 10,
            ..Policy::default()
        };
        let v = with(
            "resource_list",
            json!([{"dest": "a", "data": "0123456789abc"}]),
        );
        let e = parse(v, &policy, ParseContext::default()).err();
        assert_eq!(e.map(|e| e.status()), Some(413));
    }

    #[test]
    fn uri_hosts_on_the_machine_or_private_networks_are_refused() {
        for uri in [
            "http://localhost/x",
            "http://127.0.0.1:8080/x",
            "http://169.254.169.254/latest/meta-data/",
            "http://10.0.0.1/",
            "http://192.168.1.1/",
            "http://172.16.5.5/",
            "http://[::1]/",
            "http://0.0.0.0/",
        ] {
            let e = err(with("resource_list", json!([{"dest": "a", "uri": uri}])));
            assert_eq!(
                (e.status(), e.code.as_str(), e.field.as_deref()),
                (403, "uri_not_allowed", Some("resource_list[0].uri")),
                "{uri}"
            );
        }
        let guard =
            crate::netguard::FetchGuard::new(&["127.0.0.1".to_string()]).unwrap_or_default();
        let policy = Policy {
            fetch_guard: std::sync::Arc::new(guard),
            ..Policy::default()
        };
        let v = with(
            "resource_list",
            json!([{"dest": "a", "uri": "http://127.0.0.1:9/x"}]),
        );
        assert!(parse(v, &policy, ParseContext::default()).is_ok());
    }

    #[test]
    fn the_engine_socket_is_never_mounted() {
        let policy = Policy {
            bind_allow: vec![PathBuf::from("/")],
            ..Policy::default()
        };
        for host in [
            "/var/run/docker.sock",
            "/var/run",
            "/",
            "/run",
            "/var/lib/docker/volumes",
        ] {
            let v = with("resource_list", json!([{"dest": "/d", "bind": host}]));
            let e = parse(v, &policy, ParseContext::default()).err();
            assert_eq!(
                e.map(|e| (e.status(), e.code)),
                Some((403, Code::BindNotAllowed)),
                "{host}"
            );
        }
        let v = with("resource_list", json!([{"dest": "/d", "bind": "/srv"}]));
        assert!(parse(v, &policy, ParseContext::default()).is_ok());
    }

    #[test]
    fn bind_allowed_only_under_allow_list() {
        let policy = Policy {
            bind_allow: vec![PathBuf::from("/srv/data")],
            ..Policy::default()
        };
        let v = with(
            "resource_list",
            json!([{"dest": "/d", "bind": "/srv/data/x"}]),
        );
        assert!(parse(v, &policy, ParseContext::default()).is_ok());
        let v = with(
            "resource_list",
            json!([{"dest": "/d", "bind": "/srv/database"}]),
        );
        assert_eq!(
            parse(v, &policy, ParseContext::default())
                .err()
                .map(|e| e.status()),
            Some(403)
        );
        let v = with(
            "resource_list",
            json!([{"dest": "/d", "bind": "/srv/data/../../etc"}]),
        );
        assert_eq!(
            parse(v, &policy, ParseContext::default())
                .err()
                .map(|e| e.status()),
            Some(403)
        );
    }

    #[test]
    fn numbers_and_limits() {
        assert_eq!(err(with("ttl", json!(0))).field.as_deref(), Some("ttl"));
        assert_eq!(err(with("ttl", json!(0))).code, "invalid_value");
        assert_eq!(err(with("ttl", json!(-5))).code, "invalid_value");
        assert_eq!(
            err(with("priority", json!(2_000_000_000))).code,
            "invalid_value"
        );
        assert_eq!(
            err(with("timeout", json!(-1))).field.as_deref(),
            Some("timeout")
        );
        assert_eq!(
            err(with("timeout", json!(1.5))).field.as_deref(),
            Some("timeout")
        );
        assert_eq!(err(with("timeout", json!("10"))).code, "invalid_type");
        assert_eq!(
            err(with("priority", json!("high"))).field.as_deref(),
            Some("priority")
        );
        assert_eq!(
            err(with("limits", json!({"memory_mb": 999999}))).code,
            "limit_exceeded"
        );
        assert_eq!(
            err(with("limits", json!({"cpus": 64}))).field.as_deref(),
            Some("limits.cpus")
        );
        assert_eq!(
            err(with("limits", json!({"pids": 0}))).field.as_deref(),
            Some("limits.pids")
        );
        assert_eq!(
            err(with("is_daemon", json!("yes"))).field.as_deref(),
            Some("is_daemon")
        );
        assert_eq!(err(with("rm", json!(1))).field.as_deref(), Some("rm"));
        assert_eq!(err(with("stdin", json!(5))).field.as_deref(), Some("stdin"));
        assert_eq!(
            err(with("pwd", json!("rel/dir"))).field.as_deref(),
            Some("pwd")
        );
        let e = err(with("network", json!(true)));
        assert_eq!((e.status(), e.code.as_str()), (403, "network_not_allowed"));
        let s = ok(with(
            "limits",
            json!({"memory_mb": 128, "cpus": 0.5, "pids": 64}),
        ));
        assert_eq!(
            s.limits,
            Limits {
                memory_mb: Some(128),
                cpus: Some(0.5),
                pids: Some(64)
            }
        );
    }

    #[test]
    fn not_an_object() {
        assert_eq!(err(json!([1, 2])).code, "invalid_type");
    }

    #[test]
    fn reuse_image_may_be_left_out_but_must_match() {
        let ctx = ParseContext {
            reuse_image: Some("ufaas/python:3"),
        };
        let mut v = base();
        v.as_object_mut().map(|o| o.remove("image"));
        let s = parse(v, &Policy::default(), ctx).ok().map(|s| s.image);
        assert_eq!(s.as_deref(), Some("ufaas/python:3"));
        let e = parse(base(), &Policy::default(), ctx).err();
        assert_eq!(e.map(|e| e.code), Some(Code::ImageMismatch));
        let v = with("resource_list", json!([{"dest": "/s", "tmpfs": true}]));
        let mut v = v;
        v.as_object_mut().map(|o| o.remove("image"));
        assert_eq!(
            parse(v, &Policy::default(), ctx).err().map(|e| e.code),
            Some(Code::MountOnReuse)
        );
    }

    #[test]
    fn merge_patch_follows_rfc7386() {
        let mut target = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut target, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(target, json!({"a": "z", "c": {"d": "e"}}));
        let mut t = json!({"a": [1, 2]});
        merge_patch(&mut t, &json!({"a": [3]}));
        assert_eq!(t, json!({"a": [3]}));
    }

    #[test]
    fn resolve_dest_joins_and_refuses_climbing() {
        assert_eq!(resolve_dest("/work", "a/./b").as_deref(), Some("/work/a/b"));
        assert_eq!(resolve_dest("/work", "/abs//x").as_deref(), Some("/abs/x"));
        assert_eq!(resolve_dest("/", "a").as_deref(), Some("/a"));
        assert_eq!(resolve_dest("/work", "../x"), None);
    }

    /// Found by `fuzz/fuzz_targets/spec_parse.rs`: the spec is stored as text and parsed again
    /// when the task starts. An `env` number too large for an integer was read (without
    /// serde_json's `float_roundtrip`) to a float whose printed text read back to another
    /// float, so the task ran with `-8.88888888888889e+83` after `-8.888888888888891e+83` was
    /// accepted. Fixed by that feature in Cargo.toml.
    #[test]
    fn fuzz_env_number_is_the_same_after_the_stored_text_is_parsed_again() {
        let input = r#"{"task_name":"all fbabaababab","cmd_list":["sh","-c","in.txt"],"pwd":"/work","env":{"A":"1","Nmb":-888888888888888888888888888888888888888888888888888888888888888888888888888888888884,"cpus":0.5,"pids":32},"network":false}"#;
        let ctx = ParseContext {
            reuse_image: Some("ufaas/busybox:latest"),
        };
        let first = parse(
            serde_json::from_str(input).unwrap_or_default(),
            &Policy::default(),
            ctx,
        );
        let first = match first {
            Ok(s) => s,
            Err(e) => panic!("expected ok, got {e:?}"),
        };
        let text = serde_json::to_string(&first.raw).unwrap_or_default();
        let stored = parse(
            serde_json::from_str(&text).unwrap_or_default(),
            &Policy::default(),
            ctx,
        );
        assert_eq!(stored.ok(), Some(first));
    }
}
