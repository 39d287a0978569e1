//! The shape of a widget session secret: `cfws_<session id>_<tag>`, the session id in simple
//! (unhyphenated) form and the tag in unpadded URL-safe base64. The extension makes and checks
//! the tag (an HMAC under the server key); the relay only needs to recognise a secret.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use uuid::Uuid;

pub const PREFIX: &str = "cfws_";

/// Whether a credential is shaped as a widget session secret (rather than a JWT or an API key).
pub fn is_widget_secret(token: &str) -> bool {
    token.starts_with(PREFIX)
}

/// The secret of `session` with `tag`.
pub fn encode(session: Uuid, tag: &[u8]) -> String {
    format!("{PREFIX}{}_{}", session.simple(), URL_SAFE_NO_PAD.encode(tag))
}

/// The session a secret names and its tag, or `None` when it is not shaped like a secret.
pub fn decode(secret: &str) -> Option<(Uuid, Vec<u8>)> {
    let (id, tag) = secret.strip_prefix(PREFIX)?.split_once('_')?;
    Some((Uuid::try_parse(id).ok()?, URL_SAFE_NO_PAD.decode(tag).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_names_its_session_and_carries_its_tag() {
        let session = Uuid::from_bytes([7; 16]);
        let secret = encode(session, b"tag");
        assert_eq!(secret, "cfws_07070707070707070707070707070707_dGFn");
        assert!(is_widget_secret(&secret));
        assert_eq!(decode(&secret), Some((session, b"tag".to_vec())));
    }

    #[test]
    fn anything_else_is_not_a_secret() {
        for text in
            ["", "cfws_", "cfws_garbage", "cfws_07070707070707070707070707070707", "eyJhbGciOi.x.y", "sb_secret_x"]
        {
            assert_eq!(decode(text), None, "{text}");
        }
        assert!(!is_widget_secret("sb_publishable_x"));
    }
}
