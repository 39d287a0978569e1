//! Presence and typing across relays, as a client on one relay makes them and a watcher on
//! another sees them.

use super::Fixture;
use campfire_testkit::ws::{Client, WAIT};
use serde_json::{Value, json};

/// Presence and typing of `on_a` as a watcher on another relay sees them.
pub async fn track_and_type(f: &Fixture, on_a: &mut Client, key: &str) {
    let presence = format!("{}:presence", f.topic());
    let p_ref = on_a.join_ok(&presence, json!({"config": {"presence": {"key": key}}})).await;
    on_a.push(
        Some(&p_ref),
        &format!("realtime:{presence}"),
        "presence",
        json!({"type": "presence", "event": "track", "payload": {"name": key}}),
    )
    .await;
    on_a.recv_where(|m| m.event == "presence_diff").await;
    let typing = format!("{}:typing", f.topic());
    let t_ref = on_a.join_ok(&typing, json!({"config": {}})).await;
    on_a.push(
        Some(&t_ref),
        &format!("realtime:{typing}"),
        "broadcast",
        json!({"type": "broadcast", "event": "typing:start", "payload": {"userId": key, "isTyping": true}}),
    )
    .await;
}

/// A client on `relay` watching the conversation's typing and presence channels.
pub async fn watch(f: &Fixture, relay: std::net::SocketAddr) -> (Client, Presence) {
    let mut watcher = Client::connect(relay, "2.0.0", &f.agent_token()).await;
    watcher.join_ok(&format!("{}:typing", f.topic()), json!({"config": {}})).await;
    // The presence join's reply, state and diffs are read by `Presence::until`.
    watcher.send_join(&format!("{}:presence", f.topic()), json!({"config": {"presence": {"key": "watcher"}}})).await;
    (watcher, Presence::default())
}

/// Presence keys as realtime-js would see them: diffs that arrive before the state wait for it.
#[derive(Default, Debug)]
pub struct Presence {
    pub keys: std::collections::BTreeSet<String>,
    synced: bool,
    pending: Vec<Value>,
}

impl Presence {
    fn apply(&mut self, diff: &Value) {
        for key in diff["leaves"].as_object().unwrap().keys() {
            self.keys.remove(key);
        }
        self.keys.extend(diff["joins"].as_object().unwrap().keys().cloned());
    }

    /// Follows presence_state and presence_diff frames until `done` holds.
    pub async fn until(&mut self, watcher: &mut Client, done: impl Fn(&std::collections::BTreeSet<String>) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !(self.synced && done(&self.keys)) {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let frame =
                watcher.next(remaining).await.unwrap_or_else(|e| panic!("waiting for presence {self:?}: {e:?}"));
            if !frame.topic.ends_with(":presence") {
                continue;
            }
            match frame.event.as_str() {
                "presence_state" => {
                    self.keys = frame.payload.as_object().unwrap().keys().cloned().collect();
                    self.synced = true;
                    for diff in std::mem::take(&mut self.pending) {
                        self.apply(&diff);
                    }
                }
                "presence_diff" if !self.synced => self.pending.push(frame.payload),
                "presence_diff" => self.apply(&frame.payload),
                _ => {}
            }
        }
    }
}
