//! The one route table: every REST and WebSocket route in one axum `Router`, built with
//! utoipa-axum so that the routes and `/openapi.json` come from the same
//! `#[utoipa::path]` annotations on the handlers in [`crate::api`].
//!
//! Middleware, as tower layers around every route, outermost first:
//! 1. CORS, when origins are configured (`ServerConfig::cors_allowed_origins`): answers
//!    preflights and puts the CORS headers on every answer, a 429 included, exposing
//!    `Retry-After` to the page;
//! 2. the per-address request rate (429 before any other work; the accept loop put the
//!    client address in the request's extensions: the TCP peer, or the address a
//!    trusted proxy forwarded, see [`crate::net::proxy`]);
//! 3. tracing, with the `Authorization`, `Cookie` and `Sec-WebSocket-Protocol` headers
//!    redacted and the admin token and keys cut out of logged URIs;
//! 4. metrics by matched route template and status, and JSON errors: a refusal that a
//!    layer or the router made without a body of ours (405 with its `Allow` header, 408,
//!    413, a path the extractor could not read) gets the same JSON body as every other;
//! 5. the request timeout (`ServerConfig::request_timeout`; a WebSocket handler answers
//!    101 at once and its connection runs in its own task, beyond this timeout);
//! 6. the body limit (`ServerConfig::max_body_bytes`).
//!
//! Browser WebSocket handshakes are checked against the same origin list by
//! `ws::validate_handshake` (403 `origin_not_allowed`).
//!
//! Unknown paths answer 404 `not_found` from the fallback. The console's static files
//! (`/console`, [`crate::api::console`]) are plain axum routes, left out of
//! `/openapi.json`: they are a web page, not API, and `--console false` removes them.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use hyper::{StatusCode, header};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::{admin, console, discovery, health, mailbox, rooms, turn};
use crate::error::{ApiError, ErrorCodeSent};
use crate::openapi;
use crate::ratelimit::ClientAddr;
use crate::state::AppState;

/// The router of `state`'s server: every route, its middleware and its state.
pub(crate) fn router(state: &AppState) -> axum::Router {
    let (routes, doc) = api_routes().split_for_parts();
    openapi::publish(doc);
    let config = state.config();
    // The console's static files are not API: plain routes, outside the OpenAPI doc.
    let routes = if config.console { routes.merge(console::routes()) } else { routes };
    let mut router = routes.fallback(no_route);
    router = router.layer(RequestBodyLimitLayer::new(config.max_body_bytes));
    router =
        router.layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, config.request_timeout));
    router = router
        .layer(middleware::from_fn_with_state(state.clone(), metrics_and_json_errors))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let uri = admin::redact_uri(req.uri());
            // The client as the accept loop derived it (a trusted proxy's forwarded
            // address, not the proxy's).
            match req.extensions().get::<ClientAddr>() {
                Some(ClientAddr(client)) => {
                    tracing::debug_span!("request", client = %client, method = %req.method(), uri = %uri)
                }
                None => tracing::debug_span!("request", method = %req.method(), uri = %uri),
            }
        }))
        .layer(SetSensitiveRequestHeadersLayer::new([
            header::AUTHORIZATION,
            header::PROXY_AUTHORIZATION,
            header::COOKIE,
            header::SEC_WEBSOCKET_PROTOCOL,
        ]))
        .layer(middleware::from_fn_with_state(state.clone(), request_rate));
    if let Some(cors) = cors_layer(&config.cors_allowed_origins) {
        router = router.layer(cors);
    }
    router.with_state(state.clone())
}

/// The CORS layer for `origins` (`*` allows any), or `None` when the list is empty.
/// Pages may send `Authorization` and `Content-Type` and read `Retry-After`; no
/// cookies are involved, so credentials mode stays off.
fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| o.trim_end_matches('/').parse().ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods(tower_http::cors::Any)
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
            .expose_headers([header::RETRY_AFTER])
            .max_age(std::time::Duration::from_secs(600)),
    )
}

/// Every annotated route. Routes of one path share a `routes!` (utoipa-axum's rule).
fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(health::scrape))
        .routes(routes!(openapi::serve))
        .routes(routes!(rooms::create))
        .routes(routes!(rooms::create_sodot))
        .routes(routes!(rooms::join))
        .routes(routes!(mailbox::connect))
        .routes(routes!(mailbox::connect_room))
        .routes(routes!(admin::sodot_create))
        .routes(routes!(admin::sodot_list))
        .routes(routes!(admin::sodot_revoke))
        .routes(routes!(admin::create, admin::list))
        .routes(routes!(admin::revoke))
        .routes(routes!(admin::rooms))
        .routes(routes!(admin::close_room))
        .routes(routes!(admin::stats))
        .routes(routes!(admin::usage))
        .routes(routes!(admin::whoami))
        .routes(routes!(discovery::announce, discovery::list_relays))
        .routes(routes!(turn::credentials))
        // Disco's paths, and the same routes under /v1/.
        .merge(group_routes())
        .nest("/v1", group_routes())
}

/// Disco's group routes, mounted at the root and under `/v1`.
fn group_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(discovery::create, discovery::update))
        .routes(routes!(discovery::list))
        .routes(routes!(discovery::get, discovery::update_by_id, discovery::delete))
}

/// 404 `not_found` for a path no route serves.
async fn no_route() -> ApiError {
    ApiError::no_route()
}

/// The per-address request rate: 429 `rate_limited` before any other work.
async fn request_rate(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(&ClientAddr(ip)) = req.extensions().get::<ClientAddr>()
        && let Err(limited) = state.rate_limiter().request(ip, tokio::time::Instant::now())
    {
        state.metrics().rate_limited("request");
        return limited.error().into_response();
    }
    next.run(req).await
}

/// Counts the request by its route template and status (never its raw path: paths carry
/// room IDs, group IDs and admin tokens), and gives a refusal without a body of ours
/// the JSON error body, keeping its headers (`Allow` on a 405).
async fn metrics_and_json_errors(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned());
    let mut resp = next.run(req).await;
    let status = resp.status();
    let mut code = resp.extensions().get::<ErrorCodeSent>().map(|c| c.0);
    let is_json =
        resp.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes() == b"application/json");
    if code.is_none() && !is_json && (status.is_client_error() || status.is_server_error()) {
        let error = match status {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::body_too_large(state.config().max_body_bytes),
            status => ApiError::for_status(status),
        };
        code = Some(error.code);
        let (mut parts, _) = resp.into_parts();
        let json = error.into_response();
        parts.headers.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
        parts.headers.remove(header::CONTENT_LENGTH);
        let (_, body) = json.into_parts();
        resp = Response::from_parts(parts, body);
    }
    state.metrics().http_request(
        route.as_deref().unwrap_or("unmatched"),
        &method,
        status,
        code,
        started.elapsed(),
    );
    resp
}

/// The OpenAPI document's route list, for tests: every (method, path) it names.
#[cfg(test)]
fn documented_routes() -> Vec<(String, String)> {
    let (_, doc) = api_routes().split_for_parts();
    let mut out = Vec::new();
    for (path, item) in doc.paths.paths {
        let ops = [
            ("GET", item.get.is_some()),
            ("POST", item.post.is_some()),
            ("PATCH", item.patch.is_some()),
            ("DELETE", item.delete.is_some()),
        ];
        out.extend(ops.into_iter().filter(|(_, on)| *on).map(|(m, _)| (m.to_owned(), path.clone())));
    }
    out
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use hyper::{Request, StatusCode, header};
    use tower::ServiceExt;

    use super::{documented_routes, router};
    use crate::{AppState, ServerConfig};

    async fn call(config: ServerConfig, req: Request<Body>) -> axum::response::Response {
        let state = AppState::new(config).unwrap();
        router(&state).oneshot(req).await.unwrap()
    }

    #[tokio::test]
    async fn cors_headers_only_for_configured_origins() {
        let preflight = || {
            Request::builder()
                .method("OPTIONS")
                .uri("/v1/rooms")
                .header(header::ORIGIN, "https://app.example")
                .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
                .body(Body::empty())
                .unwrap()
        };
        let off = call(ServerConfig::default(), preflight()).await;
        assert!(off.headers().get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());

        let config = ServerConfig {
            cors_allowed_origins: vec!["https://app.example".into()],
            ..ServerConfig::default()
        };
        let on = call(config.clone(), preflight()).await;
        assert_eq!(on.status(), StatusCode::OK);
        assert_eq!(on.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example");
        let other = Request::builder()
            .uri("/healthz")
            .header(header::ORIGIN, "https://evil.example")
            .body(Body::empty())
            .unwrap();
        let other = call(config, other).await;
        assert!(other.headers().get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
    }

    #[tokio::test]
    async fn refusals_of_layers_and_router_are_json_errors() {
        let config = ServerConfig { max_body_bytes: 8, ..ServerConfig::default() };
        let big = Request::builder()
            .method("POST")
            .uri("/v1/rooms")
            .header(header::CONTENT_LENGTH, "100")
            .body(Body::from(vec![b' '; 100]))
            .unwrap();
        let resp = call(config, big).await;
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["code"], "body_too_large");
        assert!(body["error"]["message"].as_str().unwrap().contains("8-byte"), "{body}");

        let wrong = Request::builder().method("DELETE").uri("/healthz").body(Body::empty()).unwrap();
        let resp = call(ServerConfig::default(), wrong).await;
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert!(resp.headers().contains_key(header::ALLOW));
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
    }

    #[test]
    fn disco_routes_are_documented_at_both_paths() {
        let routes = documented_routes();
        for (method, path) in [
            ("POST", "/group"),
            ("POST", "/v1/group"),
            ("PATCH", "/group"),
            ("PATCH", "/groups/{ID}"),
            ("PATCH", "/v1/groups/{ID}"),
            ("DELETE", "/v1/groups/{ID}"),
            ("GET", "/v1/relays"),
            ("POST", "/v1/relays"),
            ("GET", "/v1/rooms/{room_id}/msg-relay"),
            ("GET", "/openapi.json"),
        ] {
            assert!(routes.contains(&(method.to_owned(), path.to_owned())), "{method} {path} missing");
        }
    }
}
