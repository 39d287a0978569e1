//! The PostgreSQL bus: every peer message is a sealed NOTIFY on `campfire_relay` in the default
//! shard's database, which every relay hears on its LISTEN connection there (db.rs hands it to
//! the hub). Liveness is the relays' own: a heartbeat out, and a peer silent for too long is
//! presumed dead.

use super::PeerOut;
use crate::Relay;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::task::AbortOnDropHandle;

pub async fn run(relay: Arc<Relay>, mut outgoing: mpsc::Receiver<PeerOut>) {
    let _heartbeat = AbortOnDropHandle::new(tokio::spawn(heartbeat(relay.clone())));
    while let Some(out) = outgoing.recv().await {
        match out {
            PeerOut::Message { text, .. } => {
                if let Err(err) = relay.shards.default_shard().db.notify_peers(&text).await {
                    relay.metrics.drops.with_label_values(&["peer_notify_failed"]).inc();
                    tracing::warn!(%err, "telling peer relays failed");
                }
            }
            PeerOut::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// A heartbeat out, and peers that went silent forgotten, both only while this relay's LISTEN
/// connection to the default shard is up: before it first is, the notify key that seals a
/// heartbeat is not read yet, and without it this relay neither hears its peers nor reaches them
/// (its NOTIFYs would fail).
async fn heartbeat(relay: Arc<Relay>) {
    let mut tick = tokio::time::interval(relay.options.peer_heartbeat.max(Duration::from_millis(10)));
    loop {
        tick.tick().await;
        if relay.shards.default_shard().health.listen_connected.load(Ordering::SeqCst) {
            relay.hub.heartbeat();
            relay.hub.expire_peers(relay.options.peer_timeout);
        }
    }
}
