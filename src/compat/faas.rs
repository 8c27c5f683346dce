//! FAAS (`seeds/faas.txt`): `POST /functions/` deploys a base64 tar, `POST /functions/{name}` invokes.

use std::sync::Arc;

use warp::filters::BoxedFilter;
use warp::reply::Response;

use crate::functions::Functions;

/// Every route of this seed.
pub fn routes(functions: Arc<Functions>, limit: u64) -> BoxedFilter<(Response,)> {
    let _ = (functions, limit);
    super::none()
}
