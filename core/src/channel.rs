//! Channel names: `org:{organizationId}:{resource}[:{resourceId}][:{action}]`, optionally prefixed
//! with `bcast:` by clients: their grammar and the one canonical spelling events are published
//! under. Who may use a channel is decided in SQL by `campfire.authorize_channel`.

use uuid::Uuid;

/// Longest accepted channel name: binary realtime frames carry the topic in at most 255 bytes.
pub const MAX_CHANNEL_BYTES: usize = 255;
const BROADCAST_PREFIX: &str = "bcast:";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Channel {
    Organization { org: Uuid },
    Conversations { org: Uuid },
    AgentsPresence { org: Uuid },
    Conversation { org: Uuid, conversation: Uuid },
    ConversationTyping { org: Uuid, conversation: Uuid },
    ConversationPresence { org: Uuid, conversation: Uuid },
    WidgetSession { org: Uuid, session: Uuid },
    WidgetVisitor { org: Uuid, visitor: String },
}

impl Channel {
    pub fn kind(&self) -> &'static str {
        match self {
            Channel::Organization { .. } => "organization",
            Channel::Conversations { .. } => "conversations",
            Channel::AgentsPresence { .. } => "agents_presence",
            Channel::Conversation { .. } => "conversation",
            Channel::ConversationTyping { .. } => "conversation_typing",
            Channel::ConversationPresence { .. } => "conversation_presence",
            Channel::WidgetSession { .. } => "widget_session",
            Channel::WidgetVisitor { .. } => "widget_visitor",
        }
    }

    pub fn organization(&self) -> Uuid {
        match self {
            Channel::Organization { org }
            | Channel::Conversations { org }
            | Channel::AgentsPresence { org }
            | Channel::Conversation { org, .. }
            | Channel::ConversationTyping { org, .. }
            | Channel::ConversationPresence { org, .. }
            | Channel::WidgetSession { org, .. }
            | Channel::WidgetVisitor { org, .. } => *org,
        }
    }

    pub fn conversation(&self) -> Option<Uuid> {
        match self {
            Channel::Conversation { conversation, .. }
            | Channel::ConversationTyping { conversation, .. }
            | Channel::ConversationPresence { conversation, .. } => Some(*conversation),
            _ => None,
        }
    }

    /// The one spelling events are published under: no `bcast:` prefix, lowercase ids.
    pub fn canonical(&self) -> String {
        match self {
            Channel::Organization { org } => format!("org:{org}"),
            Channel::Conversations { org } => format!("org:{org}:conversations"),
            Channel::AgentsPresence { org } => format!("org:{org}:agents:presence"),
            Channel::Conversation { org, conversation } => format!("org:{org}:conv:{conversation}"),
            Channel::ConversationTyping { org, conversation } => {
                format!("org:{org}:conv:{conversation}:typing")
            }
            Channel::ConversationPresence { org, conversation } => {
                format!("org:{org}:conv:{conversation}:presence")
            }
            Channel::WidgetSession { org, session } => format!("org:{org}:widget:session:{session}"),
            Channel::WidgetVisitor { org, visitor } => format!("org:{org}:widget:visitor:{visitor}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    #[error("channel name is empty")]
    Empty,
    #[error("channel name is {0} bytes long; the limit is {MAX_CHANNEL_BYTES}")]
    TooLong(usize),
    #[error("channel name must start with \"org:\" (optionally prefixed with \"bcast:\")")]
    MissingOrgPrefix,
    #[error("\"{0}\" is not an id in canonical UUID form (8-4-4-4-12 hex digits)")]
    BadUuid(String),
    #[error("visitor id must be 1-128 characters of A-Z a-z 0-9 . _ -")]
    BadVisitorId,
    #[error(
        "unknown channel \"{0}\": expected org:{{o}}[:conversations|:agents:presence|:conv:{{c}}[:typing|:presence]|:widget:{{c}}|:widget:session:{{s}}|:widget:visitor:{{v}}]"
    )]
    UnknownShape(String),
}

/// A visitor id as widget sessions accept it.
pub fn is_valid_visitor_id(visitor: &str) -> bool {
    (1..=128).contains(&visitor.len())
        && visitor.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn parse_uuid(text: &str) -> Result<Uuid, ChannelError> {
    // Only the hyphenated form: other spellings would name the same channel twice.
    if text.len() != 36 {
        return Err(ChannelError::BadUuid(text.to_owned()));
    }
    Uuid::try_parse(text).map_err(|_| ChannelError::BadUuid(text.to_owned()))
}

pub fn parse(topic: &str) -> Result<Channel, ChannelError> {
    if topic.is_empty() {
        return Err(ChannelError::Empty);
    }
    if topic.len() > MAX_CHANNEL_BYTES {
        return Err(ChannelError::TooLong(topic.len()));
    }
    let name = topic.strip_prefix(BROADCAST_PREFIX).unwrap_or(topic);
    let rest = name.strip_prefix("org:").ok_or(ChannelError::MissingOrgPrefix)?;
    let parts: Vec<&str> = rest.split(':').collect();
    let org = parse_uuid(parts[0])?;
    let channel = match parts[1..] {
        [] => Channel::Organization { org },
        ["conversations"] => Channel::Conversations { org },
        ["agents", "presence"] => Channel::AgentsPresence { org },
        // The seeds' widget spelling of a conversation's channel (CAMPFIRE architecture doc):
        // the same channel, with the same events and the same permissions.
        ["conv", c] | ["widget", c] if c != "session" && c != "visitor" => {
            Channel::Conversation { org, conversation: parse_uuid(c)? }
        }
        ["conv", c, "typing"] => Channel::ConversationTyping { org, conversation: parse_uuid(c)? },
        ["conv", c, "presence"] => Channel::ConversationPresence { org, conversation: parse_uuid(c)? },
        ["widget", "session", s] => Channel::WidgetSession { org, session: parse_uuid(s)? },
        ["widget", "visitor", v] => {
            if !is_valid_visitor_id(v) {
                return Err(ChannelError::BadVisitorId);
            }
            Channel::WidgetVisitor { org, visitor: v.to_owned() }
        }
        _ => return Err(ChannelError::UnknownShape(name.to_owned())),
    };
    Ok(channel)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORG: &str = "b5e80170-004c-4e82-a88c-3e2166b169dd";
    const CONV: &str = "48eedfba-2568-4231-bb38-2ce20420900d";

    fn org() -> Uuid {
        Uuid::parse_str(ORG).unwrap()
    }
    fn conv() -> Uuid {
        Uuid::parse_str(CONV).unwrap()
    }

    #[test]
    fn parses_every_seed_channel() {
        let cases = [
            (format!("org:{ORG}"), Channel::Organization { org: org() }),
            (format!("org:{ORG}:conversations"), Channel::Conversations { org: org() }),
            (format!("org:{ORG}:agents:presence"), Channel::AgentsPresence { org: org() }),
            (format!("org:{ORG}:conv:{CONV}"), Channel::Conversation { org: org(), conversation: conv() }),
            (format!("org:{ORG}:conv:{CONV}:typing"), Channel::ConversationTyping { org: org(), conversation: conv() }),
            (
                format!("org:{ORG}:conv:{CONV}:presence"),
                Channel::ConversationPresence { org: org(), conversation: conv() },
            ),
            (format!("org:{ORG}:widget:session:{CONV}"), Channel::WidgetSession { org: org(), session: conv() }),
            (
                format!("org:{ORG}:widget:visitor:visitor456"),
                Channel::WidgetVisitor { org: org(), visitor: "visitor456".into() },
            ),
        ];
        for (name, expected) in cases {
            assert_eq!(parse(&name).unwrap(), expected, "{name}");
            assert_eq!(parse(&format!("bcast:{name}")).unwrap(), expected, "bcast:{name}");
            assert_eq!(expected.canonical(), name);
        }
    }

    #[test]
    fn the_seeds_widget_spelling_is_the_conversation_channel() {
        let widget = parse(&format!("bcast:org:{ORG}:widget:{CONV}")).unwrap();
        assert_eq!(widget, Channel::Conversation { org: org(), conversation: conv() });
        assert_eq!(widget.canonical(), format!("org:{ORG}:conv:{CONV}"));
    }

    #[test]
    fn canonical_form_lowercases_ids_and_drops_prefix() {
        let upper = format!("bcast:org:{}:conv:{}", ORG.to_uppercase(), CONV.to_uppercase());
        assert_eq!(parse(&upper).unwrap().canonical(), format!("org:{ORG}:conv:{CONV}"));
    }

    #[test]
    fn rejects_malformed_names_with_a_reason() {
        assert_eq!(parse(""), Err(ChannelError::Empty));
        assert_eq!(parse("room1"), Err(ChannelError::MissingOrgPrefix));
        assert_eq!(parse("org:not-a-uuid"), Err(ChannelError::BadUuid("not-a-uuid".into())));
        let simple = ORG.replace('-', "");
        assert_eq!(parse(&format!("org:{simple}")), Err(ChannelError::BadUuid(simple)));
        assert!(matches!(parse(&format!("org:{ORG}:conv")), Err(ChannelError::UnknownShape(_))));
        assert!(matches!(parse(&format!("org:{ORG}:conv:{CONV}:x")), Err(ChannelError::UnknownShape(_))));
        assert!(matches!(parse(&format!("org:{ORG}:")), Err(ChannelError::UnknownShape(_))));
        assert_eq!(parse(&format!("org:{ORG}:widget:visitor:a'b")), Err(ChannelError::BadVisitorId));
        assert_eq!(parse(&format!("org:{ORG}:widget:visitor:")), Err(ChannelError::BadVisitorId));
        let long = format!("org:{ORG}:widget:visitor:{}", "v".repeat(300));
        assert_eq!(parse(&long), Err(ChannelError::TooLong(long.len())));
        assert!(matches!(parse(&format!("org:{ORG}; DROP TABLE x")), Err(ChannelError::BadUuid(_))));
    }
}
