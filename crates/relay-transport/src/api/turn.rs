//! `GET /v1/turn/credentials`: short-lived TURN credentials for the caller's API key,
//! in the TURN REST scheme of coturn's `use-auth-secret` (docs/turn.md), so a backend
//! can hand them to a browser's `RTCPeerConnection` unchanged. The TURN server
//! ([`crate::turn`]) accepts them until their expiry while the key stays active.

use axum::extract::State;
use hyper::{Request, Response, StatusCode};
use relay_keystore::unix_now;
use relay_proto::ErrorCode;
use relay_proto::rest::TurnCredentials;

use crate::error::ApiError;
use crate::http::auth::authenticate;
use crate::http::body::{Body, json};
use crate::state::AppState;
use crate::turn::credentials;

#[utoipa::path(
    get, path = "/v1/turn/credentials", operation_id = "turn_credentials", tag = "turn",
    summary = "Mint TURN credentials for the API key (TURN REST scheme)",
    responses(
        (status = 200, description = "Username, password, TTL and the relay's STUN/TURN URIs", body = relay_proto::rest::TurnCredentials),
        (status = 401, description = "No API key, or an unknown one", body = relay_proto::ErrorBody),
        (status = 403, description = "The API key is revoked or expired", body = relay_proto::ErrorBody),
        (status = 404, description = "This relay runs no TURN server", body = relay_proto::ErrorBody),
        (status = 429, description = "Over the per-key rate limit", body = relay_proto::ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = [])),
)]
pub(crate) async fn credentials(
    State(state): State<AppState>,
    req: Request<Body>,
) -> Result<Response<Body>, ApiError> {
    let caller = authenticate(&state, &req)?;
    state.check_key_rate(&caller)?;
    let config = &state.config().turn;
    let Some(secret) = config.secret.as_deref().filter(|_| config.listen.is_some()) else {
        return Err(ApiError::new(
            ErrorCode::TurnDisabled,
            "this relay runs no TURN server (start it with --turn-listen)",
        ));
    };
    let ttl = config.credential_ttl.as_secs();
    let username = credentials::username(unix_now() + ttl, caller.key_name.as_deref());
    let password = credentials::password(secret, &username);
    // Validated at start: with TURN on, an advertised IP is known.
    let host = match config.advertised_ip().or(config.listen.map(|l| l.ip())) {
        Some(std::net::IpAddr::V6(ip)) => format!("[{ip}]"),
        Some(ip) => ip.to_string(),
        None => "localhost".to_owned(),
    };
    Ok(json(StatusCode::OK, &TurnCredentials { username, password, ttl, uris: config.uris(&host) }))
}
