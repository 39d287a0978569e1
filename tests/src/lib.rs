//! Fixtures for end-to-end tests: one fresh database per test on the test kit's cluster
//! (`campfire-testkit`), and helpers to act as the principals of the SQL API.

use campfire_testkit::{Database, FIXTURE_SQL, RELAY_ROLE};
use postgres::{Client, NoTls};

pub use postgres;

pub mod relay;

/// A fresh database with pg_campfire, owned by one test (dropped with it).
pub struct TestDb {
    database: Database,
}

/// A test database is the kit's database with the helpers below: its `name` and `port` read
/// through.
impl std::ops::Deref for TestDb {
    type Target = Database;

    fn deref(&self) -> &Database {
        &self.database
    }
}

impl TestDb {
    pub fn new() -> TestDb {
        TestDb { database: Database::new("campfire_test") }
    }

    /// The connection string of the least-privileged relay login (a member of campfire_relay).
    pub fn relay_url(&self) -> String {
        self.url(RELAY_ROLE)
    }

    /// The connection string of the `postgres` superuser to this database.
    pub fn connection_string(&self) -> String {
        self.url("postgres")
    }

    /// A connection as `user`, a login of the cluster (test roles are made by the tests).
    pub fn connect_user(&self, user: &str) -> Client {
        Client::connect(&self.url(user), NoTls).unwrap_or_else(|e| panic!("connecting as {user}: {e}"))
    }

    /// A superuser connection (RLS does not apply to it; the API's claims checks do).
    pub fn connect(&self) -> Client {
        self.connect_user("postgres")
    }

    /// A connection that acts as `claims` for every transaction.
    pub fn connect_as(&self, claims: &serde_json::Value) -> Client {
        let mut client = self.connect();
        client.execute("SELECT set_config('request.jwt.claims', $1, false)", &[&claims.to_string()]).unwrap();
        client
    }

    /// An organization with one active agent; returns (organization id, agent user id).
    pub fn organization_with_agent(&self, slug: &str) -> (uuid::Uuid, uuid::Uuid) {
        let mut client = self.connect();
        client.batch_execute(FIXTURE_SQL).unwrap();
        let row = client
            .query_one("SELECT organization, agent FROM pg_temp.campfire_fixture($1, $1, 'Agent', '{}')", &[&slug])
            .unwrap();
        (row.get(0), row.get(1))
    }

    /// Waits (at most 5 s) until a notifier serves this database (the first commit with events
    /// starts one); from then on it announces every commit's events.
    pub fn wait_for_notifier(&self) {
        self.await_notifier(true);
    }

    /// Terminates this database's notifier and waits until it has gone; the next commit that
    /// needs one starts a new one (which reads the database's settings afresh).
    pub fn stop_notifier(&self) {
        self.connect()
            .batch_execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE backend_type = 'pg_campfire notifier' AND datname = current_database()",
            )
            .unwrap();
        self.await_notifier(false);
    }

    fn await_notifier(&self, running: bool) {
        let mut client = self.connect();
        let query = "SELECT EXISTS (SELECT FROM pg_stat_activity \
                     WHERE backend_type = 'pg_campfire notifier' AND datname = current_database())";
        for _ in 0..500 {
            if client.query_one(query, &[]).unwrap().get::<_, bool>(0) == running {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("after 5 s, a notifier running here: {}", !running);
    }

    /// Starts a widget session; returns (conversation id, widget session id).
    pub fn widget_session(&self, org: uuid::Uuid, visitor: &str) -> (uuid::Uuid, uuid::Uuid) {
        let row = self
            .connect()
            .query_one(
                "SELECT conversation_id, widget_session_id FROM campfire.start_widget_session($1, $2)",
                &[&org, &visitor],
            )
            .unwrap();
        (row.get(0), row.get(1))
    }
}

impl Default for TestDb {
    fn default() -> Self {
        TestDb::new()
    }
}

pub fn service() -> serde_json::Value {
    serde_json::json!({ "role": "service_role" })
}

pub fn agent(user: uuid::Uuid) -> serde_json::Value {
    serde_json::json!({ "role": "authenticated", "sub": user })
}

pub fn visitor(session: uuid::Uuid) -> serde_json::Value {
    serde_json::json!({ "role": "visitor", "widget_session_id": session })
}

/// The database's notify key (a superuser connection reads it).
pub fn notify_key(client: &mut Client) -> campfire_core::sealed::Key {
    let key: Vec<u8> = client.query_one("SELECT campfire.notify_key()", &[]).unwrap().get(0);
    key.try_into().expect("a 32-byte key")
}

/// The `campfire_events` notifications that reach `listener` (a superuser connection) within
/// `wait`, opened and parsed.
pub fn notifications(listener: &mut Client, wait: std::time::Duration) -> Vec<serde_json::Value> {
    notifications_by_sender(listener, wait).into_iter().map(|(_, note)| note).collect()
}

/// The same, each with the process id of the backend that sent it.
pub fn notifications_by_sender(listener: &mut Client, wait: std::time::Duration) -> Vec<(i32, serde_json::Value)> {
    use postgres::fallible_iterator::FallibleIterator;
    let key = notify_key(listener);
    let mut received = Vec::new();
    let mut notifications = listener.notifications();
    let mut iter = notifications.timeout_iter(wait);
    while let Some(n) = iter.next().expect("reading notifications") {
        assert_eq!(n.channel(), campfire_core::channels::EVENTS);
        let opened = campfire_core::sealed::open(&key, n.channel(), n.payload()).expect("a sealed notification");
        received.push((n.process_id(), serde_json::from_slice(&opened.payload).expect("the sealed payload is JSON")));
    }
    received
}
