//! The route table as data: the method, path and accepted query parameters of
//! every route the admin API serves. The router ([`crate::routes`]) pairs each
//! entry with its handler; the OpenAPI document ([`crate::openapi`]) lists its
//! operations and their query parameters from it. Both read this module and
//! neither reads the other, so the document (itself a route) does not sit in a
//! circle with the router. The query lists are the same constants the handlers
//! check requests against.

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

const NONE: &[&str] = &[];

/// The table. Adding a route here (and its handler in [`crate::routes`]) serves
/// it and lists it in the OpenAPI document (the tests then insist on its
/// description there).
pub const ROUTES: &[RouteSpec] = &[
    RouteSpec {
        method: "GET",
        path: "/healthz",
        query: NONE,
    },
    RouteSpec {
        method: "GET",
        path: "/readyz",
        query: NONE,
    },
    RouteSpec {
        method: "GET",
        path: "/api/v1/openapi.json",
        query: NONE,
    },
    RouteSpec {
        method: "GET",
        path: "/api/v1/whoami",
        query: NONE,
    },
    RouteSpec {
        method: "GET",
        path: "/api/v1/activity",
        query: crate::activity::PARAMETERS,
    },
    RouteSpec {
        method: "GET",
        path: "/api/v1/activity/stream",
        query: crate::stream::ACTIVITY_STREAM_PARAMETERS,
    },
    RouteSpec {
        method: "GET",
        path: "/api/v1/activity/aggregates",
        query: crate::aggregates::ACTIVITY_AGGREGATE_PARAMETERS,
    },
    RouteSpec {
        method: "GET",
        path: "/api/v1/tokens",
        query: crate::tokens::PARAMETERS,
    },
    RouteSpec {
        method: "GET",
        path: "/api/v1/tokens/stream",
        query: crate::stream::TOKEN_STREAM_PARAMETERS,
    },
    RouteSpec {
        method: "GET",
        path: "/api/v1/tokens/usage",
        query: crate::aggregates::TOKEN_USAGE_PARAMETERS,
    },
    RouteSpec {
        method: "GET",
        path: "/api/v1/tokens/coverage",
        query: crate::coverage::PARAMETERS,
    },
    RouteSpec {
        method: "GET",
        path: "/api/v1/stats",
        query: crate::stats::PARAMETERS,
    },
    RouteSpec {
        method: "GET",
        path: "/api/v1/budgets",
        query: crate::budgets::LIST_PARAMETERS,
    },
    RouteSpec {
        method: "GET",
        path: "/api/v1/budgets/check",
        query: crate::budgets::CHECK_PARAMETERS,
    },
    RouteSpec {
        method: "GET",
        path: "/api/v1/stats/stream",
        query: crate::stream::stats::PARAMETERS,
    },
    RouteSpec {
        method: "GET",
        path: "/api/v1/export",
        query: crate::export::PARAMETERS,
    },
    RouteSpec {
        method: "GET",
        path: "/api/v1/taxonomy",
        query: NONE,
    },
    RouteSpec {
        method: "GET",
        path: "/api/v1/rejected",
        query: crate::rejected::PARAMETERS,
    },
    RouteSpec {
        method: "POST",
        path: "/api/v1/rejected/replay",
        query: NONE,
    },
    RouteSpec {
        method: "POST",
        path: "/api/v1/erasures",
        query: NONE,
    },
    RouteSpec {
        method: "GET",
        path: "/api/v1/erasures",
        query: crate::erasures::PARAMETERS,
    },
    RouteSpec {
        method: "GET",
        path: "/api/v1/verify",
        query: crate::verify::PARAMETERS,
    },
];
