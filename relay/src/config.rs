//! Relay configuration: flags, each with an environment variable.

use crate::jwks::JwksSource;
use crate::shards::ShardSpec;
use clap::Parser;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 4000));
const DEFAULT_MAX_PAYLOAD_BYTES: usize = 65_536;
const DEFAULT_SEND_QUEUE: usize = 1024;
const DEFAULT_WRITE_TIMEOUT_MS: u64 = 10_000;
const DEFAULT_DB_PROBE_INTERVAL_MS: u64 = 5_000;
const DEFAULT_DB_TIMEOUT_MS: u64 = 5_000;
const DEFAULT_API_CONNECTIONS: u64 = 4;
const DEFAULT_MAX_CHANNELS: usize = 100;
const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 60;
const DEFAULT_TYPING_TTL_SECS: u64 = 10;
const DEFAULT_VISITOR_TOKEN_TTL_SECS: u64 = 3600;

#[derive(Debug, Clone, Parser)]
#[command(name = "campfire-relay", about = "Supabase-Realtime-compatible WebSocket relay for pg_campfire")]
pub struct Config {
    /// PostgreSQL connection string for a role granted campfire_relay. Connect straight to the
    /// primary: LISTEN does not work through transaction-pooling proxies. With --shard, this is
    /// the shard named `default`: it holds every organization the placement puts nowhere else,
    /// and relays exchange peer messages through it (with --peers postgres).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,

    /// Another database holding organizations ("shard"), as NAME=URL; repeat the flag for each
    /// (comma-separated in the environment). The relay follows every shard's log.
    #[arg(
        long = "shard",
        env = "CAMPFIRE_SHARDS",
        value_name = "NAME=URL",
        value_delimiter = ',',
        value_parser = ShardSpec::parse,
        hide_env_values = true
    )]
    pub shards: Vec<ShardSpec>,

    /// TOML file placing organizations on the shards: one line per shard,
    /// `NAME = ["<organization id>", ...]`. Organizations it does not name live on `default`.
    #[arg(long, env = "CAMPFIRE_PLACEMENT", value_name = "FILE")]
    pub placement: Option<std::path::PathBuf>,

    /// Address to serve WebSocket and HTTP on.
    #[arg(long, env = "CAMPFIRE_LISTEN", default_value_t = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// HS256 secret that signs client JWTs (and the visitor tokens the relay mints).
    #[arg(long, env = "CAMPFIRE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: String,

    #[command(flatten)]
    pub tokens: TokenConfig,

    #[command(flatten)]
    pub limits: LimitConfig,

    #[command(flatten)]
    pub peers: PeerConfig,

    /// Proxies whose `X-Forwarded-For` names the client (comma-separated addresses or networks,
    /// e.g. `10.0.0.0/8,127.0.0.1`). From any other peer the header is ignored: by default the
    /// client is the TCP peer.
    #[arg(
        long,
        env = "CAMPFIRE_TRUSTED_PROXIES",
        value_name = "ADDR_OR_NET",
        value_delimiter = ',',
        value_parser = crate::client_addr::parse_proxy
    )]
    pub trusted_proxies: Vec<ipnet::IpNet>,

    /// Bearer token for `/metrics` and `/healthz/details`. Unset, they answer to clients on this
    /// machine (loopback) only.
    #[arg(long, env = "CAMPFIRE_OPS_TOKEN", hide_env_values = true)]
    pub ops_token: Option<String>,

    /// Event names of your own (comma-separated) that clients may not broadcast, beside the
    /// database's: those your `campfire.broadcast()` calls publish.
    #[arg(long, env = "CAMPFIRE_RESERVED_EVENTS", value_name = "EVENT", value_delimiter = ',')]
    pub reserved_events: Vec<String>,

    /// Largest client frame or broadcast payload, in bytes.
    #[arg(long, env = "CAMPFIRE_MAX_PAYLOAD_BYTES", default_value_t = DEFAULT_MAX_PAYLOAD_BYTES)]
    pub max_payload_bytes: usize,

    /// Frames queued for one connection before it is disconnected as too slow.
    #[arg(long, env = "CAMPFIRE_SEND_QUEUE", default_value_t = DEFAULT_SEND_QUEUE)]
    pub send_queue: usize,

    /// Milliseconds a write to a client may stay blocked (the client reads nothing) before the
    /// connection is dropped; also how long a closing connection waits for its close frame to be
    /// read.
    #[arg(long, env = "CAMPFIRE_WRITE_TIMEOUT_MS", default_value_t = DEFAULT_WRITE_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(1..))]
    pub write_timeout_ms: u64,

    /// Milliseconds between liveness probes (a query) of each database connection; also the TCP
    /// keepalive idle time, in whole seconds.
    #[arg(long, env = "CAMPFIRE_DB_PROBE_INTERVAL_MS", default_value_t = DEFAULT_DB_PROBE_INTERVAL_MS, value_parser = clap::value_parser!(u64).range(1..))]
    pub db_probe_interval_ms: u64,

    /// Milliseconds the database may take to answer a probe or a connection attempt before that
    /// connection is presumed dead (a black-holed link sends no FIN or RST) and replaced.
    #[arg(long, env = "CAMPFIRE_DB_TIMEOUT_MS", default_value_t = DEFAULT_DB_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(1..))]
    pub db_timeout_ms: u64,

    /// Connections per shard for the HTTP API's calls, each running one call at a time (the
    /// relay's joins and log reads share one more). A call waiting on a row lock holds only its
    /// own, for at most the database timeout (its lock timeout).
    #[arg(long, env = "CAMPFIRE_API_CONNECTIONS", default_value_t = DEFAULT_API_CONNECTIONS, value_parser = clap::value_parser!(u64).range(1..=100))]
    pub api_connections: u64,

    /// Channels one connection may join.
    #[arg(long, env = "CAMPFIRE_MAX_CHANNELS", default_value_t = DEFAULT_MAX_CHANNELS)]
    pub max_channels: usize,

    /// Seconds of client silence before the connection is closed.
    #[arg(long, env = "CAMPFIRE_IDLE_TIMEOUT", default_value_t = DEFAULT_IDLE_TIMEOUT_SECS)]
    pub idle_timeout_secs: u64,

    /// Seconds a typing indicator may stay on without news before the relay ends it.
    #[arg(long, env = "CAMPFIRE_TYPING_TTL", default_value_t = DEFAULT_TYPING_TTL_SECS)]
    pub typing_ttl_secs: u64,

    /// Folder with the widget and dashboard pages (web/public); served at /widget, /dashboard
    /// and /static when set.
    #[arg(long, env = "CAMPFIRE_WEB_DIR")]
    pub web_dir: Option<std::path::PathBuf>,

    /// Lifetime of visitor tokens minted from widget session secrets, in seconds.
    #[arg(long, env = "CAMPFIRE_VISITOR_TOKEN_TTL", default_value_t = DEFAULT_VISITOR_TOKEN_TTL_SECS)]
    pub visitor_token_ttl_secs: u64,
}

/// How client JWTs are checked beyond the HS256 secret: audiences, issuers, and the published
/// keys (JWKS) of an identity provider that signs with RS256, ES256 or EdDSA.
#[derive(Debug, Clone, clap::Args)]
pub struct TokenConfig {
    /// Audiences accepted in a token's `aud` (comma-separated); a token without `aud` is not
    /// checked. The default is what Supabase Auth puts in its access tokens.
    #[arg(
        long = "jwt-audience",
        env = "CAMPFIRE_JWT_AUDIENCE",
        value_name = "AUD",
        value_delimiter = ',',
        default_value = DEFAULT_AUDIENCE
    )]
    pub audiences: Vec<String>,

    /// Issuers accepted in a token's `iss` (comma-separated). When set, every token must carry one
    /// of them (or be one the relay minted itself); when unset, `iss` is not checked.
    #[arg(long = "jwt-issuer", env = "CAMPFIRE_JWT_ISSUER", value_name = "ISS", value_delimiter = ',')]
    pub issuers: Vec<String>,

    /// The identity provider's signing keys: an http(s) URL of its JWKS, or a file holding one.
    #[arg(long, env = "CAMPFIRE_JWKS", value_name = "URL_OR_FILE", value_parser = JwksSource::parse)]
    pub jwks: Option<JwksSource>,

    /// Seconds the fetched JWKS is trusted before it is read again (so removed keys stop working).
    #[arg(
        long = "jwks-max-age",
        env = "CAMPFIRE_JWKS_MAX_AGE",
        value_name = "SECONDS",
        default_value_t = DEFAULT_JWKS_MAX_AGE_SECS
    )]
    pub jwks_max_age_secs: u64,

    /// Least seconds between two reads of the JWKS: a token naming an unknown key triggers a read
    /// at most this often, so a flood of made-up key ids cannot hammer the identity provider.
    #[arg(
        long = "jwks-cooldown",
        env = "CAMPFIRE_JWKS_COOLDOWN",
        value_name = "SECONDS",
        default_value_t = DEFAULT_JWKS_COOLDOWN_SECS
    )]
    pub jwks_cooldown_secs: u64,
}

/// How relays reach each other (client broadcasts, presence, typing ends). Database events always
/// come from PostgreSQL's log, whatever this says.
#[derive(Debug, Clone, clap::Args)]
pub struct PeerConfig {
    /// The relay-to-relay bus: `postgres` (sealed NOTIFYs through the database, enough for one
    /// box) or `nats` (a NATS server or cluster: each relay hears only the topics it serves).
    #[arg(long = "peers", env = "CAMPFIRE_PEERS", value_enum, default_value_t = PeerBus::Postgres)]
    pub bus: PeerBus,

    /// NATS servers (comma-separated `nats://` or `tls://` URLs) for `--peers nats`.
    #[arg(
        long,
        env = "CAMPFIRE_NATS_URL",
        value_delimiter = ',',
        default_value = "nats://127.0.0.1:4222",
        hide_env_values = true
    )]
    pub nats_url: Vec<String>,

    /// First token of every subject this installation uses, so that several can share one NATS.
    #[arg(
        long,
        env = "CAMPFIRE_NATS_SUBJECT_PREFIX",
        default_value = "campfire",
        value_parser = parse_subject_prefix
    )]
    pub nats_subject_prefix: String,

    /// NATS user name (with `--nats-password`).
    #[arg(
        long,
        env = "CAMPFIRE_NATS_USER",
        requires = "nats_password",
        conflicts_with_all = ["nats_creds", "nats_nkey_file"]
    )]
    pub nats_user: Option<String>,

    #[arg(long, env = "CAMPFIRE_NATS_PASSWORD", hide_env_values = true, requires = "nats_user")]
    pub nats_password: Option<String>,

    /// A NATS credentials file (user JWT and nkey seed, as `nsc` writes it).
    #[arg(long, env = "CAMPFIRE_NATS_CREDS", value_name = "FILE", conflicts_with = "nats_nkey_file")]
    pub nats_creds: Option<std::path::PathBuf>,

    /// A file holding the nkey seed (`SU...`) this relay authenticates with.
    #[arg(long, env = "CAMPFIRE_NATS_NKEY_FILE", value_name = "FILE")]
    pub nats_nkey_file: Option<std::path::PathBuf>,

    /// PEM file of the certificate authorities the NATS server's certificate must chain to
    /// (implies TLS).
    #[arg(long, env = "CAMPFIRE_NATS_TLS_CA", value_name = "FILE")]
    pub nats_tls_ca: Option<std::path::PathBuf>,

    /// PEM client certificate for NATS servers that verify clients (with `--nats-tls-key`).
    #[arg(long, env = "CAMPFIRE_NATS_TLS_CERT", value_name = "FILE", requires = "nats_tls_key")]
    pub nats_tls_cert: Option<std::path::PathBuf>,

    #[arg(long, env = "CAMPFIRE_NATS_TLS_KEY", value_name = "FILE", requires = "nats_tls_cert")]
    pub nats_tls_key: Option<std::path::PathBuf>,

    /// Refuse a NATS connection without TLS (also implied by a `tls://` URL or `--nats-tls-ca`).
    #[arg(long, env = "CAMPFIRE_NATS_TLS_REQUIRED")]
    pub nats_tls_required: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PeerBus {
    Postgres,
    Nats,
}

/// NATS subject tokens: no wildcards, no whitespace, no empty token.
fn parse_subject_prefix(text: &str) -> Result<String, String> {
    let valid_token =
        |token: &str| !token.is_empty() && token.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if text.split('.').all(valid_token) {
        Ok(text.to_owned())
    } else {
        Err("dot-separated tokens of letters, digits, '-' and '_'".into())
    }
}

/// The flags' defaults, for embedding the relay as a library (and tests).
impl Default for PeerConfig {
    fn default() -> PeerConfig {
        PeerConfig {
            bus: PeerBus::Postgres,
            nats_url: vec!["nats://127.0.0.1:4222".into()],
            nats_subject_prefix: "campfire".into(),
            nats_user: None,
            nats_password: None,
            nats_creds: None,
            nats_nkey_file: None,
            nats_tls_ca: None,
            nats_tls_cert: None,
            nats_tls_key: None,
            nats_tls_required: false,
        }
    }
}

/// Abuse limits, counted per relay process.
#[derive(Debug, Clone, clap::Args)]
pub struct LimitConfig {
    /// Open connections from one client address (an IPv6 address counts by its /64).
    #[arg(long, env = "CAMPFIRE_MAX_CONNECTIONS_PER_IP", default_value_t = DEFAULT_CONNECTIONS_PER_IP, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections_per_ip: u32,

    /// Open connections with one credential (a user's `sub`, a widget session), from anywhere.
    #[arg(long, env = "CAMPFIRE_MAX_CONNECTIONS_PER_CREDENTIAL", default_value_t = DEFAULT_CONNECTIONS_PER_CREDENTIAL, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections_per_credential: u32,

    /// Milliseconds of the window the per-connection rates below count in.
    #[arg(long, env = "CAMPFIRE_RATE_WINDOW_MS", default_value_t = DEFAULT_RATE_WINDOW_MS, value_parser = clap::value_parser!(u64).range(1..))]
    pub rate_window_ms: u64,

    /// Joins one connection may send per window; more are refused (the connection stays).
    #[arg(long, env = "CAMPFIRE_MAX_JOINS_PER_WINDOW", default_value_t = DEFAULT_JOINS_PER_WINDOW, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_joins_per_window: u32,

    /// Heartbeats one connection may send per window; one more closes it.
    #[arg(long, env = "CAMPFIRE_MAX_HEARTBEATS_PER_WINDOW", default_value_t = DEFAULT_HEARTBEATS_PER_WINDOW, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_heartbeats_per_window: u32,

    /// Broadcasts one connection may send per window; more are refused (the connection stays).
    #[arg(long, env = "CAMPFIRE_MAX_BROADCASTS_PER_WINDOW", default_value_t = DEFAULT_BROADCASTS_PER_WINDOW, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_broadcasts_per_window: u32,
}

const DEFAULT_CONNECTIONS_PER_IP: u32 = 1000;
const DEFAULT_CONNECTIONS_PER_CREDENTIAL: u32 = 100;
const DEFAULT_RATE_WINDOW_MS: u64 = 1000;
const DEFAULT_JOINS_PER_WINDOW: u32 = 100;
const DEFAULT_HEARTBEATS_PER_WINDOW: u32 = 10;
const DEFAULT_BROADCASTS_PER_WINDOW: u32 = 50;

/// The flags' defaults, for embedding the relay as a library (and tests).
impl Default for LimitConfig {
    fn default() -> LimitConfig {
        LimitConfig {
            max_connections_per_ip: DEFAULT_CONNECTIONS_PER_IP,
            max_connections_per_credential: DEFAULT_CONNECTIONS_PER_CREDENTIAL,
            rate_window_ms: DEFAULT_RATE_WINDOW_MS,
            max_joins_per_window: DEFAULT_JOINS_PER_WINDOW,
            max_heartbeats_per_window: DEFAULT_HEARTBEATS_PER_WINDOW,
            max_broadcasts_per_window: DEFAULT_BROADCASTS_PER_WINDOW,
        }
    }
}

const DEFAULT_AUDIENCE: &str = "authenticated";
const DEFAULT_JWKS_MAX_AGE_SECS: u64 = 600;
const DEFAULT_JWKS_COOLDOWN_SECS: u64 = 30;

/// The flags' defaults, for embedding the relay as a library (and tests).
impl Default for TokenConfig {
    fn default() -> TokenConfig {
        TokenConfig {
            audiences: vec![DEFAULT_AUDIENCE.to_owned()],
            issuers: Vec::new(),
            jwks: None,
            jwks_max_age_secs: DEFAULT_JWKS_MAX_AGE_SECS,
            jwks_cooldown_secs: DEFAULT_JWKS_COOLDOWN_SECS,
        }
    }
}

impl Config {
    /// The flags' defaults, for embedding the relay as a library (and tests): the database and
    /// the JWT secret are all a relay needs.
    pub fn new(database_url: impl Into<String>, jwt_secret: impl Into<String>) -> Config {
        Config {
            database_url: database_url.into(),
            shards: Vec::new(),
            placement: None,
            listen: DEFAULT_LISTEN,
            jwt_secret: jwt_secret.into(),
            tokens: TokenConfig::default(),
            limits: LimitConfig::default(),
            peers: PeerConfig::default(),
            trusted_proxies: Vec::new(),
            ops_token: None,
            reserved_events: Vec::new(),
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            send_queue: DEFAULT_SEND_QUEUE,
            write_timeout_ms: DEFAULT_WRITE_TIMEOUT_MS,
            db_probe_interval_ms: DEFAULT_DB_PROBE_INTERVAL_MS,
            db_timeout_ms: DEFAULT_DB_TIMEOUT_MS,
            api_connections: DEFAULT_API_CONNECTIONS,
            max_channels: DEFAULT_MAX_CHANNELS,
            idle_timeout_secs: DEFAULT_IDLE_TIMEOUT_SECS,
            typing_ttl_secs: DEFAULT_TYPING_TTL_SECS,
            web_dir: None,
            visitor_token_ttl_secs: DEFAULT_VISITOR_TOKEN_TTL_SECS,
        }
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }

    pub fn typing_ttl(&self) -> Duration {
        Duration::from_secs(self.typing_ttl_secs)
    }

    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms)
    }

    pub fn db_probe_interval(&self) -> Duration {
        Duration::from_millis(self.db_probe_interval_ms)
    }

    pub fn db_timeout(&self) -> Duration {
        Duration::from_millis(self.db_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(flags: &[&str]) -> Result<Config, clap::Error> {
        let required = ["campfire-relay", "--database-url", "host=db", "--jwt-secret", "s"];
        Config::try_parse_from(required.iter().chain(flags))
    }

    #[test]
    fn a_subject_prefix_is_tokens_without_wildcards() {
        for good in ["campfire", "acme.campfire-eu_1"] {
            assert_eq!(parse_subject_prefix(good).as_deref(), Ok(good));
        }
        for bad in ["", "a..b", "a.*", "a.>", "a b", "a."] {
            assert!(parse_subject_prefix(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn nats_credentials_come_whole_and_one_kind_at_a_time() {
        let config = parse(&["--peers", "nats", "--nats-url", "nats://a:4222,nats://b:4222"]).unwrap();
        assert_eq!((config.peers.bus, config.peers.nats_url.len()), (PeerBus::Nats, 2));
        assert_eq!(parse(&[]).unwrap().peers.bus, PeerBus::Postgres, "PostgreSQL unless told otherwise");
        assert!(parse(&["--nats-user", "relay"]).is_err(), "a user needs its password");
        assert!(parse(&["--nats-password", "secret"]).is_err(), "a password needs its user");
        assert!(parse(&["--nats-user", "relay", "--nats-password", "p", "--nats-creds", "f"]).is_err());
        assert!(parse(&["--nats-creds", "f", "--nats-nkey-file", "g"]).is_err());
        assert!(parse(&["--nats-tls-cert", "c"]).is_err(), "a certificate needs its key");
    }

    #[test]
    fn shards_come_as_name_and_url_from_flags_or_one_variable() {
        let config = parse(&["--shard", "eu=host=db-eu", "--shard", "us=postgres://db-us/c"]).unwrap();
        let names: Vec<&str> = config.shards.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["eu", "us"]);
        let err = parse(&["--shard", "default=host=db"]).unwrap_err().to_string();
        assert!(err.contains("--database-url"), "{err}");
    }

    #[test]
    fn new_gives_the_flags_defaults() {
        assert_eq!(format!("{:?}", Config::new("host=db", "s")), format!("{:?}", parse(&[]).unwrap()));
    }
}
