//! The WebSocket client of the Rust tests: speaks vsn 1.0.0 (JSON objects) or 2.0.0 (JSON
//! arrays) to a relay, numbers its refs, and decodes what the relay sends. Every wait is bounded
//! by [`WAIT`].

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Every wait of a test client is bounded by this.
pub const WAIT: Duration = Duration::from_secs(15);

/// The relay's WebSocket endpoint at `addr`.
pub fn ws_url(addr: SocketAddr, vsn: &str, apikey: &str) -> String {
    format!("ws://{addr}/realtime/v1/websocket?apikey={apikey}&vsn={vsn}")
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

/// How a connection ended, as seen by the client.
#[derive(Debug)]
pub enum Ended {
    Closed(Option<(u16, String)>),
    TimedOut,
}

/// A WebSocket client speaking vsn 1.0.0 or 2.0.0.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub v2: bool,
    next_ref: u64,
}

impl Client {
    pub async fn connect(addr: SocketAddr, vsn: &str, apikey: &str) -> Client {
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(ws_url(addr, vsn, apikey)))
            .await
            .expect("websocket connect timed out")
            .expect("websocket connects");
        Client { ws, v2: vsn.starts_with('2'), next_ref: 0 }
    }

    /// A client whose socket has a small, fixed receive buffer (no autotuning): when it stops
    /// reading, the relay's writes to it block after little data.
    pub async fn connect_with_small_window(addr: SocketAddr, vsn: &str, apikey: &str) -> Client {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = tokio::time::timeout(WAIT, socket.connect(addr)).await.expect("connect timed out").unwrap();
        let (ws, _) = tokio::time::timeout(
            WAIT,
            tokio_tungstenite::client_async(ws_url(addr, vsn, apikey), MaybeTlsStream::Plain(stream)),
        )
        .await
        .expect("websocket handshake timed out")
        .expect("websocket connects");
        Client { ws, v2: vsn.starts_with('2'), next_ref: 0 }
    }

    /// This client's end of its TCP connection.
    pub fn local_addr(&self) -> SocketAddr {
        match self.ws.get_ref() {
            MaybeTlsStream::Plain(stream) => stream.local_addr().unwrap(),
            _ => unreachable!("test clients connect without TLS"),
        }
    }

    fn take_ref(&mut self) -> String {
        self.next_ref += 1;
        self.next_ref.to_string()
    }

    pub async fn send_raw(&mut self, message: Message) {
        tokio::time::timeout(WAIT, self.ws.send(message)).await.expect("send timed out").expect("send");
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

    /// Joins `realtime:<name>` (join_ref = ref); returns the join ref and the reply.
    pub async fn join(&mut self, name: &str, payload: Value) -> (String, Received) {
        let r = self.send_join(name, payload).await;
        let reply = self.recv_where(|m| m.event == "phx_reply" && m.r#ref == json!(r)).await;
        (r, reply)
    }

    /// Joins and asserts the reply is ok.
    pub async fn join_ok(&mut self, name: &str, payload: Value) -> String {
        let (r, reply) = self.join(name, payload).await;
        assert_eq!(reply.payload["status"], "ok", "join of {name}: {:?}", reply.payload);
        r
    }

    /// The next frame, or how the connection ended.
    pub async fn next(&mut self, wait: Duration) -> Result<Received, Ended> {
        loop {
            let message = match tokio::time::timeout(wait, self.ws.next()).await {
                Err(_) => return Err(Ended::TimedOut),
                Ok(None) | Ok(Some(Err(_))) => return Err(Ended::Closed(None)),
                Ok(Some(Ok(message))) => message,
            };
            let text = match message {
                Message::Text(t) => t.to_string(),
                Message::Binary(b) => panic!("the relay sent a binary frame: {b:?}"),
                Message::Close(frame) => {
                    return Err(Ended::Closed(frame.map(|f| (u16::from(f.code), f.reason.to_string()))));
                }
                _ => continue,
            };
            let v: Value = serde_json::from_str(&text).expect("server frames are JSON");
            return Ok(if self.v2 {
                let items = v.as_array().expect("V2 frames are arrays");
                assert_eq!(items.len(), 5, "V2 frames have five elements: {v}");
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
            match self.next(remaining).await {
                Ok(m) if matches(&m) => return m,
                Ok(_) => continue,
                Err(ended) => panic!("waiting for a frame: {ended:?}"),
            }
        }
    }

    /// The next broadcast with user event `event`.
    pub async fn broadcast_event(&mut self, event: &str) -> Received {
        self.recv_where(|m| m.event == "broadcast" && m.payload["event"] == event).await
    }

    /// Frames that arrive within `wait` of each other (to check that nothing more comes).
    pub async fn drain(&mut self, wait: Duration) -> Vec<Received> {
        let mut frames = Vec::new();
        while let Ok(m) = self.next(wait).await {
            frames.push(m);
        }
        frames
    }
}
