//! Sealed NOTIFY: every notification the extension sends is sealed with the notify key (see
//! `campfire_core::sealed`), which only the owner and the relay role can read. A login that
//! LISTENs learns nothing but sizes and times; one that NOTIFYs cannot make a relay believe it.

use crate::kept_plans::kept_value;
use campfire_core::sealed;
use pgrx::PgTrigger;
use pgrx::prelude::*;
use std::cell::Cell;

thread_local! {
    /// The key, read once per backend (it is made once per database and never changes).
    static KEY: Cell<Option<sealed::Key>> = const { Cell::new(None) };
    /// This backend's nonce prefix (drawn at its first notification) and how many it has used.
    static NONCE_PREFIX: Cell<Option<[u8; sealed::NONCE_BYTES - 8]>> = const { Cell::new(None) };
    static NONCES_USED: Cell<u64> = const { Cell::new(0) };
}

/// The database's notify key, made on first use; `None` while the database's SQL is still that
/// of 0.1.0 (the library was upgraded, `ALTER EXTENSION pg_campfire UPDATE` not yet run). Must run
/// with the owner's rights (a SECURITY DEFINER caller or the notifier).
fn key() -> Option<sealed::Key> {
    if let Some(key) = KEY.get() {
        return Some(key);
    }
    const INSTALLED: &str = "SELECT pg_catalog.to_regprocedure('campfire.notify_key()') IS NOT NULL";
    let installed = kept_value("looking for the notify key", INSTALLED, &[], &[]).unwrap_or(false);
    if !installed {
        return None;
    }
    let bytes: Vec<u8> = kept_value("reading the notify key", "SELECT campfire.notify_key()", &[], &[])
        .unwrap_or_else(|| pgrx::error!("campfire.notify_key() returned no key"));
    let key: sealed::Key =
        bytes.try_into().unwrap_or_else(|_| pgrx::error!("the notify key must be {} bytes", sealed::KEY_BYTES));
    KEY.set(Some(key));
    Some(key)
}

/// A nonce never used before with the key: random bytes drawn once per backend, then a count.
/// XChaCha20-Poly1305 asks only that a nonce never repeat; its 24 bytes leave room for a
/// 16-byte random prefix, and a fresh draw for every notification (OpenSSL's, through
/// pg_strong_random) cost ~8.6k instructions.
fn fresh_nonce() -> [u8; sealed::NONCE_BYTES] {
    const PREFIX_BYTES: usize = sealed::NONCE_BYTES - 8;
    let prefix = NONCE_PREFIX.get().unwrap_or_else(|| {
        let mut prefix = [0u8; PREFIX_BYTES];
        crate::secret::fill_random(&mut prefix);
        NONCE_PREFIX.set(Some(prefix));
        prefix
    });
    let count = NONCES_USED.get();
    NONCES_USED.set(count + 1);
    let mut nonce = [0u8; sealed::NONCE_BYTES];
    nonce[..PREFIX_BYTES].copy_from_slice(&prefix);
    nonce[PREFIX_BYTES..].copy_from_slice(&count.to_be_bytes());
    nonce
}

/// Seals `payload` for `channel` and queues the NOTIFY (sent at commit, like any NOTIFY). Between
/// a library upgrade and the SQL upgrade it sends as 0.1.0 did, unsealed, so writes keep working
/// for the 0.1.0 relays still listening.
pub fn send(channel: &str, payload: &str) {
    let notification = match key() {
        Some(key) => {
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            sealed::seal(&key, channel, now_ms, fresh_nonce(), payload.as_bytes())
                .unwrap_or_else(|err| pgrx::error!("sealing a notification on {channel}: {err}"))
        }
        None => payload.to_owned(),
    };
    // SAFETY: pg_notify takes two text datums, both valid for the call.
    unsafe {
        pgrx::direct_function_call::<()>(pg_sys::pg_notify, &[channel.into_datum(), notification.into_datum()]);
    }
}

/// Rights granted at join time can be taken back: when a member's role or status changes (or the
/// member goes), or a widget session is revoked, shortened or erased, the relays hear of it on
/// `campfire_access` and check that person's joined channels again (authorize_channel).
#[pg_trigger]
fn announce_access_change<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, pgrx::AllocatedByPostgres>>, std::convert::Infallible> {
    let old = trigger.old().unwrap_or_else(|| pgrx::error!("announce_access_change runs after UPDATE or DELETE"));
    let change = match trigger.table_name().unwrap_or_default().as_str() {
        "organization_members" => {
            serde_json::json!({ "user_id": old.get_by_name::<pgrx::Uuid>("user_id").ok().flatten().map(|u| u.to_string()) })
        }
        _ => {
            serde_json::json!({ "widget_session_id": old.get_by_name::<pgrx::Uuid>("id").ok().flatten().map(|u| u.to_string()) })
        }
    };
    send(campfire_core::channels::ACCESS, &change.to_string());
    Ok(None)
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn nonces_share_the_backends_prefix_and_never_repeat() {
        let nonces: Vec<_> = (0..1000).map(|_| super::fresh_nonce()).collect();
        let prefix = &nonces[0][..16];
        assert!(nonces.iter().all(|nonce| &nonce[..16] == prefix));
        let distinct: std::collections::HashSet<_> = nonces.iter().collect();
        assert_eq!(distinct.len(), nonces.len());
        assert_ne!(prefix, &[0u8; 16][..], "the prefix is drawn, not left zero");
    }
}
