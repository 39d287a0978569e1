//! Fixtures for end-to-end tests: a throwaway PostgreSQL cluster with pg_campfire installed, one
//! fresh database per test, and helpers to act as the principals of the SQL API.
//!
//! The cluster comes from `CAMPFIRE_TEST_PORT` (a running cluster on 127.0.0.1 whose `postgres`
//! superuser trusts local connections) or is started on first use by `scripts/cluster.sh` and
//! stopped when the test binary exits.

use postgres::{Client, NoTls};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

pub use postgres;

pub mod relay;

struct Cluster {
    port: u16,
    /// Set when this process started the cluster and must stop it.
    data_dir: Option<String>,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();
static NEXT_DATABASE: AtomicUsize = AtomicUsize::new(0);

fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

extern "C" fn stop_cluster() {
    if let Some(Cluster { data_dir: Some(dir), .. }) = CLUSTER.get() {
        let _ = Command::new(repo_root().join("scripts/cluster.sh")).args(["stop", dir]).status();
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(|| {
        if let Ok(port) = std::env::var("CAMPFIRE_TEST_PORT") {
            let port = port.parse().expect("CAMPFIRE_TEST_PORT is a port");
            create_template(port).expect("preparing the template database (is pg_campfire installed?)");
            return Cluster { port, data_dir: None };
        }
        let port = free_port();
        let dir = format!("/tmp/campfire-tests-{}-{port}", std::process::id());
        let status = Command::new(repo_root().join("scripts/cluster.sh"))
            .args(["start", &dir, &port.to_string()])
            .status()
            .expect("scripts/cluster.sh runs");
        assert!(status.success(), "starting the test cluster failed");
        let cluster = Cluster { port, data_dir: Some(dir) };
        if let Err(err) = create_template(port) {
            let _ = Command::new(repo_root().join("scripts/cluster.sh"))
                .args(["stop", cluster.data_dir.as_deref().unwrap()])
                .status();
            panic!("preparing the test cluster failed (is pg_campfire installed?): {err}");
        }
        unsafe { libc::atexit(stop_cluster) };
        cluster
    })
}

/// A fresh `campfire_template` database with the extension; each test copies it.
fn create_template(port: u16) -> Result<(), postgres::Error> {
    let mut admin = try_connect("postgres", port)?;
    admin.batch_execute("DROP DATABASE IF EXISTS campfire_template")?;
    admin.batch_execute("CREATE DATABASE campfire_template")?;
    try_connect("campfire_template", port)?.batch_execute("CREATE EXTENSION pg_campfire")?;
    admin.batch_execute(
        "DO $$ BEGIN
             IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'campfire_relay_test') THEN
                 CREATE ROLE campfire_relay_test LOGIN IN ROLE campfire_relay;
             END IF;
         END $$",
    )
}

fn try_connect(database: &str, port: u16) -> Result<Client, postgres::Error> {
    Client::connect(&format!("host=127.0.0.1 port={port} user=postgres dbname={database}"), NoTls)
}

fn connect_to(database: &str, port: u16) -> Client {
    try_connect(database, port).unwrap_or_else(|e| panic!("connecting to {database} on port {port}: {e}"))
}

/// A fresh database with pg_campfire, owned by one test.
pub struct TestDb {
    pub name: String,
    port: u16,
}

impl TestDb {
    pub fn new() -> TestDb {
        let cluster = cluster();
        let name = format!("campfire_test_{}_{}", std::process::id(), NEXT_DATABASE.fetch_add(1, Ordering::SeqCst));
        let mut admin = connect_to("postgres", cluster.port);
        admin.batch_execute(&format!("CREATE DATABASE {name} TEMPLATE campfire_template")).unwrap();
        TestDb { name, port: cluster.port }
    }

    /// The connection string of the least-privileged relay login (a member of campfire_relay).
    pub fn relay_url(&self) -> String {
        format!("host=127.0.0.1 port={} user=campfire_relay_test dbname={}", self.port, self.name)
    }

    /// The connection string of the `postgres` superuser to this database.
    pub fn connection_string(&self) -> String {
        format!("host=127.0.0.1 port={} user=postgres dbname={}", self.port, self.name)
    }

    /// A connection as `user`, a login of the cluster (test roles are made by the tests).
    pub fn connect_user(&self, user: &str) -> Client {
        Client::connect(&format!("host=127.0.0.1 port={} user={user} dbname={}", self.port, self.name), NoTls)
            .unwrap_or_else(|e| panic!("connecting as {user}: {e}"))
    }

    /// A superuser connection (RLS does not apply to it; the API's claims checks do).
    pub fn connect(&self) -> Client {
        connect_to(&self.name, self.port)
    }

    /// A connection that acts as `claims` for every transaction.
    pub fn connect_as(&self, claims: &serde_json::Value) -> Client {
        let mut client = self.connect();
        client.execute("SELECT set_config('request.jwt.claims', $1, false)", &[&claims.to_string()]).unwrap();
        client
    }

    /// An organization with one active agent; returns (organization id, agent user id).
    pub fn organization_with_agent(&self, slug: &str) -> (uuid::Uuid, uuid::Uuid) {
        let mut client = self.connect_as(&service());
        let org: uuid::Uuid = client.query_one("SELECT campfire.create_organization($1, $1)", &[&slug]).unwrap().get(0);
        let agent = uuid::Uuid::new_v4();
        client.execute("SELECT campfire.add_member($1, $2, 'agent', 'active', 'Agent')", &[&org, &agent]).unwrap();
        (org, agent)
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

impl Drop for TestDb {
    fn drop(&mut self) {
        // On a thread of its own: the sync client cannot run inside an async test's runtime.
        let (name, port) = (self.name.clone(), self.port);
        let _ = std::thread::spawn(move || {
            if let Ok(mut admin) = try_connect("postgres", port) {
                let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
            }
        })
        .join();
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
    use postgres::fallible_iterator::FallibleIterator;
    let key = notify_key(listener);
    let mut received = Vec::new();
    let mut notifications = listener.notifications();
    let mut iter = notifications.timeout_iter(wait);
    while let Some(n) = iter.next().expect("reading notifications") {
        assert_eq!(n.channel(), campfire_core::channels::EVENTS);
        let opened = campfire_core::sealed::open(&key, n.channel(), n.payload()).expect("a sealed notification");
        received.push(serde_json::from_slice(&opened.payload).expect("the sealed payload is JSON"));
    }
    received
}
