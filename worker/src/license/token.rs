//! The license token parser and verifier: a pure function of `(token, public key, now)`.
//!
//! This file owns the rules of README "License" for the token itself and nothing else: no files, no
//! environment, no logging. It names only external crates (never `crate::`), so the fuzz target
//! in `fuzz/` compiles this exact source without the rest of the worker.
//!
//! The order of checks is deliberate. Cheap structural checks run first (length cap, alphabet,
//! segment count), so a hostile 1 MiB token costs one linear scan and no allocation. The header
//! is decoded and checked before any signature work, and the claims are parsed only after the
//! signature over the exact `header.payload` bytes verified, so untrusted JSON reaches the claim
//! parser only when the vendor signed it. Errors are classified consistently:
//!
//! - structure, encoding, JSON and claim types → [`LicenseError::Malformed`]
//! - algorithm, forbidden header, signature, not-yet-valid → [`LicenseError::Invalid`]
//! - past `exp` (beyond the leeway) → [`LicenseError::Expired`]
//!
//! No message ever contains the token or a segment of it.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Clock leeway in seconds applied to `exp`, `nbf` and `iat`. Sixty seconds is what
/// `jsonwebtoken` defaults to: enough for replicas whose clocks drift a little, far too small
/// to ride out an expired license.
pub const LEEWAY_SECS: i64 = 60;

/// Longest token we look at. A real license is a few hundred bytes; the cap is checked before
/// any decoding so an oversized token is rejected in constant memory.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Largest timestamp accepted in a claim: 9999-12-31T23:59:59Z. Anything larger (or negative)
/// is malformed, which keeps every date printable and every subtraction far from overflow.
pub const MAX_TIMESTAMP: i64 = 253_402_300_799;

/// `alg` values we accept: RFC 8037's `EdDSA` and its RFC 9864 fully-specified name `Ed25519`.
const ACCEPTED_ALGS: &[&str] = &["EdDSA", "Ed25519"];

/// `typ` values we accept when a `typ` header is present.
const ACCEPTED_TYPS: &[&str] = &["JWT", "lettuce-license+jwt"];

/// Why a license was refused. `Display` starts with the documented name; it never includes the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LicenseError {
    /// `LETTUCE_SELF_HOSTED` is on and no token was given.
    Missing,
    /// The token is not a well-formed compact JWT with the claims we need.
    Malformed(String),
    /// The token is well formed but not acceptable: algorithm, header, signature or `nbf`/`iat`.
    Invalid(String),
    /// The token was valid and its `exp` has passed (by more than the leeway) at `now`.
    Expired { exp: i64, now: i64 },
    /// The public key could not be read or is not a usable Ed25519 key.
    PublicKeyError(String),
}

impl fmt::Display for LicenseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LicenseError::Missing => f.write_str(
                "LicenseMissing: LETTUCE_LICENSE_KEY is required when LETTUCE_SELF_HOSTED=1",
            ),
            LicenseError::Malformed(why) => write!(f, "LicenseMalformed: {why}"),
            LicenseError::Invalid(why) => write!(f, "LicenseInvalid: {why}"),
            LicenseError::Expired { exp, now } => {
                let ago = now.saturating_sub(*exp).div_euclid(86_400);
                write!(
                    f,
                    "LicenseExpired: the license expired on {} ({ago} days ago); ask Lettuce sales for a renewal",
                    format_unix(*exp)
                )
            }
            LicenseError::PublicKeyError(why) => write!(f, "LicensePublicKeyError: {why}"),
        }
    }
}

impl std::error::Error for LicenseError {}

/// The claims of a verified license.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The customer (installation) the license was issued to.
    pub sub: String,
    /// The license id.
    pub jti: String,
    /// When the license was issued (unix seconds).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub iat: Option<i64>,
    /// When the license stops being valid (unix seconds). Required.
    pub exp: i64,
    /// When the license starts being valid (unix seconds).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub nbf: Option<i64>,
    /// Seat cap; `None` is unlimited.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub seats: Option<u32>,
    /// Repository cap; `None` is unlimited.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub repos: Option<u32>,
    /// Whether the daily heartbeat is required. Absent means `true`: only a license issued as
    /// offline-capable turns it off.
    #[serde(default = "default_true", deserialize_with = "strict_bool")]
    pub telemetry_required: bool,
}

fn default_true() -> bool {
    true
}

/// A claim that is present must have its type: `null` is not "absent". (`Option<T>`'s own
/// deserializer would quietly turn `"seats": null` into no cap.)
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// `telemetry_required` must be a JSON bool; serde's `bool` already refuses `"false"`, `0` and
/// `null`, this wrapper only exists to say so next to the field.
fn strict_bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    bool::deserialize(d)
}

/// The JOSE header, typed so duplicate members are an error (serde's derived struct visitor
/// rejects a repeated field; a `Map` would silently keep the last one).
#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default, deserialize_with = "present")]
    typ: Option<String>,
    // Headers we refuse whenever they are present, whatever their value (even `null`).
    #[serde(default, deserialize_with = "present")]
    crit: Option<IgnoredAny>,
    #[serde(default, deserialize_with = "present")]
    jwk: Option<IgnoredAny>,
    #[serde(default, deserialize_with = "present")]
    jku: Option<IgnoredAny>,
    #[serde(default, deserialize_with = "present")]
    x5u: Option<IgnoredAny>,
    #[serde(default, deserialize_with = "present")]
    x5c: Option<IgnoredAny>,
}

/// Verifies a compact JWT license with `key` at time `now` and returns its claims.
///
/// Pure: no I/O, no clock, no logging. See the module docs for the order of checks.
pub fn verify(
    token: &str,
    key: &VerifyingKey,
    now: OffsetDateTime,
) -> Result<Claims, LicenseError> {
    let bytes = token.as_bytes();
    if bytes.len() > MAX_TOKEN_LEN {
        return Err(malformed(format!(
            "token is {} bytes, longer than the {MAX_TOKEN_LEN}-byte limit",
            bytes.len()
        )));
    }
    if let Some((at, &b)) = bytes
        .iter()
        .enumerate()
        .find(|(_, b)| !(b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')))
    {
        let what = match b {
            b'=' => "'=' padding",
            b'+' | b'/' => "a standard-alphabet base64 character",
            b if b.is_ascii_whitespace() => "whitespace",
            _ => "a character outside base64url",
        };
        return Err(malformed(format!("token contains {what} at byte {at}")));
    }
    let segments: Vec<&str> = token.split('.').collect();
    if segments.len() != 3 {
        return Err(malformed(format!(
            "a compact JWT has 3 segments separated by '.', this token has {}",
            segments.len()
        )));
    }
    let (header_b64, payload_b64, signature_b64) = (segments[0], segments[1], segments[2]);
    if header_b64.is_empty() {
        return Err(malformed("the header segment is empty"));
    }
    let header_json = decode_segment("header", header_b64)?;
    let header: Header = parse_object(&header_json)
        .map_err(|e| malformed(format!("header is not the expected JSON object: {e}")))?;
    // The header is judged before the other segments are even looked at, so the classic
    // `{"alg":"none"}` token with an empty signature is reported as the algorithm it is.
    check_header(&header)?;
    for (name, segment) in [("payload", payload_b64), ("signature", signature_b64)] {
        if segment.is_empty() {
            return Err(malformed(format!("the {name} segment is empty")));
        }
    }

    // Strict decoding of the payload happens before the signature check, so an encoding defect
    // is reported as such even when the signature would also fail.
    let payload_json = decode_segment("payload", payload_b64)?;
    let signature_bytes = decode_segment("signature", signature_b64)?;
    let signature = Signature::from_slice(&signature_bytes).map_err(|_| {
        invalid(format!(
            "an Ed25519 signature is 64 bytes, this one is {}",
            signature_bytes.len()
        ))
    })?;
    // The signing input is the exact bytes that were sent: `header.payload`, never JSON we
    // re-serialized.
    let signing_input = &bytes[..header_b64.len() + 1 + payload_b64.len()];
    key.verify_strict(signing_input, &signature)
        .map_err(|_| invalid("the signature does not verify with the configured public key"))?;

    let claims: Claims =
        parse_object(&payload_json).map_err(|e| malformed(format!("claims are not valid: {e}")))?;
    check_claims(&claims, now.unix_timestamp())?;
    Ok(claims)
}

/// Whole days from `now` until `exp`, rounded down; negative once expired.
pub fn days_left(claims: &Claims, now: OffsetDateTime) -> i64 {
    claims
        .exp
        .saturating_sub(now.unix_timestamp())
        .div_euclid(86_400)
}

/// A unix timestamp as RFC 3339 (UTC), or the raw number when it is out of range.
pub fn format_unix(ts: i64) -> String {
    OffsetDateTime::from_unix_timestamp(ts)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("unix time {ts}"))
}

fn decode_segment(name: &str, segment: &str) -> Result<Vec<u8>, LicenseError> {
    URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|e| malformed(format!("the {name} is not strict unpadded base64url: {e}")))
}

/// Parses a JSON object into `T`. serde's derived structs also accept a JSON *array* of the
/// field values in order (`["EdDSA"]` would be a header), so the top level is checked first.
fn parse_object<'a, T: Deserialize<'a>>(json: &'a [u8]) -> Result<T, String> {
    let first = json
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if first != Some(&b'{') {
        return Err("expected a JSON object".into());
    }
    serde_json::from_slice(json).map_err(|e| e.to_string())
}

fn check_header(header: &Header) -> Result<(), LicenseError> {
    if !ACCEPTED_ALGS.contains(&header.alg.as_str()) {
        // The value is attacker-chosen; show it only when short and printable.
        let shown = if header.alg.len() <= 16 && header.alg.chars().all(|c| c.is_ascii_graphic()) {
            format!("{:?}", header.alg)
        } else {
            "an unsupported value".to_string()
        };
        return Err(invalid(format!(
            "alg {shown} is not accepted; only EdDSA (Ed25519) is"
        )));
    }
    for (name, present) in [
        ("crit", header.crit.is_some()),
        ("jwk", header.jwk.is_some()),
        ("jku", header.jku.is_some()),
        ("x5u", header.x5u.is_some()),
        ("x5c", header.x5c.is_some()),
    ] {
        if present {
            return Err(invalid(format!("the {name} header is not accepted")));
        }
    }
    if let Some(typ) = &header.typ
        && !ACCEPTED_TYPS.contains(&typ.as_str())
    {
        return Err(invalid(
            "typ must be JWT or lettuce-license+jwt when present",
        ));
    }
    Ok(())
}

fn check_claims(claims: &Claims, now: i64) -> Result<(), LicenseError> {
    for (name, value) in [
        ("exp", Some(claims.exp)),
        ("nbf", claims.nbf),
        ("iat", claims.iat),
    ] {
        if let Some(v) = value
            && !(0..=MAX_TIMESTAMP).contains(&v)
        {
            return Err(malformed(format!(
                "{name} is out of range (0 to {MAX_TIMESTAMP} unix seconds)"
            )));
        }
    }
    if claims.sub.trim().is_empty() {
        return Err(malformed("sub is empty"));
    }
    if claims.jti.trim().is_empty() {
        return Err(malformed("jti is empty"));
    }
    // Saturating arithmetic: `now` is the caller's, and a test or fuzzer may pass any instant.
    if let Some(iat) = claims.iat
        && iat > now.saturating_add(LEEWAY_SECS)
    {
        return Err(invalid(format!(
            "iat {} is in the future; check this machine's clock",
            format_unix(iat)
        )));
    }
    if let Some(nbf) = claims.nbf
        && nbf > now.saturating_add(LEEWAY_SECS)
    {
        return Err(invalid(format!(
            "the license is not valid before {}",
            format_unix(nbf)
        )));
    }
    if now > claims.exp.saturating_add(LEEWAY_SECS) {
        return Err(LicenseError::Expired {
            exp: claims.exp,
            now,
        });
    }
    Ok(())
}

fn malformed(why: impl Into<String>) -> LicenseError {
    LicenseError::Malformed(why.into())
}

fn invalid(why: impl Into<String>) -> LicenseError {
    LicenseError::Invalid(why.into())
}

/// Signs `claims` as a compact JWT with header `{"alg":"EdDSA","typ":"JWT"}`: the vendor's
/// `worker license mint` and tests use it.
pub fn sign(claims: &Claims, key: &SigningKey) -> String {
    let payload = serde_json::to_vec(claims).expect("claims serialize to JSON");
    sign_raw(br#"{"alg":"EdDSA","typ":"JWT"}"#, &payload, key)
}

/// Signs arbitrary header and payload bytes (tests and the fuzz target build hostile tokens
/// with it).
pub fn sign_raw(header: &[u8], payload: &[u8], key: &SigningKey) -> String {
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let signature = key.sign(signing_input.as_bytes());
    format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature.to_bytes())
    )
}
