//! The router's half of the route table: the handler of each entry of
//! [`crate::route_table::ROUTES`] (the data the OpenAPI document is built from
//! too).

use axum::routing::{get, post, MethodRouter};
use axum::Router;

pub use crate::route_table::RouteSpec;
use crate::route_table::ROUTES;
use crate::state::AppState;
use crate::{
    activity, aggregates, budgets, coverage, erasures, export, health, openapi, rejected, stats,
    stream, taxonomy, tokens, verify, whoami,
};

/// The handler of `spec` (`None`: a table entry without one, which
/// `every_route_has_a_handler` refuses).
fn handler(spec: &RouteSpec) -> Option<MethodRouter<AppState>> {
    Some(match (spec.method, spec.path) {
        ("GET", "/healthz") => get(health::healthz),
        ("GET", "/readyz") => get(health::readyz),
        ("GET", "/api/v1/openapi.json") => get(openapi::document),
        ("GET", "/api/v1/whoami") => get(whoami::whoami),
        ("GET", "/api/v1/activity") => get(activity::list),
        ("GET", "/api/v1/activity/stream") => get(stream::activity_stream),
        ("GET", "/api/v1/activity/aggregates") => get(aggregates::activity_aggregates),
        ("GET", "/api/v1/tokens") => get(tokens::list),
        ("GET", "/api/v1/tokens/stream") => get(stream::tokens_stream),
        ("GET", "/api/v1/tokens/usage") => get(aggregates::token_usage),
        ("GET", "/api/v1/tokens/coverage") => get(coverage::coverage),
        ("GET", "/api/v1/stats") => get(stats::stats),
        ("GET", "/api/v1/budgets") => get(budgets::list),
        ("GET", "/api/v1/budgets/check") => get(budgets::check),
        ("GET", "/api/v1/stats/stream") => get(stream::stats::stats_stream),
        ("GET", "/api/v1/export") => get(export::export),
        ("GET", "/api/v1/taxonomy") => get(taxonomy::current),
        ("GET", "/api/v1/rejected") => get(rejected::list),
        ("POST", "/api/v1/rejected/replay") => post(rejected::replay),
        ("POST", "/api/v1/erasures") => post(erasures::erase),
        ("GET", "/api/v1/erasures") => get(erasures::list),
        ("GET", "/api/v1/verify") => get(verify::verify),
        _ => return None,
    })
}

/// The router of every route in the table with its handler.
pub(crate) fn router() -> Router<AppState> {
    ROUTES
        .iter()
        .fold(Router::new(), |router, spec| match handler(spec) {
            Some(handler) => router.route(spec.path, handler),
            None => {
                tracing::error!(
                    method = spec.method,
                    path = spec.path,
                    "a route of the table has no handler; not served"
                );
                router
            }
        })
}

/// What the router serves: method, path and query parameters of every route.
pub fn served() -> Vec<RouteSpec> {
    ROUTES
        .iter()
        .filter(|spec| handler(spec).is_some())
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_has_a_handler() {
        for spec in ROUTES {
            assert!(
                handler(spec).is_some(),
                "{} {} has no handler",
                spec.method,
                spec.path
            );
        }
        assert_eq!(served().len(), ROUTES.len());
    }
}
