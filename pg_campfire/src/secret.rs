//! Widget session secrets. A secret is `cfws_<session id>_<mac>` (`campfire_core::widget_secret`)
//! where mac is HMAC-SHA256(server key, session id || nonce). Only the nonce is stored, so a
//! leaked table reveals no credential, revoking is rotating the nonce, and the server can hand the
//! same secret to a second tab of the same visitor during the short claim window after creation.

use campfire_core::widget_secret;
use hmac::{Hmac, Mac};
use pgrx::prelude::*;
use sha2::Sha256;

fn mac(key: &[u8], session_id: &pgrx::Uuid, nonce: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(session_id.as_bytes());
    mac.update(nonce);
    mac
}

fn to_pg(id: uuid::Uuid) -> pgrx::Uuid {
    pgrx::Uuid::from_bytes(*id.as_bytes())
}

/// The secret of a widget session (internal: needs the server key).
#[pg_extern(immutable, strict, parallel_safe)]
fn widget_secret(key: &[u8], session_id: pgrx::Uuid, nonce: &[u8]) -> String {
    let tag = mac(key, &session_id, nonce).finalize().into_bytes();
    widget_secret::encode(uuid::Uuid::from_bytes(*session_id.as_bytes()), &tag)
}

/// The session id a secret claims to belong to, or NULL when it is not shaped like a secret.
#[pg_extern(immutable, strict, parallel_safe)]
fn widget_secret_session(secret: &str) -> Option<pgrx::Uuid> {
    widget_secret::decode(secret).map(|(id, _)| to_pg(id))
}

/// Whether `secret` is the secret of the session, compared in constant time.
#[pg_extern(immutable, strict, parallel_safe)]
fn widget_secret_matches(key: &[u8], session_id: pgrx::Uuid, nonce: &[u8], secret: &str) -> bool {
    let Some((claimed, tag)) = widget_secret::decode(secret) else { return false };
    to_pg(claimed) == session_id && mac(key, &session_id, nonce).verify_slice(&tag).is_ok()
}

/// Cryptographically strong random bytes, from PostgreSQL's own source.
#[pg_extern(volatile, strict, parallel_safe)]
fn random_bytes(count: i32) -> Vec<u8> {
    if !(1..=1024).contains(&count) {
        ereport!(ERROR, PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, "random_bytes takes 1-1024");
    }
    let mut bytes = vec![0u8; count as usize];
    fill_random(&mut bytes);
    bytes
}

/// Fills `bytes` from PostgreSQL's strong random source.
pub(crate) fn fill_random(bytes: &mut [u8]) {
    // SAFETY: the buffer is valid for its whole length.
    if !unsafe { pg_sys::pg_strong_random(bytes.as_mut_ptr().cast(), bytes.len()) } {
        pgrx::error!("could not generate random bytes");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_name_their_session_and_verify_only_with_key_and_nonce() {
        let id = pgrx::Uuid::from_bytes([7; 16]);
        let secret = widget_secret(b"key", id, b"nonce");
        assert!(secret.starts_with("cfws_07070707"));
        assert_eq!(widget_secret_session(&secret), Some(id));
        assert!(widget_secret_matches(b"key", id, b"nonce", &secret));
        assert!(!widget_secret_matches(b"other", id, b"nonce", &secret));
        assert!(!widget_secret_matches(b"key", id, b"rotated", &secret));
        let other = pgrx::Uuid::from_bytes([8; 16]);
        assert!(!widget_secret_matches(b"key", other, b"nonce", &secret));
        assert!(!widget_secret_matches(b"key", id, b"nonce", "cfws_garbage"));
        assert_eq!(widget_secret_session("not a secret"), None);
    }
}
