//! The naive baseline's relay, what a user writes instead of pg_campfire: LISTEN on the channel
//! that `naive_messages`' trigger NOTIFYs every new row to, and send each payload as a text
//! frame to every connected WebSocket. No auth, no protocol, no replay. The bench runs it as a
//! process of its own (`--naive-relay <addr>`, database in `DATABASE_URL`), as it runs the relay.

use anyhow::{Context, Result};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_postgres::{AsyncMessage, Connection, NoTls, Socket, tls::NoTlsStream};
use tokio_tungstenite::tungstenite::Message;

pub async fn relay(listen: &str) -> Result<()> {
    let url = std::env::var("DATABASE_URL").context("DATABASE_URL")?;
    let (db, connection) = tokio_postgres::connect(&url, NoTls).await?;
    // Room for a burst of writes while a socket is busy; a socket that falls further behind
    // misses rows, which the bench reports as lost.
    let (rows, _) = broadcast::channel(1 << 16);
    let notifications = tokio::spawn(notifications(connection, rows.clone()));
    db.batch_execute("LISTEN naive_messages").await?;
    // Bound only once LISTENing: the bench starts writing as soon as it can connect.
    let listener = TcpListener::bind(listen).await?;
    // The database connection ending (or failing) ends the process.
    tokio::select! {
        result = notifications => result?,
        result = serve(listener, &rows) => result,
    }
}

async fn notifications(mut connection: Connection<Socket, NoTlsStream>, rows: broadcast::Sender<String>) -> Result<()> {
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    while let Some(message) = messages.next().await {
        if let AsyncMessage::Notification(n) = message? {
            let _ = rows.send(n.payload().to_owned());
        }
    }
    Ok(())
}

async fn serve(listener: TcpListener, rows: &broadcast::Sender<String>) -> Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let mut rows = rows.subscribe();
        tokio::spawn(async move {
            let mut ws = tokio_tungstenite::accept_async(stream).await?;
            loop {
                match rows.recv().await {
                    Ok(row) => ws.send(Message::text(row)).await?,
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return anyhow::Ok(()),
                }
            }
        });
    }
}
