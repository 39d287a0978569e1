//! Credentials: HS256 JWTs (`role` and `exp` required, `sub` for agents) and widget session
//! secrets (`cfws_…`), which the extension exchanges for visitor claims.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::Value;

/// Verified claims and when they stop being valid (unix seconds).
#[derive(Debug, Clone)]
pub struct Identity {
    pub claims: Value,
    pub expires_at: u64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AuthError {
    #[error("API key is missing")]
    Missing,
    #[error("Token has expired")]
    Expired,
    #[error("Fields `role` and `exp` are required in JWT")]
    MissingClaims,
    #[error("Field `sub` is required for role authenticated")]
    MissingSub,
    #[error("The token provided is not a valid JWT")]
    Malformed,
    #[error("Failed to validate JWT signature")]
    Signature,
    #[error("the widget session secret is invalid, revoked or expired")]
    BadSecret,
}

impl AuthError {
    /// The code realtime-js shows before the message, as Supabase Realtime does.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Malformed => "MalformedJWT",
            AuthError::Signature => "JwtSignatureError",
            AuthError::BadSecret => "Unauthorized",
            _ => "InvalidJWTToken",
        }
    }
}

pub const WIDGET_SECRET_PREFIX: &str = "cfws_";

pub fn is_widget_secret(token: &str) -> bool {
    token.starts_with(WIDGET_SECRET_PREFIX)
}

pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

pub fn verify_jwt(secret: &[u8], token: &str) -> Result<Identity, AuthError> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_required_spec_claims(&["exp"]);
    validation.leeway = 0;
    let data = jsonwebtoken::decode::<Value>(token, &DecodingKey::from_secret(secret), &validation).map_err(|e| {
        use jsonwebtoken::errors::ErrorKind;
        match e.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::MissingRequiredClaim(_) => AuthError::MissingClaims,
            ErrorKind::InvalidSignature => AuthError::Signature,
            _ => AuthError::Malformed,
        }
    })?;
    let claims = data.claims;
    let role = claims.get("role").and_then(Value::as_str).ok_or(AuthError::MissingClaims)?;
    let expires_at = claims.get("exp").and_then(Value::as_f64).ok_or(AuthError::MissingClaims)? as u64;
    if role == "authenticated" && claims.get("sub").and_then(Value::as_str).is_none() {
        return Err(AuthError::MissingSub);
    }
    Ok(Identity { claims, expires_at })
}

/// Signs claims (a visitor token minted from a session secret, the demo agent's token).
pub fn sign(secret: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret))
        .expect("HS256 signing cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &[u8] = b"test-secret";

    #[test]
    fn accepts_a_valid_token_and_refuses_each_bad_one_with_its_reason() {
        let good = sign(SECRET, &json!({"role": "authenticated", "sub": "u1", "exp": now() + 60}));
        assert_eq!(verify_jwt(SECRET, &good).unwrap().claims["sub"], "u1");
        let expired = sign(SECRET, &json!({"role": "authenticated", "sub": "u1", "exp": now() - 10}));
        assert_eq!(verify_jwt(SECRET, &expired).unwrap_err(), AuthError::Expired);
        let no_role = sign(SECRET, &json!({"exp": now() + 60}));
        assert_eq!(verify_jwt(SECRET, &no_role).unwrap_err(), AuthError::MissingClaims);
        let no_exp = sign(SECRET, &json!({"role": "anon"}));
        assert_eq!(verify_jwt(SECRET, &no_exp).unwrap_err(), AuthError::MissingClaims);
        let no_sub = sign(SECRET, &json!({"role": "authenticated", "exp": now() + 60}));
        assert_eq!(verify_jwt(SECRET, &no_sub).unwrap_err(), AuthError::MissingSub);
        let forged = sign(b"other", &json!({"role": "service_role", "exp": now() + 60}));
        assert_eq!(verify_jwt(SECRET, &forged).unwrap_err(), AuthError::Signature);
        assert_eq!(verify_jwt(SECRET, "garbage").unwrap_err(), AuthError::Malformed);
    }
}
