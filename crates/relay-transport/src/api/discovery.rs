//! The discovery REST API: Disco's group routes (at Disco's paths and under `/v1/`) and
//! the relay registry (`/v1/relays`). The rules live in relay-discovery; this module
//! authenticates, reads bodies, checks ownership and maps refusals to JSON errors.
//!
//! | Route | Does |
//! |---|---|
//! | `POST /group`, `POST /v1/group` | create, or replace in place when `ID` names a live group -> `201 "<ID>"` |
//! | `GET /groups?app-id=`, `GET /v1/groups` | live groups keyed by ID |
//! | `GET /groups/{ID}` | one group |
//! | `PATCH /group` (ID in body), `PATCH /groups/{ID}` | change the named fields, refresh the TTL -> `200 "<ID>"` |
//! | `DELETE /groups/{ID}` | `200 The group with ID {ID} has been deleted successfully` |
//! | `POST /v1/relays` | announce or refresh a relay (`Authorization: Bearer <registry token>`) |
//! | `GET /v1/relays` | the live relays |

use axum::extract::{Path, State};
use hyper::{Request, Response, StatusCode, header};
use relay_proto::ErrorCode;

#[cfg(test)]
use relay_discovery::DiscoveryConfig;
#[cfg(test)]
use relay_discovery::Group;
use relay_discovery::{Announcement, DiscoveryError, GroupRecord};
use relay_discovery::{Discovery, GroupInput, unix_now};

use crate::caller::Caller;
use crate::error::ApiError;
use crate::http::auth::{authenticate, presented_key};
use crate::http::body::{Body, json, query_param, read_body};
use crate::state::AppState;

/// `POST /group`.
#[utoipa::path(
    post, path = "/group", operation_id = "create_group", tag = "discovery", summary = "Create a group, or replace the live group its ID names",
    request_body = relay_proto::rest::GroupRequest,
    responses(
        (status = 201, description = "The group's ID, as a JSON string", body = String),
        (status = 400, description = "Invalid JSON or field", body = relay_proto::ErrorBody),
        (status = 401, description = "No API key, or an unknown one", body = relay_proto::ErrorBody),
        (status = 403, description = "The API key is revoked or expired, or does not own the group", body = relay_proto::ErrorBody),
        (status = 413, description = "Body over the size limit", body = relay_proto::ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = [])),
)]
pub(crate) async fn create(
    State(state): State<AppState>,
    req: Request<Body>,
) -> Result<Response<Body>, ApiError> {
    let state = &state;
    let caller = discovery_caller(state, &req)?;
    let body = read_body(req, state.config()).await?;
    create_group(state.discovery(), &caller, &body, unix_now())
}

/// `PATCH /group` (ID in the body) and `PATCH /groups/{ID}`.
#[utoipa::path(
    patch, path = "/group", operation_id = "update_group", tag = "discovery", summary = "Change the group named in the body",
    request_body = relay_proto::rest::GroupRequest,
    responses(
        (status = 200, description = "The group's ID, as a JSON string", body = String),
        (status = 400, description = "Invalid JSON or field, missing ID, or IDs that differ", body = relay_proto::ErrorBody),
        (status = 401, description = "No API key, or an unknown one", body = relay_proto::ErrorBody),
        (status = 403, description = "The API key is revoked or expired, or does not own the group", body = relay_proto::ErrorBody),
        (status = 404, description = "No such live group", body = relay_proto::ErrorBody),
        (status = 413, description = "Body over the size limit", body = relay_proto::ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = [])),
)]
pub(crate) async fn update(
    State(state): State<AppState>,
    req: Request<Body>,
) -> Result<Response<Body>, ApiError> {
    update_named(&state, req, None).await
}

/// `PATCH /groups/{ID}`: as `PATCH /group`, with the ID in the path.
#[utoipa::path(
    patch, path = "/groups/{ID}", operation_id = "update_group_by_id", tag = "discovery", summary = "Change the group named in the path",
    params(("ID" = String, Path, description = "The group's ID")),
    request_body = relay_proto::rest::GroupRequest,
    responses(
        (status = 200, description = "The group's ID, as a JSON string", body = String),
        (status = 400, description = "Invalid JSON or field", body = relay_proto::ErrorBody),
        (status = 401, description = "No API key, or an unknown one", body = relay_proto::ErrorBody),
        (status = 403, description = "The API key is revoked or expired, or does not own the group", body = relay_proto::ErrorBody),
        (status = 404, description = "No such live group", body = relay_proto::ErrorBody),
        (status = 413, description = "Body over the size limit", body = relay_proto::ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = [])),
)]
pub(crate) async fn update_by_id(
    State(state): State<AppState>,
    Path(id): Path<String>,
    req: Request<Body>,
) -> Result<Response<Body>, ApiError> {
    update_named(&state, req, Some(&id)).await
}

async fn update_named(
    state: &AppState,
    req: Request<Body>,
    id: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let caller = discovery_caller(state, &req)?;
    let body = read_body(req, state.config()).await?;
    update_group(state.discovery(), &caller, id, &body, unix_now())
}

/// `GET /groups`.
#[utoipa::path(
    get, path = "/groups", operation_id = "list_groups", tag = "discovery", summary = "Live groups, keyed by ID",
    params(("app-id" = Option<String>, Query, description = "Only the groups of this application")),
    responses(
        (status = 200, description = "Live groups keyed by ID", body = std::collections::BTreeMap<String, relay_proto::rest::Group>),
        (status = 401, description = "No API key, or an unknown one", body = relay_proto::ErrorBody),
        (status = 403, description = "The API key is revoked or expired, or does not own the group", body = relay_proto::ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = [])),
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    req: Request<Body>,
) -> Result<Response<Body>, ApiError> {
    let state = &state;
    discovery_caller(state, &req)?;
    let app_id = query_param(req.uri().query(), "app-id");
    let groups = state.discovery().groups().list(app_id.as_deref(), unix_now()).map_err(api_error)?;
    Ok(json(StatusCode::OK, &to_json(&groups)))
}

/// `GET /groups/{ID}`.
#[utoipa::path(
    get, path = "/groups/{ID}", operation_id = "get_group", tag = "discovery", summary = "One group",
    params(("ID" = String, Path, description = "The group's ID")),
    responses(
        (status = 200, description = "The group", body = relay_proto::rest::Group),
        (status = 401, description = "No API key, or an unknown one", body = relay_proto::ErrorBody),
        (status = 403, description = "The API key is revoked or expired, or does not own the group", body = relay_proto::ErrorBody),
        (status = 404, description = "No such live group", body = relay_proto::ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = [])),
)]
pub(crate) async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
    req: Request<Body>,
) -> Result<Response<Body>, ApiError> {
    let (state, id) = (&state, id.as_str());
    discovery_caller(state, &req)?;
    let group = state.discovery().groups().get(id, unix_now()).map_err(api_error)?;
    Ok(json(StatusCode::OK, &to_json(&group)))
}

/// `DELETE /groups/{ID}`.
#[utoipa::path(
    delete, path = "/groups/{ID}", operation_id = "delete_group", tag = "discovery", summary = "Delete a group",
    params(("ID" = String, Path, description = "The group's ID")),
    responses(
        (status = 200, description = "Disco's sentence: `The group with ID {ID} has been deleted successfully`", body = String, content_type = "text/plain"),
        (status = 401, description = "No API key, or an unknown one", body = relay_proto::ErrorBody),
        (status = 403, description = "The API key is revoked or expired, or does not own the group", body = relay_proto::ErrorBody),
        (status = 404, description = "No such live group", body = relay_proto::ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = [])),
)]
pub(crate) async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
    req: Request<Body>,
) -> Result<Response<Body>, ApiError> {
    let (state, id) = (&state, id.as_str());
    let caller = discovery_caller(state, &req)?;
    delete_group(state.discovery(), &caller, id, unix_now())
}

/// `POST /v1/relays`.
#[utoipa::path(
    post, path = "/v1/relays", operation_id = "announce_relay", tag = "registry", summary = "Announce or refresh a relay",
    request_body = relay_proto::rest::Announcement,
    responses(
        (status = 200, description = "The relay's registry entry", body = relay_proto::rest::RelayEntry),
        (status = 400, description = "Invalid JSON, URL or prefix", body = relay_proto::ErrorBody),
        (status = 401, description = "Missing or wrong registry token", body = relay_proto::ErrorBody),
        (status = 403, description = "This relay has no registry token: announcements are refused", body = relay_proto::ErrorBody),
        (status = 413, description = "Body over the size limit", body = relay_proto::ErrorBody),
    ),
    security(("registry_token" = [])),
)]
pub(crate) async fn announce(
    State(state): State<AppState>,
    req: Request<Body>,
) -> Result<Response<Body>, ApiError> {
    let state = &state;
    let token = bearer_token(&req);
    // The token first: a refused announcement's body is never read.
    state.discovery().registry().check_token(token.as_deref()).map_err(api_error)?;
    let body = read_body(req, state.config()).await?;
    let announcement = Announcement::from_json(&body).map_err(api_error)?;
    let entry = state
        .discovery()
        .registry()
        .announce(token.as_deref(), announcement, unix_now())
        .map_err(api_error)?;
    Ok(json(StatusCode::OK, &to_json(&entry)))
}

/// `GET /v1/relays`.
#[utoipa::path(
    get, path = "/v1/relays", operation_id = "list_relays", tag = "registry", summary = "The live relays",
    responses((status = 200, description = "The live relays", body = relay_proto::rest::RelayList)),
)]
pub(crate) async fn list_relays(State(state): State<AppState>) -> Response<Body> {
    let relays = state.discovery().registry().list_live(unix_now());
    json(StatusCode::OK, &serde_json::json!({ "relays": relays }))
}

/// `POST /group`: Disco answers `201` with the group's ID as a JSON string.
fn create_group(
    discovery: &Discovery,
    caller: &Caller,
    body: &[u8],
    now: u64,
) -> Result<Response<Body>, ApiError> {
    let input = GroupInput::from_json(body).map_err(api_error)?;
    let group = discovery
        .groups()
        .upsert(input, caller.key_name.as_deref(), now, |r| authorize_owner(caller, r).is_ok())
        .map_err(api_error)?;
    Ok(json(StatusCode::CREATED, &serde_json::Value::String(group.id)))
}

/// `PATCH /group` and `PATCH /groups/{ID}`: `200` with the ID as a JSON string, as Disco.
fn update_group(
    discovery: &Discovery,
    caller: &Caller,
    id: Option<&str>,
    body: &[u8],
    now: u64,
) -> Result<Response<Body>, ApiError> {
    let input = GroupInput::from_json(body).map_err(api_error)?;
    let group = discovery
        .groups()
        .update(id, input, now, |r| authorize_owner(caller, r).is_ok())
        .map_err(api_error)?;
    Ok(json(StatusCode::OK, &serde_json::Value::String(group.id)))
}

/// `DELETE /groups/{ID}`: `200` with Disco's sentence as plain text.
fn delete_group(
    discovery: &Discovery,
    caller: &Caller,
    id: &str,
    now: u64,
) -> Result<Response<Body>, ApiError> {
    discovery.groups().delete(id, now, |r| authorize_owner(caller, r).is_ok()).map_err(api_error)?;
    let mut resp = Response::new(Body::from(format!("The group with ID {id} has been deleted successfully")));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; charset=utf-8"));
    Ok(resp)
}

/// Whether `caller` may change or delete the group in `record`. With keys not enforced
/// (no key name) anyone may, as in Disco; otherwise only the key that created it.
pub(crate) fn authorize_owner(caller: &Caller, record: &GroupRecord) -> Result<(), ApiError> {
    let Some(key_name) = caller.key_name.as_deref() else { return Ok(()) };
    // The admin token resolves to a caller without a key name (`discovery_caller`), which
    // passed above: the operator may change or delete any group.
    if record.owner.as_deref() == Some(key_name) {
        return Ok(());
    }
    Err(api_error(DiscoveryError::NotOwner(record.group.id.clone())))
}

/// The caller of a discovery route. The admin token, presented like a key, is a caller
/// without a key name: [`authorize_owner`] lets it change any group, and groups it
/// creates have no owner, so only the admin may change them.
fn discovery_caller(state: &AppState, req: &Request<Body>) -> Result<Caller, ApiError> {
    if let (Some(store), Some(presented)) = (state.keystore(), presented_key(req))
        && store.verify_admin_token(&presented)
    {
        return Ok(Caller { tenant: String::new(), key_name: None });
    }
    authenticate(state, req)
}

/// The token of `Authorization: Bearer <token>` (or a bare `Authorization: <token>`).
fn bearer_token(req: &Request<Body>) -> Option<String> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let token =
        value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")).unwrap_or(value).trim();
    (!token.is_empty()).then(|| token.to_owned())
}

/// The HTTP face of a discovery refusal.
fn api_error(err: DiscoveryError) -> ApiError {
    let code = match &err {
        DiscoveryError::InvalidJson(_) => ErrorCode::BadRequest,
        DiscoveryError::InvalidField { .. } => ErrorCode::InvalidField,
        DiscoveryError::MissingId => ErrorCode::MissingId,
        DiscoveryError::IdMismatch { .. } => ErrorCode::IdMismatch,
        DiscoveryError::GroupNotFound(_) => ErrorCode::GroupNotFound,
        DiscoveryError::NotOwner(_) => ErrorCode::NotOwner,
        DiscoveryError::RegistryClosed => ErrorCode::RegistryClosed,
        DiscoveryError::BadRegistryToken => ErrorCode::BadRegistryToken,
        DiscoveryError::Storage(_) | DiscoveryError::Corrupt { .. } => {
            tracing::error!("discovery storage: {err}");
            return ApiError::new(ErrorCode::StorageError, "group storage failed");
        }
    };
    ApiError::new(code, err.to_string())
}

fn to_json(value: &impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    const NOW: u64 = 1_583_773_505;

    fn caller(key: Option<&str>) -> Caller {
        Caller { tenant: key.unwrap_or_default().to_owned(), key_name: key.map(str::to_owned) }
    }

    fn discovery() -> Discovery {
        Discovery::open(&DiscoveryConfig::default(), None).unwrap()
    }

    fn record(owner: Option<&str>) -> GroupRecord {
        GroupRecord { group: Group { id: "g1".into(), ..Group::default() }, owner: owner.map(str::to_owned) }
    }

    async fn body_text(resp: Response<Body>) -> String {
        String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    #[test]
    fn only_the_creating_key_may_change_a_group() {
        assert!(authorize_owner(&caller(Some("k1")), &record(Some("k1"))).is_ok());
        let err = authorize_owner(&caller(Some("k2")), &record(Some("k1"))).unwrap_err();
        assert_eq!((err.status, err.code), (StatusCode::FORBIDDEN, ErrorCode::NotOwner));
        let err = authorize_owner(&caller(Some("k1")), &record(None)).unwrap_err();
        assert_eq!(err.code, ErrorCode::NotOwner, "a group made with keys off belongs to no key");
    }

    #[test]
    fn with_keys_not_enforced_anyone_may_change_a_group() {
        assert!(authorize_owner(&caller(None), &record(Some("k1"))).is_ok());
        assert!(authorize_owner(&caller(None), &record(None)).is_ok());
    }

    #[tokio::test]
    async fn another_key_gets_403_not_owner_on_post_patch_and_delete() {
        let d = discovery();
        let (k1, k2) = (caller(Some("k1")), caller(Some("k2")));
        let resp = create_group(&d, &k1, br#"{"ID":"g1","Name":"mine"}"#, NOW).unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
        assert_eq!(body_text(resp).await, r#""g1""#);

        let refusals = [
            create_group(&d, &k2, br#"{"ID":"g1","Name":"theirs"}"#, NOW).unwrap_err(),
            update_group(&d, &k2, Some("g1"), br#"{"Name":"theirs"}"#, NOW).unwrap_err(),
            update_group(&d, &k2, None, br#"{"ID":"g1","Name":"theirs"}"#, NOW).unwrap_err(),
            delete_group(&d, &k2, "g1", NOW).unwrap_err(),
        ];
        for err in refusals {
            assert_eq!((err.status, err.code), (StatusCode::FORBIDDEN, ErrorCode::NotOwner), "{err}");
        }
        assert_eq!(d.groups().get("g1", NOW).unwrap().name, "mine");

        update_group(&d, &k1, Some("g1"), br#"{"Name":"renamed"}"#, NOW).unwrap();
        let resp = delete_group(&d, &k1, "g1", NOW).unwrap();
        assert_eq!(body_text(resp).await, "The group with ID g1 has been deleted successfully");
    }
}
