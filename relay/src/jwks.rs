//! The signing keys an identity provider publishes as a JWKS (RFC 7517), from a URL or a file.
//! Read at start; read again when a token names a key id not in the copy (a key rotated in) and
//! when the copy is older than its maximum age (a key rotated out stops verifying), never more
//! than once per cooldown, so that a flood of made-up key ids cannot hammer the provider. A read
//! that fails keeps the previous keys.

use crate::auth::AuthError;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// A JWKS larger than this is refused (real ones hold a few keys, a few kB).
const MAX_JWKS_BYTES: usize = 1 << 20;
/// How long one read of a JWKS URL may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the JWKS comes from.
#[derive(Debug, Clone)]
pub enum JwksSource {
    Url(reqwest::Url),
    File(std::path::PathBuf),
}

impl JwksSource {
    /// `http://…` or `https://…` is a URL; anything else a file path.
    pub fn parse(text: &str) -> Result<JwksSource, String> {
        if text.starts_with("http://") || text.starts_with("https://") {
            reqwest::Url::parse(text).map(JwksSource::Url).map_err(|e| format!("not a valid URL: {e}"))
        } else if text.is_empty() {
            Err("give an http(s) URL or a file path".into())
        } else {
            Ok(JwksSource::File(text.into()))
        }
    }
}

/// Shown in logs and errors: a URL without its user info and query, which may hold credentials.
impl fmt::Display for JwksSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwksSource::Url(url) => {
                write!(f, "{}://{}", url.scheme(), url.host_str().unwrap_or_default())?;
                if let Some(port) = url.port() {
                    write!(f, ":{port}")?;
                }
                f.write_str(url.path())
            }
            JwksSource::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// One published key and the algorithms it may verify.
pub struct SigningKey {
    pub key: DecodingKey,
    algorithms: Vec<Algorithm>,
}

type Keys = HashMap<String, Arc<SigningKey>>;

struct Snapshot {
    keys: Keys,
    read_at: Instant,
}

pub struct Jwks {
    source: JwksSource,
    http: reqwest::Client,
    max_age: Duration,
    cooldown: Duration,
    copy: RwLock<Snapshot>,
    /// When the last read started; held during a read, so that reads happen one at a time and
    /// tokens waiting for one see its result.
    last_read: tokio::sync::Mutex<Instant>,
}

impl Jwks {
    /// Reads the JWKS once; the relay does not start without it.
    pub async fn load(source: JwksSource, max_age: Duration, cooldown: Duration) -> Result<Jwks, String> {
        if matches!(&source, JwksSource::Url(url) if url.scheme() == "http") {
            tracing::warn!(%source, "the JWKS is read over plain http: anyone on the path can substitute keys");
        }
        let http = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .user_agent(concat!("campfire-relay/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| e.to_string())?;
        let started = Instant::now();
        let keys = read(&http, &source).await?;
        Ok(Jwks {
            source,
            http,
            max_age,
            cooldown,
            copy: RwLock::new(Snapshot { keys, read_at: started }),
            last_read: tokio::sync::Mutex::new(started),
        })
    }

    /// The key `kid` names, if it may verify `alg`.
    pub async fn key(&self, kid: &str, alg: Algorithm) -> Result<Arc<SigningKey>, AuthError> {
        let (known, fresh) = self.lookup(kid);
        let key = match known {
            Some(key) if fresh => key,
            _ => {
                self.refresh().await;
                self.lookup(kid).0.ok_or_else(|| AuthError::UnknownKey(kid.to_owned()))?
            }
        };
        if !key.algorithms.contains(&alg) {
            return Err(AuthError::Algorithm(format!(
                "key `{kid}` verifies {}, not {alg:?}",
                key.algorithms.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>().join(", ")
            )));
        }
        Ok(key)
    }

    /// The key by that id, and whether the copy is younger than its maximum age.
    fn lookup(&self, kid: &str) -> (Option<Arc<SigningKey>>, bool) {
        let copy = self.copy.read().expect("jwks lock");
        (copy.keys.get(kid).cloned(), copy.read_at.elapsed() < self.max_age)
    }

    /// Reads the source again unless a read started less than a cooldown ago.
    async fn refresh(&self) {
        let mut last_read = self.last_read.lock().await;
        if last_read.elapsed() < self.cooldown {
            return;
        }
        *last_read = Instant::now();
        match read(&self.http, &self.source).await {
            Ok(keys) => *self.copy.write().expect("jwks lock") = Snapshot { keys, read_at: *last_read },
            Err(err) => {
                tracing::warn!(source = %self.source, %err, "reading the JWKS failed; keeping the keys read before")
            }
        }
    }
}

async fn read(http: &reqwest::Client, source: &JwksSource) -> Result<Keys, String> {
    let body = match source {
        JwksSource::Url(url) => fetch(http, url).await?,
        JwksSource::File(path) => tokio::fs::read(path).await.map_err(|e| e.to_string())?,
    };
    if body.len() > MAX_JWKS_BYTES {
        return Err(format!("larger than {MAX_JWKS_BYTES} bytes"));
    }
    let keys = parse(&body)?;
    let mut kids: Vec<&str> = keys.keys().map(String::as_str).collect();
    kids.sort_unstable();
    tracing::info!(%source, kids = ?kids, "JWKS read");
    Ok(keys)
}

async fn fetch(http: &reqwest::Client, url: &reqwest::Url) -> Result<Vec<u8>, String> {
    // Errors without the URL: it is logged once, safely, by the caller.
    let mut response = http.get(url.clone()).send().await.map_err(|e| e.without_url().to_string())?;
    if !response.status().is_success() {
        return Err(format!("HTTP status {}", response.status()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.without_url().to_string())? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_JWKS_BYTES {
            return Err(format!("larger than {MAX_JWKS_BYTES} bytes"));
        }
    }
    Ok(body)
}

/// The usable signing keys of a JWKS document. Keys this relay cannot or must not use (for
/// encryption, shared secrets, unknown types or curves, no `kid`) are skipped, each with a reason.
fn parse(body: &[u8]) -> Result<Keys, String> {
    #[derive(serde::Deserialize)]
    struct Document {
        keys: Vec<serde_json::Value>,
    }
    let document: Document =
        serde_json::from_slice(body).map_err(|e| format!("not a JWKS (a JSON object with \"keys\"): {e}"))?;
    let mut keys = Keys::new();
    for value in document.keys {
        let key = serde_json::from_value::<Jwk>(value)
            .map_err(|e| format!("unreadable key: {e}"))
            .and_then(|jwk| signing_key(&jwk));
        match key {
            Ok((kid, key)) => {
                keys.insert(kid, Arc::new(key));
            }
            Err(reason) => tracing::info!(%reason, "JWKS key skipped"),
        }
    }
    Ok(keys)
}

fn signing_key(jwk: &Jwk) -> Result<(String, SigningKey), String> {
    let kid = jwk.common.key_id.clone().ok_or("a key without kid cannot be chosen by a token")?;
    if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
        return Err(format!("key `{kid}` is for encryption (use: enc)"));
    }
    use Algorithm::*;
    let suited = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => vec![RS256, RS384, RS512, PS256, PS384, PS512],
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => vec![ES256],
            EllipticCurve::P384 => vec![ES384],
            ref other => return Err(format!("key `{kid}`: curve {other:?} is not supported")),
        },
        AlgorithmParameters::OctetKeyPair(okp) => match okp.curve {
            EllipticCurve::Ed25519 => vec![EdDSA],
            ref other => return Err(format!("key `{kid}`: curve {other:?} is not supported")),
        },
        AlgorithmParameters::OctetKey(_) => {
            return Err(format!(
                "key `{kid}` is a shared secret (kty oct): HS256 tokens are verified with the relay's secret"
            ));
        }
    };
    // A key that names its algorithm verifies that one only.
    let algorithms = match &jwk.common.key_algorithm {
        None => suited,
        Some(declared) => match Algorithm::from_str(&declared.to_string()) {
            Ok(alg) if suited.contains(&alg) => vec![alg],
            _ => return Err(format!("key `{kid}`: algorithm {declared} is not a signature algorithm of its key type")),
        },
    };
    let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("key `{kid}`: {e}"))?;
    Ok((kid, SigningKey { key, algorithms }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const EC_X: &str = "oI50V9hz9h--rFZ3PMWBtOE9uP_5yixuxVcHzM2gaRc";
    const EC_Y: &str = "b7sHVmmM-XVWtX1XgncacOSB58yVWoQYN20K4GhQzIg";
    const ED_X: &str = "P4os1PUAi21xbrMqKDKU5da5nXHFu3wkp2ZJl8nP4Fo";

    #[test]
    fn keeps_signing_keys_and_says_why_it_skips_the_others() {
        let document = json!({ "keys": [
            { "kid": "ec", "kty": "EC", "crv": "P-256", "use": "sig", "x": EC_X, "y": EC_Y },
            { "kid": "ed", "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "x": ED_X },
            { "kid": "enc", "kty": "EC", "crv": "P-256", "use": "enc", "x": EC_X, "y": EC_Y },
            { "kid": "secret", "kty": "oct", "k": "c2VjcmV0" },
            { "kty": "OKP", "crv": "Ed25519", "x": ED_X },
            { "kid": "x25519", "kty": "OKP", "crv": "X25519", "x": ED_X },
            { "kid": "wrong-alg", "kty": "OKP", "crv": "Ed25519", "alg": "ES256", "x": ED_X },
            "not even an object"
        ]});
        let keys = parse(document.to_string().as_bytes()).unwrap();
        let mut kids: Vec<&String> = keys.keys().collect();
        kids.sort();
        assert_eq!(kids, ["ec", "ed"]);
        assert_eq!(keys["ec"].algorithms, [Algorithm::ES256]);
        assert_eq!(keys["ed"].algorithms, [Algorithm::EdDSA]);
        assert!(matches!(parse(b"[]"), Err(e) if e.starts_with("not a JWKS")));
        assert!(parse(br#"{"keys": []}"#).unwrap().is_empty(), "a provider that publishes no key yet is valid");
    }

    #[test]
    fn sources_are_urls_or_files_and_never_shown_with_credentials() {
        let url = JwksSource::parse("https://user:pass@idp.example:8443/jwks.json?token=t").unwrap();
        assert_eq!(url.to_string(), "https://idp.example:8443/jwks.json");
        assert!(matches!(JwksSource::parse("/etc/campfire/jwks.json").unwrap(), JwksSource::File(_)));
        assert!(JwksSource::parse("https://").is_err());
        assert!(JwksSource::parse("").is_err());
    }
}
