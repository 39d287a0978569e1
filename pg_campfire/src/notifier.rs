//! The notifier: one background worker per busy database that announces committed events to the
//! relays, one NOTIFY for many commits.
//!
//! PostgreSQL serializes every transaction that sends NOTIFY (a global lock held across its WAL
//! flush), so writers that each NOTIFY cannot share a flush. With `pg_campfire` in
//! `shared_preload_libraries`, writers instead set the notifier's latch after their commit; the
//! notifier reads what settled below the log's horizon since it last looked (see `horizon.rs`)
//! and sends it, inline and sealed, in one transaction of its own. The writers' commits group and
//! each of them costs the relays nothing until the notifier's single notification.
//!
//! A writer whose events come next in order, everything before them announced already, announces
//! them itself in its own commit instead: nothing is left for the notifier, and the relays hear of
//! the commit one process hop sooner (the common case at low load). It holds NOTIFY's lock across
//! its commit, as a naive notifying writer does, but nobody else has anything to announce until
//! it has committed: the horizon waits for it.
//!
//! A database's notifier is started on demand by the first commit that needs it and exits after a
//! few idle seconds (so `DROP DATABASE` and `CREATE DATABASE ... TEMPLATE` are not kept waiting).
//! While none runs, and on servers without the preload, each writer announces its own events;
//! with the preload, a writer whose commit waits for a synchronous standby starts one before its
//! commit instead and leaves its events to it.

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, SignalWakeFlags};
use pgrx::lwlock::PgLwLock;
use pgrx::prelude::*;
use pgrx::shmem::PGRXSharedMemory;
use pgrx::{pg_shmem_init, pg_sys};
use std::cell::Cell;
use std::time::Duration;

/// Log rows read and announced per notifier transaction; a full batch is followed at once by the next.
const BATCH: i64 = 2000;
/// How long the notifier sleeps when nothing wakes it, and how long it stays with nothing to do.
const IDLE_POLL: Duration = Duration::from_secs(1);
const IDLE_BEFORE_EXIT: Duration = Duration::from_secs(3);
/// Databases that can have a running notifier at once; others announce their own events.
const SLOTS: usize = 32;

#[derive(Copy, Clone)]
struct Slot {
    /// 0 = free.
    database: u32,
    /// The worker's PGPROC number once it runs; -1 while it starts.
    procno: i32,
    /// While it starts: the lowest id, less one, that a writer left for it to announce.
    owed_after: i64,
    /// Once it runs: every id through this one is announced, by the notifier (its commit done) or
    /// by a writer that took the next ids for its own commit (see `will_announce`).
    announced: i64,
    /// The last id of the block a writer announces itself while its commit is in flight; 0 when
    /// none. One at a time: a second would wait for the first's commit, on NOTIFY's lock.
    claim: i64,
}

impl Default for Slot {
    fn default() -> Self {
        Slot { database: 0, procno: -1, owed_after: i64::MAX, announced: i64::MIN, claim: 0 }
    }
}

impl Slot {
    /// Whether a writer may announce its own block from `first` on: the notifier runs and has
    /// announced everything before it, no other writer's announcement is in flight, and the
    /// commit waits for no standby (NOTIFY's lock, held across the commit, is the whole
    /// cluster's: a commit held by a standby would hold every database's notifications).
    fn may_claim(&self, first: i64) -> bool {
        self.procno >= 0 && self.claim == 0 && self.announced == first - 1 && !commit_waits_for_standby()
    }
}

fn commit_waits_for_standby() -> bool {
    // SAFETY: reads of two settings of this backend; the standby list is a valid C string.
    unsafe {
        pg_sys::synchronous_commit > pg_sys::SyncCommitLevel::SYNCHRONOUS_COMMIT_LOCAL_FLUSH as i32
            && !pg_sys::SyncRepStandbyNames.is_null()
            && *pg_sys::SyncRepStandbyNames != 0
    }
}

#[derive(Copy, Clone, Default)]
struct Notifiers {
    slots: [Slot; SLOTS],
}

impl Notifiers {
    fn find(&self, database: u32) -> Option<&Slot> {
        self.slots.iter().find(|slot| slot.database == database)
    }

    fn find_mut(&mut self, database: u32) -> Option<&mut Slot> {
        self.slots.iter_mut().find(|slot| slot.database == database)
    }
}

// SAFETY: plain data (integers) only, read and written under the LWLock.
unsafe impl PGRXSharedMemory for Notifiers {}

// SAFETY: initialised by pg_shmem_init! in _PG_init when preloaded, and only used when preloaded.
static NOTIFIERS: PgLwLock<Notifiers> = unsafe { PgLwLock::new(c"campfire_notifiers") };

/// What this backend has to do once its transaction has committed.
#[derive(Copy, Clone, PartialEq)]
enum AfterCommit {
    Nothing,
    /// The notifier will announce this transaction's events: set its latch.
    Wake,
    /// This transaction announced its own events because no notifier runs: start one for next time.
    Start,
}

thread_local! {
    static AFTER_COMMIT: Cell<AfterCommit> = const { Cell::new(AfterCommit::Nothing) };
    /// The last id of the block this transaction announces itself while the notifier runs (its
    /// slot's `claim`); 0 when none.
    static CLAIM: Cell<i64> = const { Cell::new(0) };
}

/// Called from `_PG_init`: reserves the shared slots when loaded by `shared_preload_libraries`.
pub fn init() {
    if crate::horizon::available() {
        pg_shmem_init!(NOTIFIERS);
    }
}

fn this_database() -> u32 {
    // SAFETY: a read of the backend's database, set once at connection.
    unsafe { pg_sys::MyDatabaseId }.to_u32()
}

/// Whether the notifier will announce the events this transaction logged, ids `first` through
/// `last` (then it is woken after the commit); if not, the writer announces them itself.
pub fn will_announce(first: i64, last: i64) -> bool {
    if !crate::horizon::available() {
        return false;
    }
    let database = this_database();
    // A shared look for the common case, a notifier running that this writer leaves its events
    // to. Otherwise, under the exclusive lock: the writer announces them itself (`may_claim`), or
    // a notifier starting is told the lowest id a writer left to it (it begins after that).
    let slot = NOTIFIERS.share().find(database).copied();
    let announces = match slot {
        Some(slot) if slot.procno >= 0 && !slot.may_claim(first) => Some(true),
        Some(_) => match NOTIFIERS.exclusive().find_mut(database) {
            Some(slot) if slot.may_claim(first) => {
                (slot.announced, slot.claim) = (last, last);
                CLAIM.set(last);
                return false;
            }
            Some(slot) => {
                if slot.procno < 0 {
                    slot.owed_after = slot.owed_after.min(first - 1);
                }
                Some(true)
            }
            None => None,
        },
        None => None,
    };
    // No notifier: the writer announces its own events and starts one for next time, unless its
    // commit waits for a standby (NOTIFY's lock, held across the commit, is the whole cluster's:
    // it would hold every database's notifications). Then it starts one now and leaves them to it.
    let announces = announces.unwrap_or_else(|| commit_waits_for_standby() && start(database, first - 1));
    if announces {
        AFTER_COMMIT.set(AfterCommit::Wake);
    } else if AFTER_COMMIT.get() != AfterCommit::Wake {
        AFTER_COMMIT.set(AfterCommit::Start);
    }
    announces
}

/// Transaction end (from the transaction callback, after `horizon::settle`): wakes or starts the
/// notifier after a commit.
pub fn on_transaction_end(committed: bool) {
    let mut after = AFTER_COMMIT.replace(AfterCommit::Nothing);
    let database = this_database();
    let claim = CLAIM.replace(0);
    if claim != 0 {
        if let Some(slot) = NOTIFIERS.exclusive().find_mut(database)
            && slot.claim == claim
        {
            slot.claim = 0;
        }
        // Writers of later ids left them to the notifier, which could not announce them while
        // this transaction held them back: wake it now, committed or not.
        if crate::horizon::handed_out_beyond(claim) {
            after = AfterCommit::Wake;
        }
    } else if !committed {
        return;
    }
    if after == AfterCommit::Nothing {
        return;
    }
    let procno = NOTIFIERS.share().find(database).map(|slot| slot.procno);
    match procno {
        // SAFETY: procno is a live worker's PGPROC number, published by that worker in its slot.
        Some(procno) if procno >= 0 => unsafe { pg_sys::ProcSendSignal(procno) },
        Some(_) => {} // starting: it announces everything owed to it once it runs
        None => {
            start(database, i64::MAX);
        }
    }
}

/// Claims a slot for `database` and registers its worker, which will announce every id after
/// `owed_after` (and whatever settled after the horizon it reads at its start); returns whether
/// a notifier runs or starts for `database`. Never raises: this runs after commit too.
fn start(database: u32, owed_after: i64) -> bool {
    {
        let mut notifiers = NOTIFIERS.exclusive();
        if let Some(slot) = notifiers.find_mut(database) {
            slot.owed_after = slot.owed_after.min(owed_after);
            return true;
        }
        match notifiers.find_mut(0) {
            Some(slot) => *slot = Slot { database, owed_after, ..Slot::default() },
            None => return false, // every slot busy: this database keeps announcing its own events
        }
    }
    let registered = BackgroundWorkerBuilder::new("pg_campfire notifier")
        .set_type("pg_campfire notifier")
        .set_library("pg_campfire")
        .set_function("campfire_notifier_main")
        .set_argument(Some(pg_sys::Oid::from(database).into()))
        .enable_spi_access()
        .set_restart_time(None)
        .load_dynamic();
    if registered.is_err() {
        // Whatever a writer left to it is found by the relays at the next announcement's gap.
        let _ = release(database, -1);
        warning!("pg_campfire: could not start the event notifier (max_worker_processes reached?)");
        return false;
    }
    true
}

/// Frees `database`'s slot if it is held by the worker `procno` (-1: one still starting), and
/// returns the id it said was announced through.
fn release(database: u32, procno: i32) -> Option<i64> {
    let mut notifiers = NOTIFIERS.exclusive();
    let slot = notifiers.find_mut(database).filter(|slot| slot.procno == procno)?;
    Some(std::mem::take(slot).announced)
}

/// The id through which `database`'s events are announced: by the notifier, `announced`, or by
/// writers that took the next ids since. Published for writers, which announce their own events
/// when theirs come next.
fn announced_through(database: u32, announced: i64) -> i64 {
    match NOTIFIERS.exclusive().find_mut(database) {
        Some(slot) => {
            slot.announced = slot.announced.max(announced);
            slot.announced
        }
        None => announced,
    }
}

thread_local! {
    /// The PGPROC number this worker published in its slot, -1 until then (or once it left it).
    static PUBLISHED: Cell<i32> = const { Cell::new(-1) };
}

#[pg_guard]
unsafe extern "C-unwind" fn release_on_exit(_code: std::ffi::c_int, database: pg_sys::Datum) {
    // Only its own slot: a worker leaving after an idle spell may find a successor in it.
    let _ = release(database.value() as u32, PUBLISHED.get());
}

fn set_option(name: &std::ffi::CStr, value: &std::ffi::CStr) {
    // SAFETY: two valid C strings, for a setting the worker's session owns.
    unsafe {
        pg_sys::SetConfigOption(
            name.as_ptr(),
            value.as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_OVERRIDE,
        );
    }
}

/// The worker's entry point (looked up by name by the postmaster).
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn campfire_notifier_main(argument: pg_sys::Datum) {
    let database = argument.value() as u32;
    // SAFETY: a pg_guard'ed callback, registered once at the worker's start.
    unsafe { pg_sys::before_shmem_exit(Some(release_on_exit), argument) };
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(pg_sys::Oid::from(database)), None);
    // The worker runs as the bootstrap superuser: resolve nothing through a schema that other
    // roles may create objects in ("$user", public).
    set_option(c"search_path", c"pg_catalog, pg_temp");
    // Its transactions write nothing but the notification, which is sent at commit whether or not
    // the commit record has reached the disk: waiting for that flush would only add latency.
    set_option(c"synchronous_commit", c"off");
    // It runs one statement, a range read of the log's primary key, whose best plan never depends
    // on the range: planned once. (The plan cache would otherwise plan it afresh at every wake-up,
    // estimating the range from the histogram, a third of the worker's CPU at one commit a wake.)
    set_option(c"plan_cache_mode", c"force_generic_plan");

    let Some((sequence, start)) = BackgroundWorker::transaction(|| {
        let sequence = crate::horizon::installed_sequence()?;
        Some((sequence, crate::horizon::horizon_of(sequence)?))
    }) else {
        return;
    };
    let mut announced = {
        let mut notifiers = NOTIFIERS.exclusive();
        let Some(slot) = notifiers.find_mut(database) else { return };
        // SAFETY: MyProc is this worker's own PGPROC, valid once it is connected.
        slot.procno = unsafe { (*pg_sys::MyProc).pgprocno };
        PUBLISHED.set(slot.procno);
        // Writers that saw it starting left it everything after `owed_after`; those that see
        // it running from now on log ids above the horizon just read.
        slot.announced = start.min(slot.owed_after);
        slot.announced
    };

    let (mut last_busy, mut last_look) = (std::time::Instant::now(), std::time::Instant::now());
    loop {
        // Woken by commits it has announced already (many set the latch for one batch): nothing
        // to do, and no transaction to know it; it still looks once a poll (is the extension
        // still there?).
        let moved = horizon_moved(sequence, announced);
        let look = moved || last_look.elapsed() >= IDLE_POLL;
        if look {
            last_look = std::time::Instant::now();
        }
        match if look {
            BackgroundWorker::transaction(|| announce_settled(database, sequence, announced))
        } else {
            Some((announced, 0))
        } {
            None => return, // the extension is not (or no longer) installed here
            Some((through, count)) => {
                // Published once its notifications are committed: a writer whose ids come next
                // then sends its own after them. Writers announcing theirs keep it busy too.
                let before = announced;
                announced = announced_through(database, through);
                if count as i64 >= BATCH {
                    continue;
                }
                if count > 0 || announced > before {
                    last_busy = std::time::Instant::now();
                }
            }
        }
        if last_busy.elapsed() >= IDLE_BEFORE_EXIT {
            // Leave the slot first: a writer that sees it empty announces its own events. Those
            // that saw it took their ids before the sequence is read below: wait until they
            // settle, and announce them.
            announced = release(database, PUBLISHED.replace(-1)).map_or(announced, |through| through.max(announced));
            let owed = BackgroundWorker::transaction(crate::horizon::handed_out_if_installed).unwrap_or(announced);
            // (A commit held back for long, by a synchronous standby say, keeps it here: it looks
            // again when the horizon has moved, not in a busy loop.)
            while announced < owed {
                if horizon_moved(sequence, announced) {
                    match BackgroundWorker::transaction(|| announce_settled(database, sequence, announced)) {
                        Some((through, _)) => announced = through,
                        None => return,
                    }
                }
                if announced < owed && !BackgroundWorker::wait_latch(Some(Duration::from_millis(10))) {
                    return;
                }
            }
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

/// Whether the log may hold settled events after `announced`, from shared memory alone.
fn horizon_moved(sequence: pg_sys::Oid, announced: i64) -> bool {
    crate::horizon::kept_horizon(sequence).is_none_or(|horizon| horizon > announced)
}

/// Announces the events settled after `announced`, at most `BATCH`: returns the id announced
/// through and how many events that was, or `None` if the log of `sequence` is not there.
fn announce_settled(database: u32, sequence: pg_sys::Oid, announced: i64) -> Option<(i64, usize)> {
    // A log made again (DROP and CREATE EXTENSION) starts its ids afresh: a new notifier's job.
    if crate::horizon::installed_sequence()? != sequence {
        return None;
    }
    let horizon = crate::horizon::horizon_of(sequence)?;
    // Writers that announced their own ids did so before they settled: read after the horizon,
    // every such id below it is seen here, and is not announced twice.
    let announced = announced_through(database, announced);
    if horizon <= announced {
        return Some((announced, 0));
    }
    // Read in a snapshot taken after the horizon: every id up to it is settled and visible.
    let (logged, full) = crate::events::read_log(announced, horizon, BATCH);
    let through = match logged.last() {
        Some(last) if full => last.id,
        _ => horizon,
    };
    crate::events::notify(announced + 1, through, &logged);
    Some((through, logged.len()))
}
