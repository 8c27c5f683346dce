//! ufaas: a small, fast, single-binary FaaS and job runner. Tasks are JSON specs run in Docker
//! containers and tracked in SQLite; see `API.md` for the contract and README.rst for use.
//!
//! [`serve`] is the whole server as a library function: it takes a bound listener and a
//! shutdown future, so tests start it on port 0.

pub mod agent;
pub mod cli;
pub mod client;
pub mod compat;
pub mod config;
pub mod docker;
pub mod error;
pub mod events;
pub mod functions;
pub mod http;
pub mod model;
pub mod netguard;
pub mod resources;
pub mod runner;
pub mod spec;
pub mod store;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

use config::ServeConfig;
use docker::Engine;
use events::Events;
use runner::Runner;
use store::Store;

/// Every socket the server answers on: the main HTTP listener, and tinyFaaS's doors (its
/// HTTP gateway, gRPC and CoAP), each optional.
pub struct Listeners {
    pub http: TcpListener,
    pub gateway: Option<TcpListener>,
    pub grpc: Option<TcpListener>,
    pub coap: Option<tokio::net::UdpSocket>,
}

impl Listeners {
    /// Only the main listener.
    pub fn http(http: TcpListener) -> Listeners {
        Listeners {
            http,
            gateway: None,
            grpc: None,
            coap: None,
        }
    }

    /// Binds every listener `cfg` names; an error names the flag of the address that failed.
    pub async fn bind(cfg: &ServeConfig) -> anyhow::Result<Listeners> {
        use anyhow::Context as _;
        let http = TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("--listen {}", cfg.listen))?;
        let mut l = Listeners::http(http);
        if let Some(a) = cfg.gateway_listen.0 {
            l.gateway = Some(TcpListener::bind(a).await.with_context(|| {
                format!("--gateway-listen {a} (pass `--gateway-listen off` to serve no gateway)")
            })?);
        }
        if let Some(a) = cfg.grpc_listen.0 {
            l.grpc = Some(TcpListener::bind(a).await.with_context(|| {
                format!("--grpc-listen {a} (pass `--grpc-listen off` to serve no gRPC)")
            })?);
        }
        if let Some(a) = cfg.coap_listen.0 {
            l.coap = Some(tokio::net::UdpSocket::bind(a).await.with_context(|| {
                format!("--coap-listen {a} (pass `--coap-listen off` to serve no CoAP)")
            })?);
        }
        Ok(l)
    }
}

/// Runs the server on `listener` until `shutdown` completes, then ends running tasks and
/// removes every container it made.
pub async fn serve(
    cfg: ServeConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_all(cfg, Listeners::http(listener), shutdown).await
}

/// [`serve`] on every listener of `listeners`.
pub async fn serve_all(
    mut cfg: ServeConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let Listeners {
        http: listener,
        gateway,
        grpc,
        coap,
    } = listeners;
    // The configuration says which of tinyFaaS's doors are served and where (a port 0
    // resolved): tinyFaaS's upload answers with their URLs.
    cfg.gateway_listen = config::Listen(gateway.as_ref().and_then(|l| l.local_addr().ok()));
    cfg.grpc_listen = config::Listen(grpc.as_ref().and_then(|l| l.local_addr().ok()));
    cfg.coap_listen = config::Listen(coap.as_ref().and_then(|l| l.local_addr().ok()));
    // Tokens first: a bad token file, or an exposed address without any, stops the start
    // before anything is opened.
    let tokens = http::auth::Tokens::from_config(&mut cfg)?;
    http::auth::check_exposure(
        listener.local_addr()?,
        tokens.is_some(),
        cfg.insecure_no_auth,
    )?;
    for addr in [
        gateway.as_ref().map(|l| l.local_addr()),
        grpc.as_ref().map(|l| l.local_addr()),
        coap.as_ref().map(|l| l.local_addr()),
    ]
    .into_iter()
    .flatten()
    {
        http::auth::check_exposure(addr?, tokens.is_some(), cfg.insecure_no_auth)?;
    }
    if let Some(t) = &tokens {
        tracing::info!(
            tokens = t.len(),
            "every request needs Authorization: Bearer"
        );
    }
    let events = Events::new(cfg.ws_queue as usize);
    let store = Store::open(&cfg.db, events).await?;
    let instance = store.instance_id().await?;
    let engine = Arc::new(Engine::new(cfg.docker_host.as_deref()));
    if let Err(e) = engine.ping().await {
        tracing::warn!(error = %e, "Docker does not answer yet; /readyz says 503 until it does");
    }
    let send_buffer = cfg.socket_send_buffer;
    let hardening = cfg.hardening()?;
    netguard::FetchGuard::new(&cfg.allow_fetch)
        .map_err(|e| anyhow::anyhow!("--allow-fetch: {e}"))?;
    let agent_mount = if cfg.agent_upload {
        agent::AgentMount::Upload
    } else {
        agent_mount(&engine, &cfg.db)
    };
    let runner = Runner::new(store, engine, cfg, instance, hardening, agent_mount)?;
    runner.start().await?;
    let functions = functions::Functions::new(runner.clone())?;
    functions.start().await?;
    tracing::info!(addr = %listener.local_addr()?, "ufaas listening");
    // tinyFaaS's doors stop with the rest: cancelled when the shutdown signal comes.
    let doors = tokio_util::sync::CancellationToken::new();
    if let Some(l) = gateway {
        tracing::info!(addr = %l.local_addr()?, "tinyFaaS gateway listening");
        tokio::spawn(compat::tinyfaas::gateway::serve(
            l,
            functions.clone(),
            tokens.clone(),
            doors.clone(),
        ));
    }
    if let Some(l) = grpc {
        tracing::info!(addr = %l.local_addr()?, "tinyFaaS gRPC listening");
        tokio::spawn(compat::tinyfaas::grpc::serve(
            l,
            functions.clone(),
            tokens.clone(),
            doors.clone(),
        ));
    }
    if let Some(s) = coap {
        tracing::info!(addr = %s.local_addr()?, "tinyFaaS CoAP listening");
        tokio::spawn(compat::tinyfaas::coap::serve(
            s,
            functions.clone(),
            tokens.clone(),
            doors.clone(),
        ));
    }
    // On the signal, the runner stops first so that requests held by `?wait=` are answered
    // and the HTTP server's graceful shutdown does not wait on them.
    let stopping = runner.clone();
    let signal = async move {
        shutdown.await;
        doors.cancel();
        stopping.begin_shutdown();
    };
    bound_send_buffer(&listener, send_buffer);
    let server = warp::serve(http::routes(runner.clone(), functions, tokens))
        .incoming(listener)
        .graceful(signal)
        .run();
    // Graceful shutdown waits for open connections; one that never sends a request would
    // hold it for ever, so after the signal they get a few seconds, then are dropped.
    tokio::pin!(server);
    tokio::select! {
        _ = &mut server => {}
        _ = async {
            runner.stopping().await;
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        } => tracing::warn!("connections still open 5 s after the shutdown signal; closing them"),
    }
    runner.shutdown().await;
    Ok(())
}

/// A local engine bind-mounts the agent from a file beside the database (no copy per
/// container); a remote one, or when the file cannot be written, gets it uploaded.
fn agent_mount(engine: &Engine, db: &std::path::Path) -> agent::AgentMount {
    if !engine.is_local() {
        return agent::AgentMount::Upload;
    }
    let dir = db
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    match std::fs::canonicalize(dir).and_then(|d| agent::install(&d)) {
        Ok(path) => agent::AgentMount::Bind(path),
        Err(e) => {
            tracing::warn!(error = %e, "cannot write the agent beside the database; uploading it to each container");
            agent::AgentMount::Upload
        }
    }
}

/// Every accepted connection gets a bounded kernel send buffer (Linux hands the listening
/// socket's SO_SNDBUF on to the sockets it accepts): a client that stops reading (a stuck
/// WebSocket subscriber) pins at most that much kernel memory before its session blocks and,
/// past `--ws-queue` events, is told it lagged. Without it Linux lets each socket's buffer
/// grow to megabytes.
fn bound_send_buffer(listener: &TcpListener, send_buffer: usize) {
    if send_buffer > 0 {
        if let Err(e) = socket2::SockRef::from(listener).set_send_buffer_size(send_buffer) {
            tracing::warn!(error = %e, "could not set the send buffer");
        }
    }
}

#[cfg(test)]
mod tests {
    /// warp 0.4 takes a bound listener as it is (no hook per accepted connection), so the
    /// per-connection send buffer relies on Linux handing the listener's SO_SNDBUF on to
    /// every socket it accepts.
    #[tokio::test]
    async fn accepted_sockets_inherit_the_listeners_send_buffer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        super::bound_send_buffer(&listener, 16 * 1024);
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("addr: {e}"));
        let client = tokio::net::TcpStream::connect(addr);
        let (accepted, _client) = tokio::join!(listener.accept(), client);
        let (stream, _) = accepted.unwrap_or_else(|e| panic!("accept: {e}"));
        let size = socket2::SockRef::from(&stream)
            .send_buffer_size()
            .unwrap_or_else(|e| panic!("SO_SNDBUF: {e}"));
        // Linux doubles what is set, for its own bookkeeping; the default is far larger.
        assert!(size <= 2 * 16 * 1024, "send buffer {size}");
    }
}
