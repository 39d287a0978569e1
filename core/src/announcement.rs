//! What a `campfire_events` notification says, once opened from its seal: the extension writes it
//! (`pg_campfire`'s `events::notify`), the relay reads it (`db.rs`).
//!
//! A notification accounts for every id from `first` through `last`. `events` holds those of them
//! that were logged (rolled-back ids have none), unless they were too large to send inline: then
//! it is absent, and the relay reads the range from the log.

use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Announcement<Events> {
    pub first: i64,
    pub last: i64,
    #[serde(default = "Option::default", skip_serializing_if = "Option::is_none")]
    pub events: Option<Events>,
}

/// One event of the log as it travels: its cursor, channel, name and JSON payload.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct LoggedEvent<Payload> {
    pub id: i64,
    pub topic: String,
    pub event: String,
    pub payload: Payload,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn an_announcement_reads_back_as_written() {
        let event =
            LoggedEvent { id: 7, topic: "org:o".into(), event: "message:created".into(), payload: json!({"a": 1}) };
        let note = Announcement { first: 6, last: 7, events: Some(vec![event]) };
        let text = serde_json::to_string(&note).unwrap();
        assert_eq!(
            text,
            r#"{"first":6,"last":7,"events":[{"id":7,"topic":"org:o","event":"message:created","payload":{"a":1}}]}"#
        );
        assert_eq!(serde_json::from_str::<Announcement<Vec<LoggedEvent<Value>>>>(&text).unwrap(), note);
    }

    #[test]
    fn a_range_alone_has_no_events() {
        let note: Announcement<Vec<LoggedEvent<Value>>> = serde_json::from_str(r#"{"first":1,"last":9}"#).unwrap();
        assert_eq!(note.events, None);
        assert_eq!(serde_json::to_string(&note).unwrap(), r#"{"first":1,"last":9}"#);
    }
}
