//! Transactional realtime events.
//!
//! Triggers queue events in backend memory while a transaction runs. At commit, the deferred
//! constraint trigger `campfire.flush_events()` writes them to `campfire.events` and issues one
//! small `NOTIFY campfire_events`. Event ids (the cursor) are allocated there, under a
//! transaction-scoped advisory lock held until the commit is visible, so ids become visible in
//! increasing order: a reader asking for `id > cursor` never skips an event that commits later.
//! A rolled-back transaction or savepoint discards its queued events; NOTIFY limits can never fail
//! a write, because an oversized notification only points at the log.

use pgrx::PgOid;
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;
use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};
use serde::Serialize;
use serde_json::Value;
use std::cell::RefCell;

/// The one channel the relay LISTENs on.
pub const NOTIFY_CHANNEL: &str = "campfire_events";
/// Advisory lock (two-int form) that orders event-id allocation by commit: held from the flush to
/// the end of the transaction, so the next flusher allocates only after this commit is visible.
const LOG_LOCK: (i32, i32) = (0x6361_6d70, 1); // "camp", 1

/// Inline events in the NOTIFY payload up to this many bytes (PostgreSQL's hard limit is 7999).
pub static NOTIFY_INLINE_MAX: GucSetting<i32> = GucSetting::<i32>::new(7000);

#[derive(Serialize)]
struct LoggedEvent<'a> {
    id: i64,
    topic: &'a str,
    event: &'a str,
    payload: &'a Value,
}

struct PendingEvent {
    subtransaction: pg_sys::SubTransactionId,
    organization_id: pgrx::Uuid,
    conversation_id: Option<pgrx::Uuid>,
    topic: String,
    event: String,
    payload: Value,
}

thread_local! {
    static PENDING: RefCell<Vec<PendingEvent>> = const { RefCell::new(Vec::new()) };
}

pub fn init() {
    GucRegistry::define_int_guc(
        c"campfire.notify_inline_max",
        c"Largest NOTIFY payload, in bytes, that carries the events inline",
        c"Larger batches send only the range of event ids, which the relay reads from campfire.events. 0 never inlines.",
        &NOTIFY_INLINE_MAX,
        0,
        7900,
        GucContext::Userset,
        GucFlags::default(),
    );
    unsafe {
        pg_sys::RegisterXactCallback(Some(on_transaction_end), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(on_subtransaction_end), std::ptr::null_mut());
    }
}

/// Queues an event of the current (sub)transaction; `flush_events` writes it at commit.
pub fn queue(
    organization_id: pgrx::Uuid,
    conversation_id: Option<pgrx::Uuid>,
    topic: String,
    event: impl Into<String>,
    payload: Value,
) {
    let subtransaction = unsafe { pg_sys::GetCurrentSubTransactionId() };
    PENDING.with(|pending| {
        pending.borrow_mut().push(PendingEvent {
            subtransaction,
            organization_id,
            conversation_id,
            topic,
            event: event.into(),
            payload,
        })
    });
}

#[pg_guard]
unsafe extern "C-unwind" fn on_transaction_end(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    match event {
        pg_sys::XactEvent::XACT_EVENT_PRE_COMMIT | pg_sys::XactEvent::XACT_EVENT_PRE_PREPARE => {
            let unflushed = PENDING.with(|pending| pending.borrow().len());
            if unflushed > 0 {
                // Every table that queues events carries the flush trigger; reaching this means
                // one does not. Failing the commit is better than losing the events.
                PENDING.with(|pending| pending.borrow_mut().clear());
                ereport!(
                    ERROR,
                    PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                    format!("{unflushed} realtime events were queued but never flushed"),
                    "a table that emits events lacks the campfire_flush_events constraint trigger"
                );
            }
        }
        pg_sys::XactEvent::XACT_EVENT_ABORT | pg_sys::XactEvent::XACT_EVENT_PARALLEL_ABORT => {
            PENDING.with(|pending| pending.borrow_mut().clear());
        }
        _ => {}
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_subtransaction_end(
    event: pg_sys::SubXactEvent::Type,
    subtransaction: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    if event == pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB {
        // Subtransaction ids grow in start order, so every id at or above the aborting one
        // belongs to it or to a subtransaction nested inside it.
        PENDING.with(|pending| pending.borrow_mut().retain(|e| e.subtransaction < subtransaction));
    }
}

thread_local! {
    /// The log insert, planned once per backend. Ids come from the sequence in queue order;
    /// the advisory lock taken just before makes that order the commit order.
    static INSERT_EVENTS: RefCell<Option<OwnedPreparedStatement>> = const { RefCell::new(None) };
}

const INSERT_EVENTS_SQL: &str = "\
    INSERT INTO campfire.events (id, organization_id, conversation_id, topic, event, payload) \
    SELECT pg_catalog.nextval('campfire.events_id_seq'), o, c, t, e, p \
    FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::jsonb[]) WITH ORDINALITY AS u(o, c, t, e, p, n) \
    ORDER BY n RETURNING id";

/// Writes the queued events to the log and notifies the relay. Returns the number written.
pub fn flush() -> i64 {
    let events = PENDING.with(|pending| std::mem::take(&mut *pending.borrow_mut()));
    if events.is_empty() {
        return 0;
    }
    unsafe {
        pgrx::direct_function_call::<()>(
            pg_sys::pg_advisory_xact_lock_int4,
            &[LOG_LOCK.0.into_datum(), LOG_LOCK.1.into_datum()],
        );
    }
    let organizations: Vec<pgrx::Uuid> = events.iter().map(|e| e.organization_id).collect();
    let conversations: Vec<Option<pgrx::Uuid>> = events.iter().map(|e| e.conversation_id).collect();
    let topics: Vec<&str> = events.iter().map(|e| e.topic.as_str()).collect();
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    let payloads: Vec<pgrx::JsonB> = events.iter().map(|e| pgrx::JsonB(e.payload.clone())).collect();
    let args: [DatumWithOid; 5] =
        [organizations.into(), conversations.into(), topics.into(), names.into(), payloads.into()];
    let ids = Spi::connect_mut(|client| -> Result<Vec<i64>, pgrx::spi::Error> {
        let rows = INSERT_EVENTS.with(|cell| -> Result<_, pgrx::spi::Error> {
            let mut cached = cell.borrow_mut();
            if cached.is_none() {
                let types = [
                    pg_sys::UUIDARRAYOID,
                    pg_sys::UUIDARRAYOID,
                    pg_sys::TEXTARRAYOID,
                    pg_sys::TEXTARRAYOID,
                    pg_sys::JSONBARRAYOID,
                ];
                let types: Vec<PgOid> = types.into_iter().map(PgOid::from).collect();
                *cached = Some(client.prepare_mut(INSERT_EVENTS_SQL, &types)?.keep());
            }
            client.update(cached.as_ref().expect("prepared above"), None, &args)
        })?;
        rows.map(|row| row.get::<i64>(1).map(|id| id.expect("RETURNING id"))).collect()
    })
    .unwrap_or_else(|err| pgrx::error!("writing realtime events failed: {err}"));
    notify(&ids, &events);
    ids.len() as i64
}

/// One NOTIFY per flush: the events inline when they fit, otherwise only their id range.
fn notify(ids: &[i64], events: &[PendingEvent]) {
    let (first, last) = (ids[0], ids[ids.len() - 1]);
    let inline: Vec<LoggedEvent> = events
        .iter()
        .zip(ids)
        .map(|(e, &id)| LoggedEvent { id, topic: &e.topic, event: &e.event, payload: &e.payload })
        .collect();
    let full = serde_json::json!({ "first": first, "last": last, "events": inline }).to_string();
    let payload = if full.len() <= NOTIFY_INLINE_MAX.get().max(0) as usize {
        full
    } else {
        serde_json::json!({ "first": first, "last": last }).to_string()
    };
    unsafe {
        pgrx::direct_function_call::<()>(pg_sys::pg_notify, &[NOTIFY_CHANNEL.into_datum(), payload.into_datum()]);
    }
}

/// Deferred constraint trigger on every table that emits events: the first firing at commit
/// flushes the whole transaction's queue, later firings find it empty.
#[pg_trigger]
fn flush_events<'a>(
    _trigger: &'a pgrx::PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, pgrx::AllocatedByPostgres>>, std::convert::Infallible> {
    flush();
    Ok(None)
}

/// `campfire.broadcast(organization_id, topic, event, payload)`: publish a custom event through
/// the log, for application code (service role). Flushed at once, so the log lock is held from
/// here to commit: keep such transactions short.
#[pg_extern(volatile)]
fn broadcast(organization_id: pgrx::Uuid, topic: &str, event: &str, payload: pgrx::JsonB) -> i64 {
    let channel = match crate::channel::parse(topic) {
        Ok(channel) => channel,
        Err(err) => {
            ereport!(ERROR, PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, format!("invalid channel name: {err}"));
        }
    };
    if channel.organization().as_bytes() != organization_id.as_bytes() {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "the channel belongs to another organization than organization_id"
        );
    }
    if event.is_empty() || event.len() > 255 {
        ereport!(ERROR, PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, "event name must be 1-255 bytes");
    }
    let conversation = channel.conversation().map(|c| pgrx::Uuid::from_bytes(*c.as_bytes()));
    queue(organization_id, conversation, channel.canonical(), event, payload.0);
    flush()
}
