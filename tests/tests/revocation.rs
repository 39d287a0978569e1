//! Rights taken back by another session, against a transaction that keeps asking about them.
//!
//! Row-level security's helpers answer a question again from memory while nothing they could
//! see has changed (pg_campfire/src/read_memo.rs). Another session's commit is such a change:
//! the next statement must see it, however often the question was answered before.

use campfire_tests::{TestDb, agent, visitor};
use postgres::Client;

/// What a visitor's helpers answer: its conversations, whether its session counts, and whether
/// its conversation is found.
fn visitor_answers(client: &mut Client, conversation: uuid::Uuid) -> (i32, bool, bool) {
    let row = client
        .query_one(
            "SELECT cardinality(campfire.visitor_conversations()), campfire.current_widget_session_id() IS NOT NULL, \
                    campfire.visitor_conversation_org($1) IS NOT NULL",
            &[&conversation],
        )
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

/// What an agent's helpers answer: how many organizations it is a member of, and its role in `org`.
fn agent_answers(client: &mut Client, org: uuid::Uuid) -> (i32, Option<String>) {
    let row = client
        .query_one("SELECT cardinality(campfire.member_organizations('viewer')), campfire.member_role($1)", &[&org])
        .unwrap();
    (row.get(0), row.get(1))
}

/// A visitor's live session with its conversation, a connection acting as it that has begun a
/// transaction at `isolation`, and a way to revoke the session from another connection.
struct VisitorAsking {
    db: TestDb,
    conversation: uuid::Uuid,
    session: uuid::Uuid,
    asker: Client,
}

impl VisitorAsking {
    fn begin(isolation: &str) -> VisitorAsking {
        let db = TestDb::new();
        let (org, _) = db.organization_with_agent("acme");
        let (conversation, session) = db.widget_session(org, "visitor-1");
        let mut asker = db.connect_as(&visitor(session));
        asker.batch_execute(&format!("BEGIN ISOLATION LEVEL {isolation}")).unwrap();
        VisitorAsking { db, conversation, session, asker }
    }

    fn answers(&mut self) -> (i32, bool, bool) {
        visitor_answers(&mut self.asker, self.conversation)
    }

    fn revoke_elsewhere(&self) {
        let revoke = "UPDATE campfire.widget_sessions SET revoked_at = now() WHERE id = $1";
        self.db.connect().execute(revoke, &[&self.session]).unwrap();
    }
}

#[test]
fn a_session_revoked_elsewhere_answers_nothing_from_the_next_statement() {
    let mut visitor = VisitorAsking::begin("READ COMMITTED");
    for _ in 0..3 {
        assert_eq!(visitor.answers(), (1, true, true));
    }
    visitor.revoke_elsewhere();
    assert_eq!(visitor.answers(), (0, false, false), "the revocation is seen in the same transaction");
    visitor.asker.batch_execute("COMMIT").unwrap();
}

#[test]
fn a_membership_disabled_elsewhere_answers_nothing_from_the_next_statement() {
    let db = TestDb::new();
    let (org, agent_id) = db.organization_with_agent("acme");
    let mut asker = db.connect_as(&agent(agent_id));
    asker.batch_execute("BEGIN ISOLATION LEVEL READ COMMITTED").unwrap();
    for _ in 0..3 {
        assert_eq!(agent_answers(&mut asker, org), (1, Some("agent".into())));
    }
    db.connect()
        .execute("UPDATE campfire.organization_members SET status = 'disabled' WHERE user_id = $1", &[&agent_id])
        .unwrap();
    assert_eq!(agent_answers(&mut asker, org), (0, None), "the change is seen in the same transaction");
    asker.batch_execute("COMMIT").unwrap();
}

/// Under REPEATABLE READ every read of a transaction sees its first snapshot, the helpers'
/// included (as they did before they kept answers); the next transaction sees the revocation.
#[test]
fn a_repeatable_read_transaction_answers_from_its_snapshot_and_the_next_one_sees_the_revocation() {
    let mut visitor = VisitorAsking::begin("REPEATABLE READ");
    assert_eq!(visitor.answers(), (1, true, true));
    visitor.revoke_elsewhere();
    assert_eq!(visitor.answers(), (1, true, true));
    visitor.asker.batch_execute("COMMIT").unwrap();
    assert_eq!(visitor.answers(), (0, false, false));
}

/// The other session's commit lands while one statement of the asker runs, between two of its
/// questions: the question asked after the commit is answered afresh.
#[test]
fn a_revocation_committed_during_a_statement_is_seen_by_its_later_questions() {
    let db = TestDb::new();
    let (org, _) = db.organization_with_agent("acme");
    let (_, session) = db.widget_session(org, "visitor-1");
    let mut revoker = db.connect();
    revoker.batch_execute("BEGIN").unwrap();
    revoker.execute("UPDATE campfire.widget_sessions SET revoked_at = now() WHERE id = $1", &[&session]).unwrap();
    let mut watcher = db.connect();
    let committer = std::thread::spawn(move || {
        // The asker sleeps once it has asked its first question.
        let asleep = "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE wait_event = 'PgSleep' AND datname = current_database())";
        while !watcher.query_one(asleep, &[]).unwrap().get::<_, bool>(0) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        revoker.batch_execute("COMMIT").unwrap();
    });
    // Asked, then asked again after the pause in which the other session commits: one statement.
    let row = db
        .connect_as(&visitor(session))
        .query_one(
            "SELECT cardinality(campfire.visitor_conversations()) AS before, \
                    pg_catalog.pg_sleep(2)::text AS pause, \
                    cardinality(campfire.visitor_conversations()) AS after",
            &[],
        )
        .unwrap();
    committer.join().unwrap();
    assert_eq!((row.get::<_, i32>("before"), row.get::<_, i32>("after")), (1, 0));
}
