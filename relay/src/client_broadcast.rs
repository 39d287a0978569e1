//! What a client may broadcast, over the socket or `POST /api/broadcast`: never something a
//! subscriber could take for a database event. The database's event names are reserved on every
//! channel, and the `cursor` a database event carries (which pages resume from) never comes from
//! a client. Custom events of `campfire.broadcast()` carry a cursor too; their names are reserved
//! when the operator lists them (`--reserved-events`). And the one broadcast the relay sends on a
//! client's behalf: the typing:stop of a sender that vanished.

use serde_json::{Value, json};

/// The events the extension publishes.
pub const DATABASE_EVENTS: &[&str] = &[
    "message:created",
    "message:updated",
    "conversation:created",
    "conversation:updated",
    "conversation:deleted",
    "read:receipt",
    "agent:status:online",
    "agent:status:offline",
];

/// Why a client broadcast is refused; its text is the reason the sender gets.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("payload_size_exceeded: the payload is {size} bytes, the limit is {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("ReservedEvent: {0} is an event of the database; a client broadcast may not use its name")]
    ReservedEvent(String),
    #[error("ReservedField: payload.cursor is set by the database on its events; a client broadcast may not carry one")]
    Cursor,
}

pub struct Rules {
    /// Lower case: realtime-js matches event names regardless of case.
    reserved: Vec<String>,
    max_payload_bytes: usize,
}

impl Rules {
    /// The database's events and the operator's `extra` ones are reserved.
    pub fn new(extra: &[String], max_payload_bytes: usize) -> Rules {
        let reserved = DATABASE_EVENTS.iter().copied().chain(extra.iter().map(String::as_str));
        Rules { reserved: reserved.map(str::to_lowercase).collect(), max_payload_bytes }
    }

    /// Whether a client may broadcast `event` with `payload`.
    pub fn check(&self, event: &str, payload: &Value) -> Result<(), Refusal> {
        let size = payload.to_string().len();
        if size > self.max_payload_bytes {
            return Err(Refusal::TooLarge { size, limit: self.max_payload_bytes });
        }
        let lower = event.to_lowercase();
        if self.reserved.contains(&lower) {
            return Err(Refusal::ReservedEvent(event.to_owned()));
        }
        if payload.get("cursor").is_some() {
            return Err(Refusal::Cursor);
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_typing_stop_for_a_vanished_sender_is_its_typing_start_ended_by_the_relay() {
        let stopped = stopped_typing(json!({ "who": "agent", "isTyping": true }));
        assert_eq!(stopped, json!({ "who": "agent", "isTyping": false, "endedBy": "relay" }));
        assert_eq!(stopped_typing(json!("not a map")), json!("not a map"));
    }

    #[test]
    fn database_events_are_reserved_in_any_case_and_extra_ones_too() {
        let rules = Rules::new(&["Invoice:Paid".to_owned()], 100);
        assert_eq!(rules.check("typing:start", &json!({"isTyping": true})), Ok(()));
        for event in ["agent:status:online", "MESSAGE:Created", "invoice:paid", "read:receipt"] {
            assert_eq!(rules.check(event, &json!({})), Err(Refusal::ReservedEvent(event.to_owned())));
        }
        // The Kelvin sign lowers to a plain k, as JavaScript's toLowerCase does.
        let kelvin = Rules::new(&["ok".to_owned()], 100);
        assert!(kelvin.check("o\u{212A}", &json!({})).is_err());
    }

    #[test]
    fn no_client_broadcast_carries_a_cursor_or_exceeds_the_payload_limit() {
        let rules = Rules::new(&[], 24);
        assert_eq!(rules.check("typing:start", &json!({"cursor": 1})), Err(Refusal::Cursor));
        assert_eq!(rules.check("typing:start", &json!({"cursor": null})), Err(Refusal::Cursor));
        assert_eq!(
            rules.check("typing:start", &json!({"at": {"cursor": 1}})),
            Ok(()),
            "only the top level is the database's"
        );
        assert_eq!(
            rules.check("x", &json!({"a": "0123456789abcdefghi"})),
            Err(Refusal::TooLarge { size: 27, limit: 24 })
        );
    }
}
