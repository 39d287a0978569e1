//! Sealed NOTIFY: every notification the extension sends is sealed with the notify key (see
//! `campfire_core::sealed`), which only the owner and the relay role can read. A login that
//! LISTENs learns nothing but sizes and times; one that NOTIFYs cannot make a relay believe it.

use campfire_core::sealed;
use pgrx::PgTrigger;
use pgrx::prelude::*;
use std::cell::Cell;

thread_local! {
    /// The key, read once per backend (it is made once per database and never changes).
    static KEY: Cell<Option<sealed::Key>> = const { Cell::new(None) };
}

/// The database's notify key, made on first use; `None` while the database's SQL is still that
/// of 0.1.0 (the library was upgraded, `ALTER EXTENSION pg_campfire UPDATE` not yet run). Must run
/// with the owner's rights (a SECURITY DEFINER caller or the notifier).
fn key() -> Option<sealed::Key> {
    if let Some(key) = KEY.get() {
        return Some(key);
    }
    let installed = Spi::get_one::<bool>("SELECT pg_catalog.to_regprocedure('campfire.notify_key()') IS NOT NULL")
        .ok()
        .flatten()
        .unwrap_or(false);
    if !installed {
        return None;
    }
    let bytes = Spi::get_one::<Vec<u8>>("SELECT campfire.notify_key()")
        .ok()
        .flatten()
        .unwrap_or_else(|| pgrx::error!("campfire.notify_key() returned no key"));
    let key: sealed::Key =
        bytes.try_into().unwrap_or_else(|_| pgrx::error!("the notify key must be {} bytes", sealed::KEY_BYTES));
    KEY.set(Some(key));
    Some(key)
}

fn random_nonce() -> [u8; sealed::NONCE_BYTES] {
    let mut nonce = [0u8; sealed::NONCE_BYTES];
    // SAFETY: the buffer is valid for its whole length.
    if !unsafe { pg_sys::pg_strong_random(nonce.as_mut_ptr().cast(), nonce.len()) } {
        pgrx::error!("could not generate random bytes");
    }
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
            sealed::seal(&key, channel, now_ms, random_nonce(), payload.as_bytes())
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
