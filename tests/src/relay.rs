//! A relay running in-process against a test database, and WebSocket clients that speak to it.

use crate::TestDb;
use campfire_relay::{Config, auth};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const JWT_SECRET: &str = "relay-test-secret";
/// Every wait in these tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(10);

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
        let response = self.http_raw(method, path, headers, body).await?;
        let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        Ok((status, body))
    }

    /// The whole response, status line and headers included.
    pub async fn http_raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> std::io::Result<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = TcpStream::connect(self.addr).await?;
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(body);
        stream.write_all(request.as_bytes()).await?;
        let mut response = String::new();
        tokio::time::timeout(WAIT, stream.read_to_string(&mut response)).await??;
        Ok(response)
    }

    pub fn url(&self, vsn: &str, apikey: &str) -> String {
        format!("ws://{}/realtime/v1/websocket?apikey={apikey}&vsn={vsn}", self.addr)
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

/// A WebSocket client speaking vsn 1.0.0 or 2.0.0.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub v2: bool,
    next_ref: u64,
}

/// A decoded server frame.
#[derive(Debug, Clone)]
pub struct Received {
    pub join_ref: Value,
    pub r#ref: Value,
    pub topic: String,
    pub event: String,
    pub payload: Value,
}

impl Client {
    pub async fn connect(relay: &RelayHandle, vsn: &str, apikey: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(relay.url(vsn, apikey)).await.expect("websocket connects");
        Client { ws, v2: vsn.starts_with('2'), next_ref: 0 }
    }

    fn take_ref(&mut self) -> String {
        self.next_ref += 1;
        self.next_ref.to_string()
    }

    pub async fn send_raw(&mut self, message: Message) {
        self.ws.send(message).await.expect("send");
    }

    /// Sends a frame; returns its ref.
    pub async fn push(&mut self, join_ref: Option<&str>, topic: &str, event: &str, payload: Value) -> String {
        let r = self.take_ref();
        let text = if self.v2 {
            json!([join_ref, r, topic, event, payload]).to_string()
        } else {
            json!({ "join_ref": join_ref, "ref": r, "topic": topic, "event": event, "payload": payload }).to_string()
        };
        self.send_raw(Message::text(text)).await;
        r
    }

    /// Sends a join of `realtime:<name>` (join_ref = ref) without waiting; returns its ref.
    pub async fn send_join(&mut self, name: &str, payload: Value) -> String {
        let topic = format!("realtime:{name}");
        let r = self.take_ref();
        let text = if self.v2 {
            json!([r, r, topic, "phx_join", payload]).to_string()
        } else {
            json!({ "join_ref": r, "ref": r, "topic": topic, "event": "phx_join", "payload": payload }).to_string()
        };
        self.send_raw(Message::text(text)).await;
        r
    }

    /// Joins `realtime:<name>`; returns the join ref and the reply.
    pub async fn join(&mut self, name: &str, payload: Value) -> (String, Received) {
        let r = self.send_join(name, payload).await;
        let reply = self.recv_where(|m| m.event == "phx_reply" && m.r#ref == json!(r)).await;
        (r, reply)
    }

    pub async fn recv(&mut self) -> Option<Received> {
        loop {
            let message = match tokio::time::timeout(WAIT, self.ws.next()).await.ok()? {
                Some(Ok(message)) => message,
                Some(Err(err)) => panic!("websocket error: {err}"),
                None => return None,
            };
            let text = match message {
                Message::Text(t) => t.to_string(),
                Message::Close(frame) => {
                    eprintln!("server closed the connection: {frame:?}");
                    return None;
                }
                _ => continue,
            };
            let v: Value = serde_json::from_str(&text).expect("server frames are JSON");
            return Some(if self.v2 {
                Received {
                    join_ref: v[0].clone(),
                    r#ref: v[1].clone(),
                    topic: v[2].as_str().unwrap().into(),
                    event: v[3].as_str().unwrap().into(),
                    payload: v[4].clone(),
                }
            } else {
                assert!(v.get("join_ref").is_none(), "V1 output never carries join_ref: {v}");
                Received {
                    join_ref: Value::Null,
                    r#ref: v["ref"].clone(),
                    topic: v["topic"].as_str().unwrap().into(),
                    event: v["event"].as_str().unwrap().into(),
                    payload: v["payload"].clone(),
                }
            });
        }
    }

    /// The next frame that satisfies `matches` (others are skipped); panics after WAIT.
    pub async fn recv_where(&mut self, matches: impl Fn(&Received) -> bool) -> Received {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(remaining, self.recv()).await {
                Ok(Some(m)) if matches(&m) => return m,
                Ok(Some(_)) => continue,
                Ok(None) => panic!("connection closed while waiting"),
                Err(_) => panic!("timed out waiting for a frame"),
            }
        }
    }

    /// The next broadcast with user event `event`.
    pub async fn broadcast_event(&mut self, event: &str) -> Received {
        self.recv_where(|m| m.event == "broadcast" && m.payload["event"] == event).await
    }

    /// Frames that arrive within `wait` (for checking that nothing more comes).
    pub async fn drain(&mut self, wait: Duration) -> Vec<Received> {
        let mut frames = Vec::new();
        while let Ok(Some(m)) = tokio::time::timeout(wait, self.recv()).await {
            frames.push(m);
        }
        frames
    }
}

/// Runs blocking database work (the sync client) off the async runtime.
pub async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work).await.expect("blocking task")
}

pub fn conversation_topic(org: uuid::Uuid, conversation: uuid::Uuid) -> String {
    format!("org:{org}:conv:{conversation}")
}
