//! HTTP: the WebSocket endpoints, health, metrics, the broadcast API and the widget token
//! exchange. Every error is a status with a JSON body.

use crate::Relay;
use crate::auth::{self, Identity};
use crate::config::PeerBus;
use crate::errors::HttpError;
use crate::protocol::Vsn;
use crate::shards::Shard;
use crate::{client_addr, client_broadcast, limits, session};
use axum::Json;
use axum::extract::{ConnectInfo, Query, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tower_http::cors::CorsLayer;
use tower_http::services::{ServeDir, ServeFile};

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    HttpError::new(status, message).into_response()
}

pub fn router(relay: Arc<Relay>) -> axum::Router {
    let api = axum::Router::new()
        .route("/api/broadcast", post(http_broadcast))
        .route("/realtime/v1/api/broadcast", post(http_broadcast))
        .route("/api/broadcast/{topic}/events/{event}", post(http_send))
        .route("/realtime/v1/api/broadcast/{topic}/events/{event}", post(http_send))
        .route("/api/widget/token", post(widget_token))
        .merge(crate::api::routes())
        .layer(axum::extract::DefaultBodyLimit::max(crate::api::MAX_BODY_BYTES))
        .layer(CorsLayer::very_permissive());
    let pages = match &relay.config.web_dir {
        Some(dir) => axum::Router::new()
            .route_service("/widget", ServeFile::new(dir.join("widget.html")))
            .route_service("/dashboard", ServeFile::new(dir.join("dashboard.html")))
            .nest_service("/static", ServeDir::new(dir)),
        None => axum::Router::new(),
    };
    let operator = axum::Router::new()
        .route("/healthz/details", get(health_details))
        .route("/metrics", get(metrics))
        .route_layer(axum::middleware::from_fn_with_state(relay.clone(), operator_only));
    axum::Router::new()
        .merge(pages)
        .route("/realtime/v1/websocket", any(websocket))
        .route("/socket/websocket", any(websocket))
        .route("/websocket", any(websocket))
        .route("/healthz", get(healthz))
        .merge(operator)
        .merge(api)
        .with_state(relay)
}

async fn websocket(
    State(relay): State<Arc<Relay>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let Ok(upgrade) = upgrade else {
        return error(StatusCode::BAD_REQUEST, "expected a WebSocket upgrade");
    };
    let vsn = match Vsn::parse(params.get("vsn").map(String::as_str)) {
        Ok(vsn) => vsn,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let key = headers.get("x-api-key").and_then(|v| v.to_str().ok()).or(params.get("apikey").map(String::as_str));
    let Some(key) = key else {
        return error(StatusCode::UNAUTHORIZED, "API key is missing");
    };
    // Counted before the credential is checked: a flood from one address costs no verification.
    let address = client_addr::client_ip(&relay.config.trusted_proxies, peer.ip(), &headers);
    let mut slot = match relay.limits.connections.admit(address) {
        Ok(slot) => slot,
        Err(refused) => return too_many_connections(&relay, refused),
    };
    // A Supabase API key (what supabase-js passes when the app gives it its project key) opens
    // a connection without a credential: each join must then carry an access_token.
    let identity = if auth::is_supabase_key(key) {
        None
    } else {
        match session::resolve_token(&relay, key, None).await {
            Ok(identity) => Some(identity),
            Err(err) => return error(StatusCode::UNAUTHORIZED, err.to_string()),
        }
    };
    if let Some(identity) = &identity
        && let Err(refused) = relay.limits.connections.admit_credential(&mut slot, identity)
    {
        return too_many_connections(&relay, refused);
    }
    // Frames up to 1 MiB (or twice the payload limit) are read, so that an oversized broadcast
    // or track gets an error reply naming the limit instead of a dropped connection.
    let max_in = (relay.config.max_payload_bytes * 2).max(1 << 20);
    upgrade
        // Small buffers: an idle connection should cost little. Client frames (heartbeats,
        // joins, typing) fit in 1 KiB; the read buffer grows only while a larger one is read.
        // Frames queued during a burst are coalesced into writes of up to 16 KiB (the writer
        // flushes after each batch): one syscall for many frames, 2-3x the fan-out rate. A
        // connection keeps what its write buffer grew to, so only those that receive bursts
        // hold ~16 KiB.
        .read_buffer_size(1024)
        .write_buffer_size(16 << 10)
        // A ceiling for one unflushed outgoing frame (a big presence_state), not an allocation:
        // what a connection may hold is bounded by its send queue.
        .max_write_buffer_size(16 << 20)
        .max_message_size(max_in)
        .max_frame_size(max_in)
        .on_upgrade(move |socket| {
            let tracker = relay.sessions.clone();
            tracker.track_future(session::serve(socket, relay, vsn, identity, slot))
        })
}

/// A handshake over a connection limit: 429 naming it, as Supabase Realtime answers. (A browser
/// sees a failed connection and reconnects with backoff.)
fn too_many_connections(relay: &Relay, refused: limits::Refused) -> Response {
    relay.metrics.limited.with_label_values(&[refused.label]).inc();
    error(StatusCode::TOO_MANY_REQUESTS, refused.reason)
}

/// How long /healthz waits for the database: it answers within a second even when the link is
/// silent.
const HEALTH_QUERY_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);

/// What the health check found on one shard.
struct ShardHealth<'a> {
    shard: &'a Shard,
    listening: bool,
    head: Option<i64>,
}

impl ShardHealth<'_> {
    /// Healthy only while LISTEN is up and the database answered this very check: a check that
    /// could not be made never reads as ok.
    fn healthy(&self) -> bool {
        self.listening && self.head.is_some()
    }

    fn details(&self) -> Value {
        let last = self.shard.health.last_event_id.load(Ordering::SeqCst);
        json!({
            "status": if self.healthy() { "ok" } else { "down" },
            "listen_connected": self.listening,
            "query_connected": self.shard.db.query_connected(),
            "last_event_id": last,
            "log_head": self.head,
            "lag": self.head.map(|h| (h - last).max(0)),
        })
    }
}

/// What the health check found, every shard checked at once, and the bus to the other relays.
struct Health<'a> {
    shards: Vec<ShardHealth<'a>>,
    /// The NATS connection, on that bus; on PostgreSQL's the default shard's LISTEN connection
    /// carries the peers, so its shard's health says it.
    peers_connected: bool,
}

impl Health<'_> {
    async fn check(relay: &Relay) -> Health<'_> {
        let checks = relay.shards.all().iter().map(|shard| async move {
            let listening = shard.health.listen_connected.load(Ordering::SeqCst);
            let head = tokio::time::timeout(HEALTH_QUERY_TIMEOUT, shard.db.log_head()).await.ok().and_then(Result::ok);
            ShardHealth { shard, listening, head }
        });
        let shards = futures_util::future::join_all(checks).await;
        let peers_connected = match relay.config.peers.bus {
            PeerBus::Nats => relay.metrics.nats_connected.get() == 1,
            PeerBus::Postgres => relay.shards.default_shard().health.listen_connected.load(Ordering::SeqCst),
        };
        Health { shards, peers_connected }
    }

    /// `ok` when every shard and the bus to the other relays are; `degraded` when one is down,
    /// still 200 while any shard is up: every relay sees the same shard (or NATS) down, so taking
    /// relays out of a load balancer would only cut off the organizations of the shards that
    /// work. 503 once none is.
    fn respond(&self, mut body: Value) -> Response {
        let up = self.shards.iter().filter(|s| s.healthy()).count();
        let all_up = up == self.shards.len() && self.peers_connected;
        body["status"] = json!(if all_up { "ok" } else { "degraded" });
        let status = if up > 0 { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
        (status, Json(body)).into_response()
    }
}

/// Public liveness: the status alone (the event cursors and link states are the operator's).
async fn healthz(State(relay): State<Arc<Relay>>) -> Response {
    Health::check(&relay).await.respond(json!({}))
}

/// The health check's findings, for the operator, per shard: LISTEN and query links, the relay's
/// cursor, the log head and the lag (ids of different shards are not comparable, so no sum).
/// The top-level links and lag are every shard's: up only if all are, the largest lag.
async fn health_details(State(relay): State<Arc<Relay>>) -> Response {
    let health = Health::check(&relay).await;
    let shards: serde_json::Map<String, Value> =
        health.shards.iter().map(|s| (s.shard.name.clone(), s.details())).collect();
    let all = |field: &str| shards.values().all(|s| s[field] == json!(true));
    let lag =
        shards.values().map(|s| s["lag"].as_i64()).collect::<Option<Vec<i64>>>().map(|lags| lags.into_iter().max());
    health.respond(json!({
        "listen_connected": all("listen_connected"),
        "query_connected": all("query_connected"),
        "lag": lag.flatten(),
        "connections": relay.metrics.connections.get(),
        "peers": { "bus": bus_name(relay.config.peers.bus), "connected": health.peers_connected },
        "shards": shards,
    }))
}

fn bus_name(bus: PeerBus) -> &'static str {
    match bus {
        PeerBus::Postgres => "postgres",
        PeerBus::Nats => "nats",
    }
}

async fn metrics(State(relay): State<Arc<Relay>>) -> String {
    let (total, max) = relay.hub.queued_frames();
    relay.metrics.queue_depth.set(total as i64);
    relay.metrics.queue_depth_max.set(max as i64);
    for shard in relay.shards.all() {
        shard.db.report_api_connections();
    }
    relay.metrics.render()
}

/// The operator's endpoints answer `Authorization: Bearer <ops token>` when one is configured,
/// and otherwise clients on this machine only.
async fn operator_only(
    State(relay): State<Arc<Relay>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let headers = request.headers();
    match &relay.config.ops_token {
        Some(token) if constant_time_eq(bearer(headers).unwrap_or_default().as_bytes(), token.as_bytes()) => {}
        Some(_) => return error(StatusCode::UNAUTHORIZED, "this endpoint needs Authorization: Bearer <the ops token>"),
        None if client_addr::client_ip(&relay.config.trusted_proxies, peer.ip(), headers).is_loopback() => {}
        None => {
            return error(
                StatusCode::FORBIDDEN,
                "this endpoint answers clients on the relay's machine only; set CAMPFIRE_OPS_TOKEN to read it from elsewhere",
            );
        }
    }
    next.run(request).await
}

/// Compares without stopping at the first difference, so the time taken does not tell how much
/// of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// The token of `Authorization: Bearer <token>`.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
}

/// `Authorization: Bearer` wins over the `apikey` header, as in Supabase.
async fn http_identity(relay: &Relay, headers: &HeaderMap) -> Result<Identity, Response> {
    let token = bearer(headers).or_else(|| headers.get("apikey").and_then(|v| v.to_str().ok()));
    let Some(token) = token else {
        return Err(error(StatusCode::UNAUTHORIZED, "missing Authorization bearer token or apikey header"));
    };
    session::resolve_token(relay, token, None).await.map_err(|err| error(StatusCode::UNAUTHORIZED, err.to_string()))
}

#[derive(Deserialize)]
struct BroadcastBatch {
    messages: Vec<BroadcastMessage>,
}

#[derive(Deserialize)]
struct BroadcastMessage {
    topic: String,
    event: String,
    payload: Value,
}

/// POST /api/broadcast: every message is checked before any is sent, so a batch is all or nothing.
async fn http_broadcast(
    State(relay): State<Arc<Relay>>,
    headers: HeaderMap,
    body: Result<Json<BroadcastBatch>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let identity = match http_identity(&relay, &headers).await {
        Ok(identity) => identity,
        Err(response) => return response,
    };
    let Json(batch) = match body {
        Ok(body) => body,
        Err(rejection) => return error(StatusCode::UNPROCESSABLE_ENTITY, rejection.body_text()),
    };
    if batch.messages.is_empty() || batch.messages.len() > 100 {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "messages must hold 1 to 100 broadcasts");
    }
    let mut checked = Vec::with_capacity(batch.messages.len());
    for message in batch.messages {
        match check_broadcast(&relay, &identity, message).await {
            Ok(message) => checked.push(message),
            Err(response) => return response,
        }
    }
    for message in checked {
        send_broadcast(&relay, message);
    }
    StatusCode::ACCEPTED.into_response()
}

/// POST /api/broadcast/{topic}/events/{event}, the body its payload: one broadcast, as
/// realtime-js 2.119's `channel.httpSend()` sends it.
async fn http_send(
    State(relay): State<Arc<Relay>>,
    axum::extract::Path((topic, event)): axum::extract::Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let identity = match http_identity(&relay, &headers).await {
        Ok(identity) => identity,
        Err(response) => return response,
    };
    if query.keys().any(|key| key.starts_with("persist")) {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "persist is not supported: client broadcasts are not stored (database events are, in the log)",
        );
    }
    if headers.get("content-type").is_some_and(|t| t.as_bytes().starts_with(b"application/octet-stream")) {
        return error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "binary payloads are not supported: send a JSON object");
    }
    let payload = match serde_json::from_slice(&body) {
        Ok(payload) => payload,
        Err(err) => return error(StatusCode::UNPROCESSABLE_ENTITY, format!("the body is not JSON: {err}")),
    };
    match check_broadcast(&relay, &identity, BroadcastMessage { topic, event, payload }).await {
        Ok(message) => {
            send_broadcast(&relay, message);
            StatusCode::ACCEPTED.into_response()
        }
        Err(response) => response,
    }
}

/// A broadcast the caller may send, on its canonical topic; or the response that says why not.
async fn check_broadcast(
    relay: &Relay,
    identity: &Identity,
    message: BroadcastMessage,
) -> Result<BroadcastMessage, Response> {
    if !message.payload.is_object() {
        return Err(error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("payload for {} must be a JSON object", message.topic),
        ));
    }
    let shard = relay.shards.of_topic(&message.topic);
    let topic = match shard.db.authorize(&message.topic, &identity.claims).await {
        Ok(a) if a.broadcast => a.topic,
        Ok(a) => {
            let reason = a.reason.unwrap_or_else(|| "broadcast not allowed".into());
            return Err(error(StatusCode::FORBIDDEN, format!("may not broadcast on {}: {reason}", message.topic)));
        }
        Err(crate::db::DbError::InvalidChannel(m)) => return Err(error(StatusCode::UNPROCESSABLE_ENTITY, m)),
        Err(err) => return Err(error(StatusCode::SERVICE_UNAVAILABLE, err.to_string())),
    };
    match relay.broadcast_rules.check(&message.event, &message.payload) {
        Ok(()) => Ok(BroadcastMessage { topic, ..message }),
        Err(refusal @ client_broadcast::Refusal::TooLarge { .. }) => {
            Err(error(StatusCode::PAYLOAD_TOO_LARGE, refusal.to_string()))
        }
        Err(refusal) => Err(error(StatusCode::UNPROCESSABLE_ENTITY, refusal.to_string())),
    }
}

fn send_broadcast(relay: &Relay, message: BroadcastMessage) {
    relay.metrics.client_broadcasts.inc();
    relay.hub.broadcast(&message.topic, None, &message.event, message.payload);
}

#[derive(Deserialize)]
struct TokenRequest {
    #[serde(alias = "sessionSecret")]
    session_secret: String,
}

/// POST /api/widget/token: a widget session secret for a short-lived visitor JWT.
async fn widget_token(
    State(relay): State<Arc<Relay>>,
    body: Result<Json<TokenRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(request) = match body {
        Ok(body) => body,
        Err(rejection) => return error(StatusCode::BAD_REQUEST, rejection.body_text()),
    };
    if !auth::is_widget_secret(&request.session_secret) {
        return error(StatusCode::UNAUTHORIZED, "not a widget session secret");
    }
    match session::resolve_token(&relay, &request.session_secret, None).await {
        Ok(identity) => {
            let token = auth::mint(relay.config.jwt_secret.as_bytes(), &identity);
            Json(json!({ "access_token": token, "expires_at": identity.expires_at })).into_response()
        }
        Err(err) => error(err.status(), err.to_string()),
    }
}
