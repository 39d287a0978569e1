//! Sealed notifications, relay side. Any login with CONNECT may NOTIFY on our channels, so a
//! notification is believed only when it opens with the database's notify key (which the relay
//! role reads through `campfire.notify_key()`), and relay-to-relay and access notifications only
//! once, and only while fresh: one replayed from a capture is refused. (Event notifications need
//! no such check: their ids say whether they are new.) Whatever is refused is counted and dropped,
//! never acted on.

use campfire_core::channels;
use campfire_core::sealed::{self, Key, NONCE_BYTES};
use std::collections::HashMap;
use std::sync::{Mutex, RwLock};

/// How far a peer or access notification's send time may be from now (clocks of several hosts
/// included) before it is refused; nonces are remembered this long.
const FRESH_MS: u64 = 120_000;

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("no notify key yet")]
    NoKey,
    #[error("{0}")]
    Seal(#[from] sealed::SealError),
    #[error("sent too long ago or in the future")]
    Stale,
    #[error("already received")]
    Replayed,
}

impl Refusal {
    /// The metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::NoKey => "no_key",
            Refusal::Seal(sealed::SealError::Malformed | sealed::SealError::TooLarge(_)) => "malformed",
            Refusal::Seal(sealed::SealError::Forged) => "forged",
            Refusal::Stale => "stale",
            Refusal::Replayed => "replayed",
        }
    }
}

#[derive(Default)]
pub struct Sealing {
    key: RwLock<Option<Key>>,
    /// Nonces of peer and access notifications received within the freshness window, and when
    /// the stale ones were last dropped.
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    nonces: HashMap<[u8; NONCE_BYTES], u64>,
    pruned_at_ms: u64,
}

/// Stale nonces are dropped at most this often: a walk of the whole set per message would cost
/// quadratic time under heavy peer traffic (typing, presence).
const PRUNE_EVERY_MS: u64 = 1_000;

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Sealing {
    pub fn set_key(&self, key: Key) {
        *self.key.write().unwrap() = Some(key);
    }

    fn key(&self) -> Result<Key, Refusal> {
        self.key.read().unwrap().ok_or(Refusal::NoKey)
    }

    /// A peer message, sealed for the peers' channel.
    pub fn seal_for_peers(&self, payload: &str) -> Result<String, Refusal> {
        let mut nonce = [0u8; NONCE_BYTES];
        getrandom::getrandom(&mut nonce).expect("the operating system's random source works");
        Ok(sealed::seal(&self.key()?, channels::PEERS, now_ms(), nonce, payload.as_bytes())?)
    }

    /// The payload of a notification received on `channel` at `now_ms`, or why it is refused.
    pub fn open(&self, channel: &str, notification: &str, now_ms: u64) -> Result<String, Refusal> {
        let opened = sealed::open(&self.key()?, channel, notification)?;
        if channel != channels::EVENTS {
            if opened.sent_at_ms.abs_diff(now_ms) > FRESH_MS {
                return Err(Refusal::Stale);
            }
            let mut seen = self.seen.lock().unwrap();
            if now_ms.abs_diff(seen.pruned_at_ms) >= PRUNE_EVERY_MS {
                seen.nonces.retain(|_, at| at.abs_diff(now_ms) <= FRESH_MS);
                seen.pruned_at_ms = now_ms;
            }
            if seen.nonces.insert(opened.nonce, opened.sent_at_ms).is_some() {
                return Err(Refusal::Replayed);
            }
        }
        String::from_utf8(opened.payload).map_err(|_| Refusal::Seal(sealed::SealError::Malformed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: Key = [9; 32];

    #[test]
    fn peer_and_access_notifications_open_once_and_only_while_fresh() {
        let sealing = Sealing::default();
        assert_eq!(sealing.seal_for_peers("{}"), Err(Refusal::NoKey));
        sealing.set_key(KEY);
        let now = now_ms();
        let sealed = sealing.seal_for_peers(r#"{"kind":"broadcast"}"#).unwrap();
        assert_eq!(sealing.open(channels::PEERS, &sealed, now).unwrap(), r#"{"kind":"broadcast"}"#);
        assert_eq!(sealing.open(channels::PEERS, &sealed, now), Err(Refusal::Replayed));
        assert_eq!(sealing.open(channels::ACCESS, &sealed, now), Err(Refusal::Seal(sealed::SealError::Forged)));
        let old = sealed::seal(&KEY, channels::ACCESS, now - 3 * FRESH_MS, [1; NONCE_BYTES], b"{}").unwrap();
        assert_eq!(sealing.open(channels::ACCESS, &old, now), Err(Refusal::Stale));
        assert_eq!(
            sealing.open(channels::ACCESS, r#"{"user_id":"x"}"#, now),
            Err(Refusal::Seal(sealed::SealError::Malformed))
        );
    }

    #[test]
    fn event_notifications_are_judged_by_their_ids_not_their_age() {
        let sealing = Sealing::default();
        sealing.set_key(KEY);
        let old = sealed::seal(&KEY, channels::EVENTS, 1, [2; NONCE_BYTES], br#"{"first":1,"last":1}"#).unwrap();
        assert!(sealing.open(channels::EVENTS, &old, now_ms()).is_ok());
        assert!(sealing.open(channels::EVENTS, &old, now_ms()).is_ok());
    }
}
