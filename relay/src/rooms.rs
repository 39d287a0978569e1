//! A room: the subscriptions to one canonical channel and the presence tracked there. A frame is
//! encoded once per (serializer, join topic) and shared among the room's subscribers; a database
//! event reaches each subscription once, in order, also across a resume's replay.

use crate::db::DbEvent;
use crate::metrics::Metrics;
use crate::outbox::{ConnId, Outbox};
use crate::presence::Presence;
use crate::protocol::{self, Vsn};
use axum::extract::ws::Utf8Bytes;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;

/// A subscription request from a session.
pub struct Join {
    pub outbox: Arc<Outbox>,
    pub join_topic: String,
    pub self_broadcast: bool,
    /// The cursor a resuming client has seen (0 for a fresh join).
    pub cursor: i64,
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

#[derive(Default)]
pub struct Room {
    subscriptions: HashMap<(ConnId, String), Subscription>,
    pub presence: Presence,
}

/// A database event's push as one subscription receives it: its payload with the cursor added.
pub fn db_frame(vsn: Vsn, join_topic: &str, event: &DbEvent) -> Utf8Bytes {
    protocol::db_event_push(vsn, join_topic, &event.event, &event.payload, event.id).into()
}

fn broadcast_payload(event: &str, payload: Value) -> Value {
    json!({ "type": "broadcast", "event": event, "payload": payload })
}

/// Encodes a frame once per distinct (serializer, join topic) among the receivers. A room's
/// subscribers almost always share one or two, so a short list beats hashing a key per receiver.
struct EncodeCache<F> {
    encode: F,
    encoded: Vec<(Vsn, String, Utf8Bytes)>,
}

impl<F: Fn(Vsn, &str) -> Utf8Bytes> EncodeCache<F> {
    fn new(encode: F) -> Self {
        EncodeCache { encode, encoded: Vec::new() }
    }

    fn get(&mut self, vsn: Vsn, join_topic: &str) -> Utf8Bytes {
        if let Some((_, _, frame)) = self.encoded.iter().find(|(v, t, _)| *v == vsn && t == join_topic) {
            return frame.clone();
        }
        let frame = (self.encode)(vsn, join_topic);
        self.encoded.push((vsn, join_topic.to_owned(), frame.clone()));
        frame
    }
}

impl Room {
    /// Subscribes a connection; live events are held until [`Room::finish_resume`].
    pub fn subscribe(&mut self, join: Join) {
        let subscription = Subscription {
            outbox: join.outbox,
            join_topic: join.join_topic,
            self_broadcast: join.self_broadcast,
            cursor: join.cursor,
            // Live events wait until the join reply and any replay have gone out.
            held: Some(Vec::new()),
        };
        self.subscriptions.insert((subscription.outbox.id, subscription.join_topic.clone()), subscription);
    }

    /// Ends the hold on a new subscription once the join reply (and, for a resuming client, the
    /// replay up to `replayed_to`) has gone out: live events that arrived meanwhile follow, each
    /// id once and in order. Returns false if the subscription is gone.
    pub fn finish_resume(&mut self, metrics: &Metrics, conn: ConnId, join_topic: &str, replayed_to: i64) -> bool {
        let Some(sub) = self.subscriptions.get_mut(&(conn, join_topic.to_owned())) else { return false };
        sub.cursor = sub.cursor.max(replayed_to);
        for event in sub.held.take().unwrap_or_default() {
            if event.id > sub.cursor {
                sub.cursor = event.id;
                sub.outbox.send(metrics, db_frame(sub.outbox.vsn, &sub.join_topic, &event));
            }
        }
        true
    }

    /// Whether the subscription existed.
    pub fn unsubscribe(&mut self, conn: ConnId, join_topic: &str) -> bool {
        self.subscriptions.remove(&(conn, join_topic.to_owned())).is_some()
    }

    pub fn has_subscribers(&self) -> bool {
        !self.subscriptions.is_empty()
    }

    /// Nobody subscribed and no presence (not even another relay's): the room can go.
    pub fn is_empty(&self) -> bool {
        self.subscriptions.is_empty() && self.presence.is_empty()
    }

    /// To every subscriber except `exclude`.
    pub fn fan_out(&self, metrics: &Metrics, event: &str, payload: &Value, exclude: Option<(ConnId, &str)>) {
        let mut cache = EncodeCache::new(|vsn, join_topic: &str| {
            protocol::encode(vsn, &protocol::push(join_topic, event, payload.clone())).into()
        });
        for ((conn, join_topic), sub) in &self.subscriptions {
            if exclude.is_some_and(|(c, t)| c == *conn && t == join_topic) {
                continue;
            }
            sub.outbox.send(metrics, cache.get(sub.outbox.vsn, &sub.join_topic));
        }
    }

    /// A committed database event: held for subscriptions still resuming, sent to the others
    /// unless they have it already.
    pub fn publish_db_event(&mut self, metrics: &Metrics, event: &DbEvent) {
        let mut cache = EncodeCache::new(|vsn, join_topic: &str| db_frame(vsn, join_topic, event));
        for sub in self.subscriptions.values_mut() {
            if let Some(held) = &mut sub.held {
                held.push(event.clone());
            } else if event.id > sub.cursor {
                sub.cursor = event.id;
                sub.outbox.send(metrics, cache.get(sub.outbox.vsn, &sub.join_topic));
            }
        }
    }

    /// A client broadcast: to everyone, and to its sender only if it joined with `self`.
    pub fn broadcast(&self, metrics: &Metrics, sender: Option<(ConnId, &str)>, event: &str, payload: Value) {
        let exclude = sender.filter(|(conn, join_topic)| {
            !self.subscriptions.get(&(*conn, join_topic.to_string())).is_some_and(|s| s.self_broadcast)
        });
        self.fan_out(metrics, "broadcast", &broadcast_payload(event, payload), exclude);
    }

    pub fn outboxes(&self) -> impl Iterator<Item = &Outbox> {
        self.subscriptions.values().map(|s| &*s.outbox)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::test_support::{outbox, received};
    use axum::extract::ws::Message;
    use tokio::sync::mpsc;

    const TOPIC: &str = "realtime:org:o:conv:c";

    fn event(id: i64) -> DbEvent {
        let payload = serde_json::value::to_raw_value(&json!({ "n": id })).unwrap();
        DbEvent { id, topic: "org:o:conv:c".into(), event: "message:created".into(), payload }
    }

    fn subscribe(room: &mut Room, conn: ConnId, self_broadcast: bool, cursor: i64) -> mpsc::Receiver<Message> {
        let (outbox, rx) = outbox(conn, 16);
        room.subscribe(Join { outbox, join_topic: TOPIC.into(), self_broadcast, cursor });
        rx
    }

    /// The cursors of the database events among `frames`.
    fn cursors(frames: &[Value]) -> Vec<i64> {
        frames.iter().filter_map(|f| f["payload"]["payload"]["cursor"].as_i64()).collect()
    }

    #[test]
    fn a_database_event_carries_its_cursor() {
        for vsn in [Vsn::V1, Vsn::V2] {
            let frame: Value = serde_json::from_str(&db_frame(vsn, TOPIC, &event(7))).unwrap();
            let expected = protocol::push(
                TOPIC,
                "broadcast",
                json!({ "type": "broadcast", "event": "message:created", "payload": { "n": 7, "cursor": 7 } }),
            );
            assert_eq!(frame, serde_json::from_str::<Value>(&protocol::encode(vsn, &expected)).unwrap(), "{vsn:?}");
        }
    }

    #[test]
    fn live_events_wait_for_the_join_to_finish() {
        let metrics = Metrics::new();
        let mut room = Room::default();
        let mut rx = subscribe(&mut room, 1, false, 0);
        room.publish_db_event(&metrics, &event(1));
        assert!(received(&mut rx).is_empty(), "held until the join reply has gone out");
        assert!(room.finish_resume(&metrics, 1, TOPIC, 0));
        room.publish_db_event(&metrics, &event(2));
        let frames = received(&mut rx);
        assert_eq!(cursors(&frames), [1, 2]);
        assert_eq!(frames[0]["topic"], TOPIC);
        assert_eq!(frames[0]["event"], "broadcast");
    }

    #[test]
    fn a_resume_never_repeats_what_the_replay_sent() {
        let metrics = Metrics::new();
        let mut room = Room::default();
        let mut rx = subscribe(&mut room, 1, false, 3);
        for id in [4, 5, 6] {
            room.publish_db_event(&metrics, &event(id));
        }
        // The replay read the log through 5.
        room.finish_resume(&metrics, 1, TOPIC, 5);
        room.publish_db_event(&metrics, &event(6));
        room.publish_db_event(&metrics, &event(7));
        assert_eq!(cursors(&received(&mut rx)), [6, 7]);
    }

    #[test]
    fn finishing_a_resume_of_a_subscription_gone_says_so() {
        let mut room = Room::default();
        let _rx = subscribe(&mut room, 1, false, 0);
        assert!(room.unsubscribe(1, TOPIC));
        assert!(!room.unsubscribe(1, TOPIC));
        assert!(!room.finish_resume(&Metrics::new(), 1, TOPIC, 0));
        assert!(room.is_empty());
    }

    #[test]
    fn a_broadcast_skips_its_sender_unless_it_asked_for_self() {
        let metrics = Metrics::new();
        let mut room = Room::default();
        let mut quiet = subscribe(&mut room, 1, false, 0);
        let mut echoed = subscribe(&mut room, 2, true, 0);
        let mut other = subscribe(&mut room, 3, false, 0);
        room.broadcast(&metrics, Some((1, TOPIC)), "typing:start", json!({ "who": 1 }));
        room.broadcast(&metrics, Some((2, TOPIC)), "typing:start", json!({ "who": 2 }));
        let who = |rx: &mut mpsc::Receiver<Message>| -> Vec<Value> {
            received(rx).iter().map(|f| f["payload"]["payload"]["who"].clone()).collect()
        };
        assert_eq!(who(&mut quiet), [json!(2)]);
        assert_eq!(who(&mut echoed), [json!(1), json!(2)]);
        assert_eq!(who(&mut other), [json!(1), json!(2)]);
    }

    #[test]
    fn subscribers_sharing_a_serializer_and_topic_share_one_encoding() {
        let encodings = std::cell::Cell::new(0);
        let mut cache = EncodeCache::new(|vsn, join_topic: &str| {
            encodings.set(encodings.get() + 1);
            db_frame(vsn, join_topic, &event(1))
        });
        let a = cache.get(Vsn::V1, TOPIC);
        let b = cache.get(Vsn::V1, TOPIC);
        cache.get(Vsn::V2, TOPIC);
        cache.get(Vsn::V1, "realtime:other");
        assert_eq!(a.as_str().as_ptr(), b.as_str().as_ptr(), "the same bytes, not a copy");
        assert_eq!((cache.encoded.len(), encodings.get()), (3, 3));
    }

    #[test]
    fn a_room_with_presence_only_stays() {
        let mut room = Room::default();
        room.presence.track(crate::presence::Owner::Local(1, TOPIC.into()), "ann", serde_json::Map::new());
        assert!(!room.is_empty());
    }
}
