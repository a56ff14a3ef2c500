//! JWT admission: verifies a bearer JSON Web Token against `auth.jwt` and turns it into a
//! [`Grant`] (tenant and allowed objects). Warm path: once per upgrade.
//!
//! Decoding, signature checks and the `exp`/`nbf`/`iss`/`aud` checks are done by the
//! `jsonwebtoken` crate; this module picks the key, maps the crate's errors onto [`JwtError`]
//! and reads the tenant and objects claims.
//!
//! Keys come from `auth.jwt.secret` (HS256), `auth.jwt.public_key_file` (one PEM public key:
//! RSA, P-256 or Ed25519) and `auth.jwt.jwks_file` (a JWKS document). The JWKS file is re-read
//! when it changes: [`JwtVerifier::verify`] stats it at most once per second and swaps the key
//! set when its mtime or length changed; a changed file that is unreadable or invalid keeps the
//! previous keys and logs one warning. Neither tokens nor key material are ever logged.
//!
//! Rules beyond the brief's list, all fail-closed:
//! - `exp` is required (a token without it is [`JwtError::Malformed`]).
//! - With `issuer`/`audience` configured, a token missing `iss`/`aud` is
//!   [`JwtError::WrongIssuer`]/[`JwtError::WrongAudience`]; without `audience`, `aud` is ignored.
//! - The tenant must also contain no control characters.
//! - A present objects claim must be a non-empty list of non-empty strings (an empty list would
//!   otherwise read as "any object").
//! - Key choice: a `kid` names a JWKS key; a `kid` that no JWKS key has falls back to the single
//!   configured static key (secret or PEM) that fits the algorithm; without `kid`, exactly one key
//!   (static or JWKS) must fit the algorithm. Anything else is [`JwtError::UnknownKey`].

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::crypto::CryptoProvider;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyOperations, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::config::JwtSettings;

/// Longest tenant claim value accepted (bytes).
const MAX_TENANT_BYTES: usize = 128;
/// Longest token looked at (bytes); longer ones are malformed without being decoded.
const MAX_TOKEN_BYTES: usize = 64 * 1024;
/// Largest JWKS file read (bytes).
const MAX_JWKS_BYTES: u64 = 1024 * 1024;
/// How often `verify` may stat the JWKS file (milliseconds).
const JWKS_RECHECK_MS: u64 = 1000;
/// Leeway is capped so `now - leeway` in the decoder can never underflow (10 years, seconds).
const MAX_LEEWAY_SECS: u64 = 10 * 365 * 24 * 3600;

/// What a verified token allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The tenant (value of the configured tenant claim).
    pub tenant: String,
    /// Object ids the token may open, with `*` wildcards; empty: any object.
    pub objects: Vec<String>,
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtError {
    /// Not a well-formed JWT (shape, base64, JSON, claim types, missing `exp`).
    Malformed,
    /// No configured key matches the token's `kid`/algorithm.
    UnknownKey,
    /// The signature does not verify with the selected key.
    BadSignature,
    /// `exp` is past, beyond the leeway.
    Expired,
    /// `nbf` is in the future, beyond the leeway.
    NotYetValid,
    /// `iss` is missing or not the configured issuer.
    WrongIssuer,
    /// `aud` is missing or does not contain the configured audience.
    WrongAudience,
    /// The tenant claim is missing, not a string, empty, too long or has control characters.
    NoTenant,
    /// The objects claim is not a non-empty list of non-empty strings.
    BadObjects,
    /// The header's `alg` is not one of the configured algorithms (`none` never is).
    DisallowedAlgorithm,
}

impl JwtError {
    /// Stable snake_case label (metrics, logs, reject reasons).
    pub fn as_str(self) -> &'static str {
        match self {
            JwtError::Malformed => "malformed",
            JwtError::UnknownKey => "unknown_key",
            JwtError::BadSignature => "bad_signature",
            JwtError::Expired => "expired",
            JwtError::NotYetValid => "not_yet_valid",
            JwtError::WrongIssuer => "wrong_issuer",
            JwtError::WrongAudience => "wrong_audience",
            JwtError::NoTenant => "no_tenant",
            JwtError::BadObjects => "bad_objects",
            JwtError::DisallowedAlgorithm => "disallowed_algorithm",
        }
    }
}

impl fmt::Display for JwtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for JwtError {}

/// One usable verification key.
struct Key {
    /// JWKS `kid`; `None` for the static secret / PEM key.
    kid: Option<String>,
    /// The allowed algorithms this key verifies (family, JWK `alg` and curve checked at load).
    algs: Vec<Algorithm>,
    key: DecodingKey,
}

impl Key {
    fn fits(&self, alg: Algorithm) -> bool {
        self.algs.contains(&alg)
    }
}

/// What the JWKS file looked like when last stat'ed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileStamp {
    Present { mtime: Option<SystemTime>, len: u64 },
    Unreadable,
}

impl FileStamp {
    fn of(path: &Path) -> FileStamp {
        match std::fs::metadata(path) {
            Ok(m) => FileStamp::Present { mtime: m.modified().ok(), len: m.len() },
            Err(_) => FileStamp::Unreadable,
        }
    }
}

/// The JWKS file's current key set and its change detection.
struct Jwks {
    path: PathBuf,
    keys: ArcSwap<Vec<Key>>,
    /// Stamp of the file the current keys (or the last refused version) came from.
    stamp: Mutex<FileStamp>,
    /// Milliseconds since `epoch` before which `verify` does not stat the file.
    next_check_ms: AtomicU64,
    epoch: Instant,
}

impl Jwks {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Stat the file if the recheck interval passed; re-read it if it changed.
    fn maybe_reload(&self, allowed: &[Algorithm]) {
        let now = self.now_ms();
        let due = self.next_check_ms.load(Ordering::Relaxed);
        if now < due {
            return;
        }
        // One caller per interval does the stat; the others go on with the current keys.
        if self
            .next_check_ms
            .compare_exchange(due, now.saturating_add(JWKS_RECHECK_MS), Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        let stamp = FileStamp::of(&self.path);
        // Held until the keys are swapped, so an older read never replaces a newer one.
        let mut last = self.stamp.lock().unwrap_or_else(|e| e.into_inner());
        if *last == stamp {
            return;
        }
        // Remember this version even if it is refused, so it is warned about once.
        *last = stamp;
        let kept = self.keys.load().len();
        match read_jwks(&self.path, allowed) {
            Ok(keys) => {
                tracing::info!(
                    path = %self.path.display(),
                    keys = keys.len(),
                    "jwt: reloaded the JWKS file"
                );
                self.keys.store(Arc::new(keys));
            }
            Err(problem) => {
                tracing::warn!(
                    path = %self.path.display(),
                    problem = %problem,
                    kept_keys = kept,
                    "jwt: the changed JWKS file is not usable; keeping the previous keys"
                );
            }
        }
    }
}

/// Verifies JWTs against `auth.jwt` (see the module doc).
pub struct JwtVerifier {
    /// Allowed algorithms, with the validation rules for each.
    validations: Vec<(Algorithm, Validation)>,
    /// The same algorithms (for re-reading the JWKS file).
    allowed: Vec<Algorithm>,
    /// Secret and PEM keys.
    static_keys: Vec<Key>,
    jwks: Option<Jwks>,
    tenant_claim: String,
    objects_claim: Option<String>,
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never prints key material.
        let algs: Vec<&Algorithm> = self.validations.iter().map(|(a, _)| a).collect();
        f.debug_struct("JwtVerifier")
            .field("algorithms", &algs)
            .field("static_keys", &self.static_keys.len())
            .field("jwks_file", &self.jwks.as_ref().map(|j| j.path.display().to_string()))
            .field("tenant_claim", &self.tenant_claim)
            .field("objects_claim", &self.objects_claim)
            .finish()
    }
}

impl JwtVerifier {
    /// Load the keys (secret, PEM file, JWKS file) named by `settings`; the error names the key
    /// and the problem.
    pub fn new(settings: &JwtSettings) -> Result<JwtVerifier, String> {
        let provider = crypto_provider()?;

        if settings.secret.is_none() && settings.public_key_file.is_none() && settings.jwks_file.is_none() {
            return Err("jwt: no key configured (set secret, public_key_file or jwks_file)".into());
        }
        if settings.tenant_claim.is_empty() {
            return Err("jwt tenant_claim: empty".into());
        }
        if settings.objects_claim.as_deref() == Some("") {
            return Err("jwt objects_claim: empty".into());
        }

        let mut static_keys = Vec::new();
        let any_alg = [Algorithm::HS256, Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];
        let allowed: Vec<Algorithm> = if settings.algorithms.is_empty() {
            // Default: the ones the keys allow (a JWKS file allows the asymmetric ones).
            let mut algs = Vec::new();
            if settings.secret.is_some() {
                algs.push(Algorithm::HS256);
            }
            if let Some(path) = &settings.public_key_file {
                algs.extend(load_pem_key(path, &any_alg, provider)?.algs);
            }
            if settings.jwks_file.is_some() {
                algs.extend([Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA]);
            }
            algs.sort_by_key(|a| alg_name(*a));
            algs.dedup();
            algs
        } else {
            let mut algs = Vec::new();
            for name in &settings.algorithms {
                let alg = parse_alg(name)?;
                if !algs.contains(&alg) {
                    algs.push(alg);
                }
            }
            algs
        };

        if let Some(secret) = &settings.secret {
            if !allowed.contains(&Algorithm::HS256) {
                return Err("jwt secret: set, but HS256 is not in algorithms".into());
            }
            let key = DecodingKey::from_secret(secret.as_bytes()).map_err(|_| "jwt secret: empty".to_string())?;
            static_keys.push(Key { kid: None, algs: vec![Algorithm::HS256], key });
        }
        if let Some(path) = &settings.public_key_file {
            static_keys.push(load_pem_key(path, &allowed, provider)?);
        }

        let jwks = match &settings.jwks_file {
            None => None,
            Some(path) => {
                let stamp = FileStamp::of(path);
                let keys = read_jwks(path, &allowed)?;
                let epoch = Instant::now();
                Some(Jwks {
                    path: path.clone(),
                    keys: ArcSwap::from_pointee(keys),
                    stamp: Mutex::new(stamp),
                    next_check_ms: AtomicU64::new(JWKS_RECHECK_MS),
                    epoch,
                })
            }
        };

        // Every allowed algorithm needs a key that can verify it (the JWKS may gain keys later).
        if jwks.is_none() {
            for alg in &allowed {
                if !static_keys.iter().any(|k| k.fits(*alg)) {
                    return Err(format!(
                        "jwt algorithms: {} is allowed but no configured key verifies it",
                        alg_name(*alg)
                    ));
                }
            }
        }

        let leeway = settings.leeway.as_secs().min(MAX_LEEWAY_SECS);
        let validations = allowed
            .iter()
            .map(|alg| {
                let mut v = Validation::new(*alg);
                v.leeway = leeway;
                v.validate_exp = true;
                v.validate_nbf = true;
                let mut required = vec!["exp"];
                if let Some(iss) = &settings.issuer {
                    v.set_issuer(&[iss]);
                    required.push("iss");
                }
                match &settings.audience {
                    Some(aud) => {
                        v.set_audience(&[aud]);
                        v.validate_aud = true;
                        required.push("aud");
                    }
                    None => v.validate_aud = false,
                }
                v.set_required_spec_claims(&required);
                (*alg, v)
            })
            .collect();

        Ok(JwtVerifier {
            validations,
            allowed,
            static_keys,
            jwks,
            tenant_claim: settings.tenant_claim.clone(),
            objects_claim: settings.objects_claim.clone(),
        })
    }

    /// Verify `token` now: signature with an allowed algorithm (never `none`), `exp` and `nbf`
    /// with the leeway, `iss`, `aud`; then the tenant claim (a non-empty string, at most 128
    /// bytes) and the objects claim (a list of strings; absent = any object).
    pub fn verify(&self, token: &str) -> Result<Grant, JwtError> {
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
            return Err(JwtError::Malformed);
        }
        let header = peek_header(token)?;
        let (alg, validation) =
            self.validations.iter().find(|(a, _)| alg_name(*a) == header.alg).ok_or(JwtError::DisallowedAlgorithm)?;

        let jwks_keys = self.jwks.as_ref().map(|j| {
            j.maybe_reload(&self.allowed);
            j.keys.load()
        });
        let jwks_keys: &[Key] = jwks_keys.as_ref().map(|g| g.as_slice()).unwrap_or(&[]);
        let key = select_key(&self.static_keys, jwks_keys, *alg, header.kid.as_deref()).ok_or(JwtError::UnknownKey)?;

        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, validation).map_err(map_error)?;
        let claims = data.claims;

        let tenant = match claims.get(&self.tenant_claim) {
            Some(Value::String(t))
                if !t.is_empty() && t.len() <= MAX_TENANT_BYTES && !t.chars().any(char::is_control) =>
            {
                t.clone()
            }
            _ => return Err(JwtError::NoTenant),
        };
        let objects = match self.objects_claim.as_ref().and_then(|name| claims.get(name)) {
            None => Vec::new(),
            Some(Value::Array(items)) if !items.is_empty() => {
                let mut objects = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        Value::String(s) if !s.is_empty() => objects.push(s.clone()),
                        _ => return Err(JwtError::BadObjects),
                    }
                }
                objects
            }
            Some(_) => return Err(JwtError::BadObjects),
        };
        Ok(Grant { tenant, objects })
    }

    /// Make the next `verify` stat the JWKS file regardless of the 1-second interval.
    #[cfg(test)]
    fn force_jwks_recheck(&self) {
        if let Some(j) = &self.jwks {
            j.next_check_ms.store(0, Ordering::Relaxed);
        }
    }
}

/// The crypto backend `jsonwebtoken` uses; installs the RustCrypto one if none is selected yet
/// (so `decode` can never panic for want of one).
fn crypto_provider() -> Result<&'static CryptoProvider, String> {
    if let Some(p) = CryptoProvider::try_get_default() {
        return Ok(p);
    }
    // Another thread may win the race; either way a provider is then installed.
    let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
    CryptoProvider::try_get_default().ok_or_else(|| "jwt: no jsonwebtoken crypto provider available".to_string())
}

fn parse_alg(name: &str) -> Result<Algorithm, String> {
    match name {
        "HS256" => Ok(Algorithm::HS256),
        "RS256" => Ok(Algorithm::RS256),
        "ES256" => Ok(Algorithm::ES256),
        "EdDSA" => Ok(Algorithm::EdDSA),
        _ => Err(format!("jwt algorithms: unsupported algorithm {name:?} (accepted: HS256, RS256, ES256, EdDSA)")),
    }
}

fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::RS256 => "RS256",
        Algorithm::ES256 => "ES256",
        Algorithm::EdDSA => "EdDSA",
        // Never allowed (parse_alg only yields the four above).
        _ => "",
    }
}

/// The header fields needed before verification.
#[derive(serde::Deserialize)]
struct PeekHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

/// Read `alg` and `kid` from the (unverified) header, to pick the key.
fn peek_header(token: &str) -> Result<PeekHeader, JwtError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(JwtError::Malformed);
    };
    let json = URL_SAFE_NO_PAD.decode(header).map_err(|_| JwtError::Malformed)?;
    serde_json::from_slice::<PeekHeader>(&json).map_err(|_| JwtError::Malformed)
}

/// The key for a token with `alg` and optional `kid` (see the module doc for the rule).
fn select_key<'a>(static_keys: &'a [Key], jwks: &'a [Key], alg: Algorithm, kid: Option<&str>) -> Option<&'a Key> {
    let only = |mut it: Box<dyn Iterator<Item = &'a Key> + 'a>| -> Option<&'a Key> {
        let first = it.next()?;
        it.next().is_none().then_some(first)
    };
    match kid {
        Some(kid) => {
            let mut named = jwks.iter().filter(|k| k.kid.as_deref() == Some(kid)).peekable();
            if named.peek().is_some() {
                return named.find(|k| k.fits(alg));
            }
            only(Box::new(static_keys.iter().filter(move |k| k.fits(alg))))
        }
        None => only(Box::new(static_keys.iter().chain(jwks.iter()).filter(move |k| k.fits(alg)))),
    }
}

fn map_error(e: jsonwebtoken::errors::Error) -> JwtError {
    match e.kind() {
        ErrorKind::InvalidSignature => JwtError::BadSignature,
        ErrorKind::ExpiredSignature => JwtError::Expired,
        ErrorKind::ImmatureSignature => JwtError::NotYetValid,
        ErrorKind::InvalidIssuer => JwtError::WrongIssuer,
        ErrorKind::InvalidAudience => JwtError::WrongAudience,
        ErrorKind::MissingRequiredClaim(c) | ErrorKind::InvalidClaimFormat(c) => match c.as_str() {
            "iss" => JwtError::WrongIssuer,
            "aud" => JwtError::WrongAudience,
            _ => JwtError::Malformed,
        },
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::UnsupportedAlgorithm
        | ErrorKind::InvalidAlgorithmName => JwtError::DisallowedAlgorithm,
        // The selected key cannot verify this algorithm after all.
        ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat => JwtError::UnknownKey,
        _ => JwtError::Malformed,
    }
}

/// The algorithms among `allowed` that `key` can verify (the crypto backend accepts the key).
fn usable_algs(key: &DecodingKey, allowed: &[Algorithm], provider: &CryptoProvider) -> Vec<Algorithm> {
    allowed
        .iter()
        .copied()
        .filter(|alg| alg.family() == key.family() && (provider.verifier_factory)(alg, key).is_ok())
        .collect()
}

/// Load the PEM public key at `path`; it must verify at least one of `allowed`.
fn load_pem_key(path: &Path, allowed: &[Algorithm], provider: &CryptoProvider) -> Result<Key, String> {
    let shown = path.display();
    let pem = std::fs::read(path).map_err(|e| format!("jwt public_key_file {shown}: cannot read: {e}"))?;
    if pem.windows(16).any(|w| w == b"PRIVATE KEY-----") {
        return Err(format!("jwt public_key_file {shown}: a private key; give the public key only"));
    }
    let key = DecodingKey::from_rsa_pem(&pem)
        .or_else(|_| DecodingKey::from_ec_pem(&pem))
        .or_else(|_| DecodingKey::from_ed_pem(&pem))
        .map_err(|_| format!("jwt public_key_file {shown}: not a PEM RSA, EC or Ed25519 public key"))?;
    let algs = usable_algs(&key, allowed, provider);
    if algs.is_empty() {
        let kind = match key.family() {
            AlgorithmFamily::Rsa => "RSA",
            AlgorithmFamily::Ec => "EC",
            AlgorithmFamily::Ed => "Ed25519",
            AlgorithmFamily::Hmac => "HMAC",
        };
        return Err(format!(
            "jwt public_key_file {shown}: an {kind} key, which verifies none of the allowed algorithms \
             (EC keys must be P-256)"
        ));
    }
    Ok(Key { kid: None, algs, key })
}

#[derive(serde::Deserialize)]
struct RawJwks {
    keys: Vec<Value>,
}

/// Read and parse the JWKS file at `path`: keys that are not for signatures or verify none of
/// `allowed` are skipped; a file with no usable key is refused. Errors never quote the file.
fn read_jwks(path: &Path, allowed: &[Algorithm]) -> Result<Vec<Key>, String> {
    let shown = path.display();
    let provider = crypto_provider()?;
    let len = std::fs::metadata(path).map_err(|e| format!("jwt jwks_file {shown}: cannot read: {e}"))?.len();
    if len > MAX_JWKS_BYTES {
        return Err(format!("jwt jwks_file {shown}: {len} bytes, more than {MAX_JWKS_BYTES}"));
    }
    let text = std::fs::read(path).map_err(|e| format!("jwt jwks_file {shown}: cannot read: {e}"))?;
    // serde_json's messages may quote the input (a secret `k`), so report only where it failed.
    let raw: RawJwks = serde_json::from_slice(&text).map_err(|e| {
        format!(
            "jwt jwks_file {shown}: not a JWKS document ({:?} error at line {}, column {})",
            e.classify(),
            e.line(),
            e.column()
        )
    })?;
    let total = raw.keys.len();
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    for (i, value) in raw.keys.into_iter().enumerate() {
        match jwk_key(value, allowed, provider) {
            Ok(key) => keys.push(key),
            Err(why) => skipped.push(format!("key #{i}: {why}")),
        }
    }
    if keys.is_empty() {
        return Err(format!(
            "jwt jwks_file {shown}: no usable key among {total} ({})",
            if skipped.is_empty() { "the keys list is empty".to_string() } else { skipped.join("; ") }
        ));
    }
    if !skipped.is_empty() {
        tracing::warn!(path = %shown, skipped = %skipped.join("; "), "jwt: some JWKS keys are not usable");
    }
    Ok(keys)
}

/// One JWK as a verification key, or why it is not usable.
fn jwk_key(value: Value, allowed: &[Algorithm], provider: &CryptoProvider) -> Result<Key, String> {
    let jwk: Jwk = serde_json::from_value(value).map_err(|_| "not a valid JWK".to_string())?;
    let kid = jwk.common.key_id.clone();
    let named = |why: &str| match &kid {
        Some(kid) => format!("kid {kid:?}: {why}"),
        None => why.to_string(),
    };
    if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
        return Err(named("not a signature key (use)"));
    }
    if let Some(ops) = &jwk.common.key_operations {
        if !ops.contains(&KeyOperations::Verify) {
            return Err(named("key_ops lacks verify"));
        }
    }
    // The curve the algorithm needs: ES256 is P-256 only, EdDSA is Ed25519 only.
    let curve_ok = match &jwk.algorithm {
        AlgorithmParameters::EllipticCurve(p) => p.curve == EllipticCurve::P256,
        AlgorithmParameters::OctetKeyPair(p) => p.curve == EllipticCurve::Ed25519,
        AlgorithmParameters::RSA(_) | AlgorithmParameters::OctetKey(_) => true,
        _ => false,
    };
    if !curve_ok {
        return Err(named("unsupported key type or curve"));
    }
    let key = DecodingKey::from_jwk(&jwk).map_err(|_| named("invalid key parameters"))?;
    let mut algs = usable_algs(&key, allowed, provider);
    if let Some(declared) = jwk.common.key_algorithm {
        let declared = declared.to_string();
        algs.retain(|a| alg_name(*a) == declared);
    }
    if algs.is_empty() {
        return Err(named("verifies none of the allowed algorithms"));
    }
    Ok(Key { kid, algs, key })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;
    use std::time::Duration;

    const SECRET: &str = "weir-test-secret-0123456789abcdef";
    const ISSUER: &str = "https://issuer.test";
    const AUDIENCE: &str = "weir";

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jwt").join(name)
    }

    fn fixture_bytes(name: &str) -> Vec<u8> {
        std::fs::read(fixture(name)).expect("fixture")
    }

    fn now() -> i64 {
        SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).expect("clock").as_secs() as i64
    }

    fn settings() -> JwtSettings {
        JwtSettings {
            algorithms: vec!["HS256".into()],
            secret: Some(SECRET.into()),
            public_key_file: None,
            jwks_file: None,
            issuer: Some(ISSUER.into()),
            audience: Some(AUDIENCE.into()),
            leeway: Duration::from_secs(60),
            tenant_claim: "tenant".into(),
            objects_claim: Some("rooms".into()),
        }
    }

    fn claims() -> Value {
        json!({
            "iss": ISSUER,
            "aud": AUDIENCE,
            "exp": now() + 600,
            "tenant": "acme",
            "rooms": ["lobby", "team-*"],
        })
    }

    fn with(mut base: Value, key: &str, v: Value) -> Value {
        base.as_object_mut().expect("object").insert(key.into(), v);
        base
    }

    fn without(mut base: Value, key: &str) -> Value {
        base.as_object_mut().expect("object").remove(key);
        base
    }

    fn hs256(claims: &Value) -> String {
        sign_hs(claims, SECRET)
    }

    fn sign_hs(claims: &Value, secret: &str) -> String {
        let key = EncodingKey::from_secret(secret.as_bytes()).expect("key");
        encode(&Header::new(Algorithm::HS256), claims, &key).expect("encode")
    }

    fn private_key(alg: Algorithm, file: &str) -> EncodingKey {
        let pem = fixture_bytes(file);
        match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
            Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
            _ => panic!("no such fixture algorithm"),
        }
        .expect("private key fixture")
    }

    fn sign(alg: Algorithm, file: &str, kid: Option<&str>, claims: &Value) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_string);
        encode(&header, claims, &private_key(alg, file)).expect("encode")
    }

    fn b64(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).expect("json"))
    }

    fn good_grant() -> Grant {
        Grant { tenant: "acme".into(), objects: vec!["lobby".into(), "team-*".into()] }
    }

    #[test]
    fn verifier_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<JwtVerifier>();
    }

    #[test]
    fn hs256_good_token_gives_the_grant() {
        let v = JwtVerifier::new(&settings()).expect("verifier");
        assert_eq!(v.verify(&hs256(&claims())), Ok(good_grant()));
    }

    #[test]
    fn absent_objects_claim_means_any_object() {
        let v = JwtVerifier::new(&settings()).expect("verifier");
        let grant = v.verify(&hs256(&without(claims(), "rooms"))).expect("grant");
        assert_eq!(grant, Grant { tenant: "acme".into(), objects: vec![] });
    }

    #[test]
    fn tenant_can_be_sub() {
        let mut s = settings();
        s.tenant_claim = "sub".into();
        s.objects_claim = None;
        let v = JwtVerifier::new(&s).expect("verifier");
        let grant = v.verify(&hs256(&with(claims(), "sub", json!("tenant-7")))).expect("grant");
        assert_eq!(grant, Grant { tenant: "tenant-7".into(), objects: vec![] });
    }

    #[test]
    fn expired_beyond_leeway_is_expired() {
        let v = JwtVerifier::new(&settings()).expect("verifier");
        let t = hs256(&with(claims(), "exp", json!(now() - 120)));
        assert_eq!(v.verify(&t), Err(JwtError::Expired));
    }

    #[test]
    fn expired_within_leeway_is_ok() {
        let v = JwtVerifier::new(&settings()).expect("verifier");
        let t = hs256(&with(claims(), "exp", json!(now() - 20)));
        assert_eq!(v.verify(&t), Ok(good_grant()));
    }

    #[test]
    fn missing_exp_is_malformed() {
        let v = JwtVerifier::new(&settings()).expect("verifier");
        assert_eq!(v.verify(&hs256(&without(claims(), "exp"))), Err(JwtError::Malformed));
        let t = hs256(&with(claims(), "exp", json!("tomorrow")));
        assert_eq!(v.verify(&t), Err(JwtError::Malformed));
    }

    #[test]
    fn nbf_in_the_future_is_not_yet_valid() {
        let v = JwtVerifier::new(&settings()).expect("verifier");
        let t = hs256(&with(claims(), "nbf", json!(now() + 300)));
        assert_eq!(v.verify(&t), Err(JwtError::NotYetValid));
        let t = hs256(&with(claims(), "nbf", json!(now() + 20)));
        assert_eq!(v.verify(&t), Ok(good_grant()), "nbf within the leeway");
    }

    #[test]
    fn wrong_or_missing_audience() {
        let v = JwtVerifier::new(&settings()).expect("verifier");
        let t = hs256(&with(claims(), "aud", json!("someone-else")));
        assert_eq!(v.verify(&t), Err(JwtError::WrongAudience));
        assert_eq!(v.verify(&hs256(&without(claims(), "aud"))), Err(JwtError::WrongAudience));
        let t = hs256(&with(claims(), "aud", json!(["other", AUDIENCE])));
        assert_eq!(v.verify(&t), Ok(good_grant()), "aud list containing ours");
    }

    #[test]
    fn aud_ignored_without_configured_audience() {
        let mut s = settings();
        s.audience = None;
        let v = JwtVerifier::new(&s).expect("verifier");
        let t = hs256(&with(claims(), "aud", json!("anyone")));
        assert_eq!(v.verify(&t), Ok(good_grant()));
    }

    #[test]
    fn wrong_or_missing_issuer() {
        let v = JwtVerifier::new(&settings()).expect("verifier");
        let t = hs256(&with(claims(), "iss", json!("https://evil.test")));
        assert_eq!(v.verify(&t), Err(JwtError::WrongIssuer));
        assert_eq!(v.verify(&hs256(&without(claims(), "iss"))), Err(JwtError::WrongIssuer));
    }

    #[test]
    fn other_secret_is_bad_signature() {
        let v = JwtVerifier::new(&settings()).expect("verifier");
        let t = sign_hs(&claims(), "not-the-secret");
        assert_eq!(v.verify(&t), Err(JwtError::BadSignature));
    }

    #[test]
    fn tampered_payload_is_bad_signature() {
        let v = JwtVerifier::new(&settings()).expect("verifier");
        let t = hs256(&claims());
        let parts: Vec<&str> = t.split('.').collect();
        let forged = format!("{}.{}.{}", parts[0], b64(&with(claims(), "tenant", json!("victim"))), parts[2]);
        assert_eq!(v.verify(&forged), Err(JwtError::BadSignature));
    }

    #[test]
    fn alg_none_is_rejected() {
        let v = JwtVerifier::new(&settings()).expect("verifier");
        for alg in ["none", "None", "NONE"] {
            let header = b64(&json!({"alg": alg, "typ": "JWT"}));
            let token = format!("{header}.{}.", b64(&claims()));
            assert_eq!(v.verify(&token), Err(JwtError::DisallowedAlgorithm), "{alg}");
        }
    }

    #[test]
    fn algorithm_not_configured_is_disallowed() {
        // Classic confusion: an HS256 token "signed" with the RSA public key as the secret.
        let mut s = settings();
        s.algorithms = vec!["RS256".into()];
        s.secret = None;
        s.public_key_file = Some(fixture("rs256_public.pem"));
        let v = JwtVerifier::new(&s).expect("verifier");
        let pem = String::from_utf8(fixture_bytes("rs256_public.pem")).expect("utf8");
        assert_eq!(v.verify(&sign_hs(&claims(), &pem)), Err(JwtError::DisallowedAlgorithm));
        let t = sign(Algorithm::ES256, "es256_private.pem", None, &claims());
        assert_eq!(v.verify(&t), Err(JwtError::DisallowedAlgorithm));
    }

    fn pem_settings(alg: &str, public: &str) -> JwtSettings {
        let mut s = settings();
        s.algorithms = vec![alg.into()];
        s.secret = None;
        s.public_key_file = Some(fixture(public));
        s
    }

    #[test]
    fn rs256_good_token() {
        let v = JwtVerifier::new(&pem_settings("RS256", "rs256_public.pem")).expect("verifier");
        let t = sign(Algorithm::RS256, "rs256_private.pem", None, &claims());
        assert_eq!(v.verify(&t), Ok(good_grant()));
    }

    #[test]
    fn es256_good_token_and_other_key_is_bad_signature() {
        let v = JwtVerifier::new(&pem_settings("ES256", "es256_public.pem")).expect("verifier");
        let t = sign(Algorithm::ES256, "es256_private.pem", None, &claims());
        assert_eq!(v.verify(&t), Ok(good_grant()));
        let other = sign(Algorithm::ES256, "es256_b_private.pem", None, &claims());
        assert_eq!(v.verify(&other), Err(JwtError::BadSignature));
    }

    #[test]
    fn eddsa_good_token() {
        let v = JwtVerifier::new(&pem_settings("EdDSA", "ed25519_public.pem")).expect("verifier");
        let t = sign(Algorithm::EdDSA, "ed25519_private.pem", None, &claims());
        assert_eq!(v.verify(&t), Ok(good_grant()));
    }

    #[test]
    fn default_algorithms_follow_the_keys() {
        let mut s = pem_settings("EdDSA", "ed25519_public.pem");
        s.algorithms = vec![];
        s.secret = Some(SECRET.into());
        let v = JwtVerifier::new(&s).expect("verifier");
        let t = sign(Algorithm::EdDSA, "ed25519_private.pem", None, &claims());
        assert_eq!(v.verify(&t), Ok(good_grant()));
        assert_eq!(v.verify(&hs256(&claims())), Ok(good_grant()));
        let t = sign(Algorithm::RS256, "rs256_private.pem", None, &claims());
        assert_eq!(v.verify(&t), Err(JwtError::DisallowedAlgorithm));
    }

    #[test]
    fn missing_tenant_is_no_tenant() {
        let v = JwtVerifier::new(&settings()).expect("verifier");
        assert_eq!(v.verify(&hs256(&without(claims(), "tenant"))), Err(JwtError::NoTenant));
        for bad in [json!(""), json!(42), json!(["acme"]), json!(null), json!("x".repeat(129)), json!("ac\nme")] {
            let t = hs256(&with(claims(), "tenant", bad.clone()));
            assert_eq!(v.verify(&t), Err(JwtError::NoTenant), "{bad}");
        }
        let t = hs256(&with(claims(), "tenant", json!("x".repeat(128))));
        assert!(v.verify(&t).is_ok(), "128 bytes is allowed");
    }

    #[test]
    fn objects_not_a_list_of_strings_is_bad_objects() {
        let v = JwtVerifier::new(&settings()).expect("verifier");
        for bad in [
            json!("lobby"),
            json!([1, 2]),
            json!(["lobby", null]),
            json!({"a": 1}),
            json!([]),
            json!([""]),
            json!(null),
        ] {
            let t = hs256(&with(claims(), "rooms", bad.clone()));
            assert_eq!(v.verify(&t), Err(JwtError::BadObjects), "{bad}");
        }
    }

    #[test]
    fn malformed_tokens_never_panic() {
        let v = JwtVerifier::new(&settings()).expect("verifier");
        let good = hs256(&claims());
        let parts: Vec<&str> = good.split('.').collect();
        let cases = [
            String::new(),
            "abc".into(),
            "a.b".into(),
            "a.b.c.d".into(),
            "...".into(),
            "!!!.@@@.###".into(),
            format!("{}.{}", parts[0], parts[1]),
            format!("{}.{}.{}.", parts[0], parts[1], parts[2]),
            format!("{}.{}.!!!", parts[0], parts[1]),
            format!("{}.{}.{}", b64(&json!([1])), parts[1], parts[2]),
            format!("{}.{}", "a".repeat(MAX_TOKEN_BYTES), "b"),
        ];
        for t in &cases {
            assert_eq!(v.verify(t), Err(JwtError::Malformed), "{t:.40}");
        }
        // The signature covers the raw text: a mangled payload fails it before being decoded.
        assert_eq!(v.verify(&format!("{}.!!!.{}", parts[0], parts[2])), Err(JwtError::BadSignature));
        assert_eq!(
            v.verify(&format!("{}.{}.{}", parts[0], b64(&json!([1, 2])), parts[2])),
            Err(JwtError::BadSignature)
        );
        // Correctly signed, but the payload is not a JSON object.
        let key = EncodingKey::from_secret(SECRET.as_bytes()).expect("key");
        let t = encode(&Header::new(Algorithm::HS256), &json!([1, 2, 3]), &key).expect("encode");
        assert_eq!(v.verify(&t), Err(JwtError::Malformed));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_input_never_panics(s in "\\PC{0,200}", a in "[A-Za-z0-9_-]{0,60}", b in "[A-Za-z0-9_-]{0,60}") {
            let v = JwtVerifier::new(&settings()).expect("verifier");
            let _ = v.verify(&s);
            let _ = v.verify(&format!("{a}.{b}.{a}"));
            let _ = v.verify(&format!("{}.{b}.{a}", b64(&json!({"alg": "HS256", "kid": a}))));
        }
    }

    fn jwk(alg: Algorithm, private: &str, kid: &str) -> Value {
        let mut jwk = Jwk::from_encoding_key(&private_key(alg, private), alg).expect("jwk");
        jwk.common.key_id = Some(kid.into());
        serde_json::to_value(jwk).expect("json")
    }

    fn write_jwks(path: &Path, keys: &[Value], mtime_offset_secs: i64) {
        std::fs::write(path, serde_json::to_vec(&json!({ "keys": keys })).expect("json")).expect("write");
        let t = filetime::FileTime::from_unix_time(now() + mtime_offset_secs, 0);
        filetime::set_file_mtime(path, t).expect("mtime");
    }

    fn jwks_settings(path: &Path, algs: &[&str]) -> JwtSettings {
        let mut s = settings();
        s.algorithms = algs.iter().map(|a| a.to_string()).collect();
        s.secret = None;
        s.jwks_file = Some(path.to_path_buf());
        s
    }

    #[test]
    fn jwks_selects_by_kid_and_by_single_fit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("jwks.json");
        let keys = [
            jwk(Algorithm::RS256, "rs256_private.pem", "rsa"),
            jwk(Algorithm::ES256, "es256_private.pem", "ec-a"),
            jwk(Algorithm::ES256, "es256_b_private.pem", "ec-b"),
            jwk(Algorithm::EdDSA, "ed25519_private.pem", "ed"),
        ];
        write_jwks(&path, &keys, 0);
        let v = JwtVerifier::new(&jwks_settings(&path, &["RS256", "ES256", "EdDSA"])).expect("verifier");
        let c = claims();
        assert_eq!(v.verify(&sign(Algorithm::RS256, "rs256_private.pem", Some("rsa"), &c)), Ok(good_grant()));
        assert_eq!(v.verify(&sign(Algorithm::ES256, "es256_private.pem", Some("ec-a"), &c)), Ok(good_grant()));
        assert_eq!(v.verify(&sign(Algorithm::ES256, "es256_b_private.pem", Some("ec-b"), &c)), Ok(good_grant()));
        assert_eq!(v.verify(&sign(Algorithm::EdDSA, "ed25519_private.pem", Some("ed"), &c)), Ok(good_grant()));
        // No kid: exactly one RSA key fits RS256; two EC keys fit ES256.
        assert_eq!(v.verify(&sign(Algorithm::RS256, "rs256_private.pem", None, &c)), Ok(good_grant()));
        assert_eq!(v.verify(&sign(Algorithm::ES256, "es256_private.pem", None, &c)), Err(JwtError::UnknownKey));
        // kid names a key of another type, or no key at all.
        assert_eq!(v.verify(&sign(Algorithm::ES256, "es256_private.pem", Some("rsa"), &c)), Err(JwtError::UnknownKey));
        assert_eq!(v.verify(&sign(Algorithm::ES256, "es256_private.pem", Some("nope"), &c)), Err(JwtError::UnknownKey));
        // Right kid, wrong private key.
        assert_eq!(
            v.verify(&sign(Algorithm::ES256, "es256_b_private.pem", Some("ec-a"), &c)),
            Err(JwtError::BadSignature)
        );
    }

    #[test]
    fn jwks_rotation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("jwks.json");
        write_jwks(&path, &[jwk(Algorithm::ES256, "es256_private.pem", "a")], -100);
        let v = JwtVerifier::new(&jwks_settings(&path, &["ES256"])).expect("verifier");
        let by_a = sign(Algorithm::ES256, "es256_private.pem", Some("a"), &claims());
        let by_b = sign(Algorithm::ES256, "es256_b_private.pem", Some("b"), &claims());
        assert_eq!(v.verify(&by_a), Ok(good_grant()));
        assert_eq!(v.verify(&by_b), Err(JwtError::UnknownKey));

        write_jwks(&path, &[jwk(Algorithm::ES256, "es256_b_private.pem", "b")], -50);
        // Until the recheck interval has passed, the file is not looked at.
        v.jwks.as_ref().expect("jwks").next_check_ms.store(u64::MAX, Ordering::Relaxed);
        assert_eq!(v.verify(&by_a), Ok(good_grant()));
        assert_eq!(v.verify(&by_b), Err(JwtError::UnknownKey));
        v.force_jwks_recheck();
        assert_eq!(v.verify(&by_b), Ok(good_grant()));
        assert_eq!(v.verify(&by_a), Err(JwtError::UnknownKey));

        // An invalid rewrite keeps key B.
        std::fs::write(&path, b"{\"keys\": [").expect("write");
        filetime::set_file_mtime(&path, filetime::FileTime::from_unix_time(now(), 0)).expect("mtime");
        v.force_jwks_recheck();
        assert_eq!(v.verify(&by_b), Ok(good_grant()));
        // So does a removed file.
        std::fs::remove_file(&path).expect("remove");
        v.force_jwks_recheck();
        assert_eq!(v.verify(&by_b), Ok(good_grant()));
        // And it comes back with key A.
        write_jwks(&path, &[jwk(Algorithm::ES256, "es256_private.pem", "a")], 10);
        v.force_jwks_recheck();
        assert_eq!(v.verify(&by_a), Ok(good_grant()));
        assert_eq!(v.verify(&by_b), Err(JwtError::UnknownKey));
    }

    #[test]
    fn jwks_skips_unusable_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("jwks.json");
        let mut enc = jwk(Algorithm::ES256, "es256_b_private.pem", "enc");
        enc["use"] = json!("enc");
        let keys = [
            json!({"kty": "weird", "kid": "x"}),
            json!({"kty": "EC", "crv": "P-256", "x": "!!", "y": "??", "kid": "bad"}),
            enc,
            jwk(Algorithm::ES256, "es256_private.pem", "a"),
        ];
        write_jwks(&path, &keys, 0);
        let v = JwtVerifier::new(&jwks_settings(&path, &["ES256"])).expect("verifier");
        let c = claims();
        assert_eq!(v.verify(&sign(Algorithm::ES256, "es256_private.pem", Some("a"), &c)), Ok(good_grant()));
        assert_eq!(
            v.verify(&sign(Algorithm::ES256, "es256_b_private.pem", Some("enc"), &c)),
            Err(JwtError::UnknownKey)
        );
        // Only one usable key fits: a token without kid uses it.
        assert_eq!(v.verify(&sign(Algorithm::ES256, "es256_private.pem", None, &c)), Ok(good_grant()));
    }

    #[test]
    fn jwks_hs256_oct_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("jwks.json");
        let k = URL_SAFE_NO_PAD.encode(SECRET);
        write_jwks(&path, &[json!({"kty": "oct", "k": k, "kid": "h", "alg": "HS256"})], 0);
        let v = JwtVerifier::new(&jwks_settings(&path, &["HS256"])).expect("verifier");
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("h".into());
        let key = EncodingKey::from_secret(SECRET.as_bytes()).expect("key");
        let t = encode(&header, &claims(), &key).expect("encode");
        assert_eq!(v.verify(&t), Ok(good_grant()));
    }

    #[test]
    fn new_reports_key_problems() {
        let err = |s: JwtSettings| JwtVerifier::new(&s).expect_err("must fail");

        let mut s = settings();
        s.algorithms = vec!["HS512".into()];
        assert!(err(s).contains("HS512"));

        let mut s = settings();
        s.secret = None;
        assert!(err(s).contains("no key configured"));

        let mut s = settings();
        s.secret = Some(String::new());
        assert!(err(s).contains("jwt secret"));

        let mut s = settings();
        s.algorithms = vec!["RS256".into()];
        assert!(err(s).contains("HS256 is not in algorithms"));

        let s = pem_settings("RS256", "missing.pem");
        let e = err(s);
        assert!(e.contains("public_key_file") && e.contains("missing.pem"), "{e}");

        // Not a PEM key; a private key; an EC key does not do RS256.
        let e = err(pem_settings("ES256", "README.md"));
        assert!(e.contains("not a PEM"), "{e}");
        let e = err(pem_settings("RS256", "rs256_private.pem"));
        assert!(e.contains("a private key"), "{e}");
        let e = err(pem_settings("RS256", "es256_public.pem"));
        assert!(e.contains("verifies none"), "{e}");

        let mut s = pem_settings("RS256", "rs256_public.pem");
        s.algorithms.push("EdDSA".into());
        assert!(err(s).contains("EdDSA is allowed but no configured key"));

        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, format!("{{\"keys\": [{{\"kty\": \"oct\", \"k\": \"{SECRET}\"")).expect("write");
        let e = err(jwks_settings(&path, &["HS256"]));
        assert!(e.contains("jwks_file") && e.contains("line 1"), "{e}");
        assert!(!e.contains(SECRET), "the error must not quote the file");
        std::fs::write(&path, "{\"keys\": []}").expect("write");
        assert!(err(jwks_settings(&path, &["HS256"])).contains("no usable key"));
        let e = err(jwks_settings(&dir.path().join("absent.json"), &["ES256"]));
        assert!(e.contains("absent.json"), "{e}");
    }

    #[test]
    fn error_labels() {
        let all = [
            (JwtError::Malformed, "malformed"),
            (JwtError::UnknownKey, "unknown_key"),
            (JwtError::BadSignature, "bad_signature"),
            (JwtError::Expired, "expired"),
            (JwtError::NotYetValid, "not_yet_valid"),
            (JwtError::WrongIssuer, "wrong_issuer"),
            (JwtError::WrongAudience, "wrong_audience"),
            (JwtError::NoTenant, "no_tenant"),
            (JwtError::BadObjects, "bad_objects"),
            (JwtError::DisallowedAlgorithm, "disallowed_algorithm"),
        ];
        for (e, label) in all {
            assert_eq!(e.as_str(), label);
            assert_eq!(e.to_string(), label);
        }
    }

    #[test]
    fn debug_does_not_print_the_secret() {
        let v = JwtVerifier::new(&settings()).expect("verifier");
        assert!(!format!("{v:?}").contains(SECRET));
    }
}
