//! Disco's group, its JSON, and what a client sends to create or change one.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::DiscoveryError;
use crate::json;

/// Longest group ID accepted. IDs travel in URL paths; Disco's own are UUIDs (36 chars).
pub const MAX_GROUP_ID_CHARS: usize = 128;

/// One peer of a group, as Babble describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// The address other peers reach it at.
    #[serde(rename = "NetAddr")]
    pub net_addr: String,
    /// Its public key, hex.
    #[serde(rename = "PubKeyHex")]
    pub pub_key_hex: String,
    /// A human-readable name.
    #[serde(rename = "Moniker")]
    pub moniker: String,
}

/// A group as Disco clients see it, field names and all.
///
/// `TTL` is this server's addition (Disco's wish list: "TTL should be configurable at the
/// group level"): seconds the group lives after `LastUpdated`; absent means the server's
/// default, and it is only serialized when set. The owner is not part of this type: it
/// is kept beside it in [`GroupRecord`] and never sent to Disco clients.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    /// Unique ID; a UUID v4 unless the creator chose one.
    #[serde(rename = "ID")]
    pub id: String,
    /// Display name.
    #[serde(rename = "Name")]
    pub name: String,
    /// The application the group belongs to; `GET /groups?app-id=` filters on it.
    #[serde(rename = "AppID")]
    pub app_id: String,
    /// The group's public key, if it has one.
    #[serde(rename = "PubKey")]
    pub pub_key: String,
    /// Unix seconds of the last create or update; the TTL counts from here.
    #[serde(rename = "LastUpdated")]
    pub last_updated: u64,
    /// The current peers.
    #[serde(rename = "Peers")]
    pub peers: Vec<Peer>,
    /// The peers the group started with (`GenesisPeers` is accepted as an alias).
    #[serde(rename = "InitialPeers", alias = "GenesisPeers")]
    pub initial_peers: Vec<Peer>,
    /// Per-group TTL override in seconds; `None` means the server's default.
    #[serde(rename = "TTL", default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
}

/// A stored group with its tenant and the API key name that created it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    /// The group as clients see it.
    pub group: Group,
    /// The tenant of the key that created it: groups are keyed by (tenant, ID), so two
    /// tenants may both have a group `g1`. Empty for the open tenant (keys not
    /// enforced, the admin token, and records written before tenants existed).
    #[serde(default)]
    pub tenant: String,
    /// Name of the API key that created the group; `None` when it was created with keys
    /// not enforced (then, with keys enforced, only the admin may change it).
    #[serde(default)]
    pub owner: Option<String>,
}

/// What a client sent to create or change a group: every field optional, so an update
/// changes only what it names. Parse it with [`GroupInput::from_json`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupInput {
    /// `ID`; an empty string counts as absent (Go's zero value).
    pub id: Option<String>,
    /// `Name`.
    pub name: Option<String>,
    /// `AppID`.
    pub app_id: Option<String>,
    /// `PubKey`.
    pub pub_key: Option<String>,
    /// `Peers`.
    pub peers: Option<Vec<Peer>>,
    /// `InitialPeers`, or `GenesisPeers` when `InitialPeers` is absent.
    pub initial_peers: Option<Vec<Peer>>,
    /// `TTL` in seconds.
    pub ttl_secs: Option<u64>,
}

impl GroupInput {
    /// Parses a Disco group body. Keys match case-insensitively and unknown keys are
    /// ignored (as Go's `encoding/json` does); `LastUpdated` is accepted and ignored,
    /// since the server sets it. A wrong type is refused naming the field.
    pub fn from_json(body: &[u8]) -> Result<GroupInput, DiscoveryError> {
        let map = json::object(body)?;
        if let Some(v) = json::get(&map, "LastUpdated")
            && !v.is_number()
        {
            return Err(DiscoveryError::field(
                "LastUpdated",
                format!("expected a number, got {}", json::kind(v)),
            ));
        }
        let id = json::string(&map, "ID", "ID")?.filter(|id| !id.is_empty());
        if let Some(id) = &id {
            validate_id(id)?;
        }
        let initial_peers = match peers(&map, "InitialPeers")? {
            Some(p) => Some(p),
            None => peers(&map, "GenesisPeers")?,
        };
        Ok(GroupInput {
            id,
            name: json::string(&map, "Name", "Name")?,
            app_id: json::string(&map, "AppID", "AppID")?,
            pub_key: json::string(&map, "PubKey", "PubKey")?,
            peers: peers(&map, "Peers")?,
            initial_peers,
            ttl_secs: json::unsigned(&map, "TTL", "TTL")?,
        })
    }

    /// A new group from this input: absent fields take Go's zero values.
    pub(crate) fn into_group(self, id: String, now: u64) -> Group {
        Group {
            id,
            name: self.name.unwrap_or_default(),
            app_id: self.app_id.unwrap_or_default(),
            pub_key: self.pub_key.unwrap_or_default(),
            last_updated: now,
            peers: self.peers.unwrap_or_default(),
            initial_peers: self.initial_peers.unwrap_or_default(),
            ttl_secs: self.ttl_secs,
        }
    }

    /// Applies the fields this input names to `group`.
    pub(crate) fn merge_into(self, group: &mut Group, now: u64) {
        group.last_updated = now;
        if let Some(v) = self.name {
            group.name = v;
        }
        if let Some(v) = self.app_id {
            group.app_id = v;
        }
        if let Some(v) = self.pub_key {
            group.pub_key = v;
        }
        if let Some(v) = self.peers {
            group.peers = v;
        }
        if let Some(v) = self.initial_peers {
            group.initial_peers = v;
        }
        if let Some(v) = self.ttl_secs {
            group.ttl_secs = Some(v);
        }
    }
}

/// Checks a group ID a client chose: 1 to [`MAX_GROUP_ID_CHARS`] characters, none of
/// them `/`, `?`, `#`, `%`, whitespace or control (it must fit in a URL path as is).
pub fn validate_id(id: &str) -> Result<(), DiscoveryError> {
    if id.is_empty() || id.chars().count() > MAX_GROUP_ID_CHARS {
        return Err(DiscoveryError::field("ID", format!("must be 1 to {MAX_GROUP_ID_CHARS} characters")));
    }
    if id.chars().any(|c| matches!(c, '/' | '?' | '#' | '%') || c.is_whitespace() || c.is_control()) {
        return Err(DiscoveryError::field(
            "ID",
            "must not contain '/', '?', '#', '%', spaces or control characters",
        ));
    }
    Ok(())
}

fn peers(map: &Map<String, Value>, name: &str) -> Result<Option<Vec<Peer>>, DiscoveryError> {
    let Some(value) = json::get(map, name) else { return Ok(None) };
    let Value::Array(items) = value else {
        return Err(DiscoveryError::field(
            name,
            format!("expected an array of peers, got {}", json::kind(value)),
        ));
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Value::Object(peer) = item else {
            return Err(DiscoveryError::field(
                format!("{name}[{i}]"),
                format!("expected a peer object, got {}", json::kind(item)),
            ));
        };
        let field = |f: &str| format!("{name}[{i}].{f}");
        out.push(Peer {
            net_addr: json::string(peer, "NetAddr", &field("NetAddr"))?.unwrap_or_default(),
            pub_key_hex: json::string(peer, "PubKeyHex", &field("PubKeyHex"))?.unwrap_or_default(),
            moniker: json::string(peer, "Moniker", &field("Moniker"))?.unwrap_or_default(),
        });
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn genesis_peers_is_read_as_initial_peers() {
        let input = GroupInput::from_json(
            br#"{"Name":"g","GenesisPeers":[{"NetAddr":"a","PubKeyHex":"k","Moniker":"m"}]}"#,
        )
        .unwrap();
        let peer = Peer { net_addr: "a".into(), pub_key_hex: "k".into(), moniker: "m".into() };
        assert_eq!(input.initial_peers, Some(vec![peer]));
        assert_eq!(input.peers, None);
    }

    #[test]
    fn keys_match_case_insensitively_and_unknown_keys_are_ignored() {
        let input = GroupInput::from_json(br#"{"name":"g","appid":"A","Extra":1,"id":"x1"}"#).unwrap();
        assert_eq!(input.name.as_deref(), Some("g"));
        assert_eq!(input.app_id.as_deref(), Some("A"));
        assert_eq!(input.id.as_deref(), Some("x1"));
    }

    #[test]
    fn wrong_types_name_the_field() {
        let err = GroupInput::from_json(br#"{"Name":5}"#).unwrap_err();
        assert_eq!(err.to_string(), "invalid field `Name`: expected a string, got a number");
        let err = GroupInput::from_json(br#"{"Peers":[{"NetAddr":true}]}"#).unwrap_err();
        assert_eq!(err.to_string(), "invalid field `Peers[0].NetAddr`: expected a string, got a boolean");
        let err = GroupInput::from_json(br#"{"TTL":-3}"#).unwrap_err();
        assert!(err.to_string().starts_with("invalid field `TTL`"), "{err}");
        let err = GroupInput::from_json(br#"{"ID":"a/b"}"#).unwrap_err();
        assert!(err.to_string().starts_with("invalid field `ID`"), "{err}");
        let err = GroupInput::from_json(b"[1]").unwrap_err();
        assert_eq!(err.to_string(), "invalid JSON: expected a JSON object, got an array");
        assert!(matches!(GroupInput::from_json(b"{"), Err(DiscoveryError::InvalidJson(_))));
    }

    #[test]
    fn group_serializes_with_disco_field_names_and_no_owner() {
        let group = Group { id: "1".into(), last_updated: 7, ..Group::default() };
        let v = serde_json::to_value(&group).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"ID":"1","Name":"","AppID":"","PubKey":"","LastUpdated":7,
                               "Peers":[],"InitialPeers":[]})
        );
    }
}
