//! The event log and NOTIFY seen from a second, real connection.

use campfire_tests::{TestDb, agent, notifications, notifications_by_sender, postgres::Client, service};
use serde_json::Value;
use std::time::Duration;

/// Every id the notifications account for (a range can be announced twice: by a writer while no
/// notifier runs, and by the notifier starting meanwhile).
fn covered(notes: &[Value]) -> std::collections::BTreeSet<i64> {
    notes.iter().flat_map(|n| n["first"].as_i64().unwrap()..=n["last"].as_i64().unwrap()).collect()
}

/// The events `reader` may read after `cursor`, as (id, payload).
fn read_since(reader: &mut Client, cursor: i64) -> Vec<(i64, Value)> {
    reader
        .query("SELECT id, payload FROM campfire.events_since($1, max_rows => 10000)", &[&cursor])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

fn listen(db: &TestDb) -> Client {
    let mut listener = db.connect();
    listener.batch_execute("LISTEN campfire_events").unwrap();
    listener
}

#[test]
fn notify_arrives_after_commit_and_never_after_rollback() {
    let db = TestDb::new();
    let (org, agent_id) = db.organization_with_agent("acme");
    let (conversation, _) = db.widget_session(org, "visitor-1");
    let mut listener = listen(&db);
    notifications(&mut listener, Duration::from_millis(200)); // session start, drained

    let mut writer = db.connect_as(&agent(agent_id));
    let mut tx = writer.transaction().unwrap();
    tx.query_one("SELECT campfire.send_message($1, 'hello')", &[&conversation]).unwrap();
    assert!(notifications(&mut listener, Duration::from_millis(300)).is_empty(), "nothing before commit");
    tx.commit().unwrap();

    let received = notifications(&mut listener, Duration::from_secs(5));
    assert_eq!(received.len(), 1, "one NOTIFY per transaction: {received:?}");
    let note = &received[0];
    let events = note["events"].as_array().expect("small batches are inline");
    let topics: Vec<(&str, &str)> =
        events.iter().map(|e| (e["topic"].as_str().unwrap(), e["event"].as_str().unwrap())).collect();
    assert_eq!(
        topics,
        // The conversation update comes right before the list's event: they share a log row.
        vec![
            (format!("org:{org}:conv:{conversation}").as_str(), "message:created"),
            (format!("org:{org}").as_str(), "conversation:updated"),
            (format!("org:{org}:conversations").as_str(), "message:created"),
        ]
    );
    assert_eq!(note["last"].as_i64().unwrap() - note["first"].as_i64().unwrap() + 1, 3);
    let ids: Vec<i64> = events.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, (note["first"].as_i64().unwrap()..=note["last"].as_i64().unwrap()).collect::<Vec<_>>());
    assert_eq!(events[0]["payload"]["message"]["content"], "hello");
    assert_eq!(events[1]["payload"]["conversation"]["last_message_preview"], "hello");

    let mut tx = writer.transaction().unwrap();
    tx.query_one("SELECT campfire.send_message($1, 'never mind')", &[&conversation]).unwrap();
    tx.rollback().unwrap();
    assert!(notifications(&mut listener, Duration::from_millis(500)).is_empty(), "nothing after rollback");
    let logged: i64 = db
        .connect()
        .query_one("SELECT count(*) FROM campfire.events WHERE payload::text LIKE '%never mind%'", &[])
        .unwrap()
        .get(0);
    assert_eq!(logged, 0);
}

#[test]
fn oversized_batches_point_at_the_log_and_still_commit() {
    let db = TestDb::new();
    let (org, agent_id) = db.organization_with_agent("acme");
    let (conversation, _) = db.widget_session(org, "visitor-1");
    let mut listener = listen(&db);
    notifications(&mut listener, Duration::from_millis(200));

    // 4000 three-byte characters: each copy of the message is 12 kB, far over NOTIFY's 8000 bytes.
    let content = "€".repeat(4000);
    let mut writer = db.connect_as(&agent(agent_id));
    let mut tx = writer.transaction().unwrap();
    for _ in 0..3 {
        tx.query_one("SELECT campfire.send_message($1, $2)", &[&conversation, &content]).unwrap();
    }
    tx.commit().unwrap();

    // Small events stay inline; each 12 kB one is announced by its id alone. Together the
    // notifications cover the transaction's nine ids once each, in order.
    let received = notifications(&mut listener, Duration::from_secs(5));
    let mut covered = Vec::new();
    for note in &received {
        let (first, last) = (note["first"].as_i64().unwrap(), note["last"].as_i64().unwrap());
        match note.get("events") {
            Some(events) => {
                let ids: Vec<i64> = events.as_array().unwrap().iter().map(|e| e["id"].as_i64().unwrap()).collect();
                assert_eq!(ids, (first..=last).collect::<Vec<_>>(), "{note}");
                assert!(events.as_array().unwrap().iter().all(|e| e["event"] == "conversation:updated"));
            }
            None => assert_eq!(first, last, "one oversized event per pointer: {note}"),
        }
        covered.extend(first..=last);
    }
    let (first, last) = (covered[0], *covered.last().unwrap());
    assert_eq!(covered, (first..=last).collect::<Vec<_>>());
    assert_eq!(last - first + 1, 9);
    assert_eq!(received.iter().filter(|n| n.get("events").is_none()).count(), 6, "{received:?}");

    let mut relay = db.connect();
    let rows = relay
        .query(
            "SELECT id, event, payload FROM campfire.read_log($1, $2)",
            &[&(first - 1), &((last - first + 1) as i32)],
        )
        .unwrap();
    let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(ids, (first..=last).collect::<Vec<_>>());
    let contents: Vec<String> = rows
        .iter()
        .filter(|r| r.get::<_, String>(1) == "message:created")
        .map(|r| r.get::<_, Value>(2)["message"]["content"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(contents.len(), 6);
    assert!(contents.iter().all(|c| *c == content));
}

/// The limit applies whoever announces the events: the committing session, or the notifier,
/// which takes it from the database's settings when it starts.
#[test]
fn the_inline_limit_is_a_setting() {
    let db = TestDb::new();
    let (org, agent_id) = db.organization_with_agent("acme");
    let (conversation, _) = db.widget_session(org, "visitor-1");
    db.connect().batch_execute(&format!("ALTER DATABASE {} SET campfire.notify_inline_max = 0", db.name)).unwrap();
    let mut listener = listen(&db);
    // Sessions started from here on (the writers', a new notifier) see the database setting.
    db.stop_notifier();
    notifications(&mut listener, Duration::from_millis(200));
    let mut writers: Vec<_> = (0..4).map(|_| db.connect_as(&agent(agent_id))).collect();
    for round in 0..5 {
        for writer in &mut writers {
            writer
                .query_one("SELECT campfire.send_message($1, $2)", &[&conversation, &format!("tiny {round}")])
                .unwrap();
        }
    }
    let received = notifications(&mut listener, Duration::from_secs(2));
    assert_eq!(covered(&received).len(), 20 * 3, "every event announced: {received:?}");
    assert!(received.iter().all(|n| n.get("events").is_none()), "nothing inline: {received:?}");
}

/// A transaction that writes first but commits last gets the later cursor: a reader that
/// resumes from the cursor it has seen never skips it.
#[test]
fn a_late_committer_is_not_skipped_by_a_reader_resuming_from_its_cursor() {
    let db = TestDb::new();
    let (org, agent_id) = db.organization_with_agent("acme");
    let (first_conversation, _) = db.widget_session(org, "visitor-1");
    let (second_conversation, _) = db.widget_session(org, "visitor-2");
    let mut reader = db.connect_as(&agent(agent_id));
    let start: i64 = read_since(&mut reader, 0).last().map(|(id, _)| *id).unwrap_or(0);

    let mut slow = db.connect_as(&agent(agent_id));
    let mut slow_tx = slow.transaction().unwrap();
    slow_tx.query_one("SELECT campfire.send_message($1, 'written first')", &[&first_conversation]).unwrap();

    let mut fast = db.connect_as(&agent(agent_id));
    fast.query_one("SELECT campfire.send_message($1, 'committed first')", &[&second_conversation]).unwrap();

    let seen = read_since(&mut reader, start);
    assert!(!seen.is_empty());
    assert!(seen.iter().all(|(_, p)| !p.to_string().contains("written first")));
    let cursor = seen.last().unwrap().0;

    slow_tx.commit().unwrap();
    let resumed = read_since(&mut reader, cursor);
    assert!(
        resumed.iter().any(|(_, p)| p.to_string().contains("written first")),
        "the late committer's events come after the cursor: {resumed:?}"
    );
    let all: Vec<i64> = seen.iter().chain(resumed.iter()).map(|(id, _)| *id).collect();
    let mut unique = all.clone();
    unique.dedup();
    assert_eq!(all, unique, "no duplicates across the resume");
}

/// While the notifier runs, a writer whose ids come next (everything before them announced)
/// announces its own commit, one process hop sooner; the notifier stays for the writers that
/// come while one is in flight.
#[test]
fn a_writer_with_nothing_unannounced_before_it_announces_its_own_commit() {
    let db = TestDb::new();
    let (org, agent_id) = db.organization_with_agent("acme");
    let (conversation, _) = db.widget_session(org, "visitor-1");
    db.wait_for_notifier();
    let mut listener = listen(&db);
    notifications(&mut listener, Duration::from_millis(300)); // the set-up's, drained
    let mut writer = db.connect_as(&agent(agent_id));
    let writer_pid: i32 = writer.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    for text in ["one", "two"] {
        writer.query_one("SELECT campfire.send_message($1, $2)", &[&conversation, &text]).unwrap();
        let notes = notifications_by_sender(&mut listener, Duration::from_millis(500));
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert_eq!(notes[0].0, writer_pid, "sent by the writer's own backend: {notes:?}");
        assert_eq!(notes[0].1["events"].as_array().map(Vec::len), Some(3));
    }
    std::thread::sleep(Duration::from_millis(1500));
    db.wait_for_notifier(); // still there (it polls once a second and sees the writers' progress)
}

/// A commit that is slow to become visible (here: waiting for a synchronous standby that never
/// answers, after its events are logged and its ids taken) holds up no other writer, and holds
/// back the log's horizon: readers see nothing after its ids until it is visible, then all of it,
/// in id order, none skipped.
#[test]
fn a_slow_commit_holds_back_the_horizon_but_no_writer() {
    a_held_commit_is_released_by("pg_cancel_backend", Notifier::Running);
}

/// The same when the held writer's session is killed instead: its commit was already made
/// locally, becomes visible as the session ends, and its ids leave the horizon with it.
#[test]
fn a_held_commit_whose_session_is_killed_still_settles() {
    a_held_commit_is_released_by("pg_terminate_backend", Notifier::Running);
}

/// The same when no notifier runs as the held commit begins: its writer starts one before it
/// commits and leaves its events to it, rather than announce them itself and hold NOTIFY's lock,
/// the whole cluster's, while it waits.
#[test]
fn a_held_commit_with_no_notifier_running_leaves_its_events_to_one_it_starts() {
    a_held_commit_is_released_by("pg_cancel_backend", Notifier::Stopped);
}

/// Whether the database's notifier runs when the held commit begins.
enum Notifier {
    Running,
    Stopped,
}

fn a_held_commit_is_released_by(release: &str, notifier: Notifier) {
    let db = TestDb::new();
    let (org, agent_id) = db.organization_with_agent("acme");
    let (first_conversation, _) = db.widget_session(org, "visitor-1");
    let (second_conversation, _) = db.widget_session(org, "visitor-2");
    // Another database of the cluster, whose writers the held commit must not hold up either.
    let other = TestDb::new();
    let (other_org, other_agent) = other.organization_with_agent("other");
    let (other_conversation, _) = other.widget_session(other_org, "visitor-1");
    let mut reader = db.connect_as(&agent(agent_id));
    let _standby = WaitingForAStandby::begin(&db);
    match notifier {
        Notifier::Running => {
            // A write, which starts one if the set-up's has left already.
            reader.query_one("SELECT campfire.send_message($1, 'before')", &[&second_conversation]).unwrap();
            db.wait_for_notifier();
        }
        Notifier::Stopped => db.stop_notifier(),
    }
    let start: i64 = read_since(&mut reader, 0).last().map(|(id, _)| *id).unwrap_or(0);
    let mut listener = listen(&db);
    let mut other_listener = listen(&other);
    notifications(&mut other_listener, Duration::from_millis(300)); // the set-up's, drained

    let slow_db = db.connect_as(&agent(agent_id));
    let slow = std::thread::spawn(move || {
        let mut slow = slow_db;
        slow.batch_execute("SET synchronous_commit = on").unwrap();
        // Released below ("canceling wait for synchronous replication", or the session ends):
        // either way committed locally.
        let _ = slow.query_one("SELECT campfire.send_message($1, 'slow to commit')", &[&first_conversation]);
    });
    let mut admin = db.connect();
    let slow_pid: i32 = (0..1000)
        .find_map(|_| {
            let row = admin
                .query_opt(
                    "SELECT pid FROM pg_stat_activity WHERE wait_event = 'SyncRep' AND datname = current_database()",
                    &[],
                )
                .unwrap();
            row.map(|r| r.get(0)).or_else(|| {
                std::thread::sleep(Duration::from_millis(10));
                None
            })
        })
        .expect("the slow commit waits for the standby");
    db.wait_for_notifier(); // started by the slow commit, if none ran

    let mut other_writer = other.connect_as(&agent(other_agent));
    // (A commit waiting for NOTIFY's lock would fail after lock_timeout.)
    other_writer.batch_execute("SET lock_timeout = '5s'").unwrap();
    other_writer
        .query_one("SELECT campfire.send_message($1, 'elsewhere')", &[&other_conversation])
        .expect("another database's writer does not wait for the slow commit");
    let announced = notifications(&mut other_listener, Duration::from_millis(1000));
    assert_eq!(covered(&announced).len(), 3, "another database's events are announced at once: {announced:?}");

    let mut fast = db.connect_as(&agent(agent_id));
    fast.batch_execute("SET statement_timeout = '5s'").unwrap();
    fast.query_one("SELECT campfire.send_message($1, 'fast')", &[&second_conversation])
        .expect("a writer does not wait for another's commit");
    assert!(read_since(&mut reader, start).is_empty(), "nothing after the slow commit's ids is readable yet");
    let horizon: i64 = reader.query_one("SELECT campfire.log_horizon()", &[]).unwrap().get(0);
    assert_eq!(horizon, start, "the horizon stops below the slow commit's ids");

    admin.execute(&format!("SELECT {release}($1)"), &[&slow_pid]).unwrap();
    slow.join().unwrap();
    let seen = read_since(&mut reader, start);
    let contents: Vec<&str> = seen.iter().filter_map(|(_, p)| p["message"]["content"].as_str()).collect();
    assert_eq!(seen.len(), 6, "both messages' events: {seen:?}");
    assert!(seen.windows(2).all(|w| w[0].0 + 1 == w[1].0), "consecutive ids, none skipped: {seen:?}");
    assert_eq!(contents, ["slow to commit", "slow to commit", "fast", "fast"], "the slow commit's ids come first");
    // Neither announced its own events: the slow commit would have held NOTIFY's lock, which is
    // the whole cluster's, while it waited for the standby; the fast one's came after its ids.
    let senders: Vec<i32> = notifications_by_sender(&mut listener, Duration::from_millis(500))
        .into_iter()
        .filter(|(_, note)| note["last"].as_i64().unwrap() > start)
        .map(|(pid, _)| pid)
        .collect();
    assert!(
        !senders.is_empty() && !senders.contains(&slow_pid),
        "announced by the notifier: {senders:?} (slow: {slow_pid})"
    );
}

/// Makes commits that ask for synchronous replication wait for a standby that does not exist,
/// while every other session of the cluster commits locally as before; restored on drop.
struct WaitingForAStandby<'a> {
    /// The settings are the cluster's: one test at a time changes them.
    _exclusive: std::sync::MutexGuard<'static, ()>,
    db: &'a TestDb,
    admin: Client,
    /// The settings as they were, to restore.
    before: Vec<(&'static str, String)>,
}

impl<'a> WaitingForAStandby<'a> {
    const SETTINGS: [(&'static str, &'static str); 2] =
        [("synchronous_commit", "local"), ("synchronous_standby_names", "nobody")];

    fn begin(db: &'a TestDb) -> WaitingForAStandby<'a> {
        static EXCLUSIVE: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let exclusive = EXCLUSIVE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut admin = db.connect();
        let before = Self::SETTINGS
            .iter()
            .map(|(name, _)| (*name, admin.query_one("SELECT current_setting($1)", &[name]).unwrap().get(0)))
            .collect();
        let mut guard = WaitingForAStandby { _exclusive: exclusive, db, admin, before };
        // First every session's default, then the standby: no session waits meanwhile.
        for (name, value) in Self::SETTINGS {
            guard.set(name, Some(value), value);
        }
        guard.await_commits_waiting();
        guard
    }

    /// Returns once a commit that asks for synchronous replication does wait: sessions read the
    /// new standby list at once, but whether one is required is published by the checkpointer,
    /// whenever it reads the settings. A probe commit (one that writes WAL) is released by a cancel.
    fn await_commits_waiting(&mut self) {
        for _ in 0..100 {
            let mut probe = self.db.connect();
            let pid: i32 = probe.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
            probe.batch_execute("SET synchronous_commit = on").unwrap();
            let committing =
                std::thread::spawn(move || probe.batch_execute("CREATE TEMPORARY TABLE probe () ON COMMIT DROP"));
            let mut waited = false;
            while !waited && !committing.is_finished() {
                std::thread::sleep(Duration::from_millis(10));
                let cancel =
                    "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE pid = $1 AND wait_event = 'SyncRep'";
                waited = self.admin.query_opt(cancel, &[&pid]).unwrap().is_some();
            }
            let _ = committing.join().unwrap();
            if waited {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("after 100 tries, a commit does not wait for the standby");
    }

    /// Sets (or resets) one server setting, and returns once a new session sees `expected`.
    fn set(&mut self, name: &str, value: Option<&str>, expected: &str) {
        let statement = match value {
            Some(value) => format!("ALTER SYSTEM SET {name} = '{value}'"),
            None => format!("ALTER SYSTEM RESET {name}"),
        };
        self.admin.batch_execute(&statement).unwrap();
        self.admin.batch_execute("SELECT pg_reload_conf()").unwrap();
        for _ in 0..200 {
            let seen: String = self.db.connect().query_one("SELECT current_setting($1)", &[&name]).unwrap().get(0);
            if seen == expected {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{name} is not {expected} after 10 s");
    }
}

impl Drop for WaitingForAStandby<'_> {
    fn drop(&mut self) {
        for (name, value) in std::mem::take(&mut self.before).into_iter().rev() {
            self.set(name, None, &value);
        }
    }
}

/// A transaction's events are written when it commits, never earlier: one left open (idle in
/// transaction, or slow) holds no lock over the log, and other writers' events go out at once.
/// Whatever it did before idling: broadcast(), or a write with its constraints made immediate
/// (which used to fire the deferred flush trigger, and take the log's lock, at once).
fn an_open_transaction_holds_up_no_other_writer(opener: &str) {
    let db = TestDb::new();
    let (org, agent_id) = db.organization_with_agent("acme");
    let (conversation, session) = db.widget_session(org, "visitor-1");
    // The idler writes elsewhere: a conversation's own writers do wait for each other (its row
    // lock orders its messages).
    let (idlers_conversation, _) = db.widget_session(org, "visitor-2");
    let mut listener = listen(&db);
    notifications(&mut listener, Duration::from_millis(200));
    let mut idler = db.connect_as(&service());
    idler.batch_execute("BEGIN").unwrap();
    let statement = opener
        .replace("{org}", &org.to_string())
        .replace("{conversation}", &idlers_conversation.to_string())
        .replace("{session}", &session.to_string());
    idler.batch_execute(&statement).unwrap();
    assert!(notifications(&mut listener, Duration::from_millis(300)).is_empty(), "nothing before its commit");

    // Meanwhile, other writers commit (never waiting on the idler) and their events go out.
    for n in 0..3 {
        let mut writer = db.connect_as(&agent(agent_id));
        writer.batch_execute("SET statement_timeout = '5s'").unwrap();
        writer
            .query_one("SELECT campfire.send_message($1, $2)", &[&conversation, &format!("meanwhile {n}")])
            .unwrap_or_else(|err| panic!("a writer waited on the idle transaction: {err}"));
    }
    let meanwhile = notifications(&mut listener, Duration::from_secs(2));
    assert_eq!(covered(&meanwhile).len(), 9, "three messages' events, while the idler is still open: {meanwhile:?}");

    idler.batch_execute("COMMIT").unwrap();
    let after = notifications(&mut listener, Duration::from_secs(2));
    let ids: Vec<i64> = after
        .iter()
        .flat_map(|n| n["events"].as_array().into_iter().flatten())
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    let last_meanwhile = meanwhile.iter().map(|n| n["last"].as_i64().unwrap()).max().unwrap();
    assert!(!ids.is_empty() && ids.iter().all(|id| *id > last_meanwhile), "its cursors follow its commit: {after:?}");
}

#[test]
fn an_open_transaction_that_broadcast_holds_up_no_other_writer() {
    an_open_transaction_holds_up_no_other_writer(
        "SELECT campfire.broadcast('{org}', 'org:{org}:widget:session:{session}', 'custom', '{\"n\": 1}')",
    );
}

#[test]
fn an_open_transaction_with_immediate_constraints_holds_up_no_other_writer() {
    an_open_transaction_holds_up_no_other_writer(
        "SET CONSTRAINTS ALL IMMEDIATE; SELECT campfire.send_message('{conversation}', 'first', 'agent')",
    );
}
