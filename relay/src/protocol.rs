//! Phoenix / Supabase Realtime frames: the V1 serializer (JSON objects), the V2 serializer (JSON
//! arrays) and V2's binary user-broadcast push (kind 3). Outgoing broadcasts are always text.

use crate::auth;
use crate::errors::Refusal;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Vsn {
    V1,
    V2,
}

impl Vsn {
    /// `vsn` query parameter; absent means 1.0.0, as the server defaults.
    pub fn parse(vsn: Option<&str>) -> Result<Vsn, String> {
        match vsn {
            None => Ok(Vsn::V1),
            Some(v) if v.starts_with("1.") => Ok(Vsn::V1),
            Some(v) if v.starts_with("2.") => Ok(Vsn::V2),
            Some(v) => Err(format!("unsupported vsn {v}: expected 1.0.0 or 2.0.0")),
        }
    }
}

/// One message in either direction.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub join_ref: Option<String>,
    pub r#ref: Option<String>,
    pub topic: String,
    pub event: String,
    pub payload: Value,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("frame is not valid JSON: {0}")]
    Json(String),
    #[error("frame has the wrong shape: {0}")]
    Shape(&'static str),
    #[error("binary frame: {0}")]
    Binary(&'static str),
    /// The header was readable (so the sender can be answered) but the payload is refused.
    #[error("{reason}")]
    Payload { frame: Box<Frame>, reason: &'static str },
}

fn opt_string(value: &Value) -> Result<Option<String>, DecodeError> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        Value::Number(n) => Ok(Some(n.to_string())),
        _ => Err(DecodeError::Shape("refs must be strings or null")),
    }
}

pub fn decode_text(vsn: Vsn, text: &str) -> Result<Frame, DecodeError> {
    let value: Value = serde_json::from_str(text).map_err(|e| DecodeError::Json(e.to_string()))?;
    match vsn {
        Vsn::V2 => {
            let items =
                value.as_array().ok_or(DecodeError::Shape("expected [join_ref, ref, topic, event, payload]"))?;
            if items.len() < 5 {
                return Err(DecodeError::Shape("expected [join_ref, ref, topic, event, payload]"));
            }
            Ok(Frame {
                join_ref: opt_string(&items[0])?,
                r#ref: opt_string(&items[1])?,
                topic: items[2].as_str().ok_or(DecodeError::Shape("topic must be a string"))?.to_owned(),
                event: items[3].as_str().ok_or(DecodeError::Shape("event must be a string"))?.to_owned(),
                payload: items[4].clone(),
            })
        }
        Vsn::V1 => {
            let object = value.as_object().ok_or(DecodeError::Shape("expected an object"))?;
            let field = |name: &str| object.get(name).unwrap_or(&Value::Null);
            Ok(Frame {
                join_ref: opt_string(field("join_ref"))?,
                r#ref: opt_string(field("ref"))?,
                topic: field("topic").as_str().ok_or(DecodeError::Shape("topic must be a string"))?.to_owned(),
                event: field("event").as_str().ok_or(DecodeError::Shape("event must be a string"))?.to_owned(),
                payload: field("payload").clone(),
            })
        }
    }
}

/// A V2 binary user-broadcast push (kind 3), turned into the equivalent text `broadcast` push.
/// Only JSON payloads (encoding 1) are accepted: outgoing broadcasts are text.
pub fn decode_binary(bytes: &[u8]) -> Result<Frame, DecodeError> {
    let (&kind, rest) = bytes.split_first().ok_or(DecodeError::Binary("empty frame"))?;
    if kind != 3 {
        return Err(DecodeError::Binary("only kind 3 (user broadcast push) is accepted"));
    }
    if rest.len() < 6 {
        return Err(DecodeError::Binary("header too short"));
    }
    let lengths: Vec<usize> = rest[..5].iter().map(|&b| b as usize).collect();
    let encoding = rest[5];
    let mut body = &rest[6..];
    let mut take = |len: usize| -> Result<&[u8], DecodeError> {
        if body.len() < len {
            return Err(DecodeError::Binary("field longer than the frame"));
        }
        let (field, tail) = body.split_at(len);
        body = tail;
        Ok(field)
    };
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| DecodeError::Binary("header field is not UTF-8"));
    let join_ref = text(take(lengths[0])?)?;
    let r#ref = text(take(lengths[1])?)?;
    let topic = text(take(lengths[2])?)?;
    let user_event = text(take(lengths[3])?)?;
    // Metadata (realtime-js 2.119 sends `{"persist": ...}` when asked to store the message) is
    // skipped whatever it holds: client broadcasts are delivered, never stored.
    take(lengths[4])?;
    let non_empty = |s: String| (!s.is_empty()).then_some(s);
    let mut frame = Frame {
        join_ref: non_empty(join_ref),
        r#ref: non_empty(r#ref),
        topic,
        event: "broadcast".to_owned(),
        payload: json!({ "type": "broadcast", "event": user_event }),
    };
    let refuse = |frame: Frame, reason| Err(DecodeError::Payload { frame: Box::new(frame), reason });
    if encoding != 1 {
        return refuse(frame, "only JSON broadcast payloads (encoding 1) are accepted, not raw binary");
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(payload) => {
            frame.payload["payload"] = payload;
            Ok(frame)
        }
        Err(_) => refuse(frame, "the broadcast payload is not valid JSON"),
    }
}

/// What a client's frame asks for, read once from its topic, event and payload. A payload that
/// does not fit its event is kept as the refusal to answer with, because a frame for a topic
/// the connection has not joined (or from an earlier join) is answered for that first.
#[derive(Debug)]
pub(crate) enum ClientMessage {
    /// `heartbeat` on the `phoenix` topic.
    Heartbeat,
    Join(JoinRequest),
    /// Any other event: it concerns the joined channel of the frame's topic.
    Channel(ChannelMessage),
}

/// A `phx_join`: the token it acts with and its `config`. Also accepted, and ignored as the
/// relay has no use for them: `config.private` (the extension authorizes every channel) and
/// `config.presence.enabled` (presence is always on).
#[derive(Debug, Default, PartialEq)]
pub(crate) struct JoinRequest {
    pub access_token: Option<String>,
    /// `config.broadcast.self`: the sender receives its own broadcasts.
    pub self_broadcast: bool,
    /// `config.broadcast.ack`: reply to each broadcast once it is fanned out.
    pub ack: bool,
    /// `config.presence.key`, if not empty.
    pub presence_key: Option<String>,
    /// Where a resuming client's log replay starts.
    pub cursor: Option<i64>,
    /// `config.postgres_changes`: the filters asked for, echoed in the join reply.
    pub postgres_changes: Vec<Value>,
}

#[derive(Debug)]
pub(crate) enum ChannelMessage {
    Leave,
    Broadcast(Result<Broadcast, Refusal>),
    Presence(Result<PresenceChange, Refusal>),
    /// A refreshed token; none when the frame carries no token (or a Supabase API key).
    AccessToken(Option<String>),
    Unknown(String),
}

#[derive(Debug, PartialEq)]
pub(crate) struct Broadcast {
    pub event: String,
    pub payload: Value,
}

#[derive(Debug, PartialEq)]
pub(crate) enum PresenceChange {
    Track(Map<String, Value>),
    Untrack,
}

impl ClientMessage {
    pub fn parse(frame: &Frame) -> ClientMessage {
        let payload = &frame.payload;
        match (frame.topic.as_str(), frame.event.as_str()) {
            ("phoenix", "heartbeat") => ClientMessage::Heartbeat,
            (_, "phx_join") => ClientMessage::Join(JoinRequest::parse(payload)),
            (_, event) => ClientMessage::Channel(match event {
                "phx_leave" => ChannelMessage::Leave,
                "broadcast" => ChannelMessage::Broadcast(Broadcast::parse(payload)),
                "presence" => ChannelMessage::Presence(PresenceChange::parse(payload)),
                "access_token" => ChannelMessage::AccessToken(token(payload)),
                other => ChannelMessage::Unknown(other.to_owned()),
            }),
        }
    }
}

/// The `access_token` of a payload. realtime-js sends a Supabase API key when it has no token:
/// that is no token.
fn token(payload: &Value) -> Option<String> {
    payload["access_token"].as_str().filter(|t| !auth::is_supabase_key(t)).map(str::to_owned)
}

/// A boolean config value: JSON booleans or "true"/"false" in any case.
fn flag(value: &Value) -> bool {
    match value {
        Value::Bool(b) => *b,
        Value::String(s) => s.eq_ignore_ascii_case("true"),
        _ => false,
    }
}

impl JoinRequest {
    fn parse(payload: &Value) -> JoinRequest {
        let config = &payload["config"];
        JoinRequest {
            access_token: token(payload),
            self_broadcast: flag(&config["broadcast"]["self"]),
            ack: flag(&config["broadcast"]["ack"]),
            presence_key: config["presence"]["key"].as_str().filter(|k| !k.is_empty()).map(str::to_owned),
            cursor: resume_cursor(config),
            postgres_changes: config["postgres_changes"].as_array().cloned().unwrap_or_default(),
        }
    }
}

/// The resume cursor a client passes in its join config: `config.broadcast.cursor` (the one
/// place realtime-js forwards unchanged) or `config.cursor`; a number or a numeric string.
fn resume_cursor(config: &Value) -> Option<i64> {
    let cursor = match &config["broadcast"]["cursor"] {
        Value::Null => &config["cursor"],
        given => given,
    };
    match cursor {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
    .filter(|c| *c >= 0)
}

impl Broadcast {
    fn parse(payload: &Value) -> Result<Broadcast, Refusal> {
        let event = payload["event"].as_str().ok_or(Refusal::BroadcastWithoutEvent)?;
        let inner = payload.get("payload").cloned().unwrap_or_else(|| json!({}));
        Ok(Broadcast { event: event.to_owned(), payload: inner })
    }
}

impl PresenceChange {
    fn parse(payload: &Value) -> Result<PresenceChange, Refusal> {
        match payload["event"].as_str() {
            Some("track") => {
                payload["payload"].as_object().cloned().map(PresenceChange::Track).ok_or(Refusal::TrackNotAMap)
            }
            Some("untrack") => Ok(PresenceChange::Untrack),
            _ => Err(Refusal::PresenceEvent),
        }
    }
}

pub fn encode(vsn: Vsn, frame: &Frame) -> String {
    match vsn {
        Vsn::V2 => json!([frame.join_ref, frame.r#ref, frame.topic, frame.event, frame.payload]).to_string(),
        // V1 output never carries join_ref.
        Vsn::V1 => json!({
            "topic": frame.topic, "event": frame.event, "payload": frame.payload, "ref": frame.r#ref
        })
        .to_string(),
    }
}

/// A database event's push on `topic`: `{"type":"broadcast","event":…,"payload":…}`, its payload
/// spliced in as the JSON text the log gave (never parsed into a tree and serialized again: the
/// relay forwards it) with the cursor added as its last key. JSON readers keep the last of a
/// repeated key, so the cursor wins over one the payload might carry.
pub fn db_event_push(vsn: Vsn, topic: &str, event: &str, payload: &RawValue, cursor: i64) -> String {
    let quoted = |text: &str| Value::from(text).to_string();
    let body =
        format!(r#"{{"type":"broadcast","event":{},"payload":{}}}"#, quoted(event), with_cursor(payload, cursor));
    match vsn {
        Vsn::V2 => format!(r#"[null,null,{},"broadcast",{body}]"#, quoted(topic)),
        Vsn::V1 => format!(r#"{{"topic":{},"event":"broadcast","payload":{body},"ref":null}}"#, quoted(topic)),
    }
}

/// An object payload with `"cursor"` added last; any other payload as it is.
fn with_cursor(payload: &RawValue, cursor: i64) -> std::borrow::Cow<'_, str> {
    let text = payload.get().trim();
    match text.strip_prefix('{').and_then(|inner| inner.strip_suffix('}')) {
        Some(members) if members.trim().is_empty() => format!(r#"{{"cursor":{cursor}}}"#).into(),
        Some(members) => format!(r#"{{{members},"cursor":{cursor}}}"#).into(),
        None => text.into(),
    }
}

pub fn reply(request: &Frame, status: &str, response: Value) -> Frame {
    Frame {
        join_ref: request.join_ref.clone(),
        r#ref: request.r#ref.clone(),
        topic: request.topic.clone(),
        event: "phx_reply".to_owned(),
        payload: json!({ "status": status, "response": response }),
    }
}

pub fn error_reply(request: &Frame, reason: impl Into<String>) -> Frame {
    reply(request, "error", json!({ "reason": reason.into() }))
}

/// A push from the server to everyone on a topic: no refs.
pub fn push(topic: &str, event: &str, payload: Value) -> Frame {
    Frame { join_ref: None, r#ref: None, topic: topic.to_owned(), event: event.to_owned(), payload }
}

/// A push belonging to one join (presence_state, system): join_ref set, no ref.
pub fn channel_push(topic: &str, join_ref: Option<&str>, event: &str, payload: Value) -> Frame {
    Frame {
        join_ref: join_ref.map(str::to_owned),
        r#ref: None,
        topic: topic.to_owned(),
        event: event.to_owned(),
        payload,
    }
}

/// phx_close / phx_error for a join: ref = join_ref, as Phoenix sends them.
pub fn channel_end(topic: &str, join_ref: Option<&str>, event: &str) -> Frame {
    Frame {
        join_ref: join_ref.map(str::to_owned),
        r#ref: join_ref.map(str::to_owned),
        topic: topic.to_owned(),
        event: event.to_owned(),
        payload: json!({}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_event_push_adds_its_cursor_last_to_an_object_payload() {
        let pushed = |payload: &str| {
            let raw = RawValue::from_string(payload.to_owned()).unwrap();
            let frame: Value = serde_json::from_str(&db_event_push(Vsn::V2, "realtime:t", "e", &raw, 9)).unwrap();
            frame[4]["payload"].clone()
        };
        assert_eq!(pushed(r#"{"a": 1}"#), json!({ "a": 1, "cursor": 9 }));
        assert_eq!(pushed(" { } "), json!({ "cursor": 9 }));
        // A payload's own "cursor" (a custom event's) is overridden: the last key wins.
        assert_eq!(pushed(r#"{"cursor":"mine"}"#), json!({ "cursor": 9 }));
        // Anything but an object is sent as it is.
        assert_eq!(pushed("[1,2]"), json!([1, 2]));
        assert_eq!(pushed(r#""text""#), json!("text"));
    }

    #[test]
    fn a_database_event_push_is_the_push_either_serializer_writes() {
        let raw = RawValue::from_string(r#"{"message":{"content":"say \"hi\""}}"#.to_owned()).unwrap();
        let payload = json!({ "type": "broadcast", "event": "message:created",
                              "payload": { "message": { "content": "say \"hi\"" }, "cursor": 3 } });
        for vsn in [Vsn::V1, Vsn::V2] {
            let spliced: Value =
                serde_json::from_str(&db_event_push(vsn, "realtime:org:o", "message:created", &raw, 3)).unwrap();
            let encoded: Value =
                serde_json::from_str(&encode(vsn, &push("realtime:org:o", "broadcast", payload.clone()))).unwrap();
            assert_eq!(spliced, encoded, "{vsn:?}");
        }
    }

    #[test]
    fn v2_and_v1_text_frames_round_trip() {
        let frame = decode_text(Vsn::V2, r#"["1","1","realtime:room1","phx_join",{"config":{}}]"#).unwrap();
        assert_eq!(frame.join_ref.as_deref(), Some("1"));
        assert_eq!(frame.topic, "realtime:room1");
        let reply = reply(&frame, "ok", json!({"postgres_changes": []}));
        assert_eq!(
            encode(Vsn::V2, &reply),
            r#"["1","1","realtime:room1","phx_reply",{"response":{"postgres_changes":[]},"status":"ok"}]"#
        );
        let v1 = decode_text(Vsn::V1, r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"7"}"#).unwrap();
        assert_eq!(v1.join_ref, None);
        let out: Value = serde_json::from_str(&encode(Vsn::V1, &reply_to_heartbeat(&v1))).unwrap();
        assert_eq!(out["ref"], "7");
        assert!(out.get("join_ref").is_none(), "V1 output never has join_ref");
    }

    fn reply_to_heartbeat(frame: &Frame) -> Frame {
        reply(frame, "ok", json!({}))
    }

    #[test]
    fn malformed_text_frames_are_errors_not_panics() {
        assert!(matches!(decode_text(Vsn::V2, "not json"), Err(DecodeError::Json(_))));
        assert!(decode_text(Vsn::V2, r#"{"topic":"x"}"#).is_err());
        assert!(decode_text(Vsn::V2, r#"[null,"1",5,"e",{}]"#).is_err());
        assert!(decode_text(Vsn::V2, r#"["1","2"]"#).is_err());
        assert!(decode_text(Vsn::V1, r#"[1,2,3,4,5]"#).is_err());
        assert!(decode_text(Vsn::V1, r#"{"topic":"t","event":"e","ref":{}}"#).is_err());
    }

    #[test]
    fn binary_kind_3_becomes_a_broadcast_push() {
        let mut bytes = vec![3, 1, 1, 14, 7, 0, 1];
        bytes.extend_from_slice(b"13realtime:room1message{\"text\":\"hi\"}");
        let frame = decode_binary(&bytes).unwrap();
        assert_eq!(frame.join_ref.as_deref(), Some("1"));
        assert_eq!(frame.r#ref.as_deref(), Some("3"));
        assert_eq!(frame.topic, "realtime:room1");
        assert_eq!(frame.event, "broadcast");
        assert_eq!(frame.payload, json!({"type":"broadcast","event":"message","payload":{"text":"hi"}}));
    }

    #[test]
    fn binary_kind_3_with_metadata_is_a_broadcast_all_the_same() {
        // realtime-js 2.119: `channel.send({type: 'broadcast', event: 'note', payload: {n: 1}, persist: true})`.
        let mut bytes = vec![3, 1, 1, 14, 4, 16, 1];
        bytes.extend_from_slice(b"13realtime:room1note{\"persist\":true}{\"n\":1}");
        let frame = decode_binary(&bytes).unwrap();
        assert_eq!(frame.payload, json!({"type":"broadcast","event":"note","payload":{"n":1}}));
        let mut ttl = vec![3, 0, 0, 1, 1, 22, 1];
        ttl.extend_from_slice(b"te{\"persist\":{\"ttl\":60}}[]");
        assert_eq!(decode_binary(&ttl).unwrap().payload["payload"], json!([]));
    }

    #[test]
    fn bad_binary_frames_are_refused_with_a_reason() {
        assert_eq!(decode_binary(&[]), Err(DecodeError::Binary("empty frame")));
        assert!(decode_binary(&[0, 1, 1, 1, 1]).is_err());
        assert_eq!(
            decode_binary(&[3, 9, 0, 0, 0, 0, 1, b'x']),
            Err(DecodeError::Binary("field longer than the frame"))
        );
        let mut raw = vec![3, 0, 0, 1, 1, 0, 0];
        raw.extend_from_slice(b"tebinary");
        match decode_binary(&raw) {
            Err(DecodeError::Payload { frame, .. }) => assert_eq!((frame.topic.as_str(), frame.r#ref), ("t", None)),
            other => panic!("encoding 0 (raw binary) is refused with an answerable frame: {other:?}"),
        }
    }

    /// The message of a V1 frame and of the same frame in V2, which must agree.
    fn parse_both(topic: &str, event: &str, payload: Value) -> ClientMessage {
        let v1 = json!({ "topic": topic, "event": event, "payload": payload, "ref": "2", "join_ref": "1" });
        let v2 = json!(["1", "2", topic, event, payload]);
        let from_v1 = ClientMessage::parse(&decode_text(Vsn::V1, &v1.to_string()).unwrap());
        let from_v2 = ClientMessage::parse(&decode_text(Vsn::V2, &v2.to_string()).unwrap());
        assert_eq!(format!("{from_v1:?}"), format!("{from_v2:?}"), "{event} reads the same in both versions");
        from_v1
    }

    fn channel_message(event: &str, payload: Value) -> ChannelMessage {
        match parse_both("realtime:room1", event, payload) {
            ClientMessage::Channel(message) => message,
            other => panic!("{event} is a channel message, not {other:?}"),
        }
    }

    fn join(payload: Value) -> JoinRequest {
        match parse_both("realtime:room1", "phx_join", payload) {
            ClientMessage::Join(request) => request,
            other => panic!("not a join: {other:?}"),
        }
    }

    #[test]
    fn heartbeat_only_on_the_phoenix_topic() {
        assert!(matches!(parse_both("phoenix", "heartbeat", json!({})), ClientMessage::Heartbeat));
        assert!(matches!(channel_message("heartbeat", json!({})), ChannelMessage::Unknown(e) if e == "heartbeat"));
    }

    #[test]
    fn a_join_reads_its_config() {
        let request = join(json!({
            "access_token": "eyJ.token",
            "config": {
                "broadcast": { "self": true, "ack": "TRUE", "cursor": "42" },
                "presence": { "key": "agent-1", "enabled": true },
                "private": true,
                "postgres_changes": [{ "event": "*", "schema": "public" }],
            },
        }));
        assert_eq!(
            request,
            JoinRequest {
                access_token: Some("eyJ.token".into()),
                self_broadcast: true,
                ack: true,
                presence_key: Some("agent-1".into()),
                cursor: Some(42),
                postgres_changes: vec![json!({ "event": "*", "schema": "public" })],
            }
        );
        // The topic is checked by the join itself, which refuses a name without `realtime:`.
        assert!(matches!(parse_both("phoenix", "phx_join", json!({})), ClientMessage::Join(_)));
    }

    #[test]
    fn a_join_config_that_does_not_fit_reads_as_the_defaults() {
        for payload in [
            json!({}),
            json!(null),
            json!("config"),
            json!({ "config": [] }),
            json!({ "config": { "broadcast": { "self": "yes", "ack": 1 } } }),
            json!({ "config": { "presence": { "key": "" }, "postgres_changes": { "event": "*" } } }),
            json!({ "config": { "broadcast": { "cursor": -1 } } }),
            json!({ "config": { "cursor": "soon" } }),
            json!({ "access_token": 7 }),
        ] {
            assert_eq!(join(payload.clone()), JoinRequest::default(), "{payload}");
        }
    }

    #[test]
    fn a_join_cursor_is_a_number_or_a_numeric_string_in_either_place() {
        let cursor = |config: Value| join(json!({ "config": config })).cursor;
        assert_eq!(cursor(json!({ "broadcast": { "cursor": 7 } })), Some(7));
        assert_eq!(cursor(json!({ "cursor": "8" })), Some(8));
        assert_eq!(cursor(json!({ "broadcast": { "cursor": 7 }, "cursor": 8 })), Some(7), "broadcast.cursor first");
        assert_eq!(cursor(json!({ "cursor": 0 })), Some(0));
    }

    #[test]
    fn a_supabase_api_key_is_no_token() {
        let key = format!("{}abc", auth::SUPABASE_KEY_PREFIX);
        assert_eq!(join(json!({ "access_token": key })).access_token, None);
        assert!(matches!(
            channel_message("access_token", json!({ "access_token": key })),
            ChannelMessage::AccessToken(None)
        ));
        assert!(matches!(
            channel_message("access_token", json!({ "access_token": "eyJ.new" })),
            ChannelMessage::AccessToken(Some(t)) if t == "eyJ.new"
        ));
        assert!(matches!(channel_message("access_token", json!({})), ChannelMessage::AccessToken(None)));
    }

    #[test]
    fn leave_and_unknown_events() {
        assert!(matches!(channel_message("phx_leave", json!({})), ChannelMessage::Leave));
        assert!(matches!(channel_message("shout", json!({})), ChannelMessage::Unknown(e) if e == "shout"));
    }

    #[test]
    fn a_broadcast_needs_an_event_and_defaults_its_payload() {
        let broadcast = |payload: Value| match channel_message("broadcast", payload) {
            ChannelMessage::Broadcast(broadcast) => broadcast,
            other => panic!("not a broadcast: {other:?}"),
        };
        let sent = json!({ "type": "broadcast", "event": "message", "payload": { "text": "hi" } });
        assert_eq!(broadcast(sent).unwrap(), Broadcast { event: "message".into(), payload: json!({ "text": "hi" }) });
        assert_eq!(broadcast(json!({ "event": "ping" })).unwrap().payload, json!({}));
        assert_eq!(broadcast(json!({ "event": "ping", "payload": null })).unwrap().payload, Value::Null);
        for malformed in [json!({}), json!({ "event": 3 }), json!([]), json!(null)] {
            assert!(matches!(broadcast(malformed), Err(Refusal::BroadcastWithoutEvent)));
        }
    }

    #[test]
    fn presence_is_track_with_a_map_or_untrack() {
        let presence = |payload: Value| match channel_message("presence", payload) {
            ChannelMessage::Presence(change) => change,
            other => panic!("not presence: {other:?}"),
        };
        let track = presence(json!({ "type": "presence", "event": "track", "payload": { "online_at": 1 } }));
        assert_eq!(track.unwrap(), PresenceChange::Track(json!({ "online_at": 1 }).as_object().unwrap().clone()));
        assert_eq!(presence(json!({ "event": "untrack" })).unwrap(), PresenceChange::Untrack);
        for not_a_map in [json!({ "event": "track" }), json!({ "event": "track", "payload": [1] })] {
            assert!(matches!(presence(not_a_map), Err(Refusal::TrackNotAMap)));
        }
        for other in [json!({}), json!({ "event": "sync" }), json!({ "event": true }), json!(null)] {
            assert!(matches!(presence(other), Err(Refusal::PresenceEvent)));
        }
    }

    #[test]
    fn vsn_defaults_to_one() {
        assert_eq!(Vsn::parse(None), Ok(Vsn::V1));
        assert_eq!(Vsn::parse(Some("2.0.0")), Ok(Vsn::V2));
        assert!(Vsn::parse(Some("3.0.0")).is_err());
    }
}
