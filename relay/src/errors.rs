//! The relay's one model of refusals and errors: what a client hears when a join or a frame is
//! refused, why a connection closes (its close code and metric label), what a SQLSTATE from the
//! extension means, and the JSON body of every HTTP error. Adding a refusal is one arm here.

use crate::auth::AuthError;
use crate::client_broadcast;
use crate::db::DbError;
use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::time::Duration;

/// A join or a frame refused: its `Display` is the reason of the Phoenix error reply, the code
/// realtime-js shows first where Supabase Realtime gives one.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// A frame for a topic this connection has not joined (or not named `realtime:…`).
    #[error("unmatched topic")]
    UnmatchedTopic,
    #[error("TopicNameRequired: You must provide a topic name")]
    TopicNameRequired,
    /// Over the join rate; the limit's own explanation follows.
    #[error("ClientJoinRateLimitReached: {0}")]
    JoinRate(String),
    #[error("ChannelRateLimitReached: Too many channels")]
    TooManyChannels,
    /// The join's credential was refused.
    #[error("{code}: {0}", code = .0.code())]
    Credential(CredentialError),
    /// The extension does not let the credential read the channel, for `reason`.
    #[error("Unauthorized: You do not have permissions to read from this Channel topic: {name} ({reason})")]
    ReadDenied { name: String, reason: String },
    #[error("InvalidChannelName: {0}")]
    InvalidChannelName(String),
    #[error("UnableToConnectToProject: the database is unavailable")]
    DatabaseUnavailable,
    #[error("unknown event {0}")]
    UnknownEvent(String),
    #[error("a broadcast needs payload.event (a string)")]
    BroadcastWithoutEvent,
    /// Over the broadcast rate; the limit's own explanation follows.
    #[error("RateLimitReached: {0}")]
    BroadcastRate(String),
    /// The channel (named without `realtime:`) was joined without the right to broadcast.
    #[error("Unauthorized: you may not broadcast on {0}")]
    BroadcastDenied(String),
    /// A broadcast the client-broadcast rules refuse (size, reserved names).
    #[error(transparent)]
    BroadcastRule(client_broadcast::Refusal),
    /// The channel (named without `realtime:`) was joined without the right to track presence.
    #[error("Unauthorized: you may not track presence on {0}")]
    TrackDenied(String),
    #[error("Presence track payload must be a map")]
    TrackNotAMap,
    #[error("Track message size exceeded")]
    TrackTooLarge,
    #[error("presence event must be track or untrack")]
    PresenceEvent,
    /// A binary frame whose header was read but whose payload is refused, for this reason.
    #[error("{0}")]
    Payload(&'static str),
}

impl Refusal {
    /// The `reason` label of `campfire_drops_total` this refusal counts under, if it drops a
    /// message some subscriber would otherwise have received.
    pub fn drop_label(&self) -> Option<&'static str> {
        match self {
            Refusal::BroadcastDenied(_) => Some("unauthorized"),
            Refusal::BroadcastRule(client_broadcast::Refusal::TooLarge { .. }) => Some("payload_too_large"),
            _ => None,
        }
    }
}

/// Why a joined channel ends while the connection stays: the message of the `system` error sent
/// before its `phx_close`.
#[derive(Debug, thiserror::Error)]
pub enum ChannelEnd {
    /// The connection joined the same channel again under another topic, `0`.
    #[error(
        "DuplicateJoin: this connection joined the same channel again as {0}; \
         one subscription per channel per connection"
    )]
    JoinedAgainAs(String),
    /// The extension no longer lets the channel's credential read it (named without `realtime:`).
    #[error("You no longer have permission to read from this Channel topic: {0}")]
    ReadRevoked(String),
    #[error("Token has expired")]
    TokenExpired,
    /// The token a client refreshed the channel with was refused.
    #[error(transparent)]
    Credential(CredentialError),
}

/// A credential (a JWT or a widget session secret) that could not be turned into an identity.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error(transparent)]
    Token(#[from] AuthError),
    /// The extension did not accept the widget session secret; its message.
    #[error("{0}")]
    Secret(String),
    /// The database could not be asked about the widget session secret.
    #[error("{0}")]
    Unavailable(String),
}

impl CredentialError {
    /// What the database said about a widget session secret it did not turn into claims.
    pub fn from_secret_lookup(err: DbError) -> CredentialError {
        match err {
            DbError::Unavailable(_) | DbError::TimedOut(_) => CredentialError::Unavailable(err.to_string()),
            _ => CredentialError::Secret(err.to_string()),
        }
    }

    /// The code realtime-js shows before the message, as Supabase Realtime does.
    pub fn code(&self) -> &'static str {
        match self {
            CredentialError::Token(err) => err.code(),
            CredentialError::Secret(_) => AuthError::BadSecret.code(),
            CredentialError::Unavailable(_) => "UnableToConnectToProject",
        }
    }

    /// The status of an HTTP exchange that cannot go on without the credential.
    pub fn status(&self) -> StatusCode {
        match self {
            CredentialError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNAUTHORIZED,
        }
    }
}

/// Why a connection ends: the close frame's reason text, its close code, and the `reason` label
/// of `campfire_disconnects_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    ClientClosed,
    TransportError,
    IdleTimeout,
    ShuttingDown,
    /// Heartbeats faster than the limit: a client that keeps to the protocol sends one each 25 s.
    TooManyHeartbeats,
    SendQueueFull,
    ReplayStalled,
    WriteTimedOut,
    /// The connection was ended with no reason given.
    Closed,
}

impl CloseReason {
    /// The reason the close frame gives.
    pub fn text(self) -> &'static str {
        match self {
            CloseReason::ClientClosed => "client closed",
            CloseReason::TransportError => "transport error",
            CloseReason::IdleTimeout => "idle timeout",
            CloseReason::ShuttingDown => "server shutting down",
            CloseReason::TooManyHeartbeats => "rate limit: too many heartbeats",
            CloseReason::SendQueueFull => "slow consumer: send queue full",
            CloseReason::ReplayStalled => "slow consumer: replay stalled",
            CloseReason::WriteTimedOut => "slow consumer: write timed out",
            CloseReason::Closed => "closed",
        }
    }

    /// The WebSocket close code: 1013 (try again later) for a slow consumer, 1001 (going away)
    /// at shutdown, 1008 (policy violation) over a limit, else 1000.
    pub fn code(self) -> u16 {
        match self {
            CloseReason::SendQueueFull | CloseReason::ReplayStalled | CloseReason::WriteTimedOut => 1013,
            CloseReason::ShuttingDown => 1001,
            CloseReason::TooManyHeartbeats => 1008,
            _ => 1000,
        }
    }

    /// The `reason` label of `campfire_disconnects_total`: the kind, without the detail.
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::SendQueueFull | CloseReason::ReplayStalled | CloseReason::WriteTimedOut => "slow consumer",
            CloseReason::TooManyHeartbeats => "rate limit",
            other => other.text(),
        }
    }
}

/// Every close reason with what it must say: its text, close code and label.
#[cfg(test)]
pub(crate) const CLOSE_REASONS: [(CloseReason, &str, u16, &str); 9] = [
    (CloseReason::ClientClosed, "client closed", 1000, "client closed"),
    (CloseReason::TransportError, "transport error", 1000, "transport error"),
    (CloseReason::IdleTimeout, "idle timeout", 1000, "idle timeout"),
    (CloseReason::ShuttingDown, "server shutting down", 1001, "server shutting down"),
    (CloseReason::TooManyHeartbeats, "rate limit: too many heartbeats", 1008, "rate limit"),
    (CloseReason::SendQueueFull, "slow consumer: send queue full", 1013, "slow consumer"),
    (CloseReason::ReplayStalled, "slow consumer: replay stalled", 1013, "slow consumer"),
    (CloseReason::WriteTimedOut, "slow consumer: write timed out", 1013, "slow consumer"),
    (CloseReason::Closed, "closed", 1000, "closed"),
];

/// Tests name a close reason by its text.
#[cfg(test)]
impl From<&str> for CloseReason {
    fn from(text: &str) -> CloseReason {
        let row = CLOSE_REASONS.iter().find(|(_, t, ..)| *t == text);
        row.unwrap_or_else(|| panic!("no close reason {text:?}")).0
    }
}

/// The SQLSTATEs the extension raises to say what was wrong with a call, each with the HTTP
/// status it answers; any other SQLSTATE is an internal error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlError {
    /// 22023: a bad argument (given to `authorize_channel`, a bad channel name).
    InvalidParameter,
    /// 22001: a value longer than allowed (message content over 4000 characters).
    StringTooLong,
    /// 22P02: text that is not a value of its type.
    InvalidText,
    /// 23502: a required value missing.
    NotNull,
    /// 22003: a number out of range.
    OutOfRange,
    /// 28000: the claims do not identify anyone the call accepts.
    Unauthenticated,
    /// 42501: the caller may not do this.
    Forbidden,
    /// P0002: no such row (or none the caller may see).
    NotFound,
    /// 55000: the row is not in a state that allows the change.
    WrongState,
    /// 23505: a duplicate.
    Duplicate,
    /// 55P03: a row the call needs stayed locked by another transaction past the lock timeout.
    LockNotAvailable,
}

impl SqlError {
    const SQLSTATES: [(SqlError, &'static str); 11] = [
        (SqlError::InvalidParameter, "22023"),
        (SqlError::StringTooLong, "22001"),
        (SqlError::InvalidText, "22P02"),
        (SqlError::NotNull, "23502"),
        (SqlError::OutOfRange, "22003"),
        (SqlError::Unauthenticated, "28000"),
        (SqlError::Forbidden, "42501"),
        (SqlError::NotFound, "P0002"),
        (SqlError::WrongState, "55000"),
        (SqlError::Duplicate, "23505"),
        (SqlError::LockNotAvailable, "55P03"),
    ];

    pub fn from_sqlstate(code: &str) -> Option<SqlError> {
        SqlError::SQLSTATES.iter().find(|(_, c)| *c == code).map(|(e, _)| *e)
    }

    /// The database error a query failed with, and what it means, if its SQLSTATE is one of these.
    pub fn of(err: &tokio_postgres::Error) -> Option<(SqlError, &tokio_postgres::error::DbError)> {
        let db = err.as_db_error()?;
        Some((SqlError::from_sqlstate(db.code().code())?, db))
    }

    pub fn status(self) -> StatusCode {
        match self {
            SqlError::InvalidParameter
            | SqlError::StringTooLong
            | SqlError::InvalidText
            | SqlError::NotNull
            | SqlError::OutOfRange => StatusCode::BAD_REQUEST,
            SqlError::Unauthenticated => StatusCode::UNAUTHORIZED,
            SqlError::Forbidden => StatusCode::FORBIDDEN,
            SqlError::NotFound => StatusCode::NOT_FOUND,
            SqlError::WrongState | SqlError::Duplicate => StatusCode::CONFLICT,
            SqlError::LockNotAvailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// An HTTP error: a status and the JSON body `{"error": message}`. The SQL API's routes also
/// name the SQLSTATE (`"code"`, null when the error is not the database's).
#[derive(Debug)]
pub struct HttpError {
    pub status: StatusCode,
    pub message: String,
    /// `Some` on the SQL API's routes: the SQLSTATE, if the database raised the error.
    sqlstate: Option<Option<String>>,
    retry_after: Option<u64>,
}

impl HttpError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> HttpError {
        HttpError { status, message: message.into(), sqlstate: None, retry_after: None }
    }

    /// 429 with `Retry-After`: the caller did `what` too often.
    pub fn too_many(what: &str, retry: Duration) -> HttpError {
        let seconds = retry.as_secs().max(1);
        let mut error = HttpError::new(StatusCode::TOO_MANY_REQUESTS, format!("too many {what}; retry in {seconds} s"));
        error.retry_after = Some(seconds);
        error
    }

    /// An error the extension raised with a SQLSTATE it documents.
    pub fn from_sql(meaning: SqlError, db: &tokio_postgres::error::DbError) -> HttpError {
        let mut error = HttpError::new(meaning.status(), db.message());
        error.sqlstate = Some(Some(db.code().code().to_owned()));
        error
    }

    /// The body names `code` (the SQLSTATE, or null), as the SQL API's routes answer.
    pub fn naming_sqlstate(mut self) -> HttpError {
        self.sqlstate.get_or_insert(None);
        self
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.message });
        if let Some(code) = self.sqlstate {
            body["code"] = json!(code);
        }
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_refusal_replies_with_its_wire_reason() {
        let cases = [
            (Refusal::UnmatchedTopic, "unmatched topic"),
            (Refusal::TopicNameRequired, "TopicNameRequired: You must provide a topic name"),
            (Refusal::JoinRate("too many joins".into()), "ClientJoinRateLimitReached: too many joins"),
            (Refusal::TooManyChannels, "ChannelRateLimitReached: Too many channels"),
            (Refusal::Credential(AuthError::Expired.into()), "InvalidJWTToken: Token has expired"),
            (Refusal::Credential(CredentialError::Secret("revoked".into())), "Unauthorized: revoked"),
            (Refusal::Credential(CredentialError::Unavailable("down".into())), "UnableToConnectToProject: down"),
            (
                Refusal::ReadDenied { name: "org:1".into(), reason: "not a member".into() },
                "Unauthorized: You do not have permissions to read from this Channel topic: org:1 (not a member)",
            ),
            (Refusal::InvalidChannelName("bad".into()), "InvalidChannelName: bad"),
            (Refusal::DatabaseUnavailable, "UnableToConnectToProject: the database is unavailable"),
            (Refusal::UnknownEvent("shout".into()), "unknown event shout"),
            (Refusal::BroadcastWithoutEvent, "a broadcast needs payload.event (a string)"),
            (Refusal::BroadcastRate("too many broadcasts".into()), "RateLimitReached: too many broadcasts"),
            (Refusal::BroadcastDenied("org:1".into()), "Unauthorized: you may not broadcast on org:1"),
            (
                Refusal::BroadcastRule(client_broadcast::Refusal::TooLarge { size: 9, limit: 8 }),
                "payload_size_exceeded: the payload is 9 bytes, the limit is 8",
            ),
            (Refusal::TrackDenied("org:1".into()), "Unauthorized: you may not track presence on org:1"),
            (Refusal::TrackNotAMap, "Presence track payload must be a map"),
            (Refusal::TrackTooLarge, "Track message size exceeded"),
            (Refusal::PresenceEvent, "presence event must be track or untrack"),
            (Refusal::Payload("only JSON"), "only JSON"),
        ];
        for (refusal, reason) in cases {
            assert_eq!(refusal.to_string(), reason);
        }
    }

    #[test]
    fn each_channel_end_says_why_in_its_system_message() {
        let cases = [
            (
                ChannelEnd::JoinedAgainAs("realtime:bcast:org:1".into()),
                "DuplicateJoin: this connection joined the same channel again as realtime:bcast:org:1; \
                 one subscription per channel per connection",
            ),
            (
                ChannelEnd::ReadRevoked("org:1".into()),
                "You no longer have permission to read from this Channel topic: org:1",
            ),
            (ChannelEnd::TokenExpired, "Token has expired"),
            (ChannelEnd::Credential(AuthError::Signature.into()), "Failed to validate JWT signature"),
        ];
        for (end, message) in cases {
            assert_eq!(end.to_string(), message);
        }
    }

    #[test]
    fn only_refused_broadcasts_count_as_drops() {
        assert_eq!(Refusal::BroadcastDenied("t".into()).drop_label(), Some("unauthorized"));
        let too_large = Refusal::BroadcastRule(client_broadcast::Refusal::TooLarge { size: 9, limit: 8 });
        assert_eq!(too_large.drop_label(), Some("payload_too_large"));
        assert_eq!(Refusal::BroadcastRule(client_broadcast::Refusal::Cursor).drop_label(), None);
        assert_eq!(Refusal::TrackDenied("t".into()).drop_label(), None);
    }

    #[test]
    fn credential_errors_have_a_code_and_a_status() {
        let unavailable = CredentialError::from_secret_lookup(DbError::TimedOut(Duration::from_secs(1)));
        assert_eq!(
            (unavailable.code(), unavailable.status()),
            ("UnableToConnectToProject", StatusCode::SERVICE_UNAVAILABLE)
        );
        let refused = CredentialError::from_secret_lookup(DbError::Unauthorized("revoked".into()));
        assert_eq!(
            (refused.code(), refused.status(), refused.to_string().as_str()),
            ("Unauthorized", StatusCode::UNAUTHORIZED, "revoked")
        );
        let token = CredentialError::from(AuthError::Signature);
        assert_eq!((token.code(), token.status()), ("JwtSignatureError", StatusCode::UNAUTHORIZED));
    }

    #[test]
    fn each_close_reason_has_its_text_code_and_label() {
        for (reason, text, code, label) in CLOSE_REASONS {
            assert_eq!((reason.text(), reason.code(), reason.label()), (text, code, label));
            // The label is the text up to its detail, as the metric has always been labelled.
            assert_eq!(label, text.split(':').next().unwrap());
            assert_eq!(CloseReason::from(text), reason);
        }
    }

    #[test]
    fn each_documented_sqlstate_has_its_status() {
        let expected = [
            ("22023", StatusCode::BAD_REQUEST),
            ("22001", StatusCode::BAD_REQUEST),
            ("22P02", StatusCode::BAD_REQUEST),
            ("23502", StatusCode::BAD_REQUEST),
            ("22003", StatusCode::BAD_REQUEST),
            ("28000", StatusCode::UNAUTHORIZED),
            ("42501", StatusCode::FORBIDDEN),
            ("P0002", StatusCode::NOT_FOUND),
            ("55000", StatusCode::CONFLICT),
            ("23505", StatusCode::CONFLICT),
        ];
        for (sqlstate, status) in expected {
            assert_eq!(SqlError::from_sqlstate(sqlstate).map(SqlError::status), Some(status), "{sqlstate}");
        }
        assert_eq!(SqlError::from_sqlstate("XX000"), None);
        assert_eq!(SqlError::from_sqlstate("22023"), Some(SqlError::InvalidParameter));
        assert_eq!(SqlError::from_sqlstate("28000"), Some(SqlError::Unauthenticated));
    }

    async fn body(error: HttpError) -> (StatusCode, Option<String>, serde_json::Value) {
        let response = error.into_response();
        let status = response.status();
        let retry = response.headers().get(header::RETRY_AFTER).map(|v| v.to_str().unwrap().to_owned());
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
        (status, retry, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn an_http_error_is_a_status_and_a_json_body() {
        let plain = body(HttpError::new(StatusCode::FORBIDDEN, "no")).await;
        assert_eq!(plain, (StatusCode::FORBIDDEN, None, json!({ "error": "no" })));
        let sql_api = body(HttpError::new(StatusCode::BAD_REQUEST, "bad").naming_sqlstate()).await;
        assert_eq!(sql_api, (StatusCode::BAD_REQUEST, None, json!({ "error": "bad", "code": null })));
        let limited = body(HttpError::too_many("joins", Duration::from_millis(10)).naming_sqlstate()).await;
        assert_eq!(
            limited,
            (
                StatusCode::TOO_MANY_REQUESTS,
                Some("1".into()),
                json!({ "error": "too many joins; retry in 1 s", "code": null })
            )
        );
    }
}
