//! Discovery flags: group TTLs, the data directory, the relay registry, and the
//! settings of the announce loop (`relay_transport::announce`) that keeps this relay
//! listed in a registry.

use std::path::PathBuf;
use std::time::Duration;

use crate::announce::Announcer;
use anyhow::{Context, bail};
use relay_discovery::{DEFAULT_MAX_GROUPS_PER_KEY, DiscoveryConfig, GroupTtl, RegistryConfig, RegistryToken};

/// Largest group TTL (`--group-ttl`, `--max-group-ttl`) accepted: 10 years. Keeps
/// `LastUpdated + TTL` far from overflowing, in memory and in PostgreSQL's bigint.
const MAX_GROUP_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Largest `--group-ttl-heartbeat`: one day.
const MAX_HEARTBEAT: Duration = Duration::from_secs(24 * 3600);
/// Shortest `--group-ttl-heartbeat`: 100 ms.
const MIN_HEARTBEAT: Duration = Duration::from_millis(100);
/// Largest `--relay-ttl`: 30 days.
const MAX_RELAY_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Largest `--max-groups-per-key`.
const MAX_GROUPS_PER_KEY_LIMIT: usize = 1_000_000;

/// Discovery flags.
#[derive(Debug, clap::Args)]
pub(crate) struct DiscoveryArgs {
    /// Group time to live after its last update (Go-style duration: 90s, 5m, 1h30m; a
    /// bare number is seconds). A group may ask for its own with the `TTL` field.
    #[arg(long, env = "RELAY_GROUP_TTL", default_value = "5m", value_parser = parse_duration, visible_alias = "ttl")]
    pub(crate) group_ttl: Duration,
    /// How often expired groups are purged from storage (they are hidden at once).
    /// Disco's spelling `--ttl-hearbeat` is accepted.
    #[arg(long, env = "RELAY_GROUP_TTL_HEARTBEAT", default_value = "1m", value_parser = parse_duration,
          visible_alias = "ttl-hearbeat")]
    pub(crate) group_ttl_heartbeat: Duration,
    /// Largest per-group `TTL` a client may ask for (at most 10 years).
    #[arg(long, env = "RELAY_MAX_GROUP_TTL", default_value = "168h", value_parser = parse_duration)]
    pub(crate) max_group_ttl: Duration,
    /// The most live discovery groups one API key may own in its tenant (1 to
    /// 1,000,000); over it, creating one answers 429 `too_many_groups_for_key`. With keys
    /// not enforced, the most all callers together may own. The admin token is not limited.
    #[arg(long, env = "RELAY_MAX_GROUPS_PER_KEY", default_value_t = DEFAULT_MAX_GROUPS_PER_KEY)]
    pub(crate) max_groups_per_key: usize,
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
    /// The transport's discovery settings, after checking every duration and limit is
    /// in its range (the server exits 2 naming the flag otherwise).
    pub(crate) fn config(&self) -> anyhow::Result<DiscoveryConfig> {
        if self.max_group_ttl < Duration::from_secs(1) || self.max_group_ttl > MAX_GROUP_TTL {
            bail!(
                "--max-group-ttl must be between 1s and {}h (10 years), got {:?}",
                MAX_GROUP_TTL.as_secs() / 3600,
                self.max_group_ttl
            );
        }
        if self.group_ttl < Duration::from_secs(1) || self.group_ttl > self.max_group_ttl {
            bail!(
                "--group-ttl must be between 1s and --max-group-ttl ({:?}), got {:?}",
                self.max_group_ttl,
                self.group_ttl
            );
        }
        if self.group_ttl_heartbeat < MIN_HEARTBEAT || self.group_ttl_heartbeat > MAX_HEARTBEAT {
            bail!("--group-ttl-heartbeat must be between 100ms and 24h, got {:?}", self.group_ttl_heartbeat);
        }
        if self.relay_ttl < Duration::from_secs(1) || self.relay_ttl > MAX_RELAY_TTL {
            bail!("--relay-ttl must be between 1s and 720h (30 days), got {:?}", self.relay_ttl);
        }
        if !(1..=MAX_GROUPS_PER_KEY_LIMIT).contains(&self.max_groups_per_key) {
            bail!(
                "--max-groups-per-key must be between 1 and {MAX_GROUPS_PER_KEY_LIMIT}, got {}",
                self.max_groups_per_key
            );
        }
        Ok(DiscoveryConfig {
            group_ttl: GroupTtl { default: self.group_ttl, max: self.max_group_ttl },
            group_ttl_heartbeat: self.group_ttl_heartbeat,
            max_groups_per_key: self.max_groups_per_key,
            registry: RegistryConfig {
                token: self.registry_token.clone(),
                default_ttl: self.relay_ttl,
                max_ttl: RegistryConfig::default().max_ttl.max(self.relay_ttl),
            },
        })
    }

    /// The announce loop, when --announce-to is given.
    pub(crate) fn announcer(&self, room_id_prefix: Option<String>) -> anyhow::Result<Option<Announcer>> {
        let Some(registry) = &self.announce_to else { return Ok(None) };
        let (Some(public_url), Some(token)) = (&self.public_url, &self.registry_token) else {
            bail!("--announce-to needs --public-url and --registry-token");
        };
        let announcer = Announcer::new(registry, public_url, room_id_prefix, token.clone(), self.relay_ttl)
            .context("--announce-to / --public-url")?;
        Ok(Some(announcer))
    }
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
}
