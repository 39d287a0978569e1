//! The request's claims (`request.jwt.claims`), read as `campfire.claim(key)`.
//!
//! Row-level security and the API ask for the caller's role several times for every message; as
//! `current_claims() ->> 'role'` each ask parsed the claims' JSON again, ~11k instructions
//! (callgrind). Here the claims are parsed once by PostgreSQL's own jsonb input and kept, keyed by
//! the exact text of the setting: a new text, and only a new text, is parsed again, so nothing
//! can be answered from claims that are no longer set, and every answer, and every refusal
//! (`\u0000`, malformed JSON), is jsonb's own.

use crate::errors::raise;
use pgrx::PgMemoryContexts;
use pgrx::prelude::*;
use std::cell::RefCell;
use std::ffi::CStr;

/// The claims text last parsed, and its jsonb, allocated in `memory` (reset before each parse),
/// with the claims read from it so far: a message asks for the role a dozen times.
struct Parsed {
    text: Option<Vec<u8>>,
    jsonb: pg_sys::Datum,
    memory: pg_sys::MemoryContext,
    answers: Vec<(String, Option<String>)>,
}

/// More than the keys the extension reads (role, sub, widget_session_id).
const ANSWERS_KEPT: usize = 8;

thread_local! {
    static PARSED: RefCell<Parsed> = const {
        RefCell::new(Parsed {
            text: None,
            jsonb: pg_sys::Datum::null(),
            memory: std::ptr::null_mut(),
            answers: Vec::new(),
        })
    };
}

/// `campfire.current_claims() ->> key`, read from the kept claims: the claim as text (a
/// non-string as its JSON), NULL when absent, JSON null, or when the claims are no JSON object.
/// Claims that are not JSON raise jsonb's error.
#[pg_extern(stable, strict, parallel_safe)]
pub(crate) fn claim(key: &str) -> Option<String> {
    // SAFETY: reads a setting's current value by name (NULL when no such setting exists). The
    // string belongs to the GUC machinery and is read here, before anything can change it.
    let setting = unsafe { pg_sys::GetConfigOption(c"request.jwt.claims".as_ptr(), true, false) };
    let setting =
        if setting.is_null() || unsafe { *setting } == 0 { c"{}" } else { unsafe { CStr::from_ptr(setting) } };
    PARSED.with(|parsed| {
        let mut parsed = parsed.borrow_mut();
        if parsed.text.as_deref() != Some(setting.to_bytes()) {
            // SAFETY: the context lives as long as the backend; the jsonb parsed into it is kept
            // only once parsing succeeded (an error leaves `text` None, so nothing stale is read).
            unsafe {
                if parsed.memory.is_null() {
                    parsed.memory = pg_sys::AllocSetContextCreateExtended(
                        pg_sys::TopMemoryContext,
                        c"campfire claims".as_ptr(),
                        0,
                        1024,
                        8192,
                    );
                }
                parsed.text = None;
                parsed.answers.clear();
                pg_sys::MemoryContextReset(parsed.memory);
                let input = pg_sys::Datum::from(setting.as_ptr());
                parsed.jsonb = PgMemoryContexts::For(parsed.memory)
                    .switch_to(|_| pgrx::direct_function_call_as_datum(pg_sys::jsonb_in, &[Some(input)]))
                    .expect("jsonb_in returns a value for a value");
            }
            parsed.text = Some(setting.to_bytes().to_vec());
        }
        if let Some((_, answer)) = parsed.answers.iter().find(|(asked, _)| asked == key) {
            return answer.clone();
        }
        // SAFETY: `->>` on a jsonb datum that lives in `memory` until the next parse.
        let answer = unsafe {
            pgrx::direct_function_call::<String>(
                pg_sys::jsonb_object_field_text,
                &[Some(parsed.jsonb), key.into_datum()],
            )
        };
        // Bounded: a caller asking for endless keys under one setting must not grow the backend.
        if parsed.answers.len() < ANSWERS_KEPT {
            parsed.answers.push((key.to_owned(), answer.clone()));
        }
        answer
    })
}

/// `campfire.try_uuid(text)`: a uuid from text in the canonical form (8-4-4-4-12 hex digits,
/// either case), or NULL when the text is not one (claims come from outside). As a regex with
/// bounded repetitions PostgreSQL rebuilt its automaton at every match: ~40k instructions a
/// call, six calls per visitor message.
#[pg_extern(immutable, strict, parallel_safe)]
pub(crate) fn try_uuid(value: &str) -> Option<pgrx::Uuid> {
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
pub(crate) fn require_role() -> String {
    claim("role").unwrap_or_else(|| {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION,
            "not authenticated: request.jwt.claims carries no role",
            Some("set request.jwt.claims for the transaction"),
        )
    })
}

/// Whether the caller acts as the service: the claims' role is `service_role`, and the session's
/// login is a member of campfire_service (a claim alone is not enough). session_user, not
/// current_user: inside SECURITY DEFINER functions current_user is the owner.
#[pg_extern(stable, parallel_safe)]
pub(crate) fn is_service() -> bool {
    let claimed = claim("role").as_deref() == Some("service_role");
    // SAFETY: a catalog cache lookup by name (InvalidOid when missing) and PostgreSQL's own cached
    // membership test, as pg_has_role(session_user, 'campfire_service', 'MEMBER') runs it.
    claimed
        && unsafe {
            let service = pg_sys::get_role_oid(c"campfire_service".as_ptr(), true);
            service != pg_sys::InvalidOid && pg_sys::is_member_of_role(pg_sys::GetSessionUserId(), service)
        }
}
