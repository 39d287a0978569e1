//! Relays that follow several databases ("shards"): organizations on two clusters served by one
//! relay and by two, a resume answered from its own shard's log, one shard stopped (or its link
//! black-holed) while the other keeps delivering and caught up when it is back, and a topic
//! authorized only against its organization's shard.

mod common;

use campfire_relay::{Config, Options, ShardSpec};
use campfire_testkit::OwnCluster;
use campfire_testkit::ws::{Client, Received};
use common::proxy::Proxy;
use common::{Fixture, Relay, http, metric, token, wait_until};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Two shards: `a`, the default, on the shared cluster; `b` on a cluster of this test's own,
/// placed there by a placement file.
struct TwoShards {
    a: Fixture,
    b: Fixture,
    placement: PathBuf,
    // After the fixtures: their databases are dropped while the cluster still runs.
    cluster_b: OwnCluster,
}

impl TwoShards {
    async fn new() -> TwoShards {
        let cluster_b = tokio::task::spawn_blocking(OwnCluster::start).await.unwrap();
        let (a, b) = tokio::join!(Fixture::new(), Fixture::on(cluster_b.port));
        let placement = std::env::temp_dir().join(format!("campfire-placement-{}.toml", Uuid::new_v4()));
        std::fs::write(&placement, format!("b = [\"{}\"]\n", b.org)).unwrap();
        TwoShards { a, b, placement, cluster_b }
    }

    fn config(&self) -> Config {
        self.config_via(self.b.cluster_addr())
    }

    /// The relay's configuration with shard b reached at `b_at` (a proxy in front of its cluster).
    fn config_via(&self, b_at: SocketAddr) -> Config {
        let mut config = self.a.config();
        config.shards = vec![ShardSpec::parse(&format!("b={}", self.b.relay_url_via(b_at))).unwrap()];
        config.placement = Some(self.placement.clone());
        config
    }

    async fn relay(&self) -> Relay {
        Relay::start_with(self.config(), Options::default()).await
    }
}

impl Drop for TwoShards {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.placement);
    }
}

/// A join of `f`'s conversation as its agent, with the token in the join (one connection may
/// hold channels of several organizations), resuming after `cursor` when given.
fn join_payload(f: &Fixture, cursor: Option<i64>) -> Value {
    let mut broadcast = json!({"self": false});
    if let Some(cursor) = cursor {
        broadcast["cursor"] = json!(cursor);
    }
    json!({"config": {"broadcast": broadcast}, "access_token": f.agent_token()})
}

fn content(frame: &Received) -> &str {
    frame.payload["payload"]["message"]["content"].as_str().unwrap_or_default()
}

fn cursor(frame: &Received) -> i64 {
    frame.payload["payload"]["cursor"].as_i64().unwrap()
}

/// The next message:created on the realtime topic of `f`'s conversation.
async fn next_message(client: &mut Client, f: &Fixture) -> Received {
    let topic = format!("realtime:{}", f.topic());
    client.recv_where(|m| m.topic == topic && m.event == "broadcast" && m.payload["event"] == "message:created").await
}

/// Sends `count` messages as `f`'s agent, named `prefix 1`, `prefix 2`, ...
async fn send_messages(f: &Fixture, prefix: &str, count: usize) -> Vec<String> {
    let db = f.agent_db().await;
    let mut sent = Vec::new();
    for i in 1..=count {
        let text = format!("{prefix} {i}");
        f.send_as_agent(&db, &text).await;
        sent.push(text);
    }
    sent
}

/// What the messages among the frames `client` receives within a short quiet spell say.
async fn quiet_messages(client: &mut Client) -> Vec<String> {
    let frames = client.drain(Duration::from_millis(500)).await;
    frames.iter().filter(|m| m.payload["event"] == "message:created").map(|m| content(m).to_owned()).collect()
}

/// What /healthz says (with 200) when every shard is up, and when some are down but one serves.
const OK: &str = r#"{"status":"ok"}"#;
const DEGRADED: &str = r#"{"status":"degraded"}"#;

async fn healthz(addr: SocketAddr) -> (u16, String) {
    http(addr, "GET", "/healthz", &[], "").await
}

async fn health_details(addr: SocketAddr) -> Value {
    serde_json::from_str(&http(addr, "GET", "/healthz/details", &[], "").await.1).unwrap()
}

/// A join of `f`'s conversation, refused with the clear "database unavailable" of a shard down.
async fn join_refused_as_unavailable(client: &mut Client, f: &Fixture) {
    let (_, reply) = client.join(&f.topic(), join_payload(f, None)).await;
    assert_eq!(reply.payload["status"], "error", "{:?}", reply.payload);
    let reason = reply.payload["response"]["reason"].as_str().unwrap();
    assert!(reason.contains("database is unavailable"), "{reason}");
}

#[tokio::test(flavor = "multi_thread")]
async fn organizations_on_two_shards_are_served_by_one_relay_and_by_two() {
    let shards = TwoShards::new().await;
    let (a, b) = (&shards.a, &shards.b);
    // Shard a's log runs far ahead of b's: a relay comparing b's ids with a's would drop b's.
    send_messages(a, "history", 20).await;
    let one = shards.relay().await;
    let two = shards.relay().await;

    let mut a_on_one = Client::connect(one.addr, "2.0.0", &a.agent_token()).await;
    a_on_one.join_ok(&a.topic(), join_payload(a, None)).await;
    let mut b_on_one = Client::connect(one.addr, "2.0.0", &b.agent_token()).await;
    b_on_one.join_ok(&b.topic(), join_payload(b, None)).await;
    let mut b_on_two = Client::connect(two.addr, "1.0.0", &b.agent_token()).await;
    b_on_two.join_ok(&b.topic(), join_payload(b, None)).await;

    send_messages(a, "to a", 1).await;
    send_messages(b, "to b", 1).await;
    assert_eq!(content(&next_message(&mut a_on_one, a).await), "to a 1");
    for client in [&mut b_on_one, &mut b_on_two] {
        assert_eq!(content(&next_message(client, b).await), "to b 1");
    }

    // A client broadcast on b's topic crosses between the relays through the default shard.
    let typing = format!("{}:typing", b.topic());
    let typing_ref = b_on_one.join_ok(&typing, join_payload(b, None)).await;
    b_on_two.join_ok(&typing, join_payload(b, None)).await;
    let start = json!({"type": "broadcast", "event": "typing:start", "payload": {"who": "agent b"}});
    b_on_one.push(Some(&typing_ref), &format!("realtime:{typing}"), "broadcast", start).await;
    assert_eq!(b_on_two.broadcast_event("typing:start").await.payload["payload"]["who"], "agent b");

    // The widget's token exchange and its messages go to the shard of the organization named.
    let org_b = b.org.to_string();
    let request = json!({"visitorId": "visitor-on-b"}).to_string();
    let headers = [("x-organization-id", org_b.as_str()), ("content-type", "application/json")];
    let (status, session) = http(one.addr, "POST", "/api/widget/auth", &headers, &request).await;
    assert_eq!(status, 200, "{session}");
    let session: Value = serde_json::from_str(&session).unwrap();
    let bearer = format!("Bearer {}", session["accessToken"].as_str().unwrap());
    let message = json!({"conversationId": session["conversationId"], "content": "from the widget"}).to_string();
    let (status, sent) = http(
        two.addr,
        "POST",
        "/api/widget/messages",
        &[("authorization", &bearer), ("content-type", "application/json")],
        &message,
    )
    .await;
    assert_eq!(status, 201, "{sent}");

    // A dashboard call by conversation id names its organization: with two shards it must.
    let agent_b = format!("Bearer {}", b.agent_token());
    let history = format!("/api/dashboard/conversations/{}/messages", b.conversation);
    let (status, refused) = http(one.addr, "GET", &history, &[("authorization", &agent_b)], "").await;
    assert_eq!(status, 400, "{refused}");
    assert!(refused.contains("x-organization-id"), "{refused}");
    let (status, answered) =
        http(one.addr, "GET", &history, &[("authorization", &agent_b), ("x-organization-id", &org_b)], "").await;
    assert_eq!(status, 200, "{answered}");
    let contents: Vec<Value> = serde_json::from_str::<Value>(&answered).unwrap()["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].clone())
        .collect();
    assert_eq!(contents, [json!("to b 1")]);

    // Each relay reports both shards, with their own cursors.
    let details: Value = serde_json::from_str(&one.get("/healthz/details").await).unwrap();
    assert_eq!(details["status"], "ok", "{details}");
    for shard in ["default", "b"] {
        assert_eq!(details["shards"][shard]["status"], "ok", "{details}");
        assert_eq!(details["shards"][shard]["lag"], 0, "{details}");
    }
    let a_cursor = details["shards"]["default"]["last_event_id"].as_i64().unwrap();
    let b_cursor = details["shards"]["b"]["last_event_id"].as_i64().unwrap();
    assert!(a_cursor > b_cursor, "{details}");
    assert_eq!(one.metric(r#"campfire_db_link_up{connection="listen",shard="b"}"#).await, 1.0);
    assert!(one.metric(r#"campfire_events_in_total{shard="b"}"#).await >= 2.0);
    one.stop().await;
    two.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_resuming_on_two_shards_gets_exactly_what_it_missed_on_each() {
    let shards = TwoShards::new().await;
    let (a, b) = (&shards.a, &shards.b);
    send_messages(a, "history", 20).await;
    let relay = shards.relay().await;
    // One connection, a channel of each organization (the token is in each join).
    let mut client = Client::connect(relay.addr, "2.0.0", "sb_publishable_key").await;
    client.join_ok(&a.topic(), join_payload(a, None)).await;
    client.join_ok(&b.topic(), join_payload(b, None)).await;
    send_messages(a, "seen a", 1).await;
    let cursor_a = cursor(&next_message(&mut client, a).await);
    send_messages(b, "seen b", 1).await;
    let cursor_b = cursor(&next_message(&mut client, b).await);
    assert!(cursor_a > cursor_b + 20, "the logs' ids differ: a at {cursor_a}, b at {cursor_b}");
    drop(client);

    // Offline while both shards move on.
    let missed_a = send_messages(a, "missed a", 3).await;
    let missed_b = send_messages(b, "missed b", 4).await;
    let mut client = Client::connect(relay.addr, "2.0.0", "sb_publishable_key").await;
    for (f, cursor, missed) in [(a, cursor_a, &missed_a), (b, cursor_b, &missed_b)] {
        client.join_ok(&f.topic(), join_payload(f, Some(cursor))).await;
        let mut got = Vec::new();
        while got.len() < missed.len() {
            got.push(content(&next_message(&mut client, f).await).to_owned());
        }
        assert_eq!(&got, missed, "exactly the missed ones, in order");
    }
    assert_eq!(quiet_messages(&mut client).await, Vec::<String>::new(), "none twice");

    // Live events on both shards follow the replays.
    send_messages(b, "live b", 1).await;
    assert_eq!(content(&next_message(&mut client, b).await), "live b 1");
    send_messages(a, "live a", 1).await;
    assert_eq!(content(&next_message(&mut client, a).await), "live a 1");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_shard_down_the_other_keeps_delivering_and_it_catches_up_when_back() {
    let shards = TwoShards::new().await;
    let (a, b) = (&shards.a, &shards.b);
    let relay = shards.relay().await;
    let mut on_a = Client::connect(relay.addr, "2.0.0", &a.agent_token()).await;
    on_a.join_ok(&a.topic(), join_payload(a, None)).await;
    let mut on_b = Client::connect(relay.addr, "2.0.0", &b.agent_token()).await;
    on_b.join_ok(&b.topic(), join_payload(b, None)).await;

    tokio::task::block_in_place(|| shards.cluster_b.stop());
    let addr = relay.addr;
    wait_until("the relay sees shard b down", || async move {
        health_details(addr).await["shards"]["b"]["status"] == "down"
    })
    .await;
    // Still serving: the relay stays in the load balancer for the organizations of shard a.
    assert_eq!(healthz(addr).await, (200, DEGRADED.to_owned()));
    assert_eq!(relay.metric(r#"campfire_db_link_up{connection="listen",shard="b"}"#).await, 0.0);

    send_messages(a, "while b is down", 2).await;
    for expected in ["while b is down 1", "while b is down 2"] {
        assert_eq!(content(&next_message(&mut on_a, a).await), expected);
    }
    // Joins and calls for b's organization get the clear "database unavailable"; a's work.
    let mut late = Client::connect(relay.addr, "2.0.0", "sb_publishable_key").await;
    join_refused_as_unavailable(&mut late, b).await;
    late.join_ok(&a.topic(), join_payload(a, None)).await;
    let org_b = b.org.to_string();
    let (status, _) = http(addr, "GET", "/api/widget/config", &[("x-organization-id", &org_b)], "").await;
    assert_eq!(status, 503);
    let org_a = a.org.to_string();
    assert_eq!(http(addr, "GET", "/api/widget/config", &[("x-organization-id", &org_a)], "").await.0, 200);

    // Back: what b's organization wrote is delivered once, in order, to the channel held all along.
    tokio::task::block_in_place(|| shards.cluster_b.restart());
    let after = send_messages(b, "after the restart", 3).await;
    let mut got = Vec::new();
    while got.len() < after.len() {
        got.push(content(&next_message(&mut on_b, b).await).to_owned());
    }
    assert_eq!(got, after);
    assert_eq!(quiet_messages(&mut on_b).await, Vec::<String>::new(), "none twice");
    wait_until("the relay reports shard b up again", || async move { healthz(addr).await == (200, OK.to_owned()) })
        .await;
    assert!(relay.metric(r#"campfire_listen_reconnects_total{shard="b"}"#).await >= 1.0);
    assert_eq!(relay.metric(r#"campfire_listen_reconnects_total{shard="default"}"#).await, 0.0);
    late.join_ok(&b.topic(), join_payload(b, None)).await;
    relay.stop().await;
}

/// Sends one message as `f`'s agent and waits for `client` to receive it; returns how long that
/// took after its commit.
async fn delivery_time(client: &mut Client, f: &Fixture, text: &str) -> Duration {
    let sent = send_messages(f, text, 1).await;
    let committed = Instant::now();
    assert_eq!(content(&next_message(client, f).await), sent[0]);
    committed.elapsed()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_black_holed_link_to_one_shard_is_given_up_and_replaced_while_the_other_keeps_delivering() {
    // Probes every 200 ms, answers due within 500 ms: a silent link is given up within 0.7 s.
    const PROBE_MS: u64 = 200;
    const TIMEOUT_MS: u64 = 500;
    // Generous for a busy machine, and far below the 10 s the default settings would take.
    const NOTICED_WITHIN: Duration = Duration::from_secs(3);
    // A delivery on a that waited on b's dead link would wait at least one timeout.
    const UNHINDERED: Duration = Duration::from_millis(TIMEOUT_MS);
    // Joins for b while it is down: each waits for at most one attempt to connect (one may be
    // under way when it comes), not for those of the joins before it.
    const CONCURRENT_JOINS: usize = 8;
    const REFUSED_WITHIN: Duration = Duration::from_millis(3 * TIMEOUT_MS);

    let shards = TwoShards::new().await;
    let (a, b) = (&shards.a, &shards.b);
    // Only the relay's connections to b go through the proxy: the writers reach b directly.
    let proxy = Proxy::start(b.cluster_addr()).await;
    let mut config = shards.config_via(proxy.addr);
    config.db_probe_interval_ms = PROBE_MS;
    config.db_timeout_ms = TIMEOUT_MS;
    let relay = Relay::start_with(config, Options::default()).await;
    let addr = relay.addr;
    let mut on_a = Client::connect(addr, "2.0.0", &a.agent_token()).await;
    on_a.join_ok(&a.topic(), join_payload(a, None)).await;
    let mut on_b = Client::connect(addr, "2.0.0", &b.agent_token()).await;
    on_b.join_ok(&b.topic(), join_payload(b, None)).await;
    let mut a_deliveries = vec![delivery_time(&mut on_a, a, "to a before").await];
    delivery_time(&mut on_b, b, "to b before").await;

    // b's LISTEN and query connections go silent, and so does every new one: no FIN, no RST.
    proxy.black_hole();
    let silenced = Instant::now();
    a_deliveries.push(delivery_time(&mut on_a, a, "to a, b just silenced").await);
    let given_up = |connection: &str| {
        let up = format!(r#"campfire_db_link_up{{connection="{connection}",shard="b"}}"#);
        let timeouts =
            format!(r#"campfire_db_link_failures_total{{connection="{connection}",reason="timeout",shard="b"}}"#);
        async move { metric(addr, &up).await == 0.0 && metric(addr, &timeouts).await >= 1.0 }
    };
    wait_until("both links to b given up for not answering", || async {
        given_up("listen").await && given_up("query").await
    })
    .await;
    let noticed = silenced.elapsed();
    assert!(noticed < NOTICED_WITHIN, "b's silent links given up after {noticed:?}");
    let details = health_details(addr).await;
    let (default, shard_b) = (&details["shards"]["default"], &details["shards"]["b"]);
    assert_eq!(details["status"], "degraded", "{details}");
    assert_eq!((&default["status"], &default["listen_connected"]), (&json!("ok"), &json!(true)), "{details}");
    let b_links = (&shard_b["status"], &shard_b["listen_connected"], &shard_b["query_connected"]);
    assert_eq!(b_links, (&json!("down"), &json!(false), &json!(false)), "{details}");
    assert_eq!(healthz(addr).await, (200, DEGRADED.to_owned()));

    // While b is down: what is written on it is for later, and a delivers as ever.
    let missed = send_messages(b, "to b while silent", 5).await;
    a_deliveries.push(delivery_time(&mut on_a, a, "to a while b is down").await);
    // Joins for b get the clear "database unavailable", all of them within about one timeout,
    // not one timeout after another; a's work.
    let mut late = Vec::new();
    for _ in 0..CONCURRENT_JOINS {
        late.push(Client::connect(addr, "2.0.0", "sb_publishable_key").await);
    }
    let asked = Instant::now();
    let refused_after = futures_util::future::join_all(late.iter_mut().map(|client| async move {
        join_refused_as_unavailable(client, b).await;
        asked.elapsed()
    }))
    .await;
    let slowest_refusal = *refused_after.iter().max().unwrap();
    assert!(slowest_refusal < REFUSED_WITHIN, "b's joins refused after {refused_after:?}");
    late[0].join_ok(&a.topic(), join_payload(a, None)).await;
    a_deliveries.push(delivery_time(&mut on_a, a, "to a after b's refusals").await);

    // The path comes back for new connections (the silent ones stay dead, as after a lost NAT
    // entry): the relay connects to b anew and replays what its subscriber missed.
    proxy.restore();
    let restored = Instant::now();
    let mut got = Vec::new();
    while got.len() < missed.len() {
        got.push(content(&next_message(&mut on_b, b).await).to_owned());
    }
    let caught_up = restored.elapsed();
    assert_eq!(got, missed, "what b wrote while silent, in order");
    assert_eq!(quiet_messages(&mut on_b).await, Vec::<String>::new(), "none twice");
    wait_until("the relay reports b up again", || async move { healthz(addr).await == (200, OK.to_owned()) }).await;
    delivery_time(&mut on_b, b, "to b after").await;
    a_deliveries.push(delivery_time(&mut on_a, a, "to a after").await);
    late[0].join_ok(&b.topic(), join_payload(b, None)).await;

    let slowest = *a_deliveries.iter().max().unwrap();
    assert!(slowest < UNHINDERED, "a's deliveries took {a_deliveries:?}");
    assert!(relay.metric(r#"campfire_listen_reconnects_total{shard="b"}"#).await >= 1.0);
    assert_eq!(relay.metric(r#"campfire_listen_reconnects_total{shard="default"}"#).await, 0.0);
    assert_eq!(
        relay.metric(r#"campfire_db_link_failures_total{connection="listen",reason="timeout",shard="default"}"#).await,
        0.0
    );
    eprintln!(
        "b black-holed -> both links given up: {noticed:?}; {CONCURRENT_JOINS} joins of b refused within \
         {slowest_refusal:?}; restored -> {} missed delivered: {caught_up:?}; a's deliveries: {a_deliveries:?}",
        missed.len()
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_topic_is_authorized_and_routed_only_on_its_organizations_shard() {
    let shards = TwoShards::new().await;
    let (a, b) = (&shards.a, &shards.b);
    // On shard a, an impostor copy of b's organization, with an intruder as its agent: asked
    // there, the intruder may read b's organization channel.
    let intruder = Uuid::new_v4();
    let topic = format!("org:{}", b.org);
    let admin_a = a.db_as(&json!({"role": "service_role"})).await;
    admin_a
        .execute("INSERT INTO campfire.organizations (id, name, slug) VALUES ($1, 'Impostor', 'impostor')", &[&b.org])
        .await
        .unwrap();
    admin_a.execute("SELECT campfire.add_member($1, $2, 'agent')", &[&b.org, &intruder]).await.unwrap();
    let claims = json!({"role": "authenticated", "sub": intruder});
    let on_a: String = admin_a
        .query_one("SELECT campfire.authorize_channel($1, $2::text::jsonb)::text", &[&topic, &claims.to_string()])
        .await
        .unwrap()
        .get(0);
    assert_eq!(serde_json::from_str::<Value>(&on_a).unwrap()["read"], true, "{on_a}");

    let relay = shards.relay().await;
    let intruder_token =
        token(json!({"role": "authenticated", "sub": intruder, "exp": campfire_relay::auth::now() + 3600}));
    let mut client = Client::connect(relay.addr, "2.0.0", &intruder_token).await;
    let (_, reply) = client.join(&topic, json!({"config": {}})).await;
    assert_eq!(reply.payload["status"], "error", "asked on shard b, the intruder is no member: {:?}", reply.payload);

    // Events shard a logs for b's organization are not b's: they never reach b's subscribers.
    let mut member = Client::connect(relay.addr, "2.0.0", &b.agent_token()).await;
    member.join_ok(&topic, json!({"config": {}})).await;
    admin_a
        .execute("SELECT campfire.broadcast($1, $2, 'notice', '{\"from\": \"shard a\"}')", &[&b.org, &topic])
        .await
        .unwrap();
    let admin_b = b.db_as(&json!({"role": "service_role"})).await;
    admin_b
        .execute("SELECT campfire.broadcast($1, $2, 'notice', '{\"from\": \"shard b\"}')", &[&b.org, &topic])
        .await
        .unwrap();
    let notice = member.broadcast_event("notice").await;
    assert_eq!(notice.payload["payload"]["from"], "shard b");
    let addr = relay.addr;
    wait_until("shard a's event counted as another shard's", || async move {
        metric(addr, r#"campfire_drops_total{reason="event_of_another_shard"}"#).await >= 1.0
    })
    .await;
    assert!(member.drain(Duration::from_millis(300)).await.iter().all(|m| m.payload["event"] != "notice"));
    relay.stop().await;
}
