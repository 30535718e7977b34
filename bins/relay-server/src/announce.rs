//! The registry announce loop: keeps this relay listed in another relay's registry
//! (docs/discovery.md). It posts `{"url", "room_id_prefix", "ttl_secs"}` to
//! `<registry>/v1/relays` every third of the granted TTL; when the registry cannot be
//! reached it logs a warning and retries with exponential backoff (500 ms doubling,
//! capped at 30 s). It runs in its own task: serving never waits for it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Uri, header};
use hyper_util::rt::TokioIo;
use relay_discovery::{RegistryToken, validate_relay_url};
use tokio::net::TcpStream;

use relay_transport::TransportError;

/// First retry delay after a failed announcement.
const BACKOFF_START: Duration = Duration::from_millis(500);
/// Longest delay between retries while the registry is unreachable.
const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// Longest one announcement may take (connect, TLS, request, response).
const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why one announcement failed (logged, then retried).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct AnnounceError(String);

impl AnnounceError {
    fn new(context: &str, e: impl std::fmt::Display) -> AnnounceError {
        AnnounceError(format!("{context}: {e}"))
    }
}

/// Everything the announce loop needs.
#[derive(Debug, Clone)]
pub(crate) struct Announcer {
    /// `<registry>/v1/relays`.
    target: Uri,
    token: RegistryToken,
    /// The announcement, serialized once.
    body: Bytes,
    /// The TTL asked for; the interval is a third of the TTL granted.
    ttl: Duration,
}

impl Announcer {
    /// An announcer of `public_url` (with this relay's room-ID prefix) to the registry
    /// at `registry` (its base URL, http or https), asking for `ttl`.
    pub(crate) fn new(
        registry: &str,
        public_url: &str,
        room_id_prefix: Option<String>,
        token: RegistryToken,
        ttl: Duration,
    ) -> Result<Announcer, TransportError> {
        validate_relay_url(public_url)
            .map_err(|e| TransportError::Config(format!("public URL {public_url:?}: {e}")))?;
        let target = relays_endpoint(registry)?;
        let body = serde_json::json!({
            "url": public_url,
            "room_id_prefix": room_id_prefix,
            "ttl_secs": ttl.as_secs(),
        });
        Ok(Announcer { target, token, body: Bytes::from(body.to_string()), ttl })
    }

    /// Announces forever; spawn it.
    pub(crate) async fn run(self) {
        let tls = tls_connector();
        let mut failures: u32 = 0;
        loop {
            let delay = match tokio::time::timeout(ANNOUNCE_TIMEOUT, self.announce_once(&tls)).await {
                Ok(Ok(granted)) => {
                    if failures > 0 {
                        tracing::info!(registry = %self.target, "announced to the registry again after {failures} failed attempts");
                    } else {
                        tracing::debug!(registry = %self.target, "announced to the registry");
                    }
                    failures = 0;
                    (granted / 3).max(Duration::from_millis(100))
                }
                outcome => {
                    let err = match outcome {
                        Ok(Err(e)) => format!("{e:#}"),
                        _ => format!("no answer within {ANNOUNCE_TIMEOUT:?}"),
                    };
                    failures = failures.saturating_add(1);
                    let delay = backoff(failures);
                    tracing::warn!(registry = %self.target, attempt = failures,
                        "cannot announce to the registry: {err}; retrying in {delay:?}");
                    delay
                }
            };
            tokio::time::sleep(delay).await;
        }
    }

    /// One POST; the TTL the registry granted.
    async fn announce_once(&self, tls: &tokio_rustls::TlsConnector) -> Result<Duration, AnnounceError> {
        let host = self.target.host().ok_or_else(|| AnnounceError("registry URL has no host".into()))?;
        let https = self.target.scheme_str() == Some("https");
        let port = self.target.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tcp = TcpStream::connect((host.trim_start_matches('[').trim_end_matches(']'), port))
            .await
            .map_err(|e| AnnounceError::new(&format!("connect to {host}:{port}"), e))?;
        tcp.set_nodelay(true).ok();
        let request = Request::post(self.target.clone())
            .header(header::HOST, self.target.authority().map(|a| a.as_str()).unwrap_or(host))
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token.expose()))
            .body(Full::new(self.body.clone()))
            .map_err(|e| AnnounceError::new("build the request", e))?;
        let (status, body) = if https {
            let name = rustls_pki_types::ServerName::try_from(host.to_owned())
                .map_err(|e| AnnounceError::new("registry host name", e))?;
            let stream = tls
                .connect(name, tcp)
                .await
                .map_err(|e| AnnounceError::new("TLS handshake with the registry", e))?;
            send(TokioIo::new(stream), request).await?
        } else {
            send(TokioIo::new(tcp), request).await?
        };
        if !status.is_success() {
            return Err(AnnounceError(format!(
                "registry answered {status}: {}",
                String::from_utf8_lossy(&body)
            )));
        }
        let granted = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("ttl_secs")?.as_u64())
            .map(Duration::from_secs)
            .unwrap_or(self.ttl);
        Ok(granted)
    }
}

async fn send<I>(io: I, request: Request<Full<Bytes>>) -> Result<(hyper::StatusCode, Bytes), AnnounceError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| AnnounceError::new("HTTP handshake", e))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp =
        sender.send_request(request).await.map_err(|e| AnnounceError::new("send the announcement", e))?;
    let status = resp.status();
    let body =
        resp.into_body().collect().await.map_err(|e| AnnounceError::new("read the answer", e))?.to_bytes();
    Ok((status, body))
}

/// The delay before retry number `failures` (1-based): 500 ms doubling, capped.
fn backoff(failures: u32) -> Duration {
    BACKOFF_START.saturating_mul(1u32 << failures.saturating_sub(1).min(16)).min(BACKOFF_CAP)
}

/// `<registry>/v1/relays` for a registry base URL (http or https).
fn relays_endpoint(registry: &str) -> Result<Uri, TransportError> {
    let bad = |why: String| TransportError::Config(format!("registry URL {registry:?}: {why}"));
    validate_relay_url(registry).map_err(|e| bad(e.to_string()))?;
    let uri: Uri = registry.parse().map_err(|e: http::uri::InvalidUri| bad(e.to_string()))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(bad("the registry URL must be http:// or https://".into()));
    }
    let base = registry.trim_end_matches('/');
    let full = if base.ends_with("/v1/relays") { base.to_owned() } else { format!("{base}/v1/relays") };
    full.parse().map_err(|e: http::uri::InvalidUri| bad(e.to_string()))
}

fn tls_connector() -> tokio_rustls::TlsConnector {
    let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
        .unwrap_or_else(|e| panic!("ring supports the default TLS versions: {e}"));
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let delays: Vec<u64> = (1..=8).map(|n| backoff(n).as_millis() as u64).collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]);
        assert_eq!(backoff(u32::MAX), BACKOFF_CAP);
    }

    #[test]
    fn the_registry_endpoint_is_the_base_url_plus_v1_relays() {
        assert_eq!(relays_endpoint("http://r:8080").unwrap(), "http://r:8080/v1/relays");
        assert_eq!(relays_endpoint("https://r/").unwrap(), "https://r/v1/relays");
        assert_eq!(relays_endpoint("https://r/v1/relays").unwrap(), "https://r/v1/relays");
        assert!(relays_endpoint("wss://r").is_err());
        assert!(relays_endpoint("r:8080").is_err());
    }
}
