//! `/openapi.json` over a real socket: a valid OpenAPI 3 document (every `$ref` and
//! security scheme resolves, path parameters match their templates, operation IDs are
//! unique) that lists every REST and WebSocket route the router serves, and whose
//! schemas describe what the live server actually answers.

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;

use crate::support::{http_request, open_config, post_json, serve_in_process};
use serde_json::Value;

async fn document(addr: SocketAddr) -> Value {
    let resp = http_request(addr, "GET", "/openapi.json", &[], b"").await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.headers.get("content-type").unwrap(), "application/json");
    serde_json::from_slice(&resp.body).expect("the document is JSON")
}

/// Every `$ref` value anywhere under `v`.
fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

/// The operations of the document: (path, method, operation).
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths is an object") {
        for (method, op) in item.as_object().expect("a path item is an object") {
            if ["get", "put", "post", "delete", "options", "head", "patch", "trace"]
                .contains(&method.as_str())
            {
                ops.push((path.clone(), method.clone(), op.clone()));
            }
        }
    }
    ops
}

/// The property names of a component schema, and which of them are required.
fn properties(doc: &Value, schema: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let s = &doc["components"]["schemas"][schema];
    let props = s["properties"].as_object().unwrap_or_else(|| panic!("{schema} has no properties"));
    let required =
        s["required"].as_array().map(|r| r.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect());
    (props.keys().cloned().collect(), required.unwrap_or_default())
}

/// Checks that a live JSON object fits a component schema: it has every required
/// property and no property the schema does not name.
fn assert_fits(doc: &Value, schema: &str, live: &Value) {
    let (props, required) = properties(doc, schema);
    let keys: BTreeSet<String> =
        live.as_object().unwrap_or_else(|| panic!("{live} is not an object")).keys().cloned().collect();
    assert!(required.is_subset(&keys), "{live} lacks required properties of {schema}: {required:?}");
    assert!(keys.is_subset(&props), "{live} has properties {schema} does not document: {props:?}");
}

#[tokio::test]
async fn document_is_valid_openapi_3() {
    let (addr, state) = serve_in_process(open_config()).await.unwrap();
    let doc = document(addr).await;
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "openapi: {}", doc["openapi"]);
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());

    let schemas = doc["components"]["schemas"].as_object().expect("component schemas");
    let mut all_refs = Vec::new();
    refs(&doc, &mut all_refs);
    assert!(!all_refs.is_empty());
    for r in &all_refs {
        let name = r.strip_prefix("#/components/schemas/").unwrap_or_else(|| panic!("unexpected $ref {r}"));
        assert!(schemas.contains_key(name), "$ref {r} names no schema");
    }

    let schemes = doc["components"]["securitySchemes"].as_object().expect("security schemes");
    assert_eq!(schemes["bearer"]["type"], "http");
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(
        (schemes["api_key"]["type"].clone(), schemes["api_key"]["in"].clone()),
        ("apiKey".into(), "query".into())
    );
    assert_eq!(schemes["api_key"]["name"], "api_key");

    let mut ids = HashSet::new();
    for (path, method, op) in operations(&doc) {
        let id = op["operationId"].as_str().unwrap_or_else(|| panic!("{method} {path} has no operationId"));
        assert!(ids.insert(id.to_owned()), "operationId {id} twice");
        let responses =
            op["responses"].as_object().unwrap_or_else(|| panic!("{method} {path}: no responses"));
        assert!(!responses.is_empty());
        for (status, resp) in responses {
            assert!(status.parse::<u16>().is_ok(), "{method} {path}: status {status}");
            assert!(resp["description"].is_string(), "{method} {path} {status}: no description");
        }
        for requirement in op["security"].as_array().into_iter().flatten() {
            for scheme in requirement.as_object().unwrap().keys() {
                assert!(schemes.contains_key(scheme), "{method} {path}: unknown security scheme {scheme}");
            }
        }
        // Path parameters and the template's {names} match one to one.
        let in_template: BTreeSet<String> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .map(str::to_owned)
            .collect();
        let declared: BTreeSet<String> = op["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["in"] == "path")
            .map(|p| {
                assert_eq!(p["required"], true, "{method} {path}: path parameter {} not required", p["name"]);
                p["name"].as_str().unwrap().to_owned()
            })
            .collect();
        assert_eq!(in_template, declared, "{method} {path}: path parameters");
    }
    state.begin_shutdown();
}

#[tokio::test]
async fn document_lists_every_route_with_its_statuses() {
    let (addr, state) = serve_in_process(open_config()).await.unwrap();
    let doc = document(addr).await;
    let ops = operations(&doc);
    let find = |path: &str, method: &str| {
        ops.iter()
            .find(|(p, m, _)| p == path && m == method)
            .map(|(_, _, op)| op.clone())
            .unwrap_or_else(|| panic!("{method} {path} is not documented"))
    };
    let statuses =
        |op: &Value| -> BTreeSet<String> { op["responses"].as_object().unwrap().keys().cloned().collect() };

    for (path, method, expected) in [
        ("/v1/rooms", "post", &["201", "400", "401", "413", "429", "503"][..]),
        ("/create-room", "post", &["200", "400", "401"]),
        ("/v1/rooms/{room_id}", "get", &["101", "400", "404", "409", "426", "503"]),
        ("/v1/msg-relay", "get", &["101", "401", "426", "503"]),
        ("/v1/rooms/{room_id}/msg-relay", "get", &["101", "404", "426"]),
        ("/healthz", "get", &["200"]),
        ("/readyz", "get", &["200", "503"]),
        ("/metrics", "get", &["200"]),
        ("/openapi.json", "get", &["200"]),
        ("/v1/relays", "get", &["200"]),
        ("/v1/relays", "post", &["200", "401", "403"]),
        ("/createkey/{name}/{expiry_unix}/{token}", "get", &["200", "400", "401", "409", "503"]),
        ("/rooms/{token}", "get", &["200", "401"]),
        ("/revokekey/{name}/{token}", "get", &["200", "401", "404"]),
        ("/v1/admin/keys", "post", &["201", "400", "401", "409"]),
        ("/v1/admin/keys", "get", &["200", "401"]),
        ("/v1/admin/keys/{name}", "delete", &["200", "401", "404"]),
        ("/v1/admin/rooms", "get", &["200", "401"]),
        ("/v1/admin/usage", "get", &["200", "401"]),
        ("/v1/admin/rooms/{room_id}", "delete", &["200", "400", "401", "404"]),
        ("/v1/admin/stats", "get", &["200", "401"]),
        ("/v1/key", "get", &["200", "401", "403"]),
    ] {
        let op = find(path, method);
        let have = statuses(&op);
        for status in expected {
            assert!(have.contains(*status), "{method} {path} does not document {status}: {have:?}");
        }
    }
    // Discovery at Disco's paths and under /v1/.
    for prefix in ["", "/v1"] {
        for (path, method) in [
            ("/group", "post"),
            ("/group", "patch"),
            ("/groups", "get"),
            ("/groups/{ID}", "get"),
            ("/groups/{ID}", "patch"),
            ("/groups/{ID}", "delete"),
        ] {
            let op = find(&format!("{prefix}{path}"), method);
            assert!(statuses(&op).contains("403"), "{method} {prefix}{path}: 403 not_owner or key refusal");
        }
    }
    // Errors share one schema: {"error": {"code", "message"}}.
    let room_404 = &find("/v1/rooms/{room_id}", "get")["responses"]["404"];
    assert_eq!(room_404["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/ErrorBody");
    assert_eq!(properties(&doc, "ErrorBody").1, BTreeSet::from(["error".to_owned()]));
    assert_eq!(properties(&doc, "ErrorDetail").1, BTreeSet::from(["code".to_owned(), "message".to_owned()]));
    // Key-gated routes name both ways to present a key; the room join needs none.
    let create = find("/v1/rooms", "post");
    assert_eq!(create["security"], serde_json::json!([{"bearer": []}, {"api_key": []}]));
    assert!(find("/v1/rooms/{room_id}", "get").get("security").is_none());
    state.begin_shutdown();
}

#[tokio::test]
async fn schemas_describe_what_the_server_answers() {
    let (addr, state) = serve_in_process(open_config()).await.unwrap();
    let doc = document(addr).await;

    let health = http_request(addr, "GET", "/healthz", &[], b"").await.unwrap();
    assert_fits(&doc, "Status", &health.json());
    let ready = http_request(addr, "GET", "/readyz", &[], b"").await.unwrap();
    assert_fits(&doc, "Status", &ready.json());

    let room = post_json(addr, "/v1/rooms", &[], &serde_json::json!({"room_size": 2, "ttl_secs": 60}))
        .await
        .unwrap();
    assert_eq!(room.status, 201);
    assert_fits(&doc, "RoomCreated", &room.json());
    let sodot = http_request(addr, "POST", "/create-room", &[], b"").await.unwrap();
    assert_eq!(sodot.status, 200);
    assert_fits(&doc, "SodotRoomCreated", &sodot.json());

    let refused = post_json(addr, "/v1/rooms", &[], &serde_json::json!({"room_size": 0})).await.unwrap();
    assert_eq!(refused.status, 400);
    assert_fits(&doc, "ErrorBody", &refused.json());
    assert_fits(&doc, "ErrorDetail", &refused.json()["error"]);

    let group = serde_json::json!({
        "ID": "g1", "Name": "test", "AppID": "app", "PubKey": "pk", "TTL": 60,
        "Peers": [{"NetAddr": "1.2.3.4:1337", "PubKeyHex": "0x01", "Moniker": "a"}],
    });
    assert_fits(&doc, "GroupRequest", &group);
    let created = post_json(addr, "/group", &[], &group).await.unwrap();
    assert_eq!((created.status.as_u16(), created.json()), (201, Value::from("g1")));
    let got = http_request(addr, "GET", "/v1/groups/g1", &[], b"").await.unwrap();
    assert_eq!(got.status, 200);
    assert_fits(&doc, "Group", &got.json());
    assert_fits(&doc, "Peer", &got.json()["Peers"][0]);
    let listed = http_request(addr, "GET", "/groups", &[], b"").await.unwrap();
    assert_fits(&doc, "Group", &listed.json()["g1"]);

    let relays = http_request(addr, "GET", "/v1/relays", &[], b"").await.unwrap();
    assert_eq!(relays.status, 200);
    assert_fits(&doc, "RelayList", &relays.json());
    state.begin_shutdown();
}
