//! A relay running in-process against a test database, and WebSocket clients that speak to it.

use crate::TestDb;
use campfire_relay::{Config, auth};
use serde_json::json;
use std::net::SocketAddr;
use std::time::Duration;

use campfire_testkit::http;
pub use campfire_testkit::ws::{Client, Received, WAIT};

pub const JWT_SECRET: &str = "relay-test-secret";

/// A relay serving on a free loopback port; stopped when dropped.
pub struct RelayHandle {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl RelayHandle {
    pub async fn start(db: &TestDb) -> RelayHandle {
        Self::start_with(db, |_| {}).await
    }

    pub async fn start_with(db: &TestDb, adjust: impl FnOnce(&mut Config)) -> RelayHandle {
        let mut config = Config { listen: "127.0.0.1:0".parse().unwrap(), ..Config::new(db.relay_url(), JWT_SECRET) };
        adjust(&mut config);
        let listener = tokio::net::TcpListener::bind(config.listen).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            campfire_relay::run(config, listener, async move {
                let _ = stopped.await;
            })
            .await
            .expect("relay runs");
        });
        let relay = RelayHandle { addr, stop: Some(stop), task: Some(task) };
        relay.wait_healthy().await;
        relay
    }

    pub async fn wait_healthy(&self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            // 200 only while LISTEN is up and the database answers.
            if let Ok((200, _)) = self.http("GET", "/healthz", &[], "").await {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "relay did not become healthy");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A plain HTTP GET; returns the body.
    pub async fn get(&self, path: &str) -> std::io::Result<String> {
        Ok(self.http("GET", path, &[], "").await?.1)
    }

    /// A minimal HTTP/1.1 request; returns (status, body).
    pub async fn http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> std::io::Result<(u16, String)> {
        Ok(http::status_and_body(&self.http_raw(method, path, headers, body).await?))
    }

    /// The whole response, status line and headers included.
    pub async fn http_raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> std::io::Result<String> {
        http::request(self.addr, method, path, headers, body).await
    }

    pub fn url(&self, vsn: &str, apikey: &str) -> String {
        campfire_testkit::ws::ws_url(self.addr, vsn, apikey)
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(WAIT, task).await;
        }
    }
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub fn agent_token(user: uuid::Uuid) -> String {
    auth::sign(JWT_SECRET.as_bytes(), &json!({ "role": "authenticated", "sub": user, "exp": auth::now() + 3600 }))
}

/// Runs blocking database work (the sync client) off the async runtime.
pub async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work).await.expect("blocking task")
}

pub fn conversation_topic(org: uuid::Uuid, conversation: uuid::Uuid) -> String {
    format!("org:{org}:conv:{conversation}")
}
