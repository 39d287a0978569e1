//! The sending half of one WebSocket connection: a bounded queue the connection's writer drains.
//! Nothing waits on a slow client: a full queue disconnects it.

use crate::errors::CloseReason;
use crate::metrics::Metrics;
use crate::protocol::{self, Frame, Vsn};
use axum::extract::ws::{Message, Utf8Bytes};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub type ConnId = u64;

pub struct Outbox {
    pub id: ConnId,
    pub vsn: Vsn,
    tx: mpsc::Sender<Message>,
    /// Cancelled when the connection must end; the reason goes in the close frame.
    pub kill: CancellationToken,
    kill_reason: Mutex<Option<CloseReason>>,
    /// Signalled by the writer each time it takes a frame off the queue (paced sends wait on it).
    pub drained: tokio::sync::Notify,
}

impl Outbox {
    pub fn new(id: ConnId, vsn: Vsn, tx: mpsc::Sender<Message>) -> Outbox {
        Outbox {
            id,
            vsn,
            tx,
            kill: CancellationToken::new(),
            kill_reason: Mutex::new(None),
            drained: tokio::sync::Notify::new(),
        }
    }

    /// Queues a frame; a full queue means the client cannot keep up, and it is disconnected.
    pub fn send(&self, metrics: &Metrics, text: Utf8Bytes) -> bool {
        match self.tx.try_send(Message::Text(text)) {
            Ok(()) => {
                metrics.deliveries.inc();
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics.drops.with_label_values(&["slow_consumer"]).inc();
                self.close(CloseReason::SendQueueFull);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Queues a frame of a long stream (a resume's replay) without crowding out live traffic:
    /// waits while the queue is more than half full, so the other half stays free for live
    /// frames. A client that drains nothing for `stall` is disconnected as too slow.
    pub async fn send_paced(&self, metrics: &Metrics, text: Utf8Bytes, stall: Duration) -> bool {
        loop {
            if self.kill.is_cancelled() {
                return false;
            }
            if self.tx.capacity() * 2 >= self.tx.max_capacity() {
                return self.send(metrics, text);
            }
            tokio::select! {
                _ = self.drained.notified() => {}
                _ = self.kill.cancelled() => return false,
                _ = tokio::time::sleep(stall) => {
                    metrics.drops.with_label_values(&["slow_consumer"]).inc();
                    self.close(CloseReason::ReplayStalled);
                    return false;
                }
            }
        }
    }

    pub fn send_frame(&self, metrics: &Metrics, frame: &Frame) -> bool {
        self.send(metrics, protocol::encode(self.vsn, frame).into())
    }

    /// Ends the connection; the first reason given is the one the close frame names.
    pub fn close(&self, reason: impl Into<CloseReason>) {
        self.kill_reason.lock().expect("kill reason lock").get_or_insert(reason.into());
        self.kill.cancel();
    }

    /// Why the connection is ending, once [`Outbox::close`] was called.
    pub fn closed_for(&self) -> Option<CloseReason> {
        *self.kill_reason.lock().expect("kill reason lock")
    }

    /// The text of [`Outbox::closed_for`], as the close frame gives it.
    #[cfg(test)]
    pub fn close_reason(&self) -> Option<&'static str> {
        self.closed_for().map(CloseReason::text)
    }

    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

/// Outboxes backed by a plain channel, read by the test instead of a socket writer.
#[cfg(test)]
pub mod test_support {
    use super::*;
    use std::sync::Arc;

    /// An outbox with room for `capacity` frames, and the receiver its writer would drain.
    pub fn outbox(id: ConnId, capacity: usize) -> (Arc<Outbox>, mpsc::Receiver<Message>) {
        let (tx, rx) = mpsc::channel(capacity);
        (Arc::new(Outbox::new(id, Vsn::V1, tx)), rx)
    }

    /// The frames queued so far, decoded (V1 frames are JSON objects).
    pub fn received(rx: &mut mpsc::Receiver<Message>) -> Vec<serde_json::Value> {
        std::iter::from_fn(|| rx.try_recv().ok())
            .map(|message| match message {
                Message::Text(text) => serde_json::from_str(&text).expect("a JSON frame"),
                other => panic!("not a text frame: {other:?}"),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{outbox, received};
    use super::*;
    use serde_json::json;

    fn frame(n: i64) -> Frame {
        protocol::push("realtime:room", "broadcast", json!({ "n": n }))
    }

    fn text(n: i64) -> Utf8Bytes {
        protocol::encode(Vsn::V1, &frame(n)).into()
    }

    fn slow_consumer_drops(metrics: &Metrics) -> u64 {
        metrics.drops.with_label_values(&["slow_consumer"]).get()
    }

    #[test]
    fn a_queued_frame_is_counted_as_delivered() {
        let metrics = Metrics::new();
        let (outbox, mut rx) = outbox(1, 4);
        assert!(outbox.send_frame(&metrics, &frame(1)));
        assert_eq!(outbox.queued(), 1);
        assert_eq!(metrics.deliveries.get(), 1);
        let frames = received(&mut rx);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0]["payload"], json!({ "n": 1 }));
    }

    #[test]
    fn a_full_queue_disconnects_the_slow_consumer() {
        let metrics = Metrics::new();
        let (outbox, _rx) = outbox(1, 2);
        assert!(outbox.send_frame(&metrics, &frame(1)));
        assert!(outbox.send_frame(&metrics, &frame(2)));
        assert!(!outbox.send_frame(&metrics, &frame(3)));
        assert!(outbox.kill.is_cancelled());
        assert_eq!(outbox.close_reason(), Some("slow consumer: send queue full"));
        assert_eq!(slow_consumer_drops(&metrics), 1);
    }

    #[test]
    fn the_first_close_reason_is_kept() {
        let (outbox, _rx) = outbox(1, 2);
        assert_eq!(outbox.close_reason(), None);
        outbox.close("idle timeout");
        outbox.close("server shutting down");
        assert_eq!(outbox.close_reason(), Some("idle timeout"));
    }

    #[test]
    fn a_closed_connection_takes_no_frames() {
        let metrics = Metrics::new();
        let (outbox, rx) = outbox(1, 2);
        drop(rx);
        assert!(!outbox.send_frame(&metrics, &frame(1)));
        assert_eq!(metrics.deliveries.get(), 0);
        assert!(!outbox.kill.is_cancelled(), "the writer is gone already; nothing to cancel");
    }

    #[tokio::test]
    async fn a_paced_send_keeps_half_the_queue_free_until_the_writer_drains() {
        let metrics = Metrics::new();
        let (outbox, mut rx) = outbox(1, 4);
        let stall = Duration::from_secs(5);
        for n in 1..=3 {
            assert!(outbox.send_paced(&metrics, text(n), stall).await);
        }
        let waiting = {
            let outbox = outbox.clone();
            tokio::spawn(async move { outbox.send_paced(&Metrics::new(), text(4), stall).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "three of four slots taken: the paced frame waits");
        assert!(outbox.send_frame(&metrics, &frame(5)), "the last slot is for live frames");
        for _ in 0..3 {
            rx.recv().await.expect("a frame");
        }
        outbox.drained.notify_one();
        assert!(waiting.await.expect("the paced send"));
        assert_eq!(outbox.queued(), 2);
    }

    #[tokio::test]
    async fn a_paced_send_the_client_never_drains_disconnects_it() {
        let metrics = Metrics::new();
        let (outbox, _rx) = outbox(1, 2);
        assert!(outbox.send_frame(&metrics, &frame(1)));
        assert!(outbox.send_frame(&metrics, &frame(2)));
        assert!(!outbox.send_paced(&metrics, text(3), Duration::from_millis(10)).await);
        assert_eq!(outbox.close_reason(), Some("slow consumer: replay stalled"));
        assert_eq!(slow_consumer_drops(&metrics), 1);
    }

    #[tokio::test]
    async fn a_paced_send_on_a_closing_connection_gives_up() {
        let metrics = Metrics::new();
        let (outbox, _rx) = outbox(1, 2);
        outbox.close("client closed");
        assert!(!outbox.send_paced(&metrics, text(1), Duration::from_secs(5)).await);
        assert_eq!(outbox.queued(), 0);
    }
}
