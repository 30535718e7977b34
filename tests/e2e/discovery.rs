//! Discovery over HTTP, served in-process: Disco's README requests verbatim (at Disco's
//! paths and under `/v1/`), the JSON errors, and the relay registry's routes.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::support::{HttpResponse, ServerConfig, http_request, open_config, post_json, serve_in_process};
use hyper::StatusCode;
use relay_discovery::{RegistryConfig, RegistryToken};
use serde_json::{Value, json};

/// `new_group.json` from Disco's README, byte for byte.
const NEW_GROUP_JSON: &str = r#"{
	"Name": "office group",
	"AppID": "BabbleChat",
	"Peers": [ 
		{
			"NetAddr":"thenetaddr",
			"PubKeyHex":"thepubkey",
			"Moniker":"Monica"
		}
	],
	"GenesisPeers": [
		{
			"NetAddr":"thenetaddr",
			"PubKeyHex":"thepubkey",
			"Moniker":"Monica"
		}
	]
}"#;

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

async fn send(addr: SocketAddr, method: &str, path: &str, body: &str) -> HttpResponse {
    http_request(addr, method, path, &[("content-type", "application/json")], body.as_bytes()).await.unwrap()
}

/// The group Disco's README shows for `new_group.json`, with this ID and LastUpdated.
fn readme_group(id: &str, last_updated: u64) -> Value {
    let monica = json!({"NetAddr": "thenetaddr", "PubKeyHex": "thepubkey", "Moniker": "Monica"});
    json!({
        "ID": id, "Name": "office group", "AppID": "BabbleChat", "PubKey": "",
        "LastUpdated": last_updated, "Peers": [monica.clone()], "InitialPeers": [monica],
    })
}

/// The methods a 405's `Allow` header names, sorted.
fn allowed(resp: &HttpResponse) -> Vec<String> {
    let allow = resp.headers.get("allow").expect("a 405 names the allowed methods").to_str().unwrap();
    let mut methods: Vec<String> = allow.split(',').map(|m| m.trim().to_owned()).collect();
    methods.sort();
    methods
}

fn assert_error(resp: &HttpResponse, status: StatusCode, code: &str, mentions: &str) {
    assert_eq!(resp.status, status, "{}", resp.text());
    let body = resp.json();
    assert_eq!(body["error"]["code"], code, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(mentions), "message {message:?} should mention {mentions:?}");
}

#[tokio::test]
async fn disco_readme_requests_get_disco_answers_at_both_prefixes() {
    let (addr, _state) = serve_in_process(open_config()).await.unwrap();
    for prefix in ["", "/v1"] {
        // Add a group: 201 with the generated ID as a JSON string.
        let before = unix_now();
        let resp = send(addr, "POST", &format!("{prefix}/group"), NEW_GROUP_JSON).await;
        let after = unix_now();
        assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.text());
        let id = resp.json().as_str().expect("the ID as a JSON string").to_owned();
        assert_eq!(uuid_version(&id), Some('4'), "{id}");

        // List groups by app-id: an object keyed by ID.
        let resp = send(addr, "GET", &format!("{prefix}/groups?app-id=BabbleChat"), "").await;
        assert_eq!(resp.status, StatusCode::OK);
        let listed = resp.json();
        let last_updated = listed[&id]["LastUpdated"].as_u64().expect("LastUpdated");
        assert!((before..=after).contains(&last_updated));
        assert_eq!(listed, json!({ id.clone(): readme_group(&id, last_updated) }));
        let resp = send(addr, "GET", &format!("{prefix}/groups?app-id=OtherApp"), "").await;
        assert_eq!(resp.json(), json!({}));

        // Get a specific group.
        let resp = send(addr, "GET", &format!("{prefix}/groups/{id}"), "").await;
        assert_eq!((resp.status, resp.json()), (StatusCode::OK, readme_group(&id, last_updated)));

        // Update a group: PATCH /group with the ID in the body, then PATCH /groups/{ID}.
        let mut updated = readme_group(&id, 0);
        updated["Name"] = json!("renamed office group");
        let resp = send(addr, "PATCH", &format!("{prefix}/group"), &updated.to_string()).await;
        assert_eq!((resp.status, resp.json()), (StatusCode::OK, json!(id)));
        let resp = send(addr, "PATCH", &format!("{prefix}/groups/{id}"), r#"{"PubKey":"0xabc"}"#).await;
        assert_eq!((resp.status, resp.json()), (StatusCode::OK, json!(id)));
        let group = send(addr, "GET", &format!("{prefix}/groups/{id}"), "").await.json();
        assert_eq!(
            (group["Name"].as_str(), group["PubKey"].as_str()),
            (Some("renamed office group"), Some("0xabc"))
        );
        assert_eq!(group["Peers"], readme_group(&id, 0)["Peers"], "fields not named are kept");

        // Delete a group: Disco's sentence as plain text; then it is gone.
        let resp = send(addr, "DELETE", &format!("{prefix}/groups/{id}"), "").await;
        assert_eq!(resp.status, StatusCode::OK);
        assert_eq!(resp.text(), format!("The group with ID {id} has been deleted successfully"));
        let resp = send(addr, "GET", &format!("{prefix}/groups/{id}"), "").await;
        assert_error(&resp, StatusCode::NOT_FOUND, "group_not_found", &id);
    }
}

#[tokio::test]
async fn a_given_id_creates_then_updates_in_place_as_in_the_readme() {
    let (addr, _state) = serve_in_process(open_config()).await.unwrap();
    let mut body: Value = serde_json::from_str(NEW_GROUP_JSON).unwrap();
    body["ID"] = json!("2");
    let resp = send(addr, "POST", "/group", &body.to_string()).await;
    assert_eq!((resp.status, resp.json()), (StatusCode::CREATED, json!("2")));
    body["Name"] = json!("second name");
    let resp = send(addr, "POST", "/group", &body.to_string()).await;
    assert_eq!((resp.status, resp.json()), (StatusCode::CREATED, json!("2")));
    let all = send(addr, "GET", "/groups", "").await.json();
    assert_eq!(all.as_object().map(|o| o.len()), Some(1), "{all}");
    assert_eq!(all["2"]["Name"], "second name");
    let resp = send(addr, "DELETE", "/groups/2", "").await;
    assert_eq!(resp.text(), "The group with ID 2 has been deleted successfully");
}

#[tokio::test]
async fn bad_group_requests_get_json_errors_naming_the_problem() {
    let config = ServerConfig { max_body_bytes: 1024, ..open_config() };
    let (addr, _state) = serve_in_process(config).await.unwrap();

    let resp = send(addr, "POST", "/group", r#"{"Name": "#).await;
    assert_error(&resp, StatusCode::BAD_REQUEST, "bad_request", "invalid JSON");
    let resp = send(addr, "POST", "/group", r#"{"Name": 5}"#).await;
    assert_error(&resp, StatusCode::BAD_REQUEST, "invalid_field", "`Name`");
    let resp = send(addr, "POST", "/group", r#"{"Peers": [{"Moniker": []}]}"#).await;
    assert_error(&resp, StatusCode::BAD_REQUEST, "invalid_field", "`Peers[0].Moniker`");
    let resp = send(addr, "POST", "/v1/group", r#"{"TTL": 0}"#).await;
    assert_error(&resp, StatusCode::BAD_REQUEST, "invalid_field", "`TTL`");
    let resp = send(addr, "POST", "/v1/group", r#"{"TTL": 99999999999}"#).await;
    assert_error(&resp, StatusCode::BAD_REQUEST, "invalid_field", "`TTL`");
    let resp = send(addr, "POST", "/group", &format!(r#"{{"Name": "{}"}}"#, "x".repeat(2000))).await;
    assert_error(&resp, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", "1024");

    let resp = send(addr, "PATCH", "/group", r#"{"Name": "no id"}"#).await;
    assert_error(&resp, StatusCode::BAD_REQUEST, "missing_id", "ID");
    let resp = send(addr, "PATCH", "/groups/nope", r#"{"Name": "x"}"#).await;
    assert_error(&resp, StatusCode::NOT_FOUND, "group_not_found", "nope");
    let resp = send(addr, "DELETE", "/groups/nope", "").await;
    assert_error(&resp, StatusCode::NOT_FOUND, "group_not_found", "nope");
    let resp = send(addr, "PUT", "/groups/nope", "").await;
    assert_error(&resp, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method");
    assert_eq!(allowed(&resp), ["DELETE", "GET", "HEAD", "PATCH"], "GET routes answer HEAD too");
    let resp = send(addr, "GET", "/v1/rooms", "").await;
    assert_eq!(resp.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(allowed(&resp), ["POST"]);

    let id = send(addr, "POST", "/group", r#"{"Name":"a"}"#).await.json();
    let id = id.as_str().unwrap();
    let resp = send(addr, "PATCH", &format!("/groups/{id}"), r#"{"ID": "other"}"#).await;
    assert_error(&resp, StatusCode::BAD_REQUEST, "id_mismatch", "other");
}

#[tokio::test]
async fn a_group_with_its_own_ttl_reports_it() {
    let (addr, _state) = serve_in_process(open_config()).await.unwrap();
    let id = send(addr, "POST", "/group", r#"{"Name":"short","TTL":30}"#).await.json();
    let group = send(addr, "GET", &format!("/groups/{}", id.as_str().unwrap()), "").await.json();
    assert_eq!(group["TTL"], 30);
    assert!(group.get("Owner").is_none() && group.get("owner").is_none(), "{group}");
}

#[tokio::test]
async fn the_registry_refuses_announcements_without_a_configured_token() {
    let (addr, _state) = serve_in_process(open_config()).await.unwrap();
    let announce = json!({"url": "https://relay.example"});
    let resp =
        post_json(addr, "/v1/relays", &[("authorization", "Bearer anything")], &announce).await.unwrap();
    assert_error(&resp, StatusCode::FORBIDDEN, "registry_closed", "registry token");
    let resp = send(addr, "GET", "/v1/relays", "").await;
    assert_eq!((resp.status, resp.json()), (StatusCode::OK, json!({"relays": []})));
}

#[tokio::test]
async fn the_registry_checks_the_token_url_and_prefix_then_lists_the_relay() {
    let mut config = open_config();
    config.discovery.registry =
        RegistryConfig { token: Some(RegistryToken::new("reg-token")), ..RegistryConfig::default() };
    let (addr, _state) = serve_in_process(config).await.unwrap();
    let auth = [("authorization", "Bearer reg-token")];
    let good = json!({"url": "wss://relay-a.example:8443", "room_id_prefix": "1a2b3c4d", "ttl_secs": 30});

    let resp = post_json(addr, "/v1/relays", &[], &good).await.unwrap();
    assert_error(&resp, StatusCode::UNAUTHORIZED, "bad_registry_token", "token");
    let resp = post_json(addr, "/v1/relays", &[("authorization", "Bearer wrong")], &good).await.unwrap();
    assert_error(&resp, StatusCode::UNAUTHORIZED, "bad_registry_token", "token");
    let resp = post_json(addr, "/v1/relays", &auth, &json!({"url": "ftp://relay"})).await.unwrap();
    assert_error(&resp, StatusCode::BAD_REQUEST, "invalid_field", "`url`");
    let resp =
        post_json(addr, "/v1/relays", &auth, &json!({"url": "https://", "ttl_secs": 5})).await.unwrap();
    assert_error(&resp, StatusCode::BAD_REQUEST, "invalid_field", "`url`");
    let bad_prefix = json!({"url": "https://relay", "room_id_prefix": "1A2B3C4D"});
    let resp = post_json(addr, "/v1/relays", &auth, &bad_prefix).await.unwrap();
    assert_error(&resp, StatusCode::BAD_REQUEST, "invalid_field", "`room_id_prefix`");
    let resp =
        post_json(addr, "/v1/relays", &auth, &json!({"url": "https://relay", "ttl_secs": 0})).await.unwrap();
    assert_error(&resp, StatusCode::BAD_REQUEST, "invalid_field", "`ttl_secs`");

    let before = unix_now();
    let resp = post_json(addr, "/v1/relays", &auth, &good).await.unwrap();
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    let entry = resp.json();
    assert_eq!(entry["ttl_secs"], 30);
    assert!(entry["expires_at"].as_u64().unwrap() >= before + 30);
    let listed = send(addr, "GET", "/v1/relays", "").await.json();
    let relays = listed["relays"].as_array().unwrap();
    assert_eq!(relays.len(), 1);
    assert_eq!(relays[0]["url"], "wss://relay-a.example:8443");
    assert_eq!(relays[0]["room_id_prefix"], "1a2b3c4d");
    assert_eq!(relays[0]["expires_at"], entry["expires_at"]);
}

/// The version digit of a canonical UUID.
fn uuid_version(id: &str) -> Option<char> {
    (id.len() == 36 && id.as_bytes()[8] == b'-').then(|| id.chars().nth(14)).flatten()
}
