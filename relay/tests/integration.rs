//! The relay against a real PostgreSQL with pg_campfire, through real WebSocket clients: resume
//! beyond the send queue, events too large to inline, postgres_changes bindings, both
//! serializers, a typing indicator left on, and several relays (a crashed one, a late one, one
//! that lost LISTEN).

mod common;

use campfire_relay::{Config, Options};
use campfire_testkit::RELAY_ROLE;
use campfire_testkit::ws::{Client, WAIT};
use common::presence::{track_and_type, watch};
use common::{Fixture, Relay, RelayProcess, binary_broadcast};
use serde_json::{Value, json};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread")]
async fn a_resume_longer_than_the_send_queue_arrives_whole_in_order_then_live_events() {
    let f = Fixture::new().await;
    let mut config = f.config();
    config.send_queue = 8;
    let relay = Relay::start_with(config, Options::default()).await;
    let db = f.agent_db().await;
    let first = f.send_as_agent(&db, "before").await;
    let mut client = Client::connect(relay.addr, "2.0.0", &f.agent_token()).await;
    client.join_ok(&f.topic(), json!({"config": {}})).await;
    assert_eq!(f.send_as_agent(&db, "seen").await, first + 1);
    // "before" too may arrive live, if the relay routes it after the join.
    let seen = client.recv_where(|m| m.payload["payload"]["message"]["content"] == "seen").await;
    let cursor = seen.payload["payload"]["cursor"].as_i64().unwrap();
    drop(client);

    // 200 messages while away: 25 times what the queue holds.
    let missed = 200;
    for i in 1..=missed {
        f.send_as_agent(&db, &format!("missed {i}")).await;
    }
    let mut client = Client::connect(relay.addr, "2.0.0", &f.agent_token()).await;
    // The cursor goes where realtime-js forwards it unchanged: config.broadcast.cursor, and the
    // bcast: prefix the seeds use is accepted.
    client
        .join_ok(&format!("bcast:{}", f.topic()), json!({"config": {"broadcast": {"self": false, "cursor": cursor}}}))
        .await;
    let live_db = f.agent_db().await;
    let mut seqs = Vec::new();
    let mut cursors = Vec::new();
    while seqs.len() < missed + 1 {
        if seqs.len() == 100 {
            // A live message in the middle of the replay: it comes after the replay, once.
            f.send_as_agent(&live_db, "live").await;
        }
        let frame = client.broadcast_event("message:created").await;
        seqs.push(frame.payload["payload"]["message"]["seq"].as_i64().unwrap());
        cursors.push(frame.payload["payload"]["cursor"].as_i64().unwrap());
    }
    let expected: Vec<i64> = (first + 2..=first + 2 + missed as i64).collect();
    assert_eq!(seqs, expected, "every missed message once and in order, then the live one");
    assert!(cursors.windows(2).all(|w| w[0] < w[1]));
    assert!(
        client.drain(Duration::from_millis(300)).await.iter().all(|m| m.payload["event"] != "message:created"),
        "no duplicates"
    );
    assert_eq!(relay.metric("campfire_replayed_events_total").await, missed as f64);
    assert_eq!(relay.metric("campfire_disconnects_total{reason=\"slow consumer\"}").await, 0.0);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transaction_too_large_to_inline_in_its_notify_arrives_from_the_log() {
    let f = Fixture::new().await;
    let relay = Relay::start(&f).await;
    let mut client = Client::connect(relay.addr, "1.0.0", &f.agent_token()).await;
    client.join_ok(&f.topic(), json!({"config": {}})).await;
    let db = f.agent_db().await;
    // 20 messages of 1,000 characters in one transaction: far beyond the ~7 KB inline limit.
    let body = "é".repeat(1000);
    db.batch_execute("BEGIN").await.unwrap();
    for _ in 0..20 {
        db.execute("SELECT campfire.send_message($1, $2)", &[&f.conversation, &body]).await.unwrap();
    }
    db.batch_execute("COMMIT").await.unwrap();
    let mut seqs = Vec::new();
    while seqs.len() < 20 {
        let frame = client.broadcast_event("message:created").await;
        assert_eq!(frame.payload["payload"]["message"]["content"], body);
        seqs.push(frame.payload["payload"]["message"]["seq"].as_i64().unwrap());
    }
    assert_eq!(seqs, (1..=20).collect::<Vec<i64>>());
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_changes_bindings_are_echoed_with_ids_then_refused_by_a_system_message() {
    let f = Fixture::new().await;
    let relay = Relay::start(&f).await;
    let mut client = Client::connect(relay.addr, "2.0.0", &f.agent_token()).await;
    let bindings = json!([
        {"event": "INSERT", "schema": "public", "table": "messages", "filter": "conversation_id=eq.1"},
        {"event": "*", "schema": "public", "table": "conversations"}
    ]);
    let (join_ref, reply) = client.join(&f.topic(), json!({"config": {"postgres_changes": bindings}})).await;
    assert_eq!(reply.payload["status"], "ok");
    let echoed = reply.payload["response"]["postgres_changes"].as_array().unwrap().clone();
    assert_eq!(echoed.len(), 2, "never a shorter list than the client asked for");
    for (given, echo) in bindings.as_array().unwrap().iter().zip(&echoed) {
        for key in ["event", "schema", "table", "filter"] {
            assert_eq!(given.get(key), echo.get(key), "{key} echoed verbatim");
        }
        assert!(echo["id"].is_u64(), "each binding gets an integer id: {echo}");
    }
    assert_ne!(echoed[0]["id"], echoed[1]["id"]);
    let state = client.next(WAIT).await.unwrap();
    assert_eq!(state.event, "presence_state");
    let system = client.next(WAIT).await.unwrap();
    assert_eq!((system.event.as_str(), &system.join_ref), ("system", &json!(join_ref)));
    assert_eq!(system.payload["extension"], "postgres_changes");
    assert_eq!(system.payload["status"], "error");
    // Database events still flow as broadcasts on that channel.
    let db = f.agent_db().await;
    f.send_as_agent(&db, "still here").await;
    assert_eq!(client.broadcast_event("message:created").await.payload["payload"]["message"]["content"], "still here");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn broadcast_self_and_ack_in_both_serializers_and_bad_frames_change_nothing() {
    let f = Fixture::new().await;
    let relay = Relay::start(&f).await;
    let typing = format!("{}:typing", f.topic());
    let topic = format!("realtime:{typing}");
    let mut v1 = Client::connect(relay.addr, "1.0.0", &f.agent_token()).await;
    let v1_ref = v1.join_ok(&typing, json!({"config": {"broadcast": {"self": true, "ack": true}}})).await;
    let mut v2 = Client::connect(relay.addr, "2.0.0", &f.secret).await;
    let v2_ref = v2.join_ok(&typing, json!({"config": {"broadcast": {"ack": "TRUE"}}})).await;

    // V1 text broadcast with self and ack: the sender gets the ack and its own echo.
    let r = v1
        .push(
            Some(&v1_ref),
            &topic,
            "broadcast",
            json!({"type": "broadcast", "event": "typing:start", "payload": {"who": "agent"}}),
        )
        .await;
    let (mut ack, mut echo) = (None, None);
    while ack.is_none() || echo.is_none() {
        let frame = v1.next(WAIT).await.expect("the ack and the echo");
        match frame.event.as_str() {
            "phx_reply" => ack = Some(frame),
            "broadcast" => echo = Some(frame),
            _ => {}
        }
    }
    let ack = ack.unwrap();
    assert_eq!((ack.r#ref, ack.payload), (json!(r), json!({"status": "ok", "response": {}})));
    assert_eq!(echo.unwrap().payload["payload"]["who"], "agent");
    let got = v2.broadcast_event("typing:start").await;
    assert_eq!((got.topic.as_str(), &got.join_ref, &got.r#ref), (topic.as_str(), &Value::Null, &Value::Null));

    // V2 binary kind-3 push with ack (string "TRUE" counts), no self: no echo to the sender.
    let frame = binary_broadcast(&v2_ref, "7", &topic, "typing:stop", 1, br#"{"who":"visitor"}"#);
    v2.send_raw(Message::binary(frame)).await;
    let ack = v2.recv_where(|m| m.event == "phx_reply").await;
    assert_eq!((ack.r#ref.clone(), ack.payload["status"].clone()), (json!("7"), json!("ok")));
    assert_eq!(v1.broadcast_event("typing:stop").await.payload["payload"]["who"], "visitor");
    assert!(v2.drain(Duration::from_millis(300)).await.iter().all(|m| m.event != "broadcast"));

    // Bad input: broken binary, raw-binary payloads, binary under vsn 1, non-JSON, wrong shapes,
    // a broadcast without an event. Nothing crashes, other clients are undisturbed.
    v2.send_raw(Message::binary(vec![3, 200, 0, 0, 0, 0, 1])).await;
    v2.send_raw(Message::binary(binary_broadcast(&v2_ref, "8", &topic, "x", 0, &[0xff, 0x00]))).await;
    let reply = v2.recv_where(|m| m.r#ref == json!("8")).await;
    assert_eq!(
        reply.payload["response"]["reason"],
        "only JSON broadcast payloads (encoding 1) are accepted, not raw binary"
    );
    v2.send_raw(Message::binary(binary_broadcast(&v2_ref, "9", &topic, "x", 1, b"{not json"))).await;
    let reply = v2.recv_where(|m| m.r#ref == json!("9")).await;
    assert_eq!(reply.payload["response"]["reason"], "the broadcast payload is not valid JSON");
    v2.send_raw(Message::text("[1,2,3]")).await;
    v2.send_raw(Message::text(r#"["1","2","realtime:x","phx_join",{}"#)).await;
    v1.send_raw(Message::binary(vec![3, 0, 0, 0, 0, 0, 1])).await;
    v1.send_raw(Message::text(r#"{"topic":5}"#)).await;
    let r = v1.push(Some(&v1_ref), &topic, "broadcast", json!({"type": "broadcast", "payload": {}})).await;
    let reply = v1.recv_where(|m| m.r#ref == json!(r)).await;
    assert_eq!(reply.payload["status"], "error");
    // An oversized payload: a clear error to the sender, and the connection lives on.
    let big = "x".repeat(200_000);
    let r = v2
        .push(
            Some(&v2_ref),
            &topic,
            "broadcast",
            json!({"type": "broadcast", "event": "typing:start", "payload": {"big": big}}),
        )
        .await;
    let reply = v2.recv_where(|m| m.r#ref == json!(r)).await;
    assert_eq!(reply.payload["status"], "error");
    assert!(
        reply.payload["response"]["reason"].as_str().unwrap().starts_with("payload_size_exceeded: "),
        "{:?}",
        reply.payload
    );
    for client in [&mut v1, &mut v2] {
        let hb = client.push(None, "phoenix", "heartbeat", json!({})).await;
        let reply = client.recv_where(|m| m.r#ref == json!(hb)).await;
        assert_eq!((reply.topic.as_str(), reply.payload["status"].clone()), ("phoenix", json!("ok")));
    }
    assert!(relay.metric("campfire_malformed_frames_total").await >= 7.0);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_typing_indicator_left_on_stops_after_its_ttl() {
    let f = Fixture::new().await;
    let relay = Relay::start_with(Config { typing_ttl_secs: 1, ..f.config() }, Options::default()).await;
    let typing = format!("{}:typing", f.topic());
    let topic = format!("realtime:{typing}");
    let mut listener = Client::connect(relay.addr, "1.0.0", &f.secret).await;
    listener.join_ok(&typing, json!({"config": {}})).await;
    let mut agent = Client::connect(relay.addr, "1.0.0", &f.agent_token()).await;
    let join_ref = agent.join_ok(&typing, json!({"config": {}})).await;
    let start = json!({"type": "broadcast", "event": "typing:start", "payload": {"who": "agent"}});
    agent.push(Some(&join_ref), &topic, "broadcast", start).await;
    listener.broadcast_event("typing:start").await;
    let started = std::time::Instant::now();
    let stop = listener.broadcast_event("typing:stop").await;
    assert_eq!(
        (&stop.payload["payload"]["who"], &stop.payload["payload"]["endedBy"]),
        (&json!("agent"), &json!("relay"))
    );
    assert!(started.elapsed() >= Duration::from_millis(500), "not before the ttl: {:?}", started.elapsed());
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_relay_that_crashes_has_its_presence_and_typing_ended_by_the_others() {
    let f = Fixture::new().await;
    let mut a =
        RelayProcess::start(&f, &[("CAMPFIRE_PEER_HEARTBEAT_MS", "200"), ("CAMPFIRE_PEER_TIMEOUT_MS", "1000")]).await;
    let options = Options {
        peer_heartbeat: Duration::from_millis(200),
        peer_timeout: Duration::from_millis(1500),
        ..Options::default()
    };
    let b = Relay::start_with(f.config(), options).await;
    let (mut watcher, mut seen) = watch(&f, b.addr).await;
    seen.until(&mut watcher, |_| true).await;
    let mut on_a = Client::connect(a.addr, "2.0.0", &f.secret).await;
    track_and_type(&f, &mut on_a, "visitor-a").await;
    seen.until(&mut watcher, |s| s.contains("visitor-a")).await;
    assert_eq!(watcher.broadcast_event("typing:start").await.payload["payload"]["userId"], "visitor-a");

    // Relay A dies without a word (SIGKILL): B notices the silence and ends what A's client
    // left on, as if the client had disconnected.
    a.kill();
    let (mut stopped, mut left) = (None, false);
    while stopped.is_none() || !left {
        let frame = watcher.next(WAIT).await.expect("typing:stop and a presence leave");
        if frame.event == "broadcast" && frame.payload["event"] == "typing:stop" {
            stopped = Some(frame.payload["payload"].clone());
        } else if frame.event == "presence_diff" && frame.payload["leaves"].get("visitor-a").is_some() {
            left = true;
        }
    }
    assert_eq!(stopped.unwrap(), json!({"userId": "visitor-a", "isTyping": false, "endedBy": "relay"}));
    assert!(b.metric("campfire_peers_expired_total").await >= 1.0);
    // A late joiner on B does not see the dead relay's visitor either.
    let mut late = Client::connect(b.addr, "2.0.0", &f.agent_token()).await;
    late.join_ok(&format!("{}:presence", f.topic()), json!({"config": {}})).await;
    let state = late.recv_where(|m| m.event == "presence_state").await;
    assert!(state.payload.get("visitor-a").is_none(), "{:?}", state.payload);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_relay_started_later_learns_presence_and_a_relay_stopping_takes_its_presence_along() {
    let f = Fixture::new().await;
    let a = Relay::start(&f).await;
    let mut on_a = Client::connect(a.addr, "2.0.0", &f.secret).await;
    track_and_type(&f, &mut on_a, "early-visitor").await;

    // B starts after the track: it asks its peers for their presence as it begins to listen.
    let b = Relay::start(&f).await;
    let (mut watcher, mut seen) = watch(&f, b.addr).await;
    seen.until(&mut watcher, |s| s.contains("early-visitor")).await;

    // A shuts down gracefully: B drops A's presence at once (well before any peer timeout).
    a.stop().await;
    seen.until(&mut watcher, |s| !s.contains("early-visitor")).await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_relay_that_lost_listen_resyncs_presence_it_missed_from_its_peers() {
    let f = Fixture::new().await;
    let admin = f.db().await;
    admin
        .batch_execute(
            "DO $$ BEGIN
                 IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'campfire_relay_itest_b') THEN
                     CREATE ROLE campfire_relay_itest_b LOGIN IN ROLE campfire_relay;
                 END IF;
             END $$; ALTER ROLE campfire_relay_itest_b LOGIN",
        )
        .await
        .unwrap();
    let a = Relay::start(&f).await;
    let mut config_b = f.config();
    config_b.database_url = f.relay_url().replace(&format!("user={RELAY_ROLE}"), "user=campfire_relay_itest_b");
    let b = Relay::start_with(config_b, Options::default()).await;
    let (mut watcher, mut seen) = watch(&f, b.addr).await;
    let mut leaving = Client::connect(a.addr, "2.0.0", &f.secret).await;
    track_and_type(&f, &mut leaving, "leaving").await;
    seen.until(&mut watcher, |s| s.contains("leaving")).await;

    // B's LISTEN connection is cut and cannot come back for now.
    admin.batch_execute("ALTER ROLE campfire_relay_itest_b NOLOGIN").await.unwrap();
    let killed = admin
        .execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'campfire_relay_itest_b' AND query LIKE 'LISTEN%'", &[])
        .await
        .unwrap();
    assert_eq!(killed, 1);
    let deadline = tokio::time::Instant::now() + WAIT;
    while common::http(b.addr, "GET", "/healthz", &[], "").await.0 != 503 {
        assert!(tokio::time::Instant::now() < deadline, "B never noticed losing LISTEN");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Meanwhile on A: one visitor leaves, another arrives. B hears none of it.
    drop(leaving);
    let mut arriving = Client::connect(a.addr, "2.0.0", &f.secret).await;
    track_and_type(&f, &mut arriving, "arriving").await;
    assert!(watcher.drain(Duration::from_millis(300)).await.iter().all(|m| m.event != "presence_diff"), "B is deaf");

    // Back: B catches up from a fresh state exchange.
    admin.batch_execute("ALTER ROLE campfire_relay_itest_b LOGIN").await.unwrap();
    seen.until(&mut watcher, |s| s.contains("arriving") && !s.contains("leaving")).await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn health_and_metrics_report_what_the_relay_holds() {
    let f = Fixture::new().await;
    let relay = Relay::start(&f).await;
    let mut client = Client::connect(relay.addr, "2.0.0", &f.agent_token()).await;
    client.join_ok(&f.topic(), json!({"config": {}})).await;
    let db = f.agent_db().await;
    f.send_as_agent(&db, "counted").await;
    client.broadcast_event("message:created").await;
    let health: Value = serde_json::from_str(&relay.get("/healthz/details").await).unwrap();
    assert_eq!(health["listen_connected"], true);
    assert_eq!(health["lag"], 0);
    assert!(health["shards"]["default"]["last_event_id"].as_i64().unwrap() > 0);
    let metrics = relay.get("/metrics").await;
    // One message is three events: message:created twice and conversation:updated.
    assert!(relay.metric("campfire_events_in_total").await >= 3.0);
    for name in [
        "campfire_connections 1",
        "campfire_channels 1",
        "campfire_db_link_up{connection=\"listen\",shard=\"default\"} 1",
        "campfire_db_link_up{connection=\"query\",shard=\"default\"} 1",
        "campfire_send_queue_depth ",
        "campfire_send_queue_max_depth ",
        "campfire_deliveries_total ",
        "campfire_frames_written_total ",
        "campfire_peer_messages_out_total ",
    ] {
        assert!(metrics.contains(name), "{name:?} in\n{metrics}");
    }
    drop(client);
    let deadline = tokio::time::Instant::now() + WAIT;
    while relay.metric("campfire_connections").await != 0.0 {
        assert!(tokio::time::Instant::now() < deadline, "disconnect not counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let metrics = relay.get("/metrics").await;
    assert!(metrics.contains("campfire_disconnects_total{reason="), "disconnects are counted by reason:\n{metrics}");
    relay.stop().await;
}
