//! Backstage Functions (`seeds/backstage-functions.txt`): the env routes, `/run` and the pipeline by `steps[N]`.

use std::sync::Arc;

use warp::filters::BoxedFilter;
use warp::reply::Response;

use crate::functions::Functions;

/// Every route of this seed.
pub fn routes(functions: Arc<Functions>, limit: u64) -> BoxedFilter<(Response,)> {
    let _ = (functions, limit);
    super::none()
}
