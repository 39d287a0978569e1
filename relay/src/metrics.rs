//! Prometheus metrics, served at /metrics.

use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

pub struct Metrics {
    registry: Registry,
    pub connections: IntGauge,
    pub channels: IntGauge,
    pub events_in: IntCounterVec,
    pub client_broadcasts: IntCounter,
    pub deliveries: IntCounter,
    pub drops: IntCounterVec,
    pub disconnects: IntCounterVec,
    pub malformed_frames: IntCounter,
    pub listen_reconnects: IntCounterVec,
    pub queue_depth: IntGauge,
    pub queue_depth_max: IntGauge,
    pub last_event_id: IntGaugeVec,
    pub db_link_up: IntGaugeVec,
    pub db_api_connections: IntGaugeVec,
    pub db_link_failures: IntCounterVec,
    pub frames_written: IntCounter,
    pub resumes: IntCounter,
    pub replayed_events: IntCounter,
    pub peer_messages_in: IntCounter,
    pub peer_messages_out: IntCounter,
    pub peers_expired: IntCounter,
    pub nats_connected: IntGauge,
    pub refused_notifications: IntCounterVec,
    pub limited: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        Metrics {
            connections: gauge("campfire_connections", "Open WebSocket connections"),
            channels: gauge("campfire_channels", "Joined channels across all connections"),
            events_in: counter_vec("campfire_events_in_total", "Events routed from a shard's log", &["shard"]),
            client_broadcasts: counter("campfire_client_broadcasts_total", "Broadcasts received from clients"),
            deliveries: counter(
                "campfire_deliveries_total",
                "Frames queued to connections (events, broadcasts, presence, replies)",
            ),
            drops: counter_vec("campfire_drops_total", "Messages not delivered, by reason", &["reason"]),
            disconnects: counter_vec("campfire_disconnects_total", "Closed connections, by reason", &["reason"]),
            malformed_frames: counter("campfire_malformed_frames_total", "Client frames that could not be decoded"),
            listen_reconnects: counter_vec(
                "campfire_listen_reconnects_total",
                "Times a shard's LISTEN connection was re-established",
                &["shard"],
            ),
            queue_depth: gauge("campfire_send_queue_depth", "Frames waiting in connection send queues"),
            last_event_id: gauge_vec(
                "campfire_last_event_id",
                "Newest event id of a shard's log the relay has routed",
                &["shard"],
            ),
            queue_depth_max: gauge(
                "campfire_send_queue_max_depth",
                "Frames waiting in the fullest connection send queue",
            ),
            db_link_up: gauge_vec(
                "campfire_db_link_up",
                "1 while a shard's database connection (listen, query) answers",
                &["connection", "shard"],
            ),
            db_api_connections: gauge_vec(
                "campfire_db_api_connections",
                "A shard's database connections for HTTP API calls, by state (busy: running a call; idle), \
                 and the calls waiting for one (waiting)",
                &["shard", "state"],
            ),
            db_link_failures: counter_vec(
                "campfire_db_link_failures_total",
                "Database connections given up or not established, by connection (listen, query), reason \
                 (timeout: no answer in time; error) and shard",
                &["connection", "reason", "shard"],
            ),
            frames_written: counter("campfire_frames_written_total", "Frames written to WebSocket connections"),
            resumes: counter("campfire_resumes_total", "Joins that resumed from a cursor"),
            replayed_events: counter(
                "campfire_replayed_events_total",
                "Events replayed from the log to resuming clients",
            ),
            peer_messages_in: counter("campfire_peer_messages_in_total", "Messages received from other relays"),
            peer_messages_out: counter("campfire_peer_messages_out_total", "Messages queued for other relays"),
            peers_expired: counter(
                "campfire_peers_expired_total",
                "Other relays presumed gone (silent or said goodbye)",
            ),
            nats_connected: gauge(
                "campfire_nats_connected",
                "1 while the relay is connected to NATS (with --peers nats), 0 while it reconnects",
            ),
            refused_notifications: counter_vec(
                "campfire_refused_notifications_total",
                "Notifications not believed (not sealed with the notify key, replayed, stale), by reason",
                &["reason"],
            ),
            limited: counter_vec(
                "campfire_limited_total",
                "Connections refused and client frames refused or closed over an abuse limit, by limit \
                 (connections_per_address, connections_per_credential, joins, heartbeats, broadcasts)",
                &["limit"],
            ),
            registry,
        }
    }

    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer).expect("text encoding");
        String::from_utf8(buffer).expect("prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
