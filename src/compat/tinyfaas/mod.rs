//! tinyFaaS (`seeds/tinyfaas.md`): its management routes on the main listener (`/upload`,
//! `/uploadURL`, `/list`, `/delete`, `/wipe`, `/logs`), and its three doors for calls, each
//! on a listener of its own: the HTTP [`gateway`], [`grpc`] and [`coap`].

use std::sync::Arc;

use warp::filters::BoxedFilter;
use warp::reply::Response;

use crate::functions::Functions;

pub mod coap;
pub mod gateway;
pub mod grpc;

/// The management routes.
pub fn routes(functions: Arc<Functions>, limit: u64) -> BoxedFilter<(Response,)> {
    let _ = (functions, limit);
    super::none()
}
