//! Operations routes: liveness, readiness, metrics.

use axum::extract::State;
use hyper::{Response, StatusCode, header};

use crate::http::body::{Body, json};
use crate::metrics::CONTENT_TYPE;
use crate::state::AppState;

/// `GET /healthz`: 200 `{"status":"ok"}` while the process serves, draining or not.
#[utoipa::path(
    get, path = "/healthz", operation_id = "healthz", tag = "operations", summary = "Liveness",
    responses((status = 200, description = "The process serves", body = relay_proto::rest::Status)),
)]
pub(crate) async fn healthz() -> Response<Body> {
    json(StatusCode::OK, &serde_json::json!({"status": "ok"}))
}

/// `GET /readyz`: 200 `{"status":"ready"}` while serving, 503 `{"status":"draining"}`
/// once shutdown has begun, so a load balancer stops sending new clients here, and 503
/// `{"status":"unavailable","unavailable":["redis"]}` while an external engine the relay
/// was started with (PostgreSQL, Redis) is unreachable.
#[utoipa::path(
    get, path = "/readyz", operation_id = "readyz", tag = "operations", summary = "Readiness",
    responses(
        (status = 200, description = "`{\"status\":\"ready\"}`: serving", body = relay_proto::rest::Status),
        (status = 503, description = "`{\"status\":\"draining\"}`: shutdown has begun; \
            `{\"status\":\"unavailable\",\"unavailable\":[\"postgres\"]}`: an external engine is unreachable", body = relay_proto::rest::Status),
    ),
)]
pub(crate) async fn readyz(State(state): State<AppState>) -> Response<Body> {
    if state.is_shutting_down() {
        return json(StatusCode::SERVICE_UNAVAILABLE, &serde_json::json!({"status": "draining"}));
    }
    let down = state.dependencies().down();
    if !down.is_empty() {
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"status": "unavailable", "unavailable": down}),
        )
    } else {
        json(StatusCode::OK, &serde_json::json!({"status": "ready"}))
    }
}

/// `GET /metrics`: every metric in the Prometheus text exposition format.
#[utoipa::path(
    get, path = "/metrics", operation_id = "metrics", tag = "operations", summary = "Prometheus metrics",
    description = "Prometheus text exposition format 0.0.4. Needs no key: keep it off the \
        public internet (firewall, or do not proxy it). Metric list: docs/operations.md.",
    responses((status = 200, description = "Every metric", body = String, content_type = "text/plain; version=0.0.4")),
)]
pub(crate) async fn scrape(State(state): State<AppState>) -> Response<Body> {
    let mut resp = Response::new(Body::from(state.metrics().render()));
    resp.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(CONTENT_TYPE));
    resp
}
