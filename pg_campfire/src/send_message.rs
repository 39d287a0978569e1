//! `campfire.send_message(...)`, the SQL API's message write, and `visible_conversation_org`,
//! the lookup every conversation function of the API starts with (declared in sql/api.sql).
//!
//! As PL/pgSQL, send_message built the state of each of its two dozen expressions again in every
//! transaction and called its helpers as functions of their own: ~245k instructions a message
//! around the insert itself. Here the checks are plain Rust and each role's lookup is one kept
//! statement. The errors, codes and messages are those of the PL/pgSQL version
//! (tests/pg_regress/sql/02_api.sql checks them).
//!
//! Both run with the caller's rights: row-level security decides what they see and write. They
//! also run with the caller's search_path, and their plans are kept for the backend, so every
//! relation, function, type and operator in them is named by its schema.

use crate::claims::{claim, is_service, require_role};
use crate::errors::raise;
use crate::kept_plans::{kept_value, run_kept};
use crate::message_rules::{
    CONTENT_MAX_CHARS, MESSAGE_TYPES, SENDER_NAME_MAX_CHARS, SENDER_TYPES, client_message_id_fits,
};
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::{AnyElement, FromDatum};

const UUID: [pg_sys::Oid; 1] = [pg_sys::UUIDOID];

const VISITOR_CONVERSATION_ORG: &str = "SELECT campfire.visitor_conversation_org($1)";
const MEMBER_CONVERSATION_ORG: &str =
    "SELECT r.organization_id FROM campfire.realtime_conversations r WHERE r.id OPERATOR(pg_catalog.=) $1";

/// `campfire.visible_conversation_org(conversation_id)`: the organization of a conversation the
/// caller can see, or P0002. A visitor sees only its own conversations, through
/// `visitor_conversation_org` (row_access.rs), and nobody else sees any there: one lookup, not a
/// refused one first.
#[pg_extern(stable, sql = false)]
fn visible_conversation_org(conversation_id: Option<pgrx::Uuid>) -> pgrx::Uuid {
    let sql = match claim("role").as_deref() {
        Some("visitor") => VISITOR_CONVERSATION_ORG,
        _ => MEMBER_CONVERSATION_ORG,
    };
    let args = [optional(conversation_id)];
    kept_value::<pgrx::Uuid>("finding the conversation", sql, &UUID, &args).unwrap_or_else(|| {
        let id = conversation_id.map(|id| id.to_string()).unwrap_or_default();
        refuse(PgSqlErrorCode::ERRCODE_NO_DATA_FOUND, format!("conversation {id} not found"))
    })
}

fn refuse(code: PgSqlErrorCode, message: impl Into<String>) -> ! {
    raise(code, message, None)
}

use PgSqlErrorCode::{
    ERRCODE_INSUFFICIENT_PRIVILEGE as NOT_ALLOWED, ERRCODE_INVALID_PARAMETER_VALUE as INVALID,
    ERRCODE_STRING_DATA_RIGHT_TRUNCATION as TOO_LONG,
};

/// The checks that need nothing but the arguments, in the order the PL/pgSQL version made them.
fn check_arguments(content: Option<&str>, sender: Option<&str>, kind: &str, client_message_id: Option<&str>) {
    // btrim() without characters trims spaces only.
    let content = content
        .filter(|c| !c.trim_matches(' ').is_empty())
        .unwrap_or_else(|| refuse(INVALID, "content must not be empty"));
    let length = content.chars().count();
    if length > CONTENT_MAX_CHARS {
        refuse(TOO_LONG, format!("content is {length} characters long; the limit is {CONTENT_MAX_CHARS}"));
    }
    if sender.is_some_and(|s| !SENDER_TYPES.contains(&s)) {
        refuse(INVALID, format!("sender_type must be one of {}", SENDER_TYPES.join(", ")));
    }
    if !MESSAGE_TYPES.contains(&kind) {
        refuse(INVALID, format!("message_type must be one of {}", MESSAGE_TYPES.join(", ")));
    }
    if client_message_id.is_some_and(|id| !client_message_id_fits(id)) {
        refuse(INVALID, "client_message_id must be 1-128 characters of A-Z a-z 0-9 . _ : -");
    }
}

/// Who the message is from, as the caller's role decides.
struct Sender {
    sender_type: String,
    user_id: Option<pgrx::Uuid>,
    name: Option<String>,
    email: Option<String>,
}

const VISITOR_CONTACT: &str = "SELECT s.customer_name, s.customer_email FROM campfire.widget_sessions s \
                               WHERE s.id OPERATOR(pg_catalog.=) (SELECT campfire.current_widget_session_id())";
const AGENT: &str = "SELECT campfire.member_role($1), campfire.current_user_id(), \
                            (SELECT m.display_name FROM campfire.organization_members m \
                             WHERE m.organization_id OPERATOR(pg_catalog.=) $1 \
                               AND m.user_id OPERATOR(pg_catalog.=) campfire.current_user_id())";

fn sender(
    role: &str,
    org: pgrx::Uuid,
    sender_type: Option<&str>,
    kind: &str,
    name: Option<&str>,
    email: Option<&str>,
) -> Sender {
    let (name, email) = (name.map(str::to_owned), email.map(str::to_owned));
    match role {
        "visitor" => {
            if sender_type.unwrap_or("customer") != "customer" || kind != "text" {
                refuse(NOT_ALLOWED, "a visitor can only send text messages as customer");
            }
            let contact = run_kept("reading the widget session", VISITOR_CONTACT, &[], &[], |row| {
                Ok((row.get::<String>(1)?, row.get::<String>(2)?))
            });
            // No session row leaves both empty, as PL/pgSQL's SELECT INTO did.
            let (name, email) = match contact.into_iter().next() {
                Some((session_name, session_email)) => (name.or(session_name), email.or(session_email)),
                None => (None, None),
            };
            Sender { sender_type: "customer".into(), user_id: None, name, email }
        }
        "authenticated" => {
            let member = run_kept("reading the membership", AGENT, &UUID, &[org.into()], |row| {
                Ok((row.get::<String>(1)?, row.get::<pgrx::Uuid>(2)?, row.get::<String>(3)?))
            });
            let (member_role, user_id, display_name) = member.into_iter().next().unwrap_or_default();
            if member_role.as_deref().unwrap_or("viewer") == "viewer" {
                refuse(NOT_ALLOWED, "only admins and agents of the organization may send messages");
            }
            if sender_type.unwrap_or("agent") != "agent" {
                refuse(NOT_ALLOWED, "an agent can only send as agent");
            }
            Sender { sender_type: "agent".into(), user_id, name: name.or(display_name), email }
        }
        _ if is_service() => {
            let sender_type = sender_type
                .unwrap_or_else(|| refuse(INVALID, "sender_type is required for the service role"))
                .to_owned();
            Sender { sender_type, user_id: None, name, email }
        }
        _ => refuse(NOT_ALLOWED, format!("role {role} may not send messages")),
    }
}

const IS_VALID_EMAIL: &str = "SELECT campfire.is_valid_email($1)";
const INSERT: &str = "INSERT INTO campfire.messages AS m (conversation_id, organization_id, content, sender_type, \
                          sender_user_id, sender_name, sender_email, message_type, client_message_id, metadata, attachments) \
                      VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, \
                              COALESCE($10, '{}'::pg_catalog.jsonb), COALESCE($11, '[]'::pg_catalog.jsonb)) \
                      RETURNING m";
const INSERT_TYPES: [pg_sys::Oid; 11] = [
    pg_sys::UUIDOID,
    pg_sys::UUIDOID,
    pg_sys::TEXTOID,
    pg_sys::TEXTOID,
    pg_sys::UUIDOID,
    pg_sys::TEXTOID,
    pg_sys::TEXTOID,
    pg_sys::TEXTOID,
    pg_sys::TEXTOID,
    pg_sys::JSONBOID,
    pg_sys::JSONBOID,
];
const STORED: &str = "SELECT m FROM campfire.messages m \
                      WHERE m.conversation_id OPERATOR(pg_catalog.=) $1 AND m.client_message_id OPERATOR(pg_catalog.=) $2";

/// The one row (a `campfire.messages` value) that `sql` returns, copied out of SPI's memory for
/// the caller; `None` when there is none.
fn message_row(what: &str, sql: &'static str, types: &[pg_sys::Oid], args: &[DatumWithOid]) -> Option<AnyElement> {
    run_kept(what, sql, types, args, |row| {
        let Some(datum) = row.get_datum_by_ordinal(1)?.value::<AnyElement>()? else { return Ok(None) };
        // SAFETY: a composite (varlena) datum of the row SPI returned, copied into the memory
        // context the function was called in while SPI is still connected.
        Ok(unsafe {
            let copy = pg_sys::SPI_datumTransfer(datum.datum(), false, -1);
            AnyElement::from_polymorphic_datum(copy, false, datum.oid())
        })
    })
    .into_iter()
    .next()
    .flatten()
}

/// An optional value as a statement parameter of its type (NULL when `None`).
fn optional<'a, T: IntoDatum>(value: Option<T>) -> DatumWithOid<'a> {
    value.map_or(DatumWithOid::null::<T>(), DatumWithOid::from)
}

/// Sends a message as the caller: a visitor sends as customer, an agent as agent (or an
/// agent-only note with message_type 'note'), the service role as whichever sender_type it names.
/// With a client_message_id, retries return the message already stored instead of a second one.
#[pg_extern(sql = false)]
#[allow(clippy::too_many_arguments)]
fn send_message(
    conversation_id: Option<pgrx::Uuid>,
    content: Option<&str>,
    sender_type: Option<&str>,
    client_message_id: Option<&str>,
    message_type: Option<&str>,
    sender_name: Option<&str>,
    sender_email: Option<&str>,
    metadata: Option<AnyElement>,
    attachments: Option<AnyElement>,
) -> Option<AnyElement> {
    let role = require_role();
    let kind = message_type.unwrap_or("text");
    check_arguments(content, sender_type, kind, client_message_id);
    if let Some(email) = sender_email {
        let valid = kept_value::<bool>("checking sender_email", IS_VALID_EMAIL, &[pg_sys::TEXTOID], &[email.into()]);
        if valid != Some(true) {
            refuse(INVALID, "sender_email is not a valid email address");
        }
    }
    if sender_name.is_some_and(|name| name.chars().count() > SENDER_NAME_MAX_CHARS) {
        refuse(TOO_LONG, format!("sender_name is longer than {SENDER_NAME_MAX_CHARS} characters"));
    }
    let org = visible_conversation_org(conversation_id);
    let from = sender(&role, org, sender_type, kind, sender_name, sender_email);
    if kind == "note" && from.sender_type == "customer" {
        refuse(INVALID, "notes are agent-only: a customer cannot send one");
    }
    let jsonb = |value: Option<AnyElement>| match value {
        // SAFETY: the jsonb argument's own datum, valid for this call.
        Some(value) => unsafe { DatumWithOid::new(value, pg_sys::JSONBOID) },
        None => DatumWithOid::null_oid(pg_sys::JSONBOID),
    };
    let args = [
        optional(conversation_id),
        org.into(),
        optional(content),
        from.sender_type.as_str().into(),
        optional(from.user_id),
        optional(from.name.as_deref()),
        optional(from.email.as_deref()),
        kind.into(),
        optional(client_message_id),
        jsonb(metadata),
        jsonb(attachments),
    ];
    // A retry (a client_message_id already stored) is found by the insert trigger, under the
    // conversation's lock, which skips the insert: no lookup of its own on the common path.
    message_row("sending the message", INSERT, &INSERT_TYPES, &args).or_else(|| {
        message_row(
            "reading the message stored first",
            STORED,
            &[pg_sys::UUIDOID, pg_sys::TEXTOID],
            &[optional(conversation_id), optional(client_message_id)],
        )
    })
}
