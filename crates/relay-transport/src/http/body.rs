//! Small HTTP helpers shared by the routes: JSON responses, whole-body reads, queries.

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::{Request, Response, StatusCode, header};
use relay_proto::ErrorCode;

use crate::config::ServerConfig;
use crate::error::ApiError;

/// The body type of every request and response (axum's).
pub(crate) type Body = axum::body::Body;

/// A JSON response with the given status.
pub(crate) fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    // Serializing our own types and JSON values cannot fail (no maps with non-string keys).
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    resp
}

/// Reads the whole body within `config.body_read_timeout` (else 408 `request_timeout`,
/// and hyper closes the connection, whose body was left unread). The router's
/// body-limit layer bounds it to `config.max_body_bytes`: past that the read fails with
/// 413 `body_too_large`. Call it only once the caller's credentials are checked, so a
/// refused request costs no body.
pub(crate) async fn read_body(req: Request<Body>, config: &ServerConfig) -> Result<Bytes, ApiError> {
    let limit = config.max_body_bytes;
    let timeout = config.body_read_timeout;
    let Ok(collected) = tokio::time::timeout(timeout, req.into_body().collect()).await else {
        return Err(ApiError::new(
            ErrorCode::RequestTimeout,
            format!("the request body did not arrive within {} s", timeout.as_secs_f64()),
        ));
    };
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if is_length_limit(&e) => Err(ApiError::body_too_large(limit)),
        Err(e) => Err(ApiError::new(ErrorCode::BadBody, format!("could not read request body: {e}"))),
    }
}

/// Whether `e` (or what it wraps) is the body-limit layer's refusal.
fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// Parses a JSON body into `T`, naming what is wrong on failure.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("invalid JSON body: {e}")))
}

/// The value of query parameter `name`, percent-decoded. A `+` stays a `+`: base64 API
/// keys contain it, and nothing here carries spaces.
pub(crate) fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k).as_deref() == Some(name)).then(|| percent_decode(v)).flatten()
    })
}

pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_percent_decoded() {
        let q = Some("api_key=ABEiM0RVZneImaq7zN3u%2Fw%3D%3D&slot=2");
        assert_eq!(query_param(q, "api_key").as_deref(), Some("ABEiM0RVZneImaq7zN3u/w=="));
        assert_eq!(query_param(q, "slot").as_deref(), Some("2"));
        assert_eq!(query_param(q, "missing"), None);
        assert_eq!(query_param(Some("bad=%zz"), "bad"), None);
    }
}
