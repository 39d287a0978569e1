use campfire_relay::{Config, Options};
use clap::Parser;
use std::time::Duration;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("campfire_relay=info")))
        .init();
    let config = Config::parse();
    let options = options_from_env()?;
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
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
