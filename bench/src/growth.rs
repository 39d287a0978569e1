//! Scenario 6: how the visitor's and the agent's paths cost as data grows. A database of its own
//! is grown step by step with the bulk fixture of the tests (`tests/fixtures/growth.sql`: 1,000
//! organizations, one widget session per ten conversations, ten messages per conversation, the
//! open conversations' events), and after each step every path is timed, from this process, as
//! its principal.
//! The first step is a near-empty database; the table gives each later step's p50 as a ratio to it.

use anyhow::Result;
use serde_json::{Value, json};
use std::time::Instant;
use tokio_postgres::{Client, NoTls};

const ORGANIZATIONS: i32 = 1000;
const MESSAGES_PER_CONVERSATION: i32 = 10;
/// The near-empty first step: a hundred widget sessions, two thousand events (a resume of a
/// thousand finds a thousand).
const BASELINE_CONVERSATIONS: usize = 1000;

async fn connect(port: u16, user: &str) -> Result<Client> {
    let (client, connection) =
        tokio_postgres::connect(&format!("host=127.0.0.1 port={port} user={user} dbname=campfire_growth"), NoTls)
            .await?;
    tokio::spawn(connection);
    Ok(client)
}

async fn acting_as(port: u16, user: &str, claims: &Value) -> Result<Client> {
    let client = connect(port, user).await?;
    client.execute("SELECT set_config('request.jwt.claims', $1, false)", &[&claims.to_string()]).await?;
    Ok(client)
}

/// The principals and ids the paths use: visitor 5 of organization 6 (conversations 50-59,
/// the last one open), that organization's agent, and the relay's login.
struct Cast {
    visitor: Client,
    agent: Client,
    relay: Client,
    org: uuid::Uuid,
    conversation: uuid::Uuid,
    secret: String,
    visitor_claims: Value,
}

async fn cast(port: u16) -> Result<Cast> {
    let admin = connect(port, "postgres").await?;
    admin.batch_execute(include_str!("../../tests/fixtures/growth.sql")).await?;
    let ids = admin
        .query_one(
            "SELECT pg_temp.grow_id('org', 6), pg_temp.grow_id('session', 5), pg_temp.grow_id('conv', 59), \
                    pg_temp.grow_id('agent', 6)",
            &[],
        )
        .await?;
    let (org, session, conversation, agent): (uuid::Uuid, uuid::Uuid, uuid::Uuid, uuid::Uuid) =
        (ids.get(0), ids.get(1), ids.get(2), ids.get(3));
    let secret: String = admin
        .query_one(
            "SELECT campfire.widget_secret(campfire.server_key(), s.id, s.secret_nonce) \
             FROM campfire.widget_sessions s WHERE s.id = $1",
            &[&session],
        )
        .await?
        .get(0);
    let visitor_claims = json!({ "role": "visitor", "widget_session_id": session });
    let agent_claims = json!({ "role": "authenticated", "sub": agent });
    Ok(Cast {
        visitor: acting_as(port, "campfire_growth_client", &visitor_claims).await?,
        agent: acting_as(port, "campfire_growth_client", &agent_claims).await?,
        relay: connect(port, "campfire_relay_bench").await?,
        org,
        conversation,
        secret,
        visitor_claims,
    })
}

/// p50 and p99 in milliseconds of `reps` calls of `sql`, each with the parameters `params(i)`.
async fn time(client: &Client, sql: &str, reps: usize, params: impl Fn(usize) -> Vec<String>) -> Result<(f64, f64)> {
    let statement = client.prepare(sql).await?;
    let mut samples = Vec::with_capacity(reps);
    for i in 0..reps {
        let values = params(i);
        let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            values.iter().map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync)).collect();
        let started = Instant::now();
        client.query(&statement, &refs).await?;
        samples.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Ok((crate::percentile(&samples, 0.5), crate::percentile(&samples, 0.99)))
}

/// Times every path once the database holds its current data; `step` keeps new visitors unique.
async fn measure(cast: &Cast, step: usize, reps: usize) -> Result<Vec<(&'static str, (f64, f64))>> {
    let (org, conversation, secret) = (cast.org.to_string(), cast.conversation.to_string(), cast.secret.clone());
    let conv_topic = format!("org:{org}:conv:{conversation}");
    let claims = cast.visitor_claims.to_string();
    let (v, a, r) = (&cast.visitor, &cast.agent, &cast.relay);
    let one = |value: &str| {
        let value = value.to_owned();
        move |_: usize| vec![value.clone()]
    };
    // The keyset of the last row of the first page of 200 (or of all, when fewer).
    let deep_page = a
        .query("SELECT (conversation).updated_at::text, (conversation).id::text FROM campfire.list_conversations($1::text::uuid, max_rows => 200)", &[&org])
        .await?
        .last()
        .map(|row| (row.get::<_, String>(0), row.get::<_, String>(1)))
        .unwrap_or_default();
    let head: i64 = r.query_one("SELECT campfire.log_head()", &[]).await?.get(0);
    let resume_from = (head - 1000).max(0).to_string();
    Ok(vec![
        (
            "visitor start_widget_session (new)",
            time(v, "SELECT campfire.start_widget_session($1::text::uuid, $2)", reps, |i| {
                vec![org.clone(), format!("growth-new-{step}-{i}")]
            })
            .await?,
        ),
        (
            "visitor start_widget_session (resume)",
            time(
                v,
                "SELECT campfire.start_widget_session($1::text::uuid, 'grow-visitor-5', resume_secret => $2)",
                reps,
                |_| vec![org.clone(), secret.clone()],
            )
            .await?,
        ),
        (
            "visitor send_message",
            time(v, "SELECT campfire.send_message($1::text::uuid, $2)", reps, |i| {
                vec![conversation.clone(), format!("visitor {step}/{i}")]
            })
            .await?,
        ),
        ("visitor history", time(v, "SELECT * FROM campfire.history($1::text::uuid)", reps, one(&conversation)).await?),
        ("visitor mark_read", time(v, "SELECT campfire.mark_read($1::text::uuid)", reps, one(&conversation)).await?),
        (
            "visitor events_since (own channel)",
            time(v, "SELECT * FROM campfire.events_since(0, $1)", reps, one(&conv_topic)).await?,
        ),
        (
            "agent send_message",
            time(a, "SELECT campfire.send_message($1::text::uuid, $2)", reps, |i| {
                vec![conversation.clone(), format!("agent {step}/{i}")]
            })
            .await?,
        ),
        (
            "agent list_conversations (first page)",
            time(a, "SELECT * FROM campfire.list_conversations($1::text::uuid)", reps, one(&org)).await?,
        ),
        (
            "agent list_conversations (after 200 rows)",
            time(
                a,
                "SELECT * FROM campfire.list_conversations($1::text::uuid, after_updated_at => $2::text::timestamptz, \
                 after_id => $3::text::uuid)",
                reps,
                |_| vec![org.clone(), deep_page.0.clone(), deep_page.1.clone()],
            )
            .await?,
        ),
        (
            "relay authorize_channel",
            time(r, "SELECT campfire.authorize_channel($1, $2::text::jsonb)", reps, |_| {
                vec![conv_topic.clone(), claims.clone()]
            })
            .await?,
        ),
        (
            "relay resume: read_log of 1,000 events",
            time(r, "SELECT * FROM campfire.read_log($1::text::bigint, 1000)", reps, one(&resume_from)).await?,
        ),
    ])
}

/// Grows the database to each of `sizes` conversations in turn and measures every path there.
pub async fn growth(port: u16, sizes: &[usize], reps: usize) -> Result<Value> {
    let admin = crate::connect(port, "postgres").await?;
    admin.batch_execute("DROP DATABASE IF EXISTS campfire_growth").await?;
    admin.batch_execute("CREATE DATABASE campfire_growth").await?;
    admin
        .batch_execute(
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'campfire_growth_client') THEN \
             CREATE ROLE campfire_growth_client LOGIN IN ROLE campfire_client; END IF; END $$",
        )
        .await?;
    let loader = connect(port, "postgres").await?;
    loader.batch_execute("CREATE EXTENSION pg_campfire").await?;
    loader.batch_execute(include_str!("../../tests/fixtures/growth.sql")).await?;

    let mut steps: Vec<Value> = Vec::new();
    let mut loaded = 0;
    let mut cast_of_principals = None;
    for &size in std::iter::once(&BASELINE_CONVERSATIONS).chain(sizes) {
        let started = Instant::now();
        let add = (size.saturating_sub(loaded) / 10 * 10) as i32;
        if add > 0 {
            loader
                .execute(
                    "SELECT pg_temp.campfire_grow($1, $2, $3)",
                    &[&ORGANIZATIONS, &add, &MESSAGES_PER_CONVERSATION],
                )
                .await?;
            loaded += add as usize;
        }
        loader.batch_execute("VACUUM ANALYZE").await?;
        let load_seconds = started.elapsed().as_secs_f64();
        if cast_of_principals.is_none() {
            cast_of_principals = Some(cast(port).await?);
        }
        let cast = cast_of_principals.as_ref().expect("cast after the first step");
        let figures = measure(cast, steps.len(), reps).await?;
        let baseline = steps.first().cloned();
        let mut paths = serde_json::Map::new();
        for (name, (p50, p99)) in figures {
            let ratio = baseline.as_ref().and_then(|b| b["paths"][name]["p50_ms"].as_f64()).map(|base| p50 / base);
            paths.insert(name.to_owned(), json!({ "p50_ms": p50, "p99_ms": p99, "p50_ratio_to_first": ratio }));
        }
        println!("growth: {loaded} conversations, {} messages (loaded in {load_seconds:.0} s)", loaded * 10);
        for (name, figure) in &paths {
            println!(
                "  {name:<42} p50 {:>7.2} ms  p99 {:>7.2} ms  {}",
                figure["p50_ms"].as_f64().unwrap_or(f64::NAN),
                figure["p99_ms"].as_f64().unwrap_or(f64::NAN),
                figure["p50_ratio_to_first"].as_f64().map(|r| format!("{r:.2}x the first step")).unwrap_or_default()
            );
        }
        steps.push(
            json!({ "conversations": loaded, "messages": loaded * 10, "load_seconds": load_seconds, "paths": paths }),
        );
    }
    drop((cast_of_principals, loader));
    admin.batch_execute("DROP DATABASE campfire_growth WITH (FORCE)").await?;
    Ok(json!({ "organizations": ORGANIZATIONS, "reps": reps, "steps": steps }))
}
