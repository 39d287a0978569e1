//! The request's claims (`request.jwt.claims`), read as `campfire.claim(key)`.
//!
//! Row-level security and the API ask for the caller's role several times for every message; as
//! `current_claims() ->> 'role'` each ask parsed the claims' JSON again, ~11k instructions
//! (callgrind). Here the parsed claims are kept, keyed by the exact
//! text of the setting: a new text, and only a new text, is parsed again, so nothing can be
//! answered from claims that are no longer set.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use serde_json::{Map, Value};
use std::cell::RefCell;
use std::ffi::CStr;

/// The claims text last read, and what it parsed to (`None`: not a JSON object).
struct Parsed {
    text: Vec<u8>,
    claims: Option<Map<String, Value>>,
}

thread_local! {
    static PARSED: RefCell<Parsed> = const { RefCell::new(Parsed { text: Vec::new(), claims: None }) };
}

/// Runs `f` on the claims as they are now set (`None`: unset, or no JSON object). Claims that
/// are not JSON at all raise 22P02, as the cast to jsonb does.
fn with_claims<R>(f: impl FnOnce(Option<&Map<String, Value>>) -> R) -> R {
    // SAFETY: reads a setting's current value by name (NULL when no such setting exists). The
    // string belongs to the GUC machinery and is read here, before anything can change it.
    let setting = unsafe { pg_sys::GetConfigOption(c"request.jwt.claims".as_ptr(), true, false) };
    let text = if setting.is_null() { &[][..] } else { unsafe { CStr::from_ptr(setting) }.to_bytes() };
    PARSED.with(|parsed| {
        let mut parsed = parsed.borrow_mut();
        if parsed.text != text {
            let claims = match serde_json::from_slice::<Value>(if text.is_empty() { b"{}" } else { text }) {
                Ok(Value::Object(claims)) => Some(claims),
                Ok(_) => None,
                Err(err) => {
                    ereport!(
                        ERROR,
                        PgSqlErrorCode::ERRCODE_INVALID_TEXT_REPRESENTATION,
                        "invalid input syntax for type json",
                        format!("request.jwt.claims: {err}")
                    );
                }
            };
            *parsed = Parsed { text: text.to_vec(), claims };
        }
        f(parsed.claims.as_ref())
    })
}

/// `campfire.current_claims() ->> key` for a string claim: the claim as text; any other value as
/// its JSON text; NULL when absent or JSON null, or when the claims are no JSON object.
#[pg_extern(stable, strict, parallel_safe)]
fn claim(key: &str) -> Option<String> {
    with_claims(|claims| match claims?.get(key)? {
        Value::Null => None,
        Value::String(value) => Some(value.clone()),
        value => Some(value.to_string()),
    })
}

/// `campfire.try_uuid(text)`: a uuid from text in the canonical form (8-4-4-4-12 hex digits,
/// either case), or NULL when the text is not one (claims come from outside). As a regex with
/// bounded repetitions PostgreSQL rebuilt its automaton at every match: ~40k instructions a
/// call, six calls per visitor message.
#[pg_extern(immutable, strict, parallel_safe)]
fn try_uuid(value: &str) -> Option<pgrx::Uuid> {
    let canonical = value.len() == 36
        && value.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
    let id = canonical.then(|| uuid::Uuid::try_parse(value).ok()).flatten()?;
    Some(pgrx::Uuid::from_bytes(*id.as_bytes()))
}

/// The claims' role, or 28000 when the claims carry none: what every API function asks first.
#[pg_extern(stable, parallel_safe)]
fn require_role() -> String {
    claim("role").unwrap_or_else(|| {
        ErrorReport::new(
            PgSqlErrorCode::ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION,
            "not authenticated: request.jwt.claims carries no role",
            "require_role",
        )
        .set_hint("set request.jwt.claims for the transaction")
        .report(PgLogLevel::ERROR);
        unreachable!("an ERROR report does not return")
    })
}

/// Whether the caller acts as the service: the claims' role is `service_role`, and the session's
/// login is a member of campfire_service (a claim alone is not enough). session_user, not
/// current_user: inside SECURITY DEFINER functions current_user is the owner.
#[pg_extern(stable, parallel_safe)]
fn is_service() -> bool {
    let claimed = with_claims(
        |claims| matches!(claims.and_then(|claims| claims.get("role")), Some(Value::String(role)) if role == "service_role"),
    );
    // SAFETY: a catalog cache lookup by name (InvalidOid when missing) and PostgreSQL's own cached
    // membership test, as pg_has_role(session_user, 'campfire_service', 'MEMBER') runs it.
    claimed
        && unsafe {
            let service = pg_sys::get_role_oid(c"campfire_service".as_ptr(), true);
            service != pg_sys::InvalidOid && pg_sys::is_member_of_role(pg_sys::GetSessionUserId(), service)
        }
}
