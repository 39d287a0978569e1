//! The log's horizon: the newest event id below which every id is settled (committed and
//! visible, or rolled back), so that a reader asking for `id > cursor AND id <= horizon` never
//! skips an event that commits later.
//!
//! Writers take their ids, one contiguous block per transaction, at pre-commit and announce the
//! block's first id in shared memory until their commit is visible (or their abort is done). The
//! horizon is the sequence's last value, capped below the first id of every block still
//! announced. No lock is held across anyone's commit: writers commit in parallel (their WAL
//! flushes group), and a slow commit only holds back the horizon, never another writer.
//!
//! The announcements live in shared memory, so this needs the library in
//! `shared_preload_libraries`. Without it, writers order their commits with the log's advisory
//! lock instead (taken at pre-commit, held to the commit): ids then become visible in increasing
//! order and there is no horizon to respect, at the price of commits that cannot group.

use crate::kept_plans::kept_value;
use pgrx::lwlock::PgLwLock;
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::shmem::PGRXSharedMemory;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

/// Backends (by PGPROC number) that can write events at once; far above any max_connections in
/// practice, and refused with a clear error beyond.
const CAPACITY: usize = 8192;

#[derive(Copy, Clone, Default)]
struct Block {
    /// 0 = none announced.
    database: u32,
    first: i64,
}

/// The newest id a log's sequence has handed out, kept as the writers take them so that readers
/// need not read the sequence. Keyed by the sequence too: a dropped and re-created extension
/// starts a new one.
#[derive(Copy, Clone, Default)]
struct HandedOut {
    /// 0 = free.
    database: u32,
    sequence: u32,
    id: i64,
}

/// Databases whose handed-out id is kept; beyond that, readers of the others read the sequence.
const DATABASES: usize = 64;

#[derive(Copy, Clone)]
struct Blocks {
    /// By PGPROC number: each backend writes only its own entry.
    by_proc: [Block; CAPACITY],
    /// One past the highest PGPROC number that ever announced a block: readers scan no further.
    used: usize,
    handed_out: [HandedOut; DATABASES],
    /// The entry the next database without one replaces when all are taken.
    next_evicted: usize,
}

impl Default for Blocks {
    fn default() -> Self {
        Blocks {
            by_proc: [Block::default(); CAPACITY],
            used: 0,
            handed_out: [HandedOut::default(); DATABASES],
            next_evicted: 0,
        }
    }
}

impl Blocks {
    fn handed_out(&self, database: u32, sequence: u32) -> Option<i64> {
        self.handed_out.iter().find(|h| h.database == database && h.sequence == sequence).map(|h| h.id)
    }

    /// Raises the kept id to `id`, never lowers it: a reader's reading of the sequence may be
    /// older than a writer's update.
    fn note_handed_out(&mut self, database: u32, sequence: u32, id: i64) {
        let index = match self.handed_out.iter().position(|h| h.database == database && h.sequence == sequence) {
            Some(index) => index,
            None => {
                let index = self.handed_out.iter().position(|h| h.database == database || h.database == 0);
                let index = index.unwrap_or_else(|| {
                    self.next_evicted = (self.next_evicted + 1) % DATABASES;
                    self.next_evicted
                });
                self.handed_out[index] = HandedOut { database, sequence, id };
                index
            }
        };
        self.handed_out[index].id = self.handed_out[index].id.max(id);
    }
}

// SAFETY: plain data (integers) only, read and written under the LWLock.
unsafe impl PGRXSharedMemory for Blocks {}

// SAFETY: initialised by pg_shmem_init! in _PG_init when preloaded, and only used when PRELOADED.
static BLOCKS: PgLwLock<Blocks> = unsafe { PgLwLock::new(c"campfire_log_blocks") };
/// Set in the postmaster when preloaded; inherited by every backend it forks.
static PRELOADED: AtomicBool = AtomicBool::new(false);

/// Called from `_PG_init`: reserves the shared table when loaded by `shared_preload_libraries`.
pub fn init() {
    // SAFETY: a read of a postmaster global that is only written before backends start.
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        pgrx::pg_shmem_init!(BLOCKS);
        PRELOADED.store(true, Ordering::Relaxed);
    }
}

pub fn available() -> bool {
    PRELOADED.load(Ordering::Relaxed)
}

fn this_database() -> u32 {
    // SAFETY: a read of the backend's database, set once at connection.
    unsafe { pg_sys::MyDatabaseId }.to_u32()
}

fn this_proc() -> usize {
    // SAFETY: MyProc is this backend's own PGPROC, valid in any backend that runs transactions.
    unsafe { (*pg_sys::MyProc).pgprocno as usize }
}

fn events_sequence() -> pg_sys::Oid {
    installed_sequence().unwrap_or_else(|| pgrx::error!("campfire.events_id_seq does not exist"))
}

/// Advisory lock (two-int form) that orders commits when there is no horizon (no preload): taken
/// at pre-commit before the ids, held to the end of the transaction, so ids become visible in
/// increasing order.
const LOG_LOCK: (i32, i32) = (0x6361_6d70, 1); // "camp", 1

/// Takes `count` consecutive event ids for this transaction and returns the first. With the
/// preload the block is announced until `settle` runs at the transaction's end; without it, the
/// log's lock is taken first. Runs as the extension owner, at pre-commit.
pub fn reserve(count: usize) -> i64 {
    let sequence = events_sequence();
    if !available() {
        // SAFETY: the int4 pair form of pg_advisory_xact_lock, called with two int4 datums.
        unsafe {
            pgrx::direct_function_call::<()>(
                pg_sys::pg_advisory_xact_lock_int4,
                &[LOG_LOCK.0.into_datum(), LOG_LOCK.1.into_datum()],
            );
        }
        return take_ids(sequence, count);
    }
    let proc = this_proc();
    if proc >= CAPACITY {
        pgrx::error!("pg_campfire supports at most {CAPACITY} backends writing events (this one is number {proc})");
    }
    // nextval takes this lock too: holding it already, nextval cannot wait for a heavyweight
    // lock (an ALTER SEQUENCE) while this backend holds the LWLock below.
    // SAFETY: a relation lock for the transaction, released at its end.
    unsafe { pg_sys::LockRelationOid(sequence, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE) };
    let mut blocks = BLOCKS.exclusive();
    let first = take_ids(sequence, count);
    blocks.note_handed_out(this_database(), sequence.to_u32(), first + count as i64 - 1);
    // A transaction that flushed before (through a DBA's flush_events trigger) keeps its
    // first block's start: the horizon stays below every id it holds.
    let held = blocks.by_proc[proc];
    let start = if held.database != 0 { held.first.min(first) } else { first };
    blocks.by_proc[proc] = Block { database: this_database(), first: start };
    blocks.used = blocks.used.max(proc + 1);
    ANNOUNCED.set(true);
    first
}

thread_local! {
    /// Whether this backend's transaction has a block announced: every other transaction ends
    /// without touching the shared table.
    static ANNOUNCED: Cell<bool> = const { Cell::new(false) };
}

/// `count` values of the sequence, consecutive because every writer takes them under the same
/// lock (the LWLock, or the log's lock without the preload).
fn take_ids(sequence: pg_sys::Oid, count: usize) -> i64 {
    let next = || {
        // SAFETY: nextval(regclass) on the log's sequence, with one oid datum.
        unsafe { pgrx::direct_function_call::<i64>(pg_sys::nextval_oid, &[sequence.into_datum()]) }
            .unwrap_or_else(|| pgrx::error!("nextval returned NULL"))
    };
    let first = next();
    for _ in 1..count {
        next();
    }
    first
}

/// Withdraws this backend's block: from the transaction callback, once its commit is visible to
/// new snapshots (XACT_EVENT_COMMIT runs after the proc array says so) or its abort is done.
pub fn settle() {
    if ANNOUNCED.replace(false) {
        BLOCKS.exclusive().by_proc[this_proc()] = Block::default();
    }
}

/// The newest id at or below which every event id is settled; `None` without the preload
/// (commits are then ordered by the log's lock, and every visible id is settled).
///
/// A reader must take its snapshot after this, as a READ COMMITTED statement that follows does:
/// an id below the horizon belongs to a transaction that was visible before the horizon was read.
pub fn horizon() -> Option<i64> {
    if !available() {
        return None;
    }
    horizon_of(events_sequence())
}

/// The horizon of the log whose sequence is `sequence` (the notifier's, which looked it up).
pub fn horizon_of(sequence: pg_sys::Oid) -> Option<i64> {
    kept_horizon(sequence).or_else(|| {
        // After a restart, the sequence itself (its reading is older than any update after it).
        BLOCKS.exclusive().note_handed_out(this_database(), sequence.to_u32(), handed_out_now());
        kept_horizon(sequence)
    })
}

/// The horizon from shared memory alone (no catalog access, no transaction needed), `None`
/// until a writer or reader has noted the sequence's handed-out id since the server started.
pub fn kept_horizon(sequence: pg_sys::Oid) -> Option<i64> {
    let database = this_database();
    let blocks = BLOCKS.share();
    let handed_out = blocks.handed_out(database, sequence.to_u32())?;
    // Under one lock with the blocks: an id handed out by then either belongs to a block still
    // announced, or to a transaction already settled.
    let lowest_open =
        blocks.by_proc[..blocks.used].iter().filter(|block| block.database == database).map(|block| block.first).min();
    Some(match lowest_open {
        Some(first) => handed_out.min(first - 1),
        None => handed_out,
    })
}

/// Whether this database's log has handed out ids after `id` (for a writer that announced its own
/// events through `id`: later writers may have woken the notifier while it held them back).
pub fn handed_out_beyond(id: i64) -> bool {
    let database = this_database();
    BLOCKS.share().handed_out.iter().any(|h| h.database == database && h.id > id)
}

/// The newest id the log's sequence has handed out, for the notifier's last pass; `None` when
/// the extension is not installed.
pub fn handed_out_if_installed() -> Option<i64> {
    installed_sequence().map(|_| handed_out_now())
}

pub fn installed_sequence() -> Option<pg_sys::Oid> {
    // SAFETY: to_regclass takes one text datum, valid for the call; a catalog-cache lookup.
    unsafe { pgrx::direct_function_call::<pg_sys::Oid>(pg_sys::to_regclass, &["campfire.events_id_seq".into_datum()]) }
}

fn handed_out_now() -> i64 {
    const HANDED_OUT: &str = "SELECT CASE WHEN s.is_called THEN s.last_value ELSE s.last_value OPERATOR(pg_catalog.-) 1 END \
                              FROM campfire.events_id_seq s";
    kept_value("reading the log's sequence", HANDED_OUT, &[], &[]).unwrap_or(0)
}

/// `campfire.log_horizon()`: the newest event id every reader may read up to (see `horizon`), or
/// NULL when commits are ordered by the log's lock. Refused under REPEATABLE READ and
/// SERIALIZABLE, whose snapshot may predate events the horizon admits. It runs with the owner's
/// rights (security.sql): it reads the log's sequence, which no client role may.
#[pg_extern(volatile, parallel_unsafe)]
fn log_horizon() -> Option<i64> {
    // SAFETY: a read of the backend's isolation level.
    if unsafe { pg_sys::XactIsoLevel } >= pg_sys::XACT_REPEATABLE_READ as i32 {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            "the realtime log is read under READ COMMITTED",
            "A transaction snapshot can predate events below the log's horizon, so a cursor could skip them."
        );
    }
    horizon()
}
