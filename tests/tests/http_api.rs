//! The widget and dashboard HTTP API on the relay: each endpoint and its errors.

use campfire_tests::TestDb;
use campfire_tests::relay::{Client, RelayHandle, agent_token, blocking};
use serde_json::{Value, json};
use std::sync::Arc;

struct Api {
    relay: RelayHandle,
    db: Arc<TestDb>,
    org: uuid::Uuid,
    agent: uuid::Uuid,
}

impl Api {
    async fn start() -> Api {
        let (db, org, agent) = blocking(|| {
            let db = TestDb::new();
            let (org, agent) = db.organization_with_agent("acme");
            (Arc::new(db), org, agent)
        })
        .await;
        Api { relay: RelayHandle::start(&db).await, db, org, agent }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        extra: &[(&str, &str)],
        body: &str,
    ) -> (u16, Value) {
        let bearer = token.map(|t| format!("Bearer {t}"));
        let mut headers: Vec<(&str, &str)> = vec![("Content-Type", "application/json")];
        if let Some(b) = &bearer {
            headers.push(("Authorization", b));
        }
        headers.extend_from_slice(extra);
        let (status, body) = self.relay.http(method, path, &headers, body).await.unwrap();
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    async fn widget_auth(&self, visitor: &str) -> (u16, Value) {
        let org = self.org.to_string();
        self.call(
            "POST",
            "/api/widget/auth",
            None,
            &[("x-organization-id", &org)],
            &json!({"visitorId": visitor, "customerEmail": "v@example.com"}).to_string(),
        )
        .await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_visitor_and_an_agent_talk_through_the_seeds_endpoints() {
    let api = Api::start().await;
    let (status, session) = api.widget_auth("visitor-1").await;
    assert_eq!(status, 200, "{session}");
    let conversation = session["conversationId"].as_str().unwrap().to_owned();
    let secret = session["sessionSecret"].as_str().unwrap().to_owned();
    let token = session["accessToken"].as_str().unwrap().to_owned();
    let (status, again) = api.widget_auth("visitor-1").await;
    assert_eq!(
        (status, again["conversationId"].as_str()),
        (200, Some(conversation.as_str())),
        "idempotent for the same visitor"
    );

    // The agent watches the conversation over the relay.
    let mut agent_ws = Client::connect(api.relay.addr, "2.0.0", &agent_token(api.agent)).await;
    agent_ws.join(&format!("org:{}:conv:{conversation}", api.org), json!({"config": {}})).await;

    let body =
        json!({"conversationId": conversation, "content": "Hello, I need help", "clientMessageId": "c-1"}).to_string();
    let (status, sent) = api.call("POST", "/api/widget/messages", Some(&token), &[], &body).await;
    assert_eq!(status, 201, "{sent}");
    assert_eq!((sent["success"].clone(), sent["message"]["sender_type"].clone()), (json!(true), json!("customer")));
    let (_, retry) = api.call("POST", "/api/widget/messages", Some(&secret), &[], &body).await;
    assert_eq!(
        retry["message"]["id"], sent["message"]["id"],
        "a retry with the same client id, even with the raw secret, is the same message"
    );
    assert_eq!(
        agent_ws.broadcast_event("message:created").await.payload["payload"]["message"]["content"],
        "Hello, I need help"
    );

    let agent = agent_token(api.agent);
    let path = format!("/api/dashboard/conversations/{conversation}/messages");
    let (status, reply) =
        api.call("POST", &path, Some(&agent), &[], &json!({"content": "Hi! Dana here."}).to_string()).await;
    assert_eq!((status, reply["message"]["sender_type"].clone()), (201, json!("agent")));
    let (status, history) =
        api.call("GET", &format!("/api/widget/conversations/{conversation}/messages"), Some(&token), &[], "").await;
    assert_eq!(status, 200);
    let contents: Vec<&str> =
        history["messages"].as_array().unwrap().iter().map(|m| m["content"].as_str().unwrap()).collect();
    assert_eq!(contents, ["Hello, I need help", "Hi! Dana here."]);

    let (status, read) =
        api.call("POST", &format!("/api/widget/conversations/{conversation}/read"), Some(&token), &[], "{}").await;
    assert_eq!((status, read["lastReadSeq"].clone()), (200, json!(2)));
    let (status, events) = api.call("GET", "/api/widget/events?after=0", Some(&token), &[], "").await;
    assert_eq!(status, 200);
    let names: Vec<&str> = events["events"].as_array().unwrap().iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["message:created", "message:created", "read:receipt"],
        "the visitor's polling view of its channel"
    );

    let (status, list) = api
        .call("GET", &format!("/api/dashboard/conversations?organizationId={}", api.org), Some(&agent), &[], "")
        .await;
    assert_eq!(status, 200);
    assert_eq!(list["conversations"][0]["id"], json!(conversation));
    assert_eq!(list["conversations"][0]["unread"], 1);
    let (status, assigned) = api
        .call(
            "POST",
            &format!("/api/dashboard/conversations/{conversation}/assign"),
            Some(&agent),
            &[],
            &json!({"assigneeId": api.agent}).to_string(),
        )
        .await;
    assert_eq!((status, assigned["assigned_to"].clone()), (200, json!(api.agent)));
    let (status, availability) = api
        .call(
            "POST",
            "/api/dashboard/availability",
            Some(&agent),
            &[],
            &json!({"organizationId": api.org, "availability": "online"}).to_string(),
        )
        .await;
    assert_eq!((status, availability["availability"].clone()), (200, json!("online")));
    let org = api.org.to_string();
    let (status, config) = api.call("GET", "/api/widget/config", None, &[("x-organization-id", &org)], "").await;
    assert_eq!((status, config["agents_online"].clone()), (200, json!(1)));
    // The seeds' troubleshooting guide sends as "visitor": the widget endpoint takes it as customer.
    let seeds_spelling =
        json!({"conversationId": conversation, "content": "as the seeds send it", "senderType": "visitor"}).to_string();
    let (status, seeds) = api.call("POST", "/api/widget/messages", Some(&token), &[], &seeds_spelling).await;
    assert_eq!((status, seeds["message"]["sender_type"].clone()), (201, json!("customer")), "{seeds}");
    let (status, _) = api
        .call(
            "POST",
            &format!("/api/dashboard/conversations/{conversation}/status"),
            Some(&agent),
            &[],
            r#"{"status":"resolved"}"#,
        )
        .await;
    assert_eq!(status, 200);
    api.relay.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_bad_input_gets_a_specific_status_and_message() {
    let api = Api::start().await;
    let (_, session) = api.widget_auth("visitor-1").await;
    let conversation = session["conversationId"].as_str().unwrap().to_owned();
    let token = session["accessToken"].as_str().unwrap().to_owned();
    let (_, other) = api.widget_auth("visitor-2").await;
    let other_token = other["accessToken"].as_str().unwrap().to_owned();
    let org = api.org.to_string();

    // (what, expected status, path, bearer token, extra headers, body)
    type Case<'a> = (&'a str, u16, &'a str, Option<&'a str>, Vec<(&'a str, &'a str)>, String);
    let cases: Vec<Case> = vec![
        ("no organization header", 400, "/api/widget/auth", None, vec![], json!({"visitorId": "v"}).to_string()),
        (
            "malformed organization id",
            400,
            "/api/widget/auth",
            None,
            vec![("x-organization-id", "acme")],
            json!({"visitorId": "v"}).to_string(),
        ),
        (
            "unknown organization",
            404,
            "/api/widget/auth",
            None,
            vec![("x-organization-id", "00000000-0000-4000-8000-000000000000")],
            json!({"visitorId": "v"}).to_string(),
        ),
        (
            "bad email",
            400,
            "/api/widget/auth",
            None,
            vec![("x-organization-id", &org)],
            json!({"visitorId": "v", "customerEmail": "nope"}).to_string(),
        ),
        (
            "bad visitor id",
            400,
            "/api/widget/auth",
            None,
            vec![("x-organization-id", &org)],
            json!({"visitorId": "a b"}).to_string(),
        ),
        ("malformed JSON", 400, "/api/widget/auth", None, vec![("x-organization-id", &org)], "{oops".to_owned()),
        (
            "unknown field",
            400,
            "/api/widget/auth",
            None,
            vec![("x-organization-id", &org)],
            json!({"visitorId": "v", "isAdmin": true}).to_string(),
        ),
        (
            "empty content",
            400,
            "/api/widget/messages",
            Some(&token),
            vec![],
            json!({"conversationId": conversation, "content": ""}).to_string(),
        ),
        (
            "4001 characters",
            400,
            "/api/widget/messages",
            Some(&token),
            vec![],
            json!({"conversationId": conversation, "content": "x".repeat(4001)}).to_string(),
        ),
        (
            "unknown conversation",
            404,
            "/api/widget/messages",
            Some(&token),
            vec![],
            json!({"conversationId": "00000000-0000-4000-8000-000000000000", "content": "hi"}).to_string(),
        ),
        (
            "someone else's conversation",
            404,
            "/api/widget/messages",
            Some(&other_token),
            vec![],
            json!({"conversationId": conversation, "content": "hi"}).to_string(),
        ),
        (
            "no token",
            401,
            "/api/widget/messages",
            None,
            vec![],
            json!({"conversationId": conversation, "content": "hi"}).to_string(),
        ),
        (
            "bad token",
            401,
            "/api/widget/messages",
            Some("not-a-token"),
            vec![],
            json!({"conversationId": conversation, "content": "hi"}).to_string(),
        ),
        (
            "oversized body",
            413,
            "/api/widget/messages",
            Some(&token),
            vec![],
            json!({"conversationId": conversation, "content": "x".repeat(70_000)}).to_string(),
        ),
        (
            "visitor posing as agent",
            403,
            "/api/widget/messages",
            Some(&token),
            vec![],
            json!({"conversationId": conversation, "content": "hi", "senderType": "agent"}).to_string(),
        ),
    ];
    for (name, status, path, token, headers, body) in cases {
        let (got, response) = api.call("POST", path, token, &headers, &body).await;
        assert_eq!(got, status, "{name}: {response}");
        assert!(response["error"].as_str().is_some_and(|e| !e.is_empty()), "{name}: a JSON error message: {response}");
    }
    let expired = campfire_relay::auth::sign(
        campfire_tests::relay::JWT_SECRET.as_bytes(),
        &json!({"role": "authenticated", "sub": api.agent, "exp": 1}),
    );
    let (status, response) = api
        .call("GET", &format!("/api/dashboard/conversations?organizationId={}", api.org), Some(&expired), &[], "")
        .await;
    assert_eq!((status, response["error"].clone()), (401, json!("Token has expired")));
    let (status, _) = api
        .call(
            "POST",
            &format!("/api/dashboard/conversations/{conversation}/claim"),
            Some(&agent_token(api.agent)),
            &[],
            "",
        )
        .await;
    assert_eq!(status, 409, "an open conversation is not waiting to be claimed");
    api.relay.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn anonymous_endpoints_are_rate_limited_with_retry_after() {
    let api = Api::start().await;
    let (_, session) = api.widget_auth("chatty").await;
    let conversation = session["conversationId"].as_str().unwrap().to_owned();
    let token = session["accessToken"].as_str().unwrap().to_owned();
    let mut statuses = Vec::new();
    for i in 0..21 {
        let body = json!({"conversationId": conversation, "content": format!("message {i}")}).to_string();
        statuses.push(api.call("POST", "/api/widget/messages", Some(&token), &[], &body).await.0);
    }
    assert_eq!(statuses.iter().filter(|&&s| s == 201).count(), 20);
    assert_eq!(statuses.last(), Some(&429));
    let raw = api
        .relay
        .http_raw(
            "POST",
            "/api/widget/messages",
            &[("Content-Type", "application/json"), ("Authorization", &format!("Bearer {token}"))],
            &json!({"conversationId": conversation, "content": "more"}).to_string(),
        )
        .await
        .unwrap();
    assert!(raw.starts_with("HTTP/1.1 429"), "{raw}");
    let retry_after: u64 = raw
        .lines()
        .find_map(|l| l.strip_prefix("retry-after: "))
        .expect("a Retry-After header")
        .trim()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");

    // New sessions per address: 20 an hour (one was spent above).
    let mut last = 0;
    for i in 0..20 {
        last = api.widget_auth(&format!("visitor-{i}")).await.0;
    }
    assert_eq!(last, 429);
    api.relay.stop().await;
    let _ = &api.db;
}

#[tokio::test(flavor = "multi_thread")]
async fn widgets_only_embed_on_allowed_origins() {
    let api = Api::start().await;
    let (db, org) = (api.db.clone(), api.org);
    blocking(move || {
        db.connect()
            .execute(
                "UPDATE campfire.organizations SET allowed_origins = '{https://shop.example}' WHERE id = $1",
                &[&org],
            )
            .unwrap();
    })
    .await;
    let org = api.org.to_string();
    let body = json!({"visitorId": "v"}).to_string();
    let (status, _) = api
        .call(
            "POST",
            "/api/widget/auth",
            None,
            &[("x-organization-id", &org), ("Origin", "https://shop.example")],
            &body,
        )
        .await;
    assert_eq!(status, 200);
    let (status, response) = api
        .call(
            "POST",
            "/api/widget/auth",
            None,
            &[("x-organization-id", &org), ("Origin", "https://evil.example")],
            &body,
        )
        .await;
    assert_eq!(status, 403, "{response}");
    api.relay.stop().await;
}
