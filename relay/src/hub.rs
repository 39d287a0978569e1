//! The hub: the rooms of this relay, by canonical channel, and what crosses to the other relays.
//! It takes the locks and decides who hears what; rooms, presence and the peer messages
//! themselves live in their own modules. A client's presence or broadcast goes to its room and to
//! the peers; what a peer says goes to local subscribers only.

use crate::client_broadcast::stopped_typing;
use crate::db::DbEvent;
use crate::metrics::Metrics;
use crate::outbox::ConnId;
use crate::peers::{PeerLink, PeerMessage, PeerOut, PeerState, Received};
use crate::presence::{Owner, PresenceDiff, PresenceEntries};
use crate::rooms::{Join, Room};
use serde_json::{Map, Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

pub struct Hub {
    rooms: Mutex<HashMap<String, Room>>,
    metrics: Arc<Metrics>,
    peers: PeerLink,
    peer_state: Mutex<PeerState>,
}

impl Hub {
    pub fn new(metrics: Arc<Metrics>, peers: PeerLink) -> Hub {
        Hub { rooms: Mutex::new(HashMap::new()), metrics, peers, peer_state: Mutex::new(PeerState::default()) }
    }

    fn rooms(&self) -> MutexGuard<'_, HashMap<String, Room>> {
        self.rooms.lock().expect("hub lock")
    }

    fn peer_state(&self) -> MutexGuard<'_, PeerState> {
        self.peer_state.lock().expect("peer state lock")
    }

    fn tell_peers(&self, message: PeerMessage) {
        self.peers.tell(&self.metrics, &message);
    }

    /// Adds a subscription and returns the room's presence state for the joiner.
    pub fn join(&self, topic: &str, join: Join) -> Value {
        let mut rooms = self.rooms();
        let room = rooms.entry(topic.to_owned()).or_default();
        if !room.has_subscribers() {
            self.peers.serving(topic, true);
        }
        room.subscribe(join);
        self.metrics.channels.inc();
        json!(room.presence.state())
    }

    /// See [`Room::finish_resume`].
    pub fn finish_resume(&self, topic: &str, conn: ConnId, join_topic: &str, replayed_to: i64) -> bool {
        let mut rooms = self.rooms();
        rooms.get_mut(topic).is_some_and(|room| room.finish_resume(&self.metrics, conn, join_topic, replayed_to))
    }

    /// Removes a subscription; its presence leaves the room.
    pub fn leave(&self, topic: &str, conn: ConnId, join_topic: &str) {
        let mut rooms = self.rooms();
        let Some(room) = rooms.get_mut(topic) else { return };
        if room.unsubscribe(conn, join_topic) {
            self.metrics.channels.dec();
        }
        self.owner_leaves(topic, room, &Owner::Local(conn, join_topic.to_owned()));
        let unserved = !room.has_subscribers();
        if unserved {
            self.peers.serving(topic, false);
        }
        // A bus that carries only served topics stops telling us about the peers' presence here:
        // what we hold of it would go stale, so it goes (it is asked for again on the next join).
        if room.is_empty() || (unserved && !self.peers.hears_every_topic()) {
            rooms.remove(topic);
        }
    }

    /// The room a peer's presence message is for. On a bus that carries only served topics, one
    /// this relay does not serve (a message that crossed our unsubscribe) is not kept.
    fn peer_room<'a>(&self, rooms: &'a mut HashMap<String, Room>, topic: String) -> Option<&'a mut Room> {
        if self.peers.hears_every_topic() { Some(rooms.entry(topic).or_default()) } else { rooms.get_mut(&topic) }
    }

    /// The one way presence leaves a room: announced to its subscribers and, when the owner is a
    /// client of this relay, to the other relays (a peer's own presence is its to announce).
    fn owner_leaves(&self, topic: &str, room: &mut Room, owner: &Owner) {
        let Some(diff) = room.presence.leave(owner) else { return };
        self.announce_presence(room, &diff);
        if let Owner::Local(..) = owner {
            self.tell_peers(PeerMessage::Presence { topic: topic.to_owned(), diff });
        }
    }

    fn announce_presence(&self, room: &Room, diff: &PresenceDiff) {
        room.fan_out(&self.metrics, "presence_diff", &diff.to_value(), None);
    }

    /// A committed database event, to every subscriber of its channel.
    pub fn publish_db_event(&self, event: &DbEvent) {
        if let Some(room) = self.rooms().get_mut(&event.topic) {
            room.publish_db_event(&self.metrics, event);
        }
    }

    /// A client broadcast: to the room (the sender only with `self`), and to the other relays.
    pub fn broadcast(&self, topic: &str, sender: Option<(ConnId, &str)>, event: &str, payload: Value) {
        self.tell_peers(PeerMessage::Broadcast {
            topic: topic.to_owned(),
            event: event.to_owned(),
            payload: payload.clone(),
            sender: sender.map(|(conn, join_topic)| format!("{conn}/{join_topic}")),
        });
        self.broadcast_locally(topic, sender, event, payload);
    }

    fn broadcast_locally(&self, topic: &str, sender: Option<(ConnId, &str)>, event: &str, payload: Value) {
        if let Some(room) = self.rooms().get(topic) {
            room.broadcast(&self.metrics, sender, event, payload);
        }
    }

    /// Tracks (or re-tracks) a connection's presence under `key`.
    pub fn track(&self, topic: &str, conn: ConnId, join_topic: &str, key: &str, state: Map<String, Value>) {
        let mut rooms = self.rooms();
        let room = rooms.entry(topic.to_owned()).or_default();
        let diff = room.presence.track(Owner::Local(conn, join_topic.to_owned()), key, state);
        self.announce_presence(room, &diff);
        self.tell_peers(PeerMessage::Presence { topic: topic.to_owned(), diff });
    }

    pub fn untrack(&self, topic: &str, conn: ConnId, join_topic: &str) {
        let mut rooms = self.rooms();
        if let Some(room) = rooms.get_mut(topic) {
            self.owner_leaves(topic, room, &Owner::Local(conn, join_topic.to_owned()));
        }
    }

    /// Queues a marker behind everything already queued for the peers.
    pub fn flush_peers(&self, marker: PeerOut) -> bool {
        self.peers.flush(marker)
    }

    /// Tells the other relays this one is alive (called periodically).
    pub fn heartbeat(&self) {
        self.tell_peers(PeerMessage::Alive);
    }

    /// Tells the other relays this one is going away: they drop its presence at once.
    pub fn goodbye(&self) {
        self.tell_peers(PeerMessage::Bye);
    }

    /// Called whenever the LISTEN connection is (re)established: peer messages may have been
    /// missed, so this relay sends its own presence state and asks every peer for theirs. (A bus
    /// that carries only served topics syncs per topic instead: [`Hub::ask`], [`Hub::resync`].)
    pub fn announce(&self) {
        if !self.peers.hears_every_topic() {
            return;
        }
        self.send_state();
        self.tell_peers(PeerMessage::Hello);
        // Peers are judged from now on: silence while we could not hear them proves nothing.
        self.peer_state().restart_clocks();
    }

    /// This relay's own presence, one message per room, then a terminator naming how many.
    fn send_state(&self) {
        let sync = uuid::Uuid::new_v4().simple().to_string();
        for (topic, room) in self.rooms().iter() {
            let metas = room.presence.local_state();
            if !metas.is_empty() {
                self.tell_peers(PeerMessage::State { sync: sync.clone(), topic: topic.clone(), metas });
            }
        }
        self.tell_peers(PeerMessage::StateDone { sync });
    }

    /// Asks the peers serving `topic` for their presence there (this relay just subscribed).
    pub fn ask(&self, topic: &str) {
        self.tell_peers(PeerMessage::Ask { topic: topic.to_owned() });
    }

    /// After this relay was cut off from a bus that carries only served topics: whatever the
    /// peers contributed may be stale, so it goes, and for every topic served this relay sends
    /// its own presence (the peers may have dropped it, or hold leaves it missed) and asks for
    /// theirs.
    pub fn resync(&self) {
        let known = self.peer_state().known();
        self.forget_peers(known);
        let served: Vec<(String, PresenceEntries)> = self
            .rooms()
            .iter()
            .filter(|(_, room)| room.has_subscribers())
            .map(|(topic, room)| (topic.clone(), room.presence.local_state()))
            .collect();
        for (topic, metas) in served {
            self.tell_peers(PeerMessage::TopicState { topic: topic.clone(), metas });
            self.ask(&topic);
        }
    }

    /// The peers this relay has heard from and not forgotten.
    pub fn known_peers(&self) -> Vec<String> {
        self.peer_state().known()
    }

    /// A peer that a probe sent at `probed` found dead: its presence leaves, its clients' typing
    /// stops. Unless it was heard from since: the probe raced its return to the bus (after a NATS
    /// restart, say), and what it sent meanwhile, its presence included, stands.
    pub fn peer_gone(&self, origin: &str, probed: std::time::Instant) {
        if self.peer_state().heard_since(origin, probed) {
            return;
        }
        tracing::warn!(peer = %origin, "peer relay gone; dropping its presence");
        self.forget_peers(vec![origin.to_owned()]);
    }

    /// Peers not heard from within `timeout` are presumed dead: their presence leaves and their
    /// clients' typing indicators stop, as if each of their connections had closed.
    pub fn expire_peers(&self, timeout: std::time::Duration) {
        let dead = self.peer_state().silent(timeout);
        for origin in &dead {
            tracing::warn!(peer = %origin, "peer relay went silent; dropping its presence");
        }
        self.forget_peers(dead);
    }

    /// Drops what other relays contributed: presence leaves, typing stops.
    fn forget_peers(&self, dead: Vec<String>) {
        let typing: Vec<(String, Value)> = {
            let mut peers = self.peer_state();
            dead.iter().flat_map(|origin| peers.forget(origin)).collect()
        };
        for origin in &dead {
            self.metrics.peers_expired.inc();
            let owner = Owner::Peer(origin.clone());
            let mut rooms = self.rooms();
            for (topic, room) in rooms.iter_mut() {
                self.owner_leaves(topic, room, &owner);
            }
            rooms.retain(|_, room| !room.is_empty());
        }
        for (topic, payload) in typing {
            self.broadcast_locally(&topic, None, "typing:stop", stopped_typing(payload));
        }
    }

    /// A broadcast, presence change or liveness message from another relay.
    pub fn apply_peer_message(&self, text: &str) {
        let Received::From { origin, message } = Received::decode(text) else {
            tracing::warn!("unreadable message from a peer relay");
            return;
        };
        if origin == self.peers.relay_id {
            return;
        }
        self.metrics.peer_messages_in.inc();
        if self.peer_state().heard(&origin, message.as_ref().ok()) {
            tracing::info!(peer = %origin, "peer relay seen");
        }
        let message = match message {
            Ok(message) => message,
            Err(err) => return tracing::warn!(%err, "unknown message from a peer relay"),
        };
        match message {
            PeerMessage::Broadcast { topic, event, payload, .. } => {
                self.broadcast_locally(&topic, None, &event, payload);
            }
            PeerMessage::Presence { topic, diff } => {
                let mut rooms = self.rooms();
                if let Some(room) = self.peer_room(&mut rooms, topic) {
                    room.presence.apply_peer_diff(&origin, &diff);
                    self.announce_presence(room, &diff);
                }
            }
            PeerMessage::State { topic, metas, .. } | PeerMessage::TopicState { topic, metas } => {
                let mut rooms = self.rooms();
                let Some(room) = self.peer_room(&mut rooms, topic) else { return };
                if let Some(diff) = room.presence.replace_peer(&origin, metas) {
                    self.announce_presence(room, &diff);
                }
            }
            PeerMessage::Ask { topic } => {
                let metas = self.rooms().get(&topic).map(|room| room.presence.local_state()).unwrap_or_default();
                if !metas.is_empty() {
                    self.tell_peers(PeerMessage::TopicState { topic, metas });
                }
            }
            PeerMessage::StateDone { sync } => {
                let synced: HashSet<String> = self.peer_state().finish_sync(&origin, &sync);
                // Rooms the peer no longer has anyone in.
                let owner = Owner::Peer(origin);
                let mut rooms = self.rooms();
                for (topic, room) in rooms.iter_mut().filter(|(topic, _)| !synced.contains(*topic)) {
                    self.owner_leaves(topic, room, &owner);
                }
            }
            PeerMessage::Hello => self.send_state(),
            PeerMessage::Alive => {}
            PeerMessage::Bye => {
                tracing::info!(peer = %origin, "peer relay left");
                self.forget_peers(vec![origin]);
            }
        }
    }

    /// (total, largest) frames waiting in the send queues of subscribed connections.
    pub fn queued_frames(&self) -> (usize, usize) {
        let rooms = self.rooms();
        let mut seen = HashSet::new();
        rooms
            .values()
            .flat_map(Room::outboxes)
            .filter(|outbox| seen.insert(outbox.id))
            .map(|outbox| outbox.queued())
            .fold((0, 0), |(total, max), q| (total + q, max.max(q)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::test_support::{outbox, received};
    use axum::extract::ws::Message;
    use tokio::sync::mpsc;

    const CHANNEL: &str = "org:o:conv:c:presence";
    const JOIN_TOPIC: &str = "realtime:org:o:conv:c:presence";

    /// A hub and the queue its messages to the other relays wait in.
    struct TestRelay {
        hub: Hub,
        to_peers: mpsc::Receiver<PeerOut>,
    }

    fn relay(id: &str) -> TestRelay {
        let (tx, to_peers) = mpsc::channel(64);
        TestRelay { hub: Hub::new(Arc::new(Metrics::new()), PeerLink::to_everyone(id.to_owned(), tx)), to_peers }
    }

    /// A relay on a bus that carries only served topics, and where its interest goes.
    fn relay_by_topic(id: &str) -> (TestRelay, mpsc::UnboundedReceiver<crate::peers::Interest>) {
        let (tx, to_peers) = mpsc::channel(64);
        let (interest_tx, interest) = mpsc::unbounded_channel();
        let link = PeerLink::by_topic(id.to_owned(), tx, interest_tx);
        (TestRelay { hub: Hub::new(Arc::new(Metrics::new()), link), to_peers }, interest)
    }

    impl TestRelay {
        /// A client of this relay joined to CHANNEL, past its join reply.
        fn client(&self, conn: ConnId) -> mpsc::Receiver<Message> {
            let (outbox, rx) = outbox(conn, 64);
            self.hub.join(CHANNEL, Join { outbox, join_topic: JOIN_TOPIC.into(), self_broadcast: false, cursor: 0 });
            self.hub.finish_resume(CHANNEL, conn, JOIN_TOPIC, 0);
            rx
        }

        /// What this relay has queued for its peers, as JSON.
        fn said(&mut self) -> Vec<Value> {
            std::iter::from_fn(|| self.to_peers.try_recv().ok())
                .filter_map(|out| match out {
                    PeerOut::Message { text, .. } => Some(serde_json::from_str(&text).expect("JSON")),
                    PeerOut::Flush(_) => None,
                })
                .collect()
        }

        /// Hands what this relay said to `other`, as the database would.
        fn deliver_to(&mut self, other: &TestRelay) {
            other.hear(&self.said());
        }

        fn hear(&self, messages: &[Value]) {
            for message in messages {
                self.hub.apply_peer_message(&message.to_string());
            }
        }
    }

    /// Relay b's client watching the room after ann, a client of relay a, tracked her presence.
    fn watching_ann() -> (TestRelay, TestRelay, mpsc::Receiver<Message>) {
        let (mut a, b) = (relay("a"), relay("b"));
        let mut watcher = b.client(1);
        track(&a, 7, "ann");
        a.deliver_to(&b);
        received(&mut watcher);
        (a, b, watcher)
    }

    fn track(relay: &TestRelay, conn: ConnId, key: &str) {
        let state = json!({ "name": key }).as_object().cloned().expect("an object");
        relay.hub.track(CHANNEL, conn, JOIN_TOPIC, key, state);
    }

    /// The presence keys joining and leaving in the presence_diff frames among `frames`.
    fn diffs(frames: &[Value]) -> Vec<(Vec<String>, Vec<String>)> {
        let keys = |entries: &Value| entries.as_object().map_or(vec![], |m| m.keys().cloned().collect());
        frames
            .iter()
            .filter(|f| f["event"] == "presence_diff")
            .map(|f| (keys(&f["payload"]["joins"]), keys(&f["payload"]["leaves"])))
            .collect()
    }

    fn kinds(messages: &[Value]) -> Vec<&str> {
        messages.iter().map(|m| m["kind"].as_str().unwrap_or_default()).collect()
    }

    fn joins(key: &str) -> (Vec<String>, Vec<String>) {
        (vec![key.to_owned()], vec![])
    }

    fn leaves(key: &str) -> (Vec<String>, Vec<String>) {
        (vec![], vec![key.to_owned()])
    }

    #[test]
    fn presence_crosses_to_the_other_relay_and_leaves_with_its_connection() {
        let (mut a, b) = (relay("a"), relay("b"));
        let mut watcher = b.client(1);
        track(&a, 7, "ann");
        a.deliver_to(&b);
        assert_eq!(diffs(&received(&mut watcher)), [joins("ann")]);
        a.hub.leave(CHANNEL, 7, JOIN_TOPIC);
        a.deliver_to(&b);
        assert_eq!(diffs(&received(&mut watcher)), [leaves("ann")]);
        assert_eq!(b.hub.join_state_keys(), Vec::<String>::new());
    }

    #[test]
    fn an_untrack_leaves_once() {
        let mut a = relay("a");
        let mut watcher = a.client(1);
        track(&a, 7, "ann");
        a.hub.untrack(CHANNEL, 7, JOIN_TOPIC);
        a.hub.untrack(CHANNEL, 7, JOIN_TOPIC);
        a.hub.leave(CHANNEL, 7, JOIN_TOPIC);
        assert_eq!(diffs(&received(&mut watcher)), [joins("ann"), leaves("ann")]);
        assert_eq!(kinds(&a.said()), ["presence", "presence"]);
    }

    #[test]
    fn what_a_peer_says_is_not_repeated_to_the_peers() {
        let (mut a, mut b) = (relay("a"), relay("b"));
        let mut watcher = b.client(1);
        track(&a, 7, "ann");
        a.hub.broadcast(CHANNEL, Some((7, JOIN_TOPIC)), "notice", json!({ "n": 1 }));
        a.deliver_to(&b);
        let frames = received(&mut watcher);
        assert_eq!(
            frames.iter().map(|f| f["event"].as_str().unwrap_or_default()).collect::<Vec<_>>(),
            ["presence_diff", "broadcast"]
        );
        assert_eq!(frames[1]["payload"], json!({ "type": "broadcast", "event": "notice", "payload": { "n": 1 } }));
        assert!(b.said().is_empty());
    }

    #[test]
    fn a_relay_ignores_its_own_messages() {
        let mut a = relay("a");
        let mut watcher = a.client(1);
        a.hub.broadcast(CHANNEL, None, "notice", json!({}));
        received(&mut watcher);
        let own = a.said();
        a.hear(&own);
        assert!(received(&mut watcher).is_empty());
        assert_eq!(a.hub.metrics.peer_messages_in.get(), 0);
    }

    #[test]
    fn a_relay_saying_goodbye_takes_its_presence_and_typing_along() {
        let (mut a, b, mut watcher) = watching_ann();
        a.hub.broadcast(CHANNEL, Some((7, JOIN_TOPIC)), "typing:start", json!({ "isTyping": true, "who": "ann" }));
        a.deliver_to(&b);
        received(&mut watcher);
        a.hub.goodbye();
        a.deliver_to(&b);
        let frames = received(&mut watcher);
        assert_eq!(diffs(&frames), [leaves("ann")]);
        let stop = frames.iter().find(|f| f["event"] == "broadcast").expect("a typing:stop");
        assert_eq!(stop["payload"]["event"], "typing:stop");
        assert_eq!(stop["payload"]["payload"], json!({ "isTyping": false, "endedBy": "relay", "who": "ann" }));
        assert_eq!(b.hub.metrics.peers_expired.get(), 1);
    }

    #[test]
    fn a_silent_relay_is_forgotten() {
        let (_a, b, mut watcher) = watching_ann();
        b.hub.expire_peers(std::time::Duration::ZERO);
        assert_eq!(diffs(&received(&mut watcher)), [leaves("ann")]);
    }

    #[test]
    fn a_relay_that_missed_messages_relearns_presence_from_a_state_sync() {
        let (mut a, mut b) = (relay("a"), relay("b"));
        track(&a, 7, "ann");
        track(&a, 8, "bob");
        a.said(); // lost: b was not listening
        let mut watcher = b.client(1);
        b.hub.announce();
        b.deliver_to(&a); // b's (empty) state and its hello
        let sync = a.said();
        assert_eq!(kinds(&sync), ["state", "state_done"]);
        b.hear(&sync);
        assert_eq!(diffs(&received(&mut watcher)), [(vec!["ann".to_owned(), "bob".to_owned()], vec![])]);
        assert_eq!(b.hub.join_state_keys(), ["ann", "bob"]);

        // Bob left while b was not listening: the next sync no longer names him.
        a.hub.leave(CHANNEL, 8, JOIN_TOPIC);
        a.said();
        b.hub.announce();
        b.deliver_to(&a);
        a.deliver_to(&b);
        assert_eq!(diffs(&received(&mut watcher)), [leaves("bob")]);

        // Nobody of a's left in the room: the sync's end says so.
        a.hub.leave(CHANNEL, 7, JOIN_TOPIC);
        a.said();
        b.hub.announce();
        b.deliver_to(&a);
        let sync = a.said();
        assert_eq!(kinds(&sync), ["state_done"]);
        b.hear(&sync);
        assert_eq!(diffs(&received(&mut watcher)), [leaves("ann")]);
    }

    #[test]
    fn an_empty_room_goes_and_queued_frames_count_each_connection_once() {
        let a = relay("a");
        let _one = a.client(1);
        let (outbox, _two) = outbox(2, 8);
        a.hub.join(
            "org:o",
            Join { outbox: outbox.clone(), join_topic: "realtime:org:o".into(), self_broadcast: false, cursor: 0 },
        );
        a.hub.join(CHANNEL, Join { outbox, join_topic: JOIN_TOPIC.into(), self_broadcast: false, cursor: 0 });
        a.hub.finish_resume(CHANNEL, 2, JOIN_TOPIC, 0);
        a.hub.broadcast(CHANNEL, None, "notice", json!({}));
        assert_eq!(a.hub.queued_frames(), (2, 1));
        assert_eq!(a.hub.metrics.channels.get(), 3);
        for (topic, conn, join_topic) in
            [("org:o", 2, "realtime:org:o"), (CHANNEL, 1, JOIN_TOPIC), (CHANNEL, 2, JOIN_TOPIC)]
        {
            a.hub.leave(topic, conn, join_topic);
        }
        assert_eq!(a.hub.metrics.channels.get(), 0);
        assert!(a.hub.rooms().is_empty());
    }

    #[test]
    fn by_topic_a_relay_follows_a_topic_while_it_serves_it_and_asks_for_its_presence() {
        let (mut a, _) = relay_by_topic("a");
        let (mut b, mut interest) = relay_by_topic("b");
        track(&a, 7, "ann");
        a.said();
        let mut watcher = b.client(1);
        let _second = b.client(2);
        let serving = |on| crate::peers::Interest { topic: CHANNEL.into(), serving: on };
        assert_eq!(interest.try_recv().ok(), Some(serving(true)), "the first subscriber only");
        assert!(interest.try_recv().is_err());

        // Once subscribed, b asks; a, which has presence there, answers with all of it.
        b.hub.ask(CHANNEL);
        b.deliver_to(&a);
        let answer = a.said();
        assert_eq!(kinds(&answer), ["topic_state"]);
        b.hear(&answer);
        assert_eq!(diffs(&received(&mut watcher)), [joins("ann")]);
        assert_eq!(b.hub.join_state_keys(), ["ann"]);

        // Cut off and back: what the peers contributed goes, and comes back from their answers.
        b.hub.resync();
        assert_eq!(diffs(&received(&mut watcher)), [leaves("ann")]);
        let resync = b.said();
        assert_eq!(kinds(&resync), ["topic_state", "ask"]);
        a.hear(&resync);
        b.hear(&a.said());
        assert_eq!(diffs(&received(&mut watcher)), [joins("ann")]);

        // The last subscriber goes: so does the peers' presence, and late news of it is not kept.
        b.hub.leave(CHANNEL, 1, JOIN_TOPIC);
        b.hub.leave(CHANNEL, 2, JOIN_TOPIC);
        assert_eq!(interest.try_recv().ok(), Some(serving(false)));
        assert!(b.hub.rooms().is_empty());
        track(&a, 8, "bob");
        a.deliver_to(&b);
        assert!(b.hub.rooms().is_empty());
    }

    #[test]
    fn a_failed_probe_drops_a_peer_unless_it_was_heard_from_since() {
        let (mut a, b, mut watcher) = watching_ann();
        // The probe went out while a was off the bus; a came back and resent its presence before
        // the failure was judged: a stays.
        let probed = std::time::Instant::now();
        std::thread::sleep(std::time::Duration::from_millis(2));
        track(&a, 8, "bob");
        a.deliver_to(&b);
        b.hub.peer_gone("a", probed);
        assert_eq!(diffs(&received(&mut watcher)), [joins("bob")]);
        assert_eq!(b.hub.join_state_keys(), ["ann", "bob"]);
        // A probe sent after a was last heard from does drop it.
        b.hub.peer_gone("a", std::time::Instant::now());
        assert_eq!(b.hub.join_state_keys(), Vec::<String>::new());
        assert!(b.hub.known_peers().is_empty());
    }

    impl Hub {
        /// The presence keys a client joining CHANNEL would be told about.
        fn join_state_keys(&self) -> Vec<String> {
            self.rooms().get(CHANNEL).map_or(vec![], |room| room.presence.state().into_keys().collect())
        }
    }
}
