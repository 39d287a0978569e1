//! Rooms: who is subscribed to each canonical channel, and the presence tracked there. Frames are
//! encoded once per (serializer, join topic) and shared among subscribers (each connection's
//! bounded queue is its outbox).

use crate::db::{DbEvent, MAX_NOTIFY_BYTES};
use crate::metrics::Metrics;
use crate::outbox::{ConnId, Outbox};
use crate::protocol::{self, Vsn};
use axum::extract::ws::Utf8Bytes;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

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
    /// Messages for the other relays (sent by the relay's database task); bounded, and a full
    /// queue drops the message (counted) rather than slowing a client down.
    peers: mpsc::Sender<PeerOut>,
    peer_state: Mutex<PeerState>,
}

/// What the hub hands the task that NOTIFYs the other relays.
pub enum PeerOut {
    Message(String),
    /// Answered once everything queued before it has been sent (used at shutdown).
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// What this relay knows about the other relays on the database.
#[derive(Default)]
struct PeerState {
    /// When each peer was last heard from; a peer silent for too long is presumed dead.
    last_seen: HashMap<String, std::time::Instant>,
    /// Typing indicators started by clients of other relays and not yet stopped, by (origin,
    /// topic, sender): ended here if their relay vanishes.
    typing: HashMap<(String, String, String), Value>,
    /// The topics each peer has sent in its current presence state sync, by sync id.
    syncing: HashMap<String, (String, HashSet<String>)>,
}

fn presence_entries(metas: &[&Meta]) -> Value {
    let mut by_key: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    for m in metas {
        by_key.entry(&m.key).or_default().push(m.meta.clone());
    }
    Value::Object(by_key.into_iter().map(|(k, metas)| (k.to_owned(), json!({ "metas": metas }))).collect())
}

/// Encodes a frame once per distinct (serializer, join topic) among the receivers. A room's
/// subscribers almost always share one or two, so a short list beats hashing a key per receiver.
struct EncodeCache<'a> {
    event: &'a str,
    payload: &'a Value,
    encoded: Vec<(Vsn, String, Utf8Bytes)>,
}

impl<'a> EncodeCache<'a> {
    fn new(event: &'a str, payload: &'a Value) -> Self {
        EncodeCache { event, payload, encoded: Vec::new() }
    }

    fn get(&mut self, vsn: Vsn, join_topic: &str) -> Utf8Bytes {
        if let Some((_, _, frame)) = self.encoded.iter().find(|(v, t, _)| *v == vsn && t == join_topic) {
            return frame.clone();
        }
        let frame: Utf8Bytes =
            protocol::encode(vsn, &protocol::push(join_topic, self.event, self.payload.clone())).into();
        self.encoded.push((vsn, join_topic.to_owned(), frame.clone()));
        frame
    }
}

fn broadcast_payload(event: &str, payload: Value) -> Value {
    json!({ "type": "broadcast", "event": event, "payload": payload })
}

/// A database event as clients receive it: its payload with the cursor added.
pub fn db_payload(event: &DbEvent) -> Value {
    let mut payload = event.payload.clone();
    if let Value::Object(map) = &mut payload {
        map.insert("cursor".to_owned(), json!(event.id));
    }
    broadcast_payload(&event.event, payload)
}

impl Hub {
    pub fn new(metrics: Arc<Metrics>, relay_id: String, peers: mpsc::Sender<PeerOut>) -> Hub {
        Hub {
            rooms: Mutex::new(HashMap::new()),
            metrics,
            relay_id,
            peers,
            peer_state: Mutex::new(PeerState::default()),
        }
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

    /// Ends the hold on a new subscription once the join reply (and, for a resuming client, the
    /// replay up to `replayed_to`) has gone out: live events that arrived meanwhile follow, each
    /// id once and in order. Returns false if the subscription is gone.
    pub fn finish_resume(&self, topic: &str, conn: ConnId, join_topic: &str, replayed_to: i64) -> bool {
        let mut rooms = self.rooms();
        let Some(sub) = rooms.get_mut(topic).and_then(|r| r.subscriptions.get_mut(&(conn, join_topic.to_owned())))
        else {
            return false;
        };
        sub.cursor = sub.cursor.max(replayed_to);
        let held = sub.held.take().unwrap_or_default();
        for event in &held {
            if event.id > sub.cursor {
                sub.cursor = event.id;
                let frame = protocol::push(&sub.join_topic, "broadcast", db_payload(event));
                sub.outbox.send_frame(&self.metrics, &frame);
            }
        }
        true
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
        let mut message = json!({ "kind": "broadcast", "topic": topic, "event": event, "payload": payload });
        if let Some((conn, join_topic)) = sender {
            message["sender"] = json!(format!("{conn}/{join_topic}"));
        }
        self.tell_peers(message);
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
        match self.peers.try_send(PeerOut::Message(text)) {
            Ok(()) => self.metrics.peer_messages_out.inc(),
            Err(mpsc::error::TrySendError::Full(_)) => self.metrics.drops.with_label_values(&["peer_queue_full"]).inc(),
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Queues a marker behind everything already queued for the peers.
    pub fn flush_peers(&self, marker: PeerOut) -> bool {
        self.peers.try_send(marker).is_ok()
    }

    /// Tells the other relays this one is alive (called periodically).
    pub fn heartbeat(&self) {
        self.tell_peers(json!({ "kind": "alive" }));
    }

    /// Tells the other relays this one is going away: they drop its presence at once.
    pub fn goodbye(&self) {
        self.tell_peers(json!({ "kind": "bye" }));
    }

    /// Called whenever the LISTEN connection is (re)established: peer messages may have been
    /// missed, so this relay sends its own presence state and asks every peer for theirs.
    pub fn announce(&self) {
        self.send_state();
        self.tell_peers(json!({ "kind": "hello" }));
        // Peers are judged from now on: silence while we could not hear them proves nothing.
        let now = std::time::Instant::now();
        for seen in self.peer_state().last_seen.values_mut() {
            *seen = now;
        }
    }

    /// This relay's own presence, one message per room, then a terminator naming how many.
    fn send_state(&self) {
        let sync = uuid::Uuid::new_v4().simple().to_string();
        let rooms = self.rooms();
        for (topic, room) in rooms.iter() {
            let local: Vec<&Meta> = room.presence.iter().filter(|m| matches!(m.owner, Owner::Local(..))).collect();
            if !local.is_empty() {
                self.tell_peers(
                    json!({ "kind": "state", "sync": sync, "topic": topic, "metas": presence_entries(&local) }),
                );
            }
        }
        self.tell_peers(json!({ "kind": "state_done", "sync": sync }));
    }

    fn peer_state(&self) -> std::sync::MutexGuard<'_, PeerState> {
        self.peer_state.lock().expect("peer state lock")
    }

    /// Peers not heard from within `timeout` are presumed dead: their presence leaves and their
    /// clients' typing indicators stop, as if each of their connections had closed.
    pub fn expire_peers(&self, timeout: std::time::Duration) {
        let dead: Vec<String> = self
            .peer_state()
            .last_seen
            .iter()
            .filter(|(_, seen)| seen.elapsed() >= timeout)
            .map(|(o, _)| o.clone())
            .collect();
        for origin in &dead {
            tracing::warn!(peer = %origin, "peer relay went silent; dropping its presence");
        }
        self.forget_peers(dead);
    }

    /// Drops what other relays contributed: presence leaves, typing stops.
    fn forget_peers(&self, dead: Vec<String>) {
        let typing = {
            let mut peers = self.peer_state();
            let mut typing = Vec::new();
            for origin in &dead {
                peers.last_seen.remove(origin);
                peers.syncing.remove(origin);
                let keys: Vec<_> = peers.typing.keys().filter(|(o, _, _)| o == origin).cloned().collect();
                for key in keys {
                    if let Some(payload) = peers.typing.remove(&key) {
                        typing.push((key.1, payload));
                    }
                }
            }
            typing
        };
        for origin in &dead {
            self.metrics.peers_expired.inc();
            self.drop_peer(origin);
        }
        for (topic, payload) in typing {
            self.broadcast_locally(&topic, None, "typing:stop", stopped_typing(payload));
        }
    }

    /// Removes every presence meta of `origin` (leaves to local subscribers only).
    fn drop_peer(&self, origin: &str) {
        let owner = Owner::Peer(origin.to_owned());
        let mut rooms = self.rooms();
        for room in rooms.values_mut() {
            let (gone, kept): (Vec<Meta>, Vec<Meta>) = room.presence.drain(..).partition(|m| m.owner == owner);
            room.presence = kept;
            if !gone.is_empty() {
                let diff = json!({ "joins": {}, "leaves": presence_entries(&gone.iter().collect::<Vec<_>>()) });
                self.fan_out(room, "presence_diff", &diff, None);
            }
        }
        rooms.retain(|_, room| !(room.subscriptions.is_empty() && room.presence.is_empty()));
    }

    /// Replaces `origin`'s presence on `topic` by `metas` (a state sync), announcing the difference.
    fn replace_peer_presence(&self, origin: &str, topic: &str, metas: &Map<String, Value>) {
        let owner = Owner::Peer(origin.to_owned());
        let mut rooms = self.rooms();
        let room = rooms.entry(topic.to_owned()).or_default();
        let (old, kept): (Vec<Meta>, Vec<Meta>) = room.presence.drain(..).partition(|m| m.owner == owner);
        room.presence = kept;
        let mut new = Vec::new();
        for (key, entry) in metas {
            for meta in entry["metas"].as_array().into_iter().flatten() {
                new.push(Meta { owner: owner.clone(), key: key.clone(), meta: meta.clone() });
            }
        }
        let phx_ref = |m: &Meta| m.meta["phx_ref"].clone();
        let joins: Vec<&Meta> = new.iter().filter(|n| !old.iter().any(|o| phx_ref(o) == phx_ref(n))).collect();
        let leaves: Vec<&Meta> = old.iter().filter(|o| !new.iter().any(|n| phx_ref(o) == phx_ref(n))).collect();
        if !joins.is_empty() || !leaves.is_empty() {
            let diff = json!({ "joins": presence_entries(&joins), "leaves": presence_entries(&leaves) });
            self.fan_out(room, "presence_diff", &diff, None);
        }
        room.presence.extend(new);
    }

    /// A broadcast, presence change or liveness message from another relay.
    pub fn apply_peer_message(&self, text: &str) {
        let Ok(message) = serde_json::from_str::<Value>(text) else {
            tracing::warn!("unreadable message from a peer relay");
            return;
        };
        let Some(origin) = message["origin"].as_str() else { return };
        if origin == self.relay_id {
            return;
        }
        self.metrics.peer_messages_in.inc();
        let kind = message["kind"].as_str().unwrap_or_default();
        let topic = message["topic"].as_str();
        let new_peer = {
            let mut peers = self.peer_state();
            let new_peer = peers.last_seen.insert(origin.to_owned(), std::time::Instant::now()).is_none();
            match (kind, topic) {
                ("broadcast", Some(topic)) => {
                    if let Some(sender) = message["sender"].as_str() {
                        let key = (origin.to_owned(), topic.to_owned(), sender.to_owned());
                        match message["event"].as_str() {
                            Some("typing:start") => {
                                peers.typing.insert(key, message["payload"].clone());
                            }
                            Some("typing:stop") => {
                                peers.typing.remove(&key);
                            }
                            _ => {}
                        }
                    }
                }
                ("state", Some(topic)) => {
                    let sync = message["sync"].as_str().unwrap_or_default();
                    let entry = peers.syncing.entry(origin.to_owned()).or_default();
                    if entry.0 != sync {
                        *entry = (sync.to_owned(), HashSet::new());
                    }
                    entry.1.insert(topic.to_owned());
                }
                _ => {}
            }
            new_peer
        };
        if new_peer {
            tracing::info!(peer = %origin, "peer relay seen");
        }
        match (kind, topic) {
            ("broadcast", Some(topic)) => {
                let event = message["event"].as_str().unwrap_or_default();
                self.broadcast_locally(topic, None, event, message["payload"].clone());
            }
            ("presence", Some(topic)) => {
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
                            room.presence.retain(|m| m.meta["phx_ref"] != meta["phx_ref"]);
                            room.presence.push(Meta {
                                owner: Owner::Peer(origin.to_owned()),
                                key: key.clone(),
                                meta: meta.clone(),
                            });
                        }
                    }
                }
                self.fan_out(room, "presence_diff", diff, None);
            }
            ("state", Some(topic)) => {
                if let Some(metas) = message["metas"].as_object() {
                    self.replace_peer_presence(origin, topic, metas);
                }
            }
            ("state_done", _) => {
                let sync = message["sync"].as_str().unwrap_or_default();
                let synced = match self.peer_state().syncing.remove(origin) {
                    Some((id, topics)) if id == sync => topics,
                    _ => HashSet::new(),
                };
                // Rooms the peer no longer has anyone in.
                let owner = Owner::Peer(origin.to_owned());
                let stale: Vec<String> = self
                    .rooms()
                    .iter()
                    .filter(|(topic, room)| !synced.contains(*topic) && room.presence.iter().any(|m| m.owner == owner))
                    .map(|(topic, _)| topic.clone())
                    .collect();
                for topic in stale {
                    self.replace_peer_presence(origin, &topic, &Map::new());
                }
            }
            ("hello", _) => self.send_state(),
            ("alive", _) => {}
            ("bye", _) => {
                tracing::info!(peer = %origin, "peer relay left");
                self.forget_peers(vec![origin.to_owned()]);
            }
            _ => tracing::warn!(kind, "unknown message kind from a peer relay"),
        }
    }

    /// Frames waiting in all send queues (for /metrics).
    /// (total, largest) frames waiting in the send queues of subscribed connections.
    pub fn queued_frames(&self) -> (usize, usize) {
        let rooms = self.rooms();
        let mut seen = HashSet::new();
        rooms
            .values()
            .flat_map(|r| r.subscriptions.values())
            .filter(|s| seen.insert(s.outbox.id))
            .map(|s| s.outbox.queued())
            .fold((0, 0), |(total, max), q| (total + q, max.max(q)))
    }
}

/// The typing:stop the relay sends for a sender that vanished: its last typing:start payload with
/// `isTyping: false` and `endedBy: "relay"`.
pub fn stopped_typing(mut payload: Value) -> Value {
    if let Value::Object(map) = &mut payload {
        map.insert("isTyping".into(), json!(false));
        map.insert("endedBy".into(), json!("relay"));
    }
    payload
}

fn new_presence_ref() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(&uuid::Uuid::new_v4().as_bytes()[..8])
}
