//! `worker init`: the `lettuce-init` quick start (README "Install with Docker").
//!
//! It reads the license key from a file, stdin or `LETTUCE_LICENSE_KEY` (an argument would show
//! in `ps`; `--license-key K` still works), verifies it offline, then writes a ready-to-run
//! directory: `.env` (mode 0600, fresh random secrets), `docker-compose.yml` (the stack from
//! `compose/` with the worker image pinned to `--version`, by default this binary's own
//! release), `otel-collector.yaml` (for the optional observability profile), `public.pem` and
//! a `README.md` with the exact next commands.
//!
//! Nothing is written unless every check passed: the key verifies, and no output file exists
//! (or `--force` was given, in which case each existing file that would change is first renamed
//! to `<name>.bak-<UTC timestamp>`). Each file is written to a temporary name and renamed into
//! place, so an interrupted run never leaves a half-written `.env`. The license key and the
//! generated secrets are never printed: stdout lists file names and the next commands only.
//!
//! The text of the files is made in `render.rs`; `write.rs` puts them in place.

mod render;
mod write;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::VerifyingKey;
use rand::TryRngCore as _;
use time::OffsetDateTime;

use super::fail;
use crate::config::Env;
use crate::license::{self, LicenseError};

use render::{next_commands, pin_compose, render_env, render_readme};
use write::{backup_path, is_env_backup, read_existing, timestamp, write_atomically};

/// The vendor's Ed25519 public key, compiled in. This copy is a DEV key; release builds replace
/// `worker/assets/public.pem` with the production key before compiling.
pub const BUNDLED_PUBLIC_KEY: &str = include_str!("../../../assets/public.pem");

/// The compose stack, compiled in so `init` works from the binary alone.
const COMPOSE_TEMPLATE: &str = include_str!("../../../../compose/docker-compose.yml");

/// The collector configuration the compose file mounts for the `observability` profile.
const OTEL_COLLECTOR_CONFIG: &str = include_str!("../../../../compose/otel-collector.yaml");

/// The image reference in the compose template that `init` pins to `--version`.
const IMAGE_TEMPLATE: &str =
    "ghcr.io/uselettuce/worker:${LETTUCE_VERSION:?set LETTUCE_VERSION in .env}";

/// Random bytes per generated secret: 32 bytes are 43 characters of unpadded base64url.
const SECRET_BYTES: usize = 32;

/// The secrets `init` generates, each fresh and independent.
const SECRET_NAMES: &[&str] = &[
    "POSTGRES_PASSWORD",
    "CODEWAZE_ADMIN_TOKEN",
    "JWT_SIGNING_KEY",
    "MINIO_ROOT_PASSWORD",
];

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The license key (JWT) from Lettuce sales; `-` reads it from stdin. An argument shows in
    /// `ps` and shell history: prefer --license-key-file, stdin, or LETTUCE_LICENSE_KEY in the
    /// environment, which is read when neither option is given
    #[arg(long, value_name = "K", conflicts_with = "license_key_file")]
    pub license_key: Option<String>,
    /// Read the license key from this file (`-`: stdin)
    #[arg(long, value_name = "PATH")]
    pub license_key_file: Option<PathBuf>,
    /// The host name Lettuce is served on, e.g. lettuce.example.com
    #[arg(long, value_name = "D")]
    pub domain: String,
    /// The release to install: the worker image tag (default: this binary's own version)
    #[arg(long, value_name = "V", default_value = crate::VERSION)]
    pub version: String,
    /// Verify with this Ed25519 public key (a path or inline PEM) instead of the bundled one
    #[arg(long, value_name = "PEM", allow_hyphen_values = true)]
    pub public_key: Option<String>,
    /// Directory to write into (created when missing)
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub out: PathBuf,
    /// Overwrite existing files, keeping each one as <name>.bak-<timestamp>
    #[arg(long)]
    pub force: bool,
}

/// Why `init` stopped. Each maps to an exit code; no message contains the key or a secret.
#[derive(Debug, thiserror::Error)]
enum InitError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    License(#[from] LicenseError),
    #[error(
        "{dir} already has {files}; nothing was written. Pass --force to replace them (each is kept as <name>.bak-<timestamp>)"
    )]
    Exists { dir: String, files: String },
    #[error("cannot write {path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("cannot generate random secrets: {0}")]
    Random(String),
}

impl InitError {
    fn exit_code(&self) -> u8 {
        match self {
            InitError::Usage(_) => 2,
            InitError::License(_) => 3,
            InitError::Exists { .. } | InitError::Io { .. } | InitError::Random(_) => 1,
        }
    }

    fn io(path: &Path, error: std::io::Error) -> InitError {
        InitError::Io {
            path: path.display().to_string(),
            error,
        }
    }
}

pub fn run(args: Args, env: &Env) -> ExitCode {
    let key = match license_key(&args, env) {
        Ok(key) => key,
        Err(e) => return fail(&e.to_string(), e.exit_code()),
    };
    match init(&args, &key, OffsetDateTime::now_utc()) {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e.to_string(), e.exit_code()),
    }
}

/// What a successful license check tells the operator.
struct LicenseSummary {
    customer: String,
    expires: String,
    days_left: i64,
}

/// One file to write: its name in the output directory, its content and its mode.
struct OutputFile {
    name: &'static str,
    content: String,
    mode: u32,
}

/// The largest license key file `init` reads (a token is at most 8 KiB).
const MAX_KEY_BYTES: u64 = 64 * 1024;

/// The license key, trimmed, from (in this order) `--license-key` (`-`: stdin),
/// `--license-key-file` (`-`: stdin) or `LETTUCE_LICENSE_KEY`. No message names the value.
fn license_key(args: &Args, env: &Env) -> Result<String, InitError> {
    let stdin = Path::new("-");
    let raw = match (&args.license_key, &args.license_key_file) {
        (Some(key), _) if key == "-" => read_key(stdin)?,
        (Some(key), _) => key.clone(),
        (None, Some(path)) => read_key(path)?,
        (None, None) => env.get("LETTUCE_LICENSE_KEY").cloned().ok_or_else(|| {
            InitError::Usage(
                "no license key: pass --license-key-file PATH (`-` reads stdin) or set \
                 LETTUCE_LICENSE_KEY in the environment"
                    .to_string(),
            )
        })?,
    };
    Ok(raw.trim().to_string())
}

/// Reads a key file (`-`: stdin), at most [`MAX_KEY_BYTES`]. A pipe is fine (`<(…)`, `-`).
fn read_key(path: &Path) -> Result<String, InitError> {
    use std::io::Read as _;
    let (what, reader): (String, Box<dyn std::io::Read>) = if path == Path::new("-") {
        ("stdin".to_string(), Box::new(std::io::stdin()))
    } else {
        let file = std::fs::File::open(path).map_err(|e| {
            InitError::Usage(format!(
                "cannot read the license key from {}: {e}",
                path.display()
            ))
        })?;
        (path.display().to_string(), Box::new(file))
    };
    let mut bytes = Vec::new();
    reader
        .take(MAX_KEY_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| InitError::Usage(format!("cannot read the license key from {what}: {e}")))?;
    if bytes.len() as u64 > MAX_KEY_BYTES {
        return Err(InitError::Usage(format!(
            "{what} is larger than 64 KiB: a license key is one line of text"
        )));
    }
    String::from_utf8(bytes)
        .map_err(|_| InitError::Usage(format!("{what} is not text: a license key is one line")))
}

/// Does the whole job and returns what to print on stdout.
fn init(args: &Args, license_key: &str, now: OffsetDateTime) -> Result<String, InitError> {
    let domain = normalize_domain(&args.domain)?;
    check_version(&args.version)?;
    let (key, public_key_pem) = public_key(args.public_key.as_deref())?;
    let summary = check_license(license_key, &key, now)?;
    if summary.days_left < license::EXPIRY_WARN_DAYS {
        eprintln!(
            "WARN: the license expires on {} ({} days left); ask Lettuce sales for a renewal",
            summary.expires, summary.days_left
        );
    }

    let secrets = generate_secrets()?;
    let files = vec![
        OutputFile {
            name: ".env",
            content: render_env(license_key, &domain, &args.version, &secrets, now),
            mode: 0o600,
        },
        OutputFile {
            name: "docker-compose.yml",
            content: pin_compose(COMPOSE_TEMPLATE, &args.version, args.public_key.is_some()),
            mode: 0o644,
        },
        OutputFile {
            name: "otel-collector.yaml",
            content: OTEL_COLLECTOR_CONFIG.to_string(),
            mode: 0o644,
        },
        OutputFile {
            name: "public.pem",
            content: public_key_pem,
            mode: 0o644,
        },
        OutputFile {
            name: "README.md",
            content: render_readme(&args.out, &domain, &args.version, &summary),
            mode: 0o644,
        },
    ];

    let out = &args.out;
    let existing: Vec<&str> = files
        .iter()
        .filter(|f| out.join(f.name).symlink_metadata().is_ok())
        .map(|f| f.name)
        .collect();
    if !existing.is_empty() && !args.force {
        return Err(InitError::Exists {
            dir: out.display().to_string(),
            files: existing.join(", "),
        });
    }

    std::fs::create_dir_all(out).map_err(|e| InitError::io(out, e))?;
    let stamp = timestamp(now);
    let mut backups = Vec::new();
    for file in &files {
        let path = out.join(file.name);
        if let Some(old) = read_existing(&path)? {
            if old == file.content.as_bytes() {
                continue;
            }
            let backup = backup_path(out, file.name, &stamp);
            std::fs::rename(&path, &backup).map_err(|e| InitError::io(&path, e))?;
            backups.push(backup);
        }
        write_atomically(&path, &file.content, file.mode)?;
    }

    let mut report = String::new();
    let _ = writeln!(
        report,
        "License OK: customer {}, expires {} ({} days left)",
        summary.customer, summary.expires, summary.days_left
    );
    let _ = writeln!(report, "Wrote to {}:", out.display());
    for file in &files {
        let _ = writeln!(report, "  {}", file.name);
    }
    for backup in &backups {
        let _ = writeln!(report, "Kept the previous file as {}", backup.display());
    }
    if backups.iter().any(|b| is_env_backup(b)) {
        let _ = writeln!(
            report,
            "The new .env has new secrets. Postgres and MinIO keep the passwords they were first \
             started with: if their volumes already exist, copy POSTGRES_PASSWORD, \
             MINIO_ROOT_PASSWORD, DATABASE_URL and CODEWAZE_S3_SECRET_ACCESS_KEY over from the backup."
        );
    }
    let _ = writeln!(report, "Next:");
    for command in next_commands(out) {
        let _ = writeln!(report, "  {command}");
    }
    Ok(report)
}

/// Accepts `lettuce.example.com` (also with a scheme or a trailing slash, which are dropped).
fn normalize_domain(raw: &str) -> Result<String, InitError> {
    let d = raw.trim();
    let d = d
        .strip_prefix("https://")
        .or_else(|| d.strip_prefix("http://"))
        .unwrap_or(d)
        .trim_end_matches('/');
    let ok = !d.is_empty()
        && d.len() <= 253
        && d.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'))
        && !d.starts_with(['.', '-', ':']);
    if ok {
        Ok(d.to_ascii_lowercase())
    } else {
        Err(InitError::Usage(format!(
            "--domain must be a host name such as lettuce.example.com, got `{raw}`"
        )))
    }
}

/// An image tag: letters, digits, `_`, `.` and `-`, at most 128, not starting with `.` or `-`
/// (Docker's rule). Checked because it lands in YAML and in `.env` verbatim.
fn check_version(version: &str) -> Result<(), InitError> {
    let ok = !version.is_empty()
        && version.len() <= 128
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && !version.starts_with(['.', '-']);
    if ok {
        Ok(())
    } else {
        Err(InitError::Usage(format!(
            "--version must be an image tag such as {}, got `{version}`",
            crate::VERSION
        )))
    }
}

/// The key to verify with, from `--public-key` (a path or inline PEM, read by the same loader
/// boot uses) or the bundled key, and its SPKI PEM for `public.pem`.
fn public_key(arg: Option<&str>) -> Result<(VerifyingKey, String), InitError> {
    let key = license::load_public_key(arg.unwrap_or(BUNDLED_PUBLIC_KEY))?;
    let pem = license::public_key_pem(&key);
    Ok((key, pem))
}

/// Verifies the token offline with the boot gate's rules (the same verifier boot uses).
fn check_license(
    token: &str,
    key: &VerifyingKey,
    now: OffsetDateTime,
) -> Result<LicenseSummary, InitError> {
    if token.is_empty() {
        return Err(InitError::License(LicenseError::Missing));
    }
    let claims = license::verify(token, key, now)?;
    Ok(LicenseSummary {
        customer: claims.sub.clone(),
        expires: license::format_unix(claims.exp),
        days_left: license::days_left(&claims, now),
    })
}

/// `SECRET_NAMES` paired with fresh values from the operating system's CSPRNG.
fn generate_secrets() -> Result<Vec<(&'static str, String)>, InitError> {
    SECRET_NAMES
        .iter()
        .map(|name| {
            let mut bytes = [0u8; SECRET_BYTES];
            rand::rngs::OsRng
                .try_fill_bytes(&mut bytes)
                .map_err(|e| InitError::Random(e.to_string()))?;
            Ok((*name, URL_SAFE_NO_PAD.encode(bytes)))
        })
        .collect()
}

#[cfg(test)]
mod tests;
