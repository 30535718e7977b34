//! Maps (method, path) to a handler. Every refusal is a JSON error with its status.

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};

use crate::api::health as metrics;
use crate::api::{admin, discovery, mailbox, rooms};
use crate::error::ApiError;
use crate::http::body::{Body, error_response};
use crate::http::ratelimit::ClientAddr;
use crate::openapi;
use crate::state::AppState;

/// Routes one request.
pub(crate) async fn route(state: AppState, req: Request<Incoming>) -> Response<Body> {
    let started = std::time::Instant::now();
    // The per-address request rate, before any work; the accept loop sets the address.
    if let Some(&ClientAddr(ip)) = req.extensions().get::<ClientAddr>()
        && let Err(limited) = state.rate_limiter().request(ip, tokio::time::Instant::now())
    {
        state.metrics().rate_limited("request");
        return limited.response();
    }
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = req.method().clone();
    let metric_route = route_template(&segments);
    let result = match (segments.as_slice(), &method) {
        (["healthz"], &Method::GET) => Ok(metrics::healthz()),
        (["readyz"], &Method::GET) => Ok(metrics::readyz(&state)),
        (["metrics"], &Method::GET) => Ok(metrics::scrape(&state)),
        (["openapi.json"], &Method::GET) => Ok(openapi::serve()),
        (["v1", "rooms"], &Method::POST) => rooms::create(&state, req).await,
        (["create-room"], &Method::POST) => rooms::create_sodot(&state, req).await,
        (["v1", "rooms", room_id], &Method::GET) => rooms::join(&state, req, room_id).await,
        (["v1", "msg-relay"], &Method::GET) => mailbox::connect(&state, req).await,
        (["v1", "rooms", room_id, "msg-relay"], &Method::GET) => {
            mailbox::connect_room(&state, req, room_id).await
        }
        // Admin (admin.rs): Sodot paths with the token last, and REST with a Bearer token.
        (["createkey", name, expiry, token], &Method::GET) => {
            admin::sodot_create(&state, name, expiry, token).await
        }
        (["rooms", token], &Method::GET) => admin::sodot_list(&state, token),
        (["revokekey", name, token], &Method::GET) => admin::sodot_revoke(&state, name, token).await,
        (["v1", "admin", "keys"], &Method::POST) => admin::create(&state, req).await,
        (["v1", "admin", "keys"], &Method::GET) => admin::list(&state, &req),
        (["v1", "admin", "keys", name], &Method::DELETE) => admin::revoke(&state, &req, name).await,
        (["v1", "admin", "rooms"], &Method::GET) => admin::rooms(&state, &req),
        (["v1", "admin", "usage"], &Method::GET) => admin::usage(&state, &req),
        (["v1", "key"], &Method::GET) => admin::whoami(&state, &req),
        (
            ["createkey", _, _, _]
            | ["rooms", _]
            | ["revokekey", _, _]
            | ["v1", "admin", "keys" | "rooms" | "usage"]
            | ["v1", "admin", "keys", _]
            | ["v1", "key"],
            _,
        ) => Err(ApiError::method_not_allowed()),
        (["group" | "groups", ..] | ["v1", "group" | "groups" | "relays", ..], _) => {
            discovery::route(&state, req, &segments).await
        }
        (
            ["healthz"]
            | ["readyz"]
            | ["metrics"]
            | ["openapi.json"]
            | ["v1", "rooms"]
            | ["create-room"]
            | ["v1", "rooms", _]
            | ["v1", "msg-relay"]
            | ["v1", "rooms", _, "msg-relay"],
            _,
        ) => Err(ApiError::method_not_allowed()),
        _ => Err(ApiError::no_route()),
    };
    let (mut resp, error_code) = match result {
        Ok(resp) => (resp, None),
        Err(e) => (error_response(&e), Some(e.code)),
    };
    if resp.status() == StatusCode::METHOD_NOT_ALLOWED
        && let Some(allow) = allowed_methods(&segments)
    {
        resp.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static(allow));
    }
    state.metrics().http_request(metric_route, &method, resp.status(), error_code, started.elapsed());
    resp
}

/// The route template of a path, the `route` label on `/metrics`: never the raw path,
/// which carries room IDs, group IDs and admin tokens.
fn route_template(segments: &[&str]) -> &'static str {
    match segments {
        ["healthz"] => "/healthz",
        ["readyz"] => "/readyz",
        ["metrics"] => "/metrics",
        ["openapi.json"] => "/openapi.json",
        ["v1", "rooms"] => "/v1/rooms",
        ["create-room"] => "/create-room",
        ["v1", "rooms", _] => "/v1/rooms/{room_id}",
        ["v1", "msg-relay"] => "/v1/msg-relay",
        ["v1", "rooms", _, "msg-relay"] => "/v1/rooms/{room_id}/msg-relay",
        ["group"] => "/group",
        ["v1", "group"] => "/v1/group",
        ["groups"] => "/groups",
        ["v1", "groups"] => "/v1/groups",
        ["groups", _] => "/groups/{ID}",
        ["v1", "groups", _] => "/v1/groups/{ID}",
        ["v1", "relays"] => "/v1/relays",
        ["createkey", _, _, _] | ["rooms", _] | ["revokekey", _, _] => "admin (sodot paths)",
        ["v1", "admin", ..] => "/v1/admin",
        ["v1", "key"] => "/v1/key",
        _ => "unmatched",
    }
}

/// The methods a known path serves, for the `Allow` header every 405 must carry
/// (RFC 9110 section 15.5.6); `None` for a path no route serves.
fn allowed_methods(segments: &[&str]) -> Option<&'static str> {
    let segments = match segments {
        ["v1", "group" | "groups", ..] => &segments[1..],
        other => other,
    };
    Some(match segments {
        ["v1", "rooms"] | ["create-room"] => "POST",
        ["v1", "admin", "keys"] | ["v1", "relays"] => "GET, POST",
        ["v1", "admin", "keys", _] => "DELETE",
        ["group"] => "POST, PATCH",
        ["groups", _] => "GET, PATCH, DELETE",
        ["healthz"]
        | ["readyz"]
        | ["metrics"]
        | ["openapi.json"]
        | ["v1", "rooms", _]
        | ["v1", "msg-relay"]
        | ["v1", "rooms", _, "msg-relay"]
        | ["createkey", _, _, _]
        | ["rooms", _]
        | ["revokekey", _, _]
        | ["v1", "admin", "rooms" | "usage"]
        | ["v1", "key"]
        | ["groups"] => "GET",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::allowed_methods;

    #[test]
    fn every_405_path_names_its_methods() {
        assert_eq!(allowed_methods(&["v1", "rooms"]), Some("POST"));
        assert_eq!(allowed_methods(&["v1", "groups", "g1"]), Some("GET, PATCH, DELETE"));
        assert_eq!(allowed_methods(&["group"]), Some("POST, PATCH"));
        assert_eq!(allowed_methods(&["v1", "relays"]), Some("GET, POST"));
        assert_eq!(allowed_methods(&["v1", "rooms", "x", "msg-relay"]), Some("GET"));
        assert_eq!(allowed_methods(&["nope"]), None);
    }
}
