//! Tokens as identity providers issue them, checked by the relay over real sockets:
//! - audiences, issuers and `nbf`
//! - RS256, ES256 and EdDSA keys from a JWKS served over HTTP (rotated, and flooded with made-up
//!   key ids) or read from a file
//! - joins under a connection credential that has expired
//! - revocation of an agent whose `sub` is in capitals
//! - what a service_role token may do
//! - a Supabase API key as apikey

mod common;

use campfire_relay::Options;
use campfire_relay::auth;
use campfire_relay::config::TokenConfig;
use campfire_relay::jwks::JwksSource;
use campfire_testkit::ws::{Client, ws_url};
use common::{Fixture, Relay, http, token};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;

const SUPABASE_ISSUER: &str = "https://project-ref.supabase.co/auth/v1";

/// The claims of an access token Supabase Auth issues to a signed-in user.
fn supabase_claims(user: Uuid, aud: &str) -> Value {
    let now = auth::now();
    json!({
        "aud": aud, "exp": now + 3600, "iat": now, "iss": SUPABASE_ISSUER, "sub": user,
        "email": "agent@example.com", "phone": "", "role": "authenticated", "aal": "aal1",
        "app_metadata": {"provider": "email", "providers": ["email"]}, "user_metadata": {},
        "amr": [{"method": "password", "timestamp": now}], "session_id": Uuid::new_v4(), "is_anonymous": false,
    })
}

/// Key pairs made for these tests only, by kid: `alg`, `private_pem` and the public `jwk`.
fn test_keys() -> Value {
    serde_json::from_str(include_str!("keys/test-signing-keys.json")).unwrap()
}

/// A JWKS publishing the public halves of `kids`.
fn jwks(kids: &[&str]) -> Value {
    let keys = test_keys();
    json!({ "keys": kids.iter().map(|kid| keys[*kid]["jwk"].clone()).collect::<Vec<_>>() })
}

/// A token signed with the private key `key`, its header naming `kid`.
fn signed_with(key: &str, kid: &str, claims: &Value) -> String {
    let keys = test_keys();
    let pem = keys[key]["private_pem"].as_str().unwrap().as_bytes();
    let (alg, encoding) = match keys[key]["alg"].as_str().unwrap() {
        "RS256" => (Algorithm::RS256, EncodingKey::from_rsa_pem(pem)),
        "ES256" => (Algorithm::ES256, EncodingKey::from_ec_pem(pem)),
        "EdDSA" => (Algorithm::EdDSA, EncodingKey::from_ed_pem(pem)),
        other => panic!("no test key for {other}"),
    };
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &encoding.unwrap()).unwrap()
}

fn signed(kid: &str, claims: &Value) -> String {
    signed_with(kid, kid, claims)
}

/// An identity provider's JWKS endpoint on a loopback port: the test changes what it publishes
/// and counts how often it is read.
struct JwksServer {
    addr: SocketAddr,
    document: Arc<Mutex<Value>>,
    reads: Arc<AtomicUsize>,
}

impl JwksServer {
    async fn start(kids: &[&str]) -> JwksServer {
        let document = Arc::new(Mutex::new(jwks(kids)));
        let reads = Arc::new(AtomicUsize::new(0));
        let (served, counted) = (document.clone(), reads.clone());
        let app = axum::Router::new().route(
            "/.well-known/jwks.json",
            axum::routing::get(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                let body = served.lock().unwrap().clone();
                async move { axum::Json(body) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        JwksServer { addr, document, reads }
    }

    fn publish(&self, kids: &[&str]) {
        *self.document.lock().unwrap() = jwks(kids);
    }

    fn reads(&self) -> usize {
        self.reads.load(Ordering::SeqCst)
    }

    fn source(&self) -> Option<JwksSource> {
        Some(JwksSource::parse(&format!("http://{}/.well-known/jwks.json", self.addr)).unwrap())
    }
}

/// A relay whose token settings are the defaults with `jwks` and then `adjust` applied.
async fn relay_with_tokens(f: &Fixture, jwks: Option<JwksSource>, adjust: impl FnOnce(&mut TokenConfig)) -> Relay {
    let mut config = f.config();
    config.tokens.jwks = jwks;
    adjust(&mut config.tokens);
    Relay::start_with(config, Options::default()).await
}

/// The status and body with which the relay refuses a WebSocket handshake.
async fn refused_handshake(addr: SocketAddr, apikey: &str) -> (u16, String) {
    use tokio_tungstenite::tungstenite::Error;
    match tokio_tungstenite::connect_async(ws_url(addr, "2.0.0", apikey)).await {
        Err(Error::Http(response)) => {
            let body = response.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default();
            (response.status().as_u16(), body.into_owned())
        }
        Err(other) => panic!("the handshake failed without an HTTP answer: {other}"),
        Ok(_) => panic!("the handshake was accepted"),
    }
}

/// Connects with `apikey` and joins `topic` under it.
async fn joins(relay: &Relay, apikey: &str, topic: &str) {
    let mut client = Client::connect(relay.addr, "2.0.0", apikey).await;
    client.join_ok(topic, json!({"config": {}})).await;
}

/// The reason a join carrying `access_token` is refused.
async fn join_refusal(client: &mut Client, topic: &str, access_token: &str) -> String {
    let (_, reply) = client.join(topic, json!({"config": {}, "access_token": access_token})).await;
    assert_eq!(reply.payload["status"], "error", "{:?}", reply.payload);
    reply.payload["response"]["reason"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn supabase_auth_tokens_are_accepted_and_other_audiences_refused() {
    let f = Fixture::new().await;
    let relay = Relay::start(&f).await;
    let supabase = token(supabase_claims(f.agent, "authenticated"));
    let mut client = Client::connect(relay.addr, "2.0.0", &supabase).await;
    client.join_ok(&f.topic(), json!({"config": {}})).await;

    let foreign = token(supabase_claims(f.agent, "billing-api"));
    let (status, body) = refused_handshake(relay.addr, &foreign).await;
    assert_eq!(status, 401);
    assert!(body.contains("Token audience (aud) is not accepted here; accepted: authenticated"), "{body}");
    assert_eq!(
        join_refusal(&mut client, &format!("{}:typing", f.topic()), &foreign).await,
        "InvalidJWTToken: Token audience (aud) is not accepted here; accepted: authenticated"
    );
    relay.stop().await;

    // The operator's audiences replace the default.
    let relay =
        relay_with_tokens(&f, None, |tokens| tokens.audiences = vec!["campfire".into(), "dashboard".into()]).await;
    joins(&relay, &token(supabase_claims(f.agent, "dashboard")), &f.topic()).await;
    let (status, body) = refused_handshake(relay.addr, &supabase).await;
    assert_eq!((status, body.contains("accepted: campfire, dashboard")), (401, true), "{body}");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_valid_only_later_and_foreign_issuers_are_refused() {
    let f = Fixture::new().await;
    let relay = Relay::start(&f).await;
    let mut later = supabase_claims(f.agent, "authenticated");
    later["nbf"] = json!(auth::now() + 3600);
    let (status, body) = refused_handshake(relay.addr, &token(later.clone())).await;
    assert_eq!((status, body.contains("Token is not valid yet")), (401, true), "{body}");
    let mut client = Client::connect(relay.addr, "2.0.0", &f.agent_token()).await;
    assert_eq!(
        join_refusal(&mut client, &f.topic(), &token(later)).await,
        "InvalidJWTToken: Token is not valid yet (its nbf is in the future)"
    );
    relay.stop().await;

    let relay = relay_with_tokens(&f, None, |tokens| tokens.issuers = vec![SUPABASE_ISSUER.into()]).await;
    joins(&relay, &token(supabase_claims(f.agent, "authenticated")), &f.topic()).await;
    let mut elsewhere = supabase_claims(f.agent, "authenticated");
    elsewhere["iss"] = json!("https://other-project.supabase.co/auth/v1");
    let (status, body) = refused_handshake(relay.addr, &token(elsewhere)).await;
    assert_eq!(status, 401);
    assert!(
        body.contains(&format!(
            "Token issuer (iss) is missing or not accepted here; accepted: {SUPABASE_ISSUER}, campfire-relay"
        )),
        "{body}"
    );
    let (status, _) = refused_handshake(relay.addr, &f.agent_token()).await;
    assert_eq!(status, 401, "a token without iss is refused when issuers are configured");
    // The visitor tokens the relay mints name the relay as their issuer.
    let body = json!({ "sessionSecret": f.secret }).to_string();
    let (status, minted) =
        http(relay.addr, "POST", "/api/widget/token", &[("Content-Type", "application/json")], &body).await;
    assert_eq!(status, 200, "{minted}");
    let visitor: Value = serde_json::from_str(&minted).unwrap();
    joins(&relay, visitor["access_token"].as_str().unwrap(), &f.topic()).await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rs256_es256_and_eddsa_tokens_verify_with_keys_from_a_jwks_url() {
    let f = Fixture::new().await;
    let idp = JwksServer::start(&["rsa-1", "ec-1", "ed-1"]).await;
    let relay = relay_with_tokens(&f, idp.source(), |_| {}).await;
    let claims = supabase_claims(f.agent, "authenticated");
    for kid in ["rsa-1", "ec-1", "ed-1"] {
        joins(&relay, &signed(kid, &claims), &f.topic()).await;
    }
    joins(&relay, &f.agent_token(), &f.topic()).await; // HS256 with the shared secret still works

    // Signed by an unpublished key under a published key's id; an ES256 token naming an RSA key.
    let (status, body) = refused_handshake(relay.addr, &signed_with("ec-2", "ec-1", &claims)).await;
    assert_eq!((status, body.contains("Failed to validate JWT signature")), (401, true), "{body}");
    let (status, body) = refused_handshake(relay.addr, &signed_with("ec-1", "rsa-1", &claims)).await;
    assert_eq!(status, 401);
    assert!(body.contains("key `rsa-1` verifies RS256, not ES256"), "{body}");
    let mut client = Client::connect(relay.addr, "2.0.0", &f.agent_token()).await;
    let mut expired = claims.clone();
    expired["exp"] = json!(auth::now() - 5);
    assert_eq!(
        join_refusal(&mut client, &f.topic(), &signed("ed-1", &expired)).await,
        "InvalidJWTToken: Token has expired"
    );
    assert_eq!(idp.reads(), 1, "keys published at start need no further read");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn signing_keys_rotate_in_and_out_without_a_restart() {
    let f = Fixture::new().await;
    let idp = JwksServer::start(&["ec-1"]).await;
    let relay = relay_with_tokens(&f, idp.source(), |tokens| {
        tokens.jwks_max_age_secs = 1;
        tokens.jwks_cooldown_secs = 1;
    })
    .await;
    let claims = supabase_claims(f.agent, "authenticated");
    let past_cooldown = Duration::from_millis(1200);
    joins(&relay, &signed("ec-1", &claims), &f.topic()).await;

    tokio::time::sleep(past_cooldown).await;
    let (status, body) = refused_handshake(relay.addr, &signed("ec-2", &claims)).await;
    assert_eq!(status, 401);
    assert!(body.contains("no signing key with kid `ec-2` is published"), "{body}");
    assert_eq!(idp.reads(), 2, "the unknown kid made the relay look again");

    // A new key is published: tokens signed with it are accepted, the old key still works.
    idp.publish(&["ec-1", "ec-2"]);
    tokio::time::sleep(past_cooldown).await;
    joins(&relay, &signed("ec-2", &claims), &f.topic()).await;
    joins(&relay, &signed("ec-1", &claims), &f.topic()).await;

    // The old key is withdrawn: once the copy is older than its maximum age, it stops verifying.
    idp.publish(&["ec-2"]);
    tokio::time::sleep(past_cooldown).await;
    let (status, body) = refused_handshake(relay.addr, &signed("ec-1", &claims)).await;
    assert_eq!((status, body.contains("no signing key with kid `ec-1`")), (401, true), "{body}");
    joins(&relay, &signed("ec-2", &claims), &f.topic()).await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_made_up_key_ids_reads_the_jwks_once_per_cooldown() {
    let f = Fixture::new().await;
    let idp = JwksServer::start(&["ec-1"]).await;
    let relay = relay_with_tokens(&f, idp.source(), |tokens| tokens.jwks_cooldown_secs = 2).await;
    let claims = supabase_claims(f.agent, "authenticated");
    tokio::time::sleep(Duration::from_millis(2200)).await;

    let flood = |wave: &'static str| {
        let claims = claims.clone();
        futures_util::future::join_all((0..100).map(move |i| {
            let token = signed_with("ec-1", &format!("{wave}-{i}"), &claims);
            async move { (i, refused_handshake(relay.addr, &token).await) }
        }))
    };
    for (i, (status, body)) in flood("first").await {
        assert_eq!(status, 401);
        assert!(body.contains(&format!("no signing key with kid `first-{i}`")), "{body}");
    }
    assert_eq!(idp.reads(), 2, "100 unknown kids at once: one read");
    assert!(flood("second").await.iter().all(|(_, (status, _))| *status == 401));
    assert_eq!(idp.reads(), 2, "within the cooldown: no read at all");
    joins(&relay, &signed("ec-1", &claims), &f.topic()).await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_jwks_file_is_read_again_for_a_new_key_and_a_broken_one_stops_the_start() {
    let f = Fixture::new().await;
    let path = std::env::temp_dir().join(format!("campfire-jwks-{}.json", Uuid::new_v4()));
    std::fs::write(&path, jwks(&["ed-1"]).to_string()).unwrap();
    let source = Some(JwksSource::File(path.clone()));
    let relay = relay_with_tokens(&f, source.clone(), |tokens| tokens.jwks_cooldown_secs = 1).await;
    let claims = supabase_claims(f.agent, "authenticated");
    joins(&relay, &signed("ed-1", &claims), &f.topic()).await;
    std::fs::write(&path, jwks(&["ed-1", "rsa-1"]).to_string()).unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    joins(&relay, &signed("rsa-1", &claims), &f.topic()).await;
    relay.stop().await;

    std::fs::write(&path, "{\"keys\": ").unwrap();
    let mut config = f.config();
    config.tokens.jwks = source;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let started = campfire_relay::run_with(config, Options::default(), listener, std::future::pending()).await;
    let error = started.expect_err("a relay whose JWKS cannot be read does not start").to_string();
    assert!(error.starts_with(&format!("reading the JWKS from {}: not a JWKS", path.display())), "{error}");
    let _ = std::fs::remove_file(&path);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_whose_token_expired_cannot_join_and_gets_no_replay() {
    let f = Fixture::new().await;
    let relay = Relay::start(&f).await;
    let db = f.agent_db().await;
    for i in 0..3 {
        f.send_as_agent(&db, &format!("history {i}")).await;
    }
    let expires_at = auth::now() + 2;
    let short = token(json!({"role": "authenticated", "sub": f.agent, "exp": expires_at}));
    let mut client = Client::connect(relay.addr, "2.0.0", &short).await;
    while auth::now() < expires_at {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, reply) = client.join(&f.topic(), json!({"config": {"broadcast": {"cursor": 0}}})).await;
    assert_eq!(reply.payload["status"], "error");
    assert_eq!(
        reply.payload["response"]["reason"],
        "InvalidJWTToken: the connection's token (its apikey) has expired: join with a current access_token"
    );
    let after = client.drain(Duration::from_millis(500)).await;
    assert!(after.iter().all(|m| m.event != "broadcast"), "nothing replayed: {after:?}");

    // The same connection joins once the join brings a current token, and gets its history.
    let payload = json!({"config": {"broadcast": {"cursor": 0}}, "access_token": f.agent_token()});
    client.join_ok(&f.topic(), payload).await;
    for i in 0..3 {
        assert_eq!(
            client.broadcast_event("message:created").await.payload["payload"]["message"]["content"],
            format!("history {i}")
        );
    }
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_whose_sub_is_in_capitals_loses_its_channels_when_disabled() {
    let f = Fixture::new().await;
    let relay = Relay::start(&f).await;
    let capitals =
        token(json!({"role": "authenticated", "sub": f.agent.to_string().to_uppercase(), "exp": auth::now() + 3600}));
    let mut client = Client::connect(relay.addr, "2.0.0", &capitals).await;
    client.join_ok(&format!("org:{}", f.org), json!({"config": {}})).await;
    f.disable_agent().await;
    let system = client.recv_where(|m| m.event == "system").await;
    assert!(system.payload["message"].as_str().unwrap().contains("no longer have permission"), "{system:?}");
    client.recv_where(|m| m.event == "phx_close").await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn service_role_tokens_act_only_through_a_relay_whose_login_is_in_campfire_service() {
    let f = Fixture::new().await;
    let relay = Relay::start(&f).await;
    let service = token(json!({"role": "service_role", "exp": auth::now() + 3600}));
    let mut client = Client::connect(relay.addr, "2.0.0", &service).await;
    let (_, reply) = client.join(&f.topic(), json!({"config": {}})).await;
    let reason = reply.payload["response"]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("Unauthorized:")
            && reason
                .ends_with("service_role claims act only for a database login that is a member of campfire_service)"),
        "{reason}"
    );
    let typing = format!("{}:typing", f.topic());
    let broadcast = json!({"messages": [{"topic": typing, "event": "typing:start", "payload": {}}]}).to_string();
    let bearer = format!("Bearer {service}");
    let headers = [("Authorization", bearer.as_str()), ("Content-Type", "application/json")];
    let (status, body) = http(relay.addr, "POST", "/api/broadcast", &headers, &broadcast).await;
    assert_eq!(status, 403, "{body}");
    relay.stop().await;

    // An operator who grants campfire_service to the relay's login gives service tokens every
    // channel of every organization.
    let admin = f.db().await;
    admin
        .batch_execute(
            "DO $$ BEGIN
                 IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'campfire_relay_itest_service') THEN
                     CREATE ROLE campfire_relay_itest_service LOGIN IN ROLE campfire_relay, campfire_service;
                 END IF;
             END $$",
        )
        .await
        .unwrap();
    let other = f.db_as(&json!({"role": "service_role"})).await;
    let other_org: Uuid =
        other.query_one("SELECT campfire.create_organization('Other', 'other')", &[]).await.unwrap().get(0);
    let mut config = f.config();
    config.database_url = f.database.url("campfire_relay_itest_service");
    let relay = Relay::start_with(config, Options::default()).await;
    let mut client = Client::connect(relay.addr, "2.0.0", &service).await;
    client.join_ok(&f.topic(), json!({"config": {}})).await;
    client.join_ok(&format!("org:{other_org}"), json!({"config": {}})).await;
    let (status, body) = http(relay.addr, "POST", "/api/broadcast", &headers, &broadcast).await;
    assert_eq!(status, 202, "{body}");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_supabase_api_key_opens_a_connection_whose_joins_bring_their_token() {
    let f = Fixture::new().await;
    let relay = Relay::start(&f).await;
    let mut client = Client::connect(relay.addr, "2.0.0", "sb_publishable_4Jt3kR2x").await;
    let no_credential = concat!(
        "InvalidJWTToken: this join carries no access_token and the connection has no credential ",
        "(its apikey is a Supabase API key): give the client an access token before it subscribes"
    );
    let (_, reply) = client.join(&f.topic(), json!({"config": {}})).await;
    assert_eq!(reply.payload["response"]["reason"], no_credential);
    assert_eq!(join_refusal(&mut client, &f.topic(), "sb_publishable_4Jt3kR2x").await, no_credential);
    client.join_ok(&f.topic(), json!({"config": {}, "access_token": f.agent_token()})).await;
    let (status, _) = refused_handshake(relay.addr, "not-a-token").await;
    assert_eq!(status, 401, "anything else still has to be a credential");
    relay.stop().await;
}
