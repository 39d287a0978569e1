//! PostgreSQL: the queries the relay makes (through the extension's functions) and the one
//! LISTEN connection that feeds the hub, with replay from the log after any gap.

use crate::{AccessChange, Relay};
use futures_util::StreamExt;
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{Mutex, mpsc};
use tokio_postgres::{AsyncMessage, Client, NoTls};
use tokio_util::sync::CancellationToken;

use campfire_core::channels::{ACCESS as ACCESS_CHANNEL, EVENTS as EVENTS_CHANNEL, PEERS as PEERS_CHANNEL};
/// The largest peer message: what fits in one NOTIFY once sealed.
pub const MAX_NOTIFY_BYTES: usize = campfire_core::sealed::MAX_PAYLOAD;
pub(crate) const PAGE: i32 = 1000;

#[derive(Debug, Clone)]
pub struct DbEvent {
    pub id: i64,
    pub topic: String,
    pub event: String,
    pub payload: Value,
}

/// What the extension decided about a join.
#[derive(Debug, Clone)]
pub struct Authorization {
    pub read: bool,
    pub broadcast: bool,
    pub presence: bool,
    pub reason: Option<String>,
    /// The canonical channel name events are published under.
    pub topic: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid channel name: {0}")]
    InvalidChannel(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("database unavailable: {0}")]
    Unavailable(String),
}

impl From<tokio_postgres::Error> for DbError {
    fn from(err: tokio_postgres::Error) -> DbError {
        match err.as_db_error() {
            Some(db) if db.code().code() == "22023" => DbError::InvalidChannel(db.message().to_owned()),
            Some(db) if db.code().code() == "28000" => DbError::Unauthorized(db.message().to_owned()),
            _ => DbError::Unavailable(err.to_string()),
        }
    }
}

/// One shared query connection (tokio-postgres pipelines concurrent queries), reconnected on
/// demand.
pub struct Db {
    url: String,
    client: Mutex<Option<Arc<Client>>>,
    /// The notify key, read whenever the LISTEN connection comes up.
    pub sealing: crate::notify::Sealing,
}

async fn connect(
    url: &str,
) -> Result<(Client, tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>), DbError> {
    tokio_postgres::connect(url, NoTls).await.map_err(|e| DbError::Unavailable(e.to_string()))
}

impl Db {
    pub fn new(url: String) -> Db {
        Db { url, client: Mutex::new(None), sealing: Default::default() }
    }

    /// The shared query connection, (re)connected if needed.
    pub async fn client(&self) -> Result<Arc<Client>, DbError> {
        let mut slot = self.client.lock().await;
        if let Some(client) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(client.clone());
        }
        let (client, connection) = connect(&self.url).await?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::warn!(%err, "query connection ended");
            }
        });
        let client = Arc::new(client);
        *slot = Some(client.clone());
        Ok(client)
    }

    pub async fn authorize(&self, topic: &str, claims: &Value) -> Result<Authorization, DbError> {
        let row = self
            .client()
            .await?
            .query_one("SELECT campfire.authorize_channel($1, $2::text::jsonb)::text", &[&topic, &claims.to_string()])
            .await?;
        let decision: Value =
            serde_json::from_str(row.get::<_, &str>(0)).map_err(|e| DbError::Unavailable(e.to_string()))?;
        let topic = decision["topic"].as_str().unwrap_or(topic).to_owned();
        let flag = |name: &str| decision[name].as_bool().unwrap_or(false);
        Ok(Authorization {
            read: flag("read"),
            broadcast: flag("broadcast"),
            presence: flag("presence"),
            reason: decision["reason"].as_str().map(str::to_owned),
            topic,
        })
    }

    pub async fn visitor_claims(&self, secret: &str) -> Result<Value, DbError> {
        let row = self.client().await?.query_one("SELECT campfire.visitor_claims($1)::text", &[&secret]).await?;
        serde_json::from_str(row.get::<_, &str>(0)).map_err(|e| DbError::Unavailable(e.to_string()))
    }

    pub async fn read_log(&self, after: i64, topic: Option<&str>) -> Result<Vec<DbEvent>, DbError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT id, topic, event, payload::text FROM campfire.read_log($1, $2, $3)",
                &[&after, &PAGE, &topic],
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok(DbEvent {
                    id: row.get(0),
                    topic: row.get(1),
                    event: row.get(2),
                    payload: serde_json::from_str(row.get::<_, &str>(3))
                        .map_err(|e| DbError::Unavailable(e.to_string()))?,
                })
            })
            .collect()
    }

    /// The id through which the log has been pruned: older cursors cannot be resumed.
    pub async fn log_tail(&self) -> Result<i64, DbError> {
        Ok(self.client().await?.query_one("SELECT campfire.log_tail()", &[]).await?.get(0))
    }

    pub async fn log_head(&self) -> Result<i64, DbError> {
        Ok(self.client().await?.query_one("SELECT campfire.log_head()", &[]).await?.get(0))
    }

    /// Tells the other relays about a client broadcast or presence change.
    pub async fn notify_peers(&self, payload: &str) -> Result<(), DbError> {
        let sealed = self.sealing.seal_for_peers(payload).map_err(|e| DbError::Unavailable(e.to_string()))?;
        self.client().await?.execute("SELECT pg_notify($1, $2)", &[&PEERS_CHANNEL, &sealed]).await?;
        Ok(())
    }

    async fn read_notify_key(&self) -> Result<(), DbError> {
        let key: Vec<u8> = self.client().await?.query_one("SELECT campfire.notify_key()", &[]).await?.get(0);
        let key = key.try_into().map_err(|_| DbError::Unavailable("campfire.notify_key() is not 32 bytes".into()))?;
        self.sealing.set_key(key);
        Ok(())
    }
}

/// The notification payload written by the extension's flush_events.
#[derive(serde::Deserialize)]
struct EventsNotification {
    first: i64,
    last: i64,
    events: Option<Vec<InlineEvent>>,
}

#[derive(serde::Deserialize)]
struct InlineEvent {
    id: i64,
    topic: String,
    event: String,
    payload: Value,
}

/// Routes every event after the relay's cursor, from the log, until caught up.
async fn catch_up(relay: &Relay) -> Result<(), DbError> {
    loop {
        let after = relay.health.last_event_id.load(Ordering::SeqCst);
        let page = relay.db.read_log(after, None).await?;
        let done = page.len() < PAGE as usize;
        for event in page {
            route(relay, event);
        }
        if done {
            return Ok(());
        }
    }
}

fn route(relay: &Relay, event: DbEvent) {
    // Notifications and log reads may overlap after a reconnect: each id is routed once.
    if event.id <= relay.health.last_event_id.load(Ordering::SeqCst) {
        return;
    }
    relay.health.last_event_id.store(event.id, Ordering::SeqCst);
    relay.metrics.last_event_id.set(event.id);
    relay.metrics.events_in.inc();
    relay.hub.publish_db_event(&event);
}

async fn handle_events_notification(relay: &Relay, payload: &str) -> Result<(), DbError> {
    let note: EventsNotification = match serde_json::from_str(payload) {
        Ok(note) => note,
        Err(err) => {
            // Sealed by the extension yet unreadable: a version mismatch. The log has the truth.
            tracing::warn!(%err, "unreadable campfire_events notification; reading the log instead");
            return catch_up(relay).await;
        }
    };
    let seen = relay.health.last_event_id.load(Ordering::SeqCst);
    if note.last <= seen {
        return Ok(());
    }
    match note.events {
        // The common case: the next events, inline.
        Some(events) if note.first == seen + 1 => {
            for e in events {
                route(relay, DbEvent { id: e.id, topic: e.topic, event: e.event, payload: e.payload });
            }
            Ok(())
        }
        // Too large to inline, or a gap before them: the log has everything in order.
        _ => catch_up(relay).await,
    }
}

/// `{"user_id"}` or `{"widget_session_id"}` from the extension, to every session (sessions
/// without a concerned channel ignore it).
fn announce_access_change(relay: &Relay, payload: &str) {
    let change = serde_json::from_str::<Value>(payload).ok().and_then(|v| {
        match (v["user_id"].as_str(), v["widget_session_id"].as_str()) {
            (Some(user), _) => Some(AccessChange::User(user.to_owned())),
            (_, Some(session)) => Some(AccessChange::WidgetSession(session.to_owned())),
            _ => None,
        }
    });
    // Sealed by the extension yet unreadable: check everyone rather than let a revocation pass.
    let _ = relay.access.send(change.unwrap_or(AccessChange::Everyone));
}

/// Holds the LISTEN connection for the relay's lifetime: reconnects with capped backoff and
/// replays from the log whatever was committed while it was away.
pub async fn listen(relay: Arc<Relay>, shutdown: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    let mut first = true;
    loop {
        match listen_once(&relay, &shutdown, &mut first).await {
            Ok(()) => return, // shutdown
            Err(err) => {
                relay.health.listen_connected.store(false, Ordering::SeqCst);
                relay.metrics.listen_connected.set(0);
                tracing::warn!(%err, ?backoff, "LISTEN connection lost; reconnecting");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
        relay.metrics.listen_reconnects.inc();
    }
}

async fn listen_once(relay: &Arc<Relay>, shutdown: &CancellationToken, first: &mut bool) -> Result<(), DbError> {
    let (client, mut connection) = connect(&relay.db.url).await?;
    let (tx, mut notifications) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx.send(n).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(%err, "LISTEN connection error");
                    return;
                }
            }
        }
    });
    client.batch_execute(&format!("LISTEN {EVENTS_CHANNEL}; LISTEN {PEERS_CHANNEL}; LISTEN {ACCESS_CHANNEL}")).await?;
    relay.db.read_notify_key().await?;
    if *first {
        // A new relay starts at the head: clients ask for history with a resume cursor.
        let head = relay.db.log_head().await?;
        relay.health.last_event_id.fetch_max(head, Ordering::SeqCst);
        *first = false;
    } else {
        catch_up(relay).await?;
        // Rights may have been taken back while nobody was listening.
        let _ = relay.access.send(AccessChange::Everyone);
    }
    relay.health.listen_connected.store(true, Ordering::SeqCst);
    relay.metrics.listen_connected.set(1);
    // Peer messages are not durable: whatever the other relays said while this connection was
    // down is re-learned from a fresh state exchange.
    relay.hub.announce();
    tracing::info!(last_event_id = relay.health.last_event_id.load(Ordering::SeqCst), "listening for events");
    let result = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            n = notifications.recv() => match n {
                None => break Err(DbError::Unavailable("LISTEN connection closed".into())),
                Some(n) => match relay.db.sealing.open(n.channel(), n.payload(), crate::notify::now_ms()) {
                    Ok(payload) if n.channel() == EVENTS_CHANNEL => handle_events_notification(relay, &payload).await?,
                    Ok(payload) if n.channel() == ACCESS_CHANNEL => announce_access_change(relay, &payload),
                    Ok(payload) => relay.hub.apply_peer_message(&payload),
                    Err(refusal) => {
                        relay.metrics.refused_notifications.with_label_values(&[refusal.label()]).inc();
                        tracing::debug!(channel = n.channel(), %refusal, "notification refused");
                    }
                },
            },
        }
    };
    driver.abort();
    result
}
