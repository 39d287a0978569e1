//! What the pg_campfire extension and its relay share, free of pgrx and of tokio, so that
//! changing one side without the other stops compiling.

pub mod announcement;
pub mod channel;
pub mod sealed;
pub mod widget_secret;

/// The NOTIFY channels: committed events (from the extension), relay-to-relay messages, and
/// rights taken back (from the extension). Every payload on them is sealed (`sealed`).
pub mod channels {
    pub const EVENTS: &str = "campfire_events";
    pub const PEERS: &str = "campfire_relay";
    pub const ACCESS: &str = "campfire_access";
}
