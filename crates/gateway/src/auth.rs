//! Who may use the edge: API keys (the gateway keeps only their SHA-256)
//! and JWTs (HS256 or RS256, with expiry, not-before and audience checked).
//! A credential may be limited to conversation keys with a prefix, and to
//! watching only.
//!
//! A request carries its credential as `Authorization: Bearer <credential>`
//! or, where a browser cannot set headers on a WebSocket, as the query
//! parameter `access_token`. A credential with two dots is read as a JWT,
//! anything else as an API key.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// An authenticated client: what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// The API key's name, or `jwt:<sub>`: the unit of rate limits and
    /// connection limits, and what the logs name.
    pub name: String,
    /// Conversation keys this credential may use start with this (empty:
    /// any).
    pub prefix: String,
    /// The credential may watch conversations but not send messages.
    pub watch_only: bool,
}

impl Credential {
    /// May this credential watch conversation `key`?
    pub fn may_watch(&self, key: &str) -> Result<(), String> {
        if key.starts_with(&self.prefix) {
            Ok(())
        } else {
            Err(format!(
                "credential {:?} may use only conversations whose key starts with {:?}",
                self.name, self.prefix
            ))
        }
    }

    /// May this credential send a message to conversation `key`?
    pub fn may_send(&self, key: &str) -> Result<(), String> {
        if self.watch_only {
            return Err(format!("credential {:?} may only watch", self.name));
        }
        self.may_watch(key)
    }
}

/// An API key as configured: its name, the SHA-256 of the key (hex), and
/// what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// Names the credential in limits and logs.
    pub name: String,
    /// SHA-256 of the key, 64 hex digits (`rumor key` prints it for a new key).
    pub sha256: String,
    /// See [`Credential::prefix`].
    pub prefix: String,
    /// See [`Credential::watch_only`].
    pub watch_only: bool,
}

/// How JWTs are checked.
#[derive(Clone, Default)]
pub struct JwtConfig {
    /// The HS256 shared secret, if HS256 tokens are accepted.
    pub hs256_secret: Option<Vec<u8>>,
    /// The RS256 public key (PEM), if RS256 tokens are accepted.
    pub rs256_public_pem: Option<String>,
    /// The audience a token must name (`aud`).
    pub audience: String,
    /// The issuer a token must name (`iss`), if set.
    pub issuer: Option<String>,
}

impl fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtConfig")
            .field("hs256", &self.hs256_secret.is_some())
            .field("rs256", &self.rs256_public_pem.is_some())
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .finish()
    }
}

/// Why an auth setup is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthConfigError {
    /// An API key's hash is not 64 hex digits.
    #[error("api key {name:?}: sha256 must be 64 hex digits (`rumor key` prints one)")]
    BadHash {
        /// The key's name.
        name: String,
    },
    /// Two keys with the same hash or name.
    #[error("api key {0:?} is configured twice")]
    Duplicate(String),
    /// A JWT key does not parse.
    #[error("jwt key: {0}")]
    BadPem(String),
    /// JWTs configured without an audience or a key.
    #[error("jwt: {0}")]
    Jwt(&'static str),
}

/// Why a request was not authenticated; answered 401, or a WebSocket close
/// 1008 with this text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credential.
    #[error("unauthenticated: no credential (send `Authorization: Bearer <key or JWT>` or `?access_token=`)")]
    Missing,
    /// A credential that is not a known key, or a JWT that fails a check.
    #[error("unauthenticated: {0}")]
    Refused(String),
}

/// The edge's credentials. Cheap to clone.
#[derive(Clone, Default)]
pub struct Auth {
    keys: Arc<HashMap<[u8; 32], Arc<Credential>>>,
    jwt: Option<Arc<Jwt>>,
    anonymous: bool,
}

struct Jwt {
    keys: Vec<(Algorithm, DecodingKey)>,
    validation: Validation,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("api_keys", &self.keys.len())
            .field("jwt", &self.jwt.is_some())
            .field("anonymous", &self.anonymous)
            .finish()
    }
}

/// The claims rumor reads from a JWT besides the registered ones.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    rumor_prefix: String,
    #[serde(default)]
    rumor_watch_only: bool,
}

/// A new API key: `rk_` and 32 random bytes, base64url.
pub fn new_api_key() -> String {
    use base64::Engine as _;
    let bytes: [u8; 32] = rand::random();
    format!("rk_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// The SHA-256 of an API key, hex: what the config holds.
pub fn key_hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

impl Auth {
    /// Credentials from API keys and an optional JWT setup.
    pub fn new(keys: &[ApiKey], jwt: Option<&JwtConfig>) -> Result<Self, AuthConfigError> {
        let mut map = HashMap::new();
        let mut names = std::collections::HashSet::new();
        for k in keys {
            let mut hash = [0u8; 32];
            hex::decode_to_slice(k.sha256.trim(), &mut hash)
                .map_err(|_| AuthConfigError::BadHash { name: k.name.clone() })?;
            if !names.insert(k.name.clone()) {
                return Err(AuthConfigError::Duplicate(k.name.clone()));
            }
            let cred = Credential {
                name: k.name.clone(),
                prefix: k.prefix.clone(),
                watch_only: k.watch_only,
            };
            if map.insert(hash, Arc::new(cred)).is_some() {
                return Err(AuthConfigError::Duplicate(k.name.clone()));
            }
        }
        let jwt = jwt.map(Jwt::new).transpose()?.map(Arc::new);
        Ok(Self {
            keys: Arc::new(map),
            jwt,
            anonymous: false,
        })
    }

    /// No credential needed: every request is the credential `anonymous`,
    /// with no prefix. Only `rumor up` on loopback runs so.
    pub fn anonymous() -> Self {
        Self {
            anonymous: true,
            ..Self::default()
        }
    }

    /// True when requests need no credential.
    pub fn is_anonymous(&self) -> bool {
        self.anonymous
    }

    /// True when no credential can ever be accepted (nothing configured and
    /// not anonymous): an edge that refuses everyone.
    pub fn is_closed(&self) -> bool {
        !self.anonymous && self.keys.is_empty() && self.jwt.is_none()
    }

    /// The credential `token` stands for.
    pub fn authenticate(&self, token: Option<&str>) -> Result<Arc<Credential>, AuthError> {
        let Some(token) = token.map(str::trim).filter(|t| !t.is_empty()) else {
            if self.anonymous {
                return Ok(anonymous_credential());
            }
            return Err(AuthError::Missing);
        };
        if token.bytes().filter(|&b| b == b'.').count() == 2 {
            let Some(jwt) = &self.jwt else {
                return Err(AuthError::Refused("JWTs are not accepted by this gateway".into()));
            };
            return jwt.check(token).map(Arc::new);
        }
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        match self.keys.get(&hash) {
            Some(c) => Ok(c.clone()),
            None if self.anonymous => Ok(anonymous_credential()),
            None => Err(AuthError::Refused("unknown API key".into())),
        }
    }
}

fn anonymous_credential() -> Arc<Credential> {
    Arc::new(Credential {
        name: "anonymous".into(),
        prefix: String::new(),
        watch_only: false,
    })
}

impl Jwt {
    fn new(c: &JwtConfig) -> Result<Self, AuthConfigError> {
        if c.audience.is_empty() {
            return Err(AuthConfigError::Jwt("an audience is required"));
        }
        let mut keys = Vec::new();
        if let Some(secret) = &c.hs256_secret {
            if secret.len() < 32 {
                return Err(AuthConfigError::Jwt("the HS256 secret must be at least 32 bytes"));
            }
            let key = DecodingKey::from_secret(secret).map_err(|e| AuthConfigError::BadPem(e.to_string()))?;
            keys.push((Algorithm::HS256, key));
        }
        if let Some(pem) = &c.rs256_public_pem {
            let key = DecodingKey::from_rsa_pem(pem.as_bytes()).map_err(|e| AuthConfigError::BadPem(e.to_string()))?;
            keys.push((Algorithm::RS256, key));
        }
        if keys.is_empty() {
            return Err(AuthConfigError::Jwt("set an HS256 secret or an RS256 public key"));
        }
        // One validation per key: the library refuses a key whose family
        // differs from any algorithm the validation lists.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[&c.audience]);
        if let Some(iss) = &c.issuer {
            validation.set_issuer(&[iss]);
        }
        validation.set_required_spec_claims(&["exp", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = 30;
        Ok(Self { keys, validation })
    }

    fn check(&self, token: &str) -> Result<Credential, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| AuthError::Refused(format!("JWT: {e}")))?;
        let Some((_, key)) = self.keys.iter().find(|(a, _)| *a == header.alg) else {
            return Err(AuthError::Refused(format!(
                "JWT: algorithm {:?} is not accepted here",
                header.alg
            )));
        };
        let mut validation = self.validation.clone();
        validation.algorithms = vec![header.alg];
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation)
            .map_err(|e| AuthError::Refused(format!("JWT: {e}")))?;
        let c = data.claims;
        Ok(Credential {
            name: format!("jwt:{}", c.sub),
            prefix: c.rumor_prefix,
            watch_only: c.rumor_watch_only,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_api_key_is_known_by_its_hash_and_carries_its_limits() {
        let auth = Auth::new(
            &[ApiKey {
                name: "app".into(),
                sha256: key_hash("s3cret"),
                prefix: "app/".into(),
                watch_only: false,
            }],
            None,
        )
        .unwrap();
        let c = auth.authenticate(Some("s3cret")).unwrap();
        assert_eq!(c.name, "app");
        assert!(c.may_send("app/1").is_ok());
        assert!(c.may_send("other/1").is_err());
        assert_eq!(auth.authenticate(None), Err(AuthError::Missing));
        assert!(matches!(auth.authenticate(Some("wrong")), Err(AuthError::Refused(_))));
        assert!(matches!(auth.authenticate(Some("a.b.c")), Err(AuthError::Refused(_))));
    }

    #[test]
    fn a_bad_hash_is_refused_at_start() {
        let bad = ApiKey {
            name: "x".into(),
            sha256: "abc".into(),
            prefix: String::new(),
            watch_only: false,
        };
        assert!(matches!(Auth::new(&[bad], None), Err(AuthConfigError::BadHash { .. })));
    }
}
