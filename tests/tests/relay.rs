//! The relay against a real PostgreSQL with pg_campfire, through real WebSocket clients.

use campfire_tests::relay::{Client, RelayHandle, WAIT, agent_token, blocking, conversation_topic};
use campfire_tests::{TestDb, agent, service, visitor};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

struct Fixture {
    db: Arc<TestDb>,
    org: uuid::Uuid,
    agent: uuid::Uuid,
    conversation: uuid::Uuid,
    session: uuid::Uuid,
    secret: String,
}

async fn fixture() -> Fixture {
    blocking(|| {
        let db = TestDb::new();
        let (org, agent) = db.organization_with_agent("acme");
        let row = db
            .connect()
            .query_one("SELECT conversation_id, widget_session_id, session_secret FROM campfire.start_widget_session($1, 'visitor-a')", &[&org])
            .unwrap();
        Fixture { db: Arc::new(db), org, agent, conversation: row.get(0), session: row.get(1), secret: row.get(2) }
    })
    .await
}

impl Fixture {
    async fn send_as_agent(&self, content: &str) -> i64 {
        let (db, agent_id, conversation, content) =
            (self.db.clone(), self.agent, self.conversation, content.to_owned());
        blocking(move || {
            db.connect_as(&agent(agent_id))
                .query_one("SELECT seq FROM campfire.send_message($1, $2)", &[&conversation, &content])
                .unwrap()
                .get(0)
        })
        .await
    }

    fn topic(&self) -> String {
        conversation_topic(self.org, self.conversation)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_committed_message_reaches_a_v2_subscriber_as_a_broadcast() {
    let f = fixture().await;
    let relay = RelayHandle::start(&f.db).await;
    let mut client = Client::connect(relay.addr, "2.0.0", &agent_token(f.agent)).await;
    let (join_ref, reply) =
        client.join(&format!("bcast:{}", f.topic()), json!({"config": {"broadcast": {"self": false}}})).await;
    assert_eq!(reply.payload, json!({"status": "ok", "response": {"postgres_changes": []}}));
    assert_eq!(reply.join_ref, json!(join_ref));
    let state = client.next(WAIT).await.unwrap();
    assert_eq!(
        (state.event.as_str(), &state.payload, &state.join_ref),
        ("presence_state", &json!({}), &json!(join_ref))
    );

    let seq = f.send_as_agent("hello from the database").await;
    let frame = client.broadcast_event("message:created").await;
    assert_eq!(frame.topic, format!("realtime:bcast:{}", f.topic()), "delivered on the client's own join topic");
    assert_eq!(frame.join_ref, Value::Null);
    assert_eq!(frame.payload["type"], "broadcast");
    let message = &frame.payload["payload"]["message"];
    assert_eq!(message["content"], "hello from the database");
    assert_eq!(message["seq"], seq);
    assert!(frame.payload["payload"]["cursor"].as_i64().unwrap() > 0, "every database event carries its cursor");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v1_clients_get_objects_without_join_ref_and_heartbeat_replies() {
    let f = fixture().await;
    let relay = RelayHandle::start(&f.db).await;
    let mut client = Client::connect(relay.addr, "1.0.0", &agent_token(f.agent)).await;
    let r = client.push(None, "phoenix", "heartbeat", json!({})).await;
    let reply = client.next(WAIT).await.unwrap();
    assert_eq!((reply.topic.as_str(), reply.event.as_str(), &reply.r#ref), ("phoenix", "phx_reply", &json!(r)));
    assert_eq!(reply.payload["status"], "ok");
    let (_, reply) = client.join(&f.topic(), json!({"config": {}})).await;
    assert_eq!(reply.payload["status"], "ok");
    f.send_as_agent("v1 hello").await;
    let frame = client.broadcast_event("message:created").await;
    assert_eq!(frame.payload["payload"]["message"]["content"], "v1 hello");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn joins_are_refused_with_clear_reasons() {
    let f = fixture().await;
    let (db, org) = (f.db.clone(), f.org);
    let (_, other_session) = blocking(move || db.widget_session(org, "visitor-b")).await;
    let relay = RelayHandle::start(&f.db).await;

    // Visitor B (by its secret-derived claims) may not join visitor A's conversation.
    let other_secret: String = {
        let db = f.db.clone();
        blocking(move || {
            db.connect()
                .query_one("SELECT session_secret FROM campfire.start_widget_session($1, 'visitor-b')", &[&org])
                .unwrap()
                .get(0)
        })
        .await
    };
    let _ = other_session;
    let mut intruder = Client::connect(relay.addr, "2.0.0", &other_secret).await;
    let (_, reply) = intruder.join(&f.topic(), json!({"config": {}})).await;
    assert_eq!(reply.payload["status"], "error");
    let reason = reply.payload["response"]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("Unauthorized:") && reason.contains("visitors may only join their own conversation"),
        "{reason}"
    );

    // The owner may, with the same kind of credential.
    let mut owner = Client::connect(relay.addr, "2.0.0", &f.secret).await;
    assert_eq!(owner.join(&f.topic(), json!({"config": {}})).await.1.payload["status"], "ok");

    let mut agent = Client::connect(relay.addr, "2.0.0", &agent_token(f.agent)).await;
    let (_, reply) = agent.join("org:not-a-uuid", json!({"config": {}})).await;
    assert!(
        reply.payload["response"]["reason"].as_str().unwrap().starts_with("InvalidChannelName:"),
        "{:?}",
        reply.payload
    );
    let (_, reply) = agent.join(&f.topic(), json!({"config": {}, "access_token": "not-a-jwt"})).await;
    assert_eq!(reply.payload["response"]["reason"], "MalformedJWT: The token provided is not a valid JWT");
    let expired = campfire_relay::auth::sign(
        campfire_tests::relay::JWT_SECRET.as_bytes(),
        &json!({"role": "authenticated", "sub": f.agent, "exp": 1}),
    );
    let (_, reply) = agent.join(&f.topic(), json!({"config": {}, "access_token": expired})).await;
    assert_eq!(reply.payload["response"]["reason"], "InvalidJWTToken: Token has expired");
    let r = agent
        .push(
            Some("99"),
            "realtime:never-joined",
            "broadcast",
            json!({"type": "broadcast", "event": "x", "payload": {}}),
        )
        .await;
    let reply = agent.recv_where(|m| m.r#ref == json!(r)).await;
    assert_eq!(reply.payload["response"]["reason"], "unmatched topic");
    // Malformed frames are ignored and the connection lives on.
    agent.send_raw(Message::text("{not json")).await;
    agent.send_raw(Message::binary(vec![9u8, 1, 2])).await;
    let r = agent.push(None, "phoenix", "heartbeat", json!({})).await;
    assert_eq!(agent.recv_where(|m| m.r#ref == json!(r)).await.payload["status"], "ok");

    // No usable credential at connect time: refused before the upgrade.
    let refused = tokio_tungstenite::connect_async(relay.url("2.0.0", "garbage")).await;
    assert!(refused.is_err());
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn typing_broadcasts_reach_the_other_side_and_end_when_the_sender_vanishes() {
    let f = fixture().await;
    let relay = RelayHandle::start(&f.db).await;
    let typing = format!("{}:typing", f.topic());
    let mut agent = Client::connect(relay.addr, "2.0.0", &agent_token(f.agent)).await;
    agent.join(&typing, json!({"config": {}})).await;
    let mut widget = Client::connect(relay.addr, "2.0.0", &f.secret).await;
    let (join_ref, _) = widget.join(&typing, json!({"config": {"broadcast": {"ack": true}}})).await;

    // realtime-js sends broadcasts as binary kind-3 frames under vsn 2.0.0.
    let topic = format!("realtime:{typing}");
    let body = br#"{"userId":"visitor-a","isTyping":true}"#;
    let mut frame = vec![3u8, join_ref.len() as u8, 2, topic.len() as u8, "typing:start".len() as u8, 0, 1];
    frame.extend_from_slice(join_ref.as_bytes());
    frame.extend_from_slice(b"42");
    frame.extend_from_slice(topic.as_bytes());
    frame.extend_from_slice(b"typing:start");
    frame.extend_from_slice(body);
    widget.send_raw(Message::binary(frame)).await;
    let ack = widget.recv_where(|m| m.event == "phx_reply").await;
    assert_eq!((ack.r#ref, ack.payload["status"].clone()), (json!("42"), json!("ok")));
    let started = agent.broadcast_event("typing:start").await;
    assert_eq!(started.payload["payload"], json!({"userId": "visitor-a", "isTyping": true}));
    assert!(
        widget.drain(Duration::from_millis(300)).await.iter().all(|m| m.event != "broadcast"),
        "self is false: no echo"
    );

    // The widget disappears mid-typing: the relay ends the indicator.
    drop(widget);
    let stopped = agent.broadcast_event("typing:stop").await;
    assert_eq!(stopped.payload["payload"]["isTyping"], false);
    assert_eq!(stopped.payload["payload"]["endedBy"], "relay");

    // A viewer-less agent channel for typing only: broadcasting on the conversation channel is refused.
    let (conv_join, _) = agent.join(&f.topic(), json!({"config": {}})).await;
    let r = agent
        .push(
            Some(&conv_join),
            &format!("realtime:{}", f.topic()),
            "broadcast",
            json!({"type": "broadcast", "event": "message:created", "payload": {"forged": true}}),
        )
        .await;
    let reply = agent.recv_where(|m| m.r#ref == json!(r)).await;
    assert!(reply.payload["response"]["reason"].as_str().unwrap().starts_with("Unauthorized: you may not broadcast"));
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn presence_syncs_between_clients_and_leaves_when_a_connection_dies() {
    let f = fixture().await;
    let relay = RelayHandle::start(&f.db).await;
    let room = format!("org:{}:agents:presence", f.org);
    let mut first = Client::connect(relay.addr, "2.0.0", &agent_token(f.agent)).await;
    let (first_ref, _) = first.join(&room, json!({"config": {"presence": {"key": "agent-1"}}})).await;
    let r = first
        .push(
            Some(&first_ref),
            &format!("realtime:{room}"),
            "presence",
            json!({"type": "presence", "event": "track", "payload": {"name": "Ann"}}),
        )
        .await;
    // The diff (to everyone, the tracker included) and the reply, in either order.
    let mut got = Vec::new();
    while got.len() < 2 {
        got.push(first.recv_where(|m| m.r#ref == json!(r) || m.event == "presence_diff").await);
    }
    let reply = got.iter().find(|m| m.event == "phx_reply").expect("a reply to track");
    assert_eq!(reply.payload, json!({"status": "ok", "response": {}}));
    let diff = got.iter().find(|m| m.event == "presence_diff").expect("the tracker gets the diff too");
    assert_eq!(diff.payload["joins"]["agent-1"]["metas"][0]["name"], "Ann");

    let second_agent = uuid::Uuid::new_v4();
    let (db, org) = (f.db.clone(), f.org);
    blocking(move || {
        db.connect_as(&campfire_tests::service())
            .execute("SELECT campfire.add_member($1, $2, 'agent')", &[&org, &second_agent])
            .unwrap();
    })
    .await;
    let mut second = Client::connect(relay.addr, "2.0.0", &agent_token(second_agent)).await;
    second.join(&room, json!({"config": {"presence": {"key": "agent-2"}}})).await;
    let state = second.recv_where(|m| m.event == "presence_state").await;
    assert_eq!(state.payload["agent-1"]["metas"][0]["name"], "Ann");
    assert!(state.payload["agent-1"]["metas"][0]["phx_ref"].is_string());

    drop(first);
    let leave = second.recv_where(|m| m.event == "presence_diff").await;
    assert_eq!(leave.payload["leaves"]["agent-1"]["metas"][0]["name"], "Ann");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_resuming_from_a_cursor_gets_what_it_missed_in_order_then_live_events() {
    let f = fixture().await;
    let relay = RelayHandle::start(&f.db).await;
    let mut client = Client::connect(relay.addr, "2.0.0", &agent_token(f.agent)).await;
    client.join(&f.topic(), json!({"config": {}})).await;
    f.send_as_agent("seen").await;
    let cursor = client.broadcast_event("message:created").await.payload["payload"]["cursor"].as_i64().unwrap();
    drop(client);

    for i in 1..=5 {
        f.send_as_agent(&format!("missed {i}")).await;
    }
    let mut client = Client::connect(relay.addr, "2.0.0", &agent_token(f.agent)).await;
    client.join(&f.topic(), json!({"config": {"cursor": cursor}})).await;
    let (db, sender, conversation) = (f.db.clone(), f.agent, f.conversation);
    let live = tokio::spawn(async move {
        blocking(move || {
            db.connect_as(&agent(sender))
                .query_one("SELECT campfire.send_message($1, 'live')", &[&conversation])
                .unwrap();
        })
        .await
    });
    let mut contents = Vec::new();
    let mut cursors = Vec::new();
    while contents.len() < 6 {
        let frame = client.broadcast_event("message:created").await;
        contents.push(frame.payload["payload"]["message"]["content"].as_str().unwrap().to_owned());
        cursors.push(frame.payload["payload"]["cursor"].as_i64().unwrap());
    }
    live.await.unwrap();
    assert_eq!(contents, ["missed 1", "missed 2", "missed 3", "missed 4", "missed 5", "live"]);
    assert!(cursors.windows(2).all(|w| w[0] < w[1]), "in cursor order: {cursors:?}");
    assert!(
        client.drain(Duration::from_millis(300)).await.iter().all(|m| m.payload["event"] != "message:created"),
        "no duplicates"
    );
    relay.stop().await;
}

/// A message's conversation update shares a log row with its list event (two ids in one row):
/// an agent resuming on the organization channel gets each missed update once, in order, also
/// from a cursor that sits on a message's own conversation-channel event.
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_resuming_on_the_organization_channel_gets_each_missed_update_once() {
    let f = fixture().await;
    let relay = RelayHandle::start(&f.db).await;
    let org_topic = format!("org:{}", f.org);
    let mut client = Client::connect(relay.addr, "2.0.0", &agent_token(f.agent)).await;
    client.join(&f.topic(), json!({"config": {}})).await;
    f.send_as_agent("seen").await;
    // The conversation channel's event is the row before the update: a cursor between the two.
    let cursor = client.broadcast_event("message:created").await.payload["payload"]["cursor"].as_i64().unwrap();
    drop(client);

    for i in 1..=3 {
        f.send_as_agent(&format!("missed {i}")).await;
    }
    let mut client = Client::connect(relay.addr, "2.0.0", &agent_token(f.agent)).await;
    client.join(&org_topic, json!({"config": {"cursor": cursor}})).await;
    let mut previews = Vec::new();
    let mut cursors = Vec::new();
    while previews.len() < 4 {
        let frame = client.broadcast_event("conversation:updated").await;
        previews.push(frame.payload["payload"]["conversation"]["last_message_preview"].as_str().unwrap().to_owned());
        cursors.push(frame.payload["payload"]["cursor"].as_i64().unwrap());
    }
    assert_eq!(previews, ["seen", "missed 1", "missed 2", "missed 3"]);
    assert_eq!(cursors[0], cursor + 1, "the update right after the cursor's event");
    assert!(cursors.windows(2).all(|w| w[0] < w[1]), "in cursor order: {cursors:?}");
    assert!(
        client.drain(Duration::from_millis(300)).await.iter().all(|m| m.payload["event"] != "conversation:updated"),
        "no duplicates"
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_listen_connection_during_a_stream_loses_and_duplicates_nothing() {
    let f = fixture().await;
    let relay = RelayHandle::start(&f.db).await;
    let mut client = Client::connect(relay.addr, "2.0.0", &agent_token(f.agent)).await;
    client.join(&f.topic(), json!({"config": {}})).await;
    let total = 60;
    let (db, sender, conversation) = (f.db.clone(), f.agent, f.conversation);
    let writer = tokio::spawn(blocking(move || {
        let mut writer = db.connect_as(&agent(sender));
        let mut killer = db.connect();
        for i in 1..=total {
            writer.query_one("SELECT campfire.send_message($1, $2)", &[&conversation, &format!("m{i}")]).unwrap();
            if i % 20 == 10 {
                killer
                    .execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'campfire_relay_test' AND query LIKE 'LISTEN%'", &[])
                    .unwrap();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }));
    let mut seqs = Vec::new();
    while seqs.len() < total {
        let frame = client.broadcast_event("message:created").await;
        seqs.push(frame.payload["payload"]["message"]["seq"].as_i64().unwrap());
    }
    writer.await.unwrap();
    assert_eq!(seqs, (1..=total as i64).collect::<Vec<_>>(), "every message once, in order");
    assert!(client.drain(Duration::from_millis(500)).await.iter().all(|m| m.payload["event"] != "message:created"));
    let metrics = relay.get("/metrics").await.unwrap();
    let reconnects = metrics.lines().find(|l| l.starts_with("campfire_listen_reconnects_total")).unwrap();
    assert_ne!(
        reconnects.trim_end(),
        r#"campfire_listen_reconnects_total{shard="default"} 0"#,
        "the LISTEN connection really was killed"
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_relays_on_one_database_behave_as_one() {
    let f = fixture().await;
    let a = RelayHandle::start(&f.db).await;
    let b = RelayHandle::start(&f.db).await;
    let typing = format!("{}:typing", f.topic());
    let mut on_a = Client::connect(a.addr, "2.0.0", &f.secret).await;
    let (a_ref, _) = on_a.join(&typing, json!({"config": {}})).await;
    let mut on_b = Client::connect(b.addr, "2.0.0", &agent_token(f.agent)).await;
    on_b.join(&typing, json!({"config": {}})).await;
    let mut events_b = Client::connect(b.addr, "2.0.0", &agent_token(f.agent)).await;
    events_b.join(&f.topic(), json!({"config": {}})).await;

    on_a.push(
        Some(&a_ref),
        &format!("realtime:{typing}"),
        "broadcast",
        json!({"type": "broadcast", "event": "typing:start", "payload": {"who": "visitor"}}),
    )
    .await;
    assert_eq!(on_b.broadcast_event("typing:start").await.payload["payload"]["who"], "visitor");

    f.send_as_agent("to both relays").await;
    assert_eq!(
        events_b.broadcast_event("message:created").await.payload["payload"]["message"]["content"],
        "to both relays"
    );

    let presence = format!("{}:presence", f.topic());
    let (p_ref, _) = on_a.join(&presence, json!({"config": {"presence": {"key": "visitor-a"}}})).await;
    let mut watcher = Client::connect(b.addr, "2.0.0", &agent_token(f.agent)).await;
    watcher.join(&presence, json!({"config": {}})).await;
    on_a.push(
        Some(&p_ref),
        &format!("realtime:{presence}"),
        "presence",
        json!({"type": "presence", "event": "track", "payload": {"online": true}}),
    )
    .await;
    let diff = watcher.recv_where(|m| m.event == "presence_diff").await;
    assert_eq!(diff.payload["joins"]["visitor-a"]["metas"][0]["online"], true);
    let mut late = Client::connect(b.addr, "2.0.0", &agent_token(f.agent)).await;
    late.join(&presence, json!({"config": {}})).await;
    let state = late.recv_where(|m| m.event == "presence_state").await;
    assert_eq!(state.payload["visitor-a"]["metas"][0]["online"], true, "presence joined on A is in B's state");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_too_slow_to_read_is_disconnected_with_a_reason() {
    let f = fixture().await;
    // Rates high enough for the floods below, which are this test's means, not its subject.
    let relay = RelayHandle::start_with(&f.db, |c| {
        c.send_queue = 4;
        c.limits.max_heartbeats_per_window = 1000;
        c.limits.max_broadcasts_per_window = 1000;
    })
    .await;
    let room = format!("org:{}:agents:presence", f.org);
    let mut slow = Client::connect(relay.addr, "2.0.0", &agent_token(f.agent)).await;
    slow.join(&room, json!({"config": {}})).await;
    let mut fast = Client::connect(relay.addr, "2.0.0", &agent_token(f.agent)).await;
    let (r, _) = fast.join(&room, json!({"config": {}})).await;
    // The slow client reads nothing but keeps sending heartbeats; a large burst overflows its
    // queue (and the socket buffers).
    let big = "x".repeat(60_000);
    for _ in 0..200 {
        fast.push(
            Some(&r),
            &format!("realtime:{room}"),
            "broadcast",
            json!({"type": "broadcast", "event": "burst", "payload": {"data": big}}),
        )
        .await;
        slow.push(None, "phoenix", "heartbeat", json!({})).await;
    }
    let cut = "campfire_disconnects_total{reason=\"slow consumer\"} 1";
    let deadline = tokio::time::Instant::now() + campfire_tests::relay::WAIT;
    while !relay.get("/metrics").await.unwrap().contains(cut) {
        assert!(tokio::time::Instant::now() < deadline, "the slow client was never cut");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Input the relay has stopped reading: closing the socket over it would reset the connection
    // and destroy the close frame still queued behind the burst.
    for _ in 0..3 {
        slow.push(None, "phoenix", "heartbeat", json!({})).await;
    }
    // The client reads at last: the burst's frames, then the close frame naming the reason.
    let close = loop {
        match tokio::time::timeout(campfire_tests::relay::WAIT, futures_util::StreamExt::next(&mut slow.ws)).await {
            Ok(Some(Ok(Message::Close(frame)))) => break frame.map(|f| (u16::from(f.code), f.reason.to_string())),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(err))) => panic!("the connection failed before its close frame: {err}"),
            Ok(None) => panic!("the connection ended without a close frame"),
            Err(_) => panic!("no close frame within {:?}", campfire_tests::relay::WAIT),
        }
    };
    assert_eq!(close, Some((1013, "slow consumer: send queue full".to_owned())));
    // The fast client is unaffected.
    let hb = fast.push(None, "phoenix", "heartbeat", json!({})).await;
    assert_eq!(fast.recv_where(|m| m.r#ref == json!(hb)).await.payload["status"], "ok");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn http_broadcast_health_metrics_and_widget_tokens() {
    let f = fixture().await;
    let relay = RelayHandle::start(&f.db).await;
    let typing = format!("{}:typing", f.topic());
    let mut listener = Client::connect(relay.addr, "2.0.0", &agent_token(f.agent)).await;
    listener.join(&typing, json!({"config": {}})).await;

    let body =
        json!({"messages": [{"topic": typing, "event": "typing:start", "payload": {"from": "http"}}]}).to_string();
    let auth = format!("Bearer {}", agent_token(f.agent));
    let (status, _) = relay
        .http(
            "POST",
            "/realtime/v1/api/broadcast?apikey=x&vsn=2.0.0",
            &[("Authorization", &auth), ("Content-Type", "application/json")],
            &body,
        )
        .await
        .unwrap();
    assert_eq!(status, 202);
    assert_eq!(listener.broadcast_event("typing:start").await.payload["payload"]["from"], "http");

    let (status, response) =
        relay.http("POST", "/api/broadcast", &[("Content-Type", "application/json")], &body).await.unwrap();
    assert_eq!(status, 401, "{response}");
    let forbidden = json!({"messages": [{"topic": f.topic(), "event": "message:created", "payload": {}}]}).to_string();
    let agent_auth = format!("Bearer {}", agent_token(f.agent));
    let (status, response) = relay
        .http(
            "POST",
            "/api/broadcast",
            &[("Authorization", &agent_auth), ("Content-Type", "application/json")],
            &forbidden,
        )
        .await
        .unwrap();
    assert_eq!(status, 403, "{response}");
    let (status, _) = relay
        .http(
            "POST",
            "/api/broadcast",
            &[("Authorization", &agent_auth), ("Content-Type", "application/json")],
            "{oops",
        )
        .await
        .unwrap();
    assert_eq!(status, 422);
    let (status, _) = relay
        .http(
            "OPTIONS",
            "/api/broadcast",
            &[
                ("Origin", "https://shop.example"),
                ("Access-Control-Request-Method", "POST"),
                ("Access-Control-Request-Headers", "apikey, authorization, content-type"),
            ],
            "",
        )
        .await
        .unwrap();
    assert_eq!(status, 200);

    let (status, health) = relay.http("GET", "/healthz/details", &[], "").await.unwrap();
    let health: Value = serde_json::from_str(&health).unwrap();
    assert_eq!((status, health["listen_connected"].clone(), health["lag"].clone()), (200, json!(true), json!(0)));
    let metrics = relay.get("/metrics").await.unwrap();
    for name in ["campfire_connections 1", "campfire_channels 1", "campfire_client_broadcasts_total 1"] {
        assert!(metrics.contains(name), "{name} in {metrics}");
    }

    let (status, token) = relay
        .http(
            "POST",
            "/api/widget/token",
            &[("Content-Type", "application/json")],
            &json!({"sessionSecret": f.secret}).to_string(),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{token}");
    let token: Value = serde_json::from_str(&token).unwrap();
    let verifier =
        campfire_relay::auth::Verifier::new(campfire_tests::relay::JWT_SECRET, &Default::default()).await.unwrap();
    let claims = verifier.verify(token["access_token"].as_str().unwrap()).await.unwrap();
    assert_eq!(claims.claims["role"], "visitor");
    assert_eq!(claims.claims["widget_session_id"], json!(f.session));
    let (status, _) = relay
        .http(
            "POST",
            "/api/widget/token",
            &[("Content-Type", "application/json")],
            r#"{"sessionSecret":"cfws_forged_x"}"#,
        )
        .await
        .unwrap();
    assert_eq!(status, 401);
    let _ = visitor(f.session);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn channel_lifecycle_leave_duplicate_join_stale_refs_token_refresh_expiry_and_idle() {
    let f = fixture().await;
    let relay = RelayHandle::start_with(&f.db, |c| c.idle_timeout_secs = 2).await;
    let topic = format!("realtime:{}", f.topic());
    let mut client = Client::connect(relay.addr, "2.0.0", &agent_token(f.agent)).await;

    // A second join of the same topic closes the first (phx_close with the old join_ref).
    let (first, _) = client.join(&f.topic(), json!({"config": {}})).await;
    let second = client.send_join(&f.topic(), json!({"config": {}})).await;
    let closed = client.recv_where(|m| m.event == "phx_close").await;
    assert_eq!(closed.join_ref, json!(first), "the old join is closed first");
    let reply = client.recv_where(|m| m.event == "phx_reply").await;
    assert_eq!((reply.r#ref.clone(), reply.payload["status"].clone()), (json!(second), json!("ok")));

    // A push carrying a stale join_ref is ignored: no reply at all.
    let stale = client
        .push(Some("stale"), &topic, "presence", json!({"type": "presence", "event": "track", "payload": {}}))
        .await;
    assert!(client.drain(Duration::from_millis(300)).await.iter().all(|m| m.r#ref != json!(stale)));

    // access_token refresh: a valid token keeps the channel (no reply); one for a stranger ends it.
    client.push(Some(&second), &topic, "access_token", json!({"access_token": agent_token(f.agent)})).await;
    assert!(client.drain(Duration::from_millis(300)).await.iter().all(|m| m.event != "phx_close"));
    client
        .push(Some(&second), &topic, "access_token", json!({"access_token": agent_token(uuid::Uuid::new_v4())}))
        .await;
    let system = client.recv_where(|m| m.event == "system").await;
    assert_eq!(system.payload["status"], "error");
    assert!(system.payload["message"].as_str().unwrap().starts_with("You no longer have permission"));
    let close = client.recv_where(|m| m.event == "phx_close").await;
    assert_eq!((close.join_ref.clone(), close.r#ref.clone()), (json!(second), json!(second)));

    // phx_leave: ok reply, then phx_close.
    let (third, _) = client.join(&f.topic(), json!({"config": {}})).await;
    let r = client.push(Some(&third), &topic, "phx_leave", json!({})).await;
    assert_eq!(client.recv_where(|m| m.r#ref == json!(r)).await.payload["status"], "ok");
    assert_eq!(client.recv_where(|m| m.event == "phx_close").await.join_ref, json!(third));

    // A token that expires while joined ends the channel with a system error.
    let short = campfire_relay::auth::sign(
        campfire_tests::relay::JWT_SECRET.as_bytes(),
        &json!({"role": "authenticated", "sub": f.agent, "exp": campfire_relay::auth::now() + 1}),
    );
    client.join(&f.topic(), json!({"config": {}, "access_token": short})).await;
    let expired = client.recv_where(|m| m.event == "system").await;
    assert_eq!(expired.payload["message"], "Token has expired");

    // Silence beyond the idle timeout closes the connection.
    let mut close_reason = None;
    while let Ok(Some(Ok(message))) =
        tokio::time::timeout(Duration::from_secs(5), futures_util::StreamExt::next(&mut client.ws)).await
    {
        if let Message::Close(Some(frame)) = message {
            close_reason = Some(frame.reason.to_string());
            break;
        }
    }
    assert_eq!(close_reason.as_deref(), Some("idle timeout"));
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cursor_older_than_the_pruned_log_is_told_to_reload_history() {
    let f = fixture().await;
    let relay = RelayHandle::start(&f.db).await;
    let mut client = Client::connect(relay.addr, "2.0.0", &agent_token(f.agent)).await;
    client.join(&f.topic(), json!({"config": {}})).await;
    f.send_as_agent("old news").await;
    let cursor = client.broadcast_event("message:created").await.payload["payload"]["cursor"].as_i64().unwrap();
    drop(client);
    f.send_as_agent("pruned before anyone resumed").await;
    let db = f.db.clone();
    blocking(move || {
        db.connect_as(&campfire_tests::service())
            .query_one("SELECT campfire.prune_events(interval '0 seconds')", &[])
            .unwrap();
    })
    .await;
    f.send_as_agent("after the prune").await;

    let mut client = Client::connect(relay.addr, "2.0.0", &agent_token(f.agent)).await;
    client.join(&f.topic(), json!({"config": {"broadcast": {"cursor": cursor}}})).await;
    let system = client.recv_where(|m| m.event == "system").await;
    assert!(system.payload["message"].as_str().unwrap().starts_with("cursor_too_old:"), "{:?}", system.payload);
    let next = client.broadcast_event("message:created").await;
    assert_eq!(next.payload["payload"]["message"]["content"], "after the prune");
    relay.stop().await;
}

/// Rights taken back in the database end the channels joined under them at once, not at the
/// token's expiry: an agent whose membership is disabled, a visitor whose session is revoked.
/// A colleague's channel on the same topic carries on.
#[tokio::test(flavor = "multi_thread")]
async fn channels_end_when_the_database_takes_access_back() {
    let f = fixture().await;
    let relay = RelayHandle::start(&f.db).await;
    let org_topic = format!("org:{}", f.org);
    let colleague = uuid::Uuid::new_v4();
    let (db, org) = (f.db.clone(), f.org);
    blocking(move || {
        db.connect_as(&service()).execute("SELECT campfire.add_member($1, $2, 'agent')", &[&org, &colleague]).unwrap();
    })
    .await;
    let mut leaving = Client::connect(relay.addr, "2.0.0", &agent_token(f.agent)).await;
    leaving.join(&org_topic, json!({"config": {}})).await;
    let mut staying = Client::connect(relay.addr, "2.0.0", &agent_token(colleague)).await;
    staying.join(&org_topic, json!({"config": {}})).await;
    let mut widget = Client::connect(relay.addr, "2.0.0", &f.secret).await;
    widget.join(&f.topic(), json!({"config": {}})).await;

    let (db, agent_id) = (f.db.clone(), f.agent);
    blocking(move || {
        db.connect()
            .execute(
                "UPDATE campfire.organization_members SET status = 'disabled' WHERE organization_id = $1 AND user_id = $2",
                &[&org, &agent_id],
            )
            .unwrap();
    })
    .await;
    let system = leaving.recv_where(|m| m.event == "system").await;
    assert_eq!(system.payload["status"], "error");
    assert!(system.payload["message"].as_str().unwrap().contains("no longer have permission"), "{system:?}");
    leaving.recv_where(|m| m.event == "phx_close").await;
    let (_, rejoin) = leaving.join(&org_topic, json!({"config": {}})).await;
    assert_eq!(rejoin.payload["status"], "error", "a disabled member cannot join again");

    // The colleague still receives the organization's events; the visitor's channel is untouched.
    let (db, conversation) = (f.db.clone(), f.conversation);
    blocking(move || {
        db.connect_as(&agent(colleague))
            .execute("SELECT campfire.send_message($1, 'still here')", &[&conversation])
            .unwrap();
    })
    .await;
    staying.broadcast_event("conversation:updated").await;
    widget.broadcast_event("message:created").await;

    let (db, session) = (f.db.clone(), f.session);
    blocking(move || {
        db.connect_as(&service()).execute("SELECT campfire.revoke_widget_session($1)", &[&session]).unwrap();
    })
    .await;
    widget.recv_where(|m| m.event == "system").await;
    widget.recv_where(|m| m.event == "phx_close").await;
    assert!(staying.drain(Duration::from_millis(300)).await.iter().all(|m| m.event != "phx_close"));
    relay.stop().await;
}

/// Any login with CONNECT may LISTEN and NOTIFY on every channel the extension and the relays
/// use. Such a login learns nothing from what it hears, and nothing it sends (forged events, id
/// ranges, huge ids, peer messages, access changes, junk, or replays of what it heard) changes
/// what any client receives: every real event still arrives, once, in order.
#[tokio::test(flavor = "multi_thread")]
async fn a_login_with_only_connect_can_neither_read_nor_forge_the_realtime_stream() {
    let f = fixture().await;
    let db = f.db.clone();
    let mut outsider = blocking(move || {
        db.connect()
            .batch_execute(
                "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'campfire_outsider') THEN \
             CREATE ROLE campfire_outsider LOGIN; END IF; END $$",
            )
            .unwrap();
        let mut outsider = db.connect_user("campfire_outsider");
        outsider.batch_execute("LISTEN campfire_events; LISTEN campfire_relay; LISTEN campfire_access").unwrap();
        outsider
    })
    .await;
    let relay = RelayHandle::start(&f.db).await;
    let mut agent_client = Client::connect(relay.addr, "2.0.0", &agent_token(f.agent)).await;
    agent_client.join(&f.topic(), json!({"config": {}})).await;
    let mut visitor_client = Client::connect(relay.addr, "2.0.0", &f.secret).await;
    visitor_client.join(&f.topic(), json!({"config": {}})).await;
    visitor_client
        .push(None, &f.topic(), "presence", json!({"type": "presence", "event": "track", "payload": {"name": "v"}}))
        .await;
    f.send_as_agent("confidential: the refund is approved").await;
    for client in [&mut agent_client, &mut visitor_client] {
        client.broadcast_event("message:created").await;
    }

    // What the outsider heard: sealed, nothing readable.
    let (heard, mut outsider) = blocking(move || {
        use campfire_tests::postgres::fallible_iterator::FallibleIterator;
        let heard: Vec<(String, String)> = outsider
            .notifications()
            .timeout_iter(Duration::from_secs(1))
            .map(|n| Ok((n.channel().to_owned(), n.payload().to_owned())))
            .collect()
            .unwrap();
        (heard, outsider)
    })
    .await;
    assert!(heard.iter().any(|(channel, _)| channel == "campfire_events"), "{heard:?}");
    assert!(heard.iter().any(|(channel, _)| channel == "campfire_relay"), "the presence went to the peers: {heard:?}");
    for (channel, payload) in &heard {
        for secret in ["refund", "message:created", &f.org.to_string(), &f.conversation.to_string(), "presence"] {
            assert!(!payload.contains(secret), "{channel} carries {secret} in the clear: {payload}");
        }
    }

    // What the outsider sends: forgeries, junk, and replays of what it heard.
    let head: i64 = blocking({
        let db = f.db.clone();
        move || db.connect().query_one("SELECT campfire.log_head()", &[]).unwrap().get(0)
    })
    .await;
    let topic = f.topic();
    let forged_event = json!({"first": head + 1, "last": head + 1, "events": [
        {"id": head + 1, "topic": topic, "event": "message:created", "payload": {"message": {"content": "FORGED"}}}]});
    let forged_peer = json!({"kind": "broadcast", "origin": "evil", "topic": topic, "event": "message:created",
                             "payload": {"message": {"content": "FORGED"}}});
    let mut forgeries: Vec<(String, String)> = vec![
        ("campfire_events".into(), forged_event.to_string()),
        ("campfire_events".into(), json!({"first": 1, "last": i64::MAX - 1}).to_string()),
        ("campfire_events".into(), "not json".into()),
        ("campfire_relay".into(), forged_peer.to_string()),
        ("campfire_relay".into(), "{".into()),
    ];
    forgeries.extend((0..100).map(|_| ("campfire_access".to_owned(), json!({"user_id": f.agent}).to_string())));
    forgeries.extend(heard.iter().cloned());
    blocking(move || {
        for (channel, payload) in forgeries {
            outsider.execute("SELECT pg_notify($1, $2)", &[&channel, &payload]).unwrap();
        }
    })
    .await;

    // Real events after all that: each arrives once, in order, and nothing forged ever does.
    for n in 0..3 {
        f.send_as_agent(&format!("real {n}")).await;
    }
    for client in [&mut agent_client, &mut visitor_client] {
        let frames = client.drain(Duration::from_secs(2)).await;
        let contents: Vec<&str> = frames
            .iter()
            .filter(|m| m.event == "broadcast" && m.payload["event"] == "message:created")
            .filter_map(|m| m.payload["payload"]["message"]["content"].as_str())
            .collect();
        assert_eq!(contents, ["real 0", "real 1", "real 2"], "{frames:?}");
        assert!(frames.iter().all(|m| !m.payload.to_string().contains("FORGED")), "{frames:?}");
        assert!(frames.iter().all(|m| m.event != "phx_close" && m.event != "system"), "channel kept: {frames:?}");
    }
    let metrics = relay.get("/metrics").await.unwrap();
    let refused: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("campfire_refused_notifications_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(refused >= 105.0, "every forgery and replay refused and counted: {metrics}");
}

/// The seeds' widget subscribes to `org:{o}:widget:{conversationId}` (CAMPFIRE architecture doc):
/// the conversation's channel under another name, for its visitor and the organization's members.
#[tokio::test(flavor = "multi_thread")]
async fn the_seeds_widget_channel_is_the_conversation_channel() {
    let f = fixture().await;
    let relay = RelayHandle::start(&f.db).await;
    let widget_topic = format!("org:{}:widget:{}", f.org, f.conversation);
    let mut visitor_client = Client::connect(relay.addr, "2.0.0", &f.secret).await;
    let (_, reply) = visitor_client.join(&widget_topic, json!({"config": {}})).await;
    assert_eq!(reply.payload["status"], "ok", "{reply:?}");
    f.send_as_agent("through the widget channel").await;
    let frame = visitor_client.broadcast_event("message:created").await;
    assert_eq!(frame.topic, format!("realtime:{widget_topic}"), "delivered under the name it was joined by");
    assert_eq!(frame.payload["payload"]["message"]["content"], "through the widget channel");

    let other = blocking({
        let db = f.db.clone();
        let org = f.org;
        move || db.widget_session(org, "visitor-b").1
    })
    .await;
    let other_secret: String = blocking({
        let db = f.db.clone();
        move || {
            db.connect()
                .query_one(
                    "SELECT campfire.widget_secret(k.widget_key, s.id, s.secret_nonce) \
                     FROM campfire.server_keys k, campfire.widget_sessions s WHERE s.id = $1",
                    &[&other],
                )
                .unwrap()
                .get(0)
        }
    })
    .await;
    let mut stranger = Client::connect(relay.addr, "2.0.0", &other_secret).await;
    let (_, refused) = stranger.join(&widget_topic, json!({"config": {}})).await;
    assert_eq!(refused.payload["status"], "error", "another visitor may not join it: {refused:?}");
}

/// `POST /api/broadcast/{topic}/events/{event}` (realtime-js 2.119's `httpSend()`): what it
/// cannot do is refused with a status and the reason; nothing refused reaches a subscriber.
#[tokio::test(flavor = "multi_thread")]
async fn http_send_refuses_what_it_cannot_do_with_a_reason() {
    let f = fixture().await;
    let relay = RelayHandle::start(&f.db).await;
    let typing = format!("{}:typing", f.topic());
    let mut listener = Client::connect(relay.addr, "2.0.0", &f.secret).await;
    listener.join(&typing, json!({"config": {}})).await;
    let bearer = format!("Bearer {}", agent_token(f.agent));
    let json_headers = [("Authorization", bearer.as_str()), ("Content-Type", "application/json")];
    let path = |query: &str| format!("/realtime/v1/api/broadcast/{typing}/events/typing:start{query}");
    let cases = [
        ("persist", path("?private=true&persist=true"), &json_headers[..], "{}", 422, "persist is not supported"),
        ("not JSON", path(""), &json_headers[..], "{not json", 422, "the body is not JSON"),
        ("not an object", path(""), &json_headers[..], "[1]", 422, "must be a JSON object"),
        (
            "binary",
            path(""),
            &[("Authorization", bearer.as_str()), ("Content-Type", "application/octet-stream")][..],
            "\u{1}\u{2}",
            415,
            "binary payloads are not supported",
        ),
        ("no credential", path(""), &[("Content-Type", "application/json")][..], "{}", 401, "missing"),
        (
            "foreign topic",
            format!("/api/broadcast/org:{}:conv:{}:typing/events/typing:start", uuid::Uuid::new_v4(), f.conversation),
            &json_headers[..],
            "{}",
            403,
            "not an active member",
        ),
    ];
    for (name, path, headers, body, status, reason) in cases {
        let (got, text) = relay.http("POST", &path, headers, body).await.unwrap();
        assert_eq!(got, status, "{name}: {text}");
        assert!(text.contains(reason), "{name}: {text}");
    }
    let (got, text) = relay.http("POST", &path(""), &json_headers, r#"{"isTyping":true}"#).await.unwrap();
    assert_eq!(got, 202, "{text}");
    let delivered = listener.broadcast_event("typing:start").await;
    assert_eq!(delivered.payload["payload"], json!({"isTyping": true}));
    let more = listener.drain(Duration::from_millis(500)).await;
    assert!(more.iter().all(|m| m.event != "broadcast"), "nothing refused was delivered: {more:?}");
}
