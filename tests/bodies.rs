//! A request body over `--max-body-bytes`, sent by real clients: each reads the 413, even a
//! client that sends its whole body before it reads anything (Python's `urllib`, curl
//! without `Expect`), and a client that never stops sending cannot hold the server.
mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{sh, Server};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// The server's limit in these tests.
const LIMIT: u64 = 1 << 20;

/// A body of four times the limit: more than the socket buffers between client and server
/// hold, so a client that sends it whole before reading is cut off unless the server reads it.
const OVER: usize = 4 << 20;

async fn server() -> Server {
    Server::start_with(|cfg| cfg.max_body_bytes = LIMIT).await
}

/// What a client got: the status, the `Connection` header and the body.
#[derive(Debug)]
struct Got {
    status: u16,
    connection: Option<String>,
    body: Value,
}

/// Asserts the 413 of an oversize body: JSON `payload_too_large`, and the connection closed,
/// since the rest of the body was not read.
#[track_caller]
fn assert_413(client: &str, got: &Got) {
    assert_eq!(got.status, 413, "{client}: {got:?}");
    assert_eq!(got.body["code"], "payload_too_large", "{client}: {got:?}");
    assert!(
        got.body["message"]
            .as_str()
            .is_some_and(|m| m.contains(&LIMIT.to_string())),
        "{client}: the message names the limit: {got:?}"
    );
    assert!(
        got.connection
            .as_deref()
            .is_some_and(|c| c.eq_ignore_ascii_case("close")),
        "{client}: Connection: close: {got:?}"
    );
}

/// Python's `urllib.request` posting `size` bytes, with Content-Length (`mode` "length") or
/// chunked ("chunked": an iterable body, which urllib sends so). It writes the whole body
/// before it reads the answer. Prints what it got as JSON.
const URLLIB: &str = r#"
import json, sys, urllib.error, urllib.request
url, size, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
body = b"x" * size
data = body if mode == "length" else (body[i:i + 65536] for i in range(0, size, 65536))
req = urllib.request.Request(
    url, data=data, method="POST", headers={"Content-Type": "application/json"})
try:
    with urllib.request.urlopen(req, timeout=60) as r:
        status, headers, text = r.status, r.headers, r.read()
except urllib.error.HTTPError as e:
    status, headers, text = e.code, e.headers, e.read()
print(json.dumps(
    {"status": status, "connection": headers.get("Connection"), "body": json.loads(text)}))
"#;

/// Runs `program` with `args` (60 s at most). python3 and curl are installed by
/// `tox-like-scripts/setup`: a missing one fails the test rather than skipping it.
async fn run(program: &str, args: &[&str]) -> Option<std::process::Output> {
    let child = tokio::process::Command::new(program)
        .args(args)
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(Duration::from_secs(60), child).await {
        Ok(Ok(out)) => Some(out),
        Ok(Err(e)) => panic!("{program} did not run (tox-like-scripts/setup installs it): {e}"),
        Err(_) => panic!("{program} {args:?} took more than 60 s"),
    }
}

async fn urllib(s: &Server, mode: &str) -> Option<Got> {
    let (url, size) = (s.url("/fn"), OVER.to_string());
    let out = run("python3", &["-c", URLLIB, &url, &size, mode]).await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "urllib ({mode}) failed: {}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(&stdout).expect("urllib prints JSON");
    Some(Got {
        status: v["status"].as_u64().unwrap_or_default() as u16,
        connection: v["connection"].as_str().map(str::to_string),
        body: v["body"].clone(),
    })
}

/// curl posting the file `body` with `headers` added.
async fn curl(s: &Server, body: &std::path::Path, headers: &[&str]) -> Option<Got> {
    let dir = tempfile::tempdir().expect("temp dir");
    let (head, answer) = (dir.path().join("head"), dir.path().join("body"));
    let data = format!("@{}", body.display());
    let mut args = vec!["-sS", "--max-time", "60", "--data-binary", &data];
    for h in headers {
        args.extend(["-H", h]);
    }
    let (head_s, answer_s) = (head.display().to_string(), answer.display().to_string());
    let url = s.url("/fn");
    args.extend(["-D", &head_s, "-o", &answer_s, "-w", "%{http_code}", &url]);
    let out = run("curl", &args).await?;
    assert!(
        out.status.success(),
        "curl {headers:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let head = std::fs::read_to_string(&head).expect("curl wrote the headers");
    // The last header line of that name: with `Expect`, a `100 Continue` block may come first.
    let connection = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.trim().eq_ignore_ascii_case("connection"))
        .map(|(_, v)| v.trim().to_string())
        .next_back();
    Some(Got {
        status: String::from_utf8_lossy(&out.stdout).parse().unwrap_or(0),
        connection,
        body: serde_json::from_slice(&std::fs::read(&answer).expect("curl wrote the body"))
            .unwrap_or(Value::Null),
    })
}

async fn reqwest_got(req: reqwest::RequestBuilder) -> Got {
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let connection = resp
        .headers()
        .get("connection")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = resp.json().await.unwrap_or(Value::Null);
    Got {
        status,
        connection,
        body,
    }
}

/// A body of `size` bytes in chunks of 64 KiB, with no Content-Length: sent chunked.
fn chunked(size: usize) -> reqwest::Body {
    counted(size, Arc::default())
}

/// [`chunked`], adding to `sent` the bytes the client took from it.
fn counted(size: usize, sent: Arc<AtomicUsize>) -> reqwest::Body {
    const CHUNK: usize = 64 << 10;
    let chunks = (0..size.div_ceil(CHUNK)).map(move |_| {
        sent.fetch_add(CHUNK, Ordering::Relaxed);
        Ok::<_, std::io::Error>(vec![b'x'; CHUNK])
    });
    reqwest::Body::wrap_stream(futures_util::stream::iter(chunks))
}

#[tokio::test]
async fn python_urllib_reads_the_413() {
    let s = server().await;
    for mode in ["length", "chunked"] {
        if let Some(got) = urllib(&s, mode).await {
            assert_413(&format!("urllib ({mode})"), &got);
        }
    }
    s.stop().await;
}

#[tokio::test]
async fn curl_reads_the_413() {
    let s = server().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("body.json");
    std::fs::write(&file, vec![b'x'; OVER]).expect("write body");
    #[rustfmt::skip]
    let cases: [(&str, &[&str]); 3] = [
        // Refused on its Content-Length before curl sends any of it.
        ("Expect: 100-continue", &["Expect: 100-continue"]),
        // The whole body sent before curl reads the answer.
        ("no Expect", &["Expect:"]),
        ("chunked", &["Expect:", "Transfer-Encoding: chunked"]),
    ];
    for (case, headers) in cases {
        if let Some(got) = curl(&s, &file, headers).await {
            assert_413(&format!("curl ({case})"), &got);
        }
    }
    s.stop().await;
}

#[tokio::test]
async fn reqwest_reads_the_413() {
    let s = server().await;
    let with_length = s.http.post(s.url("/fn")).body(vec![b'x'; OVER]);
    assert_413("reqwest (length)", &reqwest_got(with_length).await);
    let without = s.http.post(s.url("/fn")).body(chunked(OVER));
    assert_413("reqwest (chunked)", &reqwest_got(without).await);
    // Just over the limit, by one byte.
    let one_more = s
        .http
        .post(s.url("/fn"))
        .body(vec![b'x'; LIMIT as usize + 1]);
    assert_413("reqwest (limit + 1)", &reqwest_got(one_more).await);
    s.stop().await;
}

/// After a client that would not stop sending: the server answers, and runs a task.
async fn assert_server_fine(s: &Server) {
    let r = s.get("/healthz").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let t = s.run(&sh("echo fine")).await;
    assert_eq!(t["stdout"], "fine\n", "{t}");
}

#[tokio::test]
async fn a_body_far_past_the_drain_is_cut_off() {
    let s = server().await;
    const ENDLESS: usize = 64 << 20;
    let deadline = Duration::from_secs(30);
    // Chunked: read up to the drain's bound, then refused and the connection closed. The
    // client hears the 413 or, still sending, sees the connection close.
    let sent = Arc::new(AtomicUsize::new(0));
    let req = s
        .http
        .post(s.url("/fn"))
        .body(counted(ENDLESS, sent.clone()));
    match tokio::time::timeout(deadline, req.send()).await {
        Ok(Ok(resp)) => assert_eq!(resp.status(), 413),
        Ok(Err(e)) => eprintln!("chunked: the connection closed: {e}"),
        Err(_) => panic!("no answer to an endless chunked body in {deadline:?}"),
    }
    // The limit and the drain's 8 MiB, and what the socket buffers hold: not the whole body.
    let sent = sent.load(Ordering::Relaxed);
    eprintln!("chunked: the client sent {sent} bytes of {ENDLESS}");
    assert!(sent < ENDLESS / 2, "the server read {sent} bytes of it");
    // With a Content-Length past the drain's bound: refused at once, nothing read.
    let req = s
        .http
        .post(s.url("/fn"))
        .header("content-length", ENDLESS.to_string())
        .body(chunked(ENDLESS));
    match tokio::time::timeout(deadline, req.send()).await {
        Ok(Ok(resp)) => assert_eq!(resp.status(), 413),
        Ok(Err(e)) => eprintln!("length: the connection closed: {e}"),
        Err(_) => panic!("no answer to a 64 MiB Content-Length in {deadline:?}"),
    }
    assert_server_fine(&s).await;
    s.stop().await;
}

/// Sends the head of a chunked POST and one chunk just over the limit on a plain socket.
async fn oversize_chunked_head(s: &Server) -> tokio::net::TcpStream {
    let addr = s.base.trim_start_matches("http://");
    let mut sock = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let n = LIMIT as usize + 1;
    let mut req = format!(
        "POST /fn HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\n\r\n{n:x}\r\n"
    )
    .into_bytes();
    req.extend(std::iter::repeat_n(b'x', n));
    req.extend(b"\r\n");
    sock.write_all(&req).await.expect("send");
    sock
}

/// Reads until the server closes the connection (or resets it), failing after `secs`.
async fn read_until_closed(rd: &mut (impl AsyncReadExt + Unpin), secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout_at(deadline, rd.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "the server held the connection past {secs} s; got {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn a_body_that_stalls_past_the_limit_is_answered() {
    let s = server().await;
    // The client sends no more and does not end the body: the drain gives up on its clock.
    let mut sock = oversize_chunked_head(&s).await;
    let got = read_until_closed(&mut sock, 20).await;
    assert!(got.starts_with("HTTP/1.1 413"), "{got}");
    assert!(
        got.to_ascii_lowercase().contains("connection: close"),
        "{got}"
    );
    assert!(got.contains("payload_too_large"), "{got}");
    assert_server_fine(&s).await;
    s.stop().await;
}

#[tokio::test]
async fn a_body_that_trickles_for_ever_is_cut_off() {
    let s = server().await;
    let sock = oversize_chunked_head(&s).await;
    let (mut rd, mut wr) = sock.into_split();
    // One byte every 50 ms, never the end: too slow for the drain's byte bound, so only its
    // clock can end it. The pause paces the client; nothing waits on it.
    let writer = tokio::spawn(async move {
        let stop = Instant::now() + Duration::from_secs(60);
        while Instant::now() < stop && wr.write_all(b"1\r\nx\r\n").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    // The 413 may be lost to the reset that bytes sent after the close provoke; what counts
    // is that the server lets go of the connection.
    let got = read_until_closed(&mut rd, 20).await;
    eprintln!("trickle: got {:?}", got.lines().next());
    assert!(got.is_empty() || got.starts_with("HTTP/1.1 413"), "{got}");
    writer.abort();
    assert_server_fine(&s).await;
    s.stop().await;
}
