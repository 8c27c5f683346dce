//! tinyFaaS's gRPC and CoAP doors (API.md section 6) against a real server and real runtimes:
//! functions deployed through section 5 are called with the generated tonic client and with
//! CoAP messages written by coap-lite on a UDP socket.

mod common;

use coap_lite::block_handler::BlockValue;
use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use serde_json::{json, Value};
use tonic::metadata::MetadataValue;
use tonic::Code;

use common::coap::{con_get, request, Coap};
use common::*;
use ufaas::compat::tinyfaas::grpc::proto::tiny_faa_s_client::TinyFaaSClient;
use ufaas::compat::tinyfaas::grpc::proto::Data;

/// tinyFaaS's own test functions (test/fns), in the shapes they have there.
const ECHO_PY: &str = "def fn(input, headers):\n    return input\n";
const SIEVE_JS: &str = r#"module.exports = (req, res) => {
  const max = 10000;
  let sieve = [], i, j, primes = [];
  for (i = 2; i <= max; ++i) {
    if (!sieve[i]) {
      primes.push(i);
      for (j = i << 1; j <= max; j += i) {
        sieve[j] = true;
      }
    }
  }
  let response = ("Found " + primes.length + " primes under " + max);
  console.log(response);
  res.send(response + "\n");
}
"#;
const HEADERS_JS: &str = "module.exports = (req, res) => { res.send(req.headers); }\n";

async fn deploy(s: &Server, name: &str, body: Value) {
    let r = s.put(&format!("/functions/{name}"), &body).await;
    assert!(
        r.status == 201 || r.status == 200,
        "deploy of {name} answered {}: {}",
        r.status,
        r.body
    );
}

async fn grpc(s: &Server) -> TinyFaaSClient<tonic::transport::Channel> {
    let addr = s.grpc.expect("a server with gRPC");
    TinyFaaSClient::connect(format!("http://{addr}"))
        .await
        .expect("gRPC connect")
}

fn data(function: &str, input: &str) -> tonic::Request<Data> {
    tonic::Request::new(Data {
        function_identifier: function.into(),
        data: input.into(),
    })
}

/// How many times `ns/name` was invoked, from its view.
async fn invocations(s: &Server, function: &str) -> i64 {
    let v = s.get(&format!("/functions/{function}")).await.body;
    v["invocations"]["total"]
        .as_i64()
        .unwrap_or_else(|| panic!("no invocation count in {v}"))
}

#[tokio::test]
async fn grpc_invokes_functions_with_data_and_metadata() {
    let s = Server::start_with_doors(Doors::all(), |_| {}).await;
    deploy(
        &s,
        "default/echo",
        json!({"runtime": "python", "code": ECHO_PY}),
    )
    .await;
    deploy(
        &s,
        "default/sieve",
        json!({"runtime": "node", "code": SIEVE_JS}),
    )
    .await;
    deploy(
        &s,
        "default/headersjs",
        json!({"runtime": "node", "code": HEADERS_JS}),
    )
    .await;
    deploy(
        &s,
        "default/echosh",
        json!({"runtime": "shell", "code": "cat\n"}),
    )
    .await;
    deploy(
        &s,
        "team/echo",
        json!({"runtime": "shell", "code": "printf 'team:'; cat\n"}),
    )
    .await;
    let mut c = grpc(&s).await;

    let r = c.request(data("echo", "Hello World!")).await.expect("echo");
    let id = r
        .metadata()
        .get("x-ufaas-task-id")
        .and_then(|v| v.to_str().ok())
        .expect("x-ufaas-task-id")
        .to_string();
    assert_eq!(r.into_inner().response, "Hello World!");
    // An ordinary invocation: a task record naming the function.
    let task = s.get(&format!("/fn/{id}")).await.body;
    assert_eq!(task["state"], "FINISHED", "{task}");
    assert_eq!(task["function"]["name"], "echo", "{task}");
    assert_eq!(task["function"]["namespace"], "default", "{task}");

    let r = c.request(data("sieve", "")).await.expect("sieve");
    assert_eq!(r.into_inner().response, "Found 1229 primes under 10000\n");

    let mut req = data("headersjs", "");
    req.metadata_mut().insert(
        "lab",
        MetadataValue::from_static("scalable_software_systems_group"),
    );
    // Binary metadata has no header form: it is left out.
    req.metadata_mut()
        .insert_bin("trace-bin", MetadataValue::from_bytes(&[0, 159, 146, 150]));
    let r = c.request(req).await.expect("headers");
    let headers: Value = serde_json::from_str(&r.into_inner().response).expect("JSON headers");
    assert_eq!(
        headers["lab"], "scalable_software_systems_group",
        "{headers}"
    );
    assert!(
        headers["user-agent"]
            .as_str()
            .is_some_and(|u| u.contains("tonic")),
        "{headers}"
    );
    assert!(headers.get("te").is_none(), "{headers}");
    assert!(headers.get("trace-bin").is_none(), "{headers}");

    let r = c
        .request(data("echosh", "from shell"))
        .await
        .expect("shell");
    assert_eq!(r.into_inner().response, "from shell");
    let r = c.request(data("team/echo", "x")).await.expect("team/echo");
    assert_eq!(r.into_inner().response, "team:x");
    s.stop().await;
}

#[tokio::test]
async fn grpc_errors_are_statuses() {
    let s = Server::start_with_doors(Doors::all(), |_| {}).await;
    deploy(
        &s,
        "default/boom",
        json!({"runtime": "python", "code": "def fn(input):\n    raise ValueError('no ' + input)\n"}),
    )
    .await;
    deploy(
        &s,
        "default/slow",
        json!({"runtime": "shell", "code": "sleep 5\n", "timeout": 1}),
    )
    .await;
    deploy(
        &s,
        "default/bytes",
        json!({"runtime": "shell", "code": "printf '\\377\\376'\n"}),
    )
    .await;
    let mut c = grpc(&s).await;

    let e = c.request(data("nothere", "x")).await.expect_err("unknown");
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().contains("default/nothere"), "{e:?}");
    for bad in ["", "/", "Echo", "a/b/c", "../x", "team/"] {
        let e = c.request(data(bad, "x")).await.expect_err("bad identifier");
        assert_eq!(e.code(), Code::InvalidArgument, "{bad:?}: {e:?}");
    }

    let e = c.request(data("boom", "luck")).await.expect_err("raises");
    assert_eq!(e.code(), Code::Internal, "{e:?}");
    assert!(e.message().contains("no luck"), "{e:?}");
    let id = e
        .metadata()
        .get("x-ufaas-task-id")
        .and_then(|v| v.to_str().ok())
        .expect("x-ufaas-task-id on an error")
        .to_string();
    assert_eq!(s.get(&format!("/fn/{id}")).await.body["state"], "FAILED");

    let e = c.request(data("slow", "")).await.expect_err("times out");
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");

    let e = c.request(data("bytes", "")).await.expect_err("not UTF-8");
    assert_eq!(e.code(), Code::Internal, "{e:?}");
    assert!(e.message().contains("UTF-8"), "{e:?}");

    // The door stops with the server.
    let addr = s.grpc.expect("a server with gRPC");
    s.stop().await;
    assert!(
        TinyFaaSClient::connect(format!("http://{addr}"))
            .await
            .is_err(),
        "the gRPC door still answers after the stop"
    );
}

#[tokio::test]
async fn grpc_wants_the_token_when_the_server_has_one() {
    let s = Server::start_with_doors(Doors::all(), |c| c.token = Some("s3cret-token".into())).await;
    deploy(
        &s,
        "default/headersjs",
        json!({"runtime": "node", "code": HEADERS_JS}),
    )
    .await;
    let mut c = grpc(&s).await;

    let e = c
        .request(data("headersjs", ""))
        .await
        .expect_err("no token");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let mut req = data("headersjs", "");
    req.metadata_mut()
        .insert("authorization", MetadataValue::from_static("Bearer wrong"));
    let e = c.request(req).await.expect_err("wrong token");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    // Unknown functions are not told apart without a token.
    let e = c.request(data("nothere", "")).await.expect_err("no token");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");

    let mut req = data("headersjs", "");
    req.metadata_mut().insert(
        "authorization",
        MetadataValue::from_static("Bearer s3cret-token"),
    );
    let r = c.request(req).await.expect("with the token");
    let headers: Value = serde_json::from_str(&r.into_inner().response).expect("JSON headers");
    assert!(headers.get("user-agent").is_some(), "{headers}");
    assert!(
        headers.get("authorization").is_none(),
        "the token reached the handler: {headers}"
    );
    s.stop().await;
}

#[track_caller]
fn assert_answer(a: &Packet, code: ResponseType, payload: &str) {
    assert_eq!(
        a.header.code,
        MessageClass::Response(code),
        "payload {:?}",
        String::from_utf8_lossy(&a.payload)
    );
    assert_eq!(String::from_utf8_lossy(&a.payload), payload);
}

#[tokio::test]
async fn coap_invokes_functions_and_answers_with_their_codes() {
    let s = Server::start_with_doors(Doors::all(), |_| {}).await;
    deploy(
        &s,
        "default/echo",
        json!({"runtime": "python", "code": ECHO_PY}),
    )
    .await;
    deploy(
        &s,
        "default/sieve",
        json!({"runtime": "node", "code": SIEVE_JS}),
    )
    .await;
    deploy(
        &s,
        "default/echosh",
        json!({"runtime": "shell", "code": "cat\n"}),
    )
    .await;
    deploy(
        &s,
        "default/boom",
        json!({"runtime": "python", "code": "def fn(input):\n    raise ValueError('no ' + input)\n"}),
    )
    .await;
    let c = Coap::new(s.coap.expect("a server with CoAP")).await;

    // CON: the answer is piggybacked on the ACK, same id and token.
    let a = c.call(&con_get(100, &["echo"], b"Hello World!")).await;
    assert_eq!(a.header.get_type(), MessageType::Acknowledgement);
    assert_eq!(a.header.message_id, 100);
    assert_answer(&a, ResponseType::Content, "Hello World!");

    // NON: a NON answer with the token.
    let p = request(
        MessageType::NonConfirmable,
        RequestType::Post,
        101,
        &["echosh"],
        b"non",
    );
    let a = c.call(&p).await;
    assert_eq!(a.header.get_type(), MessageType::NonConfirmable);
    assert_answer(&a, ResponseType::Content, "non");

    let a = c.call(&con_get(102, &["sieve"], b"")).await;
    assert_answer(&a, ResponseType::Content, "Found 1229 primes under 10000\n");

    let a = c.call(&con_get(103, &["nothere"], b"x")).await;
    assert_eq!(
        a.header.code,
        MessageClass::Response(ResponseType::NotFound)
    );
    assert!(String::from_utf8_lossy(&a.payload).contains("default/nothere"));

    let a = c.call(&con_get(104, &["boom"], b"luck")).await;
    assert_eq!(
        a.header.code,
        MessageClass::Response(ResponseType::InternalServerError)
    );
    assert!(String::from_utf8_lossy(&a.payload).contains("no luck"));

    let put = request(
        MessageType::Confirmable,
        RequestType::Put,
        105,
        &["echo"],
        b"x",
    );
    let a = c.call(&put).await;
    assert_eq!(
        a.header.code,
        MessageClass::Response(ResponseType::MethodNotAllowed)
    );

    for (i, path) in [&[][..], &["Echo"], &["a", "b", "c"]].iter().enumerate() {
        let a = c.call(&con_get(110 + i as u16, path, b"x")).await;
        assert_eq!(
            a.header.code,
            MessageClass::Response(ResponseType::BadRequest),
            "{path:?}"
        );
    }
    // A path segment that is not UTF-8.
    let mut p = con_get(120, &[], b"x");
    p.add_option(CoapOption::UriPath, vec![0xff, 0xfe]);
    let a = c.call(&p).await;
    assert_eq!(
        a.header.code,
        MessageClass::Response(ResponseType::BadRequest)
    );
    s.stop().await;
}

#[tokio::test]
async fn coap_retransmissions_run_once_and_bad_datagrams_do_not_stop_the_loop() {
    let s = Server::start_with_doors(Doors::all(), |_| {}).await;
    deploy(
        &s,
        "default/slowecho",
        json!({"runtime": "shell", "code": "sleep 1; cat\n"}),
    )
    .await;
    let c = Coap::new(s.coap.expect("a server with CoAP")).await;

    // The same CON three times: twice while it runs, once after its answer.
    let p = con_get(7, &["slowecho"], b"once");
    c.send(&p).await;
    c.send(&p).await;
    let a = c.recv(60).await.expect("the answer");
    assert_answer(&a, ResponseType::Content, "once");
    c.send(&p).await;
    let again = c.recv(10).await.expect("the answer again");
    assert_eq!(again.header.message_id, 7);
    assert_answer(&again, ResponseType::Content, "once");
    assert_eq!(invocations(&s, "default/slowecho").await, 1);
    // The copy sent while it ran got no second answer.
    assert!(c.recv(2).await.is_none(), "a second answer came");

    // Not CoAP at all: dropped. A CON whose option is cut short (option 11, 5 bytes long,
    // with 2 bytes): a Reset.
    c.send_raw(b"hello there").await;
    c.send_raw(&[0x40, 0x01, 0x12, 0x34, 0xb5, b'a', b'b'])
        .await;
    let r = c.recv(10).await.expect("a reset");
    assert_eq!(r.header.get_type(), MessageType::Reset);
    assert_eq!(r.header.message_id, 0x1234);
    // A CoAP ping (an empty CON): a Reset.
    c.send_raw(&[0x40, 0x00, 0x00, 0x09]).await;
    let r = c.recv(10).await.expect("a reset to the ping");
    assert_eq!(r.header.get_type(), MessageType::Reset);
    assert_eq!(r.header.message_id, 9);
    // The loop still answers, and a new id is a new call.
    let a = c.call(&con_get(8, &["slowecho"], b"twice")).await;
    assert_answer(&a, ResponseType::Content, "twice");
    assert_eq!(invocations(&s, "default/slowecho").await, 2);
    s.stop().await;
}

/// The whole output of an answer that may come in Block2 blocks: asks for the blocks after
/// `first` with `method` (ids from `id`).
async fn rest_of(
    c: &Coap,
    first: Packet,
    method: RequestType,
    path: &[&str],
    mut id: u16,
) -> Vec<u8> {
    let mut got = first.payload.clone();
    let mut block = match first.get_first_option_as::<BlockValue>(CoapOption::Block2) {
        None => return got,
        Some(b) => b.expect("a valid Block2 option"),
    };
    let last = id + 100;
    while block.more {
        let mut p = request(MessageType::Confirmable, method, id, path, b"");
        let next = BlockValue::new(usize::from(block.num) + 1, false, block.size())
            .expect("a block value");
        p.add_option_as(CoapOption::Block2, next);
        let a = c.call(&p).await;
        assert_eq!(a.header.code, MessageClass::Response(ResponseType::Content));
        block = a
            .get_first_option_as::<BlockValue>(CoapOption::Block2)
            .expect("a Block2 option")
            .expect("a valid Block2 option");
        got.extend_from_slice(&a.payload);
        id += 1;
        assert!(id < last, "too many blocks");
    }
    got
}

#[tokio::test]
async fn coap_moves_large_inputs_and_outputs_in_blocks() {
    let s = Server::start_with_doors(Doors::all(), |_| {}).await;
    deploy(
        &s,
        "default/big",
        json!({"runtime": "python", "code": "def fn(input):\n    return ''.join(chr(97 + i % 26) for i in range(5000))\n"}),
    )
    .await;
    deploy(
        &s,
        "default/echosh",
        json!({"runtime": "shell", "code": "cat\n"}),
    )
    .await;
    let want: String = (0..5000).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    let c = Coap::new(s.coap.expect("a server with CoAP")).await;

    // An output of 5000 bytes: Block2.
    let first = c.call(&con_get(300, &["big"], b"")).await;
    assert_eq!(
        first.header.code,
        MessageClass::Response(ResponseType::Content)
    );
    assert!(
        first.get_option(CoapOption::Block2).is_some(),
        "not in blocks"
    );
    let got = rest_of(&c, first, RequestType::Get, &["big"], 301).await;
    assert_eq!(String::from_utf8_lossy(&got), want);
    // One invocation for all its blocks.
    assert_eq!(invocations(&s, "default/big").await, 1);

    // An input of 3000 bytes in Block1 blocks of 1024; its echo comes back in Block2.
    let input: Vec<u8> = (0..3000).map(|i| b'0' + (i % 10) as u8).collect();
    let mut answer = None;
    for (num, chunk) in input.chunks(1024).enumerate() {
        let more = (num + 1) * 1024 < input.len();
        let mut p = request(
            MessageType::Confirmable,
            RequestType::Post,
            400 + num as u16,
            &["echosh"],
            chunk,
        );
        p.add_option_as(
            CoapOption::Block1,
            BlockValue::new(num, more, 1024).expect("a block value"),
        );
        let a = c.call(&p).await;
        if more {
            assert_eq!(
                a.header.code,
                MessageClass::Response(ResponseType::Continue),
                "block {num}"
            );
        } else {
            answer = Some(a);
        }
    }
    let last = answer.expect("the answer to the last block");
    assert_eq!(
        last.header.code,
        MessageClass::Response(ResponseType::Content)
    );
    let got = rest_of(&c, last, RequestType::Post, &["echosh"], 410).await;
    assert_eq!(got, input);
    assert_eq!(invocations(&s, "default/echosh").await, 1);

    // A Block1 transfer that would pass 1 MiB is refused at once.
    let mut p = request(
        MessageType::Confirmable,
        RequestType::Post,
        500,
        &["echosh"],
        &[b'x'; 1024],
    );
    p.add_option_as(
        CoapOption::Block1,
        BlockValue::new(1024, true, 1024).expect("a block value"),
    );
    let a = c.call(&p).await;
    assert_eq!(
        a.header.code,
        MessageClass::Response(ResponseType::RequestEntityTooLarge)
    );
    assert_eq!(invocations(&s, "default/echosh").await, 1);
    s.stop().await;
}

#[tokio::test]
async fn coap_runs_each_call_on_its_own_task() {
    let s = Server::start_with_doors(Doors::all(), |_| {}).await;
    deploy(
        &s,
        "default/slow",
        json!({"runtime": "shell", "code": "sleep 5; echo slow\n"}),
    )
    .await;
    deploy(
        &s,
        "default/fast",
        json!({"runtime": "shell", "code": "echo fast\n"}),
    )
    .await;
    let c = Coap::new(s.coap.expect("a server with CoAP")).await;
    c.send(&con_get(1, &["slow"], b"")).await;
    c.send(&con_get(2, &["fast"], b"")).await;
    let first = c.recv(60).await.expect("an answer");
    assert_answer(&first, ResponseType::Content, "fast\n");
    let second = c.recv(60).await.expect("an answer");
    assert_answer(&second, ResponseType::Content, "slow\n");
    s.stop().await;
}
