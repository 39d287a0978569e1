//! Transactional realtime events.
//!
//! Triggers queue events in backend memory while a transaction runs. At pre-commit, after every
//! deferred trigger and never earlier, they are written to `campfire.events` with a block of ids
//! from `horizon::reserve`, and readers see them once the log's horizon passes them, which is at
//! this transaction's commit and never before an earlier id is settled (see `horizon.rs`): a
//! reader asking for `id > cursor` never skips an event that commits later, and no lock is held
//! across anyone's transaction. The relays hear of new events by a sealed
//! `NOTIFY campfire_events` with the events inline (`{"first","last","events"}`), split over
//! several notifications when they do not fit; an event too large for one is announced by its
//! range alone (`{"first","last"}`), so NOTIFY limits can never fail a write. Under load the
//! notifier background worker sends them, one notification for many commits (see
//! `notifier.rs`); otherwise the writer does. A rolled-back transaction or savepoint discards its
//! queued events.

use crate::kept_plans::{kept_value, run_kept};
use campfire_core::announcement::{Announcement, LoggedEvent};
use pgrx::datum::{DatumWithOid, JsonString};
use pgrx::prelude::*;
use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};
use serde_json::value::RawValue;
use std::cell::{Cell, RefCell};

/// Inline events in the NOTIFY payload up to this many bytes before sealing (at most
/// `campfire_core::sealed::MAX_PAYLOAD`, what fits in one notification once sealed).
pub static NOTIFY_INLINE_MAX: GucSetting<i32> = GucSetting::<i32>::new(5900);

struct PendingEvent {
    subtransaction: pg_sys::SubTransactionId,
    organization_id: uuid::Uuid,
    conversation_id: Option<uuid::Uuid>,
    topic: String,
    event: String,
    payload: Box<RawValue>,
    /// A `conversation:updated` payload announced just before this event (see `take_conversation_update`).
    conversation_update: Option<Box<RawValue>>,
}

impl PendingEvent {
    /// How many ids, and deliveries, the event's log row accounts for.
    fn span(&self) -> i64 {
        1 + self.conversation_update.is_some() as i64
    }
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

fn current_subtransaction() -> pg_sys::SubTransactionId {
    // SAFETY: a plain read of the backend's transaction state, inside a transaction.
    unsafe { pg_sys::GetCurrentSubTransactionId() }
}

/// Queues an event of the current (sub)transaction; `flush_events` writes it at commit.
pub fn queue(
    organization_id: uuid::Uuid,
    conversation_id: Option<uuid::Uuid>,
    topic: String,
    event: impl Into<String>,
    payload: Box<RawValue>,
) {
    queue_after(organization_id, conversation_id, topic, event, payload, None);
}

/// Queues an event that a `conversation:updated` (from `take_conversation_update`) precedes:
/// both go to the log as one row with two ids, the update's first.
pub fn queue_after(
    organization_id: uuid::Uuid,
    conversation_id: Option<uuid::Uuid>,
    topic: String,
    event: impl Into<String>,
    payload: Box<RawValue>,
    conversation_update: Option<Box<RawValue>>,
) {
    let subtransaction = current_subtransaction();
    PENDING.with(|pending| {
        pending.borrow_mut().push(PendingEvent {
            subtransaction,
            organization_id,
            conversation_id,
            topic,
            event: event.into(),
            payload,
            conversation_update,
        })
    });
}

/// Takes back the `conversation:updated` of `conversation` that a new message's own summary
/// update just queued, for the message's conversation-list event to carry (`queue_after`): one
/// log row instead of two, read back as the same two events. Only when nothing but the message's
/// event on its conversation channel came in between, in the same subtransaction, so that no
/// event of the organization channel moves past it.
pub fn take_conversation_update(conversation: uuid::Uuid) -> Option<Box<RawValue>> {
    if !log_carries_updates() {
        return None;
    }
    let subtransaction = current_subtransaction();
    PENDING.with(|pending| {
        let mut pending = pending.borrow_mut();
        let index = pending.iter().rposition(|e| e.event == "conversation:updated")?;
        let same = |e: &PendingEvent| e.subtransaction == subtransaction && e.conversation_id == Some(conversation);
        let between = &pending[index + 1..];
        let adjacent = between.len() <= 1 && between.iter().all(|e| same(e) && e.event.starts_with("message:"));
        (adjacent && same(&pending[index])).then(|| pending.remove(index).payload)
    })
}

#[pg_guard]
unsafe extern "C-unwind" fn on_transaction_end(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    let pending = || PENDING.with(|pending| !pending.borrow().is_empty());
    match event {
        // The transaction's events are written now, the last thing before its commit: a
        // transaction that stays open (idle, slow, or with its constraints made immediate) holds
        // back nobody's events.
        pg_sys::XactEvent::XACT_EVENT_PRE_COMMIT if pending() => {
            // SAFETY: a snapshot for the statements, pushed and popped around them, as
            // PostgreSQL does for the deferred triggers it fires at this same point.
            unsafe { pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot()) };
            as_owner(|| {
                flush();
            });
            // SAFETY: pops the snapshot pushed above (an error aborts, which pops it instead).
            unsafe { pg_sys::PopActiveSnapshot() };
        }
        // A prepared transaction commits later, from another session, which could not withdraw
        // its ids from the horizon: refused, as PostgreSQL refuses to prepare one that NOTIFYs.
        pg_sys::XactEvent::XACT_EVENT_PRE_PREPARE if pending() => {
            ereport!(
                ERROR,
                PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                "cannot PREPARE a transaction that has written realtime events",
                "Its event ids would stay in flight after the transaction left its session."
            );
        }
        pg_sys::XactEvent::XACT_EVENT_COMMIT => {
            crate::horizon::settle();
            crate::notifier::on_transaction_end(true);
        }
        pg_sys::XactEvent::XACT_EVENT_ABORT | pg_sys::XactEvent::XACT_EVENT_PARALLEL_ABORT => {
            PENDING.with(|pending| pending.borrow_mut().clear());
            crate::horizon::settle();
            crate::notifier::on_transaction_end(false);
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

/// An event as written to the log and announced, its payload already JSON text.
pub type Logged = LoggedEvent<Box<RawValue>>;

/// A payload's JSON text, serialized once when its event is queued and never parsed again.
pub fn json_text(value: &impl serde::Serialize) -> Box<RawValue> {
    serde_json::value::to_raw_value(value).unwrap_or_else(|err| pgrx::error!("an event payload: {err}"))
}

/// Whether the log has the `conversation_update` column, which 0.1.0's has not: the library can
/// run on 0.1.0's schema, between a restart and ALTER EXTENSION UPDATE, and then logs every event
/// in a row of its own.
fn log_carries_updates() -> bool {
    let log = log_relation();
    // SAFETY: a catalog cache lookup by name, inside a transaction; InvalidAttrNumber if missing.
    log != pg_sys::InvalidOid && unsafe { pg_sys::get_attnum(log, c"conversation_update".as_ptr()) } != 0
}

// The log's inserts. Payloads travel as `json` built here: serialized once, never parsed again (a
// cast from text would run the JSON parser over every payload just to validate what serde_json
// wrote). These statements run with the extension owner's rights inside a caller's session, so
// they name every relation, function and type by its schema: nothing in them may resolve through
// the caller's search_path or temp schema (the parameters are typed by oid, so they need no cast).

/// Up to `VALUES_MAX_ROWS` rows (a message's two, a conversation update's or a read receipt's
/// one) are a VALUES list of scalar parameters, one kept plan per row count; more, the seven
/// parameter arrays of `LOG_EVENTS_SQL` unnested. The arrays cost more for the few rows most
/// transactions write: built here, taken apart again, each unnest into a tuplestore (two log rows
/// alone, 8 writers: ~290 µs of PostgreSQL CPU a transaction through unnest, ~235 µs through
/// VALUES).
const VALUES_MAX_ROWS: usize = 4;

/// The log's columns with their parameter types; 0.1.0's schema has all but the last.
const LOG_COLUMNS: [(&str, pg_sys::Oid); 7] = [
    ("id", pg_sys::INT8OID),
    ("organization_id", pg_sys::UUIDOID),
    ("conversation_id", pg_sys::UUIDOID),
    ("topic", pg_sys::TEXTOID),
    ("event", pg_sys::TEXTOID),
    ("payload", pg_sys::JSONOID),
    ("conversation_update", pg_sys::JSONOID),
];

thread_local! {
    /// `log_values_sql`'s texts, made once per backend: at most `VALUES_MAX_ROWS` × 2 of them.
    static LOG_VALUES_TEXTS: RefCell<Vec<((usize, usize), &'static str)>> = const { RefCell::new(Vec::new()) };
}

/// `INSERT INTO campfire.events (the first `columns`) VALUES ($1, ...), ...` for `rows` rows.
fn log_values_sql(rows: usize, columns: usize) -> &'static str {
    LOG_VALUES_TEXTS.with(|texts| {
        let mut texts = texts.borrow_mut();
        if let Some(&(_, text)) = texts.iter().find(|(key, _)| *key == (rows, columns)) {
            return text;
        }
        let text: &'static str = Box::leak(build_log_values_sql(rows, columns).into_boxed_str());
        texts.push(((rows, columns), text));
        text
    })
}

fn build_log_values_sql(rows: usize, columns: usize) -> String {
    let names: Vec<&str> = LOG_COLUMNS[..columns].iter().map(|(name, _)| *name).collect();
    let row = |r: usize| {
        let parameters: Vec<String> = (1..=columns).map(|c| format!("${}", r * columns + c)).collect();
        format!("({})", parameters.join(", "))
    };
    let values: Vec<String> = (0..rows).map(row).collect();
    format!("INSERT INTO campfire.events ({}) VALUES {}", names.join(", "), values.join(", "))
}

/// The seven parameter arrays become the rows. (The multi-argument `unnest(a, b, ...)` shorthand
/// exists only unqualified.)
const LOG_EVENTS_SQL: &str = "\
    INSERT INTO campfire.events (id, organization_id, conversation_id, topic, event, payload, conversation_update) \
    SELECT i, o, c, t, e, p, u \
    FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3), pg_catalog.unnest($4), \
                    pg_catalog.unnest($5), pg_catalog.unnest($6), pg_catalog.unnest($7)) AS r(i, o, c, t, e, p, u)";

const LOG_EVENTS_TYPES: [pg_sys::Oid; 7] = [
    pg_sys::INT8ARRAYOID,
    pg_sys::UUIDARRAYOID,
    pg_sys::UUIDARRAYOID,
    pg_sys::TEXTARRAYOID,
    pg_sys::TEXTARRAYOID,
    pg_sys::JSONARRAYOID,
    pg_sys::JSONARRAYOID,
];

/// A transaction with no conversation update to log: the statement every schema takes (the first
/// six parameters of `LOG_EVENTS_SQL`).
const LOG_PLAIN_EVENTS_SQL: &str = "\
    INSERT INTO campfire.events (id, organization_id, conversation_id, topic, event, payload) \
    SELECT i, o, c, t, e, p \
    FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3), pg_catalog.unnest($4), \
                    pg_catalog.unnest($5), pg_catalog.unnest($6)) AS r(i, o, c, t, e, p)";

/// Writes the transaction's queued events to the log, with the ids `horizon::reserve` gives it,
/// and announces them itself unless the notifier will (see `notifier.rs`). Returns the number of
/// events.
pub fn flush() -> i64 {
    let events = PENDING.with(|pending| std::mem::take(&mut *pending.borrow_mut()));
    if events.is_empty() {
        return 0;
    }
    let count: i64 = events.iter().map(PendingEvent::span).sum();
    let first = crate::horizon::reserve(count as usize);
    let ids: Vec<i64> = events.iter().scan(first, |next, e| Some(std::mem::replace(next, *next + e.span()))).collect();
    // Without a conversation update, the six columns every schema has.
    let columns = if events.iter().any(|e| e.conversation_update.is_some()) { 7 } else { 6 };
    if events.len() <= VALUES_MAX_ROWS {
        let args: Vec<DatumWithOid> = events
            .iter()
            .zip(&ids)
            .flat_map(|(e, &id)| {
                let row: [DatumWithOid; 7] = [
                    id.into(),
                    to_pg(e.organization_id).into(),
                    e.conversation_id.map(to_pg).into(),
                    e.topic.as_str().into(),
                    e.event.as_str().into(),
                    json(&e.payload).into(),
                    e.conversation_update.as_deref().map(json).into(),
                ];
                row.into_iter().take(columns)
            })
            .collect();
        let types: Vec<pg_sys::Oid> = LOG_COLUMNS[..columns].iter().map(|&(_, oid)| oid).collect();
        run_kept(
            "writing realtime events",
            log_values_sql(events.len(), columns),
            &types.repeat(events.len()),
            &args,
            |_| Ok(()),
        );
    } else {
        log_unnested(&events, &ids, columns);
    }
    if !crate::notifier::will_announce(first, first + count - 1) {
        let mut logged = Vec::with_capacity(count as usize);
        for (e, id) in events.into_iter().zip(ids) {
            let (payload, update) = (e.payload, e.conversation_update);
            push_deliveries(
                &mut logged,
                LogRow { id, organization: e.organization_id, topic: e.topic, event: e.event, payload, update },
            );
        }
        notify(first, first + count - 1, &logged);
    }
    count
}

/// The log rows of a transaction with more than `VALUES_MAX_ROWS`, as parameter arrays.
fn log_unnested(events: &[PendingEvent], ids: &[i64], columns: usize) {
    let args: [DatumWithOid; 7] = [
        ids.to_vec().into(),
        events.iter().map(|e| to_pg(e.organization_id)).collect::<Vec<_>>().into(),
        events.iter().map(|e| e.conversation_id.map(to_pg)).collect::<Vec<_>>().into(),
        events.iter().map(|e| e.topic.as_str()).collect::<Vec<_>>().into(),
        events.iter().map(|e| e.event.as_str()).collect::<Vec<_>>().into(),
        events.iter().map(|e| json(&e.payload)).collect::<Vec<_>>().into(),
        events.iter().map(|e| e.conversation_update.as_deref().map(json)).collect::<Vec<_>>().into(),
    ];
    let sql = if columns == 7 { LOG_EVENTS_SQL } else { LOG_PLAIN_EVENTS_SQL };
    run_kept("writing realtime events", sql, &LOG_EVENTS_TYPES[..columns], &args[..columns], |_| Ok(()));
}

/// A payload as a `json` parameter.
fn json(text: &RawValue) -> JsonString {
    JsonString(text.get().to_owned())
}

fn to_pg(id: uuid::Uuid) -> pgrx::Uuid {
    pgrx::Uuid::from_bytes(*id.as_bytes())
}

/// One row of the log, payloads as JSON text.
struct LogRow {
    id: i64,
    organization: uuid::Uuid,
    topic: String,
    event: String,
    payload: Box<RawValue>,
    update: Option<Box<RawValue>>,
}

/// The events a log row delivers, in id order: the `conversation:updated` it carries, on its
/// organization's channel, then its own event (as `campfire.deliveries` reads them in SQL).
fn push_deliveries(logged: &mut Vec<Logged>, row: LogRow) {
    let mut id = row.id;
    if let Some(payload) = row.update {
        let topic = format!("org:{}", row.organization);
        logged.push(Logged { id, topic, event: "conversation:updated".to_owned(), payload });
        id += 1;
    }
    logged.push(Logged { id, topic: row.topic, event: row.event, payload: row.payload });
}

/// JSON text the log holds, which PostgreSQL has validated already.
fn logged_json(text: String) -> Box<RawValue> {
    RawValue::from_string(text).unwrap_or_else(|err| pgrx::error!("a logged payload is not JSON: {err}"))
}

/// From the row at `$1` on: a row at the cursor itself may deliver a second event after it.
const READ_LOG_SQL: &str = "\
    SELECT e.id, e.organization_id, e.topic, e.event, e.payload::pg_catalog.text, e.conversation_update::pg_catalog.text \
    FROM campfire.events e \
    WHERE e.id OPERATOR(pg_catalog.>=) $1 AND e.id OPERATOR(pg_catalog.<=) $2 ORDER BY e.id LIMIT $3";
/// The same on 0.1.0's schema.
const READ_PLAIN_LOG_SQL: &str = "\
    SELECT e.id, e.organization_id, e.topic, e.event, e.payload::pg_catalog.text, NULL::pg_catalog.text \
    FROM campfire.events e \
    WHERE e.id OPERATOR(pg_catalog.>=) $1 AND e.id OPERATOR(pg_catalog.<=) $2 ORDER BY e.id LIMIT $3";

/// The logged events with ids in `(after, through]`, in id order, from at most `limit` log rows;
/// and whether that limit cut the read short.
pub fn read_log(after: i64, through: i64, limit: i64) -> (Vec<Logged>, bool) {
    let types = [pg_sys::INT8OID, pg_sys::INT8OID, pg_sys::INT8OID];
    let sql = if log_carries_updates() { READ_LOG_SQL } else { READ_PLAIN_LOG_SQL };
    let rows = run_kept("reading the log", sql, &types, &[after.into(), through.into(), limit.into()], |row| {
        Ok(LogRow {
            id: row.get::<i64>(1)?.unwrap_or_default(),
            organization: row
                .get::<pgrx::Uuid>(2)?
                .map(|id| uuid::Uuid::from_bytes(*id.as_bytes()))
                .unwrap_or_default(),
            topic: row.get::<String>(3)?.unwrap_or_default(),
            event: row.get::<String>(4)?.unwrap_or_default(),
            payload: logged_json(row.get::<String>(5)?.unwrap_or_default()),
            update: row.get::<String>(6)?.map(logged_json),
        })
    });
    let full = rows.len() as i64 >= limit;
    let mut logged = Vec::with_capacity(rows.len() * 2);
    for row in rows {
        push_deliveries(&mut logged, row);
    }
    logged.retain(|e| e.id > after);
    (logged, full)
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

/// NOTIFYs that account for every id from `from` through `through`, in order: each covers a range
/// and carries its events inline (a range with none in it carries an empty list), as many as fit
/// in `campfire.notify_inline_max`; an event too large for that is announced without events, for
/// the relay to read from the log.
pub fn notify(from: i64, through: i64, logged: &[Logged]) {
    let limit = (NOTIFY_INLINE_MAX.get().max(0) as usize).min(campfire_core::sealed::MAX_PAYLOAD);
    let send = |first: i64, last: i64, events: Option<&[&Logged]>| {
        let note = serde_json::to_string(&Announcement { first, last, events }).expect("an announcement serializes");
        crate::notify::send(campfire_core::channels::EVENTS, &note);
    };
    // Room for the envelope around the events: two ids of up to 20 digits and the keys.
    const ENVELOPE: usize = 80;
    let (mut batch, mut size, mut start) = (Vec::new(), ENVELOPE, from);
    for e in logged {
        let length = encoded_length(e);
        let oversized = ENVELOPE + length > limit;
        if !batch.is_empty() && (oversized || size + 1 + length > limit) {
            send(start, e.id - 1, Some(&batch));
            batch.clear();
            (size, start) = (ENVELOPE, e.id);
        }
        if oversized {
            send(start, e.id, None);
            start = e.id + 1;
            continue;
        }
        size += 1 + length;
        batch.push(e);
    }
    if start <= through {
        send(start, through, Some(&batch));
    }
}

/// The length of an event's JSON, counted without building it.
fn encoded_length(event: &Logged) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    serde_json::to_writer(&mut count, event).expect("an event serializes");
    count.0
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
    /// The log's relation and the extension's owner, looked up again only when the log is another
    /// relation (the extension dropped and created again) than last time.
    static OWNER: Cell<Option<(pg_sys::Oid, pg_sys::Oid)>> = const { Cell::new(None) };
}

/// The oid of `campfire.events`, or InvalidOid. It stands for the installed extension at every
/// commit: two lookups in PostgreSQL's catalog caches, where the extension's own oid (pg_extension
/// has no cache) took a catalog scan each time, 1 % of a writer's CPU.
fn log_relation() -> pg_sys::Oid {
    // SAFETY: catalog cache lookups by name, inside a transaction; each returns InvalidOid for
    // what is missing.
    unsafe { pg_sys::get_relname_relid(c"events".as_ptr(), pg_sys::get_namespace_oid(c"campfire".as_ptr(), true)) }
}

fn extension_owner() -> pg_sys::Oid {
    let log = log_relation();
    if let Some((cached, owner)) = OWNER.get()
        && cached == log
        && log != pg_sys::InvalidOid
    {
        return owner;
    }
    const OWNER_OF: &str =
        "SELECT e.extowner FROM pg_catalog.pg_extension e WHERE e.extname OPERATOR(pg_catalog.=) 'pg_campfire'";
    let owner = kept_value::<pg_sys::Oid>("finding the extension's owner", OWNER_OF, &[], &[])
        .unwrap_or_else(|| pgrx::error!("pg_campfire is not installed in this database"));
    OWNER.set(Some((log, owner)));
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
    let channel = match campfire_core::channel::parse(topic) {
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
    let conversation = channel.conversation().map(|c| uuid::Uuid::from_bytes(*c.as_bytes()));
    let payload = json_text(&payload.0);
    queue(uuid::Uuid::from_bytes(*organization_id.as_bytes()), conversation, channel.canonical(), event, payload);
    1
}
