//! The mailbox across instances: `--redis-url` and `--redis-prefix`. Without a URL the
//! mailbox is this process's alone (in memory), as on a single instance.

use relay_transport::AppState;

/// The default of `--redis-prefix`.
pub(crate) const DEFAULT_PREFIX: &str = "relay:";

/// Sharing the Silence Labs mailbox across instances through Redis.
#[derive(Debug, clap::Args)]
pub(crate) struct RedisArgs {
    /// Redis for the mailbox across instances (`redis://[:password@]host:port[/db]`,
    /// `rediss://` for TLS): a message published on one instance reaches an asker on any
    /// other. Unset: the mailbox stays in this process's memory. Unreachable at start:
    /// the relay exits 2.
    #[arg(long, env = "REDIS_URL", value_name = "URL")]
    pub(crate) redis_url: Option<String>,

    /// Prefix of every Redis key and channel the relay uses: one per deployment, so
    /// several deployments (or tests) can share one Redis.
    #[arg(long, env = "RELAY_REDIS_PREFIX", default_value = DEFAULT_PREFIX, value_parser = parse_prefix)]
    pub(crate) redis_prefix: String,
}

fn parse_prefix(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 64 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("a Redis prefix is 1 to 64 characters without spaces or control characters".to_string());
    }
    Ok(s.to_string())
}

impl RedisArgs {
    /// Shares `state`'s mailbox through Redis when `--redis-url` is set. The error says
    /// which engine and where (never the password).
    pub(crate) async fn connect(&self, state: &AppState) -> Result<(), String> {
        let Some(url) = &self.redis_url else { return Ok(()) };
        state.connect_redis(url, &self.redis_prefix).await.map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_checked() {
        assert_eq!(parse_prefix("relay:").as_deref(), Ok("relay:"));
        assert!(parse_prefix("").is_err());
        assert!(parse_prefix("two words").is_err());
        assert!(parse_prefix(&"x".repeat(65)).is_err());
    }
}
