//! Every bad input a user can send over HTTP: each is refused with the right status, a JSON
//! `code`, a non-empty `message` and (when one field is at fault) its `field`, and nothing is
//! stored for a refused submission. Expectations are written `"STATUS code [field]"`.
mod common;

use common::{sh, Reply, Server, BUSYBOX, PYTHON};
use reqwest::Method;
use serde_json::{json, Value};

const UNKNOWN: &str = "00000000-0000-4000-8000-000000000000";

fn base() -> Value {
    json!({"task_name": "t", "image": BUSYBOX, "cmd_list": ["true"]})
}

fn with(key: &str, v: Value) -> Value {
    let mut b = base();
    b[key] = v;
    b
}

fn without(key: &str) -> Value {
    let mut b = base();
    b.as_object_mut().map(|o| o.remove(key));
    b
}

/// A spec with one resource.
fn res(r: Value) -> Value {
    with("resource_list", json!([r]))
}

/// Sends `body` (if any) with a Content-Type header.
async fn call(s: &Server, method: Method, path: &str, ct: &str, body: Option<String>) -> Reply {
    let req = s.http.request(method, s.url(path));
    let req = match body {
        Some(b) => req.header("content-type", ct).body(b),
        None => req,
    };
    s.send(req).await
}

/// Collects every mismatch so one run reports all failing cases, each by name.
#[derive(Default)]
struct Checks(Vec<String>);

impl Checks {
    /// `want` is `"STATUS code"` or `"STATUS code field"` (or a bare success `"STATUS"`).
    fn check(&mut self, case: &str, r: &Reply, want: &str) {
        let mut w = want.split_whitespace();
        let (status, code, field) = (w.next().unwrap_or_default(), w.next(), w.next());
        let ok = r.status.to_string() == status
            && r.body["code"].as_str() == code
            && (code.is_none() || r.body["message"].as_str().is_some_and(|m| !m.is_empty()))
            && field.is_none_or(|f| r.body["field"] == f);
        if !ok {
            self.0
                .push(format!("{case}: want {want}, got {} {}", r.status, r.body));
        }
    }

    fn expect(&mut self, case: &str, ok: bool, got: &Value) {
        if !ok {
            self.0.push(format!("{case}: got {got}"));
        }
    }

    #[track_caller]
    fn finish(self) {
        let n = self.0.len();
        assert!(n == 0, "{n} failing case(s):\n{}", self.0.join("\n"));
    }
}

/// After refused submissions, nothing was stored.
async fn assert_no_tasks(server: &Server) {
    let r = server.get("/fn").await;
    let tasks = (r.status, &r.body["tasks"], &r.body["next"]);
    assert_eq!(
        tasks,
        (200, &json!([]), &Value::Null),
        "GET /fn: {}",
        r.body
    );
}

#[tokio::test]
async fn post_fn_refuses_bodies_that_are_not_a_spec_object() {
    let s = Server::start().await;
    let mut c = Checks::default();
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    #[rustfmt::skip]
    let raw: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not JSON", b"hello".to_vec(), "400 invalid_json"),
        ("whitespace body", b"  \n".to_vec(), "400 invalid_json"),
        ("truncated JSON", br#"{"task_name": "#.to_vec(), "400 invalid_json"),
        ("not UTF-8", vec![0xff, 0xfe, b'{', b'}'], "400 invalid_json"),
        ("10,000 nested arrays", deep.into_bytes(), "400 invalid_json"),
        ("JSON array", b"[1, 2]".to_vec(), "400 invalid_type"),
        ("JSON string", br#""spec""#.to_vec(), "400 invalid_type"),
        ("JSON null", b"null".to_vec(), "400 invalid_type"),
    ];
    for (case, body, want) in raw {
        c.check(case, &s.post_raw("/fn", body).await, want);
    }
    let zero = s.http.post(s.url("/fn")).header("content-length", "0");
    c.check(
        "empty body, Content-Length: 0",
        &s.send(zero).await,
        "400 invalid_json",
    );
    // No body at all (`curl -X POST`): HTTP/1.1 says that is a body of length zero.
    let none = call(&s, Method::POST, "/fn", "", None).await;
    c.check("no body, no Content-Length", &none, "400 invalid_json");
    // A chunked body (no Content-Length) is read, and judged like any other.
    let chunked = reqwest::Body::wrap_stream(futures_util::stream::once(async {
        Ok::<_, std::io::Error>("not json".to_string())
    }));
    let r = s.post_raw("/fn", chunked).await;
    c.check("chunked body that is not JSON", &r, "400 invalid_json");
    for wait in ["abc", "-1", "1e9", ""] {
        let r = s.post(&format!("/fn?wait={wait}"), &base()).await;
        c.check(&format!("?wait={wait}"), &r, "400 invalid_query wait");
    }
    assert_no_tasks(&s).await;
    s.stop().await;
    c.finish();
}

#[tokio::test]
async fn post_fn_refuses_bad_fields() {
    let s = Server::start().await;
    let name128 = format!("{} {}", "x".repeat(64), "y".repeat(63));
    #[rustfmt::skip]
    let cases: Vec<(&str, Value, &str)> = vec![
        ("unknown top-level field", with("colour", json!("red")), "400 unknown_field colour"),
        ("task_name number", with("task_name", json!(5)), "400 invalid_type task_name"),
        ("image number", with("image", json!(5)), "400 invalid_type image"),
        ("cmd_list string", with("cmd_list", json!("echo hi")), "400 invalid_type cmd_list"),
        ("cmd_list element number", with("cmd_list", json!(["echo", 3])), "400 invalid_type cmd_list[1]"),
        ("pwd number", with("pwd", json!(5)), "400 invalid_type pwd"),
        ("env array", with("env", json!(["A"])), "400 invalid_type env"),
        ("env value object", with("env", json!({"A": {"x": 1}})), "400 invalid_type env.A"),
        ("stdin number", with("stdin", json!(5)), "400 invalid_type stdin"),
        ("is_daemon string", with("is_daemon", json!("yes")), "400 invalid_type is_daemon"),
        ("ttl string", with("ttl", json!("10")), "400 invalid_type ttl"),
        ("timeout string", with("timeout", json!("10")), "400 invalid_type timeout"),
        ("rm number", with("rm", json!(1)), "400 invalid_type rm"),
        ("priority string", with("priority", json!("high")), "400 invalid_type priority"),
        ("limits number", with("limits", json!(5)), "400 invalid_type limits"),
        ("network string", with("network", json!("yes")), "400 invalid_type network"),
        ("resource_list object", with("resource_list", json!({})), "400 invalid_type resource_list"),
        ("resource entry string", res(json!("text")), "400 invalid_type resource_list[0]"),
        ("missing task_name", without("task_name"), "400 missing_field task_name"),
        ("null task_name", with("task_name", Value::Null), "400 missing_field task_name"),
        ("missing image", without("image"), "400 missing_field image"),
        ("missing cmd_list", without("cmd_list"), "400 missing_field cmd_list"),
        ("empty task_name", with("task_name", json!("")), "400 invalid_value task_name"),
        ("128-char task_name", with("task_name", json!(name128)), "400 invalid_value task_name"),
        ("task_name with newline", with("task_name", json!("a\nb")), "400 invalid_value task_name"),
        ("uppercase image", with("image", json!("UFAAS/Busybox")), "400 invalid_image image"),
        ("image with !", with("image", json!("ufaas/busybox!")), "400 invalid_image image"),
        ("256-char image", with("image", json!("a".repeat(256))), "400 invalid_image image"),
        ("empty image", with("image", json!("")), "400 invalid_image image"),
        ("empty cmd_list", with("cmd_list", json!([])), "400 invalid_value cmd_list"),
        ("empty program", with("cmd_list", json!([""])), "400 invalid_value cmd_list[0]"),
        ("relative pwd", with("pwd", json!("rel/dir")), "400 invalid_value pwd"),
        ("env key 1X", with("env", json!({"1X": "v"})), "400 invalid_env_name env.1X"),
        ("env key A-B", with("env", json!({"A-B": "v"})), "400 invalid_env_name env.A-B"),
        ("ttl 0", with("ttl", json!(0)), "400 invalid_value ttl"),
        ("ttl -5", with("ttl", json!(-5)), "400 invalid_value ttl"),
        ("ttl 1.5", with("ttl", json!(1.5)), "400 invalid_type ttl"),
        ("ttl over a year", with("ttl", json!(40_000_000)), "400 invalid_value ttl"),
        ("timeout 0", with("timeout", json!(0)), "400 invalid_value timeout"),
        ("timeout -1", with("timeout", json!(-1)), "400 invalid_value timeout"),
        ("timeout 2.5", with("timeout", json!(2.5)), "400 invalid_type timeout"),
        ("priority 1.5", with("priority", json!(1.5)), "400 invalid_type priority"),
        ("priority out of range", with("priority", json!(2_000_000_000)), "400 invalid_value priority"),
        ("memory_mb over max", with("limits", json!({"memory_mb": 999_999})), "400 limit_exceeded limits.memory_mb"),
        ("cpus over max", with("limits", json!({"cpus": 100_000})), "400 limit_exceeded limits.cpus"),
        ("pids over max", with("limits", json!({"pids": 999_999})), "400 limit_exceeded limits.pids"),
        ("pids 0", with("limits", json!({"pids": 0})), "400 invalid_value limits.pids"),
        ("unknown limits key", with("limits", json!({"gpus": 1})), "400 unknown_field limits.gpus"),
        ("network without --allow-network", with("network", json!(true)), "403 network_not_allowed network"),
    ];
    let mut c = Checks::default();
    for (case, spec, want) in cases {
        c.check(case, &s.post("/fn", &spec).await, want);
    }
    assert_no_tasks(&s).await;
    s.stop().await;
    c.finish();
}

#[tokio::test]
async fn post_fn_refuses_bad_resources() {
    let s = Server::start().await;
    let d = |dest: &str| json!({"dest": dest, "data": "x"});
    let mut in_proc = res(d("self/x"));
    in_proc["pwd"] = json!("/proc");
    let many: Vec<Value> = (0..257).map(|i| d(&format!("f{i}"))).collect();
    #[rustfmt::skip]
    let cases: Vec<(&str, Value, &str)> = vec![
        ("empty dest", res(d("")), "400 invalid_dest resource_list[0].dest"),
        ("dest ../x", res(d("../x")), "400 invalid_dest resource_list[0].dest"),
        ("dest a/../../b", res(d("a/../../b")), "400 invalid_dest resource_list[0].dest"),
        ("dest with NUL", res(d("a\0b")), "400 invalid_dest resource_list[0].dest"),
        ("dest /proc/x", res(d("/proc/x")), "400 invalid_dest resource_list[0].dest"),
        ("dest /sys/kernel/x", res(d("/sys/kernel/x")), "400 invalid_dest resource_list[0].dest"),
        ("dest /dev/null", res(d("/dev/null")), "400 invalid_dest resource_list[0].dest"),
        ("relative dest proc/x from /", res(d("proc/x")), "400 invalid_dest resource_list[0].dest"),
        ("relative dest into /proc via pwd", in_proc, "400 invalid_dest resource_list[0].dest"),
        ("dest not a string", res(json!({"dest": 5, "data": "x"})), "400 invalid_type resource_list[0].dest"),
        ("no dest", res(json!({"data": "x"})), "400 missing_field resource_list[0].dest"),
        ("two kinds", res(json!({"dest": "a", "data": "x", "uri": "https://h/x"})), "400 invalid_resource resource_list[0]"),
        ("no kind", res(json!({"dest": "a"})), "400 invalid_resource resource_list[0]"),
        ("unknown resource key", res(json!({"dest": "a", "data": "x", "owner": "me"})), "400 unknown_field resource_list[0].owner"),
        ("invalid base64", res(json!({"dest": "a", "data": "!!", "encoding": "base64"})), "400 invalid_base64 resource_list[0].data"),
        ("bad encoding", res(json!({"dest": "a", "data": "x", "encoding": "rot13"})), "400 invalid_value resource_list[0].encoding"),
        ("mode 999", res(json!({"dest": "a", "data": "x", "mode": "999"})), "400 invalid_value resource_list[0].mode"),
        ("mode as number", res(json!({"dest": "a", "data": "x", "mode": 644})), "400 invalid_type resource_list[0].mode"),
        ("file:// uri", res(json!({"dest": "a", "uri": "file:///etc/passwd"})), "400 invalid_uri resource_list[0].uri"),
        ("ftp:// uri", res(json!({"dest": "a", "uri": "ftp://h/x"})), "400 invalid_uri resource_list[0].uri"),
        ("uri without host", res(json!({"dest": "a", "uri": "https://"})), "400 invalid_uri resource_list[0].uri"),
        ("uri not a URL", res(json!({"dest": "a", "uri": "not a url"})), "400 invalid_uri resource_list[0].uri"),
        ("bad sha256", res(json!({"dest": "a", "uri": "https://h/x", "sha256": "abc"})), "400 invalid_value resource_list[0].sha256"),
        ("tmpfs false", res(json!({"dest": "/s", "tmpfs": false})), "400 invalid_value resource_list[0].tmpfs"),
        ("tmpfs over the cap", res(json!({"dest": "/s", "tmpfs": true, "size": 1u64 << 40})), "413 payload_too_large resource_list[0].size"),
        ("bind not allowed", res(json!({"dest": "/d", "bind": "/srv/data"})), "403 bind_not_allowed resource_list[0].bind"),
        ("257 resources", with("resource_list", json!(many)), "400 too_many_resources resource_list"),
        ("second entry bad", with("resource_list", json!([d("ok"), d("")])), "400 invalid_dest resource_list[1].dest"),
    ];
    let mut c = Checks::default();
    for (case, spec, want) in cases {
        c.check(case, &s.post("/fn", &spec).await, want);
    }
    assert_no_tasks(&s).await;
    s.stop().await;
    c.finish();
}

#[tokio::test]
async fn server_size_caps_answer_413() {
    let s = Server::start_with(|cfg| {
        cfg.max_body_bytes = 1024;
        cfg.max_inline_bytes = 10;
    })
    .await;
    let big = res(json!({"dest": "a", "data": "x".repeat(2000)}));
    let one = res(json!({"dest": "a", "data": "0123456789abc"}));
    let two = json!([{"dest": "a", "data": "012345"}, {"dest": "b", "data": "AAECAwQF", "encoding": "base64"}]);
    let mut c = Checks::default();
    #[rustfmt::skip]
    let cases = [
        ("body over max_body_bytes", s.post("/fn", &big).await, "413 payload_too_large"),
        ("inline over max_inline_bytes", s.post("/fn", &one).await, "413 payload_too_large resource_list[0].data"),
        ("inline total over max_inline_bytes", s.post("/fn", &with("resource_list", two)).await, "413 payload_too_large resource_list[1].data"),
    ];
    for (case, r, want) in &cases {
        c.check(case, r, want);
    }
    // A chunked body is cut off at the limit too, with no Content-Length to go by.
    let chunks = (0..64).map(|_| Ok::<_, std::io::Error>("x".repeat(100)));
    let chunked = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let r = s.post_raw("/fn", chunked).await;
    c.check(
        "chunked body over max_body_bytes",
        &r,
        "413 payload_too_large",
    );
    assert_no_tasks(&s).await;
    s.stop().await;
    c.finish();
}

#[tokio::test]
async fn bind_is_refused_off_the_allow_list_and_accepted_on_it() {
    let allowed = tempfile::tempdir().expect("temp dir");
    std::fs::write(allowed.path().join("hello.txt"), "hi").expect("write");
    let root = allowed.path().to_str().expect("utf-8 path").to_string();
    let allow = allowed.path().to_path_buf();
    let s = Server::start_with(move |cfg| cfg.allow_bind = vec![allow]).await;
    let mut c = Checks::default();
    for host in [
        format!("{root}/../etc"),
        format!("{root}x"),
        "/etc".into(),
        "rel".into(),
    ] {
        let r = s
            .post("/fn", &res(json!({"dest": "/data", "bind": host})))
            .await;
        c.check(
            &format!("bind {host}"),
            &r,
            "403 bind_not_allowed resource_list[0].bind",
        );
    }
    assert_no_tasks(&s).await;
    let mut spec = sh("ls /data");
    spec["resource_list"] = json!([{"dest": "/data", "bind": root, "readonly": true}]);
    let r = s.post("/fn", &spec).await;
    c.check("bind on the allow-list is accepted", &r, "201");
    if r.status == 201 {
        let done = s.wait_ended(&r.id()).await;
        let ok = done["state"] == "FINISHED" && done["stdout"] == "hello.txt\n";
        c.expect("bind task sees the host file", ok, &done);
    }
    s.stop().await;
    c.finish();
}

#[tokio::test]
async fn list_query_errors() {
    let s = Server::start().await;
    let mut c = Checks::default();
    let unknown = format!("before={UNKNOWN}");
    #[rustfmt::skip]
    let cases = [
        ("limit=0", "limit"), ("limit=1001", "limit"), ("limit=x", "limit"), ("limit=-1", "limit"),
        ("state=BOGUS", "state"), ("state=RUNNING,BOGUS", "state"),
        ("before=not-a-uuid", "before"), (&unknown, "before"),
    ];
    for (q, field) in cases {
        let r = s.get(&format!("/fn?{q}")).await;
        c.check(q, &r, &format!("400 invalid_query {field}"));
    }
    s.stop().await;
    c.finish();
}

#[tokio::test]
async fn path_route_and_method_errors() {
    let s = Server::start().await;
    let (bad, unknown) = ("/fn/not-a-uuid".to_string(), format!("/fn/{UNKNOWN}"));
    let deep = format!("{unknown}/x");
    #[rustfmt::skip]
    let cases = [
        (Method::GET, &bad, "400 invalid_id id"), (Method::PUT, &bad, "400 invalid_id id"),
        (Method::DELETE, &bad, "400 invalid_id id"), (Method::POST, &bad, "400 invalid_id id"),
        (Method::GET, &unknown, "404 not_found"), (Method::PUT, &unknown, "404 not_found"),
        (Method::DELETE, &unknown, "404 not_found"), (Method::POST, &unknown, "404 not_found"),
        (Method::GET, &"/nope".to_string(), "404 not_found"), (Method::GET, &deep, "404 not_found"),
        (Method::PATCH, &"/fn".to_string(), "405 method_not_allowed"),
        (Method::PUT, &"/fn".to_string(), "405 method_not_allowed"),
        (Method::DELETE, &"/fn".to_string(), "405 method_not_allowed"),
        (Method::PATCH, &unknown, "405 method_not_allowed"),
    ];
    let mut c = Checks::default();
    for (method, path, want) in cases {
        let body = matches!(method, Method::PUT | Method::POST | Method::PATCH)
            .then(|| base().to_string());
        let r = call(&s, method.clone(), path, "application/json", body).await;
        c.check(&format!("{method} {path}"), &r, want);
    }
    assert_no_tasks(&s).await;
    s.stop().await;
    c.finish();
}

#[tokio::test]
async fn queued_task_put_errors_and_queue_full() {
    let s = Server::start_with(|cfg| {
        cfg.max_concurrent = 1;
        cfg.max_queue = 1;
    })
    .await;
    let running = s.submit(&sh("sleep 30")).await;
    s.wait_state(&running, "RUNNING").await;
    let queued_spec = sh("echo queued");
    let queued = s.submit(&queued_spec).await;
    let p = &format!("/fn/{queued}");
    let (json_ct, merge_ct) = ("application/json", "application/merge-patch+json");
    let json_patch = r#"[{"op": "replace", "path": "/ttl", "value": 5}]"#.to_string();
    #[rustfmt::skip]
    let cases = [
        ("queue full", s.post("/fn", &sh("echo one too many")).await, "429 queue_full"),
        ("PUT bad field", s.put(p, &with("cmd_list", json!([]))).await, "400 invalid_value cmd_list"),
        ("PUT unknown field", s.put(p, &with("colour", json!(1))).await, "400 unknown_field colour"),
        ("PUT array", s.put(p, &json!([1])).await, "400 invalid_type"),
        ("merge bad field", s.merge(p, &json!({"ttl": "soon"})).await, "400 invalid_type ttl"),
        ("merge unknown field", s.merge(p, &json!({"colour": 1})).await, "400 unknown_field colour"),
        ("merge array", s.merge(p, &json!([1])).await, "400 invalid_type"),
        ("merge string", s.merge(p, &json!("x")).await, "400 invalid_type"),
        ("merge not JSON", call(&s, Method::PUT, p, merge_ct, Some("{nope".into())).await, "400 invalid_json"),
        ("PUT empty body", call(&s, Method::PUT, p, json_ct, Some(String::new())).await, "400 invalid_json"),
        ("PUT JSON Patch", call(&s, Method::PUT, p, "application/json-patch+json", Some(json_patch)).await, "415 unsupported_media_type"),
    ];
    let mut c = Checks::default();
    for (case, r, want) in &cases {
        c.check(case, r, want);
    }
    let now = s.get(p).await.body;
    let unchanged = now["state"] == "PENDING" && now["spec"] == queued_spec;
    c.expect("refused PUTs left the task as it was", unchanged, &now);
    for id in [&queued, &running] {
        let r = s.delete(&format!("/fn/{id}")).await;
        let ok = r.status == 200 && r.body["state"] == "CANCELLED";
        c.expect(&format!("cancel {id}"), ok, &r.body);
    }
    s.stop().await;
    c.finish();
}

#[tokio::test]
async fn ended_task_conflicts_and_reuse_errors() {
    let s = Server::start().await;
    let done = s.run(&sh("true")).await;
    assert_eq!(done["state"], "FINISHED", "{done}");
    let p = &format!("/fn/{}", done["id"].as_str().unwrap_or_default());
    let mut tmpfs = res(json!({"dest": "/scratch", "tmpfs": true}));
    tmpfs.as_object_mut().map(|o| o.remove("image"));
    #[rustfmt::skip]
    let cases = [
        ("PUT ended", s.put(p, &sh("echo again")).await, "409 already_started"),
        ("merge ended", s.merge(p, &json!({"priority": 5})).await, "409 already_started"),
        ("DELETE ended", s.delete(p).await, "409 already_ended"),
        ("DELETE ?purge=maybe", s.delete(&format!("{p}?purge=maybe")).await, "400 invalid_query purge"),
        ("DELETE ?remove_container=2", s.delete(&format!("{p}?remove_container=2")).await, "400 invalid_query remove_container"),
        ("reuse with another image", s.post(p, &with("image", json!(PYTHON))).await, "400 image_mismatch image"),
        ("reuse with tmpfs", s.post(p, &tmpfs).await, "400 mount_on_reuse resource_list[0]"),
        ("reuse ?wait=abc", s.post(&format!("{p}?wait=abc"), &without("image")).await, "400 invalid_query wait"),
    ];
    let mut c = Checks::default();
    for (case, r, want) in &cases {
        c.check(case, r, want);
    }
    let list = s.get("/fn").await.body;
    let one = list["tasks"].as_array().map(Vec::len) == Some(1);
    c.expect("refused reuses stored no task", one, &list);
    let now = s.get(p).await.body;
    c.expect(
        "refused PUTs left the spec",
        now["spec"] == sh("true"),
        &now,
    );
    s.stop().await;
    c.finish();
}
