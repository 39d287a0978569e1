//! The NATS bus. A topic's messages go on a subject of its own, and a relay subscribes to it only
//! while it serves the topic (has subscribers there), so it hears only its own topics' traffic.
//! What concerns a whole relay (`bye`) goes on one subject that every relay follows. Messages
//! stay sealed with the database's notify key, as on PostgreSQL: an account that may publish on
//! these subjects can neither read nor forge one, nor replay one it captured.
//!
//! Liveness comes from NATS rather than from a silence timer: each relay answers requests on a
//! subject of its own, and probes the peers it knows every heartbeat interval. The server drops a
//! connection's subscriptions when the connection ends (at once for a killed process, after the
//! server's ping timeout for a lost host), so a probe of a dead relay fails at once with "no
//! responders", and one that goes unanswered for the peer timeout counts as gone too. Probes are
//! judged only while this relay is connected itself: while it is not, nothing proves anything.

use super::{Interest, PeerOut, Queues};
use crate::Relay;
use crate::config::PeerConfig;
use anyhow::Context;
use async_nats::client::RequestErrorKind;
use async_nats::connection::State;
use async_nats::{Client, ConnectOptions, Event, Message, ServerAddr};
use campfire_core::channels::PEERS as PEERS_CHANNEL;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::task::AbortOnDropHandle;

/// Messages received and waiting for the hub; beyond this NATS holds them (and, past its own
/// limit, drops them as a slow consumer).
const INCOMING_QUEUE: usize = 8192;

/// A connected, authenticated NATS client, and what it reports about its connection.
pub struct Nats {
    client: Client,
    subjects: Subjects,
    relay_id: String,
    events: mpsc::UnboundedReceiver<Event>,
}

/// The subjects of one installation, under its prefix.
#[derive(Clone)]
struct Subjects {
    prefix: String,
}

impl Subjects {
    /// A topic's subject. Channel names may hold characters subjects may not (`.`, `*`, `>`,
    /// spaces), so the subject names a hash of the canonical topic: 128 bits, no collisions in
    /// practice, and a collision would only bring a relay some traffic it drops.
    fn topic(&self, topic: &str) -> String {
        let hash = Sha256::digest(topic.as_bytes());
        let hex: String = hash[..16].iter().map(|byte| format!("{byte:02x}")).collect();
        format!("{}.t.{hex}", self.prefix)
    }

    fn relay_wide(&self) -> String {
        format!("{}.relays", self.prefix)
    }

    /// Where `relay_id` answers liveness probes.
    fn probe(&self, relay_id: &str) -> String {
        format!("{}.relay.{relay_id}", self.prefix)
    }
}

/// `nats://user:secret@host` without its `user:secret@`, for error messages.
fn without_credentials(url: &str) -> String {
    match (url.split_once("://"), url.rsplit_once('@')) {
        (Some((scheme, _)), Some((_, host))) => format!("{scheme}://{host}"),
        _ => url.to_owned(),
    }
}

async fn connect_options(config: &PeerConfig) -> anyhow::Result<ConnectOptions> {
    let mut options = if let (Some(user), Some(password)) = (&config.nats_user, &config.nats_password) {
        ConnectOptions::with_user_and_password(user.clone(), password.clone())
    } else if let Some(creds) = &config.nats_creds {
        ConnectOptions::with_credentials_file(creds)
            .await
            .with_context(|| format!("reading the NATS credentials file {}", creds.display()))?
    } else if let Some(file) = &config.nats_nkey_file {
        let seed = tokio::fs::read_to_string(file)
            .await
            .with_context(|| format!("reading the NATS nkey seed file {}", file.display()))?;
        ConnectOptions::with_nkey(seed.trim().to_owned())
    } else {
        ConnectOptions::new()
    };
    if let Some(ca) = &config.nats_tls_ca {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&config.nats_tls_cert, &config.nats_tls_key) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    if config.nats_tls_required {
        options = options.require_tls(true);
    }
    Ok(options)
}

impl Nats {
    /// Connects and authenticates once (a wrong URL, credential or certificate is an error here);
    /// later losses of the connection are reconnected by the client, without end.
    pub async fn connect(config: &PeerConfig, relay_id: &str, probe_timeout: Duration) -> anyhow::Result<Nats> {
        let servers = config
            .nats_url
            .iter()
            .map(|url| {
                url.parse::<ServerAddr>().map_err(|_| anyhow::anyhow!("not a NATS URL: {}", without_credentials(url)))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let (events_tx, events) = mpsc::unbounded_channel();
        let client = connect_options(config)
            .await?
            .name(format!("campfire-relay {relay_id}"))
            // A relay ignores its own messages anyway: the server need not send them back.
            .no_echo()
            .request_timeout(Some(probe_timeout))
            .event_callback(move |event| {
                let events_tx = events_tx.clone();
                async move {
                    let _ = events_tx.send(event);
                }
            })
            .connect(servers)
            .await
            .map_err(|err| anyhow::anyhow!("connecting to NATS failed: {err}"))?;
        let info = client.server_info();
        tracing::info!(server = %format!("{}:{}", info.host, info.port), "connected to NATS");
        let subjects = Subjects { prefix: config.nats_subject_prefix.clone() };
        Ok(Nats { client, subjects, relay_id: relay_id.to_owned(), events })
    }

    pub async fn run(mut self, relay: Arc<Relay>, queues: Queues) {
        let Queues { mut outgoing, mut interest } = queues;
        let (incoming_tx, mut incoming) = mpsc::channel(INCOMING_QUEUE);
        let mut served: HashMap<String, AbortOnDropHandle<()>> = HashMap::new();
        let _relay_wide = self.follow(self.subjects.relay_wide(), &incoming_tx).await;
        relay.metrics.nats_connected.set(1);
        let mut probes = match self.client.subscribe(self.subjects.probe(&self.relay_id)).await {
            Ok(probes) => probes,
            Err(err) => return tracing::error!(%err, "subscribing to NATS failed; peers are unreachable"),
        };
        let prober = probe_peers(relay.clone(), self.client.clone(), self.subjects.clone());
        let _prober = AbortOnDropHandle::new(tokio::spawn(prober));
        loop {
            tokio::select! {
                out = outgoing.recv() => match out {
                    Some(out) => self.send(&relay, out).await,
                    None => return,
                },
                Some(Interest { topic, serving }) = interest.recv() => {
                    if !serving {
                        // Dropping the forwarding task drops its subscription: the client unsubscribes.
                        served.remove(&topic);
                    } else if !served.contains_key(&topic)
                        && let Some(task) = self.follow(self.subjects.topic(&topic), &incoming_tx).await
                    {
                        served.insert(topic.clone(), task);
                        // Subscribed first, so the answers cannot pass us by.
                        relay.hub.ask(&topic);
                    }
                }
                Some(message) = incoming.recv() => receive(&relay, &message),
                Some(probe) = probes.next() => {
                    if let Some(reply) = probe.reply {
                        let _ = self.client.publish(reply, "".into()).await;
                    }
                }
                Some(event) = self.events.recv() => match event {
                    Event::Connected => {
                        tracing::info!("NATS connection up; re-syncing presence with the peers");
                        relay.metrics.nats_connected.set(1);
                        relay.hub.resync();
                    }
                    Event::Disconnected => {
                        tracing::warn!("NATS connection lost; reconnecting");
                        relay.metrics.nats_connected.set(0);
                    }
                    other => tracing::warn!(event = %other, "NATS"),
                },
            }
        }
    }

    async fn send(&self, relay: &Relay, out: PeerOut) {
        match out {
            PeerOut::Message { topic, text } => {
                let subject = match &topic {
                    Some(topic) => self.subjects.topic(topic),
                    None => self.subjects.relay_wide(),
                };
                let sent = match relay.shards.default_shard().db.sealing.seal_for_peers(&text) {
                    Ok(sealed) => self.client.publish(subject, sealed.into()).await.map_err(|e| e.to_string()),
                    Err(refusal) => Err(refusal.to_string()),
                };
                if let Err(err) = sent {
                    relay.metrics.drops.with_label_values(&["peer_publish_failed"]).inc();
                    tracing::warn!(%err, "telling peer relays failed");
                }
            }
            PeerOut::Flush(done) => {
                if let Err(err) = self.client.flush().await {
                    tracing::warn!(%err, "flushing NATS failed");
                }
                let _ = done.send(());
            }
        }
    }

    /// Subscribes to `subject`, and forwards what arrives there to `incoming` until the returned
    /// handle is dropped.
    async fn follow(&self, subject: String, incoming: &mpsc::Sender<Message>) -> Option<AbortOnDropHandle<()>> {
        let mut subscriber = match self.client.subscribe(subject).await {
            Ok(subscriber) => subscriber,
            Err(err) => {
                tracing::warn!(%err, "subscribing to NATS failed");
                return None;
            }
        };
        let incoming = incoming.clone();
        Some(AbortOnDropHandle::new(tokio::spawn(async move {
            while let Some(message) = subscriber.next().await {
                if incoming.send(message).await.is_err() {
                    return;
                }
            }
        })))
    }
}

/// A message from a peer, believed only if its seal opens (fresh, and not seen before).
fn receive(relay: &Relay, message: &Message) {
    let opened = std::str::from_utf8(&message.payload)
        .map_err(|_| crate::notify::Refusal::Seal(campfire_core::sealed::SealError::Malformed))
        .and_then(|text| relay.shards.default_shard().db.sealing.open(PEERS_CHANNEL, text, crate::notify::now_ms()));
    match opened {
        Ok(text) => relay.hub.apply_peer_message(&text),
        Err(refusal) => {
            relay.metrics.refused_notifications.with_label_values(&[refusal.label()]).inc();
            tracing::debug!(subject = %message.subject, %refusal, "peer message refused");
        }
    }
}

/// Every heartbeat interval, probes each known peer at once; one that has no subscription on its
/// probe subject (its connection is gone) or does not answer in time is gone.
async fn probe_peers(relay: Arc<Relay>, client: Client, subjects: Subjects) {
    let mut tick = tokio::time::interval(relay.options.peer_heartbeat.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if client.connection_state() != State::Connected {
            continue;
        }
        let probed = std::time::Instant::now();
        let probes = relay.hub.known_peers().into_iter().map(|peer| {
            let (client, subject) = (&client, subjects.probe(&peer));
            async move { (peer, client.request(subject, "".into()).await) }
        });
        for (peer, answer) in futures_util::future::join_all(probes).await {
            let gone = match answer {
                Ok(_) => false,
                Err(err) => matches!(err.kind(), RequestErrorKind::NoResponders | RequestErrorKind::TimedOut),
            };
            if gone && client.connection_state() == State::Connected {
                relay.hub.peer_gone(&peer, probed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topic_subject_is_a_fixed_hash_whatever_the_channel_holds() {
        let subjects = Subjects { prefix: "campfire".into() };
        let subject = subjects.topic("org:o:conv:c.with spaces>*");
        assert_eq!(subject.len(), "campfire.t.".len() + 32);
        assert!(subject.starts_with("campfire.t."));
        assert!(subject["campfire.t.".len()..].chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(subject, subjects.topic("org:o:conv:c.with spaces>*"));
        assert_ne!(subject, subjects.topic("org:o:conv:c"));
    }

    #[test]
    fn urls_in_errors_lose_their_credentials() {
        assert_eq!(without_credentials("nats://relay:s3cret@nats.internal:4222"), "nats://nats.internal:4222");
        assert_eq!(without_credentials("nats://nats.internal:4222"), "nats://nats.internal:4222");
    }
}
