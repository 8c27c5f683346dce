mod common;

// The example functions in `tasks/functions/` deploy and answer exactly what their
// `expected.*` says, against a real server and real runtimes. Each is deployed from its
// directory as a user would: `ufaas.json` is the body of `PUT /functions/{ns}/{name}` without
// the code (its `name` says where), the only file a single-file function holds is sent as
// `code`, and a function of several files goes as a base64 tar.gz `archive` of its directory.
// `input.*` and `expected.*` are the example's fixtures, not the function's code. Every
// directory there must be covered here.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde_json::{Map, Value};

use common::Server;

/// The namespace every example is deployed into.
const NAMESPACE: &str = "examples";

/// Secrets an example's `secrets` may name, with the value the test sets (as a user would
/// with `PUT /secrets/{name}`) before deploying it.
const SECRETS: &[(&str, &str)] = &[("greeting", "hello from the vault")];

/// The directory of the pipeline example (no function of its own).
const PIPELINE: &str = "pipeline";

fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tasks/functions")
}

/// An example's input or expected answer: `NAME.json` (sent and compared as JSON) or
/// `NAME.txt` (bytes).
#[derive(Debug, Clone)]
enum Fixture {
    Json(Vec<u8>, Value),
    Text(Vec<u8>),
}

impl Fixture {
    /// `dir/{stem}.json` or `dir/{stem}.txt`: exactly one of the two must be there.
    fn load(dir: &Path, stem: &str) -> Fixture {
        let json = dir.join(format!("{stem}.json"));
        let txt = dir.join(format!("{stem}.txt"));
        match (json.is_file(), txt.is_file()) {
            (true, false) => {
                let bytes = read(&json);
                let v = serde_json::from_slice(&bytes)
                    .unwrap_or_else(|e| panic!("{} is not JSON: {e}", json.display()));
                Fixture::Json(bytes, v)
            }
            (false, true) => Fixture::Text(read(&txt)),
            _ => panic!(
                "{} must hold exactly one of {stem}.json and {stem}.txt",
                dir.display()
            ),
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Fixture::Json(b, _) | Fixture::Text(b) => b,
        }
    }

    fn content_type(&self) -> &'static str {
        match self {
            Fixture::Json(..) => "application/json",
            Fixture::Text(_) => "text/plain",
        }
    }
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&read(path))
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Whether a top-level file of an example directory is not part of the function: the
/// deploy settings and the example's fixtures.
fn is_fixture(name: &str) -> bool {
    name == "ufaas.json"
        || ["input", "expected"]
            .iter()
            .any(|stem| name == format!("{stem}.json") || name == format!("{stem}.txt"))
}

/// A function example, loaded from its directory.
struct Example {
    /// The directory's name, which is also the function's.
    name: String,
    /// The body of `PUT /functions/examples/{name}`, code included.
    body: Value,
    /// Whether the code went as `archive` (else as `code`).
    archived: bool,
    input: Fixture,
    expected: Fixture,
}

impl Example {
    fn load(name: &str) -> Example {
        let dir = examples_dir().join(name);
        let config_path = dir.join("ufaas.json");
        let Value::Object(mut body) = read_json(&config_path) else {
            panic!("{} is not a JSON object", config_path.display());
        };
        assert_eq!(
            body.remove("name"),
            Some(Value::String(format!("{NAMESPACE}/{name}"))),
            "{}: `name` must be {NAMESPACE}/{name}",
            config_path.display()
        );
        let runtime = body
            .get("runtime")
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("{}: no `runtime`", config_path.display()))
            .to_string();
        let default_file = match runtime.as_str() {
            "python" => "fn.py",
            "node" => "index.js",
            "shell" => "fn.sh",
            other => panic!("{}: unknown runtime {other}", config_path.display()),
        };
        let handler_file = body
            .get("handler")
            .and_then(Value::as_str)
            .map(|h| h.split(':').next().unwrap_or(h).to_string());

        let mut entries = Vec::new();
        walk(&dir, "", &mut entries);
        let single = match entries.as_slice() {
            [(rel, false)]
                if rel == default_file
                    && handler_file.as_deref().is_none_or(|f| f == default_file) =>
            {
                String::from_utf8(read(&dir.join(rel))).ok()
            }
            _ => None,
        };
        let archived = single.is_none();
        match single {
            Some(text) => body.insert("code".into(), Value::String(text)),
            None => body.insert(
                "archive".into(),
                Value::String(
                    base64::engine::general_purpose::STANDARD.encode(targz(&dir, &entries)),
                ),
            ),
        };
        Example {
            name: name.to_string(),
            body: Value::Object(body),
            archived,
            input: Fixture::load(&dir, "input"),
            expected: Fixture::load(&dir, "expected"),
        }
    }

    fn path(&self) -> String {
        format!("{NAMESPACE}/{}", self.name)
    }

    /// The secrets its `secrets` names, with their values from [`SECRETS`].
    fn secrets(&self) -> Vec<(&'static str, &'static str)> {
        let names = self.body["secrets"].as_array().cloned().unwrap_or_default();
        names
            .iter()
            .map(|n| {
                let n = n.as_str().expect("a secret name is a string");
                *SECRETS
                    .iter()
                    .find(|(k, _)| *k == n)
                    .unwrap_or_else(|| panic!("{}: no value in SECRETS for `{n}`", self.name))
            })
            .collect()
    }
}

/// Every entry below `dir` in path order, as (path relative to the example, is a directory),
/// the fixtures at the top left out.
fn walk(dir: &Path, prefix: &str, out: &mut Vec<(String, bool)>) {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .into_string()
                .expect("UTF-8 name")
        })
        .collect();
    names.sort();
    for name in names {
        if name == ".git" || (prefix.is_empty() && is_fixture(&name)) {
            continue;
        }
        let path = dir.join(&name);
        let rel = format!("{prefix}{name}");
        let ft = std::fs::symlink_metadata(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
            .file_type();
        if ft.is_dir() {
            out.push((rel.clone(), true));
            walk(&path, &format!("{rel}/"), out);
        } else if ft.is_file() {
            out.push((rel, false));
        } else {
            panic!("{} is neither a file nor a directory", path.display());
        }
    }
}

/// A tar.gz of `entries` of `dir`, paths relative to it.
fn targz(dir: &Path, entries: &[(String, bool)]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Deterministic);
    for (rel, is_dir) in entries {
        let path = dir.join(rel);
        if *is_dir {
            tar.append_dir(rel, &path)
        } else {
            tar.append_path_with_name(&path, rel)
        }
        .unwrap_or_else(|e| panic!("packing {}: {e}", path.display()));
    }
    let mut gz = tar.into_inner().expect("tar");
    gz.flush().expect("gzip");
    gz.finish().expect("gzip")
}

/// A raw answer: status, headers, body bytes.
struct Raw {
    status: u16,
    headers: reqwest::header::HeaderMap,
    bytes: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

async fn raw(req: reqwest::RequestBuilder) -> Raw {
    let resp = req.send().await.expect("request");
    Raw {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        bytes: resp.bytes().await.expect("answer body").to_vec(),
    }
}

/// Sets the example's secrets, then deploys it and checks the answer.
async fn deploy(s: &Server, ex: &Example) {
    for (name, value) in ex.secrets() {
        let r = raw(s.http.put(s.url(&format!("/secrets/{name}"))).body(value)).await;
        assert_eq!(
            r.status,
            204,
            "{}: setting secret {name}: {}",
            ex.name,
            r.text()
        );
    }
    let r = s.put(&format!("/functions/{}", ex.path()), &ex.body).await;
    assert_eq!(r.status, 201, "{}: deploy answered {}", ex.name, r.body);
    assert_eq!(r.body["version"], 1, "{}: {}", ex.name, r.body);
    assert_eq!(
        r.body["runtime"], ex.body["runtime"],
        "{}: {}",
        ex.name, r.body
    );
}

/// Asserts that an answer is `expected` (JSON as JSON, text byte for byte), with the
/// matching content type.
#[track_caller]
fn assert_answer(what: &str, a: &Raw, expected: &Fixture) {
    assert_eq!(a.status, 200, "{what}: answered {}", a.text());
    match expected {
        Fixture::Json(_, v) => {
            let got: Value = serde_json::from_slice(&a.bytes)
                .unwrap_or_else(|e| panic!("{what}: the answer is not JSON ({e}): {}", a.text()));
            assert_eq!(&got, v, "{what}: answer");
            assert_eq!(a.header("content-type"), "application/json", "{what}");
        }
        Fixture::Text(b) => {
            assert_eq!(a.text(), String::from_utf8_lossy(b), "{what}: answer");
            assert_eq!(&a.bytes, b, "{what}: answer bytes");
            assert!(
                a.header("content-type").starts_with("text/plain"),
                "{what}: content type {}",
                a.header("content-type")
            );
        }
    }
}

/// The record of the task `id`, which must have ended `FINISHED` as a call of `ex` that
/// answered `answer`.
async fn assert_record(s: &Server, ex: &Example, id: &str, answer: &Raw) -> Value {
    let r = s.get(&format!("/fn/{id}")).await;
    assert_eq!(r.status, 200, "{}: GET /fn/{id}: {}", ex.name, r.body);
    let t = r.body;
    assert_eq!(t["state"], "FINISHED", "{}: {t}", ex.name);
    assert_eq!(t["function"]["namespace"], NAMESPACE, "{}: {t}", ex.name);
    assert_eq!(t["function"]["name"], ex.name.as_str(), "{}: {t}", ex.name);
    assert_eq!(t["function"]["version"], 1, "{}: {t}", ex.name);
    assert_eq!(t["result"]["status"], 200, "{}: {t}", ex.name);
    assert_eq!(
        t["result"]["body"].as_str(),
        Some(answer.text().as_str()),
        "{}: the record's result is the answer: {t}",
        ex.name
    );
    t
}

/// Deploys `ex`, invokes it with its input and checks the answer and the task's record.
async fn check(s: &Server, ex: &Example) {
    deploy(s, ex).await;
    let a = raw(s
        .http
        .post(s.url(&format!("/functions/{}/invoke", ex.path())))
        .header("content-type", ex.input.content_type())
        .body(ex.input.bytes().to_vec()))
    .await;
    assert_answer(&ex.name, &a, &ex.expected);
    let id = a.header("x-ufaas-task-id").to_string();
    assert!(!id.is_empty(), "{}: no X-Ufaas-Task-Id", ex.name);
    let record = assert_record(s, ex, &id, &a).await;
    // A secret reaches the handler, never the answer or the record.
    for (name, value) in ex.secrets() {
        for (what, text) in [("answer", a.text()), ("record", record.to_string())] {
            assert!(
                !text.contains(value),
                "{}: the {what} holds secret {name}: {text}",
                ex.name
            );
        }
    }
}

async fn check_example(name: &str) {
    let ex = Example::load(name);
    let s = Server::start().await;
    check(&s, &ex).await;
    s.stop().await;
}

/// One test per function example, plus `FUNCTIONS`, the directories they cover.
macro_rules! examples {
    ($($test:ident: $dir:literal $(, archived: $archived:literal)?;)*) => {
        const FUNCTIONS: &[&str] = &[$($dir),*];
        $(
            #[tokio::test]
            async fn $test() {
                check_example($dir).await;
            }
        )*

        /// Which examples go as an archive (several files) and which as `code`.
        #[test]
        fn examples_are_packed_as_a_user_would() {
            $(
                let archived = false $(|| $archived)?;
                assert_eq!(
                    Example::load($dir).archived,
                    archived,
                    "{}: archived",
                    $dir
                );
            )*
        }
    };
}

examples! {
    example_sum: "sum";
    example_hello: "hello";
    example_pipeline_x10: "pipeline-x10";
    example_pipeline_x20: "pipeline-x20";
    example_echo: "echo";
    example_event: "event";
    example_shell_echo: "shell-echo";
    example_sieve: "sieve";
    example_vendored: "vendored", archived: true;
    example_secret_reader: "secret-reader";
}

#[tokio::test]
async fn example_pipeline() {
    let dir = examples_dir().join(PIPELINE);
    let body = read(&dir.join("pipeline.json"));
    let spec: Value = serde_json::from_slice(&body).expect("pipeline.json is JSON");
    let expected = Fixture::load(&dir, "expected");
    let steps: Vec<String> = spec["steps"]
        .as_array()
        .expect("pipeline.json: steps")
        .iter()
        .map(|v| v.as_str().expect("a step is ns/name").to_string())
        .collect();
    let examples: Vec<Example> = steps
        .iter()
        .map(|step| {
            let name = step
                .strip_prefix(&format!("{NAMESPACE}/"))
                .unwrap_or_else(|| panic!("pipeline.json: step {step} is not an example"));
            Example::load(name)
        })
        .collect();

    let s = Server::start().await;
    for ex in &examples {
        deploy(&s, ex).await;
    }
    let a = raw(s
        .http
        .post(s.url("/functions/pipeline"))
        .header("content-type", "application/json")
        .body(body))
    .await;
    assert_answer("pipeline", &a, &expected);
    let id = a.header("x-ufaas-task-id").to_string();
    assert!(!id.is_empty(), "pipeline: no X-Ufaas-Task-Id");
    let r = s.get(&format!("/fn/{id}")).await;
    assert_eq!(r.status, 200, "pipeline: GET /fn/{id}: {}", r.body);
    let t = r.body;
    assert_eq!(t["state"], "FINISHED", "pipeline: {t}");
    let step_ids: Vec<String> = t["steps"]
        .as_array()
        .unwrap_or_else(|| panic!("pipeline: no steps in {t}"))
        .iter()
        .map(|v| v.as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(step_ids.len(), examples.len(), "pipeline: steps of {t}");
    for (ex, step_id) in examples.iter().zip(&step_ids) {
        let r = s.get(&format!("/fn/{step_id}")).await;
        let st = r.body;
        assert_eq!(st["state"], "FINISHED", "pipeline step {}: {st}", ex.name);
        assert_eq!(st["function"]["namespace"], NAMESPACE, "{st}");
        assert_eq!(st["function"]["name"], ex.name.as_str(), "{st}");
    }
    s.stop().await;
}

#[test]
fn every_example_is_tested_and_described() {
    let mut on_disk = BTreeSet::new();
    for entry in std::fs::read_dir(examples_dir()).expect("tasks/functions/ exists") {
        let entry = entry.expect("dir entry");
        if entry.file_type().expect("file type").is_dir() {
            on_disk.insert(entry.file_name().into_string().expect("UTF-8 name"));
        }
    }
    let covered: BTreeSet<String> = FUNCTIONS
        .iter()
        .chain(&[PIPELINE])
        .map(|s| s.to_string())
        .collect();
    assert_eq!(
        covered.len(),
        FUNCTIONS.len() + 1,
        "a directory is listed twice"
    );
    assert_eq!(
        on_disk, covered,
        "tasks/functions/*/ and the examples these tests run differ"
    );

    let readme = std::fs::read_to_string(examples_dir().join("README.rst"))
        .expect("tasks/functions/README.rst");
    for name in &on_disk {
        assert!(
            readme.contains(&format!("``{name}``")),
            "tasks/functions/README.rst does not describe {name}"
        );
    }
    for name in FUNCTIONS {
        let ex = Example::load(name);
        let body: &Map<String, Value> = ex.body.as_object().expect("object");
        assert!(
            readme.contains(&format!("{NAMESPACE}/{name}")),
            "tasks/functions/README.rst does not name {NAMESPACE}/{name}"
        );
        assert!(
            body.contains_key("code") != body.contains_key("archive"),
            "{name}: code or archive"
        );
    }
}
