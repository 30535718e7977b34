//! The secrets: [`ApiKey`] (16 random bytes, standard base64), [`AdminToken`], the
//! `--api-key KEY,NAME` values ([`PreconfiguredKey`]), and the SHA-256 digest that is
//! all the store ever keeps of them.
//!
//! Secrets print as `<redacted>` under `Debug` and have no `Display`: getting the text
//! out takes an explicit call ([`ApiKey::to_base64`], [`AdminToken::as_str`]), so a
//! stray `{:?}` in a log line cannot leak one.

use std::fmt;

use base64::prelude::{BASE64_STANDARD, BASE64_URL_SAFE_NO_PAD, Engine as _};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::error::{ApiKeyArgProblem, KeystoreError};

/// Length of an API key in bytes.
pub const API_KEY_LEN: usize = 16;

/// Length of an API key in standard base64 with padding.
const API_KEY_B64_LEN: usize = 24;

/// Random bytes in a generated admin token (printed as 43 base64url characters).
const ADMIN_TOKEN_RANDOM_LEN: usize = 32;

/// Longest admin token accepted from the operator.
pub const MAX_ADMIN_TOKEN_LEN: usize = 512;

/// Longest key name or tenant.
pub const MAX_NAME_LEN: usize = 64;

/// An API key: 16 random bytes, written as standard base64 (`ABEiM0RVZneImaq7zN3u/w==`).
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey([u8; API_KEY_LEN]);

impl ApiKey {
    /// A new key from the operating system's random source.
    pub fn generate() -> Result<Self, KeystoreError> {
        let mut bytes = [0u8; API_KEY_LEN];
        getrandom::fill(&mut bytes)?;
        Ok(Self(bytes))
    }

    /// Parses standard base64 (with padding) of exactly 16 bytes. Nothing else is
    /// accepted: no whitespace, no base64url, no missing padding.
    pub fn parse(text: &str) -> Option<Self> {
        if text.len() != API_KEY_B64_LEN {
            return None;
        }
        // 24 base64 characters decode to at most 18 bytes; the buffer is sized so a
        // decode never fails for lack of room, and the length check below decides.
        let mut buf = [0u8; 18];
        let n = BASE64_STANDARD.decode_slice(text, &mut buf).ok()?;
        let bytes: [u8; API_KEY_LEN] = buf.get(..n)?.try_into().ok()?;
        Some(Self(bytes))
    }

    /// Parses the key as standard base64 ([`ApiKey::parse`]) or as 32 hexadecimal
    /// characters, either case (the Sodot guide calls the key base16). The lengths
    /// differ (24 and 32), so no text is read both ways.
    pub fn parse_base64_or_hex(text: &str) -> Option<Self> {
        Self::parse(text).or_else(|| Self::parse_hex(text))
    }

    /// Parses exactly 32 hexadecimal characters (16 bytes), either case.
    pub fn parse_hex(text: &str) -> Option<Self> {
        if text.len() != 2 * API_KEY_LEN || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut bytes = [0u8; API_KEY_LEN];
        for (slot, pair) in bytes.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
            *slot = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
        }
        Some(Self(bytes))
    }

    /// A key from its raw bytes.
    pub fn from_bytes(bytes: [u8; API_KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The key as standard base64, the form clients present. Show it once, to whoever
    /// created the key; never log it.
    pub fn to_base64(&self) -> String {
        BASE64_STANDARD.encode(self.0)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; API_KEY_LEN] {
        &self.0
    }

    pub(crate) fn digest(&self) -> KeyDigest {
        KeyDigest::of(&self.0)
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// The admin token: guards creating, listing and revoking keys.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl AdminToken {
    /// A token the operator chose (`--secret-auth`). It must be 1 to 512 visible ASCII
    /// characters without `/`, `?` or `#`, since the Sodot admin routes carry it as a
    /// URL path segment.
    pub fn new(token: impl Into<String>) -> Result<Self, KeystoreError> {
        let token = token.into();
        if token.is_empty() {
            return Err(KeystoreError::InvalidAdminToken("it is empty"));
        }
        if token.len() > MAX_ADMIN_TOKEN_LEN {
            return Err(KeystoreError::InvalidAdminToken("it is longer than 512 characters"));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic() && !matches!(b, b'/' | b'?' | b'#')) {
            return Err(KeystoreError::InvalidAdminToken(
                "use visible ASCII characters other than / ? and #",
            ));
        }
        Ok(Self(token))
    }

    /// A new random token: 32 bytes as base64url without padding (43 characters).
    pub fn generate() -> Result<Self, KeystoreError> {
        let mut bytes = [0u8; ADMIN_TOKEN_RANDOM_LEN];
        getrandom::fill(&mut bytes)?;
        Ok(Self(BASE64_URL_SAFE_NO_PAD.encode(bytes)))
    }

    /// The token text, to print once at first start; never log it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub(crate) fn digest(&self) -> KeyDigest {
        KeyDigest::of(self.0.as_bytes())
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

/// One `--api-key KEY,NAME` value: a key that never expires and can be revoked.
#[derive(Clone, PartialEq, Eq)]
pub struct PreconfiguredKey {
    /// The key.
    pub key: ApiKey,
    /// Its name (1 to 64 characters of `A-Z a-z 0-9 . _ -`).
    pub name: String,
}

impl PreconfiguredKey {
    /// Parses `KEY,NAME` where KEY is 16 bytes as standard base64 or 32 hexadecimal
    /// characters. Errors say what is
    /// wrong without repeating the value.
    pub fn parse(value: &str) -> Result<Self, KeystoreError> {
        Self::parse_inner(value).map_err(|problem| KeystoreError::ApiKeyArg { problem })
    }

    /// Parses every `--api-key` value in order and refuses a name or a key given twice;
    /// errors name the value's position (from 1).
    pub fn parse_all<S: AsRef<str>>(values: &[S]) -> Result<Vec<Self>, KeystoreError> {
        let keys = values
            .iter()
            .enumerate()
            .map(|(index, value)| {
                Self::parse_inner(value.as_ref())
                    .map_err(|problem| KeystoreError::ApiKeyArgAt { position: index + 1, problem })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::check_unique(&keys)?;
        Ok(keys)
    }

    /// Refuses a name or a key given twice, naming the later position and the earlier
    /// one (both from 1).
    pub fn check_unique(keys: &[PreconfiguredKey]) -> Result<(), KeystoreError> {
        for (index, pk) in keys.iter().enumerate() {
            let earlier = keys.get(..index).unwrap_or_default();
            let problem = earlier.iter().enumerate().find_map(|(e, other)| {
                if other.name == pk.name {
                    Some(ApiKeyArgProblem::RepeatedName { first: e + 1 })
                } else if other.key == pk.key {
                    Some(ApiKeyArgProblem::RepeatedKey { first: e + 1 })
                } else {
                    None
                }
            });
            if let Some(problem) = problem {
                return Err(KeystoreError::ApiKeyArgAt { position: index + 1, problem });
            }
        }
        Ok(())
    }

    fn parse_inner(value: &str) -> Result<Self, ApiKeyArgProblem> {
        let (key, name) = value.split_once(',').ok_or(ApiKeyArgProblem::MissingComma)?;
        let key = ApiKey::parse_base64_or_hex(key).ok_or(ApiKeyArgProblem::BadKey)?;
        if name.is_empty() {
            return Err(ApiKeyArgProblem::MissingName);
        }
        if !is_valid_name(name) {
            return Err(ApiKeyArgProblem::BadName);
        }
        Ok(Self { key, name: name.to_owned() })
    }
}

impl fmt::Debug for PreconfiguredKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreconfiguredKey").field("key", &self.key).field("name", &self.name).finish()
    }
}

/// SHA-256 of a key or token: the only form a secret is stored in.
#[derive(Clone, Copy)]
pub(crate) struct KeyDigest(pub(crate) [u8; 32]);

impl KeyDigest {
    pub(crate) fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// Constant-time equality: the time taken does not depend on where they differ.
    pub(crate) fn ct_eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }

    /// The first 8 bytes, used only to find candidate entries; the full digest is then
    /// compared in constant time.
    pub(crate) fn bucket(&self) -> u64 {
        let mut prefix = [0u8; 8];
        prefix.copy_from_slice(&self.0[..8]);
        u64::from_le_bytes(prefix)
    }

    pub(crate) fn to_hex(self) -> String {
        use fmt::Write as _;
        self.0.iter().fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    }

    pub(crate) fn from_hex(hex: &str) -> Option<Self> {
        if hex.len() != 64 || !hex.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (slot, pair) in out.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
            let pair = std::str::from_utf8(pair).ok()?;
            *slot = u8::from_str_radix(pair, 16).ok()?;
        }
        Some(Self(out))
    }
}

/// Whether `name` is 1 to 64 characters of `A-Z a-z 0-9 . _ -` (the rule for key names
/// and tenants: safe in URL paths, logs and metric labels).
pub fn is_valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED_KEY: &str = "ABEiM0RVZneImaq7zN3u/w==";

    #[test]
    fn a_key_in_32_hex_characters_is_the_same_key_as_its_base64() {
        let seed = ApiKey::parse(SEED_KEY).expect("seed");
        for hex in ["00112233445566778899aabbccddeeff", "00112233445566778899AABBCCDDEEFF"] {
            assert_eq!(ApiKey::parse_base64_or_hex(hex), Some(seed.clone()), "{hex}");
            let pk = PreconfiguredKey::parse(&format!("{hex},backend")).expect("hex --api-key");
            assert_eq!(pk.key, seed);
        }
        for bad in [
            "00112233445566778899aabbccddeef",
            "00112233445566778899aabbccddeeff0",
            "0011223344556677889zaabbccddeeff",
        ] {
            assert_eq!(ApiKey::parse_base64_or_hex(bad), None, "{bad}");
        }
    }

    #[test]
    fn parses_the_sodot_example_key() {
        let key = ApiKey::parse(SEED_KEY).expect("valid key");
        let expected =
            [0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff];
        assert_eq!(key.as_bytes(), &expected);
        assert_eq!(key.to_base64(), SEED_KEY);
    }

    #[test]
    fn refuses_keys_that_are_not_16_bytes_of_standard_base64() {
        for bad in [
            "",
            "ABEiM0RVZneImaq7zN3u/w",       // no padding
            "ABEiM0RVZneImaq7zN3u_w==",     // base64url
            "ABEiM0RVZneImaq7zN3u/w== ",    // trailing space
            "ABEiM0RVZneImaq7zN3u/wA=",     // 17 bytes
            "ABEiM0RVZneImaq7zN3u",         // 15 bytes
            "ABEiM0RVZneImaq7zN3u/w==AAAA", // too long
            "ABEiM0RVZneImaq7zN3u/x==",     // non-canonical trailing bits
            "ÄBEiM0RVZneImaq7zN3u/w=",      // non-ASCII, 24 bytes
        ] {
            assert!(ApiKey::parse(bad).is_none(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn secrets_debug_redacted() {
        let key = ApiKey::parse(SEED_KEY).expect("valid key");
        let token = AdminToken::new("s3cret-token-value").expect("valid token");
        let pre = PreconfiguredKey::parse(&format!("{SEED_KEY},Admin")).expect("valid");
        for text in [format!("{key:?}"), format!("{token:?}"), format!("{pre:?}")] {
            assert!(!text.contains(SEED_KEY) && !text.contains("s3cret"), "{text}");
            assert!(text.contains("<redacted>"), "{text}");
        }
    }

    #[test]
    fn generated_keys_and_tokens_differ_and_round_trip() {
        let a = ApiKey::generate().expect("random");
        let b = ApiKey::generate().expect("random");
        assert_ne!(a, b);
        assert_eq!(ApiKey::parse(&a.to_base64()), Some(a));
        let t = AdminToken::generate().expect("random");
        assert_eq!(t.as_str().len(), 43);
        assert_eq!(AdminToken::new(t.as_str()).expect("generated tokens are valid"), t);
    }

    #[test]
    fn admin_token_rules() {
        assert!(AdminToken::new("").is_err());
        assert!(AdminToken::new("a/b").is_err());
        assert!(AdminToken::new("a b").is_err());
        assert!(AdminToken::new("x".repeat(MAX_ADMIN_TOKEN_LEN + 1)).is_err());
        assert!(AdminToken::new("x".repeat(MAX_ADMIN_TOKEN_LEN)).is_ok());
    }

    #[test]
    fn names() {
        assert!(is_valid_name("AdminKey"));
        assert!(is_valid_name("a.b_c-9"));
        assert!(is_valid_name(&"n".repeat(64)));
        assert!(!is_valid_name(&"n".repeat(65)));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("a b"));
        assert!(!is_valid_name("a/b"));
        assert!(!is_valid_name("é"));
    }

    #[test]
    fn digest_hex_round_trips() {
        let d = KeyDigest::of(b"abc");
        assert_eq!(d.to_hex(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert!(KeyDigest::from_hex(&d.to_hex()).expect("hex").ct_eq(&d));
        assert!(KeyDigest::from_hex("zz").is_none());
        assert!(KeyDigest::from_hex(&"g".repeat(64)).is_none());
    }

    #[test]
    fn preconfigured_parse_errors_never_contain_the_key() {
        let cases = [
            (SEED_KEY.to_owned(), ApiKeyArgProblem::MissingComma),
            (format!("{SEED_KEY},"), ApiKeyArgProblem::MissingName),
            (format!("{SEED_KEY},bad name"), ApiKeyArgProblem::BadName),
            (format!("Admin,{SEED_KEY}"), ApiKeyArgProblem::BadKey),
            ("ABEiM0RVZneImaq7zN3u/wA=,Admin".to_owned(), ApiKeyArgProblem::BadKey),
        ];
        for (value, problem) in cases {
            let err = PreconfiguredKey::parse(&value).expect_err(&problem.to_string());
            assert!(matches!(err, KeystoreError::ApiKeyArg { problem: p } if p == problem), "{err:?}");
            let text = format!("{err} {err:?}");
            assert!(!text.contains("ABEiM0RVZneImaq7zN3u"), "{text}");
        }
    }

    #[test]
    fn parse_all_reports_repeats_by_position() {
        let other = "AAAAAAAAAAAAAAAAAAAAAA==";
        let err = PreconfiguredKey::parse_all(&[
            format!("{SEED_KEY},a"),
            format!("{other},b"),
            format!("{other},a"),
        ])
        .expect_err("repeated name");
        assert!(matches!(
            err,
            KeystoreError::ApiKeyArgAt { position: 3, problem: ApiKeyArgProblem::RepeatedName { first: 1 } }
        ));
        let err = PreconfiguredKey::parse_all(&[format!("{SEED_KEY},a"), format!("{SEED_KEY},b")])
            .expect_err("repeated key");
        assert!(
            matches!(
                err,
                KeystoreError::ApiKeyArgAt {
                    position: 2,
                    problem: ApiKeyArgProblem::RepeatedKey { first: 1 }
                }
            ),
            "{err:?}"
        );
        assert!(!err.to_string().contains(SEED_KEY));
        let err = PreconfiguredKey::parse_all(&["x,y"]).expect_err("bad key");
        assert_eq!(
            err.to_string(),
            "invalid --api-key value #1 (expected KEY,NAME): KEY is not 16 bytes as standard base64 or 32 hex characters"
        );
        let ok =
            PreconfiguredKey::parse_all(&[format!("{SEED_KEY},a"), format!("{other},b")]).expect("valid");
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[1].name, "b");
    }
}
