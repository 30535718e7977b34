//! Credentials offered in `Sec-WebSocket-Protocol`, the one header a browser can set on
//! a WebSocket handshake, so keys and resume tokens stay out of URLs and logs
//! (docs/protocol.md section 1): the client offers `relay.v1` and, beside it,
//! `relay.api-key.<base64url>` or `relay.resume.<base64url>`; the relay answers
//! `relay.v1` alone.

use hyper::{Request, header};

use crate::http::body::Body;

/// The subprotocol a client offers to say it speaks Relay's WebSocket protocols; the
/// relay answers with it (and only it) in the 101, never with a credential.
pub(crate) const SUBPROTOCOL: &str = "relay.v1";
/// Offered subprotocol carrying an API key: this prefix, then the key's UTF-8 bytes in
/// base64url without padding (docs/protocol.md section 1).
pub(crate) const SUBPROTOCOL_API_KEY: &str = "relay.api-key.";
/// Offered subprotocol carrying a party token of a room created with party tokens,
/// encoded as an API key is.
pub(crate) const SUBPROTOCOL_PARTY_TOKEN: &str = "relay.party-token.";
/// Offered subprotocol carrying a room's resume token, encoded as an API key is.
pub(crate) const SUBPROTOCOL_RESUME: &str = "relay.resume.";

/// The credential offered as the subprotocol `prefix` + base64url (no padding) of its
/// UTF-8 bytes in `Sec-WebSocket-Protocol`, decoded; `None` when absent or malformed.
pub(crate) fn offered_credential(req: &Request<Body>, prefix: &str) -> Option<String> {
    offered_subprotocols(req).find_map(|p| {
        let encoded = p.strip_prefix(prefix)?;
        let bytes =
            base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, encoded).ok()?;
        String::from_utf8(bytes).ok().filter(|c| !c.is_empty())
    })
}

/// Every subprotocol `req` offers, in order.
pub(crate) fn offered_subprotocols(req: &Request<Body>) -> impl Iterator<Item = &str> {
    req.headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}
