//! PostgreSQL: the queries the relay makes (through the extension's functions) and the LISTEN
//! connection that feeds the hub, with replay from the log after any gap: one of each per shard
//! (shards.rs). Both connections are probed: one that stops answering (a black-holed link sends
//! no FIN or RST) is given up and replaced.

use crate::api_pool::{ApiPool, api_pool};
use crate::errors::SqlError;
use crate::metrics::Metrics;
use crate::prepared::QueryClient;
use crate::shards::Shard;
use crate::{AccessChange, Config, Relay};
use futures_util::StreamExt;
use serde_json::Value;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, mpsc};
use tokio_postgres::tls::NoTlsStream;
use tokio_postgres::{AsyncMessage, Client, Connection, NoTls, Socket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use campfire_core::channels::{ACCESS as ACCESS_CHANNEL, EVENTS as EVENTS_CHANNEL, PEERS as PEERS_CHANNEL};
/// The largest peer message: what fits in one NOTIFY once sealed.
pub const MAX_NOTIFY_BYTES: usize = campfire_core::sealed::MAX_PAYLOAD;
pub(crate) const PAGE: i32 = 1000;

/// An event of the log, as the relay routes it: its payload is the JSON text the log gave, which
/// the relay forwards without parsing it into a tree.
pub type DbEvent = campfire_core::announcement::LoggedEvent<Box<serde_json::value::RawValue>>;

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

#[derive(Debug, Clone, thiserror::Error)]
pub enum DbError {
    #[error("invalid channel name: {0}")]
    InvalidChannel(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database unavailable: no answer within {0:?}")]
    TimedOut(Duration),
}

impl DbError {
    /// The `reason` label of `campfire_db_link_failures_total`.
    fn reason(&self) -> &'static str {
        match self {
            DbError::TimedOut(_) => "timeout",
            _ => "error",
        }
    }
}

impl From<tokio_postgres::Error> for DbError {
    fn from(err: tokio_postgres::Error) -> DbError {
        match SqlError::of(&err) {
            Some((SqlError::InvalidParameter, db)) => DbError::InvalidChannel(db.message().to_owned()),
            Some((SqlError::Unauthenticated, db)) => DbError::Unauthorized(db.message().to_owned()),
            _ => DbError::Unavailable(err.to_string()),
        }
    }
}

/// The relay's two database connections, as metrics name them.
#[derive(Debug, Clone, Copy)]
enum Link {
    Listen,
    Query,
}

impl Link {
    fn label(self) -> &'static str {
        match self {
            Link::Listen => "listen",
            Link::Query => "query",
        }
    }
}

/// The shared query connection and the task driving it. Dropping it aborts the task, which
/// fails every query still waiting on the connection at once.
struct QueryConnection {
    client: Arc<QueryClient>,
    _driver: AbortOnDropHandle<()>,
}

/// The shared query connection, if up, and how the last attempt to connect it failed.
#[derive(Default)]
struct QuerySlot {
    connection: Option<QueryConnection>,
    failed: Option<(Instant, DbError)>,
}

/// One shard's shared query connection (tokio-postgres pipelines concurrent queries), probed
/// and reconnected on demand, and the settings every connection to it is made with.
pub struct Db {
    /// The shard's name, as metrics label it.
    shard: String,
    config: tokio_postgres::Config,
    /// How long the database may take to answer a probe or a connection attempt.
    timeout: Duration,
    probe_interval: Duration,
    metrics: Arc<Metrics>,
    query: Mutex<QuerySlot>,
    /// The HTTP API's own connections (api_pool.rs).
    api: ApiPool,
    /// The notify key, read whenever the LISTEN connection comes up.
    pub sealing: crate::notify::Sealing,
}

/// TCP keepalive takes whole seconds, at least one.
fn whole_seconds(duration: Duration) -> Duration {
    Duration::from_secs(duration.as_secs_f64().ceil().max(1.0) as u64)
}

impl Db {
    pub fn new(shard: &str, url: &str, config: &Config, metrics: Arc<Metrics>) -> Result<Db, tokio_postgres::Error> {
        let mut pg: tokio_postgres::Config = url.parse()?;
        // The kernel watches the links too: keepalive probes on an idle one, and unacknowledged
        // data (a probe into a dead link) ends the connection after the timeout.
        pg.keepalives(true)
            .keepalives_idle(whole_seconds(config.db_probe_interval()))
            .keepalives_interval(Duration::from_secs(1))
            .keepalives_retries(3)
            .tcp_user_timeout(config.db_timeout());
        // Every shard's series from the start, at 0: a shard that never connected shows as down.
        for link in [Link::Listen, Link::Query] {
            metrics.db_link_up.with_label_values(&[link.label(), shard]).set(0);
        }
        metrics.listen_reconnects.with_label_values(&[shard]);
        metrics.events_in.with_label_values(&[shard]);
        Ok(Db {
            shard: shard.to_owned(),
            api: api_pool(pg.clone(), config.api_connections as usize, config.db_timeout()),
            config: pg,
            timeout: config.db_timeout(),
            probe_interval: config.db_probe_interval(),
            metrics,
            query: Mutex::default(),
            sealing: Default::default(),
        })
    }

    /// Awaits `request`, failing if the database does not answer within the timeout.
    async fn answer<T>(&self, request: impl Future<Output = Result<T, tokio_postgres::Error>>) -> Result<T, DbError> {
        match tokio::time::timeout(self.timeout, request).await {
            Ok(result) => result.map_err(|e| DbError::Unavailable(e.to_string())),
            Err(_) => Err(DbError::TimedOut(self.timeout)),
        }
    }

    async fn connect(&self) -> Result<(Client, Connection<Socket, NoTlsStream>), DbError> {
        self.answer(self.config.connect(NoTls)).await
    }

    /// A liveness probe: the connection answers a query in time, or it is presumed dead.
    async fn probe(&self, client: &Client) -> Result<(), DbError> {
        self.answer(client.batch_execute("SELECT 1")).await
    }

    fn link_up(&self, link: Link) {
        self.metrics.db_link_up.with_label_values(&[link.label(), &self.shard]).set(1);
    }

    fn link_lost(&self, link: Link, err: &DbError) {
        tracing::warn!(shard = self.shard, connection = link.label(), %err, "database connection lost");
        self.metrics.db_link_up.with_label_values(&[link.label(), &self.shard]).set(0);
        self.metrics.db_link_failures.with_label_values(&[link.label(), err.reason(), &self.shard]).inc();
    }

    /// Runs one HTTP API call's statement on a connection of the API's own (api_pool.rs).
    pub async fn api_query_one(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Result<tokio_postgres::Row, tokio_postgres::Error>, DbError> {
        crate::api_pool::query_one(&self.api, sql, params).await
    }

    /// Sets the API connections' gauges, for a scrape of the metrics.
    pub fn report_api_connections(&self) {
        let status = self.api.status();
        let states = [
            ("busy", status.size.saturating_sub(status.available)),
            ("idle", status.available),
            ("waiting", status.waiting),
        ];
        for (state, count) in states {
            self.metrics.db_api_connections.with_label_values(&[self.shard.as_str(), state]).set(count as i64);
        }
    }

    /// Whether the query connection is up, as the metrics say.
    pub fn query_connected(&self) -> bool {
        self.metrics.db_link_up.with_label_values(&[Link::Query.label(), &self.shard]).get() == 1
    }

    /// The shared query connection, (re)connected if needed. An attempt that failed while this
    /// caller waited for its turn is its answer too: callers queued behind a dead link would
    /// otherwise each wait out a timeout of their own, one after another.
    pub async fn client(&self) -> Result<Arc<QueryClient>, DbError> {
        let asked = Instant::now();
        let mut slot = self.query.lock().await;
        match slot.connection.as_ref() {
            Some(query) if !query.client.client().is_closed() => return Ok(query.client.clone()),
            Some(_) => {
                slot.connection = None;
                self.link_lost(Link::Query, &DbError::Unavailable("the connection ended".into()));
            }
            None => {}
        }
        if let Some((at, err)) = &slot.failed
            && *at >= asked
        {
            return Err(err.clone());
        }
        let (client, connection) = match self.connect().await {
            Ok(connected) => connected,
            Err(err) => {
                self.link_lost(Link::Query, &err);
                slot.failed = Some((Instant::now(), err.clone()));
                return Err(err);
            }
        };
        let driver = AbortOnDropHandle::new(tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::warn!(%err, "query connection ended");
            }
        }));
        let client = Arc::new(QueryClient::new(client));
        slot.connection = Some(QueryConnection { client: client.clone(), _driver: driver });
        self.link_up(Link::Query);
        Ok(client)
    }

    /// Probes the shared query connection every probe interval until `shutdown`: one that does
    /// not answer in time is given up (the queries waiting on it fail) and the next use connects
    /// anew.
    pub async fn watch_queries(&self, shutdown: &CancellationToken) {
        let mut tick = tokio::time::interval(self.probe_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let Ok(client) = self.client().await else { continue };
            if let Err(err) = self.probe(client.client()).await {
                let mut slot = self.query.lock().await;
                if slot.connection.as_ref().is_some_and(|query| Arc::ptr_eq(&query.client, &client)) {
                    slot.connection = None;
                    self.link_lost(Link::Query, &err);
                }
            }
        }
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
                    payload: serde_json::value::RawValue::from_string(row.get::<_, String>(3))
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

/// What an events notification says, opened from its seal.
type EventsNotification = campfire_core::announcement::Announcement<Vec<DbEvent>>;

/// Routes every event after the shard's cursor, from its log, until caught up.
async fn catch_up(relay: &Relay, shard: &Shard) -> Result<(), DbError> {
    loop {
        let after = shard.health.last_event_id.load(Ordering::SeqCst);
        let page = shard.db.read_log(after, None).await?;
        let done = page.len() < PAGE as usize;
        for event in page {
            route(relay, shard, event);
        }
        if done {
            return Ok(());
        }
    }
}

fn route(relay: &Relay, shard: &Shard, event: DbEvent) {
    // Notifications and log reads may overlap after a reconnect: each id is routed once.
    if event.id <= shard.health.last_event_id.load(Ordering::SeqCst) {
        return;
    }
    shard.health.last_event_id.store(event.id, Ordering::SeqCst);
    relay.metrics.last_event_id.with_label_values(&[&shard.name]).set(event.id);
    if !relay.shards.holds(shard, &event.topic) {
        relay.metrics.drops.with_label_values(&["event_of_another_shard"]).inc();
        tracing::warn!(shard = shard.name, topic = event.topic, "event of an organization placed on another shard");
        return;
    }
    relay.metrics.events_in.with_label_values(&[&shard.name]).inc();
    relay.hub.publish_db_event(&event);
}

/// Routes what an events notification announces. `announced` is the highest id any notification
/// has accounted for: a writer that announces its own commit (while no notifier runs) can be
/// heard before an earlier writer's commit settles, so whenever the relay is behind it, it reads
/// the log again, which holds everything settled so far.
async fn handle_events_notification(
    relay: &Relay,
    shard: &Shard,
    payload: &str,
    announced: &mut i64,
) -> Result<(), DbError> {
    let note: EventsNotification = match serde_json::from_str(payload) {
        Ok(note) => note,
        Err(err) => {
            // Sealed by the extension yet unreadable: a version mismatch. The log has the truth.
            tracing::warn!(%err, "unreadable campfire_events notification; reading the log instead");
            return catch_up(relay, shard).await;
        }
    };
    *announced = (*announced).max(note.last);
    let seen = shard.health.last_event_id.load(Ordering::SeqCst);
    if note.last <= seen {
        return Ok(());
    }
    match note.events {
        // The common case: the next events, inline, and every id up to `last` accounted for.
        Some(events) if note.first == seen + 1 => {
            for event in events {
                route(relay, shard, event);
            }
            shard.health.last_event_id.fetch_max(note.last, Ordering::SeqCst);
        }
        // Too large to inline, or a gap before them: the log has everything in order.
        _ => catch_up(relay, shard).await?,
    }
    if shard.health.last_event_id.load(Ordering::SeqCst) < *announced {
        catch_up(relay, shard).await?;
    }
    Ok(())
}

/// `{"user_id"}` or `{"widget_session_id"}` from the extension, to the sessions holding a
/// channel joined as that user or widget session.
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

/// Waits between attempts to re-establish the LISTEN connection: doubling from `FIRST` to `MAX`
/// while attempts keep failing, and back to `FIRST` once a connection has stayed up for `STABLE`.
#[derive(Debug)]
struct Backoff {
    next: Duration,
    up_since: Option<Instant>,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);
    const STABLE: Duration = Duration::from_secs(10);

    fn new() -> Backoff {
        Backoff { next: Backoff::FIRST, up_since: None }
    }

    /// The connection is up as of `at`.
    fn connected(&mut self, at: Instant) {
        self.up_since = Some(at);
    }

    /// How long to wait before the next attempt, after a failure at `now`.
    fn after_failure(&mut self, now: Instant) -> Duration {
        if self.up_since.take().is_some_and(|since| now.duration_since(since) >= Backoff::STABLE) {
            self.next = Backoff::FIRST;
        }
        let wait = self.next;
        self.next = (wait * 2).min(Backoff::MAX);
        wait
    }
}

/// Holds the LISTEN connection of the shard at `index` for the relay's lifetime: reconnects with
/// capped backoff and replays from the shard's log whatever was committed while it was away.
pub async fn listen(relay: Arc<Relay>, index: usize, shutdown: CancellationToken) {
    let shard = &relay.shards.all()[index];
    let mut backoff = Backoff::new();
    let mut first = true;
    loop {
        match listen_once(&relay, shard, &shutdown, &mut first, &mut backoff).await {
            Ok(()) => return, // shutdown
            Err(err) => {
                shard.health.listen_connected.store(false, Ordering::SeqCst);
                shard.db.link_lost(Link::Listen, &err);
            }
        }
        let wait = backoff.after_failure(Instant::now());
        tracing::info!(shard = shard.name, ?wait, "reconnecting LISTEN");
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        relay.metrics.listen_reconnects.with_label_values(&[&shard.name]).inc();
    }
}

async fn listen_once(
    relay: &Arc<Relay>,
    shard: &Shard,
    shutdown: &CancellationToken,
    first: &mut bool,
    backoff: &mut Backoff,
) -> Result<(), DbError> {
    let db = &shard.db;
    // Peer messages over PostgreSQL cross through the default shard only: every relay has it.
    let carries_peers =
        relay.config.peers.bus == crate::config::PeerBus::Postgres && std::ptr::eq(shard, relay.shards.default_shard());
    let (client, mut connection) = db.connect().await?;
    let (tx, mut notifications) = mpsc::unbounded_channel();
    // However this ends, the connection goes with it: a dead link must not keep a task.
    let _driver = AbortOnDropHandle::new(tokio::spawn(async move {
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
    }));
    // Peers are listened for only where they are sent: on another bus, a relay on the PostgreSQL
    // bus would pass for one.
    let mut channels = vec![EVENTS_CHANNEL, ACCESS_CHANNEL];
    if carries_peers {
        channels.push(PEERS_CHANNEL);
    }
    let listen: String = channels.iter().map(|channel| format!("LISTEN {channel};")).collect();
    db.answer(client.batch_execute(&listen)).await?;
    db.read_notify_key().await?;
    if *first {
        // A new relay starts at the head: clients ask for history with a resume cursor.
        let head = db.log_head().await?;
        shard.health.last_event_id.fetch_max(head, Ordering::SeqCst);
        relay.metrics.last_event_id.with_label_values(&[&shard.name]).set(head);
        *first = false;
    } else {
        catch_up(relay, shard).await?;
        // Rights may have been taken back while nobody was listening.
        let _ = relay.access.send(AccessChange::Everyone);
    }
    shard.health.listen_connected.store(true, Ordering::SeqCst);
    db.link_up(Link::Listen);
    backoff.connected(Instant::now());
    if carries_peers {
        // Peer messages are not durable: whatever the other relays said while this connection
        // was down is re-learned from a fresh state exchange.
        relay.hub.announce();
    }
    let last_event_id = shard.health.last_event_id.load(Ordering::SeqCst);
    tracing::info!(shard = shard.name, last_event_id, "listening for events");
    // Notifications prove nothing when none are due: the link is probed, and one that stops
    // answering is given up.
    let mut probe = tokio::time::interval_at(tokio::time::Instant::now() + db.probe_interval, db.probe_interval);
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut announced = 0;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = probe.tick() => db.probe(&client).await?,
            n = notifications.recv() => match n {
                None => return Err(DbError::Unavailable("LISTEN connection closed".into())),
                Some(n) => match db.sealing.open(n.channel(), n.payload(), crate::notify::now_ms()) {
                    Ok(payload) if n.channel() == EVENTS_CHANNEL => {
                        handle_events_notification(relay, shard, &payload, &mut announced).await?
                    }
                    Ok(payload) if n.channel() == ACCESS_CHANNEL => announce_access_change(relay, &payload),
                    Ok(payload) => relay.hub.apply_peer_message(&payload),
                    Err(refusal) => {
                        relay.metrics.refused_notifications.with_label_values(&[refusal.label()]).inc();
                        tracing::debug!(channel = n.channel(), %refusal, "notification refused");
                    }
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Backoff;
    use std::time::{Duration, Instant};

    #[test]
    fn backoff_doubles_to_its_cap_while_attempts_fail() {
        let mut backoff = Backoff::new();
        let now = Instant::now();
        let waits: Vec<u64> = (0..8).map(|_| backoff.after_failure(now).as_millis() as u64).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
    }

    #[test]
    fn backoff_starts_over_after_a_connection_that_stayed_up() {
        let mut backoff = Backoff::new();
        let start = Instant::now();
        for _ in 0..7 {
            backoff.after_failure(start);
        }
        // Up briefly: still flapping, the waits keep their length.
        backoff.connected(start);
        assert_eq!(backoff.after_failure(start + Duration::from_secs(1)), Duration::from_secs(5));
        // Up for a while: the next loss is a new incident.
        backoff.connected(start + Duration::from_secs(2));
        assert_eq!(backoff.after_failure(start + Duration::from_secs(13)), Duration::from_millis(100));
        assert_eq!(backoff.after_failure(start + Duration::from_secs(13)), Duration::from_millis(200));
    }
}
