//! `campfire.parse_channel`: the channel grammar of `campfire_core::channel`, for SQL.

use campfire_core::channel::{Channel, parse};
use pgrx::prelude::*;
use uuid::Uuid;

/// Parses a channel name into its parts; raises SQLSTATE 22023 with the reason when it is not one.
#[pg_extern(immutable, strict, parallel_safe)]
#[allow(clippy::type_complexity)]
fn parse_channel(
    topic: &str,
) -> TableIterator<
    'static,
    (
        name!(kind, String),
        name!(organization_id, pgrx::Uuid),
        name!(conversation_id, Option<pgrx::Uuid>),
        name!(widget_session_id, Option<pgrx::Uuid>),
        name!(visitor_id, Option<String>),
        name!(canonical, String),
    ),
> {
    let channel = match parse(topic) {
        Ok(channel) => channel,
        Err(err) => {
            ereport!(ERROR, PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, format!("invalid channel name: {err}"));
        }
    };
    let to_pg = |id: Uuid| pgrx::Uuid::from_bytes(*id.as_bytes());
    let session = match &channel {
        Channel::WidgetSession { session, .. } => Some(to_pg(*session)),
        _ => None,
    };
    let visitor = match &channel {
        Channel::WidgetVisitor { visitor, .. } => Some(visitor.clone()),
        _ => None,
    };
    TableIterator::once((
        channel.kind().to_owned(),
        to_pg(channel.organization()),
        channel.conversation().map(to_pg),
        session,
        visitor,
        channel.canonical(),
    ))
}
