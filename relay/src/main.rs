use campfire_relay::{Config, Options};
use clap::Parser;
use std::time::Duration;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "campfire-relay", about = "Supabase-Realtime-compatible WebSocket relay for pg_campfire")]
struct Cli {
    #[command(flatten)]
    config: Config,

    /// Share the listening port with other relay processes on this machine (SO_REUSEPORT): the
    /// kernel spreads new connections among them, as among relays behind a load balancer.
    #[arg(long, env = "CAMPFIRE_REUSE_PORT")]
    reuse_port: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("campfire_relay=info")))
        .init();
    let Cli { config, reuse_port } = Cli::parse();
    let options = options_from_env()?;
    let socket = match config.listen {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(reuse_port)?;
    socket.bind(config.listen)?;
    let listener = socket.listen(4096)?;
    campfire_relay::run_with(config, options, listener, shutdown_signal()).await
}

/// Rarely changed tunables, from the environment only: CAMPFIRE_PEER_HEARTBEAT_MS,
/// CAMPFIRE_PEER_TIMEOUT_MS, CAMPFIRE_REPLAY_STALL_MS.
fn options_from_env() -> anyhow::Result<Options> {
    let mut options = Options::default();
    let millis = |name: &str| -> anyhow::Result<Option<Duration>> {
        match std::env::var(name) {
            Ok(value) => Ok(Some(Duration::from_millis(
                value.parse().map_err(|_| anyhow::anyhow!("{name} must be a number of milliseconds"))?,
            ))),
            Err(_) => Ok(None),
        }
    };
    if let Some(d) = millis("CAMPFIRE_PEER_HEARTBEAT_MS")? {
        options.peer_heartbeat = d;
    }
    if let Some(d) = millis("CAMPFIRE_PEER_TIMEOUT_MS")? {
        options.peer_timeout = d;
    }
    if let Some(d) = millis("CAMPFIRE_REPLAY_STALL_MS")? {
        options.replay_stall_timeout = d;
    }
    anyhow::ensure!(
        options.peer_timeout > options.peer_heartbeat,
        "CAMPFIRE_PEER_TIMEOUT_MS must exceed CAMPFIRE_PEER_HEARTBEAT_MS"
    );
    Ok(options)
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    tracing::info!("shutting down");
}
