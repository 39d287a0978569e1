//! Transactional realtime events.
//!
//! Triggers queue events in backend memory while a transaction runs. At pre-commit, after every
//! deferred trigger and never earlier, they are handed on: straight to `campfire.events` when the
//! log is idle (or no sequencer can run), otherwise to `campfire.event_queue`, for the sequencer
//! (see `sequencer.rs`) to log after the commit.
//! Whoever writes to the log allocates the event ids (the cursor) under a transaction-scoped
//! advisory lock held until its commit is visible, so ids become visible in increasing order: a
//! reader asking for `id > cursor` never skips an event that commits later. Because the flush is
//! the last thing before the commit, no open transaction ever holds that lock. Writing to the log
//! sends sealed `NOTIFY campfire_events` with the events inline (`{"first","last","events"}`),
//! split over several notifications when they do not fit; an event too large for one is
//! announced by its id alone (`{"first","last"}`), so NOTIFY limits can never fail a write. A
//! rolled-back transaction or savepoint discards its queued events.

use crate::sequencer::Sequencer;
use pgrx::PgOid;
use pgrx::datum::{DatumWithOid, JsonString};
use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;
use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};
use serde_json::Value;
use std::cell::{Cell, RefCell};

/// Advisory lock (two-int form) that orders event-id allocation by commit: held from the flush to
/// the end of the transaction, so the next flusher allocates only after this commit is visible.
const LOG_LOCK: (i32, i32) = (0x6361_6d70, 1); // "camp", 1

/// Inline events in the NOTIFY payload up to this many bytes before sealing (at most
/// `campfire_core::sealed::MAX_PAYLOAD`, what fits in one notification once sealed).
pub static NOTIFY_INLINE_MAX: GucSetting<i32> = GucSetting::<i32>::new(5900);

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
        campfire_core::sealed::MAX_PAYLOAD as i32,
        GucContext::Userset,
        GucFlags::default(),
    );
    // SAFETY: registered once per backend, from _PG_init; the callbacks are pg_guard'ed.
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
    // SAFETY: a plain read of the backend's transaction state, inside a transaction.
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
            // The transaction's events are written now, the last thing before its commit: a
            // transaction that stays open (idle, slow, or with its constraints made immediate)
            // holds no lock over the log.
            if PENDING.with(|pending| !pending.borrow().is_empty()) {
                // SAFETY: a snapshot for the statements, pushed and popped around them, as
                // PostgreSQL does for the deferred triggers it fires at this same point.
                unsafe { pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot()) };
                as_owner(|| {
                    flush();
                });
                unsafe { pg_sys::PopActiveSnapshot() };
            }
        }
        pg_sys::XactEvent::XACT_EVENT_COMMIT => crate::sequencer::on_transaction_end(true),
        pg_sys::XactEvent::XACT_EVENT_ABORT | pg_sys::XactEvent::XACT_EVENT_PARALLEL_ABORT => {
            PENDING.with(|pending| pending.borrow_mut().clear());
            crate::sequencer::on_transaction_end(false);
        }
        // A prepared transaction commits later, elsewhere: the sequencer's idle poll finds it.
        pg_sys::XactEvent::XACT_EVENT_PREPARE => crate::sequencer::on_transaction_end(false),
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

/// An event as written to the log, its payload already JSON text.
struct Logged {
    id: i64,
    topic: String,
    event: String,
    payload: String,
}

thread_local! {
    /// Statements planned once per backend (SQL text → kept plan).
    static PLANS: RefCell<Vec<(&'static str, OwnedPreparedStatement)>> = const { RefCell::new(Vec::new()) };
}

/// Runs `sql` through this backend's kept plan for it, preparing it on first use.
fn run_kept<T>(
    sql: &'static str,
    types: &[pg_sys::Oid],
    args: &[DatumWithOid],
    mut row: impl FnMut(&pgrx::spi::SpiHeapTupleData) -> Result<T, pgrx::spi::Error>,
) -> Vec<T> {
    Spi::connect_mut(|client| -> Result<Vec<T>, pgrx::spi::Error> {
        PLANS.with(|plans| {
            let mut plans = plans.borrow_mut();
            let index = match plans.iter().position(|(text, _)| *text == sql) {
                Some(index) => index,
                None => {
                    let types: Vec<PgOid> = types.iter().copied().map(PgOid::from).collect();
                    plans.push((sql, client.prepare_mut(sql, &types)?.keep()));
                    plans.len() - 1
                }
            };
            let rows = client.update(&plans[index].1, None, args)?;
            rows.map(|tuple| row(&tuple)).collect()
        })
    })
    .unwrap_or_else(|err| pgrx::error!("writing realtime events failed: {err}"))
}

/// Payloads travel as `json` built here: serialized once, never parsed again (a cast from text
/// would run the JSON parser over every payload just to validate what serde_json wrote).
///
/// These statements run with the extension owner's rights inside a caller's session, so they name
/// every relation, function and type by its schema: nothing in them may resolve through the
/// caller's search_path or temp schema (the parameters are typed by oid, so they need no cast).
const EVENT_ARRAY_TYPES: [pg_sys::Oid; 5] =
    [pg_sys::UUIDARRAYOID, pg_sys::UUIDARRAYOID, pg_sys::TEXTARRAYOID, pg_sys::TEXTARRAYOID, pg_sys::JSONARRAYOID];

/// The five parameter arrays as rows `u(o, c, t, e, p)`, numbered `n` in their order. (The
/// multi-argument `unnest(a, b, ...)` shorthand exists only unqualified.)
macro_rules! event_rows {
    () => {
        "ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3), pg_catalog.unnest($4), \
         pg_catalog.unnest($5)) WITH ORDINALITY AS u(o, c, t, e, p, n)"
    };
}

const QUEUE_EVENTS_SQL: &str = concat!(
    "INSERT INTO campfire.event_queue (organization_id, conversation_id, topic, event, payload) \
     SELECT o, c, t, e, p FROM ",
    event_rows!(),
    " ORDER BY n"
);

/// Ids come from the sequence in queue order; the log lock taken just before makes that order
/// the commit order.
const LOG_EVENTS_SQL: &str = concat!(
    "INSERT INTO campfire.events (id, organization_id, conversation_id, topic, event, payload) \
     SELECT pg_catalog.nextval('campfire.events_id_seq'::pg_catalog.regclass), o, c, t, e, p FROM ",
    event_rows!(),
    " ORDER BY n RETURNING id, topic, event, payload::pg_catalog.text"
);

const DRAIN_QUEUE_SQL: &str = "\
    WITH moved AS ( \
        DELETE FROM campfire.event_queue q \
        WHERE q.id = ANY (ARRAY(SELECT id FROM campfire.event_queue ORDER BY id LIMIT $1)) \
        RETURNING q.*) \
    INSERT INTO campfire.events (id, organization_id, conversation_id, topic, event, payload) \
    SELECT pg_catalog.nextval('campfire.events_id_seq'::pg_catalog.regclass), organization_id, conversation_id, topic, \
           event, payload \
    FROM moved ORDER BY moved.id \
    RETURNING id, topic, event, payload::pg_catalog.text";

fn logged_row(row: &pgrx::spi::SpiHeapTupleData) -> Result<Logged, pgrx::spi::Error> {
    Ok(Logged {
        id: row.get::<i64>(1)?.unwrap_or_default(),
        topic: row.get::<String>(2)?.unwrap_or_default(),
        event: row.get::<String>(3)?.unwrap_or_default(),
        payload: row.get::<String>(4)?.unwrap_or_default(),
    })
}

const QUEUE_IS_EMPTY_SQL: &str = "SELECT NOT EXISTS (SELECT FROM campfire.event_queue ORDER BY id LIMIT 1)";

fn queue_is_empty() -> bool {
    by_index(|| run_kept(QUEUE_IS_EMPTY_SQL, &[], &[], |row| row.get::<bool>(1)))
        .first()
        .copied()
        .flatten()
        .unwrap_or(false)
}

/// Runs `f` with sequential and bitmap scans (and JIT) off, as a function's `SET` clause would. The
/// queue is nearly always empty of live rows but full of dead ones between vacuums, and its
/// statistics say "tiny": the planner would pick a sequential scan that reads every dead row.
/// Kept plans are re-planned when invalidated, so the settings must hold while they execute.
fn by_index<T>(f: impl FnOnce() -> T) -> T {
    with_settings(&[(c"enable_seqscan", c"off"), (c"enable_bitmapscan", c"off"), (c"jit", c"off")], f)
}

/// Runs `f` with `settings` in force, restored afterwards (or by the abort of the transaction).
fn with_settings<T>(settings: &[(&std::ffi::CStr, &std::ffi::CStr)], f: impl FnOnce() -> T) -> T {
    // SAFETY: a GUC nest level opened and closed around `f`, as fmgr does for a function's SET.
    unsafe {
        let nest_level = pg_sys::NewGUCNestLevel();
        for (name, value) in settings {
            pg_sys::set_config_option(
                name.as_ptr(),
                value.as_ptr(),
                pg_sys::GucContext::PGC_USERSET,
                pg_sys::GucSource::PGC_S_SESSION,
                pg_sys::GucAction::GUC_ACTION_SAVE,
                true,
                0,
                false,
            );
        }
        let result = f();
        pg_sys::AtEOXact_GUC(true, nest_level);
        result
    }
}

/// Takes the log lock when nobody holds it and nothing waits in the queue, so that this
/// transaction may write its events to the log itself without passing events queued before it.
/// The queue is looked at before (to avoid holding the lock for nothing) and after taking it.
fn claim_idle_log() -> bool {
    if !queue_is_empty() {
        return false;
    }
    // SAFETY: the int4 pair form of pg_try_advisory_xact_lock, called with two int4 datums.
    let locked = unsafe {
        pgrx::direct_function_call::<bool>(
            pg_sys::pg_try_advisory_xact_lock_int4,
            &[LOG_LOCK.0.into_datum(), LOG_LOCK.1.into_datum()],
        )
    };
    locked == Some(true) && queue_is_empty()
}

fn lock_log() {
    // SAFETY: the int4 pair form of pg_advisory_xact_lock, called with two int4 datums.
    unsafe {
        pgrx::direct_function_call::<()>(
            pg_sys::pg_advisory_xact_lock_int4,
            &[LOG_LOCK.0.into_datum(), LOG_LOCK.1.into_datum()],
        );
    }
}

/// Writes the transaction's queued events: to the sequencer's queue when one serves this
/// database, otherwise straight to the log with a NOTIFY. Returns the number of events.
pub fn flush() -> i64 {
    let events = PENDING.with(|pending| std::mem::take(&mut *pending.borrow_mut()));
    if events.is_empty() {
        return 0;
    }
    let organizations: Vec<pgrx::Uuid> = events.iter().map(|e| e.organization_id).collect();
    let conversations: Vec<Option<pgrx::Uuid>> = events.iter().map(|e| e.conversation_id).collect();
    let topics: Vec<&str> = events.iter().map(|e| e.topic.as_str()).collect();
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    let payloads: Vec<JsonString> = events.iter().map(|e| JsonString(e.payload.to_string())).collect();
    let args: [DatumWithOid; 5] =
        [organizations.into(), conversations.into(), topics.into(), names.into(), payloads.into()];
    // The log may be written here only when that passes no queued event: queued events of an
    // earlier commit (say, the previous message of the conversation) must get lower cursors.
    let direct = match crate::sequencer::state() {
        Sequencer::Unavailable => true,
        Sequencer::Stopped => {
            lock_log();
            queue_is_empty()
        }
        Sequencer::Running => claim_idle_log(),
    };
    if !direct {
        run_kept(QUEUE_EVENTS_SQL, &EVENT_ARRAY_TYPES, &args, |_| Ok(()));
        crate::sequencer::wake_after_commit();
    } else {
        lock_log(); // already held when claimed: advisory locks count re-entries
        let mut logged = run_kept(LOG_EVENTS_SQL, &EVENT_ARRAY_TYPES, &args, logged_row);
        logged.sort_by_key(|e| e.id);
        notify(&logged);
    }
    events.len() as i64
}

/// Moves up to `limit` committed events from the queue into the log, in queue order, and
/// notifies the relays. Used by the sequencer; returns how many it moved.
pub fn drain_queue(limit: i64) -> usize {
    lock_log();
    let mut logged = by_index(|| run_kept(DRAIN_QUEUE_SQL, &[pg_sys::INT8OID], &[limit.into()], logged_row));
    logged.sort_by_key(|e| e.id);
    notify(&logged);
    logged.len()
}

/// NOTIFYs for logged events, in id order: each carries as many whole events inline as fit in
/// `campfire.notify_inline_max`; an event too large for that is announced by its id alone.
fn notify(logged: &[Logged]) {
    let limit = (NOTIFY_INLINE_MAX.get().max(0) as usize).min(campfire_core::sealed::MAX_PAYLOAD);
    let mut batch: Vec<String> = Vec::new();
    let mut batch_ids = (0, 0);
    let send = |batch: &mut Vec<String>, (first, last): (i64, i64)| {
        let payload = if batch.is_empty() {
            format!(r#"{{"first":{first},"last":{last}}}"#)
        } else {
            format!(r#"{{"first":{first},"last":{last},"events":[{}]}}"#, batch.join(","))
        };
        batch.clear();
        crate::notify::send(campfire_core::channels::EVENTS, &payload);
    };
    // Room for the envelope around the events: two ids of up to 20 digits and the keys.
    const ENVELOPE: usize = 80;
    let mut size = ENVELOPE;
    for e in logged {
        let item = format!(
            r#"{{"id":{},"topic":{},"event":{},"payload":{}}}"#,
            e.id,
            Value::from(e.topic.as_str()),
            Value::from(e.event.as_str()),
            e.payload
        );
        if !batch.is_empty() && size + 1 + item.len() > limit {
            send(&mut batch, batch_ids);
            size = ENVELOPE;
        }
        if ENVELOPE + item.len() > limit {
            send(&mut batch, (e.id, e.id));
            continue;
        }
        if batch.is_empty() {
            batch_ids.0 = e.id;
        }
        batch_ids.1 = e.id;
        size += 1 + item.len();
        batch.push(item);
    }
    if !batch.is_empty() {
        send(&mut batch, batch_ids);
    }
}

/// The transaction's queued events, written now. 0.1.0 fired it as a deferred constraint trigger
/// on every table that emits events; since 0.2.0 the flush runs at pre-commit by itself, and a
/// trigger a DBA still has on a table of their own does no harm (it flushes a little earlier).
#[pg_trigger]
fn flush_events<'a>(
    _trigger: &'a pgrx::PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, pgrx::AllocatedByPostgres>>, std::convert::Infallible> {
    flush();
    Ok(None)
}

thread_local! {
    /// The extension and its owner, looked up again only when the extension is another one
    /// (dropped and created again) than last time.
    static OWNER: Cell<Option<(pg_sys::Oid, pg_sys::Oid)>> = const { Cell::new(None) };
}

fn extension_owner() -> pg_sys::Oid {
    // SAFETY: a catalog lookup by name, inside a transaction; missing_ok returns InvalidOid.
    let extension = unsafe { pg_sys::get_extension_oid(c"pg_campfire".as_ptr(), true) };
    if extension == pg_sys::InvalidOid {
        pgrx::error!("pg_campfire is not installed in this database");
    }
    if let Some((cached, owner)) = OWNER.get()
        && cached == extension
    {
        return owner;
    }
    let owner = Spi::get_one_with_args::<pg_sys::Oid>(
        "SELECT e.extowner FROM pg_catalog.pg_extension e WHERE e.oid OPERATOR(pg_catalog.=) $1",
        &[extension.into()],
    )
    .ok()
    .flatten()
    .unwrap_or_else(|| pgrx::error!("pg_campfire is not installed in this database"));
    OWNER.set(Some((extension, owner)));
    owner
}

/// Runs `f` as the extension's owner with the pinned search_path, as a SECURITY DEFINER function
/// would: for the commit-time flush, which runs outside any function. On error the transaction
/// aborts, which restores the user and the settings.
fn as_owner(f: impl FnOnce()) {
    let owner = extension_owner();
    let (mut user, mut context) = (pg_sys::InvalidOid, 0);
    // SAFETY: plain reads and writes of the backend's current user; the previous values are put
    // back below, or by the abort of the transaction.
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut user, &mut context);
        pg_sys::SetUserIdAndSecContext(
            owner,
            context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32 | pg_sys::SECURITY_RESTRICTED_OPERATION as i32,
        );
    }
    with_settings(&[(c"search_path", c"pg_catalog, campfire, pg_temp")], f);
    // SAFETY: as above.
    unsafe { pg_sys::SetUserIdAndSecContext(user, context) };
}

/// `campfire.broadcast(organization_id, topic, event, payload)`: publish a custom event through
/// the log, for application code (service role), when the transaction commits. Returns the
/// number of events queued (1).
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
    1
}
