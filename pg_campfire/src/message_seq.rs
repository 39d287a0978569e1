//! A new message's number: the BEFORE INSERT trigger `assign_message_seq` on campfire.messages
//! gives it the next gap-free `seq` of its conversation, under the conversation's row lock, and
//! keeps the conversation's summary current. A message whose `client_message_id` is already
//! stored in the conversation is a retry: the insert is skipped, and `send_message` returns the
//! message stored first.
//!
//! It runs as the extension owner with its search_path pinned (SECURITY DEFINER, sql/triggers.sql)
//! and still names every relation, function and operator by its schema, as the log's statements
//! do. Its statements are kept plans: as PL/pgSQL it also re-initialised its expressions and
//! checked their functions' rights in every transaction.
//!
//! A retry has to be found under the lock, or two sends of one message at once would both miss
//! the other and the second would fail on the unique index. Taking the lock first (one statement)
//! and looking second (another, whose snapshot sees whatever committed while it waited) costs a
//! statement a message; instead the conversation's `last_message_seq` tells whether anything was
//! inserted in between. Every message takes its number by raising it under the lock, so when the
//! update that takes the lock still finds the value that the lock-free look saw beside "no such
//! message yet", no message at all, and no retry, has entered the conversation since: the look
//! stands. Only when it moved (another writer got in between) is the look repeated under the lock.

use crate::errors::raise;
use crate::kept_plans::{kept_value, run_kept};
use crate::scalar::Row;
use pgrx::PgTrigger;
use pgrx::prelude::*;

type TriggerResult<'a> = Result<Option<PgHeapTuple<'a, pgrx::AllocatedByRust>>, std::convert::Infallible>;

const WHAT: &str = "numbering a message";

/// The summary a new message writes, from parameters $1 conversation, $2 organization,
/// $3 content, $4 sender_type; returns the new seq and whether the conversation is resolved.
/// The row is found by its id and its organization checked on it (`IS TRUE` keeps the planner
/// from looking it up by organization: below ~100 conversations, without statistics, it scanned
/// the organization's conversations through an index on organization_id first).
macro_rules! summary_update {
    ($condition:literal) => {
        concat!(
            "UPDATE campfire.conversations c \
                SET last_message_seq = c.last_message_seq OPERATOR(pg_catalog.+) 1, \
                    last_message_at = pg_catalog.now(), \
                    last_message_preview = pg_catalog.\"left\"($3, 140), \
                    last_message_sender_type = $4, \
                    updated_at = pg_catalog.now() \
              WHERE c.id OPERATOR(pg_catalog.=) $1 AND (c.organization_id OPERATOR(pg_catalog.=) $2) IS TRUE",
            $condition,
            " RETURNING c.last_message_seq, \
                        c.status OPERATOR(pg_catalog.=) 'resolved'::campfire.conversation_status"
        )
    };
}

const UPDATE: &str = summary_update!("");
/// `UPDATE` of the row version at $5, only while its `last_message_seq` is still $6: by its ctid,
/// so that the planner never scans an organization's conversations for it (a version updated
/// since the look no longer matches, and the look is repeated under the lock).
const UPDATE_IF_UNMOVED: &str =
    summary_update!(" AND c.ctid OPERATOR(pg_catalog.=) $5 AND c.last_message_seq OPERATOR(pg_catalog.=) $6");
/// The parameters' types: `UPDATE` takes the first four, `UPDATE_IF_UNMOVED` all six.
const SUMMARY_TYPES: [pg_sys::Oid; 6] =
    [pg_sys::UUIDOID, pg_sys::UUIDOID, pg_sys::TEXTOID, pg_sys::TEXTOID, pg_sys::TIDOID, pg_sys::INT8OID];

/// The lock-free look: the conversation's row version and last seq, and whether
/// client_message_id $2 is stored in it.
const LOOK: &str = "SELECT c.ctid, c.last_message_seq, EXISTS (SELECT FROM campfire.messages m \
                        WHERE m.conversation_id OPERATOR(pg_catalog.=) c.id \
                          AND m.client_message_id OPERATOR(pg_catalog.=) $2) \
                    FROM campfire.conversations c WHERE c.id OPERATOR(pg_catalog.=) $1";
const LOCK: &str = "SELECT FROM campfire.conversations c WHERE c.id OPERATOR(pg_catalog.=) $1 FOR UPDATE";
const STORED: &str = "SELECT EXISTS (SELECT FROM campfire.messages m \
                          WHERE m.conversation_id OPERATOR(pg_catalog.=) $1 \
                            AND m.client_message_id OPERATOR(pg_catalog.=) $2)";
const KEY_TYPES: [pg_sys::Oid; 2] = [pg_sys::UUIDOID, pg_sys::TEXTOID];

const SUMMARY: [&str; 4] = ["conversation_id", "organization_id", "content", "sender_type"];
const KEY: [&str; 2] = ["conversation_id", "client_message_id"];

/// The conversation as the lock-free look saw it.
struct Seen {
    version: pg_sys::ItemPointerData,
    last_message_seq: i64,
}

/// Raises the conversation's seq and writes its summary: the new seq, `None` when no row matched
/// (`UPDATE_IF_UNMOVED`'s row is the one `seen`).
fn update_summary(sql: &'static str, message: &Row, seen: Option<Seen>) -> Option<i64> {
    let mut args = message.params_of(&SUMMARY);
    if let Some(seen) = seen {
        args.extend([seen.version.into(), seen.last_message_seq.into()]);
    }
    let updated = run_kept(WHAT, sql, &SUMMARY_TYPES[..args.len()], &args, |row| {
        Ok((row.get::<i64>(1)?.unwrap_or_default(), row.get::<bool>(2)?.unwrap_or(false)))
    });
    let (seq, resolved) = updated.into_iter().next()?;
    if resolved {
        let conversation = message.uuid("conversation_id").map(|id| id.to_string()).unwrap_or_default();
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("conversation {conversation} is resolved"),
            Some("start a new conversation"),
        );
    }
    Some(seq)
}

/// The conversation's next seq, raised and written, or the error that there is no such
/// conversation in the message's organization.
fn next_seq(message: &Row) -> i64 {
    update_summary(UPDATE, message, None).unwrap_or_else(|| {
        let id = |column| message.uuid(column).map(|id| id.to_string()).unwrap_or_default();
        let (conversation, organization) = (id("conversation_id"), id("organization_id"));
        raise(
            PgSqlErrorCode::ERRCODE_NO_DATA_FOUND,
            format!("conversation {conversation} not found in organization {organization}"),
            None,
        )
    })
}

/// The message's seq, `None` when it is a retry of a message already stored (see the module's
/// comment for why the lock-free look can stand).
fn seq_of(message: &Row) -> Option<i64> {
    let key = message.params_of(&KEY);
    if key[1].datum().is_none() {
        return Some(next_seq(message));
    }
    let look = run_kept(WHAT, LOOK, &KEY_TYPES, &key, |row| {
        let seen = row.get::<pg_sys::ItemPointerData>(1)?.zip(row.get::<i64>(2)?);
        Ok((seen.map(|(version, last_message_seq)| Seen { version, last_message_seq }), row.get::<bool>(3)?))
    });
    match look.into_iter().next() {
        Some((_, Some(true))) => return None,
        Some((Some(seen), _)) => {
            if let Some(seq) = update_summary(UPDATE_IF_UNMOVED, message, Some(seen)) {
                return Some(seq);
            }
        }
        _ => {}
    }
    // Another writer got in between (or there is no such conversation): look again, under the lock.
    run_kept(WHAT, LOCK, &KEY_TYPES[..1], &key[..1], |_| Ok(()));
    let stored = kept_value::<bool>(WHAT, STORED, &KEY_TYPES, &key);
    if stored == Some(true) { None } else { Some(next_seq(message)) }
}

#[pg_trigger]
fn assign_message_seq<'a>(trigger: &'a PgTrigger<'a>) -> TriggerResult<'a> {
    let data = trigger.trigger_data();
    // SAFETY: a row-level BEFORE INSERT trigger's relation and new tuple stay valid for the call.
    let message = unsafe { Row::new(data.tg_trigtuple, (*data.tg_relation).rd_att) };
    let Some(seq) = seq_of(&message) else { return Ok(None) };
    let mut numbered =
        trigger.new().unwrap_or_else(|| pgrx::error!("assign_message_seq runs BEFORE INSERT")).into_owned();
    numbered.set_by_name("seq", seq).unwrap_or_else(|err| pgrx::error!("campfire.messages.seq: {err}"));
    Ok(Some(numbered))
}
