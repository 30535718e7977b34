//! Discovery per tenant against the real binary with keys enforced: groups are keyed by
//! (tenant, ID), so a key lists, reads, changes and deletes only its tenant's groups
//! (another tenant's is 404, and two tenants may both have `shared-id`); the admin token
//! sees every tenant and acts in the one `?tenant=` names; one key may own at most
//! `--max-groups-per-key` live groups (429 `too_many_groups_for_key`) while other keys
//! are still served; discovery durations out of range stop the server with exit 2
//! naming the flag.

use std::net::SocketAddr;

use crate::support::{HttpResponse, RelayProcess, http_request, run_binary};
use hyper::StatusCode;
use serde_json::{Value, json};

const TOKEN: &str = "tenants-admin-token-0123456789abcdefXYZ";

async fn call(addr: SocketAddr, method: &str, path: &str, auth: &str, body: &str) -> HttpResponse {
    let bearer = format!("Bearer {auth}");
    let headers = [("authorization", bearer.as_str()), ("content-type", "application/json")];
    http_request(addr, method, path, &headers, body.as_bytes()).await.unwrap()
}

fn code(resp: &HttpResponse) -> String {
    resp.json()["error"]["code"].as_str().unwrap_or_default().to_owned()
}

async fn create_key(addr: SocketAddr, name: &str, tenant: &str) -> String {
    let body = json!({"name": name, "tenant": tenant}).to_string();
    let resp = call(addr, "POST", "/v1/admin/keys", TOKEN, &body).await;
    assert_eq!(resp.status, StatusCode::CREATED, "create {name}: {}", resp.text());
    resp.json()["key"].as_str().unwrap().to_owned()
}

fn ids(listing: &Value) -> Vec<String> {
    listing.as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default()
}

#[tokio::test]
async fn a_tenant_sees_and_changes_only_its_own_groups_and_the_admin_sees_all() {
    let relay = RelayProcess::start(&["--secret-auth", TOKEN]).await.unwrap();
    let addr = relay.addr;
    let acme = create_key(addr, "acme-1", "acme").await;
    let colleague = create_key(addr, "acme-2", "acme").await;
    let globex = create_key(addr, "globex-1", "globex").await;

    for (key, body) in [
        (&acme, r#"{"ID": "shared-id", "Name": "acme's", "AppID": "app"}"#),
        (&acme, r#"{"ID": "acme-only", "Name": "secret plans", "AppID": "app"}"#),
        (&globex, r#"{"ID": "shared-id", "Name": "globex's", "AppID": "app"}"#),
    ] {
        let resp = call(addr, "POST", "/group", key, body).await;
        assert_eq!(resp.status, StatusCode::CREATED, "IDs of two tenants never collide: {}", resp.text());
    }

    // The attacker (globex) lists only its own group, and every route on acme's is 404.
    let listed = call(addr, "GET", "/groups?app-id=app", &globex, "").await.json();
    assert_eq!(ids(&listed), ["shared-id"]);
    assert_eq!(listed["shared-id"]["Name"], "globex's");
    for (method, path, body) in [
        ("GET", "/groups/acme-only", ""),
        ("PATCH", "/groups/acme-only", r#"{"Name": "taken"}"#),
        ("PATCH", "/group", r#"{"ID": "acme-only", "Name": "taken"}"#),
        ("DELETE", "/groups/acme-only", ""),
        ("GET", "/groups/acme-only?tenant=acme", ""),
    ] {
        let resp = call(addr, method, path, &globex, body).await;
        assert_eq!(
            (resp.status, code(&resp).as_str()),
            (StatusCode::NOT_FOUND, "group_not_found"),
            "{method} {path}"
        );
    }
    // Replacing "its" shared-id touches only its own; acme's is unchanged.
    let resp = call(addr, "POST", "/group", &globex, r#"{"ID": "shared-id", "Name": "globex v2"}"#).await;
    assert_eq!(resp.status, StatusCode::CREATED);
    let ours = call(addr, "GET", "/groups/shared-id", &acme, "").await;
    assert_eq!((ours.status, ours.json()["Name"].clone()), (StatusCode::OK, json!("acme's")));

    // A colleague of the same tenant sees acme's groups but may not change them.
    assert_eq!(ids(&call(addr, "GET", "/groups", &colleague, "").await.json()), ["acme-only", "shared-id"]);
    let resp = call(addr, "PATCH", "/groups/acme-only", &colleague, r#"{"Name": "x"}"#).await;
    assert_eq!((resp.status, code(&resp).as_str()), (StatusCode::FORBIDDEN, "not_owner"));

    // The admin sees every tenant, keyed <tenant>/<ID>, and acts in the tenant it names.
    let all = call(addr, "GET", "/groups", TOKEN, "").await.json();
    assert_eq!(ids(&all), ["acme/acme-only", "acme/shared-id", "globex/shared-id"]);
    assert_eq!(all["globex/shared-id"]["ID"], "shared-id", "the group itself keeps Disco's shape");
    let one = call(addr, "GET", "/groups/shared-id?tenant=globex", TOKEN, "").await.json();
    assert_eq!(one["Name"], "globex v2");
    let resp = call(addr, "DELETE", "/groups/shared-id?tenant=globex", TOKEN, "").await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    assert!(ids(&call(addr, "GET", "/groups", &globex, "").await.json()).is_empty());
    assert_eq!(call(addr, "GET", "/groups/shared-id", &acme, "").await.status, StatusCode::OK);

    // Deleting within its own tenant works, and never reaches the other tenant.
    let resp = call(addr, "POST", "/group", &globex, r#"{"ID": "acme-only"}"#).await;
    assert_eq!(resp.status, StatusCode::CREATED);
    let resp = call(addr, "DELETE", "/groups/acme-only", &globex, "").await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(call(addr, "GET", "/groups/acme-only", &acme, "").await.json()["Name"], "secret plans");
}

#[tokio::test]
async fn a_key_over_max_groups_per_key_gets_429_and_other_keys_are_served() {
    let relay = RelayProcess::start(&["--secret-auth", TOKEN, "--max-groups-per-key", "3"]).await.unwrap();
    let addr = relay.addr;
    let greedy = create_key(addr, "greedy", "acme").await;
    let neighbour = create_key(addr, "neighbour", "acme").await;
    for i in 0..3 {
        let resp = call(addr, "POST", "/group", &greedy, &format!(r#"{{"ID": "g{i}"}}"#)).await;
        assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.text());
    }
    let resp = call(addr, "POST", "/group", &greedy, r#"{"ID": "g3"}"#).await;
    assert_eq!(
        (resp.status, code(&resp).as_str()),
        (StatusCode::TOO_MANY_REQUESTS, "too_many_groups_for_key"),
        "{}",
        resp.text()
    );
    assert!(resp.json()["error"]["message"].as_str().unwrap_or_default().contains("max-groups-per-key"));
    let resp = call(addr, "POST", "/group", &greedy, r#"{}"#).await;
    assert_eq!(resp.status, StatusCode::TOO_MANY_REQUESTS, "a generated ID is a new group too");
    // Refreshing one of its own is no new group.
    let resp = call(addr, "PATCH", "/groups/g0", &greedy, r#"{"Name": "refreshed"}"#).await;
    assert_eq!(resp.status, StatusCode::OK);
    let resp = call(addr, "POST", "/group", &greedy, r#"{"ID": "g1", "Name": "replaced"}"#).await;
    assert_eq!(resp.status, StatusCode::CREATED);
    // Everyone else, in the same tenant too, is still served; so is the admin.
    let resp = call(addr, "POST", "/group", &neighbour, r#"{"ID": "n0"}"#).await;
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.text());
    let resp = call(addr, "POST", "/group?tenant=acme", TOKEN, r#"{"ID": "by-admin"}"#).await;
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.text());
    // A delete frees a place.
    assert_eq!(call(addr, "DELETE", "/groups/g2", &greedy, "").await.status, StatusCode::OK);
    let resp = call(addr, "POST", "/group", &greedy, r#"{"ID": "g3"}"#).await;
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.text());
}

#[tokio::test]
async fn discovery_durations_and_limits_out_of_range_exit_2_naming_the_flag() {
    let open = "--insecure-api-keys-not-enforced";
    for (flag, value) in [
        ("--group-ttl-heartbeat", "0"),
        ("--group-ttl-heartbeat", "25h"),
        ("--max-group-ttl", "100000h"),
        ("--max-group-ttl", "18446744073709551615"),
        ("--group-ttl", "0"),
        ("--relay-ttl", "9999h"),
        ("--relay-ttl", "0"),
        ("--max-groups-per-key", "0"),
        ("--max-groups-per-key", "1000001"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let args = [open, "--listen", "127.0.0.1:0", "--data-dir", dir.path().to_str().unwrap(), flag, value];
        let out = run_binary(&args).await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {stderr}");
        assert!(stderr.contains(flag), "{flag} {value}: the message names the flag: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
