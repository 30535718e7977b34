//! TURN credentials in the TURN REST scheme (coturn's `use-auth-secret`): the username
//! is `<unix expiry>:<key name>` and the password is the standard base64 of
//! HMAC-SHA1(secret, username), so the relay can check a username without storing it.
//! The long-term credential key the STUN layer checks message integrity with is
//! MD5(`username:realm:password`) (RFC 5389 section 15.4). Pure functions: the caller
//! passes `now`.

use base64::prelude::{BASE64_STANDARD, Engine as _};
use ring::hmac;

/// The password of `username` under `secret`: base64(HMAC-SHA1(secret, username)).
pub(crate) fn password(secret: &str, username: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
    BASE64_STANDARD.encode(hmac::sign(&key, username.as_bytes()).as_ref())
}

/// The username for `key_name` (or none, when keys are not enforced), valid until
/// `expires_at` (unix seconds).
pub(crate) fn username(expires_at: u64, key_name: Option<&str>) -> String {
    match key_name {
        Some(name) => format!("{expires_at}:{name}"),
        None => expires_at.to_string(),
    }
}

/// A REST username, read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RestUsername<'a> {
    /// Unix seconds after which the username is refused.
    pub(crate) expires_at: u64,
    /// The API key it was minted for; `None` for a bare `<expiry>` (keys not enforced).
    pub(crate) key_name: Option<&'a str>,
}

/// Why a username is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UsernameError {
    /// Not `<unix expiry>` or `<unix expiry>:<name>`.
    Malformed,
    /// Its expiry has passed.
    Expired,
}

/// Reads `username` and checks its expiry against `now` (unix seconds).
pub(crate) fn parse_username(username: &str, now: u64) -> Result<RestUsername<'_>, UsernameError> {
    let (expiry, name) = match username.split_once(':') {
        Some((expiry, name)) => (expiry, Some(name)),
        None => (username, None),
    };
    if expiry.is_empty() || !expiry.bytes().all(|b| b.is_ascii_digit()) || name == Some("") {
        return Err(UsernameError::Malformed);
    }
    let expires_at = expiry.parse::<u64>().map_err(|_| UsernameError::Malformed)?;
    if expires_at <= now {
        return Err(UsernameError::Expired);
    }
    Ok(RestUsername { expires_at, key_name: name })
}

/// The long-term credential key: MD5(`username:realm:password`).
pub(crate) fn long_term_key(username: &str, realm: &str, password: &str) -> Vec<u8> {
    ::turn::auth::generate_auth_key(username, realm, password)
}

/// A fresh random secret (32 bytes, URL-safe base64) for a server started without
/// `--turn-secret`.
pub(crate) fn generate_secret() -> Result<String, ring::error::Unspecified> {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut bytes)?;
    Ok(base64::prelude::BASE64_URL_SAFE_NO_PAD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_is_base64_hmac_sha1_of_the_username() {
        // Computed independently with Python's hmac and hashlib.
        assert_eq!(password("north", "1700000000:backend"), "sDVe/qNpTHQNEN+/zPAV/nKcz64=");
        let key = long_term_key("1700000000:backend", "relay", "sDVe/qNpTHQNEN+/zPAV/nKcz64=");
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "029eaeefed7750ab9cf706cd3e6d752f");
    }

    #[test]
    fn usernames_round_trip_and_expire() {
        let name = username(1_700_000_000, Some("backend"));
        assert_eq!(name, "1700000000:backend");
        let parsed = parse_username(&name, 1_699_999_999).unwrap();
        assert_eq!(parsed, RestUsername { expires_at: 1_700_000_000, key_name: Some("backend") });
        assert_eq!(parse_username(&name, 1_700_000_000), Err(UsernameError::Expired));
        assert_eq!(parse_username(&name, 1_800_000_000), Err(UsernameError::Expired));
        assert_eq!(parse_username("1700000000", 1).unwrap().key_name, None);
        // A key name may itself hold a colon-free name only up to the first colon.
        assert_eq!(parse_username("17:a:b", 1).unwrap().key_name, Some("a:b"));
    }

    #[test]
    fn malformed_usernames_are_refused() {
        for bad in ["", ":backend", "soon:backend", "-1:backend", "17:", "99999999999999999999999:k", " 17:k"]
        {
            assert_eq!(parse_username(bad, 1), Err(UsernameError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn generated_secrets_differ() {
        let (a, b) = (generate_secret().unwrap(), generate_secret().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
    }
}
