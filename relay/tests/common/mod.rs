//! Harness for the relay's integration tests: a fresh database per test on the test kit's cluster
//! (`campfire-testkit`), relays in-process or as a child process, and WebSocket clients speaking
//! vsn 1.0.0 or 2.0.0. Every wait is bounded by [`WAIT`].
#![allow(dead_code)]

pub mod nats;
pub mod presence;
pub mod proxy;

use campfire_relay::{Config, Options, auth};
use campfire_testkit::http::{request, status_and_body};
use campfire_testkit::ws::{WAIT, ws_url};
use campfire_testkit::{Database, FIXTURE_SQL, RELAY_ROLE, free_port};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio_postgres::NoTls;
use uuid::Uuid;

pub const JWT_SECRET: &str = "relay-itest-secret";

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio::time::timeout(WAIT, tokio_postgres::connect(url, NoTls))
        .await
        .expect("connecting timed out")
        .unwrap_or_else(|e| panic!("connecting ({url}): {e}"));
    tokio::spawn(connection);
    client
}

/// A fresh database (copied from the template) with an organization, an agent and one
/// visitor's conversation: on the shared cluster, or on a test's own (another shard).
pub struct Fixture {
    pub database: Database,
    pub org: Uuid,
    pub agent: Uuid,
    pub conversation: Uuid,
    pub session: Uuid,
    pub secret: String,
}

impl Fixture {
    pub async fn new() -> Fixture {
        Fixture::create(Database::new).await
    }

    /// On the cluster at `port`.
    pub async fn on(port: u16) -> Fixture {
        Fixture::create(move |prefix| Database::on(port, prefix)).await
    }

    async fn create(database: impl FnOnce(&str) -> Database + Send + 'static) -> Fixture {
        let database = tokio::task::spawn_blocking(|| database("campfire_relay_itest")).await.unwrap();
        let db = connect(&database.url("postgres")).await;
        db.batch_execute(FIXTURE_SQL).await.unwrap();
        let row = db
            .query_one(
                "SELECT organization, agent, conversation_id, widget_session_id, session_secret \
                 FROM pg_temp.campfire_fixture('Acme', 'acme', 'Agent', ARRAY['visitor-a'])",
                &[],
            )
            .await
            .unwrap();
        Fixture {
            database,
            org: row.get(0),
            agent: row.get(1),
            conversation: row.get(2),
            session: row.get(3),
            secret: row.get(4),
        }
    }

    pub fn relay_url(&self) -> String {
        self.relay_url_via(self.cluster_addr())
    }

    /// The relay login's connection string through `addr` (a proxy in front of the cluster).
    pub fn relay_url_via(&self, addr: SocketAddr) -> String {
        format!("host={} port={} user={RELAY_ROLE} dbname={}", addr.ip(), addr.port(), self.database.name)
    }

    pub fn cluster_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.database.port))
    }

    /// A superuser connection to the fixture's database.
    pub async fn db(&self) -> tokio_postgres::Client {
        connect(&self.database.url("postgres")).await
    }

    /// A connection acting as `claims` in every transaction.
    pub async fn db_as(&self, claims: &Value) -> tokio_postgres::Client {
        let client = self.db().await;
        client.execute("SELECT set_config('request.jwt.claims', $1, false)", &[&claims.to_string()]).await.unwrap();
        client
    }

    pub async fn agent_db(&self) -> tokio_postgres::Client {
        self.db_as(&json!({"role": "authenticated", "sub": self.agent})).await
    }

    /// Sends a message as the agent through the SQL API; returns its seq.
    pub async fn send_as_agent(&self, db: &tokio_postgres::Client, content: &str) -> i64 {
        let row = tokio::time::timeout(
            WAIT,
            db.query_one("SELECT seq FROM campfire.send_message($1, $2)", &[&self.conversation, &content]),
        )
        .await
        .expect("send_message timed out")
        .unwrap();
        row.get(0)
    }

    pub fn topic(&self) -> String {
        format!("org:{}:conv:{}", self.org, self.conversation)
    }

    pub fn agent_token(&self) -> String {
        token(json!({ "role": "authenticated", "sub": self.agent, "exp": auth::now() + 3600 }))
    }

    /// The agent's membership disabled, as an admin would (the relays hear it as an access change).
    pub async fn disable_agent(&self) {
        self.db()
            .await
            .execute(
                "UPDATE campfire.organization_members SET status = 'disabled' WHERE organization_id = $1 AND user_id = $2",
                &[&self.org, &self.agent],
            )
            .await
            .unwrap();
    }

    /// A second active agent of the organization.
    pub async fn another_agent(&self) -> String {
        let user = Uuid::new_v4();
        let db = self.db_as(&json!({"role": "service_role"})).await;
        db.execute("SELECT campfire.add_member($1, $2, 'agent')", &[&self.org, &user]).await.unwrap();
        token(json!({ "role": "authenticated", "sub": user, "exp": auth::now() + 3600 }))
    }

    pub fn config(&self) -> Config {
        Config { listen: "127.0.0.1:0".parse().unwrap(), ..Config::new(self.relay_url(), JWT_SECRET) }
    }
}

pub fn token(claims: Value) -> String {
    auth::sign(JWT_SECRET.as_bytes(), &claims)
}

/// A relay serving in this process on a free loopback port.
pub struct Relay {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Relay {
    pub async fn start(fixture: &Fixture) -> Relay {
        Relay::start_with(fixture.config(), Options::default()).await
    }

    pub async fn start_with(config: Config, options: Options) -> Relay {
        let listener = tokio::net::TcpListener::bind(config.listen).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            campfire_relay::run_with(config, options, listener, async move {
                let _ = stopped.await;
            })
            .await
            .expect("relay runs");
        });
        let relay = Relay { addr, stop: Some(stop), task: Some(task) };
        wait_healthy(addr).await;
        relay
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(WAIT, task).await;
        }
    }

    pub fn url(&self, vsn: &str, apikey: &str) -> String {
        ws_url(self.addr, vsn, apikey)
    }

    pub async fn get(&self, path: &str) -> String {
        http(self.addr, "GET", path, &[], "").await.1
    }

    pub async fn metric(&self, line_prefix: &str) -> f64 {
        metric(self.addr, line_prefix).await
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The relay binary as a child process (for a relay that dies without saying goodbye).
pub struct RelayProcess {
    pub addr: SocketAddr,
    child: std::process::Child,
}

impl RelayProcess {
    pub async fn start(fixture: &Fixture, env: &[(&str, &str)]) -> RelayProcess {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_campfire-relay"))
            .env("DATABASE_URL", fixture.relay_url())
            .env("CAMPFIRE_LISTEN", addr.to_string())
            .env("CAMPFIRE_JWT_SECRET", JWT_SECRET)
            .env("RUST_LOG", "campfire_relay=warn")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .spawn()
            .expect("the relay binary starts");
        let process = RelayProcess { addr, child };
        wait_healthy(addr).await;
        process
    }

    /// SIGKILL: no goodbye, no leaves.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until `done` holds (checked every 20 ms), at most [`WAIT`]; returns how long it took.
pub async fn wait_until<F: std::future::Future<Output = bool>>(what: &str, mut done: impl FnMut() -> F) -> Duration {
    let start = std::time::Instant::now();
    while !done().await {
        assert!(start.elapsed() < WAIT, "{what}: not within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

pub async fn wait_healthy(addr: SocketAddr) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        // 200 only while LISTEN is up and the database answers.
        let answer = tokio::time::timeout(Duration::from_secs(2), request(addr, "GET", "/healthz", &[], "")).await;
        if let Ok(Ok(response)) = answer
            && status_and_body(&response).0 == 200
        {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "relay at {addr} did not become healthy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A minimal HTTP/1.1 request; returns (status, body).
pub async fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
    status_and_body(&request(addr, method, path, headers, body).await.expect("HTTP request"))
}

/// The status /healthz answers with; it must answer within a second whatever the database does.
pub async fn health_status(addr: SocketAddr) -> u16 {
    let response = tokio::time::timeout(Duration::from_secs(1), request(addr, "GET", "/healthz", &[], ""))
        .await
        .expect("/healthz answers within a second")
        .expect("HTTP request");
    status_and_body(&response).0
}

/// Whether the kernel still holds the TCP connection from `local` to `remote` (in any state but
/// TIME_WAIT, which holds no data), from /proc/net/tcp.
pub fn tcp_connection_held(local: SocketAddr, remote: SocketAddr) -> bool {
    let hex = |addr: SocketAddr| match addr {
        SocketAddr::V4(v4) => format!("{:08X}:{:04X}", u32::from_le_bytes(v4.ip().octets()), v4.port()),
        SocketAddr::V6(_) => unreachable!("test connections are IPv4"),
    };
    let (local, remote) = (hex(local), hex(remote));
    std::fs::read_to_string("/proc/net/tcp").unwrap().lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        const TIME_WAIT: &str = "06";
        fields[1] == local && fields[2] == remote && fields[3] != TIME_WAIT
    })
}

/// The value of the first /metrics line starting with `line_prefix` (0 when absent).
pub async fn metric(addr: SocketAddr, line_prefix: &str) -> f64 {
    let (_, body) = http(addr, "GET", "/metrics", &[], "").await;
    body.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// A kind-3 binary user-broadcast push, as realtime-js sends `channel.send` under vsn 2.0.0.
pub fn binary_broadcast(
    join_ref: &str,
    r#ref: &str,
    topic: &str,
    event: &str,
    encoding: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut frame = binary_broadcast_with_metadata(join_ref, r#ref, topic, event, b"", payload);
    frame[6] = encoding;
    frame
}

/// A kind-3 push of a JSON payload carrying `metadata` (JSON, or empty), as realtime-js 2.119
/// sends `channel.send({..., persist})`.
pub fn binary_broadcast_with_metadata(
    join_ref: &str,
    r#ref: &str,
    topic: &str,
    event: &str,
    metadata: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    let fields = [join_ref.as_bytes(), r#ref.as_bytes(), topic.as_bytes(), event.as_bytes(), metadata];
    let mut frame = vec![3u8];
    frame.extend(fields.iter().map(|field| field.len() as u8));
    frame.push(1);
    for part in fields.into_iter().chain([payload]) {
        frame.extend_from_slice(part);
    }
    frame
}
