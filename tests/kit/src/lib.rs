//! The one PostgreSQL harness of pg_campfire's Rust tests (the relay's integration tests and the
//! end-to-end tests): a cluster with the extension, a template database copied by each test, the
//! relay's least-privileged login, the fixture SQL, and the WebSocket and HTTP clients ([`ws`],
//! [`http`]).
//!
//! The cluster is `CAMPFIRE_TEST_PORT` when set (a running cluster on 127.0.0.1 whose `postgres`
//! superuser is trusted, with pg_campfire installed and preloaded), refused if the installed
//! library is newer than the running server; otherwise `scripts/cluster.sh` starts one on a free
//! port, stopped when the test binary exits. A test may also start clusters of its own
//! ([`OwnCluster`]: a shard it stops and starts). Everything runs through `psql`, so that the
//! harness serves synchronous and asynchronous tests alike.

pub mod http;
pub mod ws;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

/// The login the relays under test use: a member of `campfire_relay`, nothing more.
pub const RELAY_ROLE: &str = "campfire_relay_test";

/// An organization with one active agent and a widget session per visitor; see the file.
pub const FIXTURE_SQL: &str = include_str!("../../fixtures/organization.sql");

const TEMPLATE: &str = "campfire_template";

struct Cluster {
    port: u16,
    /// Set when this process started the cluster and must stop it.
    data_dir: Option<String>,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();
static NEXT_DATABASE: AtomicUsize = AtomicUsize::new(0);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().nth(2).unwrap().to_path_buf()
}

fn cluster_script(args: &[&str]) -> bool {
    Command::new(repo_root().join("scripts/cluster.sh")).args(args).status().is_ok_and(|s| s.success())
}

extern "C" fn stop_cluster() {
    if let Some(Cluster { data_dir: Some(dir), .. }) = CLUSTER.get() {
        cluster_script(&["stop", dir]);
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A loopback port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Runs `sql` as the `postgres` superuser in `database`; returns what it printed (unaligned,
/// tuples only), or psql's error.
pub fn psql(port: u16, database: &str, sql: &str) -> Result<String, String> {
    let output = Command::new("psql")
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres"])
        .args(["-p", &port.to_string(), "-d", database, "-c", sql])
        .output()
        .map_err(|e| format!("running psql: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_owned())
    }
}

/// The port of the prepared cluster, set up on first use.
pub fn cluster_port() -> u16 {
    CLUSTER
        .get_or_init(|| {
            if let Ok(port) = std::env::var("CAMPFIRE_TEST_PORT") {
                let port = port.parse().expect("CAMPFIRE_TEST_PORT is a port");
                refuse_stale_library(port);
                prepare(port).unwrap_or_else(|e| panic!("preparing the cluster on port {port}: {e}"));
                return Cluster { port, data_dir: None };
            }
            let (port, dir) = start_prepared();
            // SAFETY: registering a plain extern "C" fn, which only runs a command.
            unsafe { libc::atexit(stop_cluster) };
            Cluster { port, data_dir: Some(dir) }
        })
        .port
}

/// Starts a cluster on a free port and prepares it; returns its port and data directory.
fn start_prepared() -> (u16, String) {
    let port = free_port();
    let dir = format!("/tmp/campfire-tests-{}-{port}", std::process::id());
    assert!(cluster_script(&["start", &dir, &port.to_string()]), "starting a test cluster failed");
    if let Err(err) = prepare(port) {
        cluster_script(&["stop", &dir]);
        panic!("preparing a test cluster failed (is pg_campfire installed?): {err}");
    }
    (port, dir)
}

/// A cluster of one test's own, beside the shared one: a second database server (a shard) that
/// the test may stop and start again. Stopped and removed when dropped.
pub struct OwnCluster {
    pub port: u16,
    data_dir: String,
}

impl OwnCluster {
    pub fn start() -> OwnCluster {
        let (port, data_dir) = start_prepared();
        OwnCluster { port, data_dir }
    }

    /// Stops the server (fast shutdown: its connections are cut).
    pub fn stop(&self) {
        assert!(cluster_script(&["stop", &self.data_dir]), "stopping the cluster on port {} failed", self.port);
    }

    /// Starts it again, on the same port, with its databases.
    pub fn restart(&self) {
        let started = cluster_script(&["start", &self.data_dir, &self.port.to_string()]);
        assert!(started, "restarting the cluster on port {} failed", self.port);
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        cluster_script(&["stop", &self.data_dir]);
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// A reused cluster keeps the pg_campfire it preloaded at start: tests against it would test
/// the library installed before, silently. Refuses it when the installed file is newer.
fn refuse_stale_library(port: u16) {
    let query = "SELECT setting, extract(epoch FROM pg_postmaster_start_time()), current_setting('data_directory') \
                 FROM pg_config WHERE name = 'PKGLIBDIR'";
    let answer = psql(port, "postgres", query).unwrap_or_else(|e| panic!("asking the cluster on port {port}: {e}"));
    let [libdir, started, data_dir] = answer.splitn(3, '|').collect::<Vec<_>>()[..] else {
        panic!("unexpected answer from the cluster on port {port}: {answer}")
    };
    let started = SystemTime::UNIX_EPOCH + Duration::from_secs_f64(started.parse().expect("an epoch"));
    let library = Path::new(libdir).join("pg_campfire.so");
    let installed = std::fs::metadata(&library).and_then(|m| m.modified());
    if let Ok(installed) = installed
        && installed > started
    {
        panic!(
            "the cluster on port {port} (CAMPFIRE_TEST_PORT) started before {} was installed, and still runs the \
             library it preloaded then: restart it (scripts/cluster.sh stop {data_dir} && \
             scripts/cluster.sh start {data_dir} {port})",
            library.display()
        );
    }
}

/// The template database with the extension, and the relay login.
fn prepare(port: u16) -> Result<(), String> {
    psql(port, "postgres", &format!("DROP DATABASE IF EXISTS {TEMPLATE}"))?;
    psql(port, "postgres", &format!("CREATE DATABASE {TEMPLATE}"))?;
    psql(port, TEMPLATE, "CREATE EXTENSION pg_campfire")?;
    psql(
        port,
        "postgres",
        &format!(
            "DO $$ BEGIN
                 IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{RELAY_ROLE}') THEN
                     CREATE ROLE {RELAY_ROLE} LOGIN IN ROLE campfire_relay;
                 END IF;
             END $$"
        ),
    )?;
    Ok(())
}

/// A fresh database with pg_campfire (a copy of the template), dropped with this value.
pub struct Database {
    pub name: String,
    pub port: u16,
}

impl Database {
    /// On the shared cluster; `prefix` names the tests it belongs to.
    pub fn new(prefix: &str) -> Database {
        Database::on(cluster_port(), prefix)
    }

    /// On the cluster at `port` (an [`OwnCluster`]'s).
    pub fn on(port: u16, prefix: &str) -> Database {
        let name = format!("{prefix}_{}_{}", std::process::id(), NEXT_DATABASE.fetch_add(1, Ordering::SeqCst));
        psql(port, "postgres", &format!("CREATE DATABASE {name} TEMPLATE {TEMPLATE}"))
            .unwrap_or_else(|e| panic!("creating {name}: {e}"));
        Database { name, port }
    }

    /// The connection string of `user` to this database.
    pub fn url(&self, user: &str) -> String {
        format!("host=127.0.0.1 port={} user={user} dbname={}", self.port, self.name)
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = psql(self.port, "postgres", &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
    }
}
