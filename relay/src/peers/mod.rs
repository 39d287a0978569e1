//! What the relays tell each other: client broadcasts, their clients' presence, and liveness.
//! Each message is one JSON object stamped with the sender's `origin` and named by its `kind`,
//! sealed with the database's notify key, whichever bus carries it (see [`Bus`]). Nothing here is
//! durable: a relay that may have missed messages asks for the others' state again (over
//! PostgreSQL everyone's: `hello`, answered by `state` messages and a `state_done`; over NATS one
//! topic's: `ask`, answered by `topic_state`).

mod nats;
mod postgres;

use crate::config::{PeerBus, PeerConfig};
use crate::db::MAX_NOTIFY_BYTES;
use crate::metrics::Metrics;
use crate::presence::{PresenceDiff, PresenceEntries};
use crate::{Options, Relay};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PeerMessage {
    /// A client broadcast; `sender` ("{connection}/{join topic}") is what typing indicators are
    /// tracked by, absent for a broadcast that came in over HTTP.
    Broadcast {
        topic: String,
        #[serde(default)]
        event: String,
        #[serde(default)]
        payload: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sender: Option<String>,
    },
    /// A change in the presence of the sender's own clients.
    Presence { topic: String, diff: PresenceDiff },
    /// One room of a state sync: all the sender's own presence there.
    State {
        #[serde(default)]
        sync: String,
        topic: String,
        metas: PresenceEntries,
    },
    /// The end of state sync `sync`: rooms it did not name hold none of the sender's presence.
    StateDone {
        #[serde(default)]
        sync: String,
    },
    /// The sender (re)started listening and may have missed messages: everyone sends its state.
    Hello,
    /// All the sender's presence in one topic (possibly none): an answer to `ask`, or sent after
    /// the sender reconnected to a bus that carries only the topics a relay subscribed to.
    TopicState { topic: String, metas: PresenceEntries },
    /// The sender began to serve `topic` (or came back) on such a bus: whoever has presence there
    /// answers with its `topic_state`.
    Ask { topic: String },
    /// The sender is still there (sent periodically).
    Alive,
    /// The sender is going away: its presence leaves at once.
    Bye,
}

impl PeerMessage {
    /// The topic the message is about; none for what concerns the whole relay.
    pub fn topic(&self) -> Option<&str> {
        match self {
            PeerMessage::Broadcast { topic, .. }
            | PeerMessage::Presence { topic, .. }
            | PeerMessage::State { topic, .. }
            | PeerMessage::TopicState { topic, .. }
            | PeerMessage::Ask { topic } => Some(topic),
            PeerMessage::StateDone { .. } | PeerMessage::Hello | PeerMessage::Alive | PeerMessage::Bye => None,
        }
    }
}

/// A message as it goes on the wire: `origin` next to the message's own fields.
#[derive(Serialize)]
struct Stamped<'a> {
    origin: &'a str,
    #[serde(flatten)]
    message: &'a PeerMessage,
}

/// A message read off the peers channel.
pub enum Received {
    /// Not JSON, or not saying who sent it.
    Unreadable,
    /// From `origin`; an error for a kind this relay does not know (a newer relay's, perhaps):
    /// its sender still counts as alive.
    From { origin: String, message: Result<PeerMessage, serde_json::Error> },
}

impl Received {
    pub fn decode(text: &str) -> Received {
        let Ok(mut value) = serde_json::from_str::<Value>(text) else { return Received::Unreadable };
        let Some(Value::String(origin)) = value.get_mut("origin").map(Value::take) else {
            return Received::Unreadable;
        };
        Received::From { origin, message: serde_json::from_value(value) }
    }
}

/// What the hub hands the task that sends to the other relays.
pub enum PeerOut {
    /// A stamped message, and the topic it is about (none: relay-wide).
    Message { topic: Option<String>, text: String },
    /// Answered once everything queued before it has been sent (used at shutdown).
    Flush(oneshot::Sender<()>),
}

/// This relay begins or stops serving a topic (its first subscriber came, its last one went).
#[derive(Debug, PartialEq)]
pub struct Interest {
    pub topic: String,
    pub serving: bool,
}

/// This relay's side of the bus: messages stamped with its id and queued for the peer task. The
/// queue is bounded, and a full queue drops the message (counted) rather than slowing a client
/// down. A bus that carries only the topics a relay subscribed to also hears where this relay's
/// interest goes, on a queue of its own that never drops: a lost interest would leave a topic
/// unheard for as long as the relay serves it.
pub struct PeerLink {
    pub relay_id: String,
    queue: mpsc::Sender<PeerOut>,
    interest: Option<mpsc::UnboundedSender<Interest>>,
}

impl PeerLink {
    /// For a bus on which every relay hears every message.
    pub fn to_everyone(relay_id: String, queue: mpsc::Sender<PeerOut>) -> PeerLink {
        PeerLink { relay_id, queue, interest: None }
    }

    /// For a bus on which a relay hears a topic only while it serves it.
    pub fn by_topic(
        relay_id: String,
        queue: mpsc::Sender<PeerOut>,
        interest: mpsc::UnboundedSender<Interest>,
    ) -> PeerLink {
        PeerLink { relay_id, queue, interest: Some(interest) }
    }

    /// Whether this relay hears what peers say about topics it does not serve.
    pub fn hears_every_topic(&self) -> bool {
        self.interest.is_none()
    }

    pub fn tell(&self, metrics: &Metrics, message: &PeerMessage) {
        let text = serde_json::to_string(&Stamped { origin: &self.relay_id, message }).expect("JSON values serialize");
        if text.len() > MAX_NOTIFY_BYTES {
            metrics.drops.with_label_values(&["too_large_for_peers"]).inc();
            return;
        }
        let topic = message.topic().map(str::to_owned);
        match self.queue.try_send(PeerOut::Message { topic, text }) {
            Ok(()) => metrics.peer_messages_out.inc(),
            Err(mpsc::error::TrySendError::Full(_)) => metrics.drops.with_label_values(&["peer_queue_full"]).inc(),
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Tells the bus (if it cares) that this relay begins or stops serving `topic`.
    pub fn serving(&self, topic: &str, serving: bool) {
        if let Some(interest) = &self.interest {
            let _ = interest.send(Interest { topic: topic.to_owned(), serving });
        }
    }

    /// Queues a marker behind everything already queued for the peers.
    pub fn flush(&self, marker: PeerOut) -> bool {
        self.queue.try_send(marker).is_ok()
    }
}

/// The bus between relays, as `--peers` chose it.
pub enum Bus {
    /// Sealed NOTIFYs through the database the relay follows anyway.
    Postgres,
    Nats(Box<nats::Nats>),
}

/// The ends of a [`PeerLink`]'s queues that the bus task reads.
pub struct Queues {
    outgoing: mpsc::Receiver<PeerOut>,
    interest: mpsc::UnboundedReceiver<Interest>,
}

impl Bus {
    /// Connects to the chosen bus. NATS is reached (and authenticated) here, at start-up, so that a
    /// wrong URL or credential stops the relay with a clear error.
    pub async fn connect(config: &PeerConfig, relay_id: &str, options: &Options) -> anyhow::Result<Bus> {
        Ok(match config.bus {
            PeerBus::Postgres => Bus::Postgres,
            PeerBus::Nats => Bus::Nats(Box::new(nats::Nats::connect(config, relay_id, options.peer_timeout).await?)),
        })
    }

    /// This relay's link to the bus, and the queues behind it (`capacity` messages at most).
    pub fn link(&self, relay_id: String, capacity: usize) -> (PeerLink, Queues) {
        let (queue, outgoing) = mpsc::channel(capacity);
        let (interest_tx, interest) = mpsc::unbounded_channel();
        let link = match self {
            Bus::Postgres => PeerLink::to_everyone(relay_id, queue),
            Bus::Nats(_) => PeerLink::by_topic(relay_id, queue, interest_tx),
        };
        (link, Queues { outgoing, interest })
    }

    /// Carries this relay's messages to its peers and theirs to its hub, until aborted.
    pub async fn run(self, relay: Arc<Relay>, queues: Queues) {
        match self {
            Bus::Postgres => postgres::run(relay, queues.outgoing).await,
            Bus::Nats(nats) => nats.run(relay, queues).await,
        }
    }
}

/// A typing indicator a peer's client started: (origin, topic, sender).
type TypingKey = (String, String, String);

/// What this relay knows about the other relays on the database.
#[derive(Default)]
pub struct PeerState {
    /// When each peer was last heard from; a peer silent for too long is presumed dead.
    last_seen: HashMap<String, Instant>,
    /// Typing indicators started by clients of other relays and not yet stopped, with their
    /// typing:start payload: ended here if their relay vanishes.
    typing: HashMap<TypingKey, Value>,
    /// The topics each peer has sent in its current presence state sync, by sync id.
    syncing: HashMap<String, (String, HashSet<String>)>,
}

impl PeerState {
    /// Notes that `origin` is alive and keeps track of what `message` starts or stops. True for
    /// a peer not heard from before.
    pub fn heard(&mut self, origin: &str, message: Option<&PeerMessage>) -> bool {
        let new_peer = self.last_seen.insert(origin.to_owned(), Instant::now()).is_none();
        match message {
            Some(PeerMessage::Broadcast { topic, event, payload, sender: Some(sender) }) => {
                let key = (origin.to_owned(), topic.clone(), sender.clone());
                match event.as_str() {
                    "typing:start" => {
                        self.typing.insert(key, payload.clone());
                    }
                    "typing:stop" => {
                        self.typing.remove(&key);
                    }
                    _ => {}
                }
            }
            Some(PeerMessage::State { sync, topic, .. }) => {
                let entry = self.syncing.entry(origin.to_owned()).or_default();
                if entry.0 != *sync {
                    *entry = (sync.clone(), HashSet::new());
                }
                entry.1.insert(topic.clone());
            }
            _ => {}
        }
        new_peer
    }

    /// The topics `origin` named in state sync `sync` (none if that is not the sync it sent).
    pub fn finish_sync(&mut self, origin: &str, sync: &str) -> HashSet<String> {
        match self.syncing.remove(origin) {
            Some((id, topics)) if id == sync => topics,
            _ => HashSet::new(),
        }
    }

    /// Whether `origin` was heard from after `since`.
    pub fn heard_since(&self, origin: &str, since: Instant) -> bool {
        self.last_seen.get(origin).is_some_and(|seen| *seen > since)
    }

    /// Every peer heard from and not forgotten since.
    pub fn known(&self) -> Vec<String> {
        self.last_seen.keys().cloned().collect()
    }

    /// Peers not heard from within `timeout`.
    pub fn silent(&self, timeout: Duration) -> Vec<String> {
        self.last_seen.iter().filter(|(_, seen)| seen.elapsed() >= timeout).map(|(o, _)| o.clone()).collect()
    }

    /// Judges every known peer from now on (silence while this relay could not hear proves nothing).
    pub fn restart_clocks(&mut self) {
        let now = Instant::now();
        for seen in self.last_seen.values_mut() {
            *seen = now;
        }
    }

    /// Forgets `origin`; the typing indicators its clients left on, as (topic, typing:start payload).
    pub fn forget(&mut self, origin: &str) -> Vec<(String, Value)> {
        self.last_seen.remove(origin);
        self.syncing.remove(origin);
        let keys: Vec<TypingKey> = self.typing.keys().filter(|(o, _, _)| o == origin).cloned().collect();
        keys.into_iter().filter_map(|key| self.typing.remove(&key).map(|payload| (key.1, payload))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn link(capacity: usize) -> (PeerLink, mpsc::Receiver<PeerOut>) {
        let (tx, rx) = mpsc::channel(capacity);
        (PeerLink::to_everyone("relay-a".into(), tx), rx)
    }

    fn sent(rx: &mut mpsc::Receiver<PeerOut>) -> Value {
        match rx.try_recv() {
            Ok(PeerOut::Message { text, .. }) => serde_json::from_str(&text).expect("JSON"),
            _ => panic!("no message queued"),
        }
    }

    fn message(value: Value) -> PeerMessage {
        match Received::decode(&value.to_string()) {
            Received::From { message, .. } => message.expect("a known message"),
            Received::Unreadable => panic!("unreadable"),
        }
    }

    /// Every kind, as the relays before the typed messages wrote it: both spellings must be read
    /// and written alike, or relays of two versions stop understanding each other.
    fn wire_examples() -> Vec<Value> {
        let diff = json!({ "joins": { "ann": { "metas": [{ "phx_ref": "r1", "name": "Ann" }] } }, "leaves": {} });
        vec![
            json!({ "kind": "broadcast", "topic": "org:o:conv:c:typing", "event": "typing:start",
                    "payload": { "isTyping": true }, "sender": "7/realtime:typing", "origin": "relay-a" }),
            json!({ "kind": "broadcast", "topic": "org:o", "event": "notice", "payload": { "n": 1 }, "origin": "relay-a" }),
            json!({ "kind": "presence", "topic": "org:o:conv:c:presence", "diff": diff, "origin": "relay-a" }),
            json!({ "kind": "state", "sync": "s1", "topic": "org:o:conv:c:presence", "metas": diff["joins"],
                    "origin": "relay-a" }),
            json!({ "kind": "state_done", "sync": "s1", "origin": "relay-a" }),
            json!({ "kind": "hello", "origin": "relay-a" }),
            json!({ "kind": "alive", "origin": "relay-a" }),
            json!({ "kind": "bye", "origin": "relay-a" }),
            json!({ "kind": "topic_state", "topic": "org:o:conv:c:presence", "metas": diff["joins"],
                    "origin": "relay-a" }),
            json!({ "kind": "ask", "topic": "org:o:conv:c:presence", "origin": "relay-a" }),
        ]
    }

    #[test]
    fn every_kind_reads_and_writes_as_before() {
        let metrics = Metrics::new();
        let (link, mut rx) = link(16);
        for example in wire_examples() {
            link.tell(&metrics, &message(example.clone()));
            assert_eq!(sent(&mut rx), example);
        }
        assert_eq!(metrics.peer_messages_out.get(), 10);
    }

    #[test]
    fn a_message_says_who_sent_it() {
        let Received::From { origin, message } = Received::decode(r#"{"kind":"alive","origin":"relay-b"}"#) else {
            panic!("readable");
        };
        assert_eq!(origin, "relay-b");
        assert_eq!(message.expect("known"), PeerMessage::Alive);
    }

    #[test]
    fn garbage_and_anonymous_messages_are_unreadable() {
        for text in ["not json", r#"{"kind":"alive"}"#, r#"{"kind":"alive","origin":7}"#, "[]"] {
            assert!(matches!(Received::decode(text), Received::Unreadable), "{text}");
        }
    }

    #[test]
    fn an_unknown_kind_still_names_its_sender() {
        let Received::From { origin, message } = Received::decode(r#"{"kind":"later","origin":"relay-b"}"#) else {
            panic!("readable");
        };
        assert_eq!(origin, "relay-b");
        assert!(message.is_err());
    }

    #[test]
    fn a_message_too_large_for_notify_is_dropped_and_counted() {
        let metrics = Metrics::new();
        let (link, mut rx) = link(4);
        let payload = json!({ "text": "x".repeat(MAX_NOTIFY_BYTES) });
        link.tell(
            &metrics,
            &PeerMessage::Broadcast { topic: "org:o".into(), event: "big".into(), payload, sender: None },
        );
        assert!(rx.try_recv().is_err());
        assert_eq!(metrics.drops.with_label_values(&["too_large_for_peers"]).get(), 1);
    }

    #[test]
    fn a_full_queue_drops_the_message_and_counts_it() {
        let metrics = Metrics::new();
        let (link, _rx) = link(1);
        link.tell(&metrics, &PeerMessage::Alive);
        link.tell(&metrics, &PeerMessage::Alive);
        assert_eq!(metrics.peer_messages_out.get(), 1);
        assert_eq!(metrics.drops.with_label_values(&["peer_queue_full"]).get(), 1);
    }

    #[test]
    fn typing_a_peer_leaves_on_is_handed_back_when_it_is_forgotten() {
        let mut state = PeerState::default();
        let typing = |event: &str, sender: &str| PeerMessage::Broadcast {
            topic: "t".into(),
            event: event.into(),
            payload: json!({ "who": sender }),
            sender: Some(sender.into()),
        };
        assert!(state.heard("b", Some(&typing("typing:start", "1/x"))), "a new peer");
        assert!(!state.heard("b", Some(&typing("typing:start", "2/x"))));
        state.heard("b", Some(&typing("typing:stop", "2/x")));
        state.heard("c", Some(&typing("typing:start", "1/x")));
        assert_eq!(state.forget("b"), [("t".to_owned(), json!({ "who": "1/x" }))]);
        assert!(state.forget("b").is_empty());
        assert!(state.heard("b", None), "forgotten: new again");
    }

    #[test]
    fn a_sync_counts_only_the_topics_of_its_own_id() {
        let mut state = PeerState::default();
        let room = |sync: &str, topic: &str| PeerMessage::State {
            sync: sync.into(),
            topic: topic.into(),
            metas: PresenceEntries::new(),
        };
        state.heard("b", Some(&room("s1", "one")));
        state.heard("b", Some(&room("s2", "two")));
        state.heard("b", Some(&room("s2", "three")));
        assert_eq!(state.finish_sync("b", "s1"), HashSet::new(), "an older sync's end");
        state.heard("b", Some(&room("s3", "four")));
        assert_eq!(state.finish_sync("b", "s3"), HashSet::from(["four".to_owned()]));
    }

    #[test]
    fn heard_since_tells_a_peer_heard_after_an_instant() {
        let mut state = PeerState::default();
        state.heard("b", None);
        let probed = Instant::now();
        assert!(!state.heard_since("b", probed));
        std::thread::sleep(Duration::from_millis(2));
        state.heard("b", None);
        assert!(state.heard_since("b", probed));
        assert!(!state.heard_since("c", probed), "never heard");
    }

    #[test]
    fn a_silent_peer_is_found_and_a_restart_forgives_it() {
        let mut state = PeerState::default();
        state.heard("b", None);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(state.silent(Duration::from_millis(5)), ["b"]);
        state.restart_clocks();
        assert!(state.silent(Duration::from_millis(5)).is_empty());
    }
}
