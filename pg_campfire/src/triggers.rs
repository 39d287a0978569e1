//! Trigger functions: `updated_at`, the scalar-only mirror of conversations, and the realtime
//! events messages, conversations, read receipts and agent availability produce in their
//! transaction.

use crate::events;
use crate::scalar::{Enums, Row, ScalarObject};
use pgrx::PgOid;
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient};
use pgrx::{PgTrigger, PgTriggerOperation};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::json;
use serde_json::value::RawValue;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

type TriggerResult<'a> = Result<Option<PgHeapTuple<'a, pgrx::AllocatedByPostgres>>, std::convert::Infallible>;

/// The OLD and NEW rows of a row-level trigger.
struct Change {
    op: PgTriggerOperation,
    old: Option<Row>,
    new: Option<Row>,
}

impl Change {
    fn of(trigger: &PgTrigger) -> Change {
        let data = trigger.trigger_data();
        let op = trigger.op().unwrap_or_else(|e| pgrx::error!("{e}"));
        // SAFETY: a row-level trigger's relation and its tuples stay valid for the trigger call.
        let tupdesc = unsafe { (*data.tg_relation).rd_att };
        // SAFETY: as above; the Rows live no longer than the trigger call.
        let row = |tuple: *mut pg_sys::HeapTupleData| (!tuple.is_null()).then(|| unsafe { Row::new(tuple, tupdesc) });
        let (old, new) = match op {
            PgTriggerOperation::Insert => (None, row(data.tg_trigtuple)),
            PgTriggerOperation::Update => (row(data.tg_trigtuple), row(data.tg_newtuple)),
            _ => (row(data.tg_trigtuple), None),
        };
        Change { op, old, new }
    }

    /// The row as it is after the change (NEW), or as it was before a DELETE (OLD).
    fn current(&self) -> &Row {
        self.new.as_ref().or(self.old.as_ref()).expect("a row-level trigger has a row")
    }

    /// The organization and conversation a message or read receipt belongs to.
    fn conversation_keys(&self) -> (uuid::Uuid, uuid::Uuid) {
        let row = self.current();
        (uuid_column(row, "organization_id"), uuid_column(row, "conversation_id"))
    }
}

fn uuid_column(row: &Row, column: &str) -> uuid::Uuid {
    row.uuid(column).unwrap_or_else(|| pgrx::error!("uuid column {column} is NULL or missing"))
}

/// `{key: row's scalar columns, "conversationId", "organizationId"}`, a row event's payload.
struct Envelope<'a> {
    key: &'static str,
    object: ScalarObject<'a>,
    organization: uuid::Uuid,
    conversation: uuid::Uuid,
}

impl Serialize for Envelope<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut envelope = serializer.serialize_map(Some(3))?;
        envelope.serialize_entry(self.key, &self.object)?;
        envelope.serialize_entry("conversationId", &self.conversation)?;
        envelope.serialize_entry("organizationId", &self.organization)?;
        envelope.end()
    }
}

/// A row event's payload as JSON text, written straight from the row.
fn envelope(key: &'static str, row: &Row, organization: uuid::Uuid, conversation: uuid::Uuid) -> Box<RawValue> {
    events::json_text(&Envelope { key, object: row.scalar_object(Enums::AsText), organization, conversation })
}

/// `message:created` / `message:updated` on the conversation channel (not for agent-only notes)
/// and on the organization's conversation list, which a new message's `conversation:updated`
/// (queued by its summary update, just before) precedes in the same log row.
#[pg_trigger]
fn message_events<'a>(trigger: &'a PgTrigger<'a>) -> TriggerResult<'a> {
    let change = Change::of(trigger);
    let row = change.current();
    let (org, conversation) = change.conversation_keys();
    let event = match change.op {
        PgTriggerOperation::Insert => "message:created",
        _ => "message:updated",
    };
    let payload = envelope("message", row, org, conversation);
    if row.text("message_type").as_deref() != Some("note") {
        events::queue(org, Some(conversation), format!("org:{org}:conv:{conversation}"), event, payload.clone());
    }
    // A new message's summary update, announced on the organization channel, shares the list
    // event's log row: both are for the organization's members only.
    let update =
        matches!(change.op, PgTriggerOperation::Insert).then(|| events::take_conversation_update(conversation));
    events::queue_after(org, Some(conversation), format!("org:{org}:conversations"), event, payload, update.flatten());
    Ok(None)
}

/// `conversation:created` / `conversation:updated` / `conversation:deleted` on the organization
/// channel, carrying the scalar-only mirror of the row. (Every UPDATE moves updated_at, so there
/// is no "nothing changed" case worth comparing the old row for on this per-message path.)
#[pg_trigger]
fn conversation_events<'a>(trigger: &'a PgTrigger<'a>) -> TriggerResult<'a> {
    let change = Change::of(trigger);
    let row = change.current();
    let org = uuid_column(row, "organization_id");
    let conversation = uuid_column(row, "id");
    let (event, payload) = match change.op {
        PgTriggerOperation::Insert => ("conversation:created", envelope("conversation", row, org, conversation)),
        PgTriggerOperation::Update => ("conversation:updated", envelope("conversation", row, org, conversation)),
        // Ids only: a deletion (such as a GDPR erasure) must not copy personal data into the log.
        _ => (
            "conversation:deleted",
            events::json_text(
                &json!({ "conversationId": conversation.to_string(), "organizationId": org.to_string() }),
            ),
        ),
    };
    events::queue(org, Some(conversation), format!("org:{org}"), event, payload);
    Ok(None)
}

/// `read:receipt` on the conversation channel when a reader's watermark moves forward.
#[pg_trigger]
fn read_receipt_events<'a>(trigger: &'a PgTrigger<'a>) -> TriggerResult<'a> {
    let change = Change::of(trigger);
    let row = change.current();
    let seq = |row: &Row| row.scalar("last_read_seq").and_then(|v| v.as_i64()).unwrap_or(0);
    if let Some(old) = &change.old
        && seq(old) >= seq(row)
    {
        return Ok(None);
    }
    let (org, conversation) = change.conversation_keys();
    let payload = json!({
        "conversationId": conversation.to_string(),
        "organizationId": org.to_string(),
        "readerType": row.scalar("reader_type"),
        "readerId": row.scalar("reader_id"),
        "lastReadSeq": seq(row),
        "readAt": row.scalar("updated_at"),
    });
    let payload = events::json_text(&payload);
    events::queue(org, Some(conversation), format!("org:{org}:conv:{conversation}"), "read:receipt", payload);
    Ok(None)
}

/// `agent:status:online` / `agent:status:offline` on the agents' presence channel when a
/// member's availability changes.
#[pg_trigger]
fn agent_status_events<'a>(trigger: &'a PgTrigger<'a>) -> TriggerResult<'a> {
    let change = Change::of(trigger);
    let row = change.current();
    let availability = row.text("availability");
    let before = match &change.old {
        Some(old) => old.text("availability"),
        // A new member starts offline: only an online start is news.
        None => Some("offline".to_owned()),
    };
    if before == availability {
        return Ok(None);
    }
    let org = uuid_column(row, "organization_id");
    let event = match availability.as_deref() {
        Some("online") => "agent:status:online",
        _ => "agent:status:offline",
    };
    let payload = json!({
        "organizationId": org.to_string(),
        "userId": row.scalar("user_id"),
        "displayName": row.scalar("display_name"),
        "availability": availability,
        "changedAt": row.scalar("availability_changed_at"),
    });
    events::queue(org, None, format!("org:{org}:agents:presence"), event, events::json_text(&payload));
    Ok(None)
}

/// The statements that keep one mirror table in step with one source table, planned once per
/// backend from the catalog. The upsert takes the source row's own values as parameters
/// (parameter k is source column `params[k]`, cast to the mirror's type in SQL): no JSON between.
struct MirrorStatements {
    /// For a source UPDATE: the mirror row is nearly always there, and a plain UPDATE of it costs
    /// less than the upsert's speculative insertion.
    update: OwnedPreparedStatement,
    upsert: OwnedPreparedStatement,
    params: Vec<(usize, pg_sys::Oid)>,
    delete: OwnedPreparedStatement,
}

impl MirrorStatements {
    /// Whether the source columns still are where, and of the type, they were when planned.
    fn fits(&self, source: &Row) -> bool {
        self.params.iter().all(|&(index, typid)| source.column_type(index) == Some(typid))
    }
}

thread_local! {
    /// By trigger: a trigger belongs to one table and names one mirror, so its oid is the key.
    static MIRRORS: RefCell<HashMap<pg_sys::Oid, Rc<MirrorStatements>>> = RefCell::new(HashMap::new());
}

/// The mirror a trigger keeps: its argument, `campfire.realtime_conversations` by default.
fn mirror_of(trigger: &PgTrigger) -> String {
    trigger
        .extra_args()
        .ok()
        .and_then(|args| args.into_iter().next())
        .unwrap_or_else(|| "campfire.realtime_conversations".to_owned())
}

fn mirror_statements(
    client: &SpiClient,
    trigger: &PgTrigger,
    source: &Row,
) -> Result<Rc<MirrorStatements>, pgrx::spi::Error> {
    // SAFETY: tg_trigger is valid for the trigger call.
    let key = unsafe { (*trigger.trigger_data().tg_trigger).tgoid };
    if let Some(statements) = MIRRORS.with(|cache| cache.borrow().get(&key).cloned())
        && statements.fits(source)
    {
        return Ok(statements);
    }
    let mirror = mirror_of(trigger);
    // The statements run as the extension owner in the writer's session (search_path pinned,
    // pg_temp last), so the mirror and every type in them are named with their schema: nothing
    // resolves through the writer's temp schema. The mirror's own name must carry its schema
    // too, or an unqualified name missing from the pinned path would be found in pg_temp.
    // (A column's typmod is applied by the assignment to it.)
    let mirror_columns = client.select(
        "SELECT pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname), \
                a.attname::pg_catalog.text, \
                pg_catalog.quote_ident(tn.nspname) || '.' || pg_catalog.quote_ident(ty.typname) \
         FROM pg_catalog.pg_class c \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
         JOIN pg_catalog.pg_type ty ON ty.oid = a.atttypid \
         JOIN pg_catalog.pg_namespace tn ON tn.oid = ty.typnamespace \
         WHERE c.oid = $1::pg_catalog.regclass AND pg_catalog.cardinality(pg_catalog.parse_ident($1)) = 2 \
         ORDER BY a.attnum",
        None,
        &[mirror.as_str().into()],
    )?;
    if mirror_columns.is_empty() {
        pgrx::error!("the mirror table {mirror} must exist and be named with its schema (schema.table)");
    }
    let (mut table, mut columns, mut values, mut updates, mut sets, mut params) =
        (String::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut id_value = None;
    for row in mirror_columns {
        let (name, mirror_type): (String, String) = (row.get(2)?.unwrap_or_default(), row.get(3)?.unwrap_or_default());
        table = row.get(1)?.unwrap_or_default();
        let column = pgrx::spi::quote_identifier(&name);
        // A mirror column the source lacks, or holds as a non-scalar, stays NULL.
        let value = match source.scalar_column(&name, Enums::AsText) {
            Some(param) => {
                params.push(param);
                format!("${}::{mirror_type}", params.len())
            }
            None => format!("NULL::{mirror_type}"),
        };
        if name == "id" {
            id_value = Some(value.clone());
        } else {
            updates.push(format!("{column} = EXCLUDED.{column}"));
            sets.push(format!("{column} = {value}"));
        }
        values.push(value);
        columns.push(column);
    }
    let upsert = format!(
        "INSERT INTO {table} ({}) VALUES ({}) ON CONFLICT (id) DO UPDATE SET {}",
        columns.join(", "),
        values.join(", "),
        updates.join(", ")
    );
    let id_value = id_value.unwrap_or_else(|| pgrx::error!("the mirror table {mirror} needs an id column"));
    let update = format!("UPDATE {table} SET {} WHERE id = {id_value}", sets.join(", "));
    let types: Vec<PgOid> = params.iter().map(|&(_, typid)| PgOid::from(typid)).collect();
    let statements = Rc::new(MirrorStatements {
        update: client.prepare_mut(update.as_str(), &types)?.keep(),
        upsert: client.prepare_mut(upsert.as_str(), &types)?.keep(),
        params,
        delete: client
            .prepare_mut(format!("DELETE FROM {table} WHERE id = $1").as_str(), &[PgOid::from(pg_sys::UUIDOID)])?
            .keep(),
    });
    MIRRORS.with(|cache| cache.borrow_mut().insert(key, statements.clone()));
    Ok(statements)
}

/// Keeps a scalar-only mirror table in step with the table it is attached to. The mirror is
/// named by the trigger's argument (default `campfire.realtime_conversations`), has an `id`
/// primary key, and takes whichever scalar columns of the source it declares; enums arrive as
/// their text label. Runs as SECURITY DEFINER, so writers need no rights on the mirror.
#[pg_trigger]
fn sync_realtime_conversations<'a>(trigger: &'a PgTrigger<'a>) -> TriggerResult<'a> {
    let change = Change::of(trigger);
    let result = Spi::connect_mut(|client| {
        let statements = mirror_statements(client, trigger, change.current())?;
        match &change.new {
            Some(row) => {
                let args: Vec<DatumWithOid> = statements.params.iter().map(|&(index, _)| row.param(index)).collect();
                if matches!(change.op, PgTriggerOperation::Update) {
                    let updated = client.update(&statements.update, None, &args)?;
                    if !updated.is_empty() {
                        return Ok(());
                    }
                }
                client.update(&statements.upsert, None, &args).map(|_| ())
            }
            None => {
                let id = pgrx::Uuid::from_bytes(*uuid_column(change.current(), "id").as_bytes());
                client.update(&statements.delete, None, &[id.into()]).map(|_| ())
            }
        }
    });
    result.unwrap_or_else(|err| pgrx::error!("syncing {}: {err}", mirror_of(trigger)));
    Ok(None)
}

/// `campfire.touch_updated_at()`, the BEFORE UPDATE trigger of the tables with an `updated_at`:
/// sets it to the transaction's time, now(). A row that carries it already (a message's update
/// of its conversation sets it) is returned as it is. As PL/pgSQL this needed a WHEN clause on
/// conversations to spare that update the call, and PostgreSQL reads such a clause back and
/// plans it again in every statement (~16k instructions a message).
#[pg_trigger]
fn touch_updated_at<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, pgrx::AllocatedByRust>>, std::convert::Infallible> {
    let data = trigger.trigger_data();
    // SAFETY: a row-level BEFORE UPDATE trigger's relation and new tuple stay valid for the call;
    // the transaction's start time is what now() returns.
    let (row, now) = unsafe {
        (Row::new(data.tg_newtuple, (*data.tg_relation).rd_att), pg_sys::GetCurrentTransactionStartTimestamp())
    };
    let new = trigger.new().unwrap_or_else(|| pgrx::error!("touch_updated_at runs BEFORE UPDATE, FOR EACH ROW"));
    let mut touched = new.into_owned();
    if row.timestamptz("updated_at") != Some(now) {
        let now = pgrx::datum::TimestampWithTimeZone::try_from(now)
            .unwrap_or_else(|err| pgrx::error!("the transaction's time is no timestamp: {err:?}"));
        touched.set_by_name("updated_at", now).unwrap_or_else(|err| pgrx::error!("updated_at: {err}"));
    }
    Ok(Some(touched))
}
