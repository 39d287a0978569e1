//! Credentials: JWTs (`role` and `exp` required, `sub` for agents), signed HS256 with the relay's
//! secret or by an identity provider whose keys come from a JWKS, and widget session secrets
//! (`cfws_…`), which the extension exchanges for visitor claims.

use crate::config::TokenConfig;
use crate::jwks::Jwks;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Value, json};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The shape of a widget session secret is shared with the extension, in the core.
pub use campfire_core::widget_secret::is_widget_secret;

/// Verified claims and when they stop being valid (unix seconds).
#[derive(Debug, Clone)]
pub struct Identity {
    pub claims: Value,
    pub expires_at: u64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AuthError {
    #[error("Token has expired")]
    Expired,
    #[error("Token is not valid yet (its nbf is in the future)")]
    NotYetValid,
    #[error("Fields `role` and `exp` are required in JWT")]
    MissingClaims,
    #[error("Field `sub` is required for role authenticated")]
    MissingSub,
    #[error("Token audience (aud) is not accepted here; accepted: {0}")]
    Audience(String),
    #[error("Token issuer (iss) is missing or not accepted here; accepted: {0}")]
    Issuer(String),
    #[error("The token provided is not a valid JWT")]
    Malformed,
    #[error("Failed to validate JWT signature")]
    Signature,
    #[error("{0}")]
    Algorithm(String),
    #[error("no signing key with kid `{0}` is published in the identity provider's JWKS")]
    UnknownKey(String),
    #[error("the widget session secret is invalid, revoked or expired")]
    BadSecret,
    #[error("the connection's token (its apikey) has expired: join with a current access_token")]
    ConnectionExpired,
    #[error(
        "this join carries no access_token and the connection has no credential (its apikey is a \
         Supabase API key): give the client an access token before it subscribes"
    )]
    NoCredential,
}

impl AuthError {
    /// The code realtime-js shows before the message, as Supabase Realtime does.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Malformed => "MalformedJWT",
            AuthError::Signature => "JwtSignatureError",
            AuthError::Algorithm(_) | AuthError::UnknownKey(_) => "JwtSignerError",
            AuthError::BadSecret => "Unauthorized",
            _ => "InvalidJWTToken",
        }
    }
}

impl Identity {
    /// This identity, unless its token expired since it was verified.
    pub fn unexpired(&self) -> Result<Identity, AuthError> {
        if self.expires_at <= now() { Err(AuthError::ConnectionExpired) } else { Ok(self.clone()) }
    }

    /// When the token expires, on the monotonic clock timers run on; `None` if too far ahead to
    /// say (an `exp` beyond any clock).
    pub fn expiry(&self) -> Option<Instant> {
        let at = UNIX_EPOCH.checked_add(Duration::from_secs(self.expires_at))?;
        Instant::now().checked_add(at.duration_since(SystemTime::now()).unwrap_or_default())
    }
}

/// Supabase's API keys (`sb_publishable_…`, `sb_secret_…`): realtime-js sends them where a token
/// would go when it has none. They identify a project, not a user.
pub const SUPABASE_KEY_PREFIX: &str = "sb_";

/// The `iss` of the tokens the relay mints, accepted whatever issuers are configured.
pub const RELAY_ISSUER: &str = "campfire-relay";

pub fn is_supabase_key(token: &str) -> bool {
    token.starts_with(SUPABASE_KEY_PREFIX)
}

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Checks client JWTs: the signature (HS256 with the relay's secret; RS, PS, ES and EdDSA with
/// the key the JWKS publishes under the token's `kid`), then `exp`, `nbf`, `aud` and `iss`, then
/// the claims the relay needs.
pub struct Verifier {
    secret: DecodingKey,
    audiences: Vec<String>,
    /// Empty when `iss` is not checked.
    issuers: Vec<String>,
    jwks: Option<Jwks>,
}

impl Verifier {
    /// Reads the JWKS, if one is configured.
    pub async fn new(secret: &str, config: &TokenConfig) -> anyhow::Result<Verifier> {
        let jwks = match &config.jwks {
            Some(source) => Some(
                Jwks::load(
                    source.clone(),
                    Duration::from_secs(config.jwks_max_age_secs),
                    Duration::from_secs(config.jwks_cooldown_secs),
                )
                .await
                .map_err(|err| anyhow::anyhow!("reading the JWKS from {source}: {err}"))?,
            ),
            None => None,
        };
        let mut issuers = config.issuers.clone();
        if !issuers.is_empty() {
            issuers.push(RELAY_ISSUER.to_owned());
        }
        Ok(Verifier {
            secret: DecodingKey::from_secret(secret.as_bytes()),
            audiences: config.audiences.clone(),
            issuers,
            jwks,
        })
    }

    pub async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        let published;
        let key = match header.alg {
            Algorithm::HS256 => &self.secret,
            Algorithm::HS384 | Algorithm::HS512 => {
                return Err(AuthError::Algorithm(format!(
                    "{:?} is not accepted: tokens signed with a shared secret must use HS256",
                    header.alg
                )));
            }
            alg => {
                let Some(jwks) = &self.jwks else {
                    return Err(AuthError::Algorithm(format!(
                        "{alg:?} tokens are verified with the identity provider's JWKS, and none is configured"
                    )));
                };
                let kid = header
                    .kid
                    .as_deref()
                    .ok_or_else(|| AuthError::Algorithm(format!("a {alg:?} token must name its signing key (kid)")))?;
                published = jwks.key(kid, alg).await?;
                &published.key
            }
        };
        let data = jsonwebtoken::decode::<Value>(token, key, &self.validation(header.alg)).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidAudience => AuthError::Audience(self.audiences.join(", ")),
                ErrorKind::InvalidIssuer => AuthError::Issuer(self.issuers.join(", ")),
                ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => AuthError::Issuer(self.issuers.join(", ")),
                ErrorKind::MissingRequiredClaim(_) => AuthError::MissingClaims,
                ErrorKind::InvalidSignature
                | ErrorKind::InvalidAlgorithm
                | ErrorKind::InvalidEcdsaKey
                | ErrorKind::InvalidRsaKey(_)
                | ErrorKind::InvalidKeyFormat => AuthError::Signature,
                _ => AuthError::Malformed,
            }
        })?;
        identity(data.claims)
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut validation = Validation::new(alg);
        validation.leeway = 0;
        validation.validate_nbf = true;
        // Checked when the token carries `aud`: Supabase's anon and service keys and the relay's
        // own tokens have none.
        validation.set_audience(&self.audiences);
        if self.issuers.is_empty() {
            validation.set_required_spec_claims(&["exp"]);
        } else {
            validation.set_required_spec_claims(&["exp", "iss"]);
            validation.set_issuer(&self.issuers);
        }
        validation
    }
}

fn identity(claims: Value) -> Result<Identity, AuthError> {
    let role = claims.get("role").and_then(Value::as_str).ok_or(AuthError::MissingClaims)?;
    let expires_at = claims.get("exp").and_then(Value::as_f64).ok_or(AuthError::MissingClaims)? as u64;
    if role == "authenticated" && claims.get("sub").and_then(Value::as_str).is_none() {
        return Err(AuthError::MissingSub);
    }
    Ok(Identity { claims, expires_at })
}

/// Signs claims as they are (tests, the benchmark's agents).
pub fn sign(secret: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret))
        .expect("HS256 signing cannot fail")
}

/// A token for an identity the relay vouches for (a visitor's, from its session secret): its
/// claims until its expiry, issued by the relay.
pub fn mint(secret: &[u8], identity: &Identity) -> String {
    let mut claims = identity.claims.clone();
    claims["exp"] = json!(identity.expires_at);
    claims["iss"] = json!(RELAY_ISSUER);
    sign(secret, &claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "test-secret";

    async fn verifier(adjust: impl FnOnce(&mut TokenConfig)) -> Verifier {
        let mut config = TokenConfig::default();
        adjust(&mut config);
        Verifier::new(SECRET, &config).await.unwrap()
    }

    fn token(claims: Value) -> String {
        sign(SECRET.as_bytes(), &claims)
    }

    #[test]
    fn an_expiry_is_an_instant_unless_beyond_any_clock() {
        let identity = |expires_at| Identity { claims: json!({}), expires_at };
        let in_a_minute = identity(now() + 60).expiry().unwrap().duration_since(Instant::now());
        assert!(in_a_minute > Duration::from_secs(58) && in_a_minute <= Duration::from_secs(60), "{in_a_minute:?}");
        assert!(identity(now() - 5).expiry().unwrap() <= Instant::now(), "an expired token is due at once");
        assert_eq!(identity(u64::MAX).expiry(), None);
    }

    #[tokio::test]
    async fn accepts_a_valid_token_and_refuses_each_bad_one_with_its_reason() {
        let v = verifier(|_| {}).await;
        let good = token(json!({"role": "authenticated", "sub": "u1", "exp": now() + 60}));
        assert_eq!(v.verify(&good).await.unwrap().claims["sub"], "u1");
        let expired = token(json!({"role": "authenticated", "sub": "u1", "exp": now() - 10}));
        assert_eq!(v.verify(&expired).await.unwrap_err(), AuthError::Expired);
        let no_role = token(json!({"exp": now() + 60}));
        assert_eq!(v.verify(&no_role).await.unwrap_err(), AuthError::MissingClaims);
        let no_exp = token(json!({"role": "anon"}));
        assert_eq!(v.verify(&no_exp).await.unwrap_err(), AuthError::MissingClaims);
        let no_sub = token(json!({"role": "authenticated", "exp": now() + 60}));
        assert_eq!(v.verify(&no_sub).await.unwrap_err(), AuthError::MissingSub);
        let forged = sign(b"other", &json!({"role": "service_role", "exp": now() + 60}));
        assert_eq!(v.verify(&forged).await.unwrap_err(), AuthError::Signature);
        assert_eq!(v.verify("garbage").await.unwrap_err(), AuthError::Malformed);
        let later = token(json!({"role": "authenticated", "sub": "u1", "exp": now() + 7200, "nbf": now() + 3600}));
        assert_eq!(v.verify(&later).await.unwrap_err(), AuthError::NotYetValid);
        let started = token(json!({"role": "authenticated", "sub": "u1", "exp": now() + 60, "nbf": now() - 1}));
        assert!(v.verify(&started).await.is_ok());
    }

    #[tokio::test]
    async fn audiences_are_checked_when_the_token_names_some() {
        let v = verifier(|_| {}).await;
        let claims = |aud: Value| token(json!({"role": "authenticated", "sub": "u1", "exp": now() + 60, "aud": aud}));
        assert!(v.verify(&claims(json!("authenticated"))).await.is_ok(), "what Supabase Auth issues");
        assert!(v.verify(&claims(json!(["other", "authenticated"]))).await.is_ok());
        assert_eq!(
            v.verify(&claims(json!("billing-api"))).await.unwrap_err(),
            AuthError::Audience("authenticated".into())
        );
        let anon_key = token(json!({"iss": "supabase", "role": "anon", "exp": now() + 60}));
        assert!(v.verify(&anon_key).await.is_ok(), "Supabase's anon key carries no aud");

        let v = verifier(|c| c.audiences = vec!["campfire".into(), "dashboard".into()]).await;
        assert!(v.verify(&claims(json!("dashboard"))).await.is_ok());
        let refused = v.verify(&claims(json!("authenticated"))).await.unwrap_err();
        assert_eq!(refused.to_string(), "Token audience (aud) is not accepted here; accepted: campfire, dashboard");
    }

    #[tokio::test]
    async fn issuers_when_configured_are_required_except_on_the_relays_own_tokens() {
        let issuer = "https://project.supabase.co/auth/v1";
        let v = verifier(|c| c.issuers = vec![issuer.into()]).await;
        let claims = |iss: Option<&str>| {
            let mut claims = json!({"role": "authenticated", "sub": "u1", "exp": now() + 60});
            if let Some(iss) = iss {
                claims["iss"] = json!(iss);
            }
            token(claims)
        };
        assert!(v.verify(&claims(Some(issuer))).await.is_ok());
        let expected = AuthError::Issuer(format!("{issuer}, {RELAY_ISSUER}"));
        assert_eq!(v.verify(&claims(Some("https://evil.example"))).await.unwrap_err(), expected);
        assert_eq!(v.verify(&claims(None)).await.unwrap_err(), expected);
        let visitor = Identity { claims: json!({"role": "visitor", "widget_session_id": "s"}), expires_at: now() + 60 };
        assert!(v.verify(&mint(SECRET.as_bytes(), &visitor)).await.is_ok());
    }

    #[tokio::test]
    async fn algorithms_other_than_hs256_need_a_jwks() {
        let v = verifier(|_| {}).await;
        let claims = json!({"role": "authenticated", "sub": "u1", "exp": now() + 60});
        let hs512 =
            jsonwebtoken::encode(&Header::new(Algorithm::HS512), &claims, &EncodingKey::from_secret(SECRET.as_bytes()))
                .unwrap();
        let refused = v.verify(&hs512).await.unwrap_err();
        assert_eq!(refused.code(), "JwtSignerError");
        assert!(refused.to_string().contains("must use HS256"), "{refused}");
        // An RS256 header over anything: refused before any signature work.
        let rs256 = format!("{}.e30.c2ln", base64_url(r#"{"alg":"RS256","kid":"k1"}"#));
        let refused = v.verify(&rs256).await.unwrap_err();
        assert!(refused.to_string().contains("none is configured"), "{refused}");
        let none = format!("{}.e30.", base64_url(r#"{"alg":"none"}"#));
        assert_eq!(v.verify(&none).await.unwrap_err(), AuthError::Malformed);
    }

    fn base64_url(text: &str) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
    }
}
