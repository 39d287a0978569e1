//! The relay when the network misbehaves: a database link black-holed (no FIN, no RST), the log
//! pruned under a resuming client, a client that never reads.

mod common;

use campfire_relay::Options;
use campfire_testkit::ws::{Client, Received};
use common::proxy::Proxy;
use common::{Fixture, Relay, health_status, tcp_connection_held, wait_until};
use serde_json::json;
use std::net::SocketAddr;
use std::time::Instant;

async fn health_is(addr: SocketAddr, status: u16) -> bool {
    health_status(addr).await == status
}

#[tokio::test(flavor = "multi_thread")]
async fn a_black_holed_database_link_is_noticed_reported_and_replaced_without_losing_an_event() {
    let f = Fixture::new().await;
    let proxy = Proxy::start(f.cluster_addr()).await;
    let mut config = f.config();
    config.database_url = f.relay_url_via(proxy.addr);
    config.db_probe_interval_ms = 200;
    config.db_timeout_ms = 500;
    let relay = Relay::start_with(config, Options::default()).await;
    let mut client = Client::connect(relay.addr, "2.0.0", &f.agent_token()).await;
    client.join_ok(&f.topic(), json!({"config": {}})).await;
    let db = f.agent_db().await; // straight to the cluster: writers are not behind the proxy
    let before = f.send_as_agent(&db, "before").await;
    let seq = |frame: &Received| frame.payload["payload"]["message"]["seq"].as_i64().unwrap();
    assert_eq!(seq(&client.broadcast_event("message:created").await), before);

    // Both of the relay's connections go silent. Health answers at once, and soon says so.
    proxy.black_hole();
    let to_unhealthy = wait_until("/healthz reports the silent link", || health_is(relay.addr, 503)).await;
    let listen_down = r#"campfire_db_link_up{connection="listen",shard="default"}"#;
    let relay_ref = &relay;
    let to_detected = wait_until("the LISTEN link is given up", move || async move {
        relay_ref.metric(listen_down).await == 0.0
            && relay_ref
                .metric(r#"campfire_db_link_failures_total{connection="listen",reason="timeout",shard="default"}"#)
                .await
                >= 1.0
    })
    .await;

    // Committed while the relay hears nothing.
    let missed = 20;
    for i in 1..=missed {
        f.send_as_agent(&db, &format!("while silent {i}")).await;
    }
    // The path comes back (for new connections: the silent ones stay dead, as after a lost NAT
    // entry). The relay connects anew and replays from its cursor.
    proxy.restore();
    let restored = Instant::now();
    wait_until("healthy again", || health_is(relay.addr, 200)).await;
    let mut seqs = Vec::new();
    while seqs.len() < missed {
        seqs.push(seq(&client.broadcast_event("message:created").await));
    }
    let to_delivered = restored.elapsed();
    assert_eq!(seqs, (before + 1..=before + missed as i64).collect::<Vec<_>>(), "every event once, in order");
    let after = f.send_as_agent(&db, "live again").await;
    assert_eq!(seq(&client.broadcast_event("message:created").await), after, "live delivery resumed, no duplicates");
    assert_eq!(relay.metric(listen_down).await, 1.0);
    eprintln!(
        "black hole -> /healthz 503: {to_unhealthy:?}; -> LISTEN given up: {:?}; restore -> all {missed} delivered: {to_delivered:?}",
        to_unhealthy + to_detected
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn health_is_never_ok_when_its_own_check_fails() {
    let f = Fixture::new().await;
    let relay = Relay::start(&f).await;
    let admin = f.db().await;
    // LISTEN stays up; only the health check's own query fails.
    admin.batch_execute("REVOKE EXECUTE ON FUNCTION campfire.log_head() FROM campfire_relay").await.unwrap();
    assert_eq!(health_status(relay.addr).await, 503);
    let (status, body) = common::http(relay.addr, "GET", "/healthz/details", &[], "").await;
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (status, &health["status"], &health["shards"]["default"]["log_head"]),
        (503, &json!("degraded"), &json!(null)),
        "{health}"
    );
    assert_eq!(health["listen_connected"], true);
    admin.batch_execute("GRANT EXECUTE ON FUNCTION campfire.log_head() TO campfire_relay").await.unwrap();
    assert_eq!(health_status(relay.addr).await, 200);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pruning_during_a_paced_replay_is_announced_never_skipped_silently() {
    let f = Fixture::new().await;
    let mut config = f.config();
    config.send_queue = 16;
    let relay = Relay::start_with(config, Options::default()).await;
    let db = f.agent_db().await;
    let mut client = Client::connect(relay.addr, "2.0.0", &f.agent_token()).await;
    client.join_ok(&f.topic(), json!({"config": {}})).await;
    let first = f.send_as_agent(&db, "seen").await;
    let cursor = client.broadcast_event("message:created").await.payload["payload"]["cursor"].as_i64().unwrap();
    drop(client);

    // Two and a half replay pages of large messages: far more than socket buffers hold, so the
    // replay is still reading the log when the prune comes.
    let missed: i32 = 2500;
    db.execute(
        "SELECT campfire.send_message($1, repeat('x', 4000)) FROM generate_series(1, $2::int)",
        &[&f.conversation, &missed],
    )
    .await
    .unwrap();
    let mut client = Client::connect_with_small_window(relay.addr, "2.0.0", &f.agent_token()).await;
    client.join_ok(&f.topic(), json!({"config": {"broadcast": {"cursor": cursor}}})).await;
    let mut seqs =
        vec![client.broadcast_event("message:created").await.payload["payload"]["message"]["seq"].as_i64().unwrap()];
    assert_eq!(seqs[0], first + 1);

    // Everything committed so far is pruned while the replay waits for this client to read.
    let service = f.db_as(&json!({"role": "service_role"})).await;
    service.execute("SELECT campfire.prune_events(interval '0 seconds')", &[]).await.unwrap();
    let last = f.send_as_agent(&db, "after the prune").await;

    // Each gap in what arrives must come after a cursor_too_old: the client knows to reload.
    let mut told = 0;
    while seqs.last() != Some(&last) {
        let frame = client.recv_where(|m| m.event == "system" || m.payload["event"] == "message:created").await;
        if frame.event == "system" {
            assert!(frame.payload["message"].as_str().unwrap().starts_with("cursor_too_old:"), "{:?}", frame.payload);
            told += 1;
            continue;
        }
        let seq = frame.payload["payload"]["message"]["seq"].as_i64().unwrap();
        let previous = *seqs.last().unwrap();
        assert!(seq > previous, "in order, no duplicates: {seq} after {previous}");
        assert!(seq == previous + 1 || told > 0, "seq {previous} then {seq}: events skipped without a word");
        seqs.push(seq);
    }
    let gap = seqs.windows(2).any(|w| w[1] != w[0] + 1);
    assert!(gap, "the prune should have removed events the replay had not sent yet ({} arrived)", seqs.len());
    assert_eq!(told, 1, "told once");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_never_reads_is_gone_within_the_write_timeout() {
    let f = Fixture::new().await;
    let mut config = f.config();
    config.write_timeout_ms = 1000;
    let relay = Relay::start_with(config, Options::default()).await;
    let room = format!("org:{}:agents:presence", f.org);
    let mut silent = Client::connect_with_small_window(relay.addr, "2.0.0", &f.agent_token()).await;
    silent.join_ok(&room, json!({"config": {}})).await;
    let mut sender = Client::connect(relay.addr, "2.0.0", &f.agent_token()).await;
    let join_ref = sender.join_ok(&room, json!({"config": {}})).await;

    // More than the socket buffers hold, far less than the send queue: the relay's write blocks
    // while its queue still has room.
    let big = "x".repeat(60_000);
    for _ in 0..100 {
        sender
            .push(
                Some(&join_ref),
                &format!("realtime:{room}"),
                "broadcast",
                json!({"type": "broadcast", "event": "burst", "payload": {"data": big}}),
            )
            .await;
    }
    let burst_sent = Instant::now();
    let (client_end, relay_end) = (silent.local_addr(), relay.addr);
    wait_until("the relay lets go of the silent client's socket", move || async move {
        !tcp_connection_held(relay_end, client_end)
    })
    .await;
    eprintln!("burst sent -> silent client's socket gone: {:?} (write timeout 1 s)", burst_sent.elapsed());
    // Its session is over too. Whether the relay's write timeout ("slow consumer") or the
    // kernel's (a transport error) came first depends on how long the writes kept succeeding.
    let relay_ref = &relay;
    wait_until("the silent client's session ends", move || async move {
        relay_ref.metric("campfire_connections ").await == 1.0
    })
    .await;
    // The others are unaffected.
    let hb = sender.push(None, "phoenix", "heartbeat", json!({})).await;
    assert_eq!(sender.recv_where(|m| m.r#ref == json!(hb)).await.payload["status"], "ok");
    relay.stop().await;
}

/// An API connection whose link goes silent (the proxy keeps acknowledging, as a NAT box that
/// lost its entry does, so the kernel's user timeout never fires): the call on it is answered
/// 503 in bounded time, and once the path is back the next call opens a new connection.
#[tokio::test(flavor = "multi_thread")]
async fn a_silent_api_connection_fails_its_call_in_time_and_is_replaced() {
    let f = Fixture::new().await;
    let proxy = Proxy::start(f.cluster_addr()).await;
    let mut config = f.config();
    config.database_url = f.relay_url_via(proxy.addr);
    config.db_timeout_ms = 500;
    config.api_connections = 1;
    let relay = Relay::start_with(config, Options::default()).await;
    let bearer = format!("Bearer {}", f.agent_token());
    let history = format!("/api/dashboard/conversations/{}/messages", f.conversation);
    let headers = [("authorization", bearer.as_str())];
    let call = || common::http(relay.addr, "GET", &history, &headers, "");
    assert_eq!(call().await.0, 200, "the API connection is open");

    proxy.black_hole();
    let started = Instant::now();
    let (status, body) = tokio::time::timeout(std::time::Duration::from_secs(20), call())
        .await
        .expect("the call on the silent connection was never answered");
    assert_eq!(status, 503, "{body}");
    let answered = started.elapsed();
    assert!(answered < std::time::Duration::from_secs(5), "answered after {answered:?}");

    proxy.restore();
    wait_until("the API answers again", || async { call().await.0 == 200 }).await;
    eprintln!("silent API connection -> 503 after {answered:?}");
}
