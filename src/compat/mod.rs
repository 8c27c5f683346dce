//! The documented APIs of the systems ufaas replaces (API.md section 6, `seeds/`), served on
//! the named functions of [`crate::functions`]: FAAS, Backstage Functions, Faasm and tinyFaaS.
//! Each module only translates: a request becomes a deploy or an invocation of
//! [`Functions`], and what that gives becomes the answer the seed's clients expect. A
//! function deployed through any door is an ordinary function, seen and callable through
//! every other one.

use std::sync::Arc;

use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::Filter;

use crate::functions::Functions;

pub mod backstage;
pub mod faas;
pub mod faasm;
pub mod tinyfaas;

/// The namespace of a function named without one (FAAS, tinyFaaS).
pub const DEFAULT_NAMESPACE: &str = "default";

/// Every seed route of the main listener. They come after section 5's routes, so a path
/// both know (Backstage's `PUT /functions/{ns}/{name}`) is section 5's.
pub fn routes(functions: Arc<Functions>, limit: u64) -> BoxedFilter<(Response,)> {
    faas::routes(functions.clone(), limit)
        .or(backstage::routes(functions.clone(), limit))
        .unify()
        .or(faasm::routes(functions.clone(), limit))
        .unify()
        .or(tinyfaas::routes(functions, limit))
        .unify()
        .boxed()
}
