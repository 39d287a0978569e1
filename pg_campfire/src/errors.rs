//! The SQL errors the extension raises itself: a code and a message, and a hint where one helps.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

/// Raises ERROR `code` with `message` (and `hint`); never returns.
#[track_caller]
pub fn raise(code: PgSqlErrorCode, message: impl Into<String>, hint: Option<&str>) -> ! {
    let mut error = ErrorReport::new(code, message.into(), "pg_campfire");
    if let Some(hint) = hint {
        error = error.set_hint(hint);
    }
    error.report(PgLogLevel::ERROR);
    unreachable!("an ERROR report does not return")
}
