//! The sequencer: one background worker per database that gives committed events their cursor.
//!
//! PostgreSQL serializes every transaction that sends NOTIFY (a global lock held across its WAL
//! flush), and a commit-ordered cursor needs one writer at a time. Done inside each writer's
//! commit, both stop commits from grouping. With `pg_campfire` in `shared_preload_libraries`,
//! writers instead append their events to `campfire.event_queue` and set the sequencer's latch
//! after their commit; the sequencer moves queued events into `campfire.events` in batches and
//! sends the NOTIFYs, so many writers' commits share one flush and the log still grows in order.
//!
//! The queue costs a hop: when the log is idle (its lock free, the queue empty) a transaction
//! still writes its own events to the log at commit, under the same lock the sequencer takes,
//! which is the fastest path at low load; under contention the lock is taken and the queue wins.
//! A database's sequencer is started on demand by the first commit that needs it and exits after
//! a few idle seconds (so `DROP DATABASE` and `CREATE DATABASE ... TEMPLATE` are not kept
//! waiting). Until it runs, and on servers without the preload, transactions always write their
//! own events to the log.

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, SignalWakeFlags};
use pgrx::lwlock::PgLwLock;
use pgrx::prelude::*;
use pgrx::shmem::PGRXSharedMemory;
use pgrx::{pg_shmem_init, pg_sys};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Events moved per sequencer transaction; a full batch is followed at once by the next.
const BATCH: i64 = 2000;
/// How long the sequencer sleeps when nothing wakes it, and how many such sleeps it stays for.
const IDLE_POLL: Duration = Duration::from_secs(1);
const IDLE_POLLS_BEFORE_EXIT: u32 = 3;
/// Databases that can have a running sequencer at once; others write their own events.
const SLOTS: usize = 32;

#[derive(Copy, Clone, Default)]
struct Slot {
    /// 0 = free.
    database: u32,
    /// The worker's PGPROC number once it runs; -1 while it starts.
    procno: i32,
}

#[derive(Copy, Clone)]
struct Sequencers {
    slots: [Slot; SLOTS],
}

impl Default for Sequencers {
    fn default() -> Self {
        Sequencers { slots: [Slot::default(); SLOTS] }
    }
}

impl Sequencers {
    fn find(&self, database: u32) -> Option<&Slot> {
        self.slots.iter().find(|slot| slot.database == database)
    }

    fn find_mut(&mut self, database: u32) -> Option<&mut Slot> {
        self.slots.iter_mut().find(|slot| slot.database == database)
    }
}

// SAFETY: plain data (integers) only, read and written under the LWLock.
unsafe impl PGRXSharedMemory for Sequencers {}

// SAFETY: initialised by pg_shmem_init! in _PG_init when preloaded, and only used when PRELOADED.
static SEQUENCERS: PgLwLock<Sequencers> = unsafe { PgLwLock::new(c"campfire_sequencers") };
/// Set in the postmaster when preloaded; inherited by every backend it forks.
static PRELOADED: AtomicBool = AtomicBool::new(false);

/// What this backend has to do once its transaction has committed.
#[derive(Copy, Clone, PartialEq)]
enum AfterCommit {
    Nothing,
    /// Events were queued: set the sequencer's latch (or start one if it is gone).
    Wake,
    /// Events were written directly because no sequencer runs here: start one for next time.
    Start,
}

thread_local! {
    static AFTER_COMMIT: Cell<AfterCommit> = const { Cell::new(AfterCommit::Nothing) };
}

/// Called from `_PG_init`: reserves the shared slots when loaded by `shared_preload_libraries`.
pub fn init() {
    // SAFETY: a read of a postmaster global that is only written before backends start.
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        pg_shmem_init!(SEQUENCERS);
        PRELOADED.store(true, Ordering::Relaxed);
    }
}

fn this_database() -> u32 {
    // SAFETY: a read of the backend's database, set once at connection.
    unsafe { pg_sys::MyDatabaseId }.to_u32()
}

/// Whether this database's events can go through a sequencer.
#[derive(Copy, Clone, PartialEq)]
pub enum Sequencer {
    /// The library was not preloaded: transactions always write to the log themselves.
    Unavailable,
    /// None runs now; one is started after this transaction commits.
    Stopped,
    /// One runs (or is starting) and drains the queue.
    Running,
}

pub fn state() -> Sequencer {
    if !PRELOADED.load(Ordering::Relaxed) {
        return Sequencer::Unavailable;
    }
    if SEQUENCERS.share().find(this_database()).is_some() {
        Sequencer::Running
    } else {
        arm(AfterCommit::Start);
        Sequencer::Stopped
    }
}

/// The caller queued events: set the sequencer's latch once this transaction has committed.
pub fn wake_after_commit() {
    arm(AfterCommit::Wake);
}

fn arm(next: AfterCommit) {
    AFTER_COMMIT.with(|after| {
        if after.get() != AfterCommit::Wake {
            after.set(next);
        }
    });
}

/// Transaction end (from the transaction callback): wakes or starts the sequencer after a commit.
pub fn on_transaction_end(committed: bool) {
    let after = AFTER_COMMIT.with(|after| after.replace(AfterCommit::Nothing));
    if !committed || after == AfterCommit::Nothing {
        return;
    }
    let database = this_database();
    let procno = SEQUENCERS.share().find(database).map(|slot| slot.procno);
    match procno {
        // SAFETY: procno is a live worker's PGPROC number, published by that worker in its slot.
        Some(procno) if procno >= 0 && after == AfterCommit::Wake => unsafe { pg_sys::ProcSendSignal(procno) },
        Some(_) => {} // starting: it drains everything committed before it runs
        None => start(database),
    }
}

/// Claims a slot for `database` and registers its worker. Never raises: this runs after commit.
fn start(database: u32) {
    {
        let mut sequencers = SEQUENCERS.exclusive();
        if sequencers.find(database).is_some() {
            return;
        }
        match sequencers.find_mut(0) {
            Some(slot) => *slot = Slot { database, procno: -1 },
            None => return, // every slot busy: this database keeps writing its own events
        }
    }
    let registered = BackgroundWorkerBuilder::new("pg_campfire sequencer")
        .set_type("pg_campfire sequencer")
        .set_library("pg_campfire")
        .set_function("campfire_sequencer_main")
        .set_argument(Some(pg_sys::Oid::from(database).into()))
        .enable_spi_access()
        .set_restart_time(None)
        .load_dynamic();
    if registered.is_err() {
        release(database);
        warning!("pg_campfire: could not start the event sequencer (max_worker_processes reached?)");
    }
}

fn release(database: u32) {
    if let Some(slot) = SEQUENCERS.exclusive().find_mut(database) {
        *slot = Slot::default();
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn release_on_exit(_code: std::ffi::c_int, database: pg_sys::Datum) {
    release(database.value() as u32);
}

/// The worker's entry point (looked up by name by the postmaster).
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn campfire_sequencer_main(argument: pg_sys::Datum) {
    let database = argument.value() as u32;
    // SAFETY: a pg_guard'ed callback, registered once at the worker's start.
    unsafe { pg_sys::before_shmem_exit(Some(release_on_exit), argument) };
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(pg_sys::Oid::from(database)), None);
    // The worker runs as the bootstrap superuser: resolve nothing through a schema that other
    // roles may create objects in ("$user", public).
    // SAFETY: two valid C strings, for a setting the worker's session owns.
    unsafe {
        pg_sys::SetConfigOption(
            c"search_path".as_ptr(),
            c"pg_catalog, pg_temp".as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_OVERRIDE,
        );
    }
    if let Some(slot) = SEQUENCERS.exclusive().find_mut(database) {
        // SAFETY: MyProc is this worker's own PGPROC, valid once it is connected.
        slot.procno = unsafe { (*pg_sys::MyProc).pgprocno };
    }

    let mut idle_polls = 0;
    loop {
        let moved = BackgroundWorker::transaction(drain_once);
        match moved {
            None => return, // the extension is not (or no longer) installed here
            Some(n) if n as i64 >= BATCH => continue,
            Some(0) => idle_polls += 1,
            Some(_) => idle_polls = 0,
        }
        if idle_polls >= IDLE_POLLS_BEFORE_EXIT {
            // Leave the slot first: a commit that sees it empty starts a new sequencer, and
            // anything committed before this point is still drained just below.
            release(database);
            BackgroundWorker::transaction(drain_once);
            return;
        }
        if !BackgroundWorker::wait_latch(Some(IDLE_POLL)) {
            return;
        }
        if BackgroundWorker::sighup_received() {
            // SAFETY: how a background worker rereads its configuration after SIGHUP.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
    }
}

fn drain_once() -> Option<usize> {
    // A catalog-cache lookup, not a query: cheap enough for every batch.
    // SAFETY: to_regclass takes one text datum, valid for the call.
    let queue = unsafe {
        pgrx::direct_function_call::<pg_sys::Oid>(pg_sys::to_regclass, &["campfire.event_queue".into_datum()])
    };
    queue.map(|_| crate::events::drain_queue(BATCH))
}
