//! campfire-bench: starts a throwaway PostgreSQL with pg_campfire and a relay process, drives
//! them over loopback from this process, prints a table and writes the figures as JSON.
//! Every loop is bounded in count and time. Run it with scripts/bench.sh.

use anyhow::{Context, Result, bail};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_postgres::{Client, NoTls};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

mod growth;
mod naive;
mod peers;
mod shards;

#[derive(Parser)]
#[command(about = "Benchmarks pg_campfire and campfire-relay on this machine")]
struct Args {
    /// The relay binary (release build).
    #[arg(long, default_value = "target/release/campfire-relay")]
    relay_bin: String,
    /// Where to write the figures.
    #[arg(long, default_value = "bench-results.json")]
    output: String,
    /// Repetitions of each scenario (medians are reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Seconds each throughput / trigger-cost run lasts.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Messages per latency run (sent at --rate per second).
    #[arg(long, default_value_t = 3000)]
    latency_messages: usize,
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Subscriber counts for the fan-out scenario.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    fanout: Vec<usize>,
    /// Idle connection counts for the connections scenario.
    #[arg(long, value_delimiter = ',', default_value = "10000,50000")]
    connections: Vec<usize>,
    /// Conversation counts the growth scenario grows its database to, in turn (1000000 takes
    /// about a quarter of an hour to load).
    #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
    growth: Vec<usize>,
    /// Calls timed per path and step in the growth scenario.
    #[arg(long, default_value_t = 200)]
    growth_reps: usize,
    /// Scenarios to run (latency, throughput, cost, baseline, fanout, connections, growth, peers,
    /// shards);
    /// all by default.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// A short run (a few hundred messages, small counts) that only checks the benchmark works.
    #[arg(long)]
    smoke: bool,
    /// Makes every WAL flush of the benchmark's cluster this many microseconds longer, as on a
    /// network disk (bench/wal_flush_delay.c, preloaded into the server). The local disk here
    /// flushes in ~0.25 ms; a network-attached volume can take a millisecond or more.
    #[arg(long, default_value_t = 0)]
    wal_flush_delay_us: u64,
    /// Internal: run as a client process of the connections scenario (a JSON `WorkerSpec`).
    #[arg(long, hide = true)]
    connect_worker: Option<String>,
    /// Internal: run as the naive baseline's relay, listening on this address (see naive.rs).
    #[arg(long, hide = true)]
    naive_relay: Option<String>,
}

const JWT_SECRET: &str = "bench-secret";
/// Connections made from 127.0.0.x source addresses so far (see join_from).
static SOURCES_USED: AtomicU64 = AtomicU64::new(0);
const WAIT: Duration = Duration::from_secs(60);
/// The login every write path of the bench writes as: an application's, a member of
/// campfire_service and no superuser, so row-level security applies as in a deployment (a
/// superuser bypasses it, and hid what it costs).
const WRITER: &str = "campfire_app_bench";

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

struct Cluster {
    dir: String,
    port: u16,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("scripts/cluster.sh").args(["stop", &self.dir]).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Relay {
    child: Child,
    port: u16,
}

impl Drop for Relay {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Raises this process's open-file limit (children inherit it): to 200,000 where allowed (root
/// may raise the hard limit too), else to the hard limit. Returns the limit in force.
fn raise_fd_limit() -> u64 {
    unsafe {
        let wanted = libc::rlimit { rlim_cur: 200_000, rlim_max: 200_000 };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) != 0 {
            let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur
    }
}

async fn connect(port: u16, user: &str) -> Result<Client> {
    let (client, connection) =
        tokio_postgres::connect(&format!("host=127.0.0.1 port={port} user={user} dbname=campfire"), NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

fn start_cluster(wal_flush_delay_us: u64) -> Result<Cluster> {
    let port = free_port();
    let dir = format!("/tmp/campfire-bench-{port}");
    let status = Command::new("scripts/cluster.sh")
        .args(["start", &dir, &port.to_string()])
        .env("CAMPFIRE_WAL_FLUSH_DELAY_US", wal_flush_delay_us.to_string())
        .status()?;
    if !status.success() {
        bail!("starting PostgreSQL failed");
    }
    let cluster = Cluster { dir, port };
    let psql = |sql: &str, db: &str| {
        Command::new("scripts/cluster.sh")
            .args(["psql", &cluster.dir, &port.to_string(), "-q", "-d", db, "-c", sql])
            .status()
    };
    psql("CREATE DATABASE campfire", "postgres")?;
    // Times WAL writes and flushes (WalFlushes): two clock reads each, on every path alike.
    psql("ALTER SYSTEM SET track_wal_io_timing = on", "postgres")?;
    psql("SELECT pg_reload_conf()", "postgres")?;
    psql("CREATE EXTENSION pg_campfire", "campfire")?;
    psql(
        &format!(
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'campfire_relay_bench') THEN \
             CREATE ROLE campfire_relay_bench LOGIN IN ROLE campfire_relay; END IF; \
             IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{WRITER}') THEN \
             CREATE ROLE {WRITER} LOGIN IN ROLE campfire_service; END IF; END $$"
        ),
        "campfire",
    )?;
    // Identical tables (columns, constraints, indexes): the plain one has no trigger (the cost
    // baseline), the naive one NOTIFYs each row to the naive relay (the delivery baseline).
    psql(
        &format!(
            "CREATE TABLE plain_messages (LIKE campfire.messages INCLUDING ALL); CREATE SEQUENCE plain_messages_seq; \
         CREATE TABLE naive_messages (LIKE campfire.messages INCLUDING ALL); CREATE SEQUENCE naive_messages_seq; \
         CREATE FUNCTION naive_notify() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN PERFORM pg_notify('naive_messages', row_to_json(NEW)::text); RETURN NULL; END $$; \
         CREATE TRIGGER naive_notify AFTER INSERT ON naive_messages FOR EACH ROW EXECUTE FUNCTION naive_notify(); \
         GRANT ALL ON plain_messages, plain_messages_seq, naive_messages, naive_messages_seq TO {WRITER}"
        ),
        "campfire",
    )?;
    Ok(cluster)
}

async fn start_relay(args: &Args, cluster: &Cluster) -> Result<Relay> {
    start_relay_on(args, cluster, free_port(), false).await
}

/// A relay on `port`; with `reuse_port`, one of several relay processes sharing it.
async fn start_relay_on(args: &Args, cluster: &Cluster, port: u16, reuse_port: bool) -> Result<Relay> {
    let mut relay = relay_command(args, cluster, port);
    relay.env("CAMPFIRE_REUSE_PORT", reuse_port.to_string());
    start_listening(relay, port).await
}

/// The relay process the scenarios run, on `port`, before it starts.
fn relay_command(args: &Args, cluster: &Cluster, port: u16) -> Command {
    let mut relay = Command::new(&args.relay_bin);
    relay
        .env("DATABASE_URL", format!("host=127.0.0.1 port={} user=campfire_relay_bench dbname=campfire", cluster.port))
        .env("CAMPFIRE_LISTEN", format!("127.0.0.1:{port}"))
        .env("CAMPFIRE_JWT_SECRET", JWT_SECRET)
        .env("CAMPFIRE_SEND_QUEUE", "8192")
        // The load generator is one address and one agent holding thousands of connections:
        // the per-address and per-credential caps are for clients, not for this.
        .env("CAMPFIRE_MAX_CONNECTIONS_PER_IP", "1000000")
        .env("CAMPFIRE_MAX_CONNECTIONS_PER_CREDENTIAL", "1000000")
        .env("RUST_LOG", "campfire_relay=warn");
    relay
}

/// The naive baseline's relay: this program again, as a process of its own (see naive.rs).
async fn start_naive_relay(cluster: &Cluster) -> Result<Relay> {
    let port = free_port();
    let mut relay = Command::new(std::env::current_exe()?);
    relay
        .args(["--naive-relay", &format!("127.0.0.1:{port}")])
        .env("DATABASE_URL", format!("host=127.0.0.1 port={} user=postgres dbname=campfire", cluster.port));
    start_listening(relay, port).await
}

/// Starts a relay process and waits until it accepts connections on `port`.
async fn start_listening(mut command: Command, port: u16) -> Result<Relay> {
    let child = command.spawn().with_context(|| format!("starting {:?}", command.get_program()))?;
    let relay = Relay { child, port };
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Ok(relay);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the relay did not start")
}

struct Org {
    id: uuid::Uuid,
    agent: uuid::Uuid,
    conversations: Vec<uuid::Uuid>,
}

/// The tests' fixture: an organization, an active agent and a widget session per visitor.
const FIXTURE_SQL: &str = include_str!("../../tests/fixtures/organization.sql");

async fn create_org(db: &Client, slug: &str, conversations: usize) -> Result<Org> {
    db.batch_execute(FIXTURE_SQL).await?;
    let visitors: Vec<String> = (0..conversations).map(|i| format!("{slug}-{i}")).collect();
    let rows = db
        .query(
            "SELECT organization, agent, conversation_id FROM pg_temp.campfire_fixture($1, $1, 'bench agent', $2)",
            &[&slug, &visitors],
        )
        .await?;
    let first = rows.first().context("the fixture returns a row")?;
    Ok(Org {
        id: first.get(0),
        agent: first.get(1),
        conversations: rows.iter().filter_map(|row| row.get::<_, Option<uuid::Uuid>>(2)).collect(),
    })
}

fn agent_token(agent: uuid::Uuid) -> String {
    campfire_relay::auth::sign(
        JWT_SECRET.as_bytes(),
        &json!({"role": "authenticated", "sub": agent, "exp": campfire_relay::auth::now() + 3600}),
    )
}

async fn join(relay: &Relay, vsn: &str, token: &str, topic: &str) -> Result<Ws> {
    join_from(relay.port, vsn, token, topic, [127, 0, 0, 1]).await
}

/// Joins from a given loopback source address: one address has only ~28,000 ephemeral ports,
/// so tens of thousands of connections spread over 127.0.0.x.
async fn join_from(port: u16, vsn: &str, token: &str, topic: &str, source: [u8; 4]) -> Result<Ws> {
    let mut ws = open_socket(port, &format!("/realtime/v1/websocket?apikey={token}&vsn={vsn}"), source).await?;
    let frame = if vsn == "2.0.0" {
        json!(["1", "1", format!("realtime:{topic}"), "phx_join", {"config": {}}]).to_string()
    } else {
        json!({"join_ref": "1", "ref": "1", "topic": format!("realtime:{topic}"), "event": "phx_join", "payload": {"config": {}}}).to_string()
    };
    ws.send(Message::text(frame)).await?;
    // The reply, then presence_state.
    for _ in 0..2 {
        tokio::time::timeout(WAIT, ws.next()).await?.context("closed during join")??;
    }
    Ok(ws)
}

/// A WebSocket to `path` on a loopback port, as every client of the bench opens it.
async fn open_socket(port: u16, path: &str, source: [u8; 4]) -> Result<Ws> {
    let url = format!("ws://127.0.0.1:{port}{path}");
    let socket = tokio::net::TcpSocket::new_v4()?;
    // Ports of earlier runs may linger in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind((std::net::Ipv4Addr::from(source), 0).into())?;
    let stream = socket.connect(([127, 0, 0, 1], port).into()).await?;
    // Small frames must not wait for delayed ACKs; small buffers keep 50,000 clients affordable.
    stream.set_nodelay(true)?;
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(4096);
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, MaybeTlsStream::Plain(stream), Some(config)).await?;
    Ok(ws)
}

/// A loopback source address for the next of many connections: 10,000 per address, never
/// reusing one within the process (closed connections linger in TIME_WAIT).
fn next_source() -> [u8; 4] {
    [127, 0, 0, 2 + (SOURCES_USED.fetch_add(1, Ordering::Relaxed) / 10_000) as u8]
}

/// The payload of a broadcast frame in either serializer.
fn broadcast_payload(text: &str) -> Option<Value> {
    let v: Value = serde_json::from_str(text).ok()?;
    let (event, payload) =
        if v.is_array() { (v[3].clone(), v[4].clone()) } else { (v["event"].clone(), v["payload"].clone()) };
    (event == "broadcast").then_some(payload)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    percentile(&values, 0.5)
}

/// The median over runs of the figure at a JSON pointer, e.g. "/from_commit/p99_ms".
fn median_at(runs: &[Value], pointer: &str) -> f64 {
    median(runs.iter().map(|r| r.pointer(pointer).and_then(Value::as_f64).unwrap_or(f64::NAN)).collect())
}

/// p50, p95, p99 and max of latencies in milliseconds.
fn percentiles(mut ms: Vec<f64>) -> Value {
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    json!({
        "p50_ms": percentile(&ms, 0.5), "p95_ms": percentile(&ms, 0.95),
        "p99_ms": percentile(&ms, 0.99), "max_ms": ms.last().copied().unwrap_or(f64::NAN),
    })
}

/// What a write scenario writes, and how its subscriber recognises the deliveries.
#[derive(Clone, Copy)]
enum Path {
    /// `campfire.send_message`, delivered by the relay as `message:created` on the conversation list.
    Campfire,
    /// An insert into `naive_messages`, whose trigger NOTIFYs the row to the naive relay.
    Naive,
    /// An insert into `plain_messages`: no trigger, nothing delivered.
    Plain,
    /// `FLOOR_SEND`: the rows pg_campfire's contract writes for one message (the message with its
    /// conversation's next seq, the conversation's summary, its mirror row, two log rows with
    /// JSON payloads), written by one prepared statement into copies of the tables, with no
    /// trigger, no validation, no delivery: what any implementation of the contract writes at
    /// least, run through one plan, so that only the executor's own work is left to save.
    Floor,
}

impl Path {
    fn name(self) -> &'static str {
        match self {
            Path::Campfire => "pg_campfire",
            Path::Naive => "naive",
            Path::Plain => "plain_insert",
            Path::Floor => "contract_floor",
        }
    }

    /// One message into conversation $1 with client message id $2 (or NULL), run as the service.
    fn sql(self) -> String {
        let table = match self {
            Path::Campfire => return "SELECT campfire.send_message($1, 'bench message', 'agent', $2)".into(),
            Path::Floor => return FLOOR_SEND.into(),
            Path::Naive => "naive_messages",
            Path::Plain => "plain_messages",
        };
        format!(
            "INSERT INTO {table} (conversation_id, organization_id, seq, content, sender_type, client_message_id) \
             SELECT $1, organization_id, nextval('{table}_seq'), 'bench message', 'agent', $2 \
             FROM campfire.conversations WHERE id = $1"
        )
    }

    /// A client of `relay` that receives every message this path writes.
    async fn subscribe(self, relay: &Relay, org: &Org, vsn: &str) -> Result<Ws> {
        match self {
            Path::Campfire => join(relay, vsn, &agent_token(org.agent), &format!("org:{}:conversations", org.id)).await,
            Path::Naive => open_socket(relay.port, "/", [127, 0, 0, 1]).await,
            Path::Plain | Path::Floor => bail!("{} writes are not delivered", self.name()),
        }
    }

    /// The message row a frame delivers (with its `client_message_id`), if it delivers one.
    fn delivered(self, frame: &str) -> Option<Value> {
        match self {
            Path::Campfire => broadcast_payload(frame)
                .filter(|p| p["event"] == "message:created")
                .map(|mut p| p["payload"]["message"].take()),
            Path::Naive => serde_json::from_str(frame).ok(),
            Path::Plain | Path::Floor => None,
        }
    }
}

const LATENCY_WRITERS: usize = 4;

/// Scenario 1: latency at `args.rate` messages a second over many conversations, from insert
/// start (just before the writer sends the statement) and from the writer's commit
/// acknowledgement to the frame. A path without a relay (the plain insert, the floor) delivers
/// nothing: it gives insert start to commit acknowledged instead, what any delivery adds to.
async fn latency(
    args: &Args,
    cluster: &Cluster,
    path: Path,
    relay: Option<&Relay>,
    vsn: &str,
    org: &Org,
) -> Result<Value> {
    let messages = args.latency_messages;
    // Client message ids unique to this run: a repeated id would be an idempotent no-op.
    let run = uuid::Uuid::new_v4().simple().to_string();
    let mut ws = match relay {
        Some(relay) => Some(path.subscribe(relay, org, vsn).await?),
        None => None,
    };
    // Each message's time on the schedule, insert start and commit acknowledgement.
    let sent: Arc<std::sync::Mutex<HashMap<String, Sent>>> = Arc::default();
    let writers = LATENCY_WRITERS;
    let interval = Duration::from_nanos(1_000_000_000 * writers as u64 / args.rate);
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (db, sent, conversations, run) =
            (connect(cluster.port, WRITER).await?, sent.clone(), org.conversations.clone(), run.clone());
        db.batch_execute("SELECT set_config('request.jwt.claims', '{\"role\":\"service_role\"}', false)").await?;
        let statement = db.prepare(&path.sql()).await?;
        tasks.push(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            for i in (w..messages).step_by(writers) {
                // A writer that fell behind gets its missed ticks at once, with their own times.
                let scheduled = ticker.tick().await.into_std();
                let id = format!("{run}-{i}");
                let conversation = conversations[i % conversations.len()];
                let started = Instant::now();
                db.execute(&statement, &[&conversation, &id]).await?;
                sent.lock().unwrap().insert(id, Sent { scheduled, started, committed: Instant::now() });
            }
            anyhow::Ok(())
        }));
    }
    let mut arrived: HashMap<String, Instant> = HashMap::new();
    let deadline = Instant::now() + WAIT + Duration::from_secs(messages as u64 / args.rate);
    while let Some(ws) = ws.as_mut()
        && arrived.len() < messages
        && Instant::now() < deadline
    {
        let Ok(Some(Ok(Message::Text(text)))) = tokio::time::timeout(WAIT, ws.next()).await else { break };
        if let Some(message) = path.delivered(&text)
            && let Some(id) = message["client_message_id"].as_str()
        {
            arrived.insert(id.to_owned(), Instant::now());
        }
    }
    for task in tasks {
        task.await??;
    }
    let sent = sent.lock().unwrap();
    // The rate the path kept up. A writer that falls behind sends its late messages back to back,
    // each timed from its own insert start: a path slower than --rate shows in this rate and in
    // the times from the schedule (what a user who pressed send at that moment waits), not in
    // the times from insert start.
    let first_start = sent.values().map(|s| s.started).min();
    let last_commit = sent.values().map(|s| s.committed).max();
    let achieved = match (first_start, last_commit) {
        (Some(first), Some(last)) if last > first => sent.len() as f64 / (last - first).as_secs_f64(),
        _ => f64::NAN,
    };
    if ws.is_none() {
        let ms = |from: fn(&Sent) -> Instant| {
            percentiles(sent.values().map(|s| (s.committed - from(s)).as_secs_f64() * 1000.0).collect())
        };
        return Ok(json!({
            "path": path.name(), "messages": messages, "committed": sent.len(), "rate": args.rate,
            "achieved_per_second": achieved, "to_commit": ms(|s| s.started), "scheduled_to_commit": ms(|s| s.scheduled),
        }));
    }
    let (mut from_commit, mut from_start, mut from_schedule) =
        (Vec::with_capacity(messages), Vec::with_capacity(messages), Vec::with_capacity(messages));
    for (id, at) in &arrived {
        if let Some(s) = sent.get(id) {
            // A frame can beat the writer's own commit acknowledgement: that counts as 0.
            from_commit.push(at.saturating_duration_since(s.committed).as_secs_f64() * 1000.0);
            from_start.push(at.duration_since(s.started).as_secs_f64() * 1000.0);
            from_schedule.push(at.duration_since(s.scheduled).as_secs_f64() * 1000.0);
        }
    }
    Ok(json!({
        "path": path.name(), "messages": messages, "received": arrived.len(), "rate": args.rate,
        "achieved_per_second": achieved,
        "from_commit": percentiles(from_commit), "from_insert_start": percentiles(from_start),
        "from_schedule": percentiles(from_schedule),
    }))
}

/// One message of a latency run: when the schedule had it sent, when its insert started, when its
/// commit was acknowledged.
struct Sent {
    scheduled: Instant,
    started: Instant,
    committed: Instant,
}

/// Brings the database to the same state before each write run: earlier runs leave dead row
/// versions (every message rewrites a conversation's mirror row, never as a HOT update) and
/// dirty pages that would otherwise be paid for by whichever run comes next.
async fn settle(cluster: &Cluster) -> Result<()> {
    let db = connect(cluster.port, "postgres").await?;
    db.batch_execute("VACUUM").await?;
    db.batch_execute("CHECKPOINT").await?;
    Ok(())
}

/// The cluster's WAL so far (`pg_stat_wal`, with `track_wal_io_timing` on): its flushes, how many
/// and their total milliseconds, and the bytes written. A design that flushes once per commit
/// under a lock (NOTIFY's) pays one flush a message; commits that group share them. A flush's
/// time also counts the flushing process's wait for a CPU once the disk is done, which on busy
/// cores can be most of it.
struct WalFlushes {
    count: i64,
    ms: f64,
    bytes: f64,
}

impl WalFlushes {
    /// Read once the writers' backends have exited: a backend reports its WAL statistics when it
    /// leaves, or at most once a second while it runs.
    async fn now(db: &Client) -> Result<WalFlushes> {
        for _ in 0..50 {
            let row = db.query_one("SELECT count(*) FROM pg_stat_activity WHERE usename = $1", &[&WRITER]).await?;
            if row.get::<_, i64>(0) == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let row = db.query_one("SELECT wal_sync, wal_sync_time, wal_bytes::float8 FROM pg_stat_wal", &[]).await?;
        Ok(WalFlushes { count: row.get(0), ms: row.get(1), bytes: row.get(2) })
    }

    fn per_message(&self, later: &WalFlushes, messages: u64) -> Value {
        let count = later.count - self.count;
        json!({
            "per_message": count as f64 / messages.max(1) as f64,
            "mean_ms": if count > 0 { (later.ms - self.ms) / count as f64 } else { f64::NAN },
            "kb_per_message": (later.bytes - self.bytes) / 1024.0 / messages.max(1) as f64,
        })
    }
}

/// Scenarios 2 and 5 and the baseline: the most messages `writers` commit in `seconds`, `per_tx`
/// per transaction, along `path`; with a relay, each is also counted as delivered to a subscriber.
async fn write_rate(
    cluster: &Cluster,
    path: Path,
    relay: Option<&Relay>,
    org: &Org,
    writers: usize,
    per_tx: usize,
    seconds: u64,
) -> Result<Value> {
    settle(cluster).await?;
    let admin = connect(cluster.port, "postgres").await?;
    let flushes_before = WalFlushes::now(&admin).await?;
    let mut listener = match relay {
        Some(relay) => Some(path.subscribe(relay, org, "2.0.0").await?),
        None => None,
    };
    let mut sessions = Vec::new();
    for _ in 0..writers {
        let db = connect(cluster.port, WRITER).await?;
        db.batch_execute("SELECT set_config('request.jwt.claims', '{\"role\":\"service_role\"}', false)").await?;
        let statement = db.prepare(&path.sql()).await?;
        sessions.push((db, statement));
    }
    let committed = Arc::new(AtomicU64::new(0));
    let cpu_before = CpuUse::now(cluster, relay);
    let stop = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for (w, (db, statement)) in sessions.into_iter().enumerate() {
        let (committed, conversations) = (committed.clone(), org.conversations.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            let no_id: Option<&str> = None;
            while Instant::now() < stop {
                let conversation = conversations[i % conversations.len()];
                i += writers;
                if per_tx == 1 {
                    db.execute(&statement, &[&conversation, &no_id]).await?;
                } else {
                    db.batch_execute("BEGIN").await?;
                    for _ in 0..per_tx {
                        db.execute(&statement, &[&conversation, &no_id]).await?;
                    }
                    db.batch_execute("COMMIT").await?;
                }
                committed.fetch_add(per_tx as u64, Ordering::Relaxed);
            }
            // Kept open until the CPU is read: a backend that exits is counted late.
            anyhow::Ok(db)
        }));
    }
    let started = Instant::now();
    let mut delivered = 0u64;
    let mut last_delivery = started;
    let wanted = |committed: &AtomicU64| committed.load(Ordering::Relaxed);
    if let Some(ws) = &mut listener {
        loop {
            let done_writing = Instant::now() >= stop;
            if done_writing && delivered >= wanted(&committed) && tasks.iter().all(|t| t.is_finished()) {
                break;
            }
            match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => {
                    if path.delivered(&text).is_some() {
                        delivered += 1;
                        last_delivery = Instant::now();
                    }
                }
                _ => break,
            }
        }
    }
    let mut writers_done = Vec::new();
    for task in tasks {
        writers_done.push(task.await??);
    }
    let cpu = cpu_before.per_message(&CpuUse::now(cluster, relay), wanted(&committed));
    drop(writers_done);
    let committed = wanted(&committed);
    let flushes = flushes_before.per_message(&WalFlushes::now(&admin).await?, committed);
    let elapsed = if listener.is_some() { last_delivery.duration_since(started) } else { started.elapsed() };
    Ok(json!({
        "path": path.name(), "writers": writers, "per_transaction": per_tx, "committed": committed,
        "delivered": if listener.is_some() { json!(delivered) } else { Value::Null },
        "lost": if listener.is_some() { json!(committed.saturating_sub(delivered)) } else { Value::Null },
        "per_second": committed as f64 / elapsed.as_secs_f64(),
        "cpu_us_per_message": cpu,
        "wal_flushes": flushes,
    }))
}

/// `Path::Floor`'s tables: copies of pg_campfire's, the conversations with their rows, whose
/// fillfactor leaves room for `FLOOR_SEND`'s summary update to stay HOT, as pg_campfire's does.
const CONTRACT_FLOOR_SQL: &str = "
    DROP TABLE IF EXISTS floor_messages, floor_conversations, floor_mirror, floor_events;
    DROP SEQUENCE IF EXISTS floor_events_seq;
    CREATE TABLE floor_conversations (LIKE campfire.conversations INCLUDING ALL) WITH (fillfactor = 70);
    INSERT INTO floor_conversations SELECT * FROM campfire.conversations;
    CREATE TABLE floor_mirror (LIKE campfire.realtime_conversations INCLUDING ALL);
    INSERT INTO floor_mirror SELECT * FROM campfire.realtime_conversations;
    CREATE TABLE floor_messages (LIKE campfire.messages INCLUDING ALL,
        FOREIGN KEY (organization_id, conversation_id) REFERENCES floor_conversations (organization_id, id));
    CREATE TABLE floor_events (LIKE campfire.events INCLUDING ALL);
    CREATE SEQUENCE floor_events_seq;";

/// `Path::Floor`'s one statement, with parameters $1 conversation and $2 client message id: the
/// conversation's seq and summary, then the message numbered by it, the mirror row, and the two
/// log rows, the list's carrying the conversation as pg_campfire's does.
const FLOOR_SEND: &str = "
    WITH c AS (
        UPDATE floor_conversations SET last_message_seq = last_message_seq + 1, last_message_at = now(),
               last_message_preview = left('bench message', 140), last_message_sender_type = 'agent',
               updated_at = now()
         WHERE id = $1::uuid RETURNING *),
    m AS (
        INSERT INTO floor_messages (conversation_id, organization_id, seq, content, sender_type, client_message_id)
        SELECT c.id, c.organization_id, c.last_message_seq, 'bench message', 'agent', $2::text FROM c
        RETURNING *),
    mirror AS (
        UPDATE floor_mirror f SET last_message_seq = c.last_message_seq, last_message_at = c.last_message_at,
               last_message_preview = c.last_message_preview,
               last_message_sender_type = c.last_message_sender_type, updated_at = c.updated_at
          FROM c WHERE f.id = c.id)
    INSERT INTO floor_events (id, organization_id, conversation_id, topic, event, payload, conversation_update)
    SELECT nextval('floor_events_seq'), m.organization_id, m.conversation_id,
           CASE WHEN list THEN 'org:' || m.organization_id || ':conversations'
                ELSE 'org:' || m.organization_id || ':conv:' || m.conversation_id END,
           'message:created', json_build_object('message', row_to_json(m)),
           CASE WHEN list THEN json_build_object('conversation', row_to_json(c)) END
      FROM m, c, (VALUES (false), (true)) AS rows (list)";

/// Scenario 7, the side-by-side baseline of issue 15: what a user writes instead of pg_campfire
/// (a copy of the messages table whose trigger NOTIFYs each row, and the minimal LISTEN →
/// WebSocket relay of naive.rs), the plain insert with no delivery, and the contract's floor
/// (`Path::Floor`), driven in the same run by the same load generator and the same client. Each run measures every path in turn; the
/// ratios, of medians, are those the targets are set in.
async fn baseline(args: &Args, cluster: &Cluster, relay: &Relay, naive: &Relay, org: &Org) -> Result<Value> {
    let admin = connect(cluster.port, "postgres").await?;
    admin.batch_execute(CONTRACT_FLOOR_SQL).await?;
    admin
        .batch_execute(&format!(
            "GRANT ALL ON floor_messages, floor_conversations, floor_mirror, floor_events, floor_events_seq TO {WRITER}"
        ))
        .await?;
    let writers = 8;
    let mut write: HashMap<&str, Vec<Value>> = HashMap::new();
    let mut delay: HashMap<&str, Vec<Value>> = HashMap::new();
    for _ in 0..args.runs {
        for (path, relay) in
            [(Path::Campfire, Some(relay)), (Path::Naive, Some(naive)), (Path::Plain, None), (Path::Floor, None)]
        {
            let run = write_rate(cluster, path, relay, org, writers, 1, args.seconds).await?;
            write.entry(path.name()).or_default().push(run);
        }
        for (path, relay) in
            [(Path::Campfire, Some(relay)), (Path::Naive, Some(naive)), (Path::Plain, None), (Path::Floor, None)]
        {
            delay.entry(path.name()).or_default().push(latency(args, cluster, path, relay, "2.0.0", org).await?);
        }
    }

    let rate = |path: Path| median_at(&write[path.name()], "/per_second");
    let lost = |path: Path| write[path.name()].iter().filter_map(|r| r["lost"].as_u64()).sum::<u64>();
    let (campfire, naive, plain, floor) =
        (rate(Path::Campfire), rate(Path::Naive), rate(Path::Plain), rate(Path::Floor));
    println!(
        "baseline write rate, {writers} writers x 1/tx: pg_campfire {campfire:.0} msg/s delivered ({} lost), naive {naive:.0} msg/s delivered ({} lost), plain insert {plain:.0}/s",
        lost(Path::Campfire),
        lost(Path::Naive)
    );
    println!(
        "baseline write rate ratios: pg_campfire / naive {:.2}x (target >= 1.8x), pg_campfire / plain insert {:.2}x (target >= 0.5x)",
        campfire / naive,
        campfire / plain
    );
    println!(
        "baseline contract floor (the same rows written by hand, no trigger or delivery): {floor:.0}/s = {:.2}x naive, {:.2}x plain insert; pg_campfire / floor {:.2}x",
        floor / naive,
        floor / plain,
        campfire / floor
    );

    // Medians over runs of each path's CPU per message, by where it is spent.
    let cpu = |path: Path| -> std::collections::BTreeMap<&str, f64> {
        ["postgres", "notifier", "relay", "load_generator", "total"]
            .into_iter()
            .map(|k| (k, median_at(&write[path.name()], &format!("/cpu_us_per_message/{k}"))))
            .collect()
    };
    let paths = [Path::Campfire, Path::Naive, Path::Plain, Path::Floor];
    let flushes = |path: Path, k: &str| median_at(&write[path.name()], &format!("/wal_flushes/{k}"));
    for path in paths {
        let us = cpu(path);
        println!(
            "baseline CPU per message, {}: PostgreSQL {:.0} us (its notifier {:.0}), relay {:.0}, load generator {:.0}; all {:.0} us; WAL {:.2} kB and {:.2} flushes per message, {:.2} ms each",
            path.name(),
            us["postgres"],
            us["notifier"],
            us["relay"],
            us["load_generator"],
            us["total"],
            flushes(path, "kb_per_message"),
            flushes(path, "per_message"),
            flushes(path, "mean_ms"),
        );
    }

    // Medians over runs of each percentile, from insert start or from commit.
    let figures = |path: Path, from: &str| -> std::collections::BTreeMap<&str, f64> {
        ["p50_ms", "p95_ms", "p99_ms", "max_ms"]
            .into_iter()
            .map(|k| (k, median_at(&delay[path.name()], &format!("/{from}/{k}"))))
            .collect()
    };
    let (campfire_ms, naive_ms) =
        (figures(Path::Campfire, "from_insert_start"), figures(Path::Naive, "from_insert_start"));
    let achieved = |path: Path| median_at(&delay[path.name()], "/achieved_per_second");
    let print = |path: Path, span: &str, ms: &std::collections::BTreeMap<&str, f64>| {
        println!(
            "baseline latency {} @ {}/s (kept up {:.0}/s), {span}: p50 {:.2} ms  p95 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
            path.name(),
            args.rate,
            achieved(path),
            ms["p50_ms"],
            ms["p95_ms"],
            ms["p99_ms"],
            ms["max_ms"]
        )
    };
    print(Path::Campfire, "insert start -> frame", &campfire_ms);
    print(Path::Naive, "insert start -> frame", &naive_ms);
    let (plain_ms, floor_ms) = (figures(Path::Plain, "to_commit"), figures(Path::Floor, "to_commit"));
    print(Path::Plain, "insert start -> commit (nothing delivered)", &plain_ms);
    print(Path::Floor, "insert start -> commit (nothing delivered)", &floor_ms);
    let p99_ratio = campfire_ms["p99_ms"] / naive_ms["p99_ms"];
    println!(
        "baseline latency ratios: p99 pg_campfire / naive {p99_ratio:.2}x (target <= 0.33x), pg_campfire p50 {:.2} ms (target <= 1 ms; the floor's commit alone: p50 {:.2} ms)",
        campfire_ms["p50_ms"], floor_ms["p50_ms"]
    );
    // From the schedule: what a user who pressed send at that moment waits, backlog included.
    let (campfire_scheduled, naive_scheduled) =
        (figures(Path::Campfire, "from_schedule"), figures(Path::Naive, "from_schedule"));
    for (path, ms) in [(Path::Campfire, &campfire_scheduled), (Path::Naive, &naive_scheduled)] {
        println!(
            "baseline latency {} @ {}/s, scheduled send -> frame: p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
            path.name(),
            args.rate,
            ms["p50_ms"],
            ms["p99_ms"],
            ms["max_ms"]
        );
    }

    Ok(json!({
        "write_rate": {
            "writers": writers, "per_transaction": 1,
            "median_per_second": { "pg_campfire": campfire, "naive": naive, "plain_insert": plain, "contract_floor": floor },
            "lost": { "pg_campfire": lost(Path::Campfire), "naive": lost(Path::Naive) },
            "campfire_to_naive": campfire / naive, "campfire_to_plain": campfire / plain,
            "floor_to_naive": floor / naive, "floor_to_plain": floor / plain, "campfire_to_floor": campfire / floor,
            "cpu_us_per_message": paths.map(|path| (path.name(), cpu(path))).into_iter().collect::<HashMap<_, _>>(),
            "runs": write,
        },
        "latency": {
            "rate": args.rate, "writers": LATENCY_WRITERS, "conversations": org.conversations.len(),
            "from_insert_start": { "pg_campfire": campfire_ms, "naive": naive_ms },
            "from_schedule": { "pg_campfire": campfire_scheduled, "naive": naive_scheduled },
            "from_commit": { "pg_campfire": figures(Path::Campfire, "from_commit"), "naive": figures(Path::Naive, "from_commit") },
            "to_commit": { "plain_insert": plain_ms, "contract_floor": floor_ms },
            "p99_campfire_to_naive": p99_ratio,
            "runs": delay,
        },
    }))
}

/// Scenario 3, one topic and many subscribers. First `probes` messages one at a time: how long after its
/// commit the last subscriber has each frame. Then `burst` messages committed back to back
/// (pipelined on one connection): deliveries per second while the relay is saturated.
async fn fanout(cluster: &Cluster, relay: &Relay, org: &Org, subscribers: usize, burst: usize) -> Result<Value> {
    let probes = 5;
    let topic = format!("org:{}:conversations", org.id);
    let token = agent_token(org.agent);
    let mut sockets = Vec::with_capacity(subscribers);
    for chunk in 0..subscribers.div_ceil(200) {
        let count = 200.min(subscribers - chunk * 200);
        let joins = (0..count).map(|_| join_from(relay.port, "2.0.0", &token, &topic, next_source()));
        for ws in futures_util::future::join_all(joins).await {
            sockets.push(ws?);
        }
    }
    // Subscribers count frames; whoever reaches the awaited total wakes the driver.
    let received = Arc::new(AtomicU64::new(0));
    let awaited = Arc::new(AtomicU64::new(u64::MAX));
    let arrived = Arc::new(tokio::sync::Notify::new());
    for mut ws in sockets {
        let (received, awaited, arrived) = (received.clone(), awaited.clone(), arrived.clone());
        tokio::spawn(async move {
            for _ in 0..probes + burst {
                loop {
                    match tokio::time::timeout(WAIT, ws.next()).await {
                        Ok(Some(Ok(Message::Text(text)))) if text.contains("message:created") => break,
                        Ok(Some(Ok(_))) => {}
                        _ => return,
                    }
                }
                if received.fetch_add(1, Ordering::Relaxed) + 1 >= awaited.load(Ordering::Relaxed) {
                    arrived.notify_one();
                }
            }
        });
    }
    let wait_for = |total: u64| {
        let (received, awaited, arrived) = (received.clone(), awaited.clone(), arrived.clone());
        async move {
            awaited.store(total, Ordering::Relaxed);
            while received.load(Ordering::Relaxed) < total {
                tokio::time::timeout(WAIT, arrived.notified()).await.context("subscribers stopped receiving")?;
            }
            anyhow::Ok(Instant::now())
        }
    };
    let db = connect(cluster.port, WRITER).await?;
    db.batch_execute("SELECT set_config('request.jwt.claims', '{\"role\":\"service_role\"}', false)").await?;
    let send = db.prepare("SELECT campfire.send_message($1, 'fan-out', 'agent')").await?;
    let conversation = |i: usize| org.conversations[i % org.conversations.len()];

    let mut last_subscriber_ms = Vec::new();
    for i in 0..probes {
        db.execute(&send, &[&conversation(i)]).await?;
        let committed = Instant::now();
        let done = wait_for(((i + 1) * subscribers) as u64).await?;
        last_subscriber_ms.push(done.duration_since(committed).as_secs_f64() * 1000.0);
    }

    let relay_cpu_before = cpu_seconds(relay.child.id());
    let started = Instant::now();
    let commits = (probes..probes + burst).map(|i| {
        let (db, send, conversation) = (&db, &send, conversation(i));
        async move { db.execute(send, &[&conversation]).await }
    });
    for result in futures_util::future::join_all(commits).await {
        result?;
    }
    let done = wait_for(((probes + burst) * subscribers) as u64).await?;
    let seconds = done.duration_since(started).as_secs_f64();
    let relay_cpu = cpu_seconds(relay.child.id()) - relay_cpu_before;
    let deliveries = (burst * subscribers) as f64;
    Ok(json!({
        "subscribers": subscribers, "burst_messages": burst, "deliveries": deliveries,
        "deliveries_per_second": deliveries / seconds,
        "relay_cpu_seconds": relay_cpu, "deliveries_per_relay_cpu_second": deliveries / relay_cpu,
        "last_subscriber_ms": median(last_subscriber_ms),
    }))
}

/// The fields of /proc/<pid>/stat after the command name (the field numbered 3 by proc(5) first).
fn stat_fields(pid: &str) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(stat.rsplit_once(')')?.1.split_whitespace().map(str::to_owned).collect())
}

/// The sum of the `/proc/<pid>/stat` fields at `indexes` (of `stat_fields`), in CPU seconds.
fn ticks_in_seconds(fields: &[String], indexes: &[usize]) -> Option<f64> {
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    indexes.iter().map(|&i| fields.get(i)?.parse::<f64>().ok()).sum::<Option<f64>>().map(|t| t / ticks)
}

/// CPU seconds (user + system) a process has used, from /proc/<pid>/stat.
fn cpu_seconds(pid: u32) -> f64 {
    stat_fields(&pid.to_string()).and_then(|f| ticks_in_seconds(&f, &[11, 12])).unwrap_or(f64::NAN)
}

/// CPU seconds used so far by a cluster (the postmaster, its live children, and the children it
/// has reaped, so that a backend that exits within a measurement still counts), of them by its
/// pg_campfire notifiers, and by a relay and by this process (the load generator and the
/// subscriber).
struct CpuUse {
    postgres: f64,
    /// By process id: a notifier leaves after a few idle seconds, and a new one may start.
    notifiers: HashMap<String, f64>,
    relay: f64,
    load_generator: f64,
}

impl CpuUse {
    fn now(cluster: &Cluster, relay: Option<&Relay>) -> CpuUse {
        let postmaster = std::fs::read_to_string(format!("{}/postmaster.pid", cluster.dir))
            .ok()
            .and_then(|pid| pid.lines().next().map(str::to_owned))
            .unwrap_or_default();
        let (mut postgres, mut notifiers) = (0.0, HashMap::new());
        if let Some(fields) = stat_fields(&postmaster) {
            // utime, stime, and the reaped children's cutime, cstime.
            postgres += ticks_in_seconds(&fields, &[11, 12, 13, 14]).unwrap_or(0.0);
        }
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let pid = entry.file_name().to_string_lossy().into_owned();
            let Some(fields) = stat_fields(&pid).filter(|f| f.get(1) == Some(&postmaster)) else { continue };
            let used = ticks_in_seconds(&fields, &[11, 12]).unwrap_or(0.0);
            postgres += used;
            let title = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&title).contains("pg_campfire notifier") {
                notifiers.insert(pid, used);
            }
        }
        CpuUse {
            postgres,
            notifiers,
            relay: relay.map_or(0.0, |r| cpu_seconds(r.child.id())),
            load_generator: cpu_seconds(std::process::id()),
        }
    }

    /// Microseconds of CPU per message between `self` and `later`. (A notifier that left within
    /// the measurement counts in `postgres` only.)
    fn per_message(&self, later: &CpuUse, messages: u64) -> Value {
        let us = |before: f64, after: f64| (after - before) * 1e6 / messages.max(1) as f64;
        let postgres = us(self.postgres, later.postgres);
        let notifier = (later.notifiers.iter())
            .map(|(pid, &used)| us(self.notifiers.get(pid).copied().unwrap_or(0.0), used))
            .fold(0.0, |sum, us| sum + us);
        let (relay, load_generator) = (us(self.relay, later.relay), us(self.load_generator, later.load_generator));
        json!({
            "postgres": postgres, "notifier": notifier, "relay": relay,
            "load_generator": load_generator, "total": postgres + relay + load_generator,
        })
    }
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn socket_memory_kb() -> u64 {
    // "TCP: inuse … mem N" counts pages of kernel socket buffers, machine-wide.
    std::fs::read_to_string("/proc/net/sockstat")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("TCP:")).and_then(|l| l.split_whitespace().last()?.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4)
}

/// Kernel slab memory, machine-wide: where socket, file and epoll structures live (an idle
/// socket has no buffer pages, so sockstat alone says nothing about it).
fn slab_kb() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("Slab:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// What one client process of the connections scenario opens.
#[derive(serde::Serialize, serde::Deserialize)]
struct WorkerSpec {
    port: u16,
    count: usize,
    token: String,
    topics: Vec<String>,
    /// Where this process starts counting source addresses (see `next_source`).
    first_source: u64,
}

/// A client process: joins its connections, says "joined", holds them until stdin closes.
async fn connect_worker(spec: &str) -> Result<()> {
    raise_fd_limit();
    let spec: WorkerSpec = serde_json::from_str(spec)?;
    SOURCES_USED.store(spec.first_source, Ordering::Relaxed);
    let mut sockets = Vec::with_capacity(spec.count);
    for chunk in 0..spec.count.div_ceil(250) {
        let joins = (chunk * 250..spec.count.min((chunk + 1) * 250))
            .map(|i| join_from(spec.port, "2.0.0", &spec.token, &spec.topics[i % spec.topics.len()], next_source()));
        for ws in futures_util::future::join_all(joins).await {
            sockets.push(ws?);
        }
    }
    println!("joined");
    let mut rest = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut tokio::io::stdin(), &mut rest).await?;
    drop(sockets);
    Ok(())
}

/// Scenario 4, idle connections, each joined to a conversation topic: memory per connection. A process
/// may hold only `fd_limit` descriptors (20,000 in this sandbox, which cannot raise the hard
/// limit), so the connections are spread over as many relay processes sharing one port
/// (SO_REUSEPORT) and as many client processes as that takes.
async fn connections(args: &Args, cluster: &Cluster, org: &Org, count: usize, fd_limit: u64) -> Result<Value> {
    let per_process = (fd_limit as usize).saturating_sub(2_000).max(1_000);
    let processes = count.div_ceil(per_process);
    let port = free_port();
    let mut relays = Vec::new();
    for _ in 0..processes {
        relays.push(start_relay_on(args, cluster, port, processes > 1).await?);
    }
    // Every relay has bound its socket and settled (the first one answering proves only itself).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss = || relays.iter().map(|r| rss_kb(r.child.id())).sum::<u64>();
    let (rss_before, socket_before, slab_before) = (rss(), socket_memory_kb(), slab_kb());
    let topics: Vec<String> = org.conversations.iter().map(|c| format!("org:{}:conv:{c}", org.id)).collect();
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..processes {
        let spec = WorkerSpec {
            port,
            count: count / processes + usize::from(w < count % processes),
            token: agent_token(org.agent),
            topics: topics.clone(),
            first_source: SOURCES_USED.load(Ordering::Relaxed),
        };
        SOURCES_USED.fetch_add(spec.count as u64, Ordering::Relaxed);
        let mut worker = tokio::process::Command::new(std::env::current_exe()?)
            .args(["--connect-worker", &serde_json::to_string(&spec)?])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = worker.stdout.take().context("worker stdout")?;
        workers.push((worker, tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout))));
    }
    for (_, lines) in &mut workers {
        match tokio::time::timeout(WAIT * 2, lines.next_line()).await {
            Ok(Ok(Some(line))) if line == "joined" => {}
            other => bail!("a client process did not join its connections: {other:?}"),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let relay_kb = rss().saturating_sub(rss_before);
    let kernel = socket_memory_kb().saturating_sub(socket_before);
    let slab = slab_kb().saturating_sub(slab_before);
    for (mut worker, _) in workers {
        drop(worker.stdin.take());
        worker.wait().await?;
    }
    Ok(json!({
        "connections": count, "relay_processes": processes, "client_processes": processes,
        "connect_and_join_seconds": seconds,
        "relay_rss_kb_per_connection": relay_kb as f64 / count as f64,
        "relay_rss_kb_before": rss_before, "relay_rss_kb_with_connections": rss_before + relay_kb,
        "kernel_socket_kb_per_connection_both_ends": kernel as f64 / count as f64,
        // Both ends of every connection are on this machine, and other processes allocate too.
        "kernel_slab_kb_per_connection_both_ends": slab as f64 / count as f64,
    }))
}

fn machine() -> Value {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok()))
        .unwrap_or(0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    json!({ "cores": cores, "memory_mb": memory / 1024, "cpu": cpu })
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = Args::parse();
    if let Some(spec) = &args.connect_worker {
        return connect_worker(spec).await;
    }
    if let Some(listen) = &args.naive_relay {
        return naive::relay(listen).await;
    }
    if args.smoke {
        (args.runs, args.seconds, args.latency_messages, args.rate) = (1, 1, 200, 200);
        (args.fanout, args.connections, args.growth, args.growth_reps) = (vec![20], vec![50], vec![2000], 5);
    }
    let fd_limit = raise_fd_limit();
    let cluster = start_cluster(args.wal_flush_delay_us)?;
    let relay = start_relay(&args, &cluster).await?;
    let db = connect(cluster.port, "postgres").await?;
    let settings: Vec<(String, String)> = db
        .query("SELECT name, setting FROM pg_settings WHERE name IN ('synchronous_commit', 'fsync', 'shared_buffers', 'max_connections', 'wal_level') ORDER BY name", &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let org = create_org(&db, "bench", 100).await?;
    let mut results = json!({
        "machine": machine(), "postgresql": settings.into_iter().collect::<HashMap<_, _>>(),
        "fd_limit": fd_limit, "runs": args.runs, "smoke": args.smoke, "wal_flush_delay_us": args.wal_flush_delay_us,
    });

    let wanted = |name: &str| args.only.is_empty() || args.only.iter().any(|o| o == name);
    for vsn in ["2.0.0", "1.0.0"].into_iter().filter(|_| wanted("latency")) {
        let mut runs = Vec::new();
        for _ in 0..args.runs {
            runs.push(latency(&args, &cluster, Path::Campfire, Some(&relay), vsn, &org).await?);
        }
        let m = |k: &str| median_at(&runs, &format!("/from_commit/{k}"));
        println!(
            "latency vsn {vsn} @ {}/s: p50 {:.2} ms  p95 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
            args.rate,
            m("p50_ms"),
            m("p95_ms"),
            m("p99_ms"),
            m("max_ms")
        );
        results[format!("latency_{vsn}")] = json!({ "median": { "p50_ms": m("p50_ms"), "p95_ms": m("p95_ms"), "p99_ms": m("p99_ms"), "max_ms": m("max_ms") }, "runs": runs });
    }

    let mut throughput = Vec::new();
    for (writers, per_tx) in [(1, 1), (8, 1), (32, 1), (8, 10)].into_iter().filter(|_| wanted("throughput")) {
        let mut runs = Vec::new();
        for _ in 0..args.runs {
            runs.push(write_rate(&cluster, Path::Campfire, Some(&relay), &org, writers, per_tx, args.seconds).await?);
        }
        let rate = median_at(&runs, "/per_second");
        let lost: u64 = runs.iter().map(|r| r["lost"].as_u64().unwrap_or(0)).sum();
        println!("throughput {writers} writers x {per_tx}/tx: {rate:.0} messages/s delivered, {lost} lost");
        throughput.push(json!({ "writers": writers, "per_transaction": per_tx, "median_per_second": rate, "lost": lost, "runs": runs }));
    }
    results["throughput"] = json!(throughput);

    let mut cost = Vec::new();
    for writers in [1, 8].into_iter().filter(|_| wanted("cost")) {
        let mut plain = Vec::new();
        let mut campfire = Vec::new();
        for _ in 0..args.runs {
            plain.push(write_rate(&cluster, Path::Plain, None, &org, writers, 1, args.seconds).await?);
            campfire.push(write_rate(&cluster, Path::Campfire, None, &org, writers, 1, args.seconds).await?);
        }
        let (plain, campfire) = (median_at(&plain, "/per_second"), median_at(&campfire, "/per_second"));
        println!(
            "trigger cost, {writers} writers: plain {plain:.0}/s, through pg_campfire {campfire:.0}/s = {:.2}x",
            campfire / plain
        );
        cost.push(json!({ "writers": writers, "plain_per_second": plain, "campfire_per_second": campfire, "ratio": campfire / plain }));
    }
    results["trigger_cost"] = json!(cost);

    if wanted("baseline") {
        let naive = start_naive_relay(&cluster).await?;
        results["baseline"] = baseline(&args, &cluster, &relay, &naive, &org).await?;
    }

    let mut fan = Vec::new();
    for &subscribers in args.fanout.iter().filter(|_| wanted("fanout")) {
        // About 400,000 deliveries per burst, whatever the subscriber count.
        let burst = if args.smoke { 5 } else { (400_000 / subscribers).clamp(20, 400) };
        let mut runs = Vec::new();
        for _ in 0..args.runs {
            runs.push(fanout(&cluster, &relay, &org, subscribers, burst).await?);
        }
        let m = |k: &str| median(runs.iter().map(|r| r[k].as_f64().unwrap_or(f64::NAN)).collect());
        println!(
            "fan-out {subscribers} subscribers: {:.0} deliveries/s ({:.0} per relay CPU second), last subscriber {:.1} ms after commit",
            m("deliveries_per_second"),
            m("deliveries_per_relay_cpu_second"),
            m("last_subscriber_ms"),
        );
        fan.push(json!({
            "subscribers": subscribers,
            "median": { "deliveries_per_second": m("deliveries_per_second"),
                        "deliveries_per_relay_cpu_second": m("deliveries_per_relay_cpu_second"),
                        "last_subscriber_ms": m("last_subscriber_ms") },
            "runs": runs,
        }));
    }
    results["fanout"] = json!(fan);

    let mut idle = Vec::new();
    for &count in args.connections.iter().filter(|_| wanted("connections")) {
        // Fresh relays: memory freed by earlier scenarios would hide the cost of new connections.
        let r = connections(&args, &cluster, &org, count, fd_limit).await?;
        println!(
            "{count} idle joined connections ({} relay processes) in {:.1} s: relay {:.1} kB RSS per connection, kernel socket buffers {:.1} kB and slab {:.1} kB per connection (both ends)",
            r["relay_processes"],
            r["connect_and_join_seconds"].as_f64().unwrap(),
            r["relay_rss_kb_per_connection"].as_f64().unwrap(),
            r["kernel_socket_kb_per_connection_both_ends"].as_f64().unwrap(),
            r["kernel_slab_kb_per_connection_both_ends"].as_f64().unwrap()
        );
        idle.push(r);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    results["connections"] = json!(idle);

    if wanted("peers") {
        results["peers"] = peers::peers(&args, &cluster, &org).await?;
    }

    if wanted("shards") {
        results["shards"] = shards::shards(&args, &cluster, &org).await?;
    }

    if wanted("growth") {
        results["growth"] = growth::growth(cluster.port, &args.growth, args.growth_reps).await?;
    }

    std::fs::write(&args.output, serde_json::to_string_pretty(&results)?)?;
    println!("figures written to {}", args.output);
    Ok(())
}
