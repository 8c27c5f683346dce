//! Hostile tasks and requests: each runs for real and asserts the safe outcome.

mod common;

use common::{sh, Server, PYTHON};
use serde_json::{json, Value};

fn lines(t: &Value) -> Vec<String> {
    t["stdout"]
        .as_str()
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn no_capabilities_no_new_privileges_no_mount_unshare_or_raw_sockets() {
    let server = Server::start().await;
    let t = server
        .run(&sh(
            "grep -E '^(CapEff|CapPrm|CapBnd|NoNewPrivs)' /proc/self/status; \
                  mount -t tmpfs none /mnt 2>/dev/null; echo mount=$?; \
                  unshare -U true 2>/dev/null; echo unshare_user=$?; \
                  unshare -n true 2>/dev/null; echo unshare_net=$?; \
                  ls /var/run/docker.sock /run/docker.sock 2>/dev/null; echo socket=$?",
        ))
        .await;
    let out = lines(&t);
    for cap in ["CapEff", "CapPrm", "CapBnd"] {
        assert!(
            out.contains(&format!("{cap}:\t0000000000000000")),
            "{cap}: {out:?}"
        );
    }
    assert!(out.contains(&"NoNewPrivs:\t1".to_string()), "{out:?}");
    for (what, ok) in [
        ("mount", "mount=0"),
        ("unshare_user", "unshare_user=0"),
        ("unshare_net", "unshare_net=0"),
        ("socket", "socket=0"),
    ] {
        assert!(
            out.iter().any(|l| l.starts_with(what)) && !out.contains(&ok.to_string()),
            "{what} must fail: {out:?}"
        );
    }
    let raw = "import socket, errno\ntry:\n    socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)\n    print('raw socket opened')\nexcept PermissionError as e:\n    print('EPERM' if e.errno == errno.EPERM else e)\n";
    let t = server
        .run(&json!({"task_name": "raw", "image": PYTHON, "cmd_list": ["python3", "-c", raw]}))
        .await;
    assert_eq!(t["stdout"], "EPERM\n", "{t}");
    server.stop().await;
}

#[tokio::test]
async fn no_network_no_host_no_api_port() {
    let server = Server::start().await;
    let port = server
        .base
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_string();
    let t = server
        .run(&sh(&format!(
            "ls /sys/class/net; \
             wget -q -T 3 -O- http://1.1.1.1/ 2>/dev/null; echo internet=$?; \
             wget -q -T 3 -O- http://172.17.0.1:{port}/healthz 2>/dev/null; echo host_api=$?; \
             wget -q -T 3 -O- http://127.0.0.1:{port}/healthz 2>/dev/null; echo loopback_api=$?"
        )))
        .await;
    let out = lines(&t);
    assert_eq!(out[0], "lo", "only loopback: {out:?}");
    for probe in ["internet", "host_api", "loopback_api"] {
        assert!(
            out.iter().any(|l| l.starts_with(probe)) && !out.contains(&format!("{probe}=0")),
            "{probe}: {out:?}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn a_fork_bomb_is_contained_and_others_still_run() {
    let server = Server::start().await;
    let mut bomb = sh("bomb() { bomb | bomb & }; bomb; sleep 30");
    bomb["timeout"] = json!(5);
    bomb["limits"] = json!({"pids": 64});
    let bomb_id = server.submit(&bomb).await;
    server.wait_state(&bomb_id, "RUNNING").await;
    let t = server.run(&sh("echo still fine")).await;
    assert_eq!(
        (t["state"].as_str(), t["stdout"].as_str()),
        (Some("FINISHED"), Some("still fine\n"))
    );
    let b = server.wait_ended(&bomb_id).await;
    assert!(
        matches!(b["state"].as_str(), Some("EXPIRED" | "FAILED")),
        "{b}"
    );
    let cid = b["container"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        common::wait_container_gone(&cid).await,
        "the bomb's container is gone"
    );
    assert_eq!(server.get("/healthz").await.status, 200);
    server.stop().await;
}

#[tokio::test]
async fn an_output_flood_is_capped_and_killed() {
    let server = Server::start_with(|c| c.max_output_bytes = 64 * 1024).await;
    let t = server.run(&sh("yes flood")).await;
    assert_eq!(t["state"], "FAILED", "{t}");
    assert_eq!(t["output_truncated"], true);
    assert_eq!(t["stdout"].as_str().map(str::len), Some(64 * 1024));
    assert!(
        t["error"]
            .as_str()
            .is_some_and(|e| e.contains("output passed")),
        "{t}"
    );
    let cid = t["container"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(common::wait_container_gone(&cid).await);
    server.stop().await;
}

#[tokio::test]
async fn filling_the_disk_stops_at_the_file_size_limit() {
    let server = Server::start_with(|c| c.max_file_bytes = 8 << 20).await;
    let t = server
        .run(&sh(
            "dd if=/dev/zero of=/big bs=1M count=512 2>/dev/null; echo rc=$?; wc -c < /big",
        ))
        .await;
    let out = lines(&t);
    assert!(out[0] != "rc=0", "dd must be stopped: {out:?}");
    assert_eq!(out[1].trim(), (8u64 << 20).to_string(), "{out:?}");
    server.stop().await;
}

#[tokio::test]
async fn a_memory_hog_is_reported_as_out_of_memory() {
    let server = Server::start().await;
    let t = server
        .run(&json!({"task_name": "hog", "image": PYTHON, "limits": {"memory_mb": 32},
                     "cmd_list": ["python3", "-c", "b = bytearray(512 * 1024 * 1024); print('survived')"]}))
        .await;
    assert_eq!(t["state"], "FAILED", "{t}");
    assert_eq!(t["exit_code"], 137);
    assert!(
        t["error"]
            .as_str()
            .is_some_and(|e| e.contains("out of memory")),
        "{t}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_setsid_daemon_goes_with_its_container_and_no_server_secret_is_visible() {
    let server = Server::start().await;
    let t = server
        .run(&sh(
            "setsid sh -c 'sleep 1000' </dev/null >/dev/null 2>&1 & echo started; env",
        ))
        .await;
    assert_eq!(t["state"], "FINISHED", "{t}");
    let cid = t["container"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        common::wait_container_gone(&cid).await,
        "the daemon's container is removed"
    );
    // The task's environment is the image's and the spec's, nothing of the server's.
    let env: Vec<String> = lines(&t).into_iter().skip(1).collect();
    let names: Vec<&str> = env
        .iter()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .collect();
    for name in &names {
        assert!(
            ["PATH", "HOSTNAME", "HOME", "PWD", "SHLVL", "TERM"].contains(name),
            "unexpected {name} in {env:?}"
        );
    }
    assert!(
        std::env::vars().any(|(k, _)| k.starts_with("CARGO")),
        "the test process itself has CARGO_* vars"
    );
    server.stop().await;
}

#[tokio::test]
async fn uri_resources_to_this_machine_or_private_networks_are_refused() {
    let server = Server::start().await;
    for uri in [
        "http://localhost/x",
        "http://127.0.0.1/x",
        "http://127.1.2.3:8080/x",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
        "http://172.16.0.1/",
        "http://192.168.0.1/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://0.0.0.0/",
    ] {
        let spec = json!({"task_name": "ssrf", "image": common::BUSYBOX, "cmd_list": ["true"],
                          "resource_list": [{"dest": "x", "uri": uri}]});
        server.post("/fn", &spec).await.assert_error(
            403,
            "uri_not_allowed",
            Some("resource_list[0].uri"),
        );
    }
    let spec = json!({"task_name": "ssrf", "image": common::BUSYBOX, "cmd_list": ["true"],
                      "resource_list": [{"dest": "x", "uri": "file:///etc/passwd"}]});
    server
        .post("/fn", &spec)
        .await
        .assert_error(400, "invalid_uri", Some("resource_list[0].uri"));
    let r = server.get("/fn").await;
    assert_eq!(r.body["tasks"], json!([]), "nothing stored");
    server.stop().await;
}

#[tokio::test]
async fn redirects_to_private_addresses_are_refused() {
    use warp::Filter;
    let to_metadata = warp::path!("r").map(|| {
        warp::redirect::temporary(warp::http::Uri::from_static(
            "http://169.254.169.254/latest/meta-data/",
        ))
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(warp::serve(to_metadata).incoming(listener).run());
    let server = Server::start_with(|c| c.allow_fetch = vec!["127.0.0.1".into()]).await;
    let t = server
        .run(
            &json!({"task_name": "redir", "image": common::BUSYBOX, "cmd_list": ["true"],
                     "resource_list": [{"dest": "x", "uri": format!("http://{addr}/r")}]}),
        )
        .await;
    common::assert_ended(&t, "FAILED", "redirect");
    server.stop().await;
}

#[tokio::test]
async fn read_only_root_and_a_non_root_user_when_the_operator_asks() {
    let server = Server::start_with(|c| {
        c.read_only_root = true;
        c.user = Some("65534:65534".into());
    })
    .await;
    let t = server
        .run(&json!({
            "task_name": "ro", "image": common::BUSYBOX, "pwd": "/work",
            "cmd_list": ["sh", "-c", "id -u; cat in.txt; echo x > /tmp/t && echo tmp=ok; \
                                      echo x > /etc/evil 2>/dev/null; echo root=$?"],
            "resource_list": [{"dest": "in.txt", "data": "placed\n"}]
        }))
        .await;
    assert_eq!(t["state"], "FINISHED", "{t}");
    assert_eq!(lines(&t), ["65534", "placed", "tmp=ok", "root=1"]);
    server.stop().await;
}

/// A tar holding one entry with a raw (unchecked) name and, for links, a target.
fn raw_tar(name: &str, kind: tar::EntryType, link: Option<&str>, data: &[u8]) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    let raw = name.as_bytes();
    h.as_old_mut().name[..raw.len()].copy_from_slice(raw);
    if let Some(l) = link {
        h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
    }
    h.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&h, data).expect("tar");
    b.into_inner().expect("tar")
}

#[tokio::test]
async fn hostile_archives_are_refused_when_submitted() {
    use base64::Engine as _;
    use std::io::Write;
    let server = Server::start_with(|c| c.max_extract_bytes = 1 << 20).await;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    // 32 MiB of zeros in a zip of a few tens of KiB.
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    z.start_file("zeros", opts).expect("zip");
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..32 {
        z.write_all(&chunk).expect("zip");
    }
    let bomb = z.finish().expect("zip").into_inner();
    assert!(bomb.len() < 200 * 1024);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "climbing entry",
            raw_tar("../evil", tar::EntryType::Regular, None, b"x"),
        ),
        (
            "absolute entry",
            raw_tar("/etc/evil", tar::EntryType::Regular, None, b"x"),
        ),
        (
            "symlink out",
            raw_tar("link", tar::EntryType::Symlink, Some("/etc"), b""),
        ),
        (
            "symlink climbing",
            raw_tar("a/link", tar::EntryType::Symlink, Some("../../etc"), b""),
        ),
        (
            "hard link",
            raw_tar("h", tar::EntryType::Link, Some("/etc/passwd"), b""),
        ),
        ("zip bomb", bomb),
        (
            "not an archive",
            b"this is plain text, not an archive".to_vec(),
        ),
    ];
    for (case, bytes) in cases {
        let spec = json!({"task_name": "arc", "image": common::BUSYBOX, "cmd_list": ["true"],
                          "resource_list": [{"dest": "app", "data": b64(&bytes), "encoding": "base64", "extract": true}]});
        let r = server.post("/fn", &spec).await;
        assert_eq!(
            (r.status, r.body["code"].as_str(), r.body["field"].as_str()),
            (400, Some("invalid_archive"), Some("resource_list[0].data")),
            "{case}: {}",
            r.body
        );
    }
    assert_eq!(
        server.get("/fn").await.body["tasks"],
        json!([]),
        "nothing stored"
    );
    server.stop().await;
}

/// `PUT /fn/{id}` checks what `POST /fn` checks before anything is written: an archive that
/// cannot be unpacked and a `uri` to this machine are refused, and the task stays as it was.
#[tokio::test]
async fn an_update_is_checked_like_a_submit() {
    use base64::Engine as _;
    let server = Server::start_with(|c| c.max_concurrent = 1).await;
    let running = server.submit(&common::sh("sleep 30")).await;
    server.wait_state(&running, "RUNNING").await;
    let spec = common::sh("echo queued");
    let queued = server.submit(&spec).await;
    let path = format!("/fn/{queued}");
    let garbage = base64::engine::general_purpose::STANDARD.encode(b"not an archive at all");
    let mut bad_archive = spec.clone();
    bad_archive["resource_list"] =
        json!([{"dest": "app", "data": garbage, "encoding": "base64", "extract": true}]);
    let r = server.put(&path, &bad_archive).await;
    r.assert_error(400, "invalid_archive", Some("resource_list[0].data"));
    let r = server
        .merge(
            &path,
            &json!({"resource_list": [{"dest": "x", "uri": "http://localhost/x"}]}),
        )
        .await;
    r.assert_error(403, "uri_not_allowed", Some("resource_list[0].uri"));
    let now = server.get(&path).await.body;
    assert_eq!((&now["state"], &now["spec"]), (&json!("PENDING"), &spec));
    for id in [&queued, &running] {
        assert_eq!(server.delete(&format!("/fn/{id}")).await.status, 200);
    }
    server.stop().await;
}
