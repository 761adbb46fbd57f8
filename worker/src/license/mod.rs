//! Gate 2: the signed license (README "License"). Owns reading the Ed25519 public key, the boot
//! decision and the last-good cache file; the token rules themselves live in [`token`], a pure
//! function of `(token, public key, now)` that the fuzz target compiles on its own.
//!
//! The cache (`{claims, verified_at, token_sha256}`) only *informs* — the API's status page,
//! `worker license inspect`, the clock high-water mark. No decision here ever reads claims from
//! it: every boot verifies the token again. It never holds the token, only its SHA-256.
//!
//! What this module must not do: print (only `cli/` prints), log the token or any part of it, or
//! fail boot for a problem that only affects the cache.

pub mod entitlements;
mod token;
pub mod watch;

use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::{DecodePrivateKey as _, DecodePublicKey as _, EncodePublicKey as _};
use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::config::Config;

pub use token::{
    Claims, LEEWAY_SECS, LicenseError, MAX_TIMESTAMP, MAX_TOKEN_LEN, days_left, format_unix, sign,
    sign_raw, verify,
};

/// Fewer whole days left than this is a WARN at boot.
pub const EXPIRY_WARN_DAYS: i64 = 14;

/// A clock this far behind the cache's `verified_at` high-water mark is a WARN: someone may have
/// turned the clock back to stretch a license, or NTP is broken. One hour leaves room for
/// replicas that share a cache volume and disagree by a few minutes.
pub const CLOCK_BEHIND_WARN_SECS: i64 = 3600;

/// The largest public-key file we read; a PEM public key is about 113 bytes.
const MAX_KEY_FILE_LEN: u64 = 64 * 1024;

/// A license that passed the gate.
#[derive(Debug, Clone)]
pub struct License {
    pub claims: Claims,
    /// Whole days until `exp` at boot.
    pub days_left: i64,
    /// Conditions an operator should see (near expiry, clock behind, an implausible or
    /// unwritable cache). `gate` logs each as a WARN; `check-config` reports each as a check.
    pub warnings: Vec<Warning>,
    /// The clock high-water mark [`record`] writes to the cache: the later of now and the
    /// cache's plausible `verified_at`.
    pub high_water: OffsetDateTime,
}

/// One thing about a valid license an operator should see, under a stable check id
/// (`license.expiry`, `license.clock`, `license.cache`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub id: &'static str,
    pub message: String,
}

impl std::ops::Deref for Warning {
    type Target = str;
    fn deref(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The one "expires soon" rule: fewer than [`EXPIRY_WARN_DAYS`] whole days left. The boot
/// gate, the daily watch and `check-config` all ask this.
pub fn expiring_soon(days_left: i64) -> bool {
    days_left < EXPIRY_WARN_DAYS
}

/// The cache file's content. `verified_at` is also the clock high-water mark: it never moves
/// backwards, so a clock turned back stays visible on every later boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheFile {
    pub claims: Claims,
    #[serde(with = "time::serde::rfc3339")]
    pub verified_at: OffsetDateTime,
    /// Lower-case hex SHA-256 of the token, so the API can tell which token was verified.
    pub token_sha256: String,
}

/// Reads the Ed25519 public key from `source`: inline PEM text (starting with `-----BEGIN`,
/// literal `\n` sequences accepted) or a path to a PEM file. The key must be SPKI
/// (`BEGIN PUBLIC KEY`) and not of small order. Errors name the source, never the key text.
pub fn load_public_key(source: &str) -> Result<VerifyingKey, LicenseError> {
    let trimmed = source.trim();
    if trimmed.is_empty() {
        return Err(LicenseError::PublicKeyError(
            "LETTUCE_LICENSE_PUBLIC_KEY is empty; set it to the path of public.pem or its PEM text"
                .into(),
        ));
    }
    let (pem, origin) = if trimmed.starts_with("-----BEGIN") {
        (
            trimmed.replace("\\n", "\n"),
            "the inline PEM in LETTUCE_LICENSE_PUBLIC_KEY".to_string(),
        )
    } else {
        let origin = format!("public key file {trimmed}");
        (read_key_file(Path::new(trimmed), &origin)?, origin)
    };
    parse_public_key_pem(&pem)
        .map_err(|why| LicenseError::PublicKeyError(format!("{origin}: {why}")))
}

fn read_key_file(path: &Path, origin: &str) -> Result<String, LicenseError> {
    let fail = |why: String| LicenseError::PublicKeyError(format!("{origin}: {why}"));
    let meta = fs::metadata(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
    if !meta.is_file() {
        return Err(fail("is not a regular file".into()));
    }
    if meta.len() > MAX_KEY_FILE_LEN {
        return Err(fail(format!(
            "is {} bytes, too large for a PEM public key",
            meta.len()
        )));
    }
    let bytes = fs::read(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
    String::from_utf8(bytes).map_err(|_| fail("is not PEM text".into()))
}

fn parse_public_key_pem(pem: &str) -> Result<VerifyingKey, String> {
    if pem.contains("PRIVATE KEY-----") {
        return Err("holds a private key; the worker needs the public key (public.pem)".into());
    }
    let key = VerifyingKey::from_public_key_pem(pem).map_err(|e| {
        format!("not an Ed25519 public key in SPKI PEM (-----BEGIN PUBLIC KEY-----): {e}")
    })?;
    if key.is_weak() {
        return Err("is a weak (small-order) Ed25519 key".into());
    }
    Ok(key)
}

/// The public key as SPKI PEM (`public.pem`).
pub fn public_key_pem(key: &VerifyingKey) -> String {
    key.to_public_key_pem(Default::default())
        .expect("an Ed25519 key always encodes as SPKI")
}

/// A fresh signing key from the operating system's random source.
pub fn generate_signing_key() -> SigningKey {
    use rand::TryRngCore as _;
    let mut seed = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut seed)
        .expect("the operating system's random source works");
    SigningKey::from_bytes(&seed)
}

/// Reads a PKCS#8 PEM private key (`private.pem` from `worker license keygen`).
pub fn load_signing_key(path: &Path) -> Result<SigningKey, String> {
    let pem = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    SigningKey::from_pkcs8_pem(&pem)
        .map_err(|e| format!("{}: not an Ed25519 PKCS#8 private key: {e}", path.display()))
}

/// Lower-case hex SHA-256 of the token.
pub fn token_sha256(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Writes the cache file atomically (a temporary file in the same directory, fsync, rename),
/// mode 0600. The token itself is never written, only its SHA-256.
pub fn write_cache(
    path: &Path,
    claims: &Claims,
    token: &str,
    now: OffsetDateTime,
) -> io::Result<()> {
    let content = CacheFile {
        claims: claims.clone(),
        verified_at: now,
        token_sha256: token_sha256(token),
    };
    let json = serde_json::to_vec_pretty(&content).map_err(io::Error::other)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir)?;
    replace_file(path, &json, 0o600)
}

/// Writes `bytes` to a new temporary file created with `mode` beside `path` (never readable by
/// others, not even for a moment), syncs it and renames it over `path`. The rename replaces
/// whatever `path` is — a symlink included — and never writes through it. Used for the license
/// cache and by `license keygen`.
pub fn replace_file(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name"))?;
    let tmp = path.with_file_name(format!(
        ".{}.tmp-{}-{:08x}",
        name.to_string_lossy(),
        std::process::id(),
        rand::random::<u32>()
    ));
    let written = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask can only clear bits, but say exactly what we mean.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// Reads the cache file, if there is a readable one. Used only for the clock high-water mark
/// and for display; never for a decision about the license.
pub fn read_cache(path: &Path) -> Option<CacheFile> {
    use std::io::Read as _;
    // O_NONBLOCK: a FIFO at the cache path returns at once instead of hanging boot; anything but
    // a regular file, or a file over 64 KiB (a real cache is a few hundred bytes), is ignored.
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() || meta.len() > MAX_CACHE_FILE_LEN {
        return None;
    }
    let mut bytes = Vec::new();
    (&file)
        .take(MAX_CACHE_FILE_LEN + 1)
        .read_to_end(&mut bytes)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The largest license cache file read.
const MAX_CACHE_FILE_LEN: u64 = 64 * 1024;

/// Gate 2's findings, without side effects: verifies the configured license at `now` against
/// the pinned key, reads (never writes) the cache for the clock high-water mark, and collects
/// warnings. `None` when the worker is not self-hosted. `worker run` then calls [`record`];
/// `check-config` renders the same findings.
pub fn evaluate(config: &Config, now: OffsetDateTime) -> Result<Option<License>, LicenseError> {
    if !config.self_hosted {
        return Ok(None);
    }
    let token = match &config.license_key {
        Some(t) if !t.expose().trim().is_empty() => t.expose().trim(),
        _ => return Err(LicenseError::Missing),
    };
    let key = load_public_key(&config.license_public_key)?;
    let claims = verify(token, &key, now)?;
    let days_left = days_left(&claims, now);
    let mut warnings = Vec::new();
    if expiring_soon(days_left) {
        warnings.push(Warning {
            id: "license.expiry",
            message: format!(
                "the license expires on {} ({days_left} days left); ask Lettuce sales for a renewal",
                format_unix(claims.exp)
            ),
        });
    }
    let mut high_water = now;
    // A mark later than this license's expiry cannot come from a verification of it (one past
    // `exp` fails): it is implausible (a hand-edited or corrupted cache) and is ignored, so it
    // cannot stick as the high-water mark forever.
    let previous = read_cache(&config.license_cache_path).filter(|p| {
        let plausible = p.verified_at.unix_timestamp() <= claims.exp;
        if !plausible {
            warnings.push(Warning {
                id: "license.cache",
                message: format!(
                    "ignoring the implausible verification time {} in {} (after this license's expiry)",
                    p.verified_at.format(&Rfc3339).unwrap_or_default(),
                    config.license_cache_path.display()
                ),
            });
        }
        plausible
    });
    if let Some(previous) = previous {
        let behind = (previous.verified_at - now).whole_seconds();
        if behind > CLOCK_BEHIND_WARN_SECS {
            warnings.push(Warning {
                id: "license.clock",
                message: format!(
                    "the system clock ({}) is {} behind the last license verification ({}) recorded in {}; check NTP",
                    now.format(&Rfc3339).unwrap_or_default(),
                    human_duration(behind),
                    previous.verified_at.format(&Rfc3339).unwrap_or_default(),
                    config.license_cache_path.display()
                ),
            });
        }
        high_water = high_water.max(previous.verified_at);
    }
    Ok(Some(License {
        claims,
        days_left,
        warnings,
        high_water,
    }))
}

/// The gate's one side effect, which `worker run` takes after [`evaluate`]: the cache records
/// the verified token and the clock high-water mark. A cache that cannot be written is a
/// warning on the license, never a refusal.
pub fn record(config: &Config, license: &mut License) {
    let Some(token) = config.license_key.as_ref().map(|t| t.expose().trim()) else {
        return;
    };
    if let Err(e) = write_cache(
        &config.license_cache_path,
        &license.claims,
        token,
        license.high_water,
    ) {
        license.warnings.push(Warning {
            id: "license.cache",
            message: format!(
                "cannot write the license cache {} (LETTUCE_LICENSE_CACHE_PATH): {e}; the license is valid and the worker continues",
                config.license_cache_path.display()
            ),
        });
    }
}

/// [`evaluate`] then [`record`]: gate 2 as `worker run` takes it, without the log lines.
pub fn evaluate_and_record(
    config: &Config,
    now: OffsetDateTime,
) -> Result<Option<License>, LicenseError> {
    let mut license = evaluate(config, now)?;
    if let Some(l) = license.as_mut() {
        record(config, l);
    }
    Ok(license)
}

/// Gate 2 for `worker run`: [`evaluate_and_record`], then each warning logged as a WARN and the
/// license (never the token) at INFO.
pub fn gate(config: &Config, now: OffsetDateTime) -> Result<Option<License>, LicenseError> {
    let license = evaluate_and_record(config, now)?;
    if let Some(l) = &license {
        tracing::info!(
            license.sub = %l.claims.sub,
            license.jti = %l.claims.jti,
            license.exp = %format_unix(l.claims.exp),
            license.days_left = l.days_left,
            "license verified"
        );
        for w in &l.warnings {
            tracing::warn!("{w}");
        }
    }
    Ok(license)
}

fn human_duration(secs: i64) -> String {
    if secs >= 86_400 {
        format!("{} days", secs / 86_400)
    } else if secs >= 3600 {
        format!("{} hours", secs / 3600)
    } else {
        format!("{secs} seconds")
    }
}

#[cfg(test)]
mod tests;
