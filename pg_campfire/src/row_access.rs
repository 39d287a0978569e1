//! The helpers row-level security asks on nearly every statement: who the caller is and what it
//! may see, `current_widget_session_id()`, `visitor_conversations()`, `visitor_conversation_org()`,
//! `member_organizations()`, `member_role()`, and `may_insert_message(...)`, the messages_insert
//! policy and the check before a message is numbered (declared in sql/auth.sql).
//!
//! A message asks five times or more: the conversation's lookup, the admit check, the insert
//! policy and the read policy of the row it returns each ask for the visitor's conversations or
//! the member's organizations. As PL/pgSQL each call built its expressions' state again in every
//! transaction, and a visitor's called a PL/pgSQL helper for its session. Here each is one kept
//! statement. They are declared SECURITY DEFINER with the pinned search_path, as before (the
//! caller may read neither the sessions, nor a visitor's conversations, nor every membership),
//! and still name every relation, function and operator by its schema. Each statement reads
//! with a snapshot of its own (see kept_plans.rs), which can only be newer than the calling
//! statement's: it sees a revocation that committed meanwhile. A read asked again while nothing
//! it could see has changed is answered from memory (read_memo.rs).

use crate::claims::{claim, is_service, try_uuid};
use crate::errors::raise;
use crate::kept_plans::kept_value;
use crate::read_memo::read_kept;
use crate::scalar::Row;
use pgrx::PgTrigger;
use pgrx::prelude::*;

/// A session `s` counts while it is neither revoked nor expired.
macro_rules! live {
    () => {
        "s.revoked_at IS NULL AND s.expires_at OPERATOR(pg_catalog.>) pg_catalog.now()"
    };
}
const LIVE_SESSION: &str =
    concat!("SELECT s.id FROM campfire.widget_sessions s WHERE s.id OPERATOR(pg_catalog.=) $1 AND ", live!());
const SESSION_CONVERSATIONS: &str = concat!(
    "SELECT c.id FROM campfire.conversations c WHERE c.widget_session_id OPERATOR(pg_catalog.=) $1 \
       AND EXISTS (SELECT FROM campfire.widget_sessions s WHERE s.id OPERATOR(pg_catalog.=) $1 AND ",
    live!(),
    ")"
);
/// The organization of conversation $1 if it is one of session $2's.
const SESSION_CONVERSATION_ORG: &str = concat!(
    "SELECT c.organization_id FROM campfire.conversations c \
       JOIN campfire.widget_sessions s ON s.id OPERATOR(pg_catalog.=) c.widget_session_id \
      WHERE c.id OPERATOR(pg_catalog.=) $1 AND s.id OPERATOR(pg_catalog.=) $2 AND ",
    live!()
);
const ACTIVE_MEMBERSHIPS: &str = "SELECT m.organization_id, m.role FROM campfire.organization_members m \
                                  WHERE m.user_id OPERATOR(pg_catalog.=) $1 AND m.status OPERATOR(pg_catalog.=) 'active'";
const ACTIVE_ROLE: &str = "SELECT m.role FROM campfire.organization_members m \
                           WHERE m.organization_id OPERATOR(pg_catalog.=) $1 AND m.user_id OPERATOR(pg_catalog.=) $2 \
                             AND m.status OPERATOR(pg_catalog.=) 'active'";

/// The uuid that claim `key` holds when the claims' role is `role`.
fn claimed_id(role: &str, key: &str) -> Option<pgrx::Uuid> {
    if claim("role").as_deref() != Some(role) {
        return None;
    }
    try_uuid(&claim(key)?)
}

/// The widget session a visitor's claims name, whether or not it still counts.
fn claimed_widget_session() -> Option<pgrx::Uuid> {
    claimed_id("visitor", "widget_session_id")
}

/// `campfire.current_widget_session_id()`: the caller's widget session, if the claims name one
/// that is neither revoked nor expired.
#[pg_extern(stable, sql = false)]
fn current_widget_session_id() -> Option<pgrx::Uuid> {
    let claimed = claimed_widget_session()?;
    let live = read_kept("reading the widget session", LIVE_SESSION, &[claimed], |row| row.get::<pgrx::Uuid>(1));
    live.into_iter().next().flatten()
}

/// `campfire.visitor_conversations()`: the conversations of the caller's widget session (empty
/// for anyone but a visitor, and for a revoked or expired session).
#[pg_extern(stable, sql = false)]
fn visitor_conversations() -> Vec<pgrx::Uuid> {
    let Some(claimed) = claimed_widget_session() else { return Vec::new() };
    let conversations = read_kept("reading the visitor's conversations", SESSION_CONVERSATIONS, &[claimed], |row| {
        row.get::<pgrx::Uuid>(1)
    });
    conversations.into_iter().flatten().collect()
}

/// `campfire.visitor_conversation_org(conversation_id)`: the organization of a conversation of the
/// caller's widget session, NULL for any other: how a visitor's API call finds its conversation
/// (send_message.rs). Through the visitor-safe view it also read the conversation's last message,
/// and asked for all the session's conversations, ~230k instructions a call.
#[pg_extern(stable, sql = false)]
fn visitor_conversation_org(conversation_id: Option<pgrx::Uuid>) -> Option<pgrx::Uuid> {
    let (conversation, claimed) = (conversation_id?, claimed_widget_session()?);
    let org =
        read_kept("finding the visitor's conversation", SESSION_CONVERSATION_ORG, &[conversation, claimed], |row| {
            row.get::<pgrx::Uuid>(1)
        });
    org.into_iter().next().flatten()
}

/// An agent's user id, read from the claims as `campfire.current_user_id()` reads it.
fn current_user_id() -> Option<pgrx::Uuid> {
    claimed_id("authenticated", "sub")
}

/// `campfire.member_organizations(min_role)`: the organizations where the caller is an active
/// member with at least `min_role` (viewer < agent < admin; anything else: none).
#[pg_extern(stable, sql = false)]
fn member_organizations(min_role: Option<&str>) -> Vec<pgrx::Uuid> {
    let admits: fn(&str) -> bool = match min_role {
        Some("viewer") => |_| true,
        Some("agent") => |role| role == "agent" || role == "admin",
        Some("admin") => |role| role == "admin",
        _ => return Vec::new(),
    };
    let Some(me) = current_user_id() else { return Vec::new() };
    let memberships = read_kept("reading the memberships", ACTIVE_MEMBERSHIPS, &[me], |row| {
        Ok((row.get::<pgrx::Uuid>(1)?, row.get::<String>(2)?))
    });
    memberships.into_iter().filter_map(|(org, role)| org.filter(|_| role.as_deref().is_some_and(admits))).collect()
}

/// `campfire.member_role(organization_id)`: the caller's role in the organization, if an active
/// member.
#[pg_extern(stable, sql = false)]
fn member_role(organization_id: Option<pgrx::Uuid>) -> Option<String> {
    let (org, me) = (organization_id?, current_user_id()?);
    let role = read_kept("reading the membership", ACTIVE_ROLE, &[org, me], |row| row.get::<String>(1));
    role.into_iter().next().flatten()
}

/// `campfire.may_insert_message(...)`: may the caller insert this message? The service may insert
/// any; an agent or admin of the organization a message from any sender but a customer; a visitor
/// a customer's text message, as nobody in particular, into a conversation of its session.
/// Never NULL. SECURITY DEFINER too, so that it reads a visitor's conversations without a
/// statement of its own; what it decides from is only its arguments and the caller's claims
/// and login (`is_service` asks for session_user, not current_user).
#[pg_extern(stable, parallel_safe, sql = false)]
fn may_insert_message(
    organization_id: Option<pgrx::Uuid>,
    conversation_id: Option<pgrx::Uuid>,
    sender_type: Option<&str>,
    message_type: Option<&str>,
    sender_user_id: Option<pgrx::Uuid>,
) -> bool {
    if is_service() {
        return true;
    }
    match sender_type {
        None => false,
        Some("customer") => {
            message_type == Some("text")
                && sender_user_id.is_none()
                && conversation_id.is_some_and(|id| visitor_conversations().contains(&id))
        }
        Some(_) => organization_id.is_some_and(|org| member_organizations(Some("agent")).contains(&org)),
    }
}

/// The columns `may_insert_message` decides from, in its parameters' order, with their types.
const INSERT_RULE_COLUMNS: [&str; 5] =
    ["organization_id", "conversation_id", "sender_type", "message_type", "sender_user_id"];
const INSERT_RULE_TYPES: [pg_sys::Oid; 5] =
    [pg_sys::UUIDOID, pg_sys::UUIDOID, pg_sys::TEXTOID, pg_sys::TEXTOID, pg_sys::UUIDOID];
const MAY_INSERT: &str = "SELECT campfire.may_insert_message($1, $2, $3, $4, $5)";

/// The BEFORE INSERT trigger on campfire.messages that runs first (triggers.sql): refuses, before
/// messages_assign_seq (which runs as the owner) reads or locks the conversation, a message the
/// caller's row-level security would refuse anyway, so that "not yours" and "does not exist" get
/// the same answer and no row the caller may not see is ever locked. It runs with the caller's
/// rights, whose row-level security it asks about. The service, which may insert any message,
/// is let through at once: as PL/pgSQL this check cost it ~40k instructions a message.
#[pg_trigger]
fn admit_message<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, pgrx::AllocatedByPostgres>>, std::convert::Infallible> {
    let data = trigger.trigger_data();
    // SAFETY: a row-level BEFORE INSERT trigger's relation and new tuple stay valid for the call.
    let (message, relation) =
        unsafe { (Row::new(data.tg_trigtuple, (*data.tg_relation).rd_att), (*data.tg_relation).rd_id) };
    if message.uuid("organization_id").is_none() {
        raise(
            PgSqlErrorCode::ERRCODE_NOT_NULL_VIOLATION,
            "messages.organization_id is required",
            Some("pass the organization of the conversation"),
        );
    }
    // SAFETY: asks whether row-level security applies to the current user on this relation, as
    // row_security_active() does (noError: a missing relation is no error).
    let row_security = unsafe { pg_sys::check_enable_rls(relation, pg_sys::InvalidOid, true) }
        == pg_sys::CheckEnableRlsResult::RLS_ENABLED as i32;
    if row_security && !is_service() {
        let args = message.params_of(&INSERT_RULE_COLUMNS);
        let allowed = kept_value::<bool>("checking the message's rights", MAY_INSERT, &INSERT_RULE_TYPES, &args);
        if allowed != Some(true) {
            raise(
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                r#"new row violates row-level security policy for table "messages""#,
                None,
            );
        }
    }
    Ok(trigger.new())
}
