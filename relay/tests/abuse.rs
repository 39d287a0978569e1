//! What a client may not make the relay do: hold connections without limit, flood it with
//! joins, heartbeats or broadcasts, pass its broadcasts off as the database's events, receive an
//! event once per spelling of a channel, or read the relay's cursor from the public health check.

mod common;

use campfire_relay::Options;
use campfire_testkit::ws::{Client, Ended, WAIT, ws_url};
use common::{Fixture, Relay, binary_broadcast_with_metadata};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens a WebSocket as `apikey`, through a proxy that says it forwards `forwarded_for`; or the
/// handshake's refusal (status, body).
async fn open(addr: SocketAddr, apikey: &str, forwarded_for: Option<&str>) -> Result<Socket, (u16, String)> {
    let mut request = ws_url(addr, "2.0.0", apikey).into_client_request().unwrap();
    if let Some(client) = forwarded_for {
        request.headers_mut().insert("x-forwarded-for", client.parse().unwrap());
    }
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request)).await.expect("handshake timed out") {
        Ok((socket, _)) => Ok(socket),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).into_owned();
            Err((response.status().as_u16(), body))
        }
        Err(err) => panic!("handshake failed: {err}"),
    }
}

fn refusal(opened: Result<Socket, (u16, String)>) -> (u16, String) {
    match opened {
        Ok(_) => panic!("the connection was admitted"),
        Err(refused) => refused,
    }
}

/// Retries `open` until it is admitted (a closed connection frees its place once its session
/// has ended).
async fn open_eventually(addr: SocketAddr, apikey: &str) -> Socket {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match open(addr, apikey, None).await {
            Ok(socket) => return socket,
            Err(refused) => assert!(tokio::time::Instant::now() < deadline, "never admitted again: {refused:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_are_capped_per_credential_and_per_address_forwarded_only_by_trusted_proxies() {
    let f = Fixture::new().await;
    let mut config = f.config();
    config.limits.max_connections_per_credential = 2;
    config.limits.max_connections_per_ip = 4;
    config.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    let relay = Relay::start_with(config, Options::default()).await;
    let agent = f.agent_token();

    // One agent: two connections, from anywhere; a third is refused, naming the limit.
    let first = open(relay.addr, &agent, None).await.unwrap();
    let _second = open(relay.addr, &agent, Some("198.51.100.20")).await.unwrap();
    let (status, body) = refusal(open(relay.addr, &agent, Some("198.51.100.21")).await);
    assert_eq!(status, 429);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"],
        "ConnectionRateLimitReached: too many connections from this credential (limit 2)"
    );
    // One address (as the trusted proxy forwards it): four connections, whoever holds them.
    let visitor = &f.secret;
    let other = f.another_agent().await;
    let mut held = Vec::new();
    for apikey in [visitor, visitor, &other] {
        held.push(open(relay.addr, apikey, Some("198.51.100.20")).await.unwrap());
    }
    let (status, body) = refusal(open(relay.addr, &other, Some("198.51.100.20")).await);
    assert_eq!((status, body.contains("too many connections from this address (limit 4)")), (429, true), "{body}");
    // A client cannot pick its address: what it writes before the proxy's entry is not read.
    let (status, _) = refusal(open(relay.addr, &other, Some("203.0.113.99, 198.51.100.20")).await);
    assert_eq!(status, 429);
    // A closed connection frees its place.
    drop(first);
    drop(open_eventually(relay.addr, &agent).await);
    assert!(relay.metric(r#"campfire_limited_total{limit="connections_per_credential"}"#).await >= 1.0);
    assert_eq!(relay.metric(r#"campfire_limited_total{limit="connections_per_address"}"#).await, 2.0);
    drop(held);
    relay.stop().await;

    // No proxy is trusted by default: a forwarding header is the client's own claim and ignored.
    let mut config = f.config();
    config.limits.max_connections_per_ip = 2;
    let relay = Relay::start_with(config, Options::default()).await;
    let _a = open(relay.addr, visitor, Some("198.51.100.1")).await.unwrap();
    let _b = open(relay.addr, &other, Some("198.51.100.2")).await.unwrap();
    let (status, body) = refusal(open(relay.addr, &agent, Some("198.51.100.3")).await);
    assert_eq!((status, body.contains("from this address")), (429, true), "{body}");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn joins_broadcasts_and_heartbeats_over_their_rate_are_refused_or_close_with_a_reason() {
    let f = Fixture::new().await;
    let mut config = f.config();
    config.limits.rate_window_ms = 1500;
    config.limits.max_joins_per_window = 2;
    config.limits.max_broadcasts_per_window = 2;
    config.limits.max_heartbeats_per_window = 3;
    let relay = Relay::start_with(config, Options::default()).await;
    let typing = format!("{}:typing", f.topic());
    let mut listener = Client::connect(relay.addr, "2.0.0", &f.secret).await;
    listener.join_ok(&typing, json!({"config": {}})).await;

    // Joins: the third within the window is refused; the connection and its channels stay, and
    // the join succeeds once the window is over (as realtime-js retries it).
    let mut agent = Client::connect(relay.addr, "2.0.0", &f.agent_token()).await;
    let join_ref = agent.join_ok(&typing, json!({"config": {"broadcast": {"ack": true}}})).await;
    agent.join_ok(&f.topic(), json!({"config": {}})).await;
    let presence = format!("org:{}:agents:presence", f.org);
    let (_, reply) = agent.join(&presence, json!({"config": {}})).await;
    let reason = reply.payload["response"]["reason"].as_str().unwrap().to_owned();
    assert!(
        reason.starts_with("ClientJoinRateLimitReached: too many joins on this connection (limit 2 per 1500 ms)"),
        "{reason}"
    );

    // Broadcasts: two go out, the third gets an error reply and reaches no one.
    let topic = format!("realtime:{typing}");
    let mut replies = Vec::new();
    for n in 1..=3 {
        let payload = json!({"type": "broadcast", "event": "typing:start", "payload": {"n": n}});
        let r = agent.push(Some(&join_ref), &topic, "broadcast", payload).await;
        replies.push(agent.recv_where(|m| m.r#ref == json!(r)).await.payload);
    }
    assert_eq!(
        (&replies[0]["status"], &replies[1]["status"], &replies[2]["status"]),
        (&json!("ok"), &json!("ok"), &json!("error"))
    );
    let reason = replies[2]["response"]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("RateLimitReached: too many broadcasts on this connection (limit 2 per 1500 ms)"),
        "{reason}"
    );
    let received: Vec<Value> = listener
        .drain(Duration::from_millis(300))
        .await
        .into_iter()
        .filter(|m| m.payload["event"] == "typing:start")
        .map(|m| m.payload["payload"]["n"].clone())
        .collect();
    assert_eq!(received, vec![json!(1), json!(2)]);

    tokio::time::sleep(Duration::from_millis(1500)).await;
    agent.join_ok(&presence, json!({"config": {}})).await;

    // Heartbeats: no client that keeps to the protocol sends more than one each 25 s. One over
    // the limit closes the connection with 1008 and the reason; the others are unaffected.
    for _ in 0..3 {
        let hb = agent.push(None, "phoenix", "heartbeat", json!({})).await;
        assert_eq!(agent.recv_where(|m| m.r#ref == json!(hb)).await.payload["status"], "ok");
    }
    agent.push(None, "phoenix", "heartbeat", json!({})).await;
    let ended = loop {
        match agent.next(WAIT).await {
            Ok(frame) => assert_ne!(frame.topic, "phoenix", "the heartbeat over the limit is not answered"),
            Err(ended) => break ended,
        }
    };
    assert!(
        matches!(&ended, Ended::Closed(Some((1008, reason))) if reason == "rate limit: too many heartbeats"),
        "{ended:?}"
    );
    let hb = listener.push(None, "phoenix", "heartbeat", json!({})).await;
    assert_eq!(listener.recv_where(|m| m.r#ref == json!(hb)).await.payload["status"], "ok");
    for (limit, count) in [("joins", 1.0), ("broadcasts", 1.0), ("heartbeats", 1.0)] {
        assert_eq!(relay.metric(&format!("campfire_limited_total{{limit=\"{limit}\"}}")).await, count, "{limit}");
    }
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn client_broadcasts_never_pass_for_database_events_on_the_socket_or_over_http() {
    let f = Fixture::new().await;
    let mut config = f.config();
    config.reserved_events = vec!["invoice:paid".into()];
    let relay = Relay::start_with(config, Options::default()).await;
    let presence = format!("org:{}:agents:presence", f.org);
    let topic = format!("realtime:{presence}");
    let mut visitor = Client::connect(relay.addr, "2.0.0", &f.secret).await;
    visitor.join_ok(&presence, json!({"config": {}})).await;
    let mut agent = Client::connect(relay.addr, "2.0.0", &f.agent_token()).await;
    let join_ref = agent.join_ok(&presence, json!({"config": {}})).await;

    // Another agent's status with a cursor far ahead, as text and as a binary push: refused.
    let impostor = json!({"userId": uuid::Uuid::new_v4(), "availability": "online", "cursor": 999_999});
    let forged = [
        ("agent:status:online", impostor.clone()),
        ("Agent:Status:Offline", json!({})),
        ("invoice:paid", json!({})),
        ("agent:mood", json!({"mood": "sunny", "cursor": 999_999})),
    ];
    for (event, payload) in &forged {
        let r = agent
            .push(
                Some(&join_ref),
                &topic,
                "broadcast",
                json!({"type": "broadcast", "event": event, "payload": payload}),
            )
            .await;
        let reply = agent.recv_where(|m| m.r#ref == json!(r)).await.payload;
        let reason = reply["response"]["reason"].as_str().unwrap();
        let expected = if *event == "agent:mood" { "ReservedField: payload.cursor" } else { "ReservedEvent: " };
        assert!(reason.starts_with(expected), "{event}: {reason}");
    }
    let binary =
        binary_broadcast_with_metadata(&join_ref, "99", &topic, "read:receipt", b"", impostor.to_string().as_bytes());
    agent.send_raw(Message::binary(binary)).await;
    let reply = agent.recv_where(|m| m.r#ref == json!("99")).await.payload;
    assert!(reply["response"]["reason"].as_str().unwrap().starts_with("ReservedEvent: read:receipt"), "{reply}");

    // Over HTTP, batch and single: the same refusals, with 422.
    let auth = format!("Bearer {}", f.agent_token());
    let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
    let batch = json!({"messages": [
        {"topic": format!("{}:typing", f.topic()), "event": "typing:start", "payload": {}},
        {"topic": presence, "event": "agent:status:online", "payload": impostor},
    ]});
    let (status, body) = common::http(relay.addr, "POST", "/api/broadcast", &headers, &batch.to_string()).await;
    assert_eq!((status, body.contains("ReservedEvent: agent:status:online")), (422, true), "{body}");
    let single = format!("/api/broadcast/{presence}/events/conversation:deleted");
    let (status, body) = common::http(relay.addr, "POST", &single, &headers, "{}").await;
    assert_eq!((status, body.contains("ReservedEvent: conversation:deleted")), (422, true), "{body}");
    let single = format!("/api/broadcast/{presence}/events/agent:mood");
    let (status, body) = common::http(relay.addr, "POST", &single, &headers, r#"{"cursor": 5}"#).await;
    assert_eq!((status, body.contains("ReservedField: payload.cursor")), (422, true), "{body}");

    // What the visitor receives: the one honest client broadcast, without a cursor, and the
    // database's own event, with its cursor; nothing forged.
    let honest = json!({"type": "broadcast", "event": "agent:mood", "payload": {"mood": "sunny"}});
    agent.push(Some(&join_ref), &topic, "broadcast", honest).await;
    let db = f.agent_db().await;
    db.execute("SELECT campfire.set_availability($1, 'online')", &[&f.org]).await.unwrap();
    let (mut mood, mut status) = (None, None);
    while mood.is_none() || status.is_none() {
        let frame = visitor.recv_where(|m| m.event == "broadcast").await;
        let slot = match frame.payload["event"].as_str() {
            Some("agent:mood") => &mut mood,
            Some("agent:status:online") => &mut status,
            other => panic!("the visitor received {other:?}: {:?}", frame.payload),
        };
        assert!(slot.replace(frame.payload["payload"].clone()).is_none(), "received twice: {:?}", frame.payload);
    }
    assert_eq!(mood.unwrap(), json!({"mood": "sunny"}));
    let status = status.unwrap();
    assert!(status["cursor"].as_i64().unwrap() > 0, "{status}");
    assert_eq!(status["userId"], json!(f.agent));
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_channel_joined_under_several_spellings_delivers_each_event_once() {
    let f = Fixture::new().await;
    let relay = Relay::start(&f).await;
    let mut client = Client::connect(relay.addr, "2.0.0", &f.agent_token()).await;
    let spellings = [
        f.topic(),
        format!("bcast:{}", f.topic()),
        format!("org:{}:conv:{}", f.org.to_string().to_uppercase(), f.conversation.to_string().to_uppercase()),
        format!("org:{}:widget:{}", f.org, f.conversation),
    ];
    let mut previous: Option<(String, String)> = None;
    for spelling in &spellings {
        let join_ref = client.send_join(spelling, json!({"config": {}})).await;
        if let Some((old_name, old_ref)) = &previous {
            // The earlier join ends, saying why, before the new one is answered.
            let system = client.recv_where(|m| m.event == "system").await;
            assert_eq!(system.topic, format!("realtime:{old_name}"));
            let message = system.payload["message"].as_str().unwrap();
            assert!(
                message.starts_with(&format!(
                    "DuplicateJoin: this connection joined the same channel again as realtime:{spelling}"
                )),
                "{message}"
            );
            let close = client.recv_where(|m| m.event == "phx_close").await;
            assert_eq!((close.topic, close.join_ref), (format!("realtime:{old_name}"), json!(old_ref)));
        }
        let reply = client.recv_where(|m| m.event == "phx_reply").await;
        assert_eq!(
            (reply.r#ref.clone(), reply.payload["status"].clone()),
            (json!(join_ref), json!("ok")),
            "{spelling}"
        );
        previous = Some((spelling.clone(), join_ref));
    }
    assert_eq!(relay.metric("campfire_channels ").await, 1.0);
    let db = f.agent_db().await;
    f.send_as_agent(&db, "once").await;
    let first = client.broadcast_event("message:created").await;
    assert_eq!(first.topic, format!("realtime:{}", spellings[3]));
    let again = client.drain(Duration::from_millis(300)).await;
    assert!(again.iter().all(|m| m.payload["event"] != "message:created"), "delivered again: {again:?}");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn public_health_is_a_status_and_the_details_are_the_operators() {
    let f = Fixture::new().await;
    let mut config = f.config();
    config.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    let relay = Relay::start_with(config.clone(), Options::default()).await;
    let mut client = Client::connect(relay.addr, "2.0.0", &f.agent_token()).await;
    client.join_ok(&f.topic(), json!({"config": {}})).await;
    let db = f.agent_db().await;
    f.send_as_agent(&db, "moves the cursor").await;
    client.broadcast_event("message:created").await;

    let (status, body) = common::http(relay.addr, "GET", "/healthz", &[], "").await;
    assert_eq!((status, serde_json::from_str::<Value>(&body).unwrap()), (200, json!({"status": "ok"})));
    // Without an ops token: this machine reads the details; a client forwarded from elsewhere
    // does not.
    let (status, body) = common::http(relay.addr, "GET", "/healthz/details", &[], "").await;
    let details: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((status, &details["status"], &details["query_connected"]), (200, &json!("ok"), &json!(true)));
    assert!(details["shards"]["default"]["last_event_id"].as_i64().unwrap() > 0, "{details}");
    let remote = [("X-Forwarded-For", "198.51.100.7")];
    for path in ["/healthz/details", "/metrics"] {
        let (status, body) = common::http(relay.addr, "GET", path, &remote, "").await;
        assert_eq!((status, body.contains("CAMPFIRE_OPS_TOKEN")), (403, true), "{path}: {body}");
    }
    assert_eq!(common::http(relay.addr, "GET", "/healthz", &remote, "").await.0, 200);
    drop(client);
    relay.stop().await;

    // With one: the token opens them, to anyone; nothing else does.
    config.ops_token = Some("ops-secret".into());
    let relay = Relay::start_with(config, Options::default()).await;
    for path in ["/healthz/details", "/metrics"] {
        assert_eq!(common::http(relay.addr, "GET", path, &[], "").await.0, 401, "{path}: loopback needs it too");
        let wrong = [("Authorization", "Bearer ops-secreT")];
        assert_eq!(common::http(relay.addr, "GET", path, &wrong, "").await.0, 401, "{path}");
        let right = [("Authorization", "Bearer ops-secret"), ("X-Forwarded-For", "198.51.100.7")];
        let (status, body) = common::http(relay.addr, "GET", path, &right, "").await;
        assert_eq!(status, 200, "{path}: {body}");
        assert!(body.contains("last_event_id"), "{path}: {body}");
    }
    let (status, body) = common::http(relay.addr, "GET", "/healthz", &[], "").await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    relay.stop().await;
}
