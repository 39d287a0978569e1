//! campfire-relay: a Supabase-Realtime-compatible WebSocket server fed by pg_campfire's event
//! log. It LISTENs on one connection per database (shard), routes each committed event to the
//! subscribers the extension authorized, carries client broadcasts and presence (between relays
//! through PostgreSQL or NATS), and replays from the log after any gap. Decisions about data and
//! permissions are the extension's.

mod access;
mod api;
mod api_pool;
pub mod auth;
mod client_addr;
mod client_broadcast;
pub mod config;
mod db;
mod errors;
mod http;
mod hub;
pub mod jwks;
mod limits;
mod metrics;
mod notify;
mod outbox;
mod peers;
pub mod prepared;
mod presence;
pub mod protocol;
mod rooms;
mod session;
mod shards;

pub use access::AccessChange;
pub use config::Config;
pub use shards::ShardSpec;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// One shard's LISTEN state and cursor, as /healthz reports them.
#[derive(Default)]
pub struct Health {
    pub listen_connected: AtomicBool,
    /// The newest event id routed: the relay's own cursor in the shard's log.
    pub last_event_id: AtomicI64,
}

/// Tunables that are not flags (tests shorten them).
#[derive(Debug, Clone)]
pub struct Options {
    /// How often this relay tells the others it is alive (over NATS: probes each peer it knows).
    pub peer_heartbeat: Duration,
    /// A peer silent this long (over NATS: not answering a probe this long) is presumed dead: its
    /// presence leaves, its typing stops.
    pub peer_timeout: Duration,
    /// A resuming client that reads nothing of its replay for this long is disconnected.
    pub replay_stall_timeout: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            peer_heartbeat: Duration::from_secs(5),
            peer_timeout: Duration::from_secs(20),
            replay_stall_timeout: Duration::from_secs(30),
        }
    }
}

/// Messages waiting to be sent to the other relays; beyond this they are dropped (counted).
const PEER_QUEUE: usize = 8192;

pub struct Relay {
    config: Config,
    options: Options,
    verifier: auth::Verifier,
    shards: shards::Shards,
    hub: hub::Hub,
    metrics: Arc<metrics::Metrics>,
    next_connection: AtomicU64,
    shutdown: CancellationToken,
    sessions: TaskTracker,
    limits: limits::Limits,
    broadcast_rules: client_broadcast::Rules,
    access: Arc<access::AccessIndex>,
}

impl Relay {
    fn next_connection_id(&self) -> outbox::ConnId {
        self.next_connection.fetch_add(1, Ordering::Relaxed)
    }
}

/// Serves until `shutdown` completes, then closes every connection (1001) and waits for them,
/// at most five seconds.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    run_with(config, Options::default(), listener, shutdown).await
}

/// [`run`] with explicit [`Options`].
pub async fn run_with(
    config: Config,
    options: Options,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let verifier = auth::Verifier::new(&config.jwt_secret, &config.tokens).await?;
    let metrics = Arc::new(metrics::Metrics::new());
    let relay_id = uuid::Uuid::new_v4().to_string();
    let bus = peers::Bus::connect(&config.peers, &relay_id, &options).await?;
    let (peer_link, peer_queues) = bus.link(relay_id, PEER_QUEUE);
    let relay = Arc::new(Relay {
        options,
        verifier,
        shards: shards::Shards::new(&config, &metrics)?,
        hub: hub::Hub::new(metrics.clone(), peer_link),
        metrics,
        next_connection: AtomicU64::new(1),
        shutdown: CancellationToken::new(),
        sessions: TaskTracker::new(),
        limits: limits::Limits::new(&config.limits),
        broadcast_rules: client_broadcast::Rules::new(&config.reserved_events, config.max_payload_bytes),
        access: Arc::default(),
        config,
    });
    // Each shard is followed on its own: one down does not hold up the others.
    let mut followers = tokio::task::JoinSet::new();
    for index in 0..relay.shards.all().len() {
        followers.spawn(db::listen(relay.clone(), index, relay.shutdown.clone()));
        let watch_relay = relay.clone();
        followers.spawn(async move { watch_relay.shards.all()[index].db.watch_queries(&watch_relay.shutdown).await });
    }
    let peers = tokio::spawn(bus.run(relay.clone(), peer_queues));
    tracing::info!(address = %listener.local_addr()?, "relay listening");
    let stop = relay.shutdown.clone();
    // TCP_NODELAY: small realtime frames must not wait for delayed ACKs (Nagle).
    // TCP_USER_TIMEOUT: the kernel frees a socket whose data has waited unacknowledged for twice
    // the write timeout, also once the relay has let go of it (queued data would keep it alive).
    // Twice: the relay's own timeout, which names the reason, comes first.
    let unacknowledged_limit = relay.config.write_timeout() * 2;
    let listener = axum::serve::ListenerExt::tap_io(listener, move |tcp| {
        let _ = tcp.set_nodelay(true);
        let _ = socket2::SockRef::from(&*tcp).set_tcp_user_timeout(Some(unacknowledged_limit));
    });
    axum::serve(listener, http::router(relay.clone()).into_make_service_with_connect_info::<std::net::SocketAddr>())
        .with_graceful_shutdown(async move {
            shutdown.await;
            stop.cancel();
        })
        .await?;
    relay.sessions.close();
    if tokio::time::timeout(Duration::from_secs(5), relay.sessions.wait()).await.is_err() {
        tracing::warn!("connections still open after 5 s; stopping anyway");
    }
    followers.join_all().await;
    // The connections' presence leaves have been queued for the peers; say goodbye after them
    // and give it all a moment to go out.
    relay.hub.goodbye();
    let (flushed, done) = tokio::sync::oneshot::channel();
    if relay.hub.flush_peers(peers::PeerOut::Flush(flushed)) {
        let _ = tokio::time::timeout(Duration::from_secs(2), done).await;
    }
    peers.abort();
    Ok(())
}
