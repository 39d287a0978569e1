//! Sealed notifications. Any login with CONNECT can LISTEN on, and NOTIFY on, any channel, so
//! nothing travels through NOTIFY in the clear and nothing received is believed unless sealed:
//! XChaCha20-Poly1305 with a key that only the extension's owner and the relay role can read
//! (`campfire.notify_key()`). The channel name is authenticated with the payload, so a message
//! sealed for one channel is refused on another; the send time and the random nonce travel inside,
//! so receivers can refuse a replay (see the relay's replay guard).
//!
//! Wire form: `cf1.` + base64url(nonce (24 bytes) || ciphertext of (send time, ms, 8 bytes
//! big-endian || payload) || tag (16 bytes)).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

pub const KEY_BYTES: usize = 32;
pub const NONCE_BYTES: usize = 24;
const TAG_BYTES: usize = 16;
const TIME_BYTES: usize = 8;
const PREFIX: &str = "cf1.";
/// PostgreSQL refuses NOTIFY payloads of 8000 bytes or more.
const NOTIFY_LIMIT: usize = 7999;
/// The largest payload whose sealed form fits in one NOTIFY.
pub const MAX_PAYLOAD: usize = (NOTIFY_LIMIT - PREFIX.len()) / 4 * 3 - NONCE_BYTES - TAG_BYTES - TIME_BYTES;

pub type Key = [u8; KEY_BYTES];

/// What `open` found inside a sealed notification.
#[derive(Debug, PartialEq)]
pub struct Opened {
    pub sent_at_ms: u64,
    pub nonce: [u8; NONCE_BYTES],
    pub payload: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SealError {
    #[error("not a sealed notification")]
    Malformed,
    #[error("the seal does not verify (another key, another channel, or altered)")]
    Forged,
    #[error("payload of {0} bytes is over the {MAX_PAYLOAD} a notification can carry sealed")]
    TooLarge(usize),
}

/// Seals `payload` for `channel`. `nonce` must be fresh random bytes for every message.
pub fn seal(
    key: &Key,
    channel: &str,
    sent_at_ms: u64,
    nonce: [u8; NONCE_BYTES],
    payload: &[u8],
) -> Result<String, SealError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(SealError::TooLarge(payload.len()));
    }
    let mut plaintext = Vec::with_capacity(TIME_BYTES + payload.len());
    plaintext.extend_from_slice(&sent_at_ms.to_be_bytes());
    plaintext.extend_from_slice(payload);
    let ciphertext = XChaCha20Poly1305::new(key.into())
        .encrypt(XNonce::from_slice(&nonce), Payload { msg: &plaintext, aad: channel.as_bytes() })
        .expect("XChaCha20-Poly1305 encrypts any message of this size");
    let mut wire = Vec::with_capacity(NONCE_BYTES + ciphertext.len());
    wire.extend_from_slice(&nonce);
    wire.extend_from_slice(&ciphertext);
    Ok(format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(wire)))
}

/// Opens a notification received on `channel`: its payload, send time and nonce, or why not.
pub fn open(key: &Key, channel: &str, sealed: &str) -> Result<Opened, SealError> {
    let wire = sealed
        .strip_prefix(PREFIX)
        .and_then(|body| URL_SAFE_NO_PAD.decode(body).ok())
        .filter(|wire| wire.len() >= NONCE_BYTES + TIME_BYTES + TAG_BYTES)
        .ok_or(SealError::Malformed)?;
    let (nonce, ciphertext) = wire.split_at(NONCE_BYTES);
    let plaintext = XChaCha20Poly1305::new(key.into())
        .decrypt(XNonce::from_slice(nonce), Payload { msg: ciphertext, aad: channel.as_bytes() })
        .map_err(|_| SealError::Forged)?;
    let (time, payload) = plaintext.split_at(TIME_BYTES);
    Ok(Opened {
        sent_at_ms: u64::from_be_bytes(time.try_into().expect("eight bytes")),
        nonce: nonce.try_into().expect("nonce length checked"),
        payload: payload.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: Key = [7; KEY_BYTES];

    #[test]
    fn a_sealed_payload_opens_with_its_key_on_its_channel_only() {
        let sealed = seal(&KEY, "campfire_events", 1234, [1; NONCE_BYTES], b"{\"first\":1}").unwrap();
        assert!(!sealed.contains("first"), "the payload is not readable: {sealed}");
        let opened = open(&KEY, "campfire_events", &sealed).unwrap();
        assert_eq!(opened, Opened { sent_at_ms: 1234, nonce: [1; NONCE_BYTES], payload: b"{\"first\":1}".to_vec() });
        assert_eq!(open(&[8; KEY_BYTES], "campfire_events", &sealed), Err(SealError::Forged));
        assert_eq!(open(&KEY, "campfire_relay", &sealed), Err(SealError::Forged));
    }

    #[test]
    fn anything_else_is_refused_without_panicking() {
        let sealed = seal(&KEY, "c", 1, [2; NONCE_BYTES], b"x").unwrap();
        let mut altered = sealed.clone().into_bytes();
        let last = altered.len() - 2;
        altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(open(&KEY, "c", std::str::from_utf8(&altered).unwrap()), Err(SealError::Forged));
        for junk in ["", "{\"first\":1,\"last\":999999}", "cf1.", "cf1.!!!", "cf1.AAAA", &sealed[..sealed.len() - 10]] {
            assert!(open(&KEY, "c", junk).is_err(), "{junk}");
        }
    }

    #[test]
    fn the_largest_payload_fits_in_a_notification() {
        let sealed = seal(&KEY, "c", 1, [3; NONCE_BYTES], &vec![b'x'; MAX_PAYLOAD]).unwrap();
        assert!(sealed.len() <= NOTIFY_LIMIT, "{}", sealed.len());
        assert_eq!(
            seal(&KEY, "c", 1, [3; NONCE_BYTES], &vec![b'x'; MAX_PAYLOAD + 1]),
            Err(SealError::TooLarge(MAX_PAYLOAD + 1))
        );
    }
}
