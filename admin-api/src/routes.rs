//! Every route the admin API serves, in one table: the router is built from it,
//! and so is the list of operations in the OpenAPI document, each with the
//! query parameters its handler accepts (the same constants the handlers check
//! requests against).

use axum::routing::{get, post, MethodRouter};

use crate::state::AppState;
use crate::{
    activity, aggregates, budgets, coverage, erasures, export, health, openapi, rejected, stats,
    stream, taxonomy, tokens, verify, whoami,
};

/// One route as documented: its method, path and accepted query parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteSpec {
    /// `GET` or `POST`.
    pub method: &'static str,
    /// The path, e.g. `/api/v1/activity`.
    pub path: &'static str,
    /// The query parameters the handler accepts; any other is answered 400
    /// where the handler checks (all `/api/v1/` data routes).
    pub query: &'static [&'static str],
}

/// A route with its handler.
pub(crate) struct Route {
    pub(crate) spec: RouteSpec,
    pub(crate) handler: MethodRouter<AppState>,
}

fn route(
    method: &'static str,
    path: &'static str,
    query: &'static [&'static str],
    handler: MethodRouter<AppState>,
) -> Route {
    Route {
        spec: RouteSpec {
            method,
            path,
            query,
        },
        handler,
    }
}

/// The table. Adding a route here serves it and lists it in the OpenAPI
/// document (the tests then insist on its description there).
pub(crate) fn table() -> Vec<Route> {
    const NONE: &[&str] = &[];
    vec![
        route("GET", "/healthz", NONE, get(health::healthz)),
        route("GET", "/readyz", NONE, get(health::readyz)),
        route("GET", "/api/v1/openapi.json", NONE, get(openapi::document)),
        route("GET", "/api/v1/whoami", NONE, get(whoami::whoami)),
        route(
            "GET",
            "/api/v1/activity",
            activity::PARAMETERS,
            get(activity::list),
        ),
        route(
            "GET",
            "/api/v1/activity/stream",
            stream::ACTIVITY_STREAM_PARAMETERS,
            get(stream::activity_stream),
        ),
        route(
            "GET",
            "/api/v1/activity/aggregates",
            aggregates::ACTIVITY_AGGREGATE_PARAMETERS,
            get(aggregates::activity_aggregates),
        ),
        route(
            "GET",
            "/api/v1/tokens",
            tokens::PARAMETERS,
            get(tokens::list),
        ),
        route(
            "GET",
            "/api/v1/tokens/stream",
            stream::TOKEN_STREAM_PARAMETERS,
            get(stream::tokens_stream),
        ),
        route(
            "GET",
            "/api/v1/tokens/usage",
            aggregates::TOKEN_USAGE_PARAMETERS,
            get(aggregates::token_usage),
        ),
        route(
            "GET",
            "/api/v1/tokens/coverage",
            coverage::PARAMETERS,
            get(coverage::coverage),
        ),
        route("GET", "/api/v1/stats", stats::PARAMETERS, get(stats::stats)),
        route(
            "GET",
            "/api/v1/budgets",
            budgets::LIST_PARAMETERS,
            get(budgets::list),
        ),
        route(
            "GET",
            "/api/v1/budgets/check",
            budgets::CHECK_PARAMETERS,
            get(budgets::check),
        ),
        route(
            "GET",
            "/api/v1/stats/stream",
            stream::stats::PARAMETERS,
            get(stream::stats::stats_stream),
        ),
        route(
            "GET",
            "/api/v1/export",
            export::PARAMETERS,
            get(export::export),
        ),
        route("GET", "/api/v1/taxonomy", NONE, get(taxonomy::current)),
        route(
            "GET",
            "/api/v1/rejected",
            rejected::PARAMETERS,
            get(rejected::list),
        ),
        route(
            "POST",
            "/api/v1/rejected/replay",
            NONE,
            post(rejected::replay),
        ),
        route("POST", "/api/v1/erasures", NONE, post(erasures::erase)),
        route(
            "GET",
            "/api/v1/erasures",
            erasures::PARAMETERS,
            get(erasures::list),
        ),
        route(
            "GET",
            "/api/v1/verify",
            verify::PARAMETERS,
            get(verify::verify),
        ),
    ]
}

/// What the router serves: method, path and query parameters of every route.
pub fn served() -> Vec<RouteSpec> {
    table().into_iter().map(|route| route.spec).collect()
}
