//! Discovery flags (group TTLs, data directory, relay registry) and the announce loop
//! that keeps this relay listed in a registry.
//!
//! The loop posts `{"url", "room_id_prefix", "ttl_secs"}` to `<registry>/v1/relays`
//! every third of the granted TTL. When the registry cannot be reached it logs a warning
//! and retries with exponential backoff (500 ms doubling, capped at 30 s). It runs in its
//! own task: serving never waits for it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Uri, header};
use hyper_util::rt::TokioIo;
use relay_transport::discovery::{
    DiscoveryConfig, GroupTtl, RegistryConfig, RegistryToken, validate_relay_url,
};
use tokio::net::TcpStream;

/// First retry delay after a failed announcement.
const BACKOFF_START: Duration = Duration::from_millis(500);
/// Longest delay between retries while the registry is unreachable.
const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// Longest one announcement may take (connect, TLS, request, response).
const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(10);

/// Discovery flags.
#[derive(Debug, clap::Args)]
pub(crate) struct DiscoveryArgs {
    /// Group time to live after its last update (Go-style duration: 90s, 5m, 1h30m; a
    /// bare number is seconds). A group may ask for its own with the `TTL` field.
    #[arg(long, env = "RELAY_GROUP_TTL", default_value = "5m", value_parser = parse_duration)]
    pub(crate) group_ttl: Duration,
    /// How often expired groups are purged from storage (they are hidden at once).
    #[arg(long, env = "RELAY_GROUP_TTL_HEARTBEAT", default_value = "1m", value_parser = parse_duration)]
    pub(crate) group_ttl_heartbeat: Duration,
    /// Largest per-group `TTL` a client may ask for.
    #[arg(long, env = "RELAY_MAX_GROUP_TTL", default_value = "168h", value_parser = parse_duration)]
    pub(crate) max_group_ttl: Duration,
    /// Directory for persistent state (groups live in `<dir>/discovery`, API keys, the
    /// admin token hash and usage in `<dir>/keys`). One server per directory; back it up.
    #[arg(long, env = "RELAY_DATA_DIR", default_value = "./relay-data", global = true)]
    pub(crate) data_dir: PathBuf,
    /// Token relays must present (`Authorization: Bearer <token>`) to announce
    /// themselves here; also the token this server presents with --announce-to.
    /// Without it, this server accepts no announcements.
    #[arg(long, env = "RELAY_REGISTRY_TOKEN", hide_env_values = true, value_parser = parse_token)]
    pub(crate) registry_token: Option<RegistryToken>,
    /// TTL of a relay registry entry: what this server asks for when it announces, and
    /// what it grants announcements that ask for none.
    #[arg(long, env = "RELAY_RELAY_TTL", default_value = "60s", value_parser = parse_duration)]
    pub(crate) relay_ttl: Duration,
    /// Registry to announce this relay to (its base URL, e.g. https://registry.example;
    /// `/v1/relays` is appended). Needs --public-url and --registry-token.
    #[arg(long, env = "RELAY_ANNOUNCE_TO", requires_all = ["public_url", "registry_token"])]
    pub(crate) announce_to: Option<String>,
    /// The URL clients reach this relay at, as announced to the registry.
    #[arg(long, env = "RELAY_PUBLIC_URL")]
    pub(crate) public_url: Option<String>,
}

impl DiscoveryArgs {
    /// The transport's discovery settings, after checking the durations.
    pub(crate) fn config(&self) -> anyhow::Result<DiscoveryConfig> {
        if self.group_ttl < Duration::from_secs(1) || self.group_ttl > self.max_group_ttl {
            bail!("--group-ttl must be between 1s and --max-group-ttl ({:?})", self.max_group_ttl);
        }
        if self.group_ttl_heartbeat.is_zero() {
            bail!("--group-ttl-heartbeat must be more than zero");
        }
        if self.relay_ttl < Duration::from_secs(1) {
            bail!("--relay-ttl must be at least 1s");
        }
        Ok(DiscoveryConfig {
            group_ttl: GroupTtl { default: self.group_ttl, max: self.max_group_ttl },
            group_ttl_heartbeat: self.group_ttl_heartbeat,
            registry: RegistryConfig {
                token: self.registry_token.clone(),
                default_ttl: self.relay_ttl,
                max_ttl: RegistryConfig::default().max_ttl.max(self.relay_ttl),
            },
        })
    }

    /// The announce loop's settings, when --announce-to is given.
    pub(crate) fn announcer(&self, room_id_prefix: Option<String>) -> anyhow::Result<Option<Announcer>> {
        let Some(registry) = &self.announce_to else { return Ok(None) };
        let (Some(public_url), Some(token)) = (&self.public_url, &self.registry_token) else {
            bail!("--announce-to needs --public-url and --registry-token");
        };
        validate_relay_url(public_url).context("--public-url")?;
        let target = relays_endpoint(registry).context("--announce-to")?;
        let body = serde_json::json!({
            "url": public_url,
            "room_id_prefix": room_id_prefix,
            "ttl_secs": self.relay_ttl.as_secs(),
        });
        Ok(Some(Announcer {
            target,
            token: token.clone(),
            body: Bytes::from(body.to_string()),
            ttl: self.relay_ttl,
        }))
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
    async fn announce_once(&self, tls: &tokio_rustls::TlsConnector) -> anyhow::Result<Duration> {
        let host = self.target.host().context("registry URL has no host")?;
        let https = self.target.scheme_str() == Some("https");
        let port = self.target.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tcp = TcpStream::connect((host.trim_start_matches('[').trim_end_matches(']'), port))
            .await
            .with_context(|| format!("connect to {host}:{port}"))?;
        tcp.set_nodelay(true).ok();
        let request = Request::post(self.target.clone())
            .header(header::HOST, self.target.authority().map(|a| a.as_str()).unwrap_or(host))
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token.expose()))
            .body(Full::new(self.body.clone()))?;
        let (status, body) = if https {
            let name =
                rustls_pki_types::ServerName::try_from(host.to_owned()).context("registry host name")?;
            let stream = tls.connect(name, tcp).await.context("TLS handshake with the registry")?;
            send(TokioIo::new(stream), request).await?
        } else {
            send(TokioIo::new(tcp), request).await?
        };
        if !status.is_success() {
            bail!("registry answered {status}: {}", String::from_utf8_lossy(&body));
        }
        let granted = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("ttl_secs")?.as_u64())
            .map(Duration::from_secs)
            .unwrap_or(self.ttl);
        Ok(granted)
    }
}

async fn send<I>(io: I, request: Request<Full<Bytes>>) -> anyhow::Result<(hyper::StatusCode, Bytes)>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = sender.send_request(request).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// The delay before retry number `failures` (1-based): 500 ms doubling, capped.
fn backoff(failures: u32) -> Duration {
    BACKOFF_START.saturating_mul(1u32 << failures.saturating_sub(1).min(16)).min(BACKOFF_CAP)
}

/// `<registry>/v1/relays` for a registry base URL (http or https).
fn relays_endpoint(registry: &str) -> anyhow::Result<Uri> {
    validate_relay_url(registry)?;
    let uri: Uri = registry.parse()?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        bail!("the registry URL must be http:// or https://");
    }
    let base = registry.trim_end_matches('/');
    let full = if base.ends_with("/v1/relays") { base.to_owned() } else { format!("{base}/v1/relays") };
    Ok(full.parse()?)
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

fn parse_token(s: &str) -> Result<RegistryToken, String> {
    if s.trim().is_empty() {
        Err("the registry token must not be empty".into())
    } else {
        Ok(RegistryToken::new(s))
    }
}

/// Parses a Go-style duration (`300ms`, `90s`, `5m`, `1h30m`, `5m0s`); a bare number is
/// seconds, so Disco's `--ttl 5m0s` and a plain `300` both work.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let bad = || format!("invalid duration {s:?}: use e.g. 500ms, 90s, 5m, 1h30m");
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let part = match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            _ => return Err(bad()),
        };
        total = total.saturating_add(part);
        rest = &rest[unit_len..];
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_go_style_and_bare_seconds() {
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("5m0s"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("42"), Ok(Duration::from_secs(42)));
        for bad in ["", "m", "5x", "5 m", "-1s", "1.5s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

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
