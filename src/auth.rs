//! Authentication and authorization, all in one place: who a caller is (a bearer JWT checked by
//! a tower layer before any handler runs), what a caller may act as ([`act_as`], the one rule),
//! and which download URLs are genuine (expiring HMAC-SHA256 signatures).
//!
//! Authentication is off unless `--auth` is given; then every `/streaming.v1.StreamingService/`
//! call needs `authorization: Bearer <JWT>` and plain-HTTP downloads need a signed URL. Health,
//! reflection and `GET /metrics` stay open. This module must never log a token or a secret,
//! never trust a token's own claim about which algorithm or key checks it (the server's key list
//! decides), and never panic on anything a client sends.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::secret::Secret;
use hmac::{Hmac, Mac};
use http::{HeaderMap, Request, Response, header::AUTHORIZATION};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tonic::Status;
use tonic::body::Body;
use uuid::Uuid;

/// The service's path prefix: only these calls need a token.
const SERVICE_PREFIX: &str = "/streaming.v1.StreamingService/";
/// Seconds of clock skew forgiven when checking `exp` (and `nbf`): a token is still accepted
/// this long after it expired.
pub const LEEWAY_SECS: u64 = 30;
/// Shortest HS256 or URL-signing secret accepted, in bytes: a shorter one can be guessed offline
/// from a single token.
pub const MIN_SECRET_BYTES: usize = 32;
/// Longest token lifetime (`exp - iat`) accepted unless `--auth-max-token-ttl-secs` says
/// otherwise: a day. `streamhub token` warns past it.
pub const DEFAULT_MAX_TOKEN_TTL_SECS: u64 = 86_400;
/// Shortest RSA modulus accepted, in bits.
const MIN_RSA_BITS: usize = 2048;
/// Domain separation for the URL-signing key derived from the HS256 secret, so that a download
/// signature can never be replayed as (part of) a token signature or the other way round.
const URL_KEY_CONTEXT: &[u8] = b"streamhub/download-url-signing/v1";
/// What a download signature covers, before the file id and expiry.
const URL_MAC_CONTEXT: &[u8] = b"streamhub download v1\n";

type HmacSha256 = Hmac<Sha256>;

/// What a token lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// An end user: may act only as its own `sub`.
    User,
    /// A trusted backend: may act for any user (publish events and notifications for anyone,
    /// read any stream).
    Service,
}

impl Role {
    fn parse(name: &str) -> Option<Role> {
        match name {
            "user" => Some(Role::User),
            "service" => Some(Role::Service),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Service => "service",
        }
    }
}

/// The authenticated caller, put in the request's extensions by [`AuthLayer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user id the token was issued to (`sub`).
    pub sub: String,
    pub role: Role,
    /// What the token opens beyond the user's own streams.
    pub grants: Grants,
}

impl Identity {
    /// A user token with no grants.
    pub fn user(sub: &str) -> Identity {
        Identity {
            sub: sub.to_string(),
            role: Role::User,
            grants: Grants::default(),
        }
    }

    /// A service token.
    pub fn service(sub: &str) -> Identity {
        Identity {
            sub: sub.to_string(),
            role: Role::Service,
            grants: Grants::default(),
        }
    }

    /// The user that per-user limits count against: the `sub` of a user token. Services count
    /// only against the global limits.
    pub fn limited_user(&self) -> Option<&str> {
        (self.role == Role::User).then_some(self.sub.as_str())
    }
}

/// The per-user limit holder of a caller: `None` with auth off or for a service token.
pub fn limited_user(identity: Option<&Identity>) -> Option<std::sync::Arc<str>> {
    identity
        .and_then(Identity::limited_user)
        .map(std::sync::Arc::from)
}

/// What a token's optional claims open: chat rooms (`rooms`), collaboration documents
/// (`documents`) and metrics (`metrics`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// Patterns of the `rooms` claim; empty when the claim is absent.
    pub rooms: Vec<String>,
    /// Patterns of the `documents` claim.
    pub documents: Vec<String>,
    /// The `metrics` claim.
    pub metrics: Option<MetricsAccess>,
}

/// What the `metrics` claim allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MetricsAccess {
    /// QueryMetrics.
    Read,
    /// CollectMetrics and QueryMetrics.
    Write,
}

impl MetricsAccess {
    pub fn as_str(self) -> &'static str {
        match self {
            MetricsAccess::Read => "read",
            MetricsAccess::Write => "write",
        }
    }
}

/// The two kinds of shared spaces that per-object access guards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    /// Chat rooms: the `rooms` claim and `--public-rooms`.
    Room,
    /// Collaboration documents: the `documents` claim and `--public-documents`.
    Document,
}

impl Space {
    fn noun(self) -> &'static str {
        match self {
            Space::Room => "room",
            Space::Document => "document",
        }
    }
}

/// Whether `pattern` matches `id`: a pattern ending in `*` matches every id that starts with
/// the text before it (`*` alone matches all); any other pattern matches exactly, byte for byte.
pub fn pattern_matches(pattern: &str, id: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => id.as_bytes().starts_with(prefix.as_bytes()),
        None => pattern == id,
    }
}

/// The user list of an id's `#` boundary (`dm#alice,bob` → `alice,bob`), if it has one.
fn user_boundary(id: &str) -> Option<&str> {
    id.rsplit_once('#').map(|(_, users)| users)
}

/// The per-object rule for rooms and documents. With auth off (`None`) and for services,
/// anything goes. A user reaches `id` when (1) the id's `#` boundary lists the user, (2) one of
/// the token's patterns for the space matches it, or (3) one of the server's public patterns
/// matches it and the id has no `#` boundary. Otherwise PERMISSION_DENIED, which callers
/// return before anything is stored.
pub fn may_enter(
    identity: Option<&Identity>,
    space: Space,
    id: &str,
    public: &[String],
) -> Result<()> {
    let Some(identity) = identity else {
        return Ok(());
    };
    if identity.role == Role::Service {
        return Ok(());
    }
    let boundary = user_boundary(id);
    let listed = boundary.is_some_and(|users| users.split(',').any(|u| u == identity.sub));
    let claims = match space {
        Space::Room => &identity.grants.rooms,
        Space::Document => &identity.grants.documents,
    };
    let granted = claims.iter().any(|p| pattern_matches(p, id));
    let open = boundary.is_none() && public.iter().any(|p| pattern_matches(p, id));
    if listed || granted || open {
        return Ok(());
    }
    Err(Error::PermissionDenied(format!(
        "user {:?} may not use {} {id:?}",
        identity.sub,
        space.noun()
    )))
}

/// CollectMetrics (`write`) and QueryMetrics (`read`): a service token, or a user token whose
/// `metrics` claim allows it (`write` includes `read`). With auth off, anyone.
pub fn may_use_metrics(identity: Option<&Identity>, wanted: MetricsAccess) -> Result<()> {
    let Some(identity) = identity else {
        return Ok(());
    };
    let allowed = match (identity.role, identity.grants.metrics, wanted) {
        (Role::Service, _, _) => true,
        (Role::User, Some(MetricsAccess::Write), _) => true,
        (Role::User, Some(MetricsAccess::Read), MetricsAccess::Read) => true,
        (Role::User, _, _) => false,
    };
    if allowed {
        return Ok(());
    }
    Err(Error::PermissionDenied(format!(
        "{} metrics needs a service token or a metrics claim of \"{}\"",
        match wanted {
            MetricsAccess::Read => "querying",
            MetricsAccess::Write => "collecting",
        },
        match wanted {
            MetricsAccess::Read => "read\" or \"write",
            MetricsAccess::Write => "write",
        }
    )))
}

/// The caller of a request, or `None` when authentication is off.
pub fn identity_of<T>(request: &tonic::Request<T>) -> Option<Identity> {
    request.extensions().get::<Identity>().cloned()
}

/// The one authorization rule. With auth off (`None`) anything goes. A `service` may act for
/// any user. A `user` may act only as itself: an empty `user_id` becomes its `sub`, any other
/// gets PERMISSION_DENIED. (An empty `user_id` from a service also becomes the service's `sub`.)
pub fn act_as(identity: Option<&Identity>, user_id: &mut String) -> Result<()> {
    let Some(identity) = identity else {
        return Ok(());
    };
    if user_id.is_empty() {
        user_id.clone_from(&identity.sub);
        return Ok(());
    }
    match identity.role {
        Role::Service => Ok(()),
        Role::User if *user_id == identity.sub => Ok(()),
        Role::User => Err(Error::PermissionDenied(format!(
            "a user token for {:?} cannot act as user {user_id:?}",
            identity.sub
        ))),
    }
}

/// Unwraps a unary request after applying [`act_as`] to the field that names the user.
pub fn authorize<T>(
    request: tonic::Request<T>,
    user_id: impl FnOnce(&mut T) -> &mut String,
) -> Result<T> {
    let identity = identity_of(&request);
    let mut message = request.into_inner();
    act_as(identity.as_ref(), user_id(&mut message))?;
    Ok(message)
}

/// The claims `streamhub token` writes.
#[derive(Debug, Serialize)]
struct MintedClaims<'a> {
    sub: &'a str,
    role: &'static str,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rooms: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    documents: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics: Option<&'static str>,
}

/// A claim that must be a JSON array of strings when present; any other shape (a string, an
/// object, null, an array holding a number) refuses the token rather than being read as "no
/// grant", so that an identity provider's mistake is loud.
fn string_list(
    claims: &serde_json::Map<String, serde_json::Value>,
    name: &str,
) -> Result<Vec<String>, String> {
    let Some(value) = claims.get(name) else {
        return Ok(Vec::new());
    };
    let shape_error = || format!("token claim {name} must be a JSON array of strings");
    value
        .as_array()
        .ok_or_else(shape_error)?
        .iter()
        .map(|item| item.as_str().map(str::to_string).ok_or_else(shape_error))
        .collect()
}

/// Reads the optional claims of a checked token into an identity.
fn identity_from_claims(
    claims: &serde_json::Map<String, serde_json::Value>,
) -> Result<Identity, String> {
    let sub = match claims.get("sub") {
        Some(serde_json::Value::String(sub)) if !sub.is_empty() => sub.clone(),
        Some(serde_json::Value::String(_)) => {
            return Err("token has an empty sub claim".to_string());
        }
        Some(_) => return Err("token claim sub is malformed".to_string()),
        None => return Err("token has no sub claim".to_string()),
    };
    let role = match claims.get("role") {
        // Missing means `user`: the least a token can be.
        None => Role::User,
        Some(serde_json::Value::String(name)) => Role::parse(name).ok_or_else(|| {
            format!("token role {name:?} is unknown; it must be \"user\" or \"service\"")
        })?,
        Some(_) => return Err("token claim role must be a string".to_string()),
    };
    let metrics = match claims.get("metrics") {
        None => None,
        Some(serde_json::Value::String(name)) if name == "read" => Some(MetricsAccess::Read),
        Some(serde_json::Value::String(name)) if name == "write" => Some(MetricsAccess::Write),
        Some(_) => {
            return Err("token claim metrics must be \"read\" or \"write\"".to_string());
        }
    };
    Ok(Identity {
        sub,
        role,
        grants: Grants {
            rooms: string_list(claims, "rooms")?,
            documents: string_list(claims, "documents")?,
            metrics,
        },
    })
}

/// Checks bearer tokens against the configured keys. Cheap to share behind an `Arc`.
pub struct Verifier {
    /// One key per accepted algorithm; a token's `alg` picks its key, and an `alg` without a
    /// key (`none`, or HS256 when only a public key is set) is refused.
    keys: Vec<(Algorithm, DecodingKey)>,
    audience: Option<String>,
    /// Set, a token's `iss` must equal it.
    issuer: Option<String>,
    /// Longest `exp - iat` accepted; a token without `iat` is refused.
    max_token_ttl: Duration,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field(
                "algorithms",
                &self.keys.iter().map(|(alg, _)| alg).collect::<Vec<_>>(),
            )
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .field("max_token_ttl", &self.max_token_ttl)
            .finish()
    }
}

/// Reads the HS256 secret from the flag or its file. `None` when neither is given.
pub fn load_hs256_secret(secret: Option<&Secret>, file: Option<&Path>) -> Result<Option<Vec<u8>>> {
    let bytes = match (secret, file) {
        (Some(secret), _) => secret.expose().as_bytes().to_vec(),
        (None, Some(path)) => {
            let text = std::fs::read(path).map_err(|e| {
                Error::invalid(format!(
                    "cannot read --auth-hs256-secret-file {}: {e}",
                    path.display()
                ))
            })?;
            text.trim_ascii().to_vec()
        }
        (None, None) => return Ok(None),
    };
    check_secret_length("the HS256 secret", &bytes)?;
    Ok(Some(bytes))
}

fn check_secret_length(what: &str, secret: &[u8]) -> Result<()> {
    if secret.len() < MIN_SECRET_BYTES {
        return Err(Error::invalid(format!(
            "{what} is {} bytes; at least {MIN_SECRET_BYTES} are needed (e.g. `openssl rand -hex 32`)",
            secret.len()
        )));
    }
    Ok(())
}

/// Loads a PEM public key and tells its algorithm: RS256 for RSA, EdDSA for Ed25519.
fn load_public_key(path: &Path) -> Result<(Algorithm, DecodingKey)> {
    let shown = path.display();
    let pem = std::fs::read(path)
        .map_err(|e| Error::invalid(format!("cannot read --auth-public-key-file {shown}: {e}")))?;
    let text = String::from_utf8_lossy(&pem);
    if text.contains("PRIVATE KEY") {
        return Err(Error::invalid(format!(
            "--auth-public-key-file {shown} holds a private key; give the server only the public key"
        )));
    }
    if !text.contains("-----BEGIN PUBLIC KEY-----")
        && !text.contains("-----BEGIN RSA PUBLIC KEY-----")
    {
        return Err(Error::invalid(format!(
            "--auth-public-key-file {shown} is not a PEM public key (-----BEGIN PUBLIC KEY-----)"
        )));
    }
    if let Ok(key) = DecodingKey::from_ed_pem(&pem) {
        // An Ed25519 point that does not decode fails here, not on the first request.
        let probe = jsonwebtoken::crypto::verify(&"A".repeat(86), b"probe", &key, Algorithm::EdDSA);
        if probe.is_err() {
            return Err(Error::invalid(format!(
                "--auth-public-key-file {shown} is not a valid Ed25519 public key"
            )));
        }
        return Ok((Algorithm::EdDSA, key));
    }
    if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
        let jsonwebtoken::DecodingKeyKind::SecretOrDer(der) = key.kind() else {
            return Err(Error::Internal("unexpected RSA key form".into()));
        };
        let components = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER
            .key_utils
            .rsa_pub_components_from_public_key;
        let (n, e) = components(der).map_err(|_| {
            Error::invalid(format!(
                "--auth-public-key-file {shown} is not a valid RSA public key"
            ))
        })?;
        let bits = n.iter().skip_while(|b| **b == 0).count() * 8;
        if bits < MIN_RSA_BITS {
            return Err(Error::invalid(format!(
                "--auth-public-key-file {shown} is a {bits}-bit RSA key; at least {MIN_RSA_BITS} bits are needed"
            )));
        }
        return Ok((
            Algorithm::RS256,
            DecodingKey::from_rsa_raw_components(&n, &e),
        ));
    }
    Err(Error::invalid(format!(
        "--auth-public-key-file {shown} is neither an RSA nor an Ed25519 public key"
    )))
}

impl Verifier {
    pub fn new(
        hs256_secret: Option<&[u8]>,
        public_key_file: Option<&Path>,
        audience: Option<String>,
    ) -> Result<Verifier> {
        let mut keys = Vec::new();
        if let Some(secret) = hs256_secret {
            keys.push((Algorithm::HS256, DecodingKey::from_secret(secret)));
        }
        if let Some(path) = public_key_file {
            keys.push(load_public_key(path)?);
        }
        if keys.is_empty() {
            return Err(Error::invalid(
                "--auth is on but no key is configured: give --auth-hs256-secret (or \
                 STREAMHUB_AUTH_HS256_SECRET), --auth-hs256-secret-file, or --auth-public-key-file",
            ));
        }
        Ok(Verifier {
            keys,
            audience,
            issuer: None,
            max_token_ttl: Duration::from_secs(DEFAULT_MAX_TOKEN_TTL_SECS),
        })
    }

    /// Requires `iss` to equal `issuer` (when given).
    pub fn with_issuer(mut self, issuer: Option<String>) -> Verifier {
        self.issuer = issuer;
        self
    }

    /// Refuses tokens that live longer than `ttl` (`exp - iat`).
    pub fn with_max_token_ttl(mut self, ttl: Duration) -> Verifier {
        self.max_token_ttl = ttl;
        self
    }

    /// The algorithms this verifier accepts, for the startup log.
    pub fn algorithms(&self) -> Vec<Algorithm> {
        self.keys.iter().map(|(alg, _)| *alg).collect()
    }

    /// Checks one token. The error text is for the client: it names what is wrong, never the
    /// key or the expected signature.
    pub fn verify(&self, token: &str) -> Result<Identity, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| {
            "malformed token: its header is not valid JSON or names an unsupported algorithm \
             (alg \"none\" is never accepted)"
                .to_string()
        })?;
        let Some((alg, key)) = self.keys.iter().find(|(alg, _)| *alg == header.alg) else {
            return Err(format!(
                "token algorithm {:?} is not accepted by this server",
                header.alg
            ));
        };
        let mut validation = Validation::new(*alg);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        // Without a configured audience, `jsonwebtoken` refuses any token that names one.
        if let Some(audience) = &self.audience {
            validation.set_audience(&[audience]);
            validation.required_spec_claims.insert("aud".into());
        }
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
            validation.required_spec_claims.insert("iss".into());
        }
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            key,
            &validation,
        )
        .map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => "token has expired".to_string(),
            ErrorKind::ImmatureSignature => "token is not valid yet (nbf)".to_string(),
            ErrorKind::InvalidSignature => "token signature is invalid".to_string(),
            ErrorKind::InvalidAudience => match &self.audience {
                Some(audience) => format!("token audience is not {audience:?}"),
                None => "token names an audience; this server accepts none".to_string(),
            },
            ErrorKind::InvalidIssuer => {
                "token issuer is not the one this server trusts".to_string()
            }
            ErrorKind::MissingRequiredClaim(claim) => format!("token has no {claim} claim"),
            ErrorKind::InvalidClaimFormat(claim) => format!("token claim {claim} is malformed"),
            _ => "malformed token".to_string(),
        })?;
        let claims = data.claims;
        // `jsonwebtoken` accepts an array `iss` that merely contains the trusted one; RFC 7519
        // makes `iss` one string, and so does this server.
        if let Some(issuer) = &self.issuer
            && claims.get("iss").and_then(serde_json::Value::as_str) != Some(issuer.as_str())
        {
            return Err("token issuer is not the one this server trusts".to_string());
        }
        // The lifetime: a token must say when it was issued, and may not live longer than the
        // server allows, so that a leaked token is useful only for a bounded time. An `iat` in
        // the future (past the leeway) would stretch that bound, so it is refused too.
        let exp = claims
            .get("exp")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| "token claim exp is malformed".to_string())?;
        let iat = match claims.get("iat") {
            None => return Err("token has no iat claim".to_string()),
            Some(value) => value
                .as_u64()
                .ok_or_else(|| "token claim iat is malformed".to_string())?,
        };
        if iat > now_secs().saturating_add(LEEWAY_SECS) {
            return Err("token was issued in the future (iat)".to_string());
        }
        if exp < iat {
            return Err("token expires before it was issued (exp < iat)".to_string());
        }
        let lifetime = exp - iat;
        if lifetime > self.max_token_ttl.as_secs() {
            return Err(format!(
                "token lives {lifetime} s (exp - iat); this server accepts at most {} s",
                self.max_token_ttl.as_secs()
            ));
        }
        identity_from_claims(&claims)
    }

    /// Finds the bearer token in the headers and checks it.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Identity, String> {
        self.verify(bearer_token(headers)?)
    }
}

/// The token of the one `authorization: Bearer <token>` header. The scheme is case-insensitive
/// (RFC 9110); anything else — no header, two headers, another scheme, an empty token — is an
/// error.
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, String> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let value = values.next().ok_or_else(|| {
        "missing authorization header; send `authorization: Bearer <JWT>`".to_string()
    })?;
    if values.next().is_some() {
        return Err("more than one authorization header".to_string());
    }
    let value = value
        .to_str()
        .map_err(|_| "malformed authorization header".to_string())?;
    let (scheme, token) = value
        .trim()
        .split_once(' ')
        .ok_or_else(|| "malformed authorization header; expected `Bearer <JWT>`".to_string())?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err("authorization scheme must be Bearer".to_string());
    }
    let token = token.trim();
    if token.is_empty() {
        return Err("authorization header has an empty token".to_string());
    }
    Ok(token)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What a minted token says beyond its user and role.
#[derive(Debug, Clone, Default)]
pub struct TokenGrants<'a> {
    pub audience: Option<&'a str>,
    pub issuer: Option<&'a str>,
    /// Written as the `rooms` claim when given (even empty).
    pub rooms: Option<&'a [String]>,
    pub documents: Option<&'a [String]>,
    pub metrics: Option<MetricsAccess>,
}

/// Mints an HS256 token, for `streamhub token` (development) and tests.
pub fn mint_hs256(
    secret: &[u8],
    sub: &str,
    role: Role,
    ttl: Duration,
    audience: Option<&str>,
) -> Result<String> {
    mint_hs256_with(
        secret,
        sub,
        role,
        ttl,
        &TokenGrants {
            audience,
            ..TokenGrants::default()
        },
    )
}

/// Mints an HS256 token with optional claims.
pub fn mint_hs256_with(
    secret: &[u8],
    sub: &str,
    role: Role,
    ttl: Duration,
    grants: &TokenGrants<'_>,
) -> Result<String> {
    let iat = now_secs();
    let claims = MintedClaims {
        sub,
        role: role.as_str(),
        iat,
        exp: iat.saturating_add(ttl.as_secs()),
        aud: grants.audience,
        iss: grants.issuer,
        rooms: grants.rooms,
        documents: grants.documents,
        metrics: grants.metrics.map(MetricsAccess::as_str),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| Error::Internal(format!("cannot sign a token: {e}")))
}

/// Signs and checks download URLs: `/files/{id}?expires=<unix secs>&sig=<hex>`, where `sig` is
/// HMAC-SHA256 over the file id and `expires`.
#[derive(Clone)]
pub struct UrlSigner {
    /// The keyed MAC, cloned for each use.
    mac: HmacSha256,
    ttl: Duration,
}

impl std::fmt::Debug for UrlSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UrlSigner")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// Why a download URL was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlRefusal {
    /// No `expires` and `sig`, or not in the expected form.
    Unsigned,
    /// The signature does not match this file and expiry.
    BadSignature,
    /// Genuine, but past its expiry.
    Expired,
}

impl UrlRefusal {
    pub fn message(self) -> &'static str {
        match self {
            UrlRefusal::Unsigned => "this download needs a signed URL (expires and sig)\n",
            UrlRefusal::BadSignature => "the download URL's signature is invalid\n",
            UrlRefusal::Expired => "the download URL has expired; ask for a new one\n",
        }
    }
}

impl UrlSigner {
    pub fn new(key: &[u8], ttl: Duration) -> Result<UrlSigner> {
        let mac = <HmacSha256 as Mac>::new_from_slice(key)
            .map_err(|e| Error::Internal(format!("url signing key: {e}")))?;
        Ok(UrlSigner { mac, ttl })
    }

    fn mac_of(&self, id: &Uuid, expires: u64) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(URL_MAC_CONTEXT);
        mac.update(id.hyphenated().to_string().as_bytes());
        mac.update(b"\n");
        mac.update(expires.to_string().as_bytes());
        mac
    }

    /// The query string (without `?`) of a URL for `id` valid until `now + ttl`.
    pub fn query_at(&self, id: &Uuid, now: u64) -> String {
        let expires = now.saturating_add(self.ttl.as_secs());
        let sig = self.mac_of(id, expires).finalize().into_bytes();
        format!("expires={expires}&sig={}", hex(&sig))
    }

    /// The query string of a URL for `id` valid for the TTL from now.
    pub fn query(&self, id: &Uuid) -> String {
        self.query_at(id, now_secs())
    }

    /// Checks a download URL's query at time `now`: the signature first (in constant time),
    /// then the expiry.
    pub fn check_at(&self, id: &Uuid, query: Option<&str>, now: u64) -> Result<(), UrlRefusal> {
        let mut expires = None;
        let mut sig = None;
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let slot = match name {
                "expires" => &mut expires,
                "sig" => &mut sig,
                _ => continue,
            };
            if slot.replace(value).is_some() {
                return Err(UrlRefusal::Unsigned);
            }
        }
        let (Some(expires), Some(sig)) = (expires, sig) else {
            return Err(UrlRefusal::Unsigned);
        };
        // Only the canonical decimal form is signed, so `+5` or `05` cannot pass as `5`.
        let expires = match expires.parse::<u64>() {
            Ok(n) if n.to_string() == expires => n,
            _ => return Err(UrlRefusal::Unsigned),
        };
        let sig = unhex(sig).ok_or(UrlRefusal::Unsigned)?;
        self.mac_of(id, expires)
            .verify_slice(&sig)
            .map_err(|_| UrlRefusal::BadSignature)?;
        if now > expires {
            return Err(UrlRefusal::Expired);
        }
        Ok(())
    }

    pub fn check(&self, id: &Uuid, query: Option<&str>) -> Result<(), UrlRefusal> {
        self.check_at(id, query, now_secs())
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Lowercase or uppercase hex to bytes; `None` for anything else (odd length, other chars).
fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || text.len() > 256 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    text.as_bytes()
        .chunks_exact(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

/// Everything authentication needs at run time: built once at start when `--auth` is on.
#[derive(Debug, Clone)]
pub struct Auth {
    pub verifier: Arc<Verifier>,
    pub url_signer: UrlSigner,
}

impl Auth {
    /// `None` when auth is off. Fails (so the server does not start) when auth is on without a
    /// key, or when a key or secret is unusable.
    pub fn from_config(config: &Config) -> Result<Option<Auth>> {
        let any_key = config.auth_hs256_secret.is_some()
            || config.auth_hs256_secret_file.is_some()
            || config.auth_public_key_file.is_some();
        if !config.auth {
            if any_key {
                tracing::warn!("auth keys are configured but --auth is off: no token is checked");
            }
            return Ok(None);
        }
        let hs256 = load_hs256_secret(
            config.auth_hs256_secret.as_ref(),
            config.auth_hs256_secret_file.as_deref(),
        )?;
        let verifier = Verifier::new(
            hs256.as_deref(),
            config.auth_public_key_file.as_deref(),
            config.auth_audience.clone(),
        )?
        .with_issuer(config.auth_issuer.clone())
        .with_max_token_ttl(Duration::from_secs(config.auth_max_token_ttl_secs));
        let ttl = Duration::from_secs(config.download_url_ttl_secs);
        let url_key = match (&config.url_signing_secret, &hs256) {
            (Some(secret), _) => {
                check_secret_length("--url-signing-secret", secret.expose().as_bytes())?;
                secret.expose().as_bytes().to_vec()
            }
            (None, Some(hs256)) => {
                let mut derive = <HmacSha256 as Mac>::new_from_slice(hs256)
                    .map_err(|e| Error::Internal(format!("url key derivation: {e}")))?;
                derive.update(URL_KEY_CONTEXT);
                derive.finalize().into_bytes().to_vec()
            }
            (None, None) => {
                let mut key = vec![0u8; 32];
                getrandom::fill(&mut key)
                    .map_err(|e| Error::Internal(format!("no randomness for a url key: {e}")))?;
                tracing::warn!(
                    "download URLs are signed with a random key made at start: they stop working \
                     when the server restarts (set --url-signing-secret to keep them)"
                );
                key
            }
        };
        tracing::info!(
            algorithms = ?verifier.algorithms(),
            audience = ?config.auth_audience,
            issuer = ?config.auth_issuer,
            max_token_ttl_secs = config.auth_max_token_ttl_secs,
            leeway_secs = LEEWAY_SECS,
            download_url_ttl_secs = config.download_url_ttl_secs,
            "authentication is on"
        );
        Ok(Some(Auth {
            verifier: Arc::new(verifier),
            url_signer: UrlSigner::new(&url_key, ttl)?,
        }))
    }
}

/// Logs a warning when the server is reachable from other machines with auth off.
pub fn warn_if_exposed(addr: SocketAddr, auth_on: bool) {
    if !auth_on && !addr.ip().is_loopback() {
        tracing::warn!(
            %addr,
            "WARNING: authentication is OFF and the server listens on a non-loopback address: \
             anyone who can reach it can read and write every stream. Start with --auth, or \
             bind 127.0.0.1"
        );
    }
}

/// Checks the bearer token of every StreamingService call before it reaches a handler; see the
/// module docs. With `None` (auth off) it passes every request through untouched.
#[derive(Debug, Clone)]
pub struct AuthLayer(pub Option<Arc<Verifier>>);

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            verifier: self.0.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    verifier: Option<Arc<Verifier>>,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S> tower::Service<Request<Body>> for AuthService<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Response<Body>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        if let Some(verifier) = &self.verifier
            && request.uri().path().starts_with(SERVICE_PREFIX)
        {
            match verifier.authenticate(request.headers()) {
                Ok(identity) => {
                    request.extensions_mut().insert(identity);
                }
                Err(reason) => {
                    tracing::debug!(path = request.uri().path(), %reason, "call refused");
                    let response = Status::unauthenticated(reason).into_http::<Body>();
                    return Box::pin(std::future::ready(Ok(response)));
                }
            }
        }
        Box::pin(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;
    use std::sync::Mutex;
    use tower::{Layer, Service};

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    fn hs256(claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    fn verifier() -> Verifier {
        Verifier::new(Some(SECRET), None, None).unwrap()
    }

    fn b64url(bytes: &[u8]) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    }

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for value in values {
            map.append(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn bearer_header_parsing() {
        let cases: &[(&[&str], Result<&str, &str>)] = &[
            (&[], Err("missing authorization header")),
            (&["Bearer abc.def.ghi"], Ok("abc.def.ghi")),
            (&["bearer abc"], Ok("abc")),
            (&["BEARER   abc  "], Ok("abc")),
            (&["Bearer"], Err("malformed authorization header")),
            (&["Bearer "], Err("malformed authorization header")),
            (
                &["Basic dXNlcjpwYXNz"],
                Err("authorization scheme must be Bearer"),
            ),
            (&["abc.def.ghi"], Err("malformed authorization header")),
            (
                &["Bearer a", "Bearer b"],
                Err("more than one authorization header"),
            ),
        ];
        for (values, expected) in cases {
            let map = headers(values);
            match (bearer_token(&map), expected) {
                (Ok(token), Ok(want)) => assert_eq!(token, *want, "{values:?}"),
                (Err(got), Err(want)) => assert!(got.starts_with(want), "{values:?}: {got}"),
                (got, want) => panic!("{values:?}: got {got:?}, want {want:?}"),
            }
        }
        let mut map = HeaderMap::new();
        map.insert(
            AUTHORIZATION,
            HeaderValue::from_bytes(b"Bearer \xff\xfe").unwrap(),
        );
        assert_eq!(
            bearer_token(&map).unwrap_err(),
            "malformed authorization header"
        );
    }

    #[test]
    fn token_checks() {
        let now = now_secs();
        let v = verifier();
        let none_token = format!(
            "{}.{}.",
            b64url(br#"{"alg":"none","typ":"JWT"}"#),
            b64url(
                json!({"iat": now_secs(), "sub": "ann", "exp": now + 600})
                    .to_string()
                    .as_bytes()
            )
        );
        let hs384 = encode(
            &Header::new(Algorithm::HS384),
            &json!({"iat": now_secs(), "sub": "ann", "exp": now + 600}),
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        let other_secret = encode(
            &Header::new(Algorithm::HS256),
            &json!({"iat": now_secs(), "sub": "ann", "exp": now + 600}),
            &EncodingKey::from_secret(b"another secret of thirty-two bytes!!"),
        )
        .unwrap();
        let cases: Vec<(&str, String, Result<Identity, &str>)> = vec![
            (
                "user",
                hs256(json!({"iat": now_secs(), "sub": "ann", "role": "user", "exp": now + 600})),
                Ok(Identity::user("ann")),
            ),
            (
                "no role means user",
                hs256(json!({"iat": now_secs(), "sub": "ann", "exp": now + 600})),
                Ok(Identity::user("ann")),
            ),
            (
                "service",
                hs256(
                    json!({"iat": now_secs(), "sub": "svc", "role": "service", "exp": now + 600}),
                ),
                Ok(Identity::service("svc")),
            ),
            (
                "inside the leeway",
                hs256(json!({"iat": now - 600, "sub": "ann", "exp": now - LEEWAY_SECS / 2})),
                Ok(Identity::user("ann")),
            ),
            (
                "expired",
                hs256(json!({"iat": now - 600, "sub": "ann", "exp": now - LEEWAY_SECS - 5})),
                Err("token has expired"),
            ),
            (
                "no exp",
                hs256(json!({"iat": now_secs(), "sub": "ann"})),
                Err("token has no exp claim"),
            ),
            (
                "exp not a number",
                hs256(json!({"iat": now_secs(), "sub": "ann", "exp": "tomorrow"})),
                Err("token has no exp claim"),
            ),
            (
                "no sub",
                hs256(json!({"iat": now_secs(), "exp": now + 600})),
                Err("token has no sub claim"),
            ),
            (
                "empty sub",
                hs256(json!({"iat": now_secs(), "sub": "", "exp": now + 600})),
                Err("token has an empty sub claim"),
            ),
            (
                "unknown role",
                hs256(json!({"iat": now_secs(), "sub": "ann", "role": "admin", "exp": now + 600})),
                Err("token role \"admin\" is unknown"),
            ),
            (
                "not yet valid",
                hs256(json!({"iat": now_secs(), "sub": "ann", "exp": now + 600, "nbf": now + 300})),
                Err("token is not valid yet"),
            ),
            (
                "audience without one configured",
                hs256(
                    json!({"iat": now_secs(), "sub": "ann", "exp": now + 600, "aud": "elsewhere"}),
                ),
                Err("token names an audience"),
            ),
            (
                "wrong secret",
                other_secret,
                Err("token signature is invalid"),
            ),
            ("alg none", none_token, Err("malformed token")),
            ("HS384", hs384, Err("token algorithm HS384 is not accepted")),
            ("garbage", "not a token".into(), Err("malformed token")),
            ("empty parts", "..".into(), Err("malformed token")),
        ];
        for (name, token, expected) in cases {
            match (v.verify(&token), expected) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{name}"),
                (Err(got), Err(want)) => assert!(got.starts_with(want), "{name}: {got}"),
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn audience_when_configured() {
        let now = now_secs();
        let v = Verifier::new(Some(SECRET), None, Some("streamhub".into())).unwrap();
        let ok =
            hs256(json!({"iat": now_secs(), "sub": "ann", "exp": now + 60, "aud": "streamhub"}));
        assert_eq!(v.verify(&ok).unwrap().sub, "ann");
        let listed = hs256(
            json!({"iat": now_secs(), "sub": "ann", "exp": now + 60, "aud": ["x", "streamhub"]}),
        );
        assert_eq!(v.verify(&listed).unwrap().sub, "ann");
        let wrong =
            hs256(json!({"iat": now_secs(), "sub": "ann", "exp": now + 60, "aud": "other"}));
        assert_eq!(
            v.verify(&wrong).unwrap_err(),
            "token audience is not \"streamhub\""
        );
        let missing = hs256(json!({"iat": now_secs(), "sub": "ann", "exp": now + 60}));
        assert_eq!(v.verify(&missing).unwrap_err(), "token has no aud claim");
    }

    #[test]
    fn public_keys_pick_their_algorithm() {
        let now = now_secs();
        let claims = json!({"iat": now_secs(), "sub": "ann", "role": "service", "exp": now + 60});
        for (public, private, alg) in [
            (
                "auth_rsa_public.pem",
                "auth_rsa_private.pem",
                Algorithm::RS256,
            ),
            (
                "auth_ed25519_public.pem",
                "auth_ed25519_private.pem",
                Algorithm::EdDSA,
            ),
        ] {
            let v = Verifier::new(None, Some(&fixture(public)), None).unwrap();
            assert_eq!(v.algorithms(), vec![alg]);
            let pem = std::fs::read(fixture(private)).unwrap();
            let key = match alg {
                Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
                _ => EncodingKey::from_ed_pem(&pem).unwrap(),
            };
            let token = encode(&Header::new(alg), &claims, &key).unwrap();
            assert_eq!(v.verify(&token).unwrap(), Identity::service("ann"));
            // An HS256 token is refused when only a public key is configured, even one whose
            // "secret" is the public key's own PEM (the classic algorithm confusion).
            let public_pem = std::fs::read(fixture(public)).unwrap();
            let confused = encode(
                &Header::new(Algorithm::HS256),
                &claims,
                &EncodingKey::from_secret(&public_pem),
            )
            .unwrap();
            assert_eq!(
                v.verify(&confused).unwrap_err(),
                "token algorithm HS256 is not accepted by this server"
            );
        }
        let private = Verifier::new(None, Some(&fixture("auth_rsa_private.pem")), None);
        assert!(
            matches!(&private, Err(Error::InvalidArgument(m)) if m.contains("holds a private key")),
            "{private:?}"
        );
        let missing = Verifier::new(None, Some(&fixture("nope.pem")), None);
        assert!(
            matches!(&missing, Err(Error::InvalidArgument(m)) if m.contains("cannot read")),
            "{missing:?}"
        );
        let none = Verifier::new(None, None, None);
        assert!(
            matches!(&none, Err(Error::InvalidArgument(m)) if m.contains("no key is configured")),
            "{none:?}"
        );
    }

    #[test]
    fn optional_claims_and_their_shapes() {
        let now = now_secs();
        let v = verifier();
        let base = |extra: serde_json::Value| {
            let mut claims = json!({"iat": now, "sub": "ann", "exp": now + 600});
            for (k, value) in extra.as_object().unwrap() {
                claims[k] = value.clone();
            }
            hs256(claims)
        };
        let granted = v
            .verify(&base(json!({
                "rooms": ["team-*", "lobby"],
                "documents": [],
                "metrics": "read"
            })))
            .unwrap();
        assert_eq!(granted.grants.rooms, vec!["team-*", "lobby"]);
        assert!(granted.grants.documents.is_empty());
        assert_eq!(granted.grants.metrics, Some(MetricsAccess::Read));
        let refused = [
            (
                json!({"rooms": "lobby"}),
                "token claim rooms must be a JSON array of strings",
            ),
            (
                json!({"rooms": null}),
                "token claim rooms must be a JSON array of strings",
            ),
            (
                json!({"rooms": ["a", 1]}),
                "token claim rooms must be a JSON array of strings",
            ),
            (
                json!({"documents": {"a": 1}}),
                "token claim documents must be a JSON array of strings",
            ),
            (json!({"metrics": "admin"}), "token claim metrics must be"),
            (json!({"metrics": ["read"]}), "token claim metrics must be"),
            (json!({"role": 1}), "token claim role must be a string"),
        ];
        for (extra, want) in refused {
            let got = v.verify(&base(extra.clone())).unwrap_err();
            assert!(got.starts_with(want), "{extra}: {got}");
        }
    }

    #[test]
    fn issuer_and_lifetime() {
        let now = now_secs();
        let v = verifier()
            .with_issuer(Some("https://id.example".into()))
            .with_max_token_ttl(Duration::from_secs(3600));
        let cases = [
            (
                json!({"sub": "ann", "iat": now, "exp": now + 3600, "iss": "https://id.example"}),
                Ok(()),
            ),
            (
                json!({"sub": "ann", "iat": now, "exp": now + 3601, "iss": "https://id.example"}),
                Err("token lives 3601 s"),
            ),
            (
                json!({"sub": "ann", "exp": now + 60, "iss": "https://id.example"}),
                Err("token has no iat claim"),
            ),
            (
                json!({"sub": "ann", "iat": "now", "exp": now + 60, "iss": "https://id.example"}),
                Err("token claim iat is malformed"),
            ),
            (
                json!({"sub": "ann", "iat": now, "exp": now + 60, "iss": "https://evil.example"}),
                Err("token issuer is not the one"),
            ),
            (
                json!({"sub": "ann", "iat": now, "exp": now + 60}),
                Err("token has no iss claim"),
            ),
            (
                json!({"sub": "ann", "iat": now, "exp": now + 60, "iss": ["x", "https://id.example"]}),
                Err("token issuer is not the one"),
            ),
            (
                json!({"sub": "ann", "iat": now + 86_400, "exp": now + 86_460, "iss": "https://id.example"}),
                Err("token was issued in the future"),
            ),
            (
                json!({"sub": "ann", "iat": now + 10, "exp": now + 5, "iss": "https://id.example"}),
                Err("token expires before it was issued"),
            ),
            (
                json!({"sub": "ann", "iat": now, "exp": (now + 60) as f64 + 0.5, "iss": "https://id.example"}),
                Err("token claim exp is malformed"),
            ),
        ];
        for (claims, want) in cases {
            match (v.verify(&hs256(claims.clone())), want) {
                (Ok(identity), Ok(())) => assert_eq!(identity.sub, "ann"),
                (Err(got), Err(want)) => assert!(got.starts_with(want), "{claims}: {got}"),
                (got, want) => panic!("{claims}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn room_and_document_access() {
        let public = vec!["lobby".to_string(), "open-*".to_string()];
        let mut granted = Identity::user("ann");
        granted.grants.rooms = vec!["team-*".into(), "exact".into()];
        granted.grants.documents = vec!["*".into()];
        let ann = Identity::user("ann");
        let service = Identity::service("svc");
        let cases: Vec<(Option<&Identity>, Space, &str, bool)> = vec![
            (None, Space::Room, "anything", true),
            (Some(&service), Space::Room, "dm#bob,carl", true),
            // 1. The user boundary.
            (Some(&ann), Space::Room, "dm#ann,bob", true),
            (Some(&ann), Space::Room, "dm#bob,ann", true),
            (Some(&ann), Space::Room, "notes#ann", true),
            (Some(&ann), Space::Room, "dm#bob,carl", false),
            (Some(&ann), Space::Room, "dm# ann", false),
            (Some(&ann), Space::Room, "dm#Ann", false),
            (Some(&ann), Space::Room, "a#ann#bob", false),
            (Some(&ann), Space::Room, "x#ann,", true),
            (Some(&ann), Space::Room, "x#", false),
            // 3. Server patterns, never past a boundary.
            (Some(&ann), Space::Room, "lobby", true),
            (Some(&ann), Space::Room, "lobby2", false),
            (Some(&ann), Space::Room, "open-1", true),
            (Some(&ann), Space::Room, "open-#bob", false),
            (Some(&ann), Space::Document, "lobby", true),
            // 2. Token patterns, also past a boundary.
            (Some(&granted), Space::Room, "team-1", true),
            (Some(&granted), Space::Room, "team-#bob", true),
            (Some(&granted), Space::Room, "exact", true),
            (Some(&granted), Space::Room, "exactly", false),
            (Some(&granted), Space::Room, "Team-1", false),
            (Some(&granted), Space::Document, "dm#bob", true),
            (Some(&ann), Space::Document, "team-1", false),
        ];
        for (identity, space, id, allowed) in cases {
            match may_enter(identity, space, id, &public) {
                Ok(()) if allowed => {}
                Err(Error::PermissionDenied(_)) if !allowed => {}
                got => panic!("{identity:?} {space:?} {id:?}: got {got:?}, want {allowed}"),
            }
        }
        assert!(pattern_matches("*", ""));
        assert!(pattern_matches("a*", "a"));
        assert!(!pattern_matches("a*", "b"));
        assert!(pattern_matches("a*b", "a*b"));
        assert!(!pattern_matches("a*b", "axb"));
    }

    #[test]
    fn metrics_claims() {
        let mut reader = Identity::user("ann");
        reader.grants.metrics = Some(MetricsAccess::Read);
        let mut writer = Identity::user("ann");
        writer.grants.metrics = Some(MetricsAccess::Write);
        let plain = Identity::user("ann");
        let service = Identity::service("svc");
        use MetricsAccess::{Read, Write};
        for (identity, wanted, allowed) in [
            (None, Write, true),
            (Some(&service), Write, true),
            (Some(&writer), Write, true),
            (Some(&writer), Read, true),
            (Some(&reader), Read, true),
            (Some(&reader), Write, false),
            (Some(&plain), Read, false),
            (Some(&plain), Write, false),
        ] {
            assert_eq!(
                may_use_metrics(identity, wanted).is_ok(),
                allowed,
                "{identity:?} {wanted:?}"
            );
        }
    }

    #[test]
    fn short_secrets_are_refused() {
        let short = Secret::from("short".to_string());
        let err = load_hs256_secret(Some(&short), None).unwrap_err();
        assert!(err.to_string().contains("at least 32"), "{err}");
        assert_eq!(format!("{short:?}"), "Secret(<redacted>)");
        assert_eq!(load_hs256_secret(None, None).unwrap(), None);
    }

    #[test]
    fn act_as_rule() {
        let user = Identity::user("ann");
        let service = Identity::service("svc");
        let cases: Vec<(Option<&Identity>, &str, Result<&str, ()>)> = vec![
            (None, "bob", Ok("bob")),
            (None, "", Ok("")),
            (Some(&user), "ann", Ok("ann")),
            (Some(&user), "", Ok("ann")),
            (Some(&user), "bob", Err(())),
            (Some(&user), "Ann", Err(())),
            (Some(&service), "bob", Ok("bob")),
            (Some(&service), "", Ok("svc")),
        ];
        for (identity, given, expected) in cases {
            let mut user_id = given.to_string();
            match (act_as(identity, &mut user_id), expected) {
                (Ok(()), Ok(want)) => assert_eq!(user_id, want, "{identity:?} as {given:?}"),
                (Err(Error::PermissionDenied(_)), Err(())) => assert_eq!(user_id, given),
                (got, want) => panic!("{identity:?} as {given:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn download_url_signatures() {
        let signer = UrlSigner::new(b"k", Duration::from_secs(100)).unwrap();
        let id = Uuid::new_v4();
        let other = Uuid::new_v4();
        let query = signer.query_at(&id, 1_000);
        assert!(query.starts_with("expires=1100&sig="), "{query}");
        let sig = query.split("sig=").nth(1).unwrap();
        assert_eq!(sig.len(), 64);
        let mut flipped = sig.to_string();
        flipped.replace_range(0..1, if sig.starts_with('0') { "1" } else { "0" });
        let cases: Vec<(String, &Uuid, u64, Result<(), UrlRefusal>)> = vec![
            (query.clone(), &id, 1_000, Ok(())),
            (query.clone(), &id, 1_100, Ok(())),
            (format!("sig={sig}&expires=1100"), &id, 1_050, Ok(())),
            (
                format!("expires=1100&sig={}", sig.to_uppercase()),
                &id,
                1_050,
                Ok(()),
            ),
            (query.clone(), &id, 1_101, Err(UrlRefusal::Expired)),
            (query.clone(), &other, 1_000, Err(UrlRefusal::BadSignature)),
            (
                format!("expires=1101&sig={sig}"),
                &id,
                1_000,
                Err(UrlRefusal::BadSignature),
            ),
            (
                format!("expires=1100&sig={flipped}"),
                &id,
                1_000,
                Err(UrlRefusal::BadSignature),
            ),
            (
                format!("expires=1100&sig={}", &sig[..62]),
                &id,
                1_000,
                Err(UrlRefusal::BadSignature),
            ),
            (
                format!("expires=01100&sig={sig}"),
                &id,
                1_000,
                Err(UrlRefusal::Unsigned),
            ),
            (
                format!("expires=+1100&sig={sig}"),
                &id,
                1_000,
                Err(UrlRefusal::Unsigned),
            ),
            (
                format!("{query}&expires=1100"),
                &id,
                1_000,
                Err(UrlRefusal::Unsigned),
            ),
            (
                format!("expires=1100&sig={sig}x"),
                &id,
                1_000,
                Err(UrlRefusal::Unsigned),
            ),
            ("expires=1100".into(), &id, 1_000, Err(UrlRefusal::Unsigned)),
            (String::new(), &id, 1_000, Err(UrlRefusal::Unsigned)),
        ];
        for (query, id, now, expected) in cases {
            assert_eq!(
                signer.check_at(id, Some(&query), now),
                expected,
                "{query} at {now}"
            );
        }
        assert_eq!(signer.check_at(&id, None, 0), Err(UrlRefusal::Unsigned));
        let other_key = UrlSigner::new(b"j", Duration::from_secs(100)).unwrap();
        assert_eq!(
            other_key.check_at(&id, Some(&query), 1_000),
            Err(UrlRefusal::BadSignature)
        );
    }

    /// What reached the inner service: each path and the identity it carried.
    type Seen = Vec<(String, Option<Identity>)>;

    /// An inner service that records what reached it.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Seen>>);

    impl tower::Service<Request<Body>> for Recorder {
        type Response = Response<Body>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<Response<Body>, Self::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: Request<Body>) -> Self::Future {
            let identity = request.extensions().get::<Identity>().cloned();
            self.0
                .lock()
                .unwrap()
                .push((request.uri().path().to_string(), identity));
            std::future::ready(Ok(Response::new(Body::empty())))
        }
    }

    fn request(path: &str, authorization: Option<&str>) -> Request<Body> {
        let mut builder = Request::builder().uri(path);
        if let Some(value) = authorization {
            builder = builder.header(AUTHORIZATION, value);
        }
        builder.body(Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn layer_checks_service_calls_only() {
        let recorder = Recorder::default();
        let mut service = AuthLayer(Some(Arc::new(verifier()))).layer(recorder.clone());
        let token = hs256(json!({"iat": now_secs(), "sub": "ann", "exp": now_secs() + 60}));
        let rpc = "/streaming.v1.StreamingService/PublishUserEvent";

        let ok = service
            .call(request(rpc, Some(&format!("Bearer {token}"))))
            .await
            .unwrap();
        assert_eq!(ok.headers().get("grpc-status"), None);

        for bad in [None, Some("Bearer x.y.z"), Some("Token abc")] {
            let refused = service.call(request(rpc, bad)).await.unwrap();
            assert_eq!(refused.status(), http::StatusCode::OK);
            assert_eq!(
                refused.headers().get("grpc-status").unwrap(),
                "16",
                "{bad:?}"
            );
            assert_eq!(
                refused.headers().get("content-type").unwrap(),
                "application/grpc"
            );
        }

        // Health, reflection and plain HTTP pass without a token.
        for open in [
            "/grpc.health.v1.Health/Check",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/metrics",
            "/files/0196a0e0-0000-7000-8000-000000000000",
        ] {
            service.call(request(open, None)).await.unwrap();
        }

        // Auth off: everything passes and no identity is set.
        let mut off = AuthLayer(None).layer(recorder.clone());
        off.call(request(rpc, None)).await.unwrap();

        let seen = recorder.0.lock().unwrap().clone();
        let ann = Identity::user("ann");
        assert_eq!(
            seen,
            vec![
                (rpc.to_string(), Some(ann)),
                ("/grpc.health.v1.Health/Check".to_string(), None),
                (
                    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo".to_string(),
                    None
                ),
                ("/metrics".to_string(), None),
                (
                    "/files/0196a0e0-0000-7000-8000-000000000000".to_string(),
                    None
                ),
                (rpc.to_string(), None),
            ]
        );
    }

    #[test]
    fn minted_tokens_verify() {
        let token =
            mint_hs256(SECRET, "ann", Role::Service, Duration::from_secs(60), None).unwrap();
        assert_eq!(verifier().verify(&token).unwrap(), Identity::service("ann"));
        let expired = mint_hs256(SECRET, "ann", Role::User, Duration::ZERO, None).unwrap();
        // Inside the leeway a token that expires now still passes.
        assert!(verifier().verify(&expired).is_ok());
    }
}
