//! How to reach the relay: API key and where it goes, TLS trust roots, timeouts.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::error::{Error, Result};

/// Settings shared by [`crate::RoomClient`] and [`crate::MailboxClient`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The API key, needed to create rooms and for `/v1/msg-relay` unless the relay
    /// runs with `--insecure-api-keys-not-enforced`. Joining a room needs none.
    pub api_key: Option<ApiKey>,
    /// Which certificates a `wss://` / `https://` relay may present.
    pub tls: TlsRoots,
    /// Limit for TCP connect + TLS handshake + WebSocket handshake (default 10 s).
    pub connect_timeout: Duration,
    /// Limit for one HTTP request, connect included (default 30 s).
    pub request_timeout: Duration,
    /// Largest message this client accepts from the relay (default 16 MiB; the relay's
    /// own default limit is 1 MiB).
    pub max_message_bytes: usize,
}

impl Default for ClientConfig {
    fn default() -> ClientConfig {
        ClientConfig {
            api_key: None,
            tls: TlsRoots::WebPki,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_message_bytes: 16 << 20,
        }
    }
}

impl ClientConfig {
    /// Default settings with `key` sent as `Authorization: Bearer <key>`.
    pub fn with_api_key(key: impl Into<String>) -> ClientConfig {
        ClientConfig { api_key: Some(ApiKey::bearer(key)), ..ClientConfig::default() }
    }
}

/// An API key and how it is presented (docs/protocol.md section 1).
#[derive(Clone)]
pub struct ApiKey {
    pub(crate) key: String,
    pub(crate) placement: KeyPlacement,
}

/// Where the API key travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPlacement {
    /// `Authorization: Bearer <key>`.
    BearerHeader,
    /// `Authorization: <key>` (the Sodot SDK shape).
    RawHeader,
    /// `?api_key=<key>`, percent-encoded (what a browser would do).
    Query,
}

impl ApiKey {
    /// `Authorization: Bearer <key>`.
    pub fn bearer(key: impl Into<String>) -> ApiKey {
        ApiKey { key: key.into(), placement: KeyPlacement::BearerHeader }
    }

    /// `Authorization: <key>`.
    pub fn raw_header(key: impl Into<String>) -> ApiKey {
        ApiKey { key: key.into(), placement: KeyPlacement::RawHeader }
    }

    /// `?api_key=<key>` in the query string.
    pub fn query(key: impl Into<String>) -> ApiKey {
        ApiKey { key: key.into(), placement: KeyPlacement::Query }
    }

    /// Where this key travels.
    pub fn placement(&self) -> KeyPlacement {
        self.placement
    }

    /// The `Authorization` header value, when the key goes in a header.
    pub(crate) fn header_value(&self) -> Option<String> {
        match self.placement {
            KeyPlacement::BearerHeader => Some(format!("Bearer {}", self.key)),
            KeyPlacement::RawHeader => Some(self.key.clone()),
            KeyPlacement::Query => None,
        }
    }

    /// The `api_key=...` query pair, when the key goes in the query.
    pub(crate) fn query_pair(&self) -> Option<String> {
        (self.placement == KeyPlacement::Query).then(|| format!("api_key={}", percent_encode(&self.key)))
    }
}

impl std::fmt::Debug for ApiKey {
    /// Never prints the key itself.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKey").field("key", &"<redacted>").field("placement", &self.placement).finish()
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Trust roots for TLS.
#[derive(Clone, Default)]
pub enum TlsRoots {
    /// The Mozilla roots bundled by `webpki-roots`.
    #[default]
    WebPki,
    /// Only these CA certificates (e.g. an on-prem CA, or a test's self-signed one).
    Custom(Arc<Vec<CertificateDer<'static>>>),
}

impl TlsRoots {
    /// Trusts only the CA certificates in this PEM text.
    pub fn from_pem(pem: &[u8]) -> Result<TlsRoots> {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::BadCaCertificate(e.to_string()))?;
        Self::custom(certs)
    }

    /// Trusts only the CA certificates in this PEM file.
    pub fn from_pem_file(path: impl AsRef<Path>) -> Result<TlsRoots> {
        let path = path.as_ref();
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| Error::BadCaCertificate(format!("{}: {e}", path.display())))?;
        Self::custom(certs)
    }

    fn custom(certs: Vec<CertificateDer<'static>>) -> Result<TlsRoots> {
        if certs.is_empty() {
            return Err(Error::BadCaCertificate("no CERTIFICATE block in the PEM".into()));
        }
        Ok(TlsRoots::Custom(Arc::new(certs)))
    }

    /// The rustls client configuration for these roots (ring provider, HTTP/1.1 ALPN:
    /// WebSocket handshakes and the REST calls here are HTTP/1.1).
    pub(crate) fn rustls_config(&self) -> Result<Arc<rustls::ClientConfig>> {
        let mut roots = rustls::RootCertStore::empty();
        match self {
            TlsRoots::WebPki => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            TlsRoots::Custom(certs) => {
                for c in certs.iter() {
                    roots.add(c.clone())?;
                }
            }
        }
        let mut config =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

impl std::fmt::Debug for TlsRoots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsRoots::WebPki => f.write_str("WebPki"),
            TlsRoots::Custom(c) => write!(f, "Custom({} certificates)", c.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_key_is_percent_encoded() {
        let k = ApiKey::query("ABEiM0RVZneImaq7zN3u/w==");
        assert_eq!(k.query_pair().unwrap(), "api_key=ABEiM0RVZneImaq7zN3u%2Fw%3D%3D");
        assert_eq!(k.header_value(), None);
        assert_eq!(ApiKey::bearer("k").header_value().unwrap(), "Bearer k");
        assert!(!format!("{:?}", ApiKey::bearer("secret")).contains("secret"));
    }

    #[test]
    fn pem_without_certificates_is_refused() {
        assert!(matches!(TlsRoots::from_pem(b"nothing here"), Err(Error::BadCaCertificate(_))));
    }
}
