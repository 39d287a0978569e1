//! Relay configuration: flags, each with an environment variable.

use clap::Parser;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Clone, Parser)]
#[command(name = "campfire-relay", about = "Supabase-Realtime-compatible WebSocket relay for pg_campfire")]
pub struct Config {
    /// PostgreSQL connection string for a role granted campfire_relay. Connect straight to the
    /// primary: LISTEN does not work through transaction-pooling proxies.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,

    /// Address to serve WebSocket and HTTP on.
    #[arg(long, env = "CAMPFIRE_LISTEN", default_value = "127.0.0.1:4000")]
    pub listen: SocketAddr,

    /// HS256 secret that signs client JWTs (and the visitor tokens the relay mints).
    #[arg(long, env = "CAMPFIRE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: String,

    /// Largest client frame or broadcast payload, in bytes.
    #[arg(long, env = "CAMPFIRE_MAX_PAYLOAD_BYTES", default_value_t = 65_536)]
    pub max_payload_bytes: usize,

    /// Frames queued for one connection before it is disconnected as too slow.
    #[arg(long, env = "CAMPFIRE_SEND_QUEUE", default_value_t = 1024)]
    pub send_queue: usize,

    /// Channels one connection may join.
    #[arg(long, env = "CAMPFIRE_MAX_CHANNELS", default_value_t = 100)]
    pub max_channels: usize,

    /// Seconds of client silence before the connection is closed.
    #[arg(long, env = "CAMPFIRE_IDLE_TIMEOUT", default_value_t = 60)]
    pub idle_timeout_secs: u64,

    /// Seconds a typing indicator may stay on without news before the relay ends it.
    #[arg(long, env = "CAMPFIRE_TYPING_TTL", default_value_t = 10)]
    pub typing_ttl_secs: u64,

    /// Folder with the widget and dashboard pages (web/public); served at /widget, /dashboard
    /// and /static when set.
    #[arg(long, env = "CAMPFIRE_WEB_DIR")]
    pub web_dir: Option<std::path::PathBuf>,

    /// Lifetime of visitor tokens minted from widget session secrets, in seconds.
    #[arg(long, env = "CAMPFIRE_VISITOR_TOKEN_TTL", default_value_t = 3600)]
    pub visitor_token_ttl_secs: u64,
}

impl Config {
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }

    pub fn typing_ttl(&self) -> Duration {
        Duration::from_secs(self.typing_ttl_secs)
    }
}
