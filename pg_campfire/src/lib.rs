//! pg_campfire: the realtime core of a support chat, inside PostgreSQL.
//!
//! The schema, row-level security and SQL API are hand-written SQL in the repository's `sql/`
//! folder; this crate adds what is better in Rust: channel-name parsing, scalar-only row JSON,
//! the trigger functions, the transactional event log with its NOTIFY, and session secrets.

use pgrx::prelude::*;

mod channel;
mod claims;
mod errors;
mod events;
mod horizon;
mod kept_plans;
mod message_rules;
mod message_seq;
mod notifier;
mod notify;
mod read_memo;
mod row_access;
mod scalar;
mod secret;
mod send_message;
mod triggers;

::pgrx::pg_module_magic!(name, version);

extension_sql_file!("../../sql/schema.sql", name = "schema", bootstrap);
extension_sql_file!(
    "../../sql/auth.sql",
    name = "auth",
    requires = [
        "schema",
        claims::claim,
        claims::is_service,
        claims::try_uuid,
        channel::parse_channel,
        secret::widget_secret_matches,
        secret::widget_secret_session
    ]
);
extension_sql_file!(
    "../../sql/triggers.sql",
    name = "triggers",
    requires = [
        "auth",
        events::flush_events,
        message_seq::assign_message_seq,
        row_access::admit_message,
        triggers::message_events,
        triggers::conversation_events,
        triggers::read_receipt_events,
        triggers::agent_status_events,
        triggers::sync_realtime_conversations,
        triggers::touch_updated_at,
        notify::announce_access_change
    ]
);
extension_sql_file!(
    "../../sql/api.sql",
    name = "api",
    requires = [
        "triggers",
        claims::require_role,
        secret::widget_secret,
        secret::random_bytes,
        events::broadcast,
        horizon::log_horizon
    ]
);
extension_sql_file!("../../sql/security.sql", name = "security", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    events::init();
    horizon::init();
    notifier::init();
    scalar::init();
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec!["shared_preload_libraries = 'pg_campfire'"]
    }
}
