//! tinyFaaS's API (API.md section 6) against a real server and real containers: its own
//! scripts (tests/seeds/tinyfaas/scripts, unchanged) on 127.0.0.1:8080, every example of its
//! test/fns called through the gateway with the assertions of its test_all.py, functions
//! deployed through /upload seen by section 5, the gateway's answers and tokens, and the
//! refusal of every bad input.

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::process::Command;

use base64::Engine as _;
use serde_json::{json, Value};
use tokio::time::Instant;

use common::*;

fn seeds() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/seeds/tinyfaas")
}

/// Runs one of tinyFaaS's scripts as its test_all.py does (from the scripts folder) and
/// returns what it printed; a script that fails fails the test. Asynchronously: the server
/// it talks to runs on this test's runtime.
async fn script(name: &str, args: &[&str]) -> String {
    let out = Command::new(format!("./{name}"))
        .args(args)
        .current_dir(seeds().join("scripts"))
        .output()
        .await
        .unwrap_or_else(|e| panic!("running {name}: {e}"));
    assert!(
        out.status.success(),
        "{name} {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A zip of the files under `dir`, each named `prefix` + its path relative to `dir`.
fn zip_dir(dir: &Path, prefix: &str) -> Vec<u8> {
    fn walk(dir: &Path, rel: &str, out: &mut Vec<(String, Vec<u8>)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .filter_map(Result::ok)
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = format!("{rel}{}", e.file_name().to_string_lossy());
            if e.path().is_dir() {
                out.push((format!("{name}/"), Vec::new()));
                walk(&e.path(), &format!("{name}/"), out);
            } else {
                let data = std::fs::read(e.path()).unwrap_or_else(|e| panic!("{e}"));
                out.push((name, data));
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, prefix, &mut files);
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    zip_of(&refs)
}

fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .unix_permissions(0o755);
    for (name, data) in entries {
        if name.ends_with('/') {
            z.add_directory(*name, opts).expect("zip dir");
        } else {
            z.start_file(*name, opts).expect("zip file");
            z.write_all(data).expect("zip write");
        }
    }
    z.finish().expect("zip").into_inner()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A user agent of our own, to find in what the show-headers functions saw.
const UA: &str = "compat-tinyfaas-test/1.0";

/// Serves `body` to every GET on 127.0.0.1, port 0, until the returned sender is dropped.
async fn serve_bytes(body: Vec<u8>) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    use warp::Filter as _;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let route = warp::get().map(move || body.clone());
    tokio::spawn(
        warp::serve(route)
            .incoming(listener)
            .graceful(async move {
                let _ = rx.await;
            })
            .run(),
    );
    (addr, tx)
}

/// Polls `check` until it holds, for up to `secs`.
async fn eventually<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// tinyFaaS's scripts, unchanged, against ufaas on 127.0.0.1:8080 (they call that address
/// fixed, so this is the one test that binds it), and every example of its test/fns called
/// through the gateway as test_all.py calls them.
#[tokio::test]
async fn tinyfaas_scripts_and_examples_run_unchanged() {
    let s = Server::start_with_doors(
        Doors {
            http: Some(([127, 0, 0, 1], 8080).into()),
            gateway: true,
            ..Doors::default()
        },
        // uploadURL.sh fetches from a local server: the fetch guard lets loopback through
        // only when told to.
        |cfg| cfg.allow_fetch = vec!["127.0.0.0/8".into()],
    )
    .await;
    let gw = s.gateway.expect("gateway");
    let fns = seeds().join("test/fns");
    let fns = fns.to_str().expect("utf-8 path");
    // test_all.py's functions: folder, name, env.
    let examples = [
        ("sieve-of-eratosthenes", "sieve", "nodejs"),
        ("echo", "echo", "python3"),
        ("echo-js", "echojs", "nodejs"),
        ("echo-binary", "echobinary", "binary"),
        ("show-headers-js", "headersjs", "nodejs"),
        ("show-headers", "headers", "python3"),
    ];
    for (folder, name, env) in examples {
        let out = script("upload.sh", &[&format!("{fns}/{folder}"), name, env, "1"]).await;
        assert!(
            out.lines().any(|l| l == format!("http://{gw}/{name}")),
            "upload.sh of {name} printed {out:?}"
        );
    }
    let http = reqwest::Client::builder()
        .user_agent(UA)
        .build()
        .expect("client");
    let call = |name: &str| http.post(format!("http://{gw}/{name}"));

    // TestSieve: GET answers 200; with X-tinyFaaS-Async, 202.
    let r = raw(http.get(format!("http://{gw}/sieve"))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.text, "Found 1229 primes under 10000\n");
    let r = raw(http
        .get(format!("http://{gw}/sieve"))
        .header("X-tinyFaaS-Async", "true"))
    .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let async_id = r.header("x-ufaas-task-id").to_string();
    assert_eq!(s.wait_ended(&async_id).await["state"], "FINISHED");

    // TestEcho, TestEchoJS, TestBinary: the payload comes back as it is.
    for name in ["echo", "echojs", "echobinary"] {
        let r = raw(call(name).body("Hello World!")).await;
        assert_eq!((r.status, r.text.as_str()), (200, "Hello World!"), "{name}");
    }

    // TestShowHeadersJS: node sees lower-case names.
    let r = raw(call("headersjs").header("lab", "scalable_software_systems_group")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let h = r.json();
    assert_eq!(h["lab"], "scalable_software_systems_group", "{h}");
    assert!(
        h["user-agent"].as_str().is_some_and(|ua| ua.contains(UA)),
        "{h}"
    );

    // TestShowHeaders: python's fn(input, headers) sees them as Go writes them.
    let r = raw(call("headers").header("Lab", "scalable_software_systems_group")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let h = r.json();
    assert_eq!(h["Lab"], "scalable_software_systems_group", "{h}");
    assert!(
        h["User-Agent"].as_str().is_some_and(|ua| ua.contains(UA)),
        "{h}"
    );
    assert!(h.get("lab").is_none(), "{h}");

    // list.sh: one name a line.
    let mut listed: Vec<String> = script("list.sh", &[])
        .await
        .lines()
        .map(str::to_string)
        .collect();
    listed.sort();
    let mut names: Vec<String> = examples.iter().map(|e| e.1.to_string()).collect();
    names.sort();
    assert_eq!(listed, names);

    // logs.sh: what the functions printed (sieve's console.log, echo-js's body).
    eventually(20, "the functions' logs", || async {
        let logs = script("logs.sh", &[]).await;
        logs.contains("Found 1229 primes under 10000") && logs.contains("Hello World!")
    })
    .await;

    // uploadURL.sh: a zip as GitHub serves a repository, the function a folder of it.
    let (addr, _served) = serve_bytes(zip_dir(&seeds(), "tinyFaaS-main/")).await;
    let out = script(
        "uploadURL.sh",
        &[
            &format!("http://{addr}/main.zip"),
            "tinyFaaS-main/test/fns/sieve-of-eratosthenes",
            "sieveurl",
            "nodejs",
            "1",
        ],
    )
    .await;
    assert!(
        out.contains(&format!("http://{gw}/sieveurl")),
        "uploadURL.sh printed {out:?}"
    );
    let r = raw(http.get(format!("http://{gw}/sieveurl"))).await;
    assert_eq!(
        (r.status, r.text.as_str()),
        (200, "Found 1229 primes under 10000\n")
    );

    // delete.sh: gone from the list and the gateway.
    script("delete.sh", &["sieveurl"]).await;
    assert!(!script("list.sh", &[])
        .await
        .lines()
        .any(|l| l == "sieveurl"));
    let r = raw(http.get(format!("http://{gw}/sieveurl"))).await;
    r.assert_error(404, "not_found", None);

    // wipe-functions.sh: nothing left in default.
    script("wipe-functions.sh", &[]).await;
    assert_eq!(script("list.sh", &[]).await, "");
    let r = s.get("/functions?namespace=default").await;
    assert_eq!(r.body["functions"], json!([]), "{}", r.body);
    s.stop().await;
}

/// A function deployed through /upload is an ordinary function: listed, invokable and
/// logged through section 5, with task records; the gateway answers as tinyFaaS's does.
#[tokio::test]
async fn an_upload_is_an_ordinary_function_and_the_gateway_answers_like_tinyfaas() {
    let s = Server::start_with_doors(Doors::all(), |_| {}).await;
    let code = "import os\n\ndef fn(input, headers):\n    if input == 'fail':\n        raise ValueError('asked to fail')\n    print('saw', input)\n    return os.environ['GREETING'] + ', ' + (input or 'nobody')\n";
    let zip = zip_of(&[("fn.py", code.as_bytes()), ("requirements.txt", b"\n")]);
    let r = raw(s.http.post(s.url("/upload")).body(
        json!({"name": "greet", "env": "python3", "threads": 2, "zip": b64(&zip), "envs": ["GREETING=hello"]})
            .to_string(),
    ))
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.header("content-type").starts_with("text/plain"));
    // One URL a door, tinyFaaS's protocol names.
    let (gw, grpc, coap) = (
        s.gateway.expect("gateway"),
        s.grpc.expect("grpc"),
        s.coap.expect("coap"),
    );
    assert_eq!(
        r.text,
        format!("coap://{coap}/greet\ngrpc://{grpc}/greet\nhttp://{gw}/greet\n")
    );

    // Section 5 sees it: in default, `threads` as `warm`.
    let r = s.get("/functions/default/greet").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        (r.body["runtime"].as_str(), r.body["warm"].as_u64()),
        (Some("python"), Some(2))
    );
    assert_eq!(r.body["env"]["GREETING"], "hello");
    let r = s.get("/functions").await;
    assert!(r.body["functions"].as_array().is_some_and(|f| f
        .iter()
        .any(|f| f["namespace"] == "default" && f["name"] == "greet")));
    let r = raw(s
        .http
        .post(s.url("/functions/default/greet/invoke"))
        .body("ana"))
    .await;
    assert_eq!((r.status, r.text.as_str()), (200, "hello, ana"));

    // The gateway: the output as it is, a task record behind it.
    let r = raw(s.http.post(s.gateway_url("/greet")).body("bob")).await;
    assert_eq!((r.status, r.text.as_str()), (200, "hello, bob"));
    let id = r.header("x-ufaas-task-id").to_string();
    let t = s.wait_ended(&id).await;
    assert_eq!(t["state"], "FINISHED", "{t}");
    assert_eq!(t["function"]["namespace"], "default", "{t}");
    assert_eq!(t["function"]["name"], "greet", "{t}");
    // No body: the handler gets None.
    let r = raw(s.http.get(s.gateway_url("/greet"))).await;
    assert_eq!((r.status, r.text.as_str()), (200, "hello, nobody"));
    // Leading slashes do not count, as in tinyFaaS.
    let r = raw(s.http.post(s.gateway_url("//greet")).body("cy")).await;
    assert_eq!((r.status, r.text.as_str()), (200, "hello, cy"));

    // A handler that fails: 500 with section 5's body and the task.
    let r = raw(s.http.post(s.gateway_url("/greet")).body("fail")).await;
    r.assert_error(500, "function_error", None);
    assert!(r.text.contains("asked to fail"), "{}", r.text);
    let failed = r.json()["task_id"].as_str().unwrap_or_default().to_string();
    assert_eq!(s.wait_ended(&failed).await["state"], "FAILED");

    // Unknown functions and names that cannot be one: 404.
    for path in ["/nope", "/", "/greet/more", "/Greet"] {
        let r = raw(s.http.get(s.gateway_url(path))).await;
        r.assert_error(404, "not_found", None);
    }
    // Other methods than GET and POST.
    let r = raw(s.http.put(s.gateway_url("/greet")).body("x")).await;
    r.assert_error(405, "method_not_allowed", None);

    // Async: 202 once stored, no body; an empty header value is not async (Go's Header.Get).
    let r = raw(s
        .http
        .post(s.gateway_url("/greet"))
        .header("X-tinyFaaS-Async", "1")
        .body("later"))
    .await;
    assert_eq!((r.status, r.text.as_str()), (202, ""));
    let later = r.header("x-ufaas-task-id").to_string();
    let t = s.wait_ended(&later).await;
    assert_eq!(
        (t["state"].as_str(), t["result"]["body"].as_str()),
        (Some("FINISHED"), Some("hello, later")),
        "{t}"
    );
    let r = raw(s
        .http
        .post(s.gateway_url("/greet"))
        .header("X-tinyFaaS-Async", "")
        .body("now"))
    .await;
    assert_eq!((r.status, r.text.as_str()), (200, "hello, now"));
    let r = raw(s
        .http
        .post(s.gateway_url("/nope"))
        .header("X-tinyFaaS-Async", "1"))
    .await;
    r.assert_error(404, "not_found", None);

    // Logs: section 5's route and tinyFaaS's /logs?name=.
    eventually(20, "the logs", || async {
        let r = s.get("/functions/default/greet/logs").await;
        r.body["lines"]
            .as_array()
            .is_some_and(|l| l.iter().any(|l| l["line"] == "saw bob"))
    })
    .await;
    let r = raw(s.http.get(s.url("/logs?name=greet"))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    for line in ["saw ana", "saw bob", "saw later"] {
        assert!(r.text.lines().any(|l| l == line), "{line} in {}", r.text);
    }
    let r = raw(s.http.get(s.url("/logs?name=nope"))).await;
    r.assert_error(404, "not_found", Some("name"));

    // A second upload replaces it (a new version), as tinyFaaS redeploys.
    let zip = zip_of(&[("fn.py", b"def fn(input):\n    return 'v2'\n")]);
    let r = raw(s.http.post(s.url("/upload")).body(
        json!({"name": "greet", "env": "python3", "threads": 1, "zip": b64(&zip)}).to_string(),
    ))
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(s.get("/functions/default/greet").await.body["version"], 2);
    let r = raw(s.http.post(s.gateway_url("/greet")).body("x")).await;
    assert_eq!((r.status, r.text.as_str()), (200, "v2"));

    // /delete and /wipe.
    let r = raw(s.http.post(s.url("/delete")).body(r#"{"name": "greet"}"#)).await;
    assert_eq!((r.status, r.text.as_str()), (200, ""));
    assert_eq!(s.get("/functions/default/greet").await.status, 404);
    let r = raw(s.http.post(s.url("/delete")).body(r#"{"name": "greet"}"#)).await;
    r.assert_error(404, "not_found", Some("name"));
    s.stop().await;
}

/// A node function in a folder of its zip, its main file named by package.json and a
/// vendored dependency; a shell one with a folder's zip; wipe takes every function of
/// default, and only those.
#[tokio::test]
async fn zips_folders_main_vendored_dependencies_and_wipe() {
    let s = Server::start_with_doors(
        Doors {
            gateway: true,
            ..Doors::default()
        },
        |_| {},
    )
    .await;
    let zip = zip_of(&[
        ("fn/", b""),
        (
            "fn/package.json",
            br#"{"name": "fn", "version": "1.0.0", "main": "handler", "dependencies": {"shout": "1.0.0"}}"#,
        ),
        (
            "fn/handler.js",
            b"const shout = require('shout');\nmodule.exports = (req, res) => res.send(shout(req.body));\n",
        ),
        ("fn/node_modules/shout/package.json", br#"{"name": "shout", "main": "index.js"}"#),
        (
            "fn/node_modules/shout/index.js",
            b"module.exports = (s) => String(s).toUpperCase() + '!';\n",
        ),
    ]);
    let r = raw(s.http.post(s.url("/upload")).body(
        json!({"name": "shout", "env": "nodejs", "threads": 1, "zip": b64(&zip)}).to_string(),
    ))
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = raw(s.http.post(s.gateway_url("/shout")).body("hey")).await;
    assert_eq!((r.status, r.text.as_str()), (200, "HEY!"));

    let zip = zip_of(&[
        ("bin/", b""),
        (
            "bin/fn.sh",
            b"#!/bin/sh\necho \"got $(cat) as $GREETING\"\n",
        ),
    ]);
    let r = raw(s.http.post(s.url("/upload")).body(
        json!({"name": "sh", "env": "binary", "threads": 0, "zip": b64(&zip), "envs": ["GREETING=me"]}).to_string(),
    ))
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = raw(s.http.post(s.gateway_url("/sh")).body("it")).await;
    assert_eq!((r.status, r.text.as_str()), (200, "got it as me\n"));

    // A function of another namespace is not tinyFaaS's: not listed, not wiped.
    let r = s
        .put(
            "/functions/other/keep",
            &json!({"runtime": "shell", "warm": 0, "code": "#!/bin/sh\necho kept\n"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let r = raw(s.http.get(s.url("/list"))).await;
    assert_eq!((r.status, r.text.as_str()), (200, "sh\nshout\n"));
    let r = raw(s.http.post(s.url("/wipe"))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(raw(s.http.get(s.url("/list"))).await.text, "");
    let r = s.get("/functions").await;
    let left: Vec<&Value> = r.body["functions"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    assert_eq!(left.len(), 1, "{}", r.body);
    assert_eq!(left[0]["namespace"], "other");
    s.stop().await;
}

/// Every bad input of the management routes: a clear 4xx with ufaas's error body, naming
/// tinyFaaS's field, and nothing deployed.
#[tokio::test]
async fn bad_management_requests_are_refused() {
    let s = Server::start_with_doors(
        Doors {
            gateway: true,
            ..Doors::default()
        },
        |_| {},
    )
    .await;
    let py = b64(&zip_of(&[("fn.py", b"def fn(i):\n    return i\n")]));
    let upload = |body: Value| {
        let mut b = json!({"name": "f", "env": "python3", "threads": 1, "zip": py});
        if let (Value::Object(b), Value::Object(o)) = (&mut b, body) {
            for (k, v) in o {
                if v == json!("<absent>") {
                    b.remove(&k);
                } else {
                    b.insert(k, v);
                }
            }
        }
        b.to_string()
    };
    let go = seeds().join("test/fns/hello-go");
    let cases: Vec<(String, u16, &str, Option<&str>)> = vec![
        ("not json".into(), 400, "invalid_json", None),
        ("".into(), 400, "invalid_json", None),
        ("[1]".into(), 400, "invalid_type", None),
        (
            upload(json!({"name": "<absent>"})),
            400,
            "missing_field",
            Some("name"),
        ),
        (
            upload(json!({"name": 7})),
            400,
            "invalid_type",
            Some("name"),
        ),
        (
            upload(json!({"name": "No Spaces"})),
            400,
            "invalid_value",
            Some("name"),
        ),
        (
            upload(json!({"env": "<absent>"})),
            400,
            "missing_field",
            Some("env"),
        ),
        (
            upload(json!({"env": "ruby"})),
            400,
            "invalid_value",
            Some("env"),
        ),
        (
            upload(json!({"env": "go", "zip": b64(&zip_dir(&go, ""))})),
            415,
            "unsupported_runtime",
            Some("env"),
        ),
        (
            upload(json!({"threads": -1})),
            400,
            "invalid_value",
            Some("threads"),
        ),
        (
            upload(json!({"threads": 1.5})),
            400,
            "invalid_value",
            Some("threads"),
        ),
        (
            upload(json!({"threads": "1"})),
            400,
            "invalid_type",
            Some("threads"),
        ),
        (
            upload(json!({"threads": 1000})),
            400,
            "invalid_value",
            Some("threads"),
        ),
        (
            upload(json!({"zip": "<absent>"})),
            400,
            "missing_field",
            Some("zip"),
        ),
        (
            upload(json!({"zip": "not base64!"})),
            400,
            "invalid_base64",
            Some("zip"),
        ),
        (
            upload(json!({"zip": b64(b"not a zip at all")})),
            400,
            "invalid_archive",
            Some("zip"),
        ),
        (
            upload(json!({"zip": b64(&zip_of(&[("main.py", b"x")]))})),
            400,
            "invalid_value",
            Some("zip"),
        ),
        (
            upload(json!({"zip": b64(&zip_of(&[("fn.py", b"def fn(:\n")]))})),
            400,
            "invalid_code",
            Some("zip"),
        ),
        (
            upload(
                json!({"zip": b64(&zip_of(&[("fn.py", b"import requests\ndef fn(i): return i\n"), ("requirements.txt", b"requests==2.31\n")]))}),
            ),
            400,
            "missing_dependency",
            Some("zip"),
        ),
        (
            upload(
                json!({"env": "nodejs", "zip": b64(&zip_of(&[("index.js", b"module.exports = (q, s) => s.send('x');\n"), ("package.json", br#"{"name": "fn", "main": "index.js", "dependencies": {"express": "^4"}}"#)]))}),
            ),
            400,
            "missing_dependency",
            Some("zip"),
        ),
        (
            upload(
                json!({"env": "nodejs", "zip": b64(&zip_of(&[("index.js", b""), ("package.json", b"{oops")]))}),
            ),
            400,
            "invalid_value",
            Some("zip"),
        ),
        (
            upload(json!({"envs": "A=1"})),
            400,
            "invalid_type",
            Some("envs"),
        ),
        (
            upload(json!({"envs": ["A"]})),
            400,
            "invalid_value",
            Some("envs[0]"),
        ),
        (
            upload(json!({"envs": ["A=1", "=2"]})),
            400,
            "invalid_env_name",
            Some("envs[1]"),
        ),
        (
            upload(json!({"zipp": "x"})),
            400,
            "unknown_field",
            Some("zipp"),
        ),
    ];
    for (body, status, code, field) in &cases {
        let r = raw(s.http.post(s.url("/upload")).body(body.clone())).await;
        let shown: String = body.chars().take(120).collect();
        assert_eq!(r.status, *status, "{shown}: {}", r.text);
        r.assert_error(*status, code, *field);
    }
    let e = raw(s.http.post(s.url("/upload")).body(cases[18].0.clone())).await;
    assert!(
        e.text.contains("requests") && e.text.contains("requirements.txt"),
        "{}",
        e.text
    );
    let e = raw(s.http.post(s.url("/upload")).body(cases[19].0.clone())).await;
    assert!(
        e.text.contains("express") && e.text.contains("package.json"),
        "{}",
        e.text
    );

    // /uploadURL: the URL, its fetch and the folder.
    let (addr, _served) = serve_bytes(zip_of(&[("d/fn.py", b"def fn(i):\n    return i\n")])).await;
    let url_body = |url: &str, sub: Value| {
        json!({"name": "u", "env": "python3", "threads": 1, "url": url, "subfolder_path": sub})
            .to_string()
    };
    for (body, status, code, field) in [
        (
            json!({"name": "u", "env": "python3"}).to_string(),
            400,
            "missing_field",
            "url",
        ),
        (url_body("not a url", json!("/")), 400, "invalid_uri", "url"),
        (
            url_body("ftp://example.com/x.zip", json!("/")),
            400,
            "invalid_uri",
            "url",
        ),
        // Loopback is refused unless --allow-fetch lists it (this server's does not).
        (
            url_body(&format!("http://{addr}/x.zip"), json!("d")),
            403,
            "uri_not_allowed",
            "url",
        ),
        (
            url_body("http://x", json!(["d"])),
            400,
            "invalid_type",
            "subfolder_path",
        ),
        (
            url_body("http://x", json!("../d")),
            400,
            "invalid_value",
            "subfolder_path",
        ),
        (
            json!({"name": "u", "env": "python3", "zip": py, "url": "http://x"}).to_string(),
            400,
            "unknown_field",
            "zip",
        ),
    ] {
        let r = raw(s.http.post(s.url("/uploadURL")).body(body.clone())).await;
        r.assert_error(status, code, Some(field));
    }

    // /delete, /logs and the methods.
    for (body, status, code, field) in [
        ("nope", 400, "invalid_json", None),
        ("{}", 400, "missing_field", Some("name")),
        (r#"{"name": 3}"#, 400, "invalid_type", Some("name")),
        (
            r#"{"name": "Bad Name"}"#,
            400,
            "invalid_value",
            Some("name"),
        ),
        (r#"{"name": "absent"}"#, 404, "not_found", Some("name")),
        (
            r#"{"name": "absent", "x": 1}"#,
            400,
            "unknown_field",
            Some("x"),
        ),
    ] {
        let r = raw(s.http.post(s.url("/delete")).body(body)).await;
        r.assert_error(status, code, field);
    }
    let r = raw(s.http.get(s.url("/logs?name=absent"))).await;
    r.assert_error(404, "not_found", Some("name"));
    for (method, path) in [
        (reqwest::Method::GET, "/upload"),
        (reqwest::Method::GET, "/uploadURL"),
        (reqwest::Method::POST, "/list"),
        (reqwest::Method::GET, "/delete"),
        (reqwest::Method::GET, "/wipe"),
        (reqwest::Method::POST, "/logs"),
    ] {
        let r = raw(s.http.request(method.clone(), s.url(path))).await;
        r.assert_error(405, "method_not_allowed", None);
    }

    // Nothing of it was deployed.
    assert_eq!(raw(s.http.get(s.url("/list"))).await.text, "");
    assert_eq!(s.get("/functions").await.body["functions"], json!([]));
    s.stop().await;
}

/// `/uploadURL` with the folder of a fetched zip that is not there, or a fetch that fails.
#[tokio::test]
async fn upload_url_refuses_a_missing_folder_and_a_failed_fetch() {
    let s = Server::start_with_doors(Doors::default(), |cfg| {
        cfg.allow_fetch = vec!["127.0.0.0/8".into()];
    })
    .await;
    let (addr, _served) = serve_bytes(zip_of(&[("d/fn.py", b"def fn(i):\n    return i\n")])).await;
    let body = |url: String, sub: &str| {
        json!({"name": "u", "env": "python3", "threads": 0, "url": url, "subfolder_path": sub})
            .to_string()
    };
    let r = raw(s
        .http
        .post(s.url("/uploadURL"))
        .body(body(format!("http://{addr}/z.zip"), "e")))
    .await;
    r.assert_error(400, "invalid_value", Some("subfolder_path"));
    assert!(
        r.text.contains("`d`") || r.text.contains(": d"),
        "{}",
        r.text
    );
    // Nothing listens there any more once this listener is dropped.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let r = raw(s
        .http
        .post(s.url("/uploadURL"))
        .body(body(format!("http://{closed}/z.zip"), "d")))
    .await;
    r.assert_error(400, "invalid_uri", Some("url"));
    // The whole zip (subfolder `/`): its one folder holds fn.py, so it deploys.
    let r = raw(s
        .http
        .post(s.url("/uploadURL"))
        .body(body(format!("http://{addr}/z.zip"), "/")))
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    // No door served: the answer lists none.
    assert_eq!(r.text, "");
    let r = raw(s
        .http
        .post(s.url("/functions/default/u/invoke"))
        .body("back"))
    .await;
    assert_eq!((r.status, r.text.as_str()), (200, "back"));
    s.stop().await;
}

/// With tokens, the gateway wants `Authorization: Bearer` as the main listener does, and
/// the token never reaches the handler.
#[tokio::test]
async fn the_gateway_wants_the_token_when_tokens_are_configured() {
    let token = "tinyfaas-gateway-test-token";
    let s = Server::start_with_doors(
        Doors {
            gateway: true,
            ..Doors::default()
        },
        |cfg| cfg.token = Some(token.into()),
    )
    .await;
    let dir = seeds().join("test/fns/show-headers");
    let r = raw(s.http.post(s.url("/upload")).body(
        json!({"name": "headers", "env": "python3", "threads": 1, "zip": b64(&zip_dir(&dir, ""))})
            .to_string(),
    ))
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let bare = reqwest::Client::new();
    let r = raw(bare.post(s.gateway_url("/headers"))).await;
    r.assert_error(401, "unauthorized", None);
    let r = raw(bare
        .post(s.gateway_url("/headers"))
        .header("authorization", "Bearer wrong-token-of-some-length"))
    .await;
    r.assert_error(401, "unauthorized", None);
    // The management routes too.
    let r = raw(bare.get(s.url("/list"))).await;
    r.assert_error(401, "unauthorized", None);
    let r = raw(bare
        .post(s.gateway_url("/headers"))
        .header("authorization", format!("Bearer {token}"))
        .header("Lab", "x"))
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let h = r.json();
    assert_eq!(h["Lab"], "x", "{h}");
    assert!(h.get("Authorization").is_none(), "{h}");
    s.stop().await;
}

/// GET /logs is bounded: the last 1000 lines of each function (`?tail=` others), at most
/// 4 MiB in all, whole lines, the newest kept.
#[tokio::test]
async fn logs_keep_the_last_lines_within_a_bound() {
    let s = Server::start_with_doors(Doors::default(), |cfg| {
        cfg.max_output_bytes = 8 << 20;
    })
    .await;
    let code = "def fn(input):\n    if input.startswith('call'):\n        print(input)\n    elif input == 'wide':\n        for i in range(1000):\n            print('wide %04d ' % i + 'x' * 5000)\n    else:\n        for i in range(1500):\n            print('short', i)\n    return 'ok'\n";
    for name in ["short", "wide"] {
        let zip = zip_of(&[("fn.py", code.as_bytes())]);
        let r = raw(s.http.post(s.url("/upload")).body(
            json!({"name": name, "env": "python3", "threads": 1, "zip": b64(&zip)}).to_string(),
        ))
        .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let r = raw(s
            .http
            .post(s.url(&format!("/functions/default/{name}/invoke")))
            .body(name))
        .await;
        assert_eq!((r.status, r.text.as_str()), (200, "ok"));
    }
    const CAP: usize = 4 << 20;
    let logs = |query: &'static str| {
        let s = &s;
        async move {
            let r = raw(s.http.get(s.url(&format!("/logs{query}")))).await;
            assert_eq!(
                r.status,
                200,
                "{query}: {}",
                &r.text[..r.text.len().min(200)]
            );
            r.text
        }
    };
    eventually(20, "short's logs", || async {
        logs("?name=short").await.ends_with("short 1499\n")
    })
    .await;
    // The last 1000 of its 1500 lines.
    let text = logs("?name=short").await;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1000);
    assert_eq!((lines[0], lines[999]), ("short 500", "short 1499"));
    assert_eq!(
        logs("?name=short&tail=3").await,
        "short 1497\nshort 1498\nshort 1499\n"
    );
    // Lines of several calls, in the order of the calls.
    for i in 0..4 {
        let r = raw(s
            .http
            .post(s.url("/functions/default/short/invoke"))
            .body(format!("call {i}")))
        .await;
        assert_eq!((r.status, r.text.as_str()), (200, "ok"));
    }
    eventually(20, "the calls' logs", || async {
        logs("?name=short&tail=5").await == "short 1499\ncall 0\ncall 1\ncall 2\ncall 3\n"
    })
    .await;
    // 1000 lines of 5 KB are 5 MB: the newest whole lines that fit in 4 MiB.
    eventually(20, "wide's logs", || async {
        logs("?name=wide").await.contains("wide 0999 ")
    })
    .await;
    let text = logs("?name=wide").await;
    assert!(
        text.len() <= CAP && text.len() > CAP - 5100,
        "{}",
        text.len()
    );
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines
        .iter()
        .all(|l| l.len() == 5010 && l.starts_with("wide ")));
    assert!(lines[lines.len() - 1].starts_with("wide 0999 "));
    assert!(lines[0].starts_with(&format!("wide {:04} ", 1000 - lines.len())));
    // Every function: still at most 4 MiB, ending with the last one's newest line.
    let text = logs("").await;
    assert!(text.len() <= CAP, "{}", text.len());
    assert!(
        text.ends_with("short 1499\n") || text.contains("wide 0999 "),
        "{}",
        &text[text.len().saturating_sub(100)..]
    );
    // A bad tail.
    for tail in ["0", "10001", "x", "-1", ""] {
        let r = raw(s.http.get(s.url(&format!("/logs?name=short&tail={tail}")))).await;
        r.assert_error(400, "invalid_query", Some("tail"));
    }
    s.stop().await;
}
