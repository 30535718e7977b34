//! The operator console (`/console`): static HTML, CSS and ES modules, embedded in the
//! binary from `crates/relay-transport/console/`, so building or running the relay
//! needs no npm (docs/console.md).
//!
//! The files themselves need no credentials and hold none: the page asks for the admin
//! token, keeps it in `sessionStorage` and sends it as `Authorization: Bearer` to the
//! admin REST API, which checks it on every call. Every answer here carries a
//! Content-Security-Policy that allows only this origin's scripts and styles (no inline
//! script or style, no framing), `X-Frame-Options: DENY`, `X-Content-Type-Options:
//! nosniff` and `Referrer-Policy: no-referrer`. Served unless `ServerConfig::console`
//! is false (`--console false`), in which case the paths are unknown (404).

use axum::Router;
use axum::extract::Path;
use axum::routing::get;
use hyper::{Response, StatusCode, header};

use crate::error::ApiError;
use crate::http::body::Body;
use crate::state::AppState;

/// The console's Content-Security-Policy: nothing inline, nothing from elsewhere.
pub(crate) const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// One embedded file: its name under `/console/`, content type and bytes.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

/// Embeds `console/<name>` with a content type.
macro_rules! asset {
    ($name:literal, $type:expr) => {
        Asset { name: $name, content_type: $type, bytes: include_bytes!(concat!("../../console/", $name)) }
    };
}

const HTML: &str = "text/html; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const SVG: &str = "image/svg+xml";

/// Every file of the console. `index.html` is also served at `/console` and `/console/`.
const ASSETS: &[Asset] = &[
    asset!("index.html", HTML),
    asset!("console.css", CSS),
    asset!("favicon.svg", SVG),
    asset!("js/app.js", JS),
    asset!("js/api.js", JS),
    asset!("js/charts.js", JS),
    asset!("js/dom.js", JS),
    asset!("js/pages/keys.js", JS),
    asset!("js/pages/rooms.js", JS),
    asset!("js/pages/usage.js", JS),
    asset!("js/pages/discovery.js", JS),
    asset!("js/pages/health.js", JS),
];

/// The console's routes: `/console`, `/console/` and `/console/{*path}`.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/console", get(index))
        .route("/console/", get(index))
        .route("/console/{*path}", get(file))
}

/// `GET /console`: the page.
async fn index() -> Result<Response<Body>, ApiError> {
    serve("index.html")
}

/// `GET /console/{*path}`: one embedded file, 404 `not_found` for any other path.
async fn file(Path(path): Path<String>) -> Result<Response<Body>, ApiError> {
    serve(&path)
}

fn serve(name: &str) -> Result<Response<Body>, ApiError> {
    let asset = ASSETS.iter().find(|a| a.name == name).ok_or_else(ApiError::no_route)?;
    let mut resp = Response::new(Body::from(asset.bytes));
    *resp.status_mut() = StatusCode::OK;
    let headers = resp.headers_mut();
    let set = |h: &mut hyper::HeaderMap, name: header::HeaderName, value: &'static str| {
        h.insert(name, header::HeaderValue::from_static(value));
    };
    set(headers, header::CONTENT_TYPE, asset.content_type);
    set(headers, header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY);
    set(headers, header::X_FRAME_OPTIONS, "DENY");
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, header::REFERRER_POLICY, "no-referrer");
    // The files change with the binary; revalidate so an upgrade is seen at once.
    set(headers, header::CACHE_CONTROL, "no-cache");
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_named_once_and_index_loads_only_embedded_modules() {
        let mut names: Vec<&str> = ASSETS.iter().map(|a| a.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ASSETS.len());
        let index = std::str::from_utf8(ASSETS[0].bytes).unwrap();
        assert!(!index.contains("<style") && !index.contains(" style="), "no inline style");
        for (i, part) in index.split("<script").enumerate().skip(1) {
            let src = part.split("src=\"").nth(1).and_then(|s| s.split('"').next());
            let src = src.unwrap_or_else(|| panic!("script {i} has no src: inline script"));
            let name = src.strip_prefix("/console/").expect("served from /console/");
            assert!(names.contains(&name), "{name} is not embedded");
        }
    }
}
