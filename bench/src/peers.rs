//! The peers scenario: client broadcasts (typing indicators) crossing between three relays, over
//! PostgreSQL NOTIFY and over NATS in the same run. A client of relay A broadcasts `typing:start`,
//! clients of B and C receive it: latency at a fixed rate, then throughput with A's client
//! sending as fast as its socket takes, and the three relays' CPU per message crossed.

use crate::{Args, Cluster, Org, Relay, Ws, agent_token, broadcast_payload, cpu_seconds, free_port, join, median_at};
use crate::{percentiles, relay_command, start_listening};
use anyhow::{Result, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

const RELAYS: usize = 3;

struct NatsServer {
    child: Child,
    port: u16,
}

impl NatsServer {
    async fn start() -> Result<NatsServer> {
        let port = free_port();
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let server = NatsServer { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            if Instant::now() > deadline {
                bail!("nats-server did not start");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(server)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Three relays on one bus, with a sender on the first and a receiver on each of the others.
struct Setup {
    relays: Vec<Relay>,
    sender: Ws,
    receivers: Vec<Ws>,
    topic: String,
    _nats: Option<NatsServer>,
}

async fn setup(args: &Args, cluster: &Cluster, org: &Org, bus: &str) -> Result<Setup> {
    let nats = if bus == "nats" { Some(NatsServer::start().await?) } else { None };
    let mut relays = Vec::new();
    for _ in 0..RELAYS {
        let port = free_port();
        let mut command = relay_command(args, cluster, port);
        // One client sends everything: the per-connection broadcast rate is for real clients.
        command.env("CAMPFIRE_MAX_BROADCASTS_PER_WINDOW", "1000000000").env("CAMPFIRE_PEERS", bus);
        if let Some(nats) = &nats {
            command.env("CAMPFIRE_NATS_URL", format!("nats://127.0.0.1:{}", nats.port));
        }
        relays.push(start_listening(command, port).await?);
    }
    let topic = format!("org:{}:conv:{}:typing", org.id, org.conversations[0]);
    let token = agent_token(org.agent);
    let sender = join(&relays[0], "2.0.0", &token, &topic).await?;
    let mut receivers = Vec::new();
    for relay in &relays[1..] {
        receivers.push(join(relay, "2.0.0", &token, &topic).await?);
    }
    let mut setup = Setup { relays, sender, receivers, topic, _nats: nats };
    setup.warm_up().await?;
    Ok(setup)
}

impl Setup {
    async fn send(&mut self, n: i64) -> Result<()> {
        let payload = json!({"type": "broadcast", "event": "typing:start", "payload": {"n": n, "isTyping": true}});
        let frame = json!(["1", null, format!("realtime:{}", self.topic), "broadcast", payload]);
        self.sender.send(Message::text(frame.to_string())).await?;
        Ok(())
    }

    /// Until a broadcast reaches every receiver (over NATS the relays subscribe as clients join).
    async fn warm_up(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            self.send(-1).await?;
            let mut all = true;
            for receiver in &mut self.receivers {
                all &= next_number(receiver, Duration::from_millis(200)).await.is_some();
            }
            if all {
                // Whatever else of the warm-up is still under way.
                for receiver in &mut self.receivers {
                    while next_number(receiver, Duration::from_millis(200)).await.is_some() {}
                }
                return Ok(());
            }
        }
        bail!("broadcasts do not cross between the relays")
    }

    fn relay_cpu_seconds(&self) -> f64 {
        self.relays.iter().map(|relay| cpu_seconds(relay.child.id())).sum()
    }
}

/// The `n` of the next broadcast within `wait`.
async fn next_number(ws: &mut Ws, wait: Duration) -> Option<i64> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let Ok(Some(Ok(Message::Text(text)))) = tokio::time::timeout_at(deadline, ws.next()).await else { return None };
        if let Some(n) = broadcast_payload(&text).and_then(|p| p["payload"]["n"].as_i64()) {
            return Some(n);
        }
    }
}

/// Reads broadcasts numbered from 0 on every receiver until `count` arrived or nothing came for
/// two seconds: when each arrived, per receiver.
async fn collect(receivers: Vec<Ws>, count: usize) -> Vec<(Ws, HashMap<i64, Instant>)> {
    let tasks = receivers.into_iter().map(|mut ws| {
        tokio::spawn(async move {
            let mut arrived = HashMap::new();
            while arrived.len() < count {
                match next_number(&mut ws, Duration::from_secs(2)).await {
                    Some(n) if n >= 0 => {
                        arrived.insert(n, Instant::now());
                    }
                    Some(_) => {}
                    None => break,
                }
            }
            (ws, arrived)
        })
    });
    futures_util::future::join_all(tasks).await.into_iter().map(|r| r.expect("a receiver task")).collect()
}

/// Broadcasts at `rate` per second: from the send to each receiver's frame.
async fn latency(setup: &mut Setup, messages: usize, rate: u64) -> Result<Value> {
    let receivers = std::mem::take(&mut setup.receivers);
    let collecting = tokio::spawn(collect(receivers, messages));
    let mut sent = Vec::with_capacity(messages);
    let mut ticker = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate));
    for n in 0..messages as i64 {
        ticker.tick().await;
        sent.push(Instant::now());
        setup.send(n).await?;
    }
    let mut ms = Vec::new();
    let mut lost = 0;
    for (ws, arrived) in collecting.await? {
        lost += messages - arrived.len();
        ms.extend(arrived.iter().map(|(n, at)| at.duration_since(sent[*n as usize]).as_secs_f64() * 1000.0));
        setup.receivers.push(ws);
    }
    let mut figures = percentiles(ms);
    figures["lost"] = json!(lost);
    Ok(figures)
}

/// As many broadcasts as A's client can send in `seconds`: messages crossed per second (to each
/// receiver; the rest are dropped where a queue is full, counted as lost), and the three relays'
/// CPU (reading A's client frames included) per message that crossed.
async fn throughput(setup: &mut Setup, seconds: u64) -> Result<Value> {
    let cpu_before = setup.relay_cpu_seconds();
    let started = Instant::now();
    let mut count = 0;
    // Read all along (a receiver that stops reading is disconnected as too slow), until the
    // stream has been quiet for a while.
    let collecting = tokio::spawn(collect(std::mem::take(&mut setup.receivers), usize::MAX));
    while started.elapsed() < Duration::from_secs(seconds) {
        for _ in 0..100 {
            setup.send(count as i64).await?;
            count += 1;
        }
        tokio::task::yield_now().await;
    }
    let results = collecting.await?;
    let mut delivered = 0;
    let mut last_arrival = started;
    for (ws, arrived) in results {
        delivered += arrived.len();
        last_arrival = arrived.values().copied().fold(last_arrival, Instant::max);
        setup.receivers.push(ws);
    }
    let elapsed = last_arrival.duration_since(started).as_secs_f64();
    let per_receiver = delivered as f64 / setup.receivers.len() as f64;
    let cpu = setup.relay_cpu_seconds() - cpu_before;
    Ok(json!({
        "sent": count, "delivered_per_receiver": per_receiver,
        "lost": count * setup.receivers.len() - delivered,
        "crossed_per_second": per_receiver / elapsed,
        "relay_cpu_us_per_message": cpu * 1e6 / per_receiver,
    }))
}

/// Both buses side by side: medians over `args.runs` and NATS's ratios to PostgreSQL.
pub async fn peers(args: &Args, cluster: &Cluster, org: &Org) -> Result<Value> {
    let mut results = json!({});
    for bus in ["postgres", "nats"] {
        let mut setup = setup(args, cluster, org, bus).await?;
        let (mut latencies, mut rates) = (Vec::new(), Vec::new());
        for _ in 0..args.runs {
            latencies.push(latency(&mut setup, args.latency_messages, args.rate).await?);
            rates.push(throughput(&mut setup, args.seconds).await?);
        }
        let median = json!({
            "p50_ms": median_at(&latencies, "/p50_ms"), "p99_ms": median_at(&latencies, "/p99_ms"),
            "crossed_per_second": median_at(&rates, "/crossed_per_second"),
            "relay_cpu_us_per_message": median_at(&rates, "/relay_cpu_us_per_message"),
            "lost_at_full_speed": median_at(&rates, "/lost"),
        });
        println!(
            "peers over {bus}, {RELAYS} relays: typing broadcast A -> B, C at {}/s p50 {:.2} ms p99 {:.2} ms; \
             flat out {:.0} crossed/s per receiver ({:.0} lost), relays' CPU {:.0} us per message crossed",
            args.rate,
            median["p50_ms"].as_f64().unwrap_or(f64::NAN),
            median["p99_ms"].as_f64().unwrap_or(f64::NAN),
            median["crossed_per_second"].as_f64().unwrap_or(f64::NAN),
            median["lost_at_full_speed"].as_f64().unwrap_or(f64::NAN),
            median["relay_cpu_us_per_message"].as_f64().unwrap_or(f64::NAN),
        );
        results[bus] = json!({ "median": median, "latency_runs": latencies, "throughput_runs": rates });
    }
    let ratio = |key: &str| {
        let figure = |bus: &str| results[bus]["median"][key].as_f64().unwrap_or(f64::NAN);
        figure("nats") / figure("postgres")
    };
    let ratios = json!({
        "p50_ms": ratio("p50_ms"), "p99_ms": ratio("p99_ms"),
        "crossed_per_second": ratio("crossed_per_second"),
        "relay_cpu_us_per_message": ratio("relay_cpu_us_per_message"),
    });
    println!(
        "peers, NATS / PostgreSQL: p50 {:.2}x, p99 {:.2}x, throughput {:.2}x, relay CPU per message {:.2}x",
        ratios["p50_ms"].as_f64().unwrap_or(f64::NAN),
        ratios["p99_ms"].as_f64().unwrap_or(f64::NAN),
        ratios["crossed_per_second"].as_f64().unwrap_or(f64::NAN),
        ratios["relay_cpu_us_per_message"].as_f64().unwrap_or(f64::NAN),
    );
    results["nats_over_postgres"] = ratios;
    Ok(results)
}
