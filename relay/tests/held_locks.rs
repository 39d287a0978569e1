//! A statement of the relay's that waits on a lock an application holds (its transaction idle
//! with a conversation's row locked) holds up that call only: every other call and join of the
//! shard is still answered, and the waiting call completes once the lock is released.

mod common;

use campfire_relay::{Config, Options};
use campfire_testkit::ws::Client;
use common::{Fixture, Relay, http, wait_until};
use serde_json::json;
use std::time::Duration;
use uuid::Uuid;

#[tokio::test]
async fn a_call_waiting_on_a_held_row_lock_holds_up_no_other() {
    let fixture = Fixture::new().await;
    let relay = Relay::start(&fixture).await;
    let admin = fixture.db_as(&json!({"role": "service_role"})).await;
    let other: Uuid = admin
        .query_one("SELECT conversation_id FROM campfire.start_widget_session($1, 'visitor-b')", &[&fixture.org])
        .await
        .unwrap()
        .get(0);

    // An application's transaction locks the fixture's conversation and stays idle.
    let application = fixture.db().await;
    application
        .batch_execute(&format!(
            "BEGIN; SELECT FROM campfire.conversations WHERE id = '{}' FOR UPDATE",
            fixture.conversation
        ))
        .await
        .unwrap();

    let bearer = format!("Bearer {}", fixture.agent_token());
    let send = |conversation: Uuid, content: &str| {
        let (addr, bearer) = (relay.addr, bearer.clone());
        let body = json!({ "content": content }).to_string();
        async move {
            let path = format!("/api/dashboard/conversations/{conversation}/messages");
            let headers = [("authorization", bearer.as_str()), ("content-type", "application/json")];
            http(addr, "POST", &path, &headers, &body).await
        }
    };
    let held = tokio::spawn(send(fixture.conversation, "after the lock"));
    let waiting =
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'";
    wait_until("the relay's send waits on the row lock", || async {
        admin.query_one(waiting, &[]).await.unwrap().get::<_, i64>(0) == 1
    })
    .await;

    // Another conversation's send and a join are answered while it waits.
    let answered = tokio::time::timeout(Duration::from_secs(5), send(other, "meanwhile")).await;
    let (status, body) = answered.expect("a send to another conversation waited behind the held one");
    assert_eq!(status, 201, "{body}");
    let mut client = Client::connect(relay.addr, "2.0.0", &fixture.agent_token()).await;
    let topic = format!("org:{}:conv:{other}", fixture.org);
    let joined = tokio::time::timeout(Duration::from_secs(5), client.join_ok(&topic, json!({}))).await;
    joined.expect("a join waited behind the held send");
    assert!(!held.is_finished(), "the send to the locked conversation did not wait for the lock");
    assert_eq!(relay.metric(r#"campfire_db_api_connections{shard="default",state="busy"}"#).await, 1.0);

    application.batch_execute("COMMIT").await.unwrap();
    let (status, body) = tokio::time::timeout(Duration::from_secs(15), held).await.unwrap().unwrap();
    assert_eq!(status, 201, "{body}");
    assert_eq!(relay.metric(r#"campfire_db_api_connections{shard="default",state="busy"}"#).await, 0.0);
}

/// A lock held past the database timeout: the call waiting for it is answered 503 with the
/// SQLSTATE (55P03) and gives its connection back; the conversation takes messages again once the
/// lock is released.
#[tokio::test]
async fn a_call_waiting_past_the_lock_timeout_is_answered_503() {
    let fixture = Fixture::new().await;
    let config = Config { db_timeout_ms: 1_000, ..fixture.config() };
    let relay = Relay::start_with(config, Options::default()).await;
    let application = fixture.db().await;
    let lock = format!("BEGIN; SELECT FROM campfire.conversations WHERE id = '{}' FOR UPDATE", fixture.conversation);
    application.batch_execute(&lock).await.unwrap();

    let bearer = format!("Bearer {}", fixture.agent_token());
    let path = format!("/api/dashboard/conversations/{}/messages", fixture.conversation);
    let headers = [("authorization", bearer.as_str()), ("content-type", "application/json")];
    let started = std::time::Instant::now();
    let (status, body) = http(relay.addr, "POST", &path, &headers, r#"{"content": "waits too long"}"#).await;
    assert_eq!(status, 503, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["code"], "55P03", "{body}");
    assert!(started.elapsed() < Duration::from_secs(10), "answered after {:?}", started.elapsed());

    application.batch_execute("COMMIT").await.unwrap();
    let (status, body) = http(relay.addr, "POST", &path, &headers, r#"{"content": "now"}"#).await;
    assert_eq!(status, 201, "{body}");
}

/// The only API connection busy waiting on a held lock: a further call waits for it until the
/// lock timeout frees it, and is answered; the waiting call is answered 503 (55P03); joins are
/// answered meanwhile.
#[tokio::test]
async fn a_call_beyond_the_api_connections_waits_at_most_the_lock_timeout() {
    let fixture = Fixture::new().await;
    let config = Config { db_timeout_ms: 1_000, api_connections: 1, ..fixture.config() };
    let relay = Relay::start_with(config, Options::default()).await;
    let bearer = format!("Bearer {}", fixture.agent_token());
    let headers = [("authorization", bearer.as_str()), ("content-type", "application/json")];
    let path = format!("/api/dashboard/conversations/{}/messages", fixture.conversation);
    // The one connection opened and its backend warmed first: the timings below are the lock's,
    // not a new backend's first statements (which a loaded 2-core machine can stretch past the
    // half second of margin).
    let (status, body) = http(relay.addr, "GET", &path, &headers, "").await;
    assert_eq!(status, 200, "{body}");
    let application = fixture.db().await;
    let lock = format!("BEGIN; SELECT FROM campfire.conversations WHERE id = '{}' FOR UPDATE", fixture.conversation);
    application.batch_execute(&lock).await.unwrap();

    let started = std::time::Instant::now();
    let (held, (status, body)) =
        tokio::join!(http(relay.addr, "POST", &path, &headers, r#"{"content": "holds the only connection"}"#), async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            http(relay.addr, "GET", &path, &headers, "").await
        });
    assert_eq!(held.0, 503, "{}", held.1);
    assert!(held.1.contains("55P03"), "{}", held.1);
    assert_eq!(status, 200, "{body}");
    assert!(started.elapsed() < Duration::from_secs(5), "answered after {:?}", started.elapsed());
    let mut client = Client::connect(relay.addr, "2.0.0", &fixture.agent_token()).await;
    let joined = tokio::time::timeout(Duration::from_secs(5), client.join_ok(&fixture.topic(), json!({}))).await;
    joined.expect("a join waited behind the API's calls");
    application.batch_execute("COMMIT").await.unwrap();
}
