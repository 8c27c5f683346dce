//! A CoAP client for tests of the CoAP door: coap-lite packets on a UDP socket of its own.

use std::net::SocketAddr;
use std::time::Duration;

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType};
use tokio::net::UdpSocket;

/// A CoAP client on a socket of its own.
pub struct Coap {
    pub socket: UdpSocket,
    pub server: SocketAddr,
}

impl Coap {
    pub async fn new(server: SocketAddr) -> Coap {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        Coap { socket, server }
    }

    pub async fn send(&self, p: &Packet) {
        let bytes = p.to_bytes().expect("a request that serializes");
        self.socket
            .send_to(&bytes, self.server)
            .await
            .expect("send");
    }

    pub async fn send_raw(&self, bytes: &[u8]) {
        self.socket.send_to(bytes, self.server).await.expect("send");
    }

    /// The next datagram, within `secs`.
    pub async fn recv(&self, secs: u64) -> Option<Packet> {
        let mut buf = vec![0u8; 65536];
        let got = tokio::time::timeout(Duration::from_secs(secs), self.socket.recv(&mut buf)).await;
        match got {
            Ok(Ok(n)) => Some(Packet::from_bytes(&buf[..n]).expect("the server sent CoAP")),
            _ => None,
        }
    }

    /// Sends `p` and waits for its answer (matched by token).
    pub async fn call(&self, p: &Packet) -> Packet {
        self.send(p).await;
        let a = self.recv(60).await.expect("an answer");
        assert_eq!(a.get_token(), p.get_token(), "the answer's token");
        a
    }
}

pub fn request(
    kind: MessageType,
    method: RequestType,
    id: u16,
    path: &[&str],
    payload: &[u8],
) -> Packet {
    let mut p = Packet::new();
    p.header.set_version(1);
    p.header.set_type(kind);
    p.header.code = MessageClass::Request(method);
    p.header.message_id = id;
    p.set_token(id.to_be_bytes().to_vec());
    for seg in path {
        p.add_option(CoapOption::UriPath, seg.as_bytes().to_vec());
    }
    p.payload = payload.to_vec();
    p
}

pub fn con_get(id: u16, path: &[&str], payload: &[u8]) -> Packet {
    request(
        MessageType::Confirmable,
        RequestType::Get,
        id,
        path,
        payload,
    )
}
