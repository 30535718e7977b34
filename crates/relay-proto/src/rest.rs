//! The JSON bodies of the REST API, field for field as the relay writes and reads them
//! (docs/protocol.md, docs/admin-api.md, docs/discovery.md). With the `openapi`
//! feature each derives `utoipa::ToSchema` for the server's `/openapi.json`.
//!
//! Disco's and Sodot's names are kept verbatim (`ID`, `PubKeyHex`, `Licenses`...).

#![allow(non_snake_case)] // Disco's field names, verbatim

use serde::{Deserialize, Serialize};

/// `{"status": "ok"}` (healthz), `{"status": "ready"}` or `{"status": "draining"}`
/// (readyz).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Status {
    /// `ok` (healthz), `ready` or `draining` (readyz).
    pub status: String,
}

// ---- rooms ----

/// The body of `POST /v1/rooms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateRoomRequest {
    /// Parties in the room (2 to the server's `max_room_size`).
    #[cfg_attr(feature = "openapi", schema(minimum = 2, maximum = 65535))]
    pub room_size: u64,
    /// Seconds the room lives; the server's default when absent.
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
    /// Bind each slot to a party token: the answer lists one per slot, and the room
    /// can then be joined only with one (`?party_token=`). Off when absent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub party_tokens: bool,
}

/// The optional body of `POST /create-room` (Sodot): a 2-party room without it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SodotCreateRoomRequest {
    /// Parties in the room (default 2).
    #[cfg_attr(feature = "openapi", schema(minimum = 2, maximum = 65535))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room_size: Option<u64>,
    /// Seconds the room lives; the server's default when absent.
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
    /// Bind each slot to a party token: the answer lists one per slot, and the room
    /// can then be joined only with one (`?party_token=`). Off when absent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub party_tokens: bool,
}

/// A created room (`201` to `POST /v1/rooms`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RoomCreated {
    /// The room ID: hand it to every party.
    pub room_uuid: String,
    /// Parties in the room.
    pub room_size: u16,
    /// Unix seconds after which the room is gone.
    pub expires_at: u64,
    /// With `"party_tokens": true`: the token of each slot, slot 0 first. Hand each
    /// party its own; the relay keeps only their digests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub party_tokens: Option<Vec<String>>,
}

/// A created room (`200` to `POST /create-room`, Sodot shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SodotRoomCreated {
    /// The room ID: hand it to every party.
    pub room_uuid: String,
    /// With `"party_tokens": true`: the token of each slot, slot 0 first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub party_tokens: Option<Vec<String>>,
}

// ---- discovery (Disco) and the relay registry ----

/// One peer of a group, as Babble describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Peer {
    /// The address other peers reach it at.
    pub NetAddr: String,
    /// Its public key, hex.
    pub PubKeyHex: String,
    /// A human-readable name.
    pub Moniker: String,
}

/// A group as Disco clients see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Group {
    /// Unique ID; a UUID v4 unless the creator chose one.
    pub ID: String,
    /// Name.
    pub Name: String,
    /// The application the group belongs to.
    pub AppID: String,
    /// The group's public key.
    pub PubKey: String,
    /// Unix seconds of the last create or update.
    pub LastUpdated: u64,
    /// Current peers.
    pub Peers: Vec<Peer>,
    /// The first peers.
    pub InitialPeers: Vec<Peer>,
    /// Seconds the group lives after `LastUpdated`, when set per group (absent
    /// otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub TTL: Option<u64>,
}

/// A group to create or change: every field optional; an update changes what it names.
/// The server matches keys case-insensitively and reads `GenesisPeers` when
/// `InitialPeers` is absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GroupRequest {
    /// The group's ID: chosen by the creator, or generated when absent.
    #[cfg_attr(feature = "openapi", schema(max_length = 128))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ID: Option<String>,
    /// Name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub Name: Option<String>,
    /// The application the group belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub AppID: Option<String>,
    /// The group's public key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub PubKey: Option<String>,
    /// Current peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub Peers: Option<Vec<Peer>>,
    /// The first peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub InitialPeers: Option<Vec<Peer>>,
    /// Seconds the group lives after each update (capped by the server).
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub TTL: Option<u64>,
}

/// What a relay announces to the registry (`POST /v1/relays`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Announcement {
    /// Where clients reach the relay: `http`, `https`, `ws` or `wss` with a host.
    pub url: String,
    /// The relay's room-ID prefix (8 lowercase hex characters), if it has one.
    #[serde(default)]
    pub room_id_prefix: Option<String>,
    /// The TTL asked for, in seconds; the registry's default when absent.
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

/// A live relay in the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RelayEntry {
    /// Where clients reach the relay.
    pub url: String,
    /// Its room-ID prefix, or `null`.
    pub room_id_prefix: Option<String>,
    /// Unix seconds of its first announcement in the current run of entries.
    pub registered_at: u64,
    /// Unix seconds of its latest announcement.
    pub last_announced_at: u64,
    /// Unix seconds after which it is dropped unless it announces again.
    pub expires_at: u64,
    /// The TTL granted, in seconds.
    pub ttl_secs: u64,
}

/// `GET /v1/relays`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RelayList {
    /// The live relays.
    pub relays: Vec<RelayEntry>,
}

// ---- API keys and admin ----

/// The body of `POST /v1/admin/keys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    /// Key name: 1 to 64 of `A-Z a-z 0-9 . _ -`.
    pub name: String,
    /// Unix seconds; 0 or absent means never.
    #[serde(default)]
    pub expires_at: u64,
    /// The mailbox namespace; absent makes the key its own tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

/// The answer to a key creation: the key itself, shown this once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreatedKey {
    /// Key name.
    pub name: String,
    /// The key, standard base64 of 16 bytes. Never shown again.
    pub key: String,
    /// Its tenant (mailbox namespace).
    pub tenant: String,
    /// Unix seconds of creation.
    pub created_at: u64,
    /// Unix seconds of expiry; 0 = never.
    pub expires_at: u64,
}

/// How a key came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum KeyOrigin {
    /// From `--api-key` (never expires, can be revoked).
    Preconfigured,
    /// Created through the admin API.
    Created,
}

/// Whether a key would be accepted now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum KeyStatus {
    /// Accepted.
    Active,
    /// Revoked (this wins over expired).
    Revoked,
    /// Past its expiry.
    Expired,
    /// A preconfigured key whose `--api-key` value was not passed this run.
    NotConfigured,
}

/// Counted use of a key (or the total of every key).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyUsage {
    /// Mailbox and room messages sent.
    pub messages: u64,
    /// Payload bytes of those messages.
    pub bytes: u64,
    /// Rooms created.
    pub rooms: u64,
}

/// A key as every admin answer shows it: everything the store keeps but the digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyInfo {
    /// Unique name.
    pub name: String,
    /// Its tenant (mailbox namespace).
    pub tenant: String,
    /// Preconfigured or created.
    pub origin: KeyOrigin,
    /// Unix seconds of creation (first start for a preconfigured key).
    pub created_at: u64,
    /// Unix seconds of expiry; 0 = never.
    pub expires_at: u64,
    /// Whether it was revoked.
    pub revoked: bool,
    /// Unix seconds of the revocation, `null` while not revoked.
    pub revoked_at: Option<u64>,
    /// Whether it would be accepted now.
    pub status: KeyStatus,
    /// Counted use.
    pub usage: KeyUsage,
}

/// `GET /v1/admin/keys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyList {
    /// Every key, revoked and expired ones too, by name.
    pub keys: Vec<KeyInfo>,
}

/// A live room as the admin sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LiveRoom {
    /// The room ID.
    pub room_uuid: String,
    /// Parties in the room.
    pub room_size: u16,
    /// Unix seconds of the room's creation.
    #[serde(default)]
    pub created_at: u64,
    /// Unix seconds after which the room is gone.
    pub expires_at: u64,
    /// Slots connected now.
    pub present: Vec<u16>,
    /// Whether every slot has joined at least once.
    pub ready: bool,
    /// The name of the key that created it, `null` when keys are not enforced.
    pub key: Option<String>,
}

/// `GET /v1/admin/rooms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RoomList {
    /// The live rooms.
    pub rooms: Vec<LiveRoom>,
}

/// `GET /rooms/<token>` (Sodot shape): keys under `Licenses`, live rooms under `Rooms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SodotKeyList {
    /// Every key (never the key itself).
    pub Licenses: Vec<KeyInfo>,
    /// The live rooms.
    pub Rooms: Vec<LiveRoom>,
}

/// One key's line of `GET /v1/admin/usage`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UsageEntry {
    /// Key name.
    pub name: String,
    /// Its tenant.
    pub tenant: String,
    /// Mailbox and room messages sent.
    pub messages: u64,
    /// Payload bytes of those messages.
    pub bytes: u64,
    /// Rooms created.
    pub rooms: u64,
}

/// `GET /v1/admin/usage`: usage per key and the total.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UsageReport {
    /// Per key.
    pub keys: Vec<UsageEntry>,
    /// The sum over every key.
    pub total: KeyUsage,
}

/// `GET /v1/key`: the key presented.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WhoAmI {
    /// The key's name; `null` when keys are not enforced.
    pub name: Option<String>,
    /// Its tenant (mailbox namespace).
    pub tenant: String,
    /// Unix seconds of expiry; 0 = never.
    pub expires_at: u64,
}

/// The answer to `DELETE /v1/admin/rooms/{room_id}`: the room is closed, its parties
/// got close code 1008 `room closed by the operator`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RoomClosed {
    /// The room ID.
    pub room_uuid: String,
    /// Always `true`.
    pub closed: bool,
}

// ---- stats (the console's charts) ----

/// One key's counters in a [`StatsSample`] (totals since the key was created).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeySample {
    /// Key name.
    pub name: String,
    /// Mailbox and room messages sent with the key.
    pub messages: u64,
    /// Payload bytes of those messages.
    pub bytes: u64,
    /// Rooms created with the key.
    pub rooms: u64,
}

/// The relay's counters at one instant. Counters (`_total` on `/metrics`) are totals
/// since start: a rate is the difference between two samples over their time apart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StatsSample {
    /// Unix seconds of the sample.
    pub t: u64,
    /// Open TCP connections (gauge).
    pub connections_open: u64,
    /// Open WebSockets, rooms and mailbox (gauge).
    pub websockets_open: u64,
    /// Live rooms (gauge).
    pub rooms_open: u64,
    /// Connections accepted since start.
    pub connections: u64,
    /// Rooms created since start.
    pub rooms_created: u64,
    /// Messages relayed since start (room data frames and mailbox publishes).
    pub messages: u64,
    /// Payload bytes relayed since start.
    pub bytes: u64,
    /// Requests refused for their credentials since start.
    pub auth_failures: u64,
    /// Requests, connections and messages refused by a rate limit since start.
    pub rate_limited: u64,
    /// Per-key usage totals: the most used keys (by messages), at most the server's
    /// `max_keys` of the stats settings.
    pub keys: Vec<KeySample>,
}

/// A ring of samples taken every `step_secs`, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StatsSeries {
    /// Seconds between two samples.
    pub step_secs: u64,
    /// Samples kept at most.
    pub capacity: u64,
    /// The samples, oldest first.
    pub samples: Vec<StatsSample>,
}

/// `GET /v1/admin/stats`: what the server is and recent samples of its counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Stats {
    /// The server's version.
    pub version: String,
    /// Unix seconds of the server's start.
    pub started_at: u64,
    /// Seconds since start.
    pub uptime_secs: u64,
    /// The counters now (not kept in either ring).
    pub now: StatsSample,
    /// The last minutes at a fine step (default every 5 s for 10 minutes).
    pub fine: StatsSeries,
    /// The last day at a coarse step (default every minute for 24 hours).
    pub coarse: StatsSeries,
}

// ---- STUN and TURN ----

/// Short-lived TURN credentials (`200` to `GET /v1/turn/credentials`), in the TURN REST
/// scheme of coturn's `use-auth-secret`: hand `username` and `password` with `uris` to
/// `RTCPeerConnection`'s `iceServers` (as `urls`, `username`, `credential`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TurnCredentials {
    /// `<unix expiry>:<key name>`.
    pub username: String,
    /// Standard base64 of HMAC-SHA1(the server's TURN secret, `username`).
    pub password: String,
    /// Seconds from now until the username expires.
    pub ttl: u64,
    /// The relay's STUN and TURN URIs (`turn:host:port?transport=udp`, `...=tcp`,
    /// `stun:host:port`).
    pub uris: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_are_the_ones_on_the_wire() {
        let created = RoomCreated { room_uuid: "r".into(), room_size: 3, expires_at: 9, party_tokens: None };
        assert_eq!(
            serde_json::to_string(&created).unwrap(),
            r#"{"room_uuid":"r","room_size":3,"expires_at":9}"#
        );
        let list = SodotKeyList { Licenses: vec![], Rooms: vec![] };
        assert_eq!(serde_json::to_string(&list).unwrap(), r#"{"Licenses":[],"Rooms":[]}"#);
        let entry: RelayEntry = serde_json::from_str(
            r#"{"url":"https://r","room_id_prefix":null,"registered_at":1,"last_announced_at":2,"expires_at":3,"ttl_secs":4}"#,
        )
        .unwrap();
        assert_eq!(entry.room_id_prefix, None);
        let status: KeyStatus = serde_json::from_str("\"not_configured\"").unwrap();
        assert_eq!(status, KeyStatus::NotConfigured);
        let turn = TurnCredentials {
            username: "1700000000:backend".into(),
            password: "p".into(),
            ttl: 86400,
            uris: vec!["stun:h:3478".into()],
        };
        assert_eq!(
            serde_json::to_string(&turn).unwrap(),
            r#"{"username":"1700000000:backend","password":"p","ttl":86400,"uris":["stun:h:3478"]}"#
        );
    }
}
