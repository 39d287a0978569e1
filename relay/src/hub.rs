//! Rooms: who is subscribed to each canonical channel, and the presence tracked there. Frames are
//! encoded once per (serializer, join topic) and shared among subscribers; each connection has a
//! bounded queue, and a connection whose queue is full is disconnected, never waited for.

use crate::db::{DbEvent, MAX_NOTIFY_BYTES};
use crate::metrics::Metrics;
use crate::protocol::{self, Frame, Vsn};
use axum::extract::ws::{Message, Utf8Bytes};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub type ConnId = u64;

/// The sending half of one WebSocket connection.
pub struct Outbox {
    pub id: ConnId,
    pub vsn: Vsn,
    tx: mpsc::Sender<Message>,
    /// Cancelled when the connection must end; the reason goes in the close frame.
    pub kill: CancellationToken,
    kill_reason: Mutex<Option<&'static str>>,
}

impl Outbox {
    pub fn new(id: ConnId, vsn: Vsn, tx: mpsc::Sender<Message>) -> Outbox {
        Outbox { id, vsn, tx, kill: CancellationToken::new(), kill_reason: Mutex::new(None) }
    }

    /// Queues a frame; a full queue means the client cannot keep up, and it is disconnected.
    pub fn send(&self, metrics: &Metrics, text: Utf8Bytes) -> bool {
        match self.tx.try_send(Message::Text(text)) {
            Ok(()) => {
                metrics.deliveries.inc();
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics.drops.with_label_values(&["slow_consumer"]).inc();
                self.close("slow consumer: send queue full");
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    pub fn send_frame(&self, metrics: &Metrics, frame: &Frame) -> bool {
        self.send(metrics, protocol::encode(self.vsn, frame).into())
    }

    pub fn close(&self, reason: &'static str) {
        self.kill_reason.lock().expect("kill reason lock").get_or_insert(reason);
        self.kill.cancel();
    }

    pub fn close_reason(&self) -> Option<&'static str> {
        *self.kill_reason.lock().expect("kill reason lock")
    }

    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

/// One connection's membership of a room.
struct Subscription {
    outbox: Arc<Outbox>,
    join_topic: String,
    self_broadcast: bool,
    /// Newest database event delivered; older or equal ids are never sent again.
    cursor: i64,
    /// While a resume replays the log, live events wait here.
    held: Option<Vec<DbEvent>>,
}

/// Where a presence meta comes from: a local connection, or another relay.
#[derive(Clone, PartialEq, Eq, Debug)]
enum Owner {
    Local(ConnId, String),
    Peer(String),
}

struct Meta {
    owner: Owner,
    key: String,
    meta: Value,
}

#[derive(Default)]
struct Room {
    subscriptions: HashMap<(ConnId, String), Subscription>,
    presence: Vec<Meta>,
}

/// A subscription request from a session.
pub struct Join {
    pub outbox: Arc<Outbox>,
    pub join_topic: String,
    pub self_broadcast: bool,
    /// The cursor a resuming client has seen (0 for a fresh join).
    pub cursor: i64,
}

pub struct Hub {
    rooms: Mutex<HashMap<String, Room>>,
    metrics: Arc<Metrics>,
    relay_id: String,
    /// Messages for the other relays (sent by the relay's database task).
    peers: mpsc::UnboundedSender<String>,
}

fn presence_entries(metas: &[&Meta]) -> Value {
    let mut by_key: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    for m in metas {
        by_key.entry(&m.key).or_default().push(m.meta.clone());
    }
    Value::Object(by_key.into_iter().map(|(k, metas)| (k.to_owned(), json!({ "metas": metas }))).collect())
}

/// Encodes a frame once per distinct (serializer, join topic) among the receivers.
struct EncodeCache<'a> {
    event: &'a str,
    payload: &'a Value,
    encoded: HashMap<(Vsn, String), Utf8Bytes>,
}

impl<'a> EncodeCache<'a> {
    fn new(event: &'a str, payload: &'a Value) -> Self {
        EncodeCache { event, payload, encoded: HashMap::new() }
    }

    fn get(&mut self, vsn: Vsn, join_topic: &str) -> Utf8Bytes {
        self.encoded
            .entry((vsn, join_topic.to_owned()))
            .or_insert_with(|| protocol::encode(vsn, &protocol::push(join_topic, self.event, self.payload.clone())).into())
            .clone()
    }
}

fn broadcast_payload(event: &str, payload: Value) -> Value {
    json!({ "type": "broadcast", "event": event, "payload": payload })
}

/// A database event as clients receive it: its payload with the cursor added.
fn db_payload(event: &DbEvent) -> Value {
    let mut payload = event.payload.clone();
    if let Value::Object(map) = &mut payload {
        map.insert("cursor".to_owned(), json!(event.id));
    }
    broadcast_payload(&event.event, payload)
}

impl Hub {
    pub fn new(metrics: Arc<Metrics>, relay_id: String, peers: mpsc::UnboundedSender<String>) -> Hub {
        Hub { rooms: Mutex::new(HashMap::new()), metrics, relay_id, peers }
    }

    fn rooms(&self) -> std::sync::MutexGuard<'_, HashMap<String, Room>> {
        self.rooms.lock().expect("hub lock")
    }

    /// Adds a subscription and returns the room's presence state for the joiner.
    pub fn join(&self, topic: &str, join: Join) -> Value {
        let mut rooms = self.rooms();
        let room = rooms.entry(topic.to_owned()).or_default();
        room.subscriptions.insert(
            (join.outbox.id, join.join_topic.clone()),
            Subscription {
                outbox: join.outbox,
                join_topic: join.join_topic,
                self_broadcast: join.self_broadcast,
                cursor: join.cursor,
                // Live events wait until the join reply and any replay have gone out.
                held: Some(Vec::new()),
            },
        );
        self.metrics.channels.inc();
        presence_entries(&room.presence.iter().collect::<Vec<_>>())
    }

    /// Ends the hold on a new subscription: delivers the replayed events (for a resuming client),
    /// then the live events that arrived meanwhile, each id once and in order.
    pub fn finish_resume(&self, topic: &str, conn: ConnId, join_topic: &str, replayed: Vec<DbEvent>) {
        let mut rooms = self.rooms();
        let Some(sub) = rooms.get_mut(topic).and_then(|r| r.subscriptions.get_mut(&(conn, join_topic.to_owned()))) else {
            return;
        };
        let held = sub.held.take().unwrap_or_default();
        for event in replayed.iter().chain(held.iter()) {
            if event.id > sub.cursor {
                sub.cursor = event.id;
                let frame = protocol::push(&sub.join_topic, "broadcast", db_payload(event));
                sub.outbox.send_frame(&self.metrics, &frame);
            }
        }
    }

    /// Removes a subscription; its presence leaves the room (announced to everyone, and to the
    /// other relays).
    pub fn leave(&self, topic: &str, conn: ConnId, join_topic: &str) {
        let mut rooms = self.rooms();
        let Some(room) = rooms.get_mut(topic) else { return };
        if room.subscriptions.remove(&(conn, join_topic.to_owned())).is_some() {
            self.metrics.channels.dec();
        }
        let owner = Owner::Local(conn, join_topic.to_owned());
        let (gone, kept): (Vec<Meta>, Vec<Meta>) = room.presence.drain(..).partition(|m| m.owner == owner);
        room.presence = kept;
        if !gone.is_empty() {
            let diff = json!({ "joins": {}, "leaves": presence_entries(&gone.iter().collect::<Vec<_>>()) });
            self.fan_out(room, "presence_diff", &diff, None);
            self.tell_peers(json!({ "kind": "presence", "topic": topic, "diff": diff }));
        }
        if room.subscriptions.is_empty() && room.presence.is_empty() {
            rooms.remove(topic);
        }
    }

    fn fan_out(&self, room: &Room, event: &str, payload: &Value, exclude: Option<(ConnId, &str)>) {
        let mut cache = EncodeCache::new(event, payload);
        for ((conn, join_topic), sub) in &room.subscriptions {
            if exclude.is_some_and(|(c, t)| c == *conn && t == join_topic) {
                continue;
            }
            sub.outbox.send(&self.metrics, cache.get(sub.outbox.vsn, &sub.join_topic));
        }
    }

    /// A committed database event, to every subscriber of its channel.
    pub fn publish_db_event(&self, event: &DbEvent) {
        let mut rooms = self.rooms();
        let Some(room) = rooms.get_mut(&event.topic) else { return };
        let payload = db_payload(event);
        let mut cache = EncodeCache::new("broadcast", &payload);
        for sub in room.subscriptions.values_mut() {
            if let Some(held) = &mut sub.held {
                held.push(event.clone());
            } else if event.id > sub.cursor {
                sub.cursor = event.id;
                sub.outbox.send(&self.metrics, cache.get(sub.outbox.vsn, &sub.join_topic));
            }
        }
    }

    /// A client broadcast: to the room (the sender only with `self`), and to the other relays.
    pub fn broadcast(&self, topic: &str, sender: Option<(ConnId, &str)>, event: &str, payload: Value) {
        self.tell_peers(json!({ "kind": "broadcast", "topic": topic, "event": event, "payload": payload }));
        self.broadcast_locally(topic, sender, event, payload);
    }

    fn broadcast_locally(&self, topic: &str, sender: Option<(ConnId, &str)>, event: &str, payload: Value) {
        let rooms = self.rooms();
        let Some(room) = rooms.get(topic) else { return };
        let exclude = sender.filter(|(conn, join_topic)| {
            !room.subscriptions.get(&(*conn, join_topic.to_string())).is_some_and(|s| s.self_broadcast)
        });
        self.fan_out(room, "broadcast", &broadcast_payload(event, payload), exclude);
    }

    /// Tracks (or re-tracks) a connection's presence under `key`: one diff with the new meta in
    /// joins and, for an update, the old one in leaves.
    pub fn track(&self, topic: &str, conn: ConnId, join_topic: &str, key: &str, state: Map<String, Value>) {
        let owner = Owner::Local(conn, join_topic.to_owned());
        let mut rooms = self.rooms();
        let room = rooms.entry(topic.to_owned()).or_default();
        let previous = room.presence.iter().position(|m| m.owner == owner).map(|i| room.presence.remove(i));
        let mut meta = state;
        meta.insert("phx_ref".to_owned(), json!(new_presence_ref()));
        if let Some(previous) = &previous {
            meta.insert("phx_ref_prev".to_owned(), previous.meta["phx_ref"].clone());
        }
        let joined = Meta { owner, key: key.to_owned(), meta: Value::Object(meta) };
        let diff = json!({
            "joins": presence_entries(&[&joined]),
            "leaves": presence_entries(&previous.iter().collect::<Vec<_>>()),
        });
        room.presence.push(joined);
        self.fan_out(room, "presence_diff", &diff, None);
        self.tell_peers(json!({ "kind": "presence", "topic": topic, "diff": diff }));
    }

    pub fn untrack(&self, topic: &str, conn: ConnId, join_topic: &str) {
        let owner = Owner::Local(conn, join_topic.to_owned());
        let mut rooms = self.rooms();
        let Some(room) = rooms.get_mut(topic) else { return };
        let Some(index) = room.presence.iter().position(|m| m.owner == owner) else { return };
        let gone = room.presence.remove(index);
        let diff = json!({ "joins": {}, "leaves": presence_entries(&[&gone]) });
        self.fan_out(room, "presence_diff", &diff, None);
        self.tell_peers(json!({ "kind": "presence", "topic": topic, "diff": diff }));
    }

    fn tell_peers(&self, mut message: Value) {
        message["origin"] = json!(self.relay_id);
        let text = message.to_string();
        if text.len() > MAX_NOTIFY_BYTES {
            self.metrics.drops.with_label_values(&["too_large_for_peers"]).inc();
            return;
        }
        let _ = self.peers.send(text);
    }

    /// A broadcast or presence diff from another relay.
    pub fn apply_peer_message(&self, text: &str) {
        let Ok(message) = serde_json::from_str::<Value>(text) else {
            tracing::warn!("unreadable message from a peer relay");
            return;
        };
        let origin = message["origin"].as_str().unwrap_or_default();
        if origin == self.relay_id {
            return;
        }
        let Some(topic) = message["topic"].as_str() else { return };
        match message["kind"].as_str() {
            Some("broadcast") => {
                let event = message["event"].as_str().unwrap_or_default();
                self.broadcast_locally(topic, None, event, message["payload"].clone());
            }
            Some("presence") => {
                let diff = &message["diff"];
                let mut rooms = self.rooms();
                let room = rooms.entry(topic.to_owned()).or_default();
                if let Some(leaves) = diff["leaves"].as_object() {
                    for entry in leaves.values() {
                        for meta in entry["metas"].as_array().into_iter().flatten() {
                            room.presence.retain(|m| m.meta["phx_ref"] != meta["phx_ref"]);
                        }
                    }
                }
                if let Some(joins) = diff["joins"].as_object() {
                    for (key, entry) in joins {
                        for meta in entry["metas"].as_array().into_iter().flatten() {
                            room.presence.push(Meta { owner: Owner::Peer(origin.to_owned()), key: key.clone(), meta: meta.clone() });
                        }
                    }
                }
                self.fan_out(room, "presence_diff", diff, None);
            }
            _ => tracing::warn!("unknown message kind from a peer relay"),
        }
    }

    /// Frames waiting in all send queues (for /metrics).
    pub fn queued_frames(&self) -> usize {
        let rooms = self.rooms();
        let mut seen = std::collections::HashSet::new();
        rooms
            .values()
            .flat_map(|r| r.subscriptions.values())
            .filter(|s| seen.insert(s.outbox.id))
            .map(|s| s.outbox.queued())
            .sum()
    }
}

fn new_presence_ref() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(&uuid::Uuid::new_v4().as_bytes()[..8])
}
