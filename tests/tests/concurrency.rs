//! Idempotency and ordering under concurrent writers, on real connections.

use campfire_tests::{TestDb, agent, service};
use std::sync::{Arc, Barrier};
use std::thread;

/// Runs `work` on `n` threads released at the same instant; returns their results.
fn all_at_once<T: Send + 'static>(n: usize, work: impl Fn(usize) -> T + Send + Sync + 'static) -> Vec<T> {
    let barrier = Arc::new(Barrier::new(n));
    let work = Arc::new(work);
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let (barrier, work) = (barrier.clone(), work.clone());
            thread::spawn(move || {
                barrier.wait();
                work(i)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn double_clicks_and_tabs_get_one_session_and_one_conversation() {
    let db = Arc::new(TestDb::new());
    let (org, _) = db.organization_with_agent("acme");
    let results = all_at_once(8, {
        let db = db.clone();
        move |_| {
            let row = db
                .connect()
                .query_one("SELECT conversation_id, widget_session_id, session_secret FROM campfire.start_widget_session($1, 'visitor-x')", &[&org])
                .unwrap();
            (row.get::<_, uuid::Uuid>(0), row.get::<_, uuid::Uuid>(1), row.get::<_, String>(2))
        }
    });
    assert!(results.windows(2).all(|w| w[0] == w[1]), "{results:?}");
    let conversations: i64 = db
        .connect()
        .query_one("SELECT count(*) FROM campfire.conversations WHERE visitor_id = 'visitor-x'", &[])
        .unwrap()
        .get(0);
    assert_eq!(conversations, 1);
}

#[test]
fn retries_with_one_client_message_id_store_one_message() {
    let db = Arc::new(TestDb::new());
    let (org, agent_id) = db.organization_with_agent("acme");
    let (conversation, _) = db.widget_session(org, "visitor-1");
    let ids = all_at_once(8, {
        let db = db.clone();
        move |_| {
            db.connect_as(&agent(agent_id))
                .query_one(
                    "SELECT id, seq FROM campfire.send_message($1, 'hi', client_message_id => 'click-1')",
                    &[&conversation],
                )
                .map(|row| (row.get::<_, uuid::Uuid>(0), row.get::<_, i64>(1)))
                .unwrap()
        }
    });
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
    assert_eq!(ids[0].1, 1);
    let next: i64 = db
        .connect_as(&agent(agent_id))
        .query_one("SELECT seq FROM campfire.send_message($1, 'next')", &[&conversation])
        .unwrap()
        .get(0);
    assert_eq!(next, 2, "retries burn no sequence number");
}

/// A send that finds the conversation held by another, uncommitted send (its number looked up
/// without the lock, the other's message not yet visible) waits for it, then decides under the
/// lock: a retry of the message that committed meanwhile returns that message, a retry of one
/// that rolled back stores its own, another message takes the next number. No number is burned.
#[test]
fn a_send_waiting_on_another_decides_under_the_lock() {
    let db = Arc::new(TestDb::new());
    let (org, agent_id) = db.organization_with_agent("acme");
    let (conversation, _) = db.widget_session(org, "visitor-1");
    let send = "SELECT id, seq FROM campfire.send_message($1, 'hi', client_message_id => $2)";
    // (the first send's key, the waiting send's key, whether the first commits, the seq it gets)
    let cases = [("tap-1", "tap-2", true, 2), ("tap-3", "tap-3", true, 3), ("tap-4", "tap-4", false, 4)];
    for (first_key, second_key, commits, expected_seq) in cases {
        let mut first = db.connect_as(&agent(agent_id));
        let mut tx = first.transaction().unwrap();
        let row = tx.query_one(send, &[&conversation, &first_key]).unwrap();
        let (first_id, first_seq): (uuid::Uuid, i64) = (row.get(0), row.get(1));
        let second = thread::spawn({
            let db = db.clone();
            move || {
                let row = db.connect_as(&agent(agent_id)).query_one(send, &[&conversation, &second_key]).unwrap();
                (row.get::<_, uuid::Uuid>(0), row.get::<_, i64>(1))
            }
        });
        let mut watcher = db.connect();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%send_message%'",
                &[],
            )
            .unwrap()
            .get::<_, i64>(0)
            == 0
        {
            assert!(!second.is_finished(), "the second send did not wait for the first");
            assert!(std::time::Instant::now() < deadline, "the second send never waited on a lock");
            thread::sleep(std::time::Duration::from_millis(10));
        }
        if commits { tx.commit() } else { tx.rollback() }.unwrap();
        let (second_id, second_seq) = second.join().unwrap();
        let case = format!("{first_key} then {second_key}, first commits: {commits}");
        if first_key == second_key && commits {
            assert_eq!((second_id, second_seq), (first_id, first_seq), "{case}");
        } else {
            assert_ne!(second_id, first_id, "{case}");
            assert_eq!(second_seq, expected_seq, "{case}");
        }
    }
    let seqs: Vec<i64> = db
        .connect()
        .query("SELECT seq FROM campfire.messages WHERE conversation_id = $1 ORDER BY seq", &[&conversation])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4], "one message each, no number burned");
}

#[test]
fn concurrent_writers_get_gap_free_sequence_numbers_and_commit_ordered_cursors() {
    let db = Arc::new(TestDb::new());
    let (org, agent_id) = db.organization_with_agent("acme");
    let (conversation, _) = db.widget_session(org, "visitor-1");
    let mut listener = db.connect();
    listener.batch_execute("LISTEN campfire_events").unwrap();
    db.wait_for_notifier();
    let (writers, per_writer) = (8, 40);
    all_at_once(writers, {
        let db = db.clone();
        move |w| {
            let mut client = db.connect_as(&agent(agent_id));
            for i in 0..per_writer {
                client
                    .query_one("SELECT campfire.send_message($1, $2)", &[&conversation, &format!("{w}-{i}")])
                    .unwrap();
            }
        }
    });
    let seqs: Vec<i64> = db
        .connect()
        .query("SELECT seq FROM campfire.messages WHERE conversation_id = $1 ORDER BY seq", &[&conversation])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(seqs, (1..=(writers * per_writer) as i64).collect::<Vec<_>>());

    // The notifier's announcements arrive in cursor order with contiguous ranges, however the
    // writers' commits interleaved, and the conversation's messages come in seq order.
    let notes = campfire_tests::notifications(&mut listener, std::time::Duration::from_secs(2));
    let ranges: Vec<(i64, i64)> =
        notes.iter().map(|v| (v["first"].as_i64().unwrap(), v["last"].as_i64().unwrap())).collect();
    for pair in ranges.windows(2) {
        assert_eq!(pair[1].0, pair[0].1 + 1, "contiguous cursors: {pair:?}");
    }
    let announced: i64 = ranges.iter().map(|(first, last)| last - first + 1).sum();
    assert_eq!(announced as usize, writers * per_writer * 3, "three events per message");
    let topic = format!("org:{org}:conv:{conversation}");
    let delivered_seqs: Vec<i64> = notes
        .iter()
        .flat_map(|n| n["events"].as_array().cloned().expect("small events are inline"))
        .filter(|e| e["topic"] == topic.as_str() && e["event"] == "message:created")
        .map(|e| e["payload"]["message"]["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(delivered_seqs, seqs, "the conversation's messages in the order they were numbered");
}

#[test]
fn exactly_one_of_several_agents_claims_a_handed_over_conversation() {
    let db = Arc::new(TestDb::new());
    let (org, _) = db.organization_with_agent("acme");
    let agents: Vec<uuid::Uuid> = (0..5).map(|_| uuid::Uuid::new_v4()).collect();
    let mut admin = db.connect_as(&service());
    for a in &agents {
        admin.execute("SELECT campfire.add_member($1, $2, 'agent')", &[&org, a]).unwrap();
    }
    let (conversation, _) = db.widget_session(org, "visitor-1");
    db.connect().execute("UPDATE campfire.conversations SET status = 'bot' WHERE id = $1", &[&conversation]).unwrap();
    admin.query_one("SELECT campfire.request_handover($1, 'wants a human')", &[&conversation]).unwrap();

    let outcomes = all_at_once(agents.len(), {
        let db = db.clone();
        let agents = agents.clone();
        move |i| {
            db.connect_as(&agent(agents[i]))
                .query_one("SELECT assigned_to FROM campfire.claim_conversation($1)", &[&conversation])
                .map(|row| row.get::<_, uuid::Uuid>(0))
                .map_err(|e| e.code().map(|c| c.code().to_owned()))
        }
    });
    let winners: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().ok()).collect();
    assert_eq!(winners.len(), 1, "{outcomes:?}");
    assert!(outcomes.iter().filter(|o| o.is_err()).all(|o| o.as_ref().unwrap_err().as_deref() == Some("55000")));
    let assigned: uuid::Uuid = db
        .connect()
        .query_one("SELECT assigned_to FROM campfire.conversations WHERE id = $1", &[&conversation])
        .unwrap()
        .get(0);
    assert_eq!(&assigned, winners[0]);
}

#[test]
fn a_refused_write_never_waits_on_a_conversation_the_writer_may_not_see() {
    let db = TestDb::new();
    let (_, outsider) = db.organization_with_agent("acme");
    let (other_org, _) = db.organization_with_agent("globex");
    let (foreign, _) = db.widget_session(other_org, "visitor-1");
    // The other organization's conversation stays locked by an open transaction.
    let mut holder = db.connect();
    holder.batch_execute("BEGIN").unwrap();
    holder.execute("SELECT FROM campfire.conversations WHERE id = $1 FOR UPDATE", &[&foreign]).unwrap();

    // An agent of another organization, through row-level security (as an application login).
    let mut intruder = db.connect_as(&agent(outsider));
    intruder.batch_execute("SET ROLE campfire_client; SET lock_timeout = '5s'").unwrap();
    for retry_key in [None, Some("probe-1")] {
        let refused = intruder
            .execute(
                "INSERT INTO campfire.messages (conversation_id, organization_id, content, sender_type, client_message_id) \
                 VALUES ($1, $2, 'probe', 'agent', $3)",
                &[&foreign, &other_org, &retry_key],
            )
            .unwrap_err();
        // Refused before the owner's trigger looks at (or waits for) the row: not a lock timeout.
        assert_eq!(refused.code().map(|c| c.code()), Some("42501"), "{refused:?}");
        let via_api = intruder
            .query_one("SELECT campfire.send_message($1, 'probe', client_message_id => $2)", &[&foreign, &retry_key])
            .unwrap_err();
        assert_eq!(via_api.code().map(|c| c.code()), Some("P0002"), "{via_api:?}");
    }
    holder.batch_execute("ROLLBACK").unwrap();
}
