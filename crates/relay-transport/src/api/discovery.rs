//! The discovery REST API: Disco's group routes (at Disco's paths and under `/v1/`) and
//! the relay registry (`/v1/relays`). The rules live in relay-discovery; this module
//! authenticates, picks the caller's tenant, reads bodies, checks ownership and maps
//! refusals to JSON errors. Storage calls are awaited (sled in `spawn_blocking`,
//! PostgreSQL async), never run on the async workers.
//!
//! Groups are keyed by (tenant, ID): an API key sees and changes only its tenant's
//! groups (another tenant's group is 404, and two tenants may both have `g1`); within
//! a tenant only the key that created a group changes it (403 `not_owner`); a key owns
//! at most `--max-groups-per-key` live groups (429 `too_many_groups_for_key`). The
//! admin token sees every tenant: `GET /groups` without `?tenant=` lists all, keyed
//! `<tenant>/<ID>` (plain `<ID>` for the open tenant); with `?tenant=T` every route
//! acts in tenant `T` (default: the open tenant, that of callers with keys not
//! enforced).
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
use std::collections::BTreeMap;

use relay_discovery::{Announcement, DiscoveryError, Group, GroupRecord, MayChange};
use relay_discovery::{Discovery, GroupInput, unix_now};

use crate::caller::{Caller, OPEN_TENANT};
use crate::error::ApiError;
use crate::http::auth::{authenticate, presented_key};
use crate::http::body::{Body, json, query_param, read_body};
use crate::state::AppState;

/// `POST /group`.
#[utoipa::path(
    post, path = "/group", operation_id = "create_group", tag = "discovery", summary = "Create a group, or replace the live group its ID names",
    params(("tenant" = Option<String>, Query, description = "Admin token only: act in this tenant (default: the open tenant; for the list, every tenant keyed <tenant>/<ID>); ignored for API keys")),
    request_body = relay_proto::rest::GroupRequest,
    responses(
        (status = 201, description = "The group's ID, as a JSON string", body = String),
        (status = 400, description = "Invalid JSON or field", body = relay_proto::ErrorBody),
        (status = 401, description = "No API key, or an unknown one", body = relay_proto::ErrorBody),
        (status = 503, description = "The shared database (PostgreSQL) is unreachable: `storage_unavailable`", body = relay_proto::ErrorBody),
        (status = 403, description = "The API key is revoked or expired, or does not own the group", body = relay_proto::ErrorBody),
        (status = 413, description = "Body over the size limit", body = relay_proto::ErrorBody),
        (status = 429, description = "The key owns --max-groups-per-key live groups: `too_many_groups_for_key`", body = relay_proto::ErrorBody),
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
    create_group(state.discovery(), &caller, &body, unix_now()).await.map_err(|e| refused(state, e))
}

/// `PATCH /group` (ID in the body) and `PATCH /groups/{ID}`.
#[utoipa::path(
    patch, path = "/group", operation_id = "update_group", tag = "discovery", summary = "Change the group named in the body",
    params(("tenant" = Option<String>, Query, description = "Admin token only: act in this tenant (default: the open tenant; for the list, every tenant keyed <tenant>/<ID>); ignored for API keys")),
    request_body = relay_proto::rest::GroupRequest,
    responses(
        (status = 200, description = "The group's ID, as a JSON string", body = String),
        (status = 400, description = "Invalid JSON or field, missing ID, or IDs that differ", body = relay_proto::ErrorBody),
        (status = 401, description = "No API key, or an unknown one", body = relay_proto::ErrorBody),
        (status = 503, description = "The shared database (PostgreSQL) is unreachable: `storage_unavailable`", body = relay_proto::ErrorBody),
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
    params(("ID" = String, Path, description = "The group's ID"), ("tenant" = Option<String>, Query, description = "Admin token only: act in this tenant (default: the open tenant; for the list, every tenant keyed <tenant>/<ID>); ignored for API keys")),
    request_body = relay_proto::rest::GroupRequest,
    responses(
        (status = 200, description = "The group's ID, as a JSON string", body = String),
        (status = 400, description = "Invalid JSON or field", body = relay_proto::ErrorBody),
        (status = 401, description = "No API key, or an unknown one", body = relay_proto::ErrorBody),
        (status = 503, description = "The shared database (PostgreSQL) is unreachable: `storage_unavailable`", body = relay_proto::ErrorBody),
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
    update_group(state.discovery(), &caller, id, &body, unix_now()).await.map_err(|e| refused(state, e))
}

/// `GET /groups`.
#[utoipa::path(
    get, path = "/groups", operation_id = "list_groups", tag = "discovery", summary = "Live groups, keyed by ID",
    params(("app-id" = Option<String>, Query, description = "Only the groups of this application"), ("tenant" = Option<String>, Query, description = "Admin token only: act in this tenant (default: the open tenant; for the list, every tenant keyed <tenant>/<ID>); ignored for API keys")),
    responses(
        (status = 200, description = "Live groups keyed by ID", body = std::collections::BTreeMap<String, relay_proto::rest::Group>),
        (status = 401, description = "No API key, or an unknown one", body = relay_proto::ErrorBody),
        (status = 503, description = "The shared database (PostgreSQL) is unreachable: `storage_unavailable`", body = relay_proto::ErrorBody),
        (status = 403, description = "The API key is revoked or expired, or does not own the group", body = relay_proto::ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = [])),
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    req: Request<Body>,
) -> Result<Response<Body>, ApiError> {
    let state = &state;
    let caller = discovery_caller(state, &req)?;
    let app_id = query_param(req.uri().query(), "app-id");
    let groups = list_groups(state.discovery(), &caller, app_id.as_deref(), unix_now())
        .await
        .map_err(|e| refused(state, e))?;
    Ok(json(StatusCode::OK, &to_json(&groups)))
}

/// `GET /groups/{ID}`.
#[utoipa::path(
    get, path = "/groups/{ID}", operation_id = "get_group", tag = "discovery", summary = "One group",
    params(("ID" = String, Path, description = "The group's ID"), ("tenant" = Option<String>, Query, description = "Admin token only: act in this tenant (default: the open tenant; for the list, every tenant keyed <tenant>/<ID>); ignored for API keys")),
    responses(
        (status = 200, description = "The group", body = relay_proto::rest::Group),
        (status = 401, description = "No API key, or an unknown one", body = relay_proto::ErrorBody),
        (status = 503, description = "The shared database (PostgreSQL) is unreachable: `storage_unavailable`", body = relay_proto::ErrorBody),
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
    let caller = discovery_caller(state, &req)?;
    let group = state
        .discovery()
        .groups()
        .get(&caller.tenant, id, unix_now())
        .await
        .map_err(|e| refused(state, api_error(e)))?;
    Ok(json(StatusCode::OK, &to_json(&group)))
}

/// `DELETE /groups/{ID}`.
#[utoipa::path(
    delete, path = "/groups/{ID}", operation_id = "delete_group", tag = "discovery", summary = "Delete a group",
    params(("ID" = String, Path, description = "The group's ID"), ("tenant" = Option<String>, Query, description = "Admin token only: act in this tenant (default: the open tenant; for the list, every tenant keyed <tenant>/<ID>); ignored for API keys")),
    responses(
        (status = 200, description = "Disco's sentence: `The group with ID {ID} has been deleted successfully`", body = String, content_type = "text/plain"),
        (status = 401, description = "No API key, or an unknown one", body = relay_proto::ErrorBody),
        (status = 503, description = "The shared database (PostgreSQL) is unreachable: `storage_unavailable`", body = relay_proto::ErrorBody),
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
    delete_group(state.discovery(), &caller, id, unix_now()).await.map_err(|e| refused(state, e))
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
        .await
        .map_err(|e| refused(state, api_error(e)))?;
    Ok(json(StatusCode::OK, &to_json(&entry)))
}

/// `GET /v1/relays`.
#[utoipa::path(
    get, path = "/v1/relays", operation_id = "list_relays", tag = "registry", summary = "The live relays",
    responses(
        (status = 200, description = "The live relays", body = relay_proto::rest::RelayList),
        (status = 503, description = "The shared database (PostgreSQL) is unreachable", body = relay_proto::ErrorBody),
    ),
)]
pub(crate) async fn list_relays(State(state): State<AppState>) -> Result<Response<Body>, ApiError> {
    let relays = state
        .discovery()
        .registry()
        .list_live(unix_now())
        .await
        .map_err(|e| refused(&state, api_error(e)))?;
    Ok(json(StatusCode::OK, &serde_json::json!({ "relays": relays })))
}

/// Who calls a discovery route, and the tenant it acts in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DiscoCaller {
    /// The tenant whose groups it sees and makes: the key's; for the admin token, the
    /// `?tenant=` it names (default the open tenant).
    pub(crate) tenant: String,
    /// The key's name, the owner of the groups it creates; `None` with keys not
    /// enforced and for the admin token.
    pub(crate) key_name: Option<String>,
    /// The admin token: sees every tenant, changes any group, not limited.
    pub(crate) admin: bool,
    /// The admin listing every tenant (`GET /groups` without `?tenant=`).
    pub(crate) all_tenants: bool,
}

impl DiscoCaller {
    /// Whether this caller may change or delete the group in `record` (a group of its
    /// own tenant: the store only shows it those).
    fn may_change(&self) -> MayChange {
        let caller = self.clone();
        Box::new(move |record| authorize_owner(&caller, record).is_ok())
    }
}

/// `POST /group`: Disco answers `201` with the group's ID as a JSON string.
async fn create_group(
    discovery: &Discovery,
    caller: &DiscoCaller,
    body: &[u8],
    now: u64,
) -> Result<Response<Body>, ApiError> {
    let input = GroupInput::from_json(body).map_err(api_error)?;
    let group = discovery
        .groups()
        .upsert(&caller.tenant, input, caller.key_name.as_deref(), now, !caller.admin, caller.may_change())
        .await
        .map_err(api_error)?;
    Ok(json(StatusCode::CREATED, &serde_json::Value::String(group.id)))
}

/// `PATCH /group` and `PATCH /groups/{ID}`: `200` with the ID as a JSON string, as Disco.
async fn update_group(
    discovery: &Discovery,
    caller: &DiscoCaller,
    id: Option<&str>,
    body: &[u8],
    now: u64,
) -> Result<Response<Body>, ApiError> {
    let input = GroupInput::from_json(body).map_err(api_error)?;
    let group = discovery
        .groups()
        .update(&caller.tenant, id, input, now, caller.may_change())
        .await
        .map_err(api_error)?;
    Ok(json(StatusCode::OK, &serde_json::Value::String(group.id)))
}

/// `DELETE /groups/{ID}`: `200` with Disco's sentence as plain text.
async fn delete_group(
    discovery: &Discovery,
    caller: &DiscoCaller,
    id: &str,
    now: u64,
) -> Result<Response<Body>, ApiError> {
    discovery.groups().delete(&caller.tenant, id, now, caller.may_change()).await.map_err(api_error)?;
    let mut resp = Response::new(Body::from(format!("The group with ID {id} has been deleted successfully")));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; charset=utf-8"));
    Ok(resp)
}

/// `GET /groups`: the caller's tenant's live groups keyed by ID; for the admin without
/// `?tenant=`, every tenant's, keyed `<tenant>/<ID>` (`<ID>` in the open tenant).
async fn list_groups(
    discovery: &Discovery,
    caller: &DiscoCaller,
    app_id: Option<&str>,
    now: u64,
) -> Result<BTreeMap<String, Group>, ApiError> {
    let tenant = (!caller.all_tenants).then_some(caller.tenant.as_str());
    let records = discovery.groups().list(tenant, app_id, now).await.map_err(api_error)?;
    Ok(records
        .into_iter()
        .map(|r| {
            let key = if caller.all_tenants && !r.tenant.is_empty() {
                format!("{}/{}", r.tenant, r.group.id)
            } else {
                r.group.id.clone()
            };
            (key, r.group)
        })
        .collect())
}

/// Whether `caller` may change or delete the group in `record`. The admin may change
/// any; with keys not enforced (no key name) anyone may, as in Disco; otherwise only
/// the key that created it.
pub(crate) fn authorize_owner(caller: &DiscoCaller, record: &GroupRecord) -> Result<(), ApiError> {
    if caller.admin {
        return Ok(());
    }
    let Some(key_name) = caller.key_name.as_deref() else { return Ok(()) };
    if record.owner.as_deref() == Some(key_name) {
        return Ok(());
    }
    Err(api_error(DiscoveryError::NotOwner(record.group.id.clone())))
}

/// The caller of a discovery route. The admin token, presented like a key, is the
/// admin caller, acting in the tenant its `?tenant=` names; anyone else acts in its
/// key's tenant (the open tenant with keys not enforced), whatever `?tenant=` says.
fn discovery_caller(state: &AppState, req: &Request<Body>) -> Result<DiscoCaller, ApiError> {
    if let (Some(store), Some(presented)) = (state.keystore(), presented_key(req))
        && store.verify_admin_token(&presented)
    {
        let tenant = query_param(req.uri().query(), "tenant");
        return Ok(DiscoCaller {
            all_tenants: tenant.is_none(),
            tenant: tenant.unwrap_or_else(|| OPEN_TENANT.to_owned()),
            key_name: None,
            admin: true,
        });
    }
    let Caller { tenant, key_name } = authenticate(state, req)?;
    Ok(DiscoCaller { tenant, key_name, admin: false, all_tenants: false })
}

/// Reports a storage outage to the dependency registry (`/readyz`), then passes the
/// refusal on.
fn refused(state: &AppState, err: ApiError) -> ApiError {
    if err.code == ErrorCode::StorageUnavailable {
        state.discovery_storage_failed(&err.message);
    }
    err
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
        DiscoveryError::TooManyGroups { .. } => ErrorCode::TooManyGroupsForKey,
        DiscoveryError::Unavailable(_) => {
            return ApiError::new(
                ErrorCode::StorageUnavailable,
                format!("discovery storage is unavailable, try again later: {err}"),
            );
        }
        DiscoveryError::Storage(_) | DiscoveryError::Corrupt { .. } | DiscoveryError::Backend(_) => {
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

    fn caller(key: Option<&str>) -> DiscoCaller {
        DiscoCaller {
            tenant: key.map(|k| format!("tenant-of-{k}")).unwrap_or_default(),
            key_name: key.map(str::to_owned),
            admin: false,
            all_tenants: false,
        }
    }

    fn in_tenant(key: &str, tenant: &str) -> DiscoCaller {
        DiscoCaller { tenant: tenant.into(), ..caller(Some(key)) }
    }

    fn admin(tenant: Option<&str>) -> DiscoCaller {
        DiscoCaller {
            tenant: tenant.unwrap_or_default().into(),
            key_name: None,
            admin: true,
            all_tenants: tenant.is_none(),
        }
    }

    fn discovery() -> Discovery {
        Discovery::open(&DiscoveryConfig { max_groups_per_key: 2, ..DiscoveryConfig::default() }, None)
            .unwrap()
    }

    fn record(owner: Option<&str>) -> GroupRecord {
        GroupRecord {
            group: Group { id: "g1".into(), ..Group::default() },
            tenant: "t".into(),
            owner: owner.map(str::to_owned),
        }
    }

    async fn body_text(resp: Response<Body>) -> String {
        String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    #[test]
    fn only_the_creating_key_or_the_admin_may_change_a_group() {
        assert!(authorize_owner(&caller(Some("k1")), &record(Some("k1"))).is_ok());
        let err = authorize_owner(&caller(Some("k2")), &record(Some("k1"))).unwrap_err();
        assert_eq!((err.status, err.code), (StatusCode::FORBIDDEN, ErrorCode::NotOwner));
        let err = authorize_owner(&caller(Some("k1")), &record(None)).unwrap_err();
        assert_eq!(err.code, ErrorCode::NotOwner, "a group made with keys off belongs to no key");
        assert!(authorize_owner(&admin(Some("t")), &record(Some("k1"))).is_ok());
    }

    #[test]
    fn with_keys_not_enforced_anyone_may_change_a_group() {
        assert!(authorize_owner(&caller(None), &record(Some("k1"))).is_ok());
        assert!(authorize_owner(&caller(None), &record(None)).is_ok());
    }

    #[tokio::test]
    async fn another_key_of_the_tenant_gets_403_not_owner_on_post_patch_and_delete() {
        let d = discovery();
        let (k1, k2) = (in_tenant("k1", "t"), in_tenant("k2", "t"));
        let resp = create_group(&d, &k1, br#"{"ID":"g1","Name":"mine"}"#, NOW).await.unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
        assert_eq!(body_text(resp).await, r#""g1""#);

        let refusals = [
            create_group(&d, &k2, br#"{"ID":"g1","Name":"theirs"}"#, NOW).await.unwrap_err(),
            update_group(&d, &k2, Some("g1"), br#"{"Name":"theirs"}"#, NOW).await.unwrap_err(),
            update_group(&d, &k2, None, br#"{"ID":"g1","Name":"theirs"}"#, NOW).await.unwrap_err(),
            delete_group(&d, &k2, "g1", NOW).await.unwrap_err(),
        ];
        for err in refusals {
            assert_eq!((err.status, err.code), (StatusCode::FORBIDDEN, ErrorCode::NotOwner), "{err}");
        }
        assert_eq!(d.groups().get("t", "g1", NOW).await.unwrap().name, "mine");

        update_group(&d, &k1, Some("g1"), br#"{"Name":"renamed"}"#, NOW).await.unwrap();
        let resp = delete_group(&d, &k1, "g1", NOW).await.unwrap();
        assert_eq!(body_text(resp).await, "The group with ID g1 has been deleted successfully");
    }

    #[tokio::test]
    async fn another_tenant_sees_nothing_and_its_ids_do_not_collide() {
        let d = discovery();
        let (a, b) = (caller(Some("ka")), caller(Some("kb")));
        create_group(&d, &a, br#"{"ID":"g1","Name":"of a"}"#, NOW).await.unwrap();
        for err in [
            update_group(&d, &b, Some("g1"), br#"{"Name":"x"}"#, NOW).await.unwrap_err(),
            delete_group(&d, &b, "g1", NOW).await.unwrap_err(),
        ] {
            assert_eq!((err.status, err.code), (StatusCode::NOT_FOUND, ErrorCode::GroupNotFound), "{err}");
        }
        assert!(list_groups(&d, &b, None, NOW).await.unwrap().is_empty());
        // b takes the same ID in its own tenant; a's group is untouched.
        create_group(&d, &b, br#"{"ID":"g1","Name":"of b"}"#, NOW).await.unwrap();
        assert_eq!(list_groups(&d, &a, None, NOW).await.unwrap()["g1"].name, "of a");
        assert_eq!(list_groups(&d, &b, None, NOW).await.unwrap()["g1"].name, "of b");
        // The admin sees both, keyed by tenant, and acts in the tenant it names.
        let all = list_groups(&d, &admin(None), None, NOW).await.unwrap();
        assert_eq!(all.keys().collect::<Vec<_>>(), ["tenant-of-ka/g1", "tenant-of-kb/g1"]);
        delete_group(&d, &admin(Some("tenant-of-kb")), "g1", NOW).await.unwrap();
        assert!(list_groups(&d, &b, None, NOW).await.unwrap().is_empty());
        assert_eq!(list_groups(&d, &a, None, NOW).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn over_max_groups_per_key_is_429_too_many_groups_for_key() {
        let d = discovery();
        let k = caller(Some("k"));
        create_group(&d, &k, br#"{"ID":"1"}"#, NOW).await.unwrap();
        create_group(&d, &k, br#"{"ID":"2"}"#, NOW).await.unwrap();
        let err = create_group(&d, &k, br#"{"ID":"3"}"#, NOW).await.unwrap_err();
        assert_eq!((err.status, err.code), (StatusCode::TOO_MANY_REQUESTS, ErrorCode::TooManyGroupsForKey));
        create_group(&d, &caller(Some("other")), br#"{"ID":"3"}"#, NOW).await.unwrap();
        create_group(&d, &admin(Some("tenant-of-k")), br#"{"ID":"3"}"#, NOW).await.unwrap();
    }
}
