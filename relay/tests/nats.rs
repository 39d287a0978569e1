//! Relays whose peers meet on NATS (`--peers nats`), against a real nats-server, a real
//! PostgreSQL and real WebSocket clients: three relays behaving as one, a relay killed, the NATS
//! server restarted under load, and an outsider on the server's account publishing on the
//! relays' subjects. Database events keep coming from PostgreSQL's log throughout.

mod common;

use campfire_relay::Options;
use campfire_testkit::ws::{Client, Received, WAIT};
use common::nats::{Auth, NatsServer};
use common::presence::{Presence, track_and_type, watch};
use common::{Fixture, Relay, RelayProcess};
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

/// Peers probed often, and given up quickly, so that the tests wait little.
fn fast_peers() -> Options {
    Options {
        peer_heartbeat: Duration::from_millis(200),
        peer_timeout: Duration::from_millis(1000),
        ..Options::default()
    }
}

async fn relay_on(f: &Fixture, nats: &NatsServer) -> Relay {
    Relay::start_with(nats.config(f), fast_peers()).await
}

fn typing(f: &Fixture) -> String {
    format!("{}:typing", f.topic())
}

/// A client on `addr` joined to the conversation's typing channel.
async fn typing_watcher(f: &Fixture, addr: std::net::SocketAddr) -> Client {
    let mut client = Client::connect(addr, "2.0.0", &f.agent_token()).await;
    client.join_ok(&typing(f), json!({"config": {}})).await;
    client
}

/// A client on `addr` joined to the conversation's typing channel, and its join ref.
async fn broadcaster(f: &Fixture, addr: std::net::SocketAddr) -> (Client, String) {
    let mut client = Client::connect(addr, "2.0.0", &f.secret).await;
    let join_ref = client.join_ok(&typing(f), json!({"config": {}})).await;
    (client, join_ref)
}

async fn broadcast(f: &Fixture, client: &mut Client, join_ref: &str, event: &str, payload: Value) {
    let message = json!({"type": "broadcast", "event": event, "payload": payload});
    client.push(Some(join_ref), &format!("realtime:{}", typing(f)), "broadcast", message).await;
}

/// The presence keys of a client that joins `addr`'s presence channel now, once in sync.
async fn late_joiner_sees(
    f: &Fixture,
    addr: std::net::SocketAddr,
    done: impl Fn(&std::collections::BTreeSet<String>) -> bool,
) {
    let mut late = Client::connect(addr, "2.0.0", &f.agent_token()).await;
    late.send_join(&format!("{}:presence", f.topic()), json!({"config": {}})).await;
    Presence::default().until(&mut late, done).await;
}

/// Peer messages and notifications a relay refused, whatever the reason.
async fn refused(relay: &Relay) -> f64 {
    let (_, body) = common::http(relay.addr, "GET", "/metrics", &[], "").await;
    body.lines()
        .filter(|line| line.starts_with("campfire_refused_notifications_total{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Why a relay with `config` stops at start (it must, and at once).
async fn refused_at_start(config: campfire_relay::Config) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let started = tokio::time::timeout(WAIT, campfire_relay::run(config, listener, std::future::pending())).await;
    started.expect("gives up at once").expect_err("refused").to_string()
}

/// Whether `relay`'s metric `name` reads `value` within WAIT.
async fn wait_for_metric(relay: &Relay, name: &str, value: f64) -> bool {
    let deadline = Instant::now() + WAIT;
    while relay.metric(name).await != value {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

fn seq(frame: &Received) -> i64 {
    frame.payload["payload"]["message"]["seq"].as_i64().unwrap()
}

/// The `n` of every broadcast `event` among `frames`.
fn numbers(frames: &[Received], event: &str) -> Vec<i64> {
    frames
        .iter()
        .filter(|m| m.event == "broadcast" && m.payload["event"] == event)
        .map(|m| m.payload["payload"]["n"].as_i64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn three_relays_over_nats_behave_as_one() {
    let f = Fixture::new().await;
    let nats = NatsServer::start().await;
    // A's typing indicators end after a second without news.
    let mut config_a = nats.config(&f);
    config_a.typing_ttl_secs = 1;
    let a = Relay::start_with(config_a, fast_peers()).await;
    let (b, c) = (relay_on(&f, &nats).await, relay_on(&f, &nats).await);
    let (mut watcher_b, mut seen_b) = watch(&f, b.addr).await;
    seen_b.until(&mut watcher_b, |_| true).await;
    let (mut typing_b, mut typing_c) = (typing_watcher(&f, b.addr).await, typing_watcher(&f, c.addr).await);
    let mut events_b = Client::connect(b.addr, "2.0.0", &f.agent_token()).await;
    events_b.join_ok(&f.topic(), json!({"config": {}})).await;
    let mut events_c = Client::connect(c.addr, "2.0.0", &f.agent_token()).await;
    events_c.join_ok(&f.topic(), json!({"config": {}})).await;

    // Presence and typing of a visitor on A, seen on B and C.
    let mut visitor = Client::connect(a.addr, "2.0.0", &f.secret).await;
    track_and_type(&f, &mut visitor, "visitor-a").await;
    seen_b.until(&mut watcher_b, |s| s.contains("visitor-a")).await;
    for watcher in [&mut typing_b, &mut typing_c] {
        let started = watcher.broadcast_event("typing:start").await;
        assert_eq!(started.payload["payload"], json!({"userId": "visitor-a", "isTyping": true}));
    }
    // No news for a second: A ends the indicator, and says so to the other relays.
    for watcher in [&mut typing_b, &mut typing_c] {
        let stopped = watcher.broadcast_event("typing:stop").await;
        assert_eq!(stopped.payload["payload"]["endedBy"], "relay", "{stopped:?}");
    }

    // A late joiner on B (which serves the channel already) gets A's presence in its state; one
    // on C (the first there, so C subscribes now and asks) learns it just after.
    let mut late = Client::connect(b.addr, "2.0.0", &f.agent_token()).await;
    late.join_ok(&format!("{}:presence", f.topic()), json!({"config": {}})).await;
    let state = late.recv_where(|m| m.event == "presence_state").await;
    assert_eq!(state.payload["visitor-a"]["metas"][0]["name"], "visitor-a", "{:?}", state.payload);
    late_joiner_sees(&f, c.addr, |s| s.contains("visitor-a")).await;

    // Client broadcasts from C reach A and B once each.
    let (mut on_c, c_ref) = broadcaster(&f, c.addr).await;
    let mut typing_a = typing_watcher(&f, a.addr).await;
    for n in 1..=5 {
        broadcast(&f, &mut on_c, &c_ref, "note", json!({"n": n})).await;
    }
    for watcher in [&mut typing_a, &mut typing_b] {
        let mut seen = Vec::new();
        while seen.len() < 5 {
            seen.push(watcher.broadcast_event("note").await.payload["payload"]["n"].as_i64().unwrap());
        }
        seen.extend(numbers(&watcher.drain(Duration::from_millis(300)).await, "note"));
        assert_eq!(seen, [1, 2, 3, 4, 5], "each once, in order");
    }

    // Database events come from the log to every relay.
    let db = f.agent_db().await;
    let sent = f.send_as_agent(&db, "to every relay").await;
    assert_eq!(seq(&events_b.broadcast_event("message:created").await), sent);
    assert_eq!(seq(&events_c.broadcast_event("message:created").await), sent);

    // The visitor leaves: its presence goes from every relay.
    drop(visitor);
    seen_b.until(&mut watcher_b, |s| !s.contains("visitor-a")).await;
    // Access taken back in the database (announced through it, not NATS) ends the agent's
    // channels on every relay.
    f.disable_agent().await;
    for client in [&mut events_b, &mut events_c] {
        let system = client.recv_where(|m| m.event == "system").await;
        assert!(system.payload["message"].as_str().unwrap().contains("no longer have permission"), "{system:?}");
    }

    for relay in [a, b, c] {
        relay.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_relay_killed_leaves_everywhere_over_nats_and_its_clients_resume_on_another() {
    let f = Fixture::new().await;
    let nats = NatsServer::start().await;
    let mut env = nats.env();
    env.extend([("CAMPFIRE_PEER_HEARTBEAT_MS", "200".to_owned()), ("CAMPFIRE_PEER_TIMEOUT_MS", "1000".to_owned())]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut a = RelayProcess::start(&f, &env).await;
    let (b, c) = (relay_on(&f, &nats).await, relay_on(&f, &nats).await);
    let (mut watcher_b, mut seen_b) = watch(&f, b.addr).await;
    let (mut watcher_c, mut seen_c) = watch(&f, c.addr).await;
    let (mut typing_b, mut typing_c) = (typing_watcher(&f, b.addr).await, typing_watcher(&f, c.addr).await);
    let mut visitor = Client::connect(a.addr, "2.0.0", &f.secret).await;
    track_and_type(&f, &mut visitor, "visitor-a").await;
    seen_b.until(&mut watcher_b, |s| s.contains("visitor-a")).await;
    seen_c.until(&mut watcher_c, |s| s.contains("visitor-a")).await;
    typing_b.broadcast_event("typing:start").await;
    typing_c.broadcast_event("typing:start").await;
    let mut reader = Client::connect(a.addr, "2.0.0", &f.agent_token()).await;
    reader.join_ok(&f.topic(), json!({"config": {}})).await;
    let db = f.agent_db().await;
    f.send_as_agent(&db, "before").await;
    let cursor = reader.broadcast_event("message:created").await.payload["payload"]["cursor"].as_i64().unwrap();

    // SIGKILL: no goodbye. Its NATS connection ends with it, so the others' next probe finds
    // nobody answering for it.
    a.kill();
    let killed = Instant::now();
    seen_b.until(&mut watcher_b, |s| !s.contains("visitor-a")).await;
    seen_c.until(&mut watcher_c, |s| !s.contains("visitor-a")).await;
    let gone_after = killed.elapsed();
    for watcher in [&mut typing_b, &mut typing_c] {
        let stopped = watcher.broadcast_event("typing:stop").await;
        assert_eq!(stopped.payload["payload"], json!({"userId": "visitor-a", "isTyping": false, "endedBy": "relay"}));
    }
    assert!(gone_after < Duration::from_secs(3), "presence left {gone_after:?} after the kill");
    eprintln!("killed relay's presence gone from both others after {gone_after:?}");
    assert!(b.metric("campfire_peers_expired_total").await >= 1.0);

    // A's reader resumes on B from its cursor: what was committed meanwhile, once, in order.
    let mut missed = Vec::new();
    for i in 1..=5 {
        missed.push(f.send_as_agent(&db, &format!("while away {i}")).await);
    }
    let mut resumed = Client::connect(b.addr, "2.0.0", &f.agent_token()).await;
    resumed.join_ok(&f.topic(), json!({"config": {"cursor": cursor}})).await;
    let mut seqs = Vec::new();
    while seqs.len() < missed.len() {
        seqs.push(seq(&resumed.broadcast_event("message:created").await));
    }
    assert_eq!(seqs, missed);
    assert!(resumed.drain(Duration::from_millis(300)).await.iter().all(|m| m.payload["event"] != "message:created"));
    b.stop().await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_restarted_under_load_duplicates_nothing_and_presence_comes_back() {
    let f = Fixture::new().await;
    let mut nats = NatsServer::start().await;
    let [a, b, c] = [relay_on(&f, &nats).await, relay_on(&f, &nats).await, relay_on(&f, &nats).await];
    let (mut watcher_c, mut seen_c) = watch(&f, c.addr).await;
    let mut visitor = Client::connect(a.addr, "2.0.0", &f.secret).await;
    track_and_type(&f, &mut visitor, "visitor-a").await;
    seen_c.until(&mut watcher_c, |s| s.contains("visitor-a")).await;
    let mut listeners = [typing_watcher(&f, b.addr).await, typing_watcher(&f, c.addr).await];
    let mut events_c = Client::connect(c.addr, "2.0.0", &f.agent_token()).await;
    events_c.join_ok(&f.topic(), json!({"config": {}})).await;

    // Load: a broadcast from A every 25 ms, a committed message every 50 ms.
    let last_tick = Arc::new(AtomicI64::new(0));
    let ticker = {
        let (mut on_a, a_ref) = broadcaster(&f, a.addr).await;
        let (f_topic, last_tick) = (typing(&f), last_tick.clone());
        tokio::spawn(async move {
            for n in 1.. {
                let message = json!({"type": "broadcast", "event": "tick", "payload": {"n": n}});
                on_a.push(Some(&a_ref), &format!("realtime:{f_topic}"), "broadcast", message).await;
                last_tick.store(n, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
    };
    let db = f.agent_db().await;
    let writes = 30;
    let writer = async {
        let mut sent = Vec::new();
        for i in 1..=writes {
            sent.push(f.send_as_agent(&db, &format!("load {i}")).await);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        sent
    };
    let restart = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        nats.restart(Duration::from_millis(300)).await;
    };
    // The operator's health check says so too: degraded (still 200: the database still serves)
    // while NATS is away, ok again after.
    let peers_health = |addr| async move {
        let (status, body) = common::http(addr, "GET", "/healthz/details", &[], "").await;
        let body: Value = serde_json::from_str(&body).unwrap();
        (status, body["status"].clone(), body["peers"].clone())
    };
    let restart_seen = async {
        let down = wait_for_metric(&b, "campfire_nats_connected", 0.0).await;
        let while_down = peers_health(b.addr).await;
        let up = wait_for_metric(&b, "campfire_nats_connected", 1.0).await;
        (down, up, while_down, peers_health(b.addr).await)
    };
    let (sent, (), (down, up, while_down, after)) = tokio::join!(writer, restart, restart_seen);
    assert!(down && up, "B reported losing NATS and getting it back");
    assert_eq!(while_down, (200, json!("degraded"), json!({ "bus": "nats", "connected": false })));
    assert_eq!(after, (200, json!("ok"), json!({ "bus": "nats", "connected": true })));
    let restarted_at = last_tick.load(Ordering::SeqCst);

    // Every relay is back on the bus: broadcasts sent well after the restart reach B and C.
    let mut ticks: Vec<Vec<i64>> = Vec::new();
    for listener in &mut listeners {
        let mut seen = Vec::new();
        while seen.last().is_none_or(|n| *n <= restarted_at + 10) {
            seen.push(listener.broadcast_event("tick").await.payload["payload"]["n"].as_i64().unwrap());
        }
        ticks.push(seen);
    }
    ticker.abort();
    for (listener, seen) in listeners.iter_mut().zip(&mut ticks) {
        seen.extend(numbers(&listener.drain(Duration::from_millis(300)).await, "tick"));
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "no broadcast twice, none out of order: {seen:?}");
        eprintln!("{} of {} ticks arrived across a NATS restart", seen.len(), seen.last().unwrap());
    }

    // Database events come from the log: every one once, in order, NATS or not.
    let mut seqs = Vec::new();
    while seqs.len() < sent.len() {
        seqs.push(seq(&events_c.broadcast_event("message:created").await));
    }
    assert_eq!(seqs, sent);
    assert!(events_c.drain(Duration::from_millis(300)).await.iter().all(|m| m.payload["event"] != "message:created"));

    // Presence is re-synced: A's visitor is known on C again, and a new one crosses too.
    let mut arriving = Client::connect(a.addr, "2.0.0", &f.secret).await;
    track_and_type(&f, &mut arriving, "visitor-after").await;
    seen_c.until(&mut watcher_c, |s| s.contains("visitor-a") && s.contains("visitor-after")).await;
    late_joiner_sees(&f, c.addr, |s| s.contains("visitor-a") && s.contains("visitor-after")).await;
    late_joiner_sees(&f, b.addr, |s| s.contains("visitor-a") && s.contains("visitor-after")).await;
    drop(visitor);
    for relay in [a, b, c] {
        relay.stop().await;
    }
}

/// Anyone with the NATS account's credentials can subscribe and publish on the relays' subjects,
/// but not hold the notify key: what they hear is sealed, and nothing they publish (plain
/// messages, messages sealed with another key, junk, or replays of what they heard) changes what
/// any client receives.
#[tokio::test(flavor = "multi_thread")]
async fn an_outsider_on_the_nats_account_can_neither_read_nor_forge_peer_messages() {
    let f = Fixture::new().await;
    let nats = NatsServer::start().await;
    let outsider = nats.outsider().await;
    let mut heard = outsider.subscribe("campfire.>").await.unwrap();
    // The visitor's typing indicator stays on throughout (no relay-ended stop to tell apart).
    let mut config_a = nats.config(&f);
    config_a.typing_ttl_secs = 300;
    let a = Relay::start_with(config_a, fast_peers()).await;
    let b = relay_on(&f, &nats).await;
    let (mut watcher_b, mut seen_b) = watch(&f, b.addr).await;
    let mut typing_b = typing_watcher(&f, b.addr).await;
    let mut visitor = Client::connect(a.addr, "2.0.0", &f.secret).await;
    track_and_type(&f, &mut visitor, "visitor-a").await;
    seen_b.until(&mut watcher_b, |s| s.contains("visitor-a")).await;
    typing_b.broadcast_event("typing:start").await;

    // Liveness probes (`campfire.relay.<id>`) carry nothing; everything else is a peer message.
    let mut captured = Vec::new();
    let listening = Instant::now() + Duration::from_millis(300);
    while let Ok(Some(message)) = tokio::time::timeout_at(listening.into(), heard.next()).await {
        if !message.subject.starts_with("campfire.relay.") {
            captured.push(message);
        }
    }
    assert!(!captured.is_empty(), "the outsider hears the relays' traffic");
    for message in &captured {
        let text = String::from_utf8_lossy(&message.payload);
        assert!(text.starts_with("cf1.") && !text.contains("visitor-a"), "sealed: {text}");
    }
    let topic_subjects: std::collections::BTreeSet<String> =
        captured.iter().map(|m| m.subject.to_string()).filter(|s| s.starts_with("campfire.t.")).collect();
    assert!(!topic_subjects.is_empty());

    let refused_before = refused(&b).await;
    let forged_typing = json!({"kind": "broadcast", "topic": typing(&f), "event": "typing:start",
                               "payload": {"userId": "mallory"}, "origin": "mallory"});
    let forged_leave = json!({"kind": "topic_state", "topic": format!("{}:presence", f.topic()),
                              "metas": {}, "origin": "mallory"});
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let other_key_sealed = campfire_core::sealed::seal(
        &[7; 32],
        campfire_core::channels::PEERS,
        now,
        [3; 24],
        forged_typing.to_string().as_bytes(),
    )
    .unwrap();
    let mut forged = 0;
    for subject in topic_subjects.iter().cloned().chain(["campfire.relays".to_owned()]) {
        for payload in [forged_typing.to_string(), forged_leave.to_string(), other_key_sealed.clone(), "junk".into()] {
            outsider.publish(subject.clone(), payload.into()).await.unwrap();
            forged += 1;
        }
    }
    // Replays of everything heard, on the subjects it was heard on.
    for message in &captured {
        outsider.publish(message.subject.clone(), message.payload.clone()).await.unwrap();
    }
    outsider.flush().await.unwrap();

    let frames = watcher_b.drain(Duration::from_millis(500)).await;
    assert!(frames.iter().all(|m| m.event != "presence_diff"), "{frames:?}");
    let frames = typing_b.drain(Duration::from_millis(100)).await;
    assert!(frames.is_empty(), "nothing forged or replayed reached a client: {frames:?}");
    let refused = refused(&b).await - refused_before;
    assert!(refused >= forged as f64, "refused {refused}: {forged} forged, and the replays");
    late_joiner_sees(&f, b.addr, |s| s.contains("visitor-a")).await;

    // The bus still works for the relays themselves.
    let (mut on_a, a_ref) = broadcaster(&f, a.addr).await;
    broadcast(&f, &mut on_a, &a_ref, "note", json!({"n": 1})).await;
    assert_eq!(typing_b.broadcast_event("note").await.payload["payload"]["n"], 1);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_relay_refused_by_nats_stops_with_a_clear_error_that_names_no_secret() {
    let f = Fixture::new().await;
    let nats = NatsServer::start().await;
    let mut config = nats.config(&f);
    config.peers.nats_password = Some("not-the-password".into());
    let err = refused_at_start(config).await;
    assert!(err.contains("authorization violation"), "{err}");
    assert!(!err.contains("not-the-password"), "{err}");
}

/// A certificate authority and a server certificate for 127.0.0.1 it signed, made with openssl
/// in `dir`: (CA file, server certificate, server key).
fn tls_files(dir: &std::path::Path) -> (String, String, String) {
    std::fs::create_dir_all(dir).unwrap();
    let path = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    std::fs::write(
        path("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl").args(args).current_dir(dir).output().expect("openssl runs");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    openssl(
        &[&["req", "-x509"][..], &key, &["-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=itest-ca"]]
            .concat(),
    );
    openssl(&[&["req"][..], &key, &["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"]].concat());
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "server.ext",
        "-out",
        "server.pem",
    ]);
    (path("ca.pem"), path("server.pem"), path("server.key"))
}

#[tokio::test(flavor = "multi_thread")]
async fn relays_meet_over_tls_and_one_without_the_authority_is_refused() {
    let f = Fixture::new().await;
    let dir = std::env::temp_dir().join(format!("campfire-nats-tls-{}-{}", std::process::id(), f.database.name));
    let (ca, cert, key) = tls_files(&dir);
    let nats = NatsServer::start_with(Auth::Password, &["--tls", "--tlscert", &cert, "--tlskey", &key]).await;
    let over_tls = || {
        let mut config = nats.config(&f);
        config.peers.nats_tls_ca = Some(ca.clone().into());
        config
    };
    let (a, b) = (Relay::start_with(over_tls(), fast_peers()).await, Relay::start_with(over_tls(), fast_peers()).await);
    let mut on_b = typing_watcher(&f, b.addr).await;
    let (mut on_a, a_ref) = broadcaster(&f, a.addr).await;
    broadcast(&f, &mut on_a, &a_ref, "note", json!({"n": 1})).await;
    assert_eq!(on_b.broadcast_event("note").await.payload["payload"]["n"], 1);

    // Without the authority the server's certificate does not verify: the relay does not start.
    let err = refused_at_start(nats.config(&f)).await;
    assert!(err.contains("connecting to NATS failed"), "{err}");
    a.stop().await;
    b.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn relays_authenticate_to_nats_with_an_nkey() {
    let f = Fixture::new().await;
    let seed_file =
        std::env::temp_dir().join(format!("campfire-nats-nkey-{}-{}.seed", std::process::id(), f.database.name));
    let nats = NatsServer::start_with(Auth::Nkey(seed_file.clone()), &[]).await;
    let (a, b) = (relay_on(&f, &nats).await, relay_on(&f, &nats).await);
    let mut on_b = typing_watcher(&f, b.addr).await;
    let (mut on_a, a_ref) = broadcaster(&f, a.addr).await;
    broadcast(&f, &mut on_a, &a_ref, "note", json!({"n": 1})).await;
    assert_eq!(on_b.broadcast_event("note").await.payload["payload"]["n"], 1);

    // Another user's seed is refused.
    std::fs::write(&seed_file, nkeys::KeyPair::new_user().seed().unwrap()).unwrap();
    let err = refused_at_start(nats.config(&f)).await;
    assert!(err.contains("authorization violation"), "{err}");
    a.stop().await;
    b.stop().await;
    let _ = std::fs::remove_file(&seed_file);
    let _ = std::fs::remove_file(seed_file.with_extension("conf"));
}
