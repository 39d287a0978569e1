//! The HTTP API of the widget and the dashboard (the seeds' endpoints and what the pages need).
//! Each endpoint is one call into the extension's SQL API under the caller's claims, on the shard
//! of the organization the call is about, so RLS and the extension's checks decide; SQLSTATEs
//! become HTTP statuses with a JSON body.

use crate::Relay;
use crate::auth::{self, Identity};
use crate::errors::{HttpError, SqlError};
use crate::shards::Shard;
use crate::{client_addr, session};
use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::types::ToSql;

/// Largest request body the API reads.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

pub fn routes() -> axum::Router<Arc<Relay>> {
    axum::Router::new()
        .route("/api/widget/config", get(widget_config))
        .route("/api/widget/auth", post(widget_auth))
        .route("/api/widget/messages", post(widget_send))
        .route("/api/widget/conversations/{id}/messages", get(history))
        .route("/api/widget/conversations/{id}/read", post(mark_read))
        .route("/api/widget/events", get(events_since))
        .route("/api/dashboard/conversations", get(list_conversations))
        .route("/api/dashboard/conversations/{id}/messages", get(history).post(dashboard_send))
        .route("/api/dashboard/conversations/{id}/read", post(mark_read))
        .route("/api/dashboard/conversations/{id}/assign", post(assign))
        .route("/api/dashboard/conversations/{id}/claim", post(claim))
        .route("/api/dashboard/conversations/{id}/status", post(set_status))
        .route("/api/dashboard/availability", post(set_availability))
        .route("/api/dashboard/events", get(events_since))
}

/// An error of the SQL API's routes: its body names the SQLSTATE (`code`, null when the error is
/// not the database's).
pub struct ApiError(HttpError);

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError(HttpError::new(status, message))
    }
}

impl From<HttpError> for ApiError {
    fn from(error: HttpError) -> ApiError {
        ApiError(error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.0.naming_sqlstate().into_response()
    }
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(err: tokio_postgres::Error) -> ApiError {
        if let Some((meaning, db)) = SqlError::of(&err) {
            return ApiError(HttpError::from_sql(meaning, db));
        }
        match err.as_db_error() {
            Some(db) => {
                tracing::warn!(code = db.code().code(), message = db.message(), "unexpected database error");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
            }
            None => {
                tracing::warn!(%err, "database call failed");
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the database is unavailable")
            }
        }
    }
}

type ApiResult = Result<Response, ApiError>;

/// 429 with `Retry-After`: the caller did `what` too often.
fn too_many(what: &str, retry: Duration) -> ApiError {
    HttpError::too_many(what, retry).into()
}

fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(b)| b).map_err(|rejection| {
        let status = match rejection {
            JsonRejection::MissingJsonContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            JsonRejection::BytesRejection(_) => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, rejection.body_text())
    })
}

fn parse_uuid(text: &str, what: &str) -> Result<uuid::Uuid, ApiError> {
    uuid::Uuid::parse_str(text).map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, format!("{what} must be a UUID")))
}

/// The caller's identity from `Authorization: Bearer` (a JWT or a widget session secret), and the
/// organization the call is about when the request says: a visitor's own (its claims name it),
/// else the `x-organization-id` header. Placed after a route's path and query extractors, so that
/// a malformed request is answered as such before its credential is checked.
struct Caller(Identity, Option<uuid::Uuid>);

impl FromRequestParts<Arc<Relay>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, relay: &Arc<Relay>) -> Result<Caller, ApiError> {
        let token = crate::http::bearer(&parts.headers)
            .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "missing Authorization: Bearer token"))?;
        let header = parts.headers.contains_key(ORGANIZATION_HEADER).then(|| organization_header(&parts.headers));
        let header = header.transpose()?;
        let identity = session::resolve_token(relay, token, header)
            .await
            .map_err(|err| ApiError::new(StatusCode::UNAUTHORIZED, err.to_string()))?;
        let own = identity.claims["org_id"].as_str().and_then(|org| uuid::Uuid::try_parse(org).ok());
        Ok(Caller(identity, own.or(header)))
    }
}

/// The shard of the organization a call is about. A call that names none (a dashboard call by
/// conversation id without `x-organization-id`) goes to the only shard there is; with several,
/// it is refused rather than answered "not found" by the wrong one.
fn shard_for(relay: &Relay, organization: Option<uuid::Uuid>) -> Result<&Shard, ApiError> {
    match organization {
        Some(org) => Ok(relay.shards.of_organization(org)),
        None if relay.shards.all().len() == 1 => Ok(relay.shards.default_shard()),
        None => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "the {ORGANIZATION_HEADER} header is required: this relay serves several shards, \
                 and the organization decides which one answers"
            ),
        )),
    }
}

/// Runs `call` (a set-returning or scalar SQL expression over $2, $3, ...) on `shard` with the
/// caller's claims, in one statement: the claims are set first, for that statement's transaction
/// only.
async fn call_as(shard: &Shard, claims: &Value, call: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Value, ApiError> {
    let sql = format!(
        "WITH claims AS MATERIALIZED (SELECT pg_catalog.set_config('request.jwt.claims', $1, true)) \
         SELECT (SELECT coalesce(jsonb_agg(to_jsonb(r)), '[]'::jsonb) FROM {call} r)::text FROM claims"
    );
    let claims = claims.to_string();
    let mut all: Vec<&(dyn ToSql + Sync)> = vec![&claims];
    all.extend_from_slice(params);
    let row = shard.db.api_query_one(&sql, &all).await.map_err(|err| {
        tracing::warn!(shard = shard.name, %err, "no database answer for an API call");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, err.to_string())
    })??;
    serde_json::from_str(row.get::<_, &str>(0))
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

fn first(rows: Value) -> Value {
    rows.as_array().and_then(|r| r.first().cloned()).unwrap_or(Value::Null)
}

fn ok(value: Value) -> ApiResult {
    Ok(Json(value).into_response())
}

// Widget ----------------------------------------------------------------------------------------

const ORGANIZATION_HEADER: &str = "x-organization-id";

fn organization_header(headers: &HeaderMap) -> Result<uuid::Uuid, ApiError> {
    let value = headers.get(ORGANIZATION_HEADER).ok_or_else(|| {
        ApiError::new(StatusCode::BAD_REQUEST, format!("the {ORGANIZATION_HEADER} header is required"))
    })?;
    parse_uuid(value.to_str().unwrap_or_default(), ORGANIZATION_HEADER)
}

async fn widget_config(State(relay): State<Arc<Relay>>, headers: HeaderMap) -> ApiResult {
    let org = organization_header(&headers)?;
    let shard = relay.shards.of_organization(org);
    let config = first(call_as(shard, &json!({}), "campfire.widget_config($2)", &[&org]).await?);
    if config.is_null() {
        return Err(ApiError::new(StatusCode::NOT_FOUND, format!("organization {org} not found")));
    }
    ok(config)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AuthRequest {
    visitor_id: String,
    customer_email: Option<String>,
    customer_name: Option<String>,
    session_secret: Option<String>,
}

/// POST /api/widget/auth: starts or resumes the visitor's session; returns the conversation,
/// the session secret (keep it) and a short-lived token for the relay.
async fn widget_auth(
    State(relay): State<Arc<Relay>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Json<AuthRequest>, JsonRejection>,
) -> ApiResult {
    let org = organization_header(&headers)?;
    let shard = relay.shards.of_organization(org);
    let request = json_body(body)?;
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let config = first(call_as(shard, &json!({}), "campfire.widget_config($2)", &[&org]).await?);
        let allowed: Vec<&str> =
            config["allowed_origins"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        if !allowed.is_empty() && !allowed.contains(&origin) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("origin {origin} may not embed this organization's widget"),
            ));
        }
    }
    if request.session_secret.is_none() {
        let address = client_addr::client_ip(&relay.config.trusted_proxies, peer.ip(), &headers);
        relay
            .limits
            .sessions_per_address
            .check(&address.to_string())
            .map_err(|retry| too_many("new sessions from this address", retry))?;
    }
    let session = first(
        call_as(
            shard,
            &json!({}),
            "campfire.start_widget_session($2, $3, $4, $5, $6)",
            &[&org, &request.visitor_id, &request.customer_email, &request.customer_name, &request.session_secret],
        )
        .await?,
    );
    let secret = session["session_secret"].as_str().unwrap_or_default().to_owned();
    let identity = session::resolve_token(&relay, &secret, Some(org))
        .await
        .map_err(|err| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()))?;
    ok(json!({
        "conversationId": session["conversation_id"],
        "widgetSessionId": session["widget_session_id"],
        "sessionSecret": secret,
        "accessToken": auth::mint(relay.config.jwt_secret.as_bytes(), &identity),
        "expiresAt": identity.expires_at,
    }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SendRequest {
    conversation_id: Option<String>,
    content: Option<String>,
    client_message_id: Option<String>,
    sender_type: Option<String>,
    message_type: Option<String>,
}

async fn send(
    relay: &Relay,
    Caller(identity, organization): Caller,
    conversation: uuid::Uuid,
    request: SendRequest,
) -> ApiResult {
    let shard = shard_for(relay, organization)?;
    if let Some(session) = identity.claims["widget_session_id"].as_str() {
        relay
            .limits
            .messages_per_session
            .check(session)
            .map_err(|retry| too_many("messages from this session", retry))?;
    }
    let message = first(
        call_as(
            shard,
            &identity.claims,
            "campfire.send_message($2, $3, $4, $5, coalesce($6, 'text'))",
            &[&conversation, &request.content, &request.sender_type, &request.client_message_id, &request.message_type],
        )
        .await?,
    );
    Ok((StatusCode::CREATED, Json(json!({ "success": true, "message": message }))).into_response())
}

/// POST /api/widget/messages {conversationId, content, clientMessageId?}
async fn widget_send(
    State(relay): State<Arc<Relay>>,
    caller: Caller,
    body: Result<Json<SendRequest>, JsonRejection>,
) -> ApiResult {
    let mut request = json_body(body)?;
    let conversation = parse_uuid(request.conversation_id.as_deref().unwrap_or_default(), "conversationId")?;
    // The seeds' widget (and their troubleshooting guide) call the visitor's side "visitor".
    if request.sender_type.as_deref() == Some("visitor") {
        request.sender_type = Some("customer".into());
    }
    send(&relay, caller, conversation, request).await
}

/// POST /api/dashboard/conversations/{id}/messages {content, clientMessageId?, messageType?}
async fn dashboard_send(
    State(relay): State<Arc<Relay>>,
    Path(id): Path<String>,
    caller: Caller,
    body: Result<Json<SendRequest>, JsonRejection>,
) -> ApiResult {
    let conversation = parse_uuid(&id, "conversation id")?;
    send(&relay, caller, conversation, json_body(body)?).await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HistoryQuery {
    before: Option<i64>,
    limit: Option<i32>,
}

/// GET …/conversations/{id}/messages?before=&limit=
async fn history(
    State(relay): State<Arc<Relay>>,
    Path(id): Path<String>,
    Query(q): Query<HistoryQuery>,
    Caller(identity, organization): Caller,
) -> ApiResult {
    let conversation = parse_uuid(&id, "conversation id")?;
    let shard = shard_for(&relay, organization)?;
    let limit = q.limit.unwrap_or(50);
    ok(
        json!({ "messages": call_as(shard, &identity.claims, "campfire.history($2, $3, $4)", &[&conversation, &q.before, &limit]).await? }),
    )
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ReadRequest {
    up_to_seq: Option<i64>,
}

/// POST …/conversations/{id}/read {upToSeq?}
async fn mark_read(
    State(relay): State<Arc<Relay>>,
    Path(id): Path<String>,
    // Checked once the optional body was read: a body that is there but unreadable is refused
    // first, whoever the caller is.
    caller: Result<Caller, ApiError>,
    body: Option<Json<ReadRequest>>,
) -> ApiResult {
    let Caller(identity, organization) = caller?;
    let conversation = parse_uuid(&id, "conversation id")?;
    let shard = shard_for(&relay, organization)?;
    let up_to = body.map(|Json(b)| b).unwrap_or_default().up_to_seq;
    let rows = call_as(
        shard,
        &identity.claims,
        "(SELECT campfire.mark_read($2, $3) AS last_read_seq)",
        &[&conversation, &up_to],
    )
    .await?;
    ok(json!({ "lastReadSeq": first(rows)["last_read_seq"] }))
}

#[derive(Deserialize)]
struct EventsQuery {
    after: Option<i64>,
    topic: Option<String>,
    limit: Option<i32>,
}

/// GET …/events?after=&topic=&limit= — catch-up after a gap, and the widget's polling fallback.
async fn events_since(
    State(relay): State<Arc<Relay>>,
    Query(q): Query<EventsQuery>,
    Caller(identity, organization): Caller,
) -> ApiResult {
    // A topic names its organization, and the cursors asked after are that shard's.
    let topic_organization = q.topic.as_deref().and_then(crate::shards::organization_of);
    let shard = shard_for(&relay, topic_organization.or(organization))?;
    let limit = q.limit.unwrap_or(500);
    let events = call_as(
        shard,
        &identity.claims,
        "(SELECT e.id AS cursor, e.topic, e.event, e.payload FROM campfire.events_since($2, $3, $4) e)",
        &[&q.after.unwrap_or(0), &q.topic, &limit],
    )
    .await?;
    ok(json!({ "events": events }))
}

// Dashboard ------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListQuery {
    organization_id: String,
    filter: Option<String>,
    after_updated_at: Option<String>,
    after_id: Option<String>,
    limit: Option<i32>,
}

/// GET /api/dashboard/conversations?organizationId=&filter=&afterUpdatedAt=&afterId=&limit=
async fn list_conversations(
    State(relay): State<Arc<Relay>>,
    Query(q): Query<ListQuery>,
    Caller(identity, _): Caller,
) -> ApiResult {
    let org = parse_uuid(&q.organization_id, "organizationId")?;
    let shard = relay.shards.of_organization(org);
    let after_id = q.after_id.as_deref().map(|id| parse_uuid(id, "afterId")).transpose()?;
    let filter = q.filter.unwrap_or_else(|| "all".into());
    let limit = q.limit.unwrap_or(50);
    let rows = call_as(
        shard,
        &identity.claims,
        "(SELECT to_jsonb(l.conversation) || jsonb_build_object('unread', l.unread) AS c \
          FROM campfire.list_conversations($2, $3, $4::text::timestamptz, $5, $6) l)",
        &[&org, &filter, &q.after_updated_at, &after_id, &limit],
    )
    .await?;
    let conversations: Vec<Value> = rows.as_array().into_iter().flatten().map(|r| r["c"].clone()).collect();
    ok(json!({ "conversations": conversations }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AssignRequest {
    assignee_id: Option<String>,
}

async fn assign(
    State(relay): State<Arc<Relay>>,
    Path(id): Path<String>,
    Caller(identity, organization): Caller,
    body: Result<Json<AssignRequest>, JsonRejection>,
) -> ApiResult {
    let conversation = parse_uuid(&id, "conversation id")?;
    let assignee = json_body(body)?.assignee_id.as_deref().map(|a| parse_uuid(a, "assigneeId")).transpose()?;
    let shard = shard_for(&relay, organization)?;
    ok(first(
        call_as(shard, &identity.claims, "campfire.assign_conversation($2, $3)", &[&conversation, &assignee]).await?,
    ))
}

async fn claim(
    State(relay): State<Arc<Relay>>,
    Path(id): Path<String>,
    Caller(identity, organization): Caller,
) -> ApiResult {
    let conversation = parse_uuid(&id, "conversation id")?;
    let shard = shard_for(&relay, organization)?;
    ok(first(call_as(shard, &identity.claims, "campfire.claim_conversation($2)", &[&conversation]).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusRequest {
    status: String,
}

async fn set_status(
    State(relay): State<Arc<Relay>>,
    Path(id): Path<String>,
    Caller(identity, organization): Caller,
    body: Result<Json<StatusRequest>, JsonRejection>,
) -> ApiResult {
    let conversation = parse_uuid(&id, "conversation id")?;
    let status = json_body(body)?.status;
    let shard = shard_for(&relay, organization)?;
    ok(first(
        call_as(shard, &identity.claims, "campfire.set_conversation_status($2, $3)", &[&conversation, &status]).await?,
    ))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AvailabilityRequest {
    organization_id: String,
    availability: String,
}

async fn set_availability(
    State(relay): State<Arc<Relay>>,
    Caller(identity, _): Caller,
    body: Result<Json<AvailabilityRequest>, JsonRejection>,
) -> ApiResult {
    let request = json_body(body)?;
    let org = parse_uuid(&request.organization_id, "organizationId")?;
    let member = first(
        call_as(
            relay.shards.of_organization(org),
            &identity.claims,
            "campfire.set_availability($2, $3)",
            &[&org, &request.availability],
        )
        .await?,
    );
    ok(json!({ "availability": member["availability"], "userId": member["user_id"] }))
}
