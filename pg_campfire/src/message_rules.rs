//! The rules a message's fields follow, enforced by the messages table's one CHECK constraint.
//!
//! One compiled function instead of eight SQL expressions: PostgreSQL reads every CHECK of a table
//! back from its stored form and plans it again each time a statement starts inserting (not once
//! per session). For messages, whose writes are one-row statements, 10,000 inserts in a loop took
//! 70 µs each with the eight SQL checks, 14 µs with this one, 10 µs with none. A broken rule
//! raises check_violation (23514) naming the field, where a false CHECK would only name the
//! constraint.

use pgrx::prelude::*;

pub(crate) const CONTENT_MAX_CHARS: usize = 4000;
pub(crate) const SENDER_NAME_MAX_CHARS: usize = 200;
const SENDER_EMAIL_MAX_CHARS: usize = 320;
const CLIENT_MESSAGE_ID_MAX_CHARS: usize = 128;
pub(crate) const SENDER_TYPES: [&str; 4] = ["customer", "agent", "system", "bot"];
pub(crate) const MESSAGE_TYPES: [&str; 3] = ["text", "note", "event"];
const STATUSES: [&str; 4] = ["sent", "delivered", "read", "failed"];

/// 1-128 characters of `A-Z a-z 0-9 . _ : -`.
pub(crate) fn client_message_id_fits(id: &str) -> bool {
    (1..=CLIENT_MESSAGE_ID_MAX_CHARS).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// `campfire.is_valid_client_message_id(text)`, declared in sql/schema.sql (the tables need it
/// before pgrx's own declarations run).
#[pg_extern(immutable, strict, parallel_safe, sql = false)]
fn is_valid_client_message_id(client_message_id: &str) -> bool {
    client_message_id_fits(client_message_id)
}

fn too_long(value: Option<&str>, max_chars: usize) -> bool {
    value.is_some_and(|v| v.len() > max_chars && v.chars().count() > max_chars)
}

fn not_one_of(value: Option<&str>, allowed: &[&str]) -> bool {
    value.is_some_and(|v| !allowed.contains(&v))
}

/// The fields the rules cover. NULLs pass: NOT NULL is checked apart, first.
#[derive(Clone, Copy)]
struct MessageFields<'a> {
    content: Option<&'a str>,
    sender_type: Option<&'a str>,
    sender_name: Option<&'a str>,
    sender_email: Option<&'a str>,
    message_type: Option<&'a str>,
    status: Option<&'a str>,
    client_message_id: Option<&'a str>,
}

/// The first rule the fields break, if any.
fn broken_rule(fields: &MessageFields) -> Option<String> {
    let MessageFields { content, sender_type, sender_name, sender_email, message_type, status, client_message_id } =
        *fields;
    // btrim() without characters trims spaces only, as the rule always has.
    if content.is_some_and(|c| c.trim_matches(' ').is_empty()) {
        return Some("messages.content must not be blank".into());
    }
    if too_long(content, CONTENT_MAX_CHARS) {
        return Some(format!("messages.content is longer than {CONTENT_MAX_CHARS} characters"));
    }
    if not_one_of(sender_type, &SENDER_TYPES) {
        return Some(format!("messages.sender_type must be one of {}", SENDER_TYPES.join(", ")));
    }
    if too_long(sender_name, SENDER_NAME_MAX_CHARS) {
        return Some(format!("messages.sender_name is longer than {SENDER_NAME_MAX_CHARS} characters"));
    }
    if too_long(sender_email, SENDER_EMAIL_MAX_CHARS) {
        return Some(format!("messages.sender_email is longer than {SENDER_EMAIL_MAX_CHARS} characters"));
    }
    if not_one_of(message_type, &MESSAGE_TYPES) {
        return Some(format!("messages.message_type must be one of {}", MESSAGE_TYPES.join(", ")));
    }
    if not_one_of(status, &STATUSES) {
        return Some(format!("messages.status must be one of {}", STATUSES.join(", ")));
    }
    if client_message_id.is_some_and(|id| !client_message_id_fits(id)) {
        return Some(format!(
            "messages.client_message_id must be 1-{CLIENT_MESSAGE_ID_MAX_CHARS} characters of A-Z a-z 0-9 . _ : -"
        ));
    }
    if message_type == Some("note") && sender_type == Some("customer") {
        return Some("an agent-only note (message_type note) cannot have sender_type customer".into());
    }
    None
}

/// `campfire.message_fields_are_valid(...)`: true, or check_violation naming the broken rule.
/// Declared in sql/schema.sql, beside the table whose constraint calls it.
#[pg_extern(immutable, parallel_safe, sql = false)]
fn message_fields_are_valid(
    content: Option<&str>,
    sender_type: Option<&str>,
    sender_name: Option<&str>,
    sender_email: Option<&str>,
    message_type: Option<&str>,
    status: Option<&str>,
    client_message_id: Option<&str>,
) -> bool {
    let fields =
        MessageFields { content, sender_type, sender_name, sender_email, message_type, status, client_message_id };
    if let Some(rule) = broken_rule(&fields) {
        ereport!(ERROR, PgSqlErrorCode::ERRCODE_CHECK_VIOLATION, rule);
    }
    true
}
