//! The web console: `GET /console` (the page), `GET /console/assets/{file}`
//! (its content-hashed scripts and styles) and `GET /` (a redirect to the page).
//!
//! The files are static and embedded in the binary ([`assets`]); they need no
//! credential, the page's data calls carry the caller's token. Every answer
//! carries a strict Content-Security-Policy (no inline script or style, no
//! framing, connections to this origin only), `X-Content-Type-Options: nosniff`
//! and `Referrer-Policy: no-referrer`. The page is `no-cache` (revalidated by
//! ETag); hashed files are cached for a year as immutable. A client that
//! accepts gzip gets the precompressed variant.

pub mod assets;

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

use crate::error::ApiError;
use crate::state::AppState;
use assets::{assets, Asset};

/// The Content-Security-Policy of every console answer.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; \
base-uri 'none'; form-action 'none'";

/// `Cache-Control` of the hashed files.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// The console's routes (no credential needed; the API's outer layers apply).
pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::temporary("/console") }))
        .route("/console", get(page))
        .route(
            "/console/",
            get(|| async { Redirect::permanent("/console") }),
        )
        .route("/console/assets/{file}", get(asset))
}

/// `GET /console`.
async fn page(headers: HeaderMap) -> Response {
    let index = assets().index();
    respond(index, &headers, "no-cache")
}

/// `GET /console/assets/{file}`: a hashed file, or 404.
async fn asset(Path(file): Path<String>, headers: HeaderMap) -> Response {
    match assets().by_hashed_name(&file) {
        Some(asset) => respond(asset, &headers, IMMUTABLE),
        None => ApiError::NotFound(format!(
            "no console file {}",
            crate::error::truncate(&file, 100)
        ))
        .into_response(),
    }
}

fn respond(asset: &'static Asset, request: &HeaderMap, cache_control: &'static str) -> Response {
    let not_modified = request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|tag| {
            let tag = tag.trim();
            tag == "*" || tag.trim_start_matches("W/") == asset.etag
        });
    let gzip = accepts_gzip(request);
    let mut response = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else if gzip {
        // The prepared bytes live as long as the process: served without a copy.
        asset.gzip.as_slice().into_response()
    } else {
        asset.body.as_slice().into_response()
    };
    let headers = response.headers_mut();
    if !not_modified {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        );
        if gzip {
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
    }
    if let Ok(etag) = HeaderValue::from_str(&asset.etag) {
        headers.insert(header::ETAG, etag);
    }
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control),
    );
    headers.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    security_headers(headers);
    response
}

/// The headers every console answer carries.
fn security_headers(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

/// Whether `Accept-Encoding` lists `gzip` (or `*`) with a non-zero quality.
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|item| {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            if !coding.eq_ignore_ascii_case("gzip") && coding != "*" {
                return false;
            }
            let refused = parts.any(|param| {
                let param = param.trim();
                param
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            !refused
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_str(value).expect("header"),
        );
        headers
    }

    #[test]
    fn accept_encoding_is_read_with_its_qualities() {
        assert!(accepts_gzip(&with("gzip, deflate, br")));
        assert!(accepts_gzip(&with("br;q=1.0, GZIP;q=0.5")));
        assert!(accepts_gzip(&with("*")));
        assert!(!accepts_gzip(&with("gzip;q=0")));
        assert!(!accepts_gzip(&with("br, deflate")));
        assert!(!accepts_gzip(&with("identity")));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }
}
