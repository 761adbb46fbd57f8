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

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
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

fn secret<'a>(secrets: &'a [(&str, String)], name: &str) -> &'a str {
    secrets
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.as_str())
        .expect("every secret name is generated")
}

/// The `.env` for the compose stack. Values are written literally (no `${…}`), because Compose
/// does not interpolate inside `env_file` the way it does inside the compose file.
fn render_env(
    license_key: &str,
    domain: &str,
    version: &str,
    secrets: &[(&'static str, String)],
    now: OffsetDateTime,
) -> String {
    let postgres_password = secret(secrets, "POSTGRES_PASSWORD");
    let minio_password = secret(secrets, "MINIO_ROOT_PASSWORD");
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Written by `worker init` on {}. Keep this file private (mode 0600): it holds the\n\
         # license key and every password of the stack. See compose/.env.example in the source\n\
         # for every other variable the worker reads.\n",
        timestamp_rfc3339(now)
    );
    let _ = writeln!(
        s,
        "# The release; also pinned on the worker `image:` line of docker-compose.yml."
    );
    let _ = writeln!(s, "LETTUCE_VERSION={version}\n");
    let _ = writeln!(s, "# Where Lettuce is served.");
    let _ = writeln!(s, "LETTUCE_DOMAIN={domain}");
    let _ = writeln!(s, "LETTUCE_WEB_URL=https://{domain}\n");
    let _ = writeln!(s, "# License and self-hosted mode.");
    let _ = writeln!(s, "LETTUCE_SELF_HOSTED=true");
    let _ = writeln!(s, "LETTUCE_LICENSE_KEY={license_key}");
    let _ = writeln!(s, "LETTUCE_TELEMETRY_ENABLED=true\n");
    let _ = writeln!(s, "# Postgres (the compose `postgres` service).");
    let _ = writeln!(s, "POSTGRES_PASSWORD={postgres_password}");
    let _ = writeln!(
        s,
        "DATABASE_URL=postgres://lettuce:{postgres_password}@postgres:5432/lettuce\n"
    );
    let _ = writeln!(
        s,
        "# MinIO (the compose `minio` service) and the artifact bucket on it."
    );
    let _ = writeln!(s, "MINIO_ROOT_USER=lettuce");
    let _ = writeln!(s, "MINIO_ROOT_PASSWORD={minio_password}");
    let _ = writeln!(s, "CODEWAZE_S3_BUCKET=lettuce-artifacts");
    let _ = writeln!(s, "CODEWAZE_S3_ENDPOINT=http://minio:9000");
    let _ = writeln!(s, "CODEWAZE_S3_REGION=us-east-1");
    let _ = writeln!(s, "CODEWAZE_S3_ACCESS_KEY_ID=lettuce");
    let _ = writeln!(s, "CODEWAZE_S3_SECRET_ACCESS_KEY={minio_password}");
    let _ = writeln!(s, "CODEWAZE_S3_FORCE_PATH_STYLE=true\n");
    let _ = writeln!(s, "# Secrets of the Lettuce API.");
    let _ = writeln!(
        s,
        "CODEWAZE_ADMIN_TOKEN={}",
        secret(secrets, "CODEWAZE_ADMIN_TOKEN")
    );
    let _ = writeln!(
        s,
        "JWT_SIGNING_KEY={}\n",
        secret(secrets, "JWT_SIGNING_KEY")
    );
    let _ = writeln!(
        s,
        "# GitHub App: set all five (see the README), then `docker compose up -d` again.\n\
         # GITHUB_APP_ID=\n# GITHUB_APP_NAME=\n# GITHUB_APP_PRIVATE_KEY=\n\
         # GITHUB_APP_CLIENT_ID=\n# GITHUB_APP_CLIENT_SECRET="
    );
    s
}

/// The compose stack with the worker image pinned to `version`. The `build:` fallback is
/// dropped (the output directory has no source tree), and when a custom public key was used it
/// is mounted over the bundled one, so the key that verified here is the key the worker uses.
fn pin_compose(template: &str, version: &str, mount_public_key: bool) -> String {
    let image = format!("ghcr.io/uselettuce/worker:{version}");
    let mut out = format!(
        "# Written by `worker init`: the worker image is pinned to {version}. To upgrade, change\n\
         # the tag on the worker `image:` line, then `docker compose pull && docker compose up -d`.\n"
    );
    let mut lines = template.lines().peekable();
    while let Some(line) = lines.next() {
        if line
            .trim_start()
            .starts_with("# Fallback for a source checkout")
        {
            // The whole comment block: its continuation lines are comments at the same depth.
            while lines.peek().is_some_and(|l| l.starts_with("    #")) {
                lines.next();
            }
            continue;
        }
        if line == "    build:" {
            // Skip the block: every following line indented deeper than `build:`.
            while lines.peek().is_some_and(|l| l.starts_with("      ")) {
                lines.next();
            }
            continue;
        }
        if line.contains(IMAGE_TEMPLATE) {
            out.push_str(&line.replace(IMAGE_TEMPLATE, &image));
            out.push('\n');
            if mount_public_key {
                out.push_str("    volumes:\n      - ./public.pem:/var/lib/lettuce/public.pem:ro\n");
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn next_commands(out: &Path) -> Vec<String> {
    vec![
        format!("cd {}", shell_quote(&out.display().to_string())),
        "docker compose up -d".to_string(),
        "docker compose ps".to_string(),
        "docker compose logs -f worker".to_string(),
    ]
}

fn render_readme(out: &Path, domain: &str, version: &str, summary: &LicenseSummary) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Lettuce on {domain}\n");
    let _ = writeln!(
        s,
        "Written by `worker init` for release {version}. License: customer `{}`, valid until {}.\n",
        summary.customer, summary.expires
    );
    let _ = writeln!(s, "## Files\n");
    let _ = writeln!(
        s,
        "- `.env` — the license key, the domain and fresh random secrets (mode 0600; back it up\n  somewhere safe, never commit it)\n\
         - `docker-compose.yml` — Postgres 16, MinIO (with a one-shot bucket creation) and the worker\n\
         - `otel-collector.yaml` — the OpenTelemetry collector of the optional `observability` profile\n\
         - `public.pem` — the public key this license was verified with\n"
    );
    let _ = writeln!(s, "## Start\n\n```sh");
    for command in next_commands(out) {
        let _ = writeln!(s, "{command}");
    }
    let _ = writeln!(s, "```\n");
    let _ = writeln!(
        s,
        "Postgres and MinIO come up first; the worker starts once both are healthy and the bucket\n\
         exists. `docker compose ps` shows the worker `healthy` within about a minute.\n"
    );
    let _ = writeln!(
        s,
        "**No image is published yet**: until `ghcr.io/uselettuce` exists, pulling\n\
         `ghcr.io/uselettuce/worker:{version}` fails with `unauthorized` or `manifest unknown`.\n\
         Build it from a checkout of the worker's repository at that release\n\
         (`docker build -t ghcr.io/uselettuce/worker:{version} .`); `docker compose up -d` then\n\
         uses that local image.\n"
    );
    let _ = writeln!(
        s,
        "## Scale\n\n```sh\ndocker compose up -d --scale worker=4\n```\n\n\
         Workers share the queue through Postgres; any number can run.\n"
    );
    let _ = writeln!(
        s,
        "## Upgrade\n\nChange the tag on the worker `image:` line of `docker-compose.yml` (and\n\
         `LETTUCE_VERSION` in `.env`), then:\n\n```sh\ndocker compose pull\ndocker compose up -d\n```\n\n\
         Workers drain in-flight jobs on SIGTERM; the schema upgrades itself at boot.\n"
    );
    let _ = writeln!(
        s,
        "## GitHub App\n\nSet all five `GITHUB_APP_*` variables in `.env`, then `docker compose up -d`.\n"
    );
    let _ = writeln!(
        s,
        "## Observability\n\n```sh\ndocker compose --profile observability up -d\n```\n\n\
         and set `OTEL_EXPORTER_OTLP_ENDPOINT=http://otel-collector:4318` in `.env`."
    );
    s
}

/// Quotes a path for a POSIX shell when it needs it.
fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | '+' | ':'))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// `20261129T050433Z`: sortable and safe in a file name.
fn timestamp(now: OffsetDateTime) -> String {
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    )
}

fn timestamp_rfc3339(now: OffsetDateTime) -> String {
    now.replace_nanosecond(0)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// `<name>.bak-<stamp>`, with `-1`, `-2`, … when two runs share a second.
fn backup_path(dir: &Path, name: &str, stamp: &str) -> PathBuf {
    let base = dir.join(format!("{name}.bak-{stamp}"));
    if base.symlink_metadata().is_err() {
        return base;
    }
    (1..)
        .map(|n| dir.join(format!("{name}.bak-{stamp}-{n}")))
        .find(|p| p.symlink_metadata().is_err())
        .expect("some suffix is free")
}

fn is_env_backup(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(".env.bak-"))
}

/// The largest file `init` compares with what it would write.
const MAX_EXISTING_BYTES: u64 = 1024 * 1024;

/// The current content of `path` when it is a regular file (`None` when it does not exist).
/// Anything else there — a symlink, a FIFO (reading one would hang), a directory, a device —
/// or a file over 1 MiB is refused, `--force` or not: `init` replaces only what it wrote.
fn read_existing(path: &Path) -> Result<Option<Vec<u8>>, InitError> {
    use std::io::Read as _;
    let meta = match path.symlink_metadata() {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(InitError::io(path, e)),
    };
    let refuse = |why: &str| {
        InitError::io(
            path,
            std::io::Error::other(format!("{why}; refusing to replace it")),
        )
    };
    if !meta.file_type().is_file() {
        return Err(refuse(
            "is not a regular file (a symlink, FIFO, directory or device)",
        ));
    }
    if meta.len() > MAX_EXISTING_BYTES {
        return Err(refuse("is larger than 1 MiB"));
    }
    // O_NOFOLLOW and O_NONBLOCK: if the file was swapped for a symlink or a FIFO since the check
    // above, the open fails or returns at once instead of following or hanging.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| InitError::io(path, e))?;
    if !f.metadata().map_err(|e| InitError::io(path, e))?.is_file() {
        return Err(refuse("is not a regular file"));
    }
    let mut bytes = Vec::new();
    (&f).take(MAX_EXISTING_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| InitError::io(path, e))?;
    Ok(Some(bytes))
}

/// Writes `content` to a temporary file created with `mode` (so a secret file is never readable
/// by others, not even briefly), syncs it, and links it in at `path` without replacing anything:
/// a file that appeared at `path` since the backup (another `init`, an operator's editor) is
/// kept, and this write fails naming it.
fn write_atomically(path: &Path, content: &str, mode: u32) -> Result<(), InitError> {
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(
        ".{file_name}.tmp-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(content.as_bytes())?;
        f.sync_all()?;
        std::fs::hard_link(&tmp, path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                std::io::Error::other(
                    "it appeared while init was writing; it was kept, not replaced",
                )
            } else {
                e
            }
        })
    })();
    let _ = std::fs::remove_file(&tmp);
    result.map_err(|e| InitError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lettuce-init-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn existing_fifos_and_symlinks_are_refused_never_read_or_followed() {
        let dir = scratch();
        let fifo = dir.join(".env");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // Returns at once (reading a FIFO would hang until a writer came).
        let err = read_existing(&fifo).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");

        let target = dir.join("elsewhere");
        std::fs::write(&target, "theirs").unwrap();
        let link = dir.join("docker-compose.yml");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = read_existing(&link).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "theirs");

        assert!(read_existing(&dir.join("absent")).unwrap().is_none());
        std::fs::write(dir.join("plain"), "x").unwrap();
        assert_eq!(read_existing(&dir.join("plain")).unwrap().unwrap(), b"x");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_file_that_appears_meanwhile_is_kept_not_replaced() {
        let dir = scratch();
        let path = dir.join(".env");
        write_atomically(&path, "ours\n", 0o600).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "ours\n");
        // Someone else's .env created after the backup step: the final link refuses it.
        std::fs::write(&path, "theirs\n").unwrap();
        let err = write_atomically(&path, "ours again\n", 0o600)
            .unwrap_err()
            .to_string();
        assert!(err.contains("appeared while init was writing"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "theirs\n");
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn compose_template_has_the_pieces_init_rewrites() {
        assert!(COMPOSE_TEMPLATE.contains(IMAGE_TEMPLATE));
        assert!(COMPOSE_TEMPLATE.contains("\n    build:\n"));
    }

    #[test]
    fn pin_compose_pins_the_image_and_drops_the_build_fallback() {
        let out = pin_compose(COMPOSE_TEMPLATE, "1.4.2", false);
        assert!(out.contains("    image: ghcr.io/uselettuce/worker:1.4.2\n"));
        assert!(!out.contains("LETTUCE_VERSION:?"));
        assert!(!out.contains("build:"));
        assert!(!out.contains("dockerfile:"));
        assert!(!out.contains("public.pem:ro"));
        assert!(!out.contains("Fallback for a source checkout"));
        assert!(
            !out.contains("the tag always names"),
            "the comment block goes with it"
        );
        // The rest of the worker service survives the cut.
        assert!(out.contains("    restart: unless-stopped\n    env_file:\n"));
        let mounted = pin_compose(COMPOSE_TEMPLATE, "1.4.2", true);
        assert!(mounted.contains(
            "worker:1.4.2\n    volumes:\n      - ./public.pem:/var/lib/lettuce/public.pem:ro\n"
        ));
    }

    #[test]
    fn domains_and_versions_are_checked() {
        assert_eq!(
            normalize_domain("https://Lettuce.Example.com/").unwrap(),
            "lettuce.example.com"
        );
        assert_eq!(normalize_domain("10.0.0.5:8443").unwrap(), "10.0.0.5:8443");
        for bad in ["", "  ", "a b", "x/y", "-x", "a\nb", "a$b"] {
            assert!(normalize_domain(bad).is_err(), "{bad:?}");
        }
        for good in ["1.4.2", "v1", "1.4.2-rc.1", "latest", "1_2"] {
            assert!(check_version(good).is_ok(), "{good:?}");
        }
        for bad in [
            "",
            "-1",
            ".1",
            "1 2",
            "1:2",
            "a/b",
            "${X}",
            &"9".repeat(129),
        ] {
            assert!(check_version(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn secrets_are_fresh_43_character_base64url() {
        let a = generate_secrets().unwrap();
        let b = generate_secrets().unwrap();
        let mut all: Vec<&str> = a.iter().chain(&b).map(|(_, v)| v.as_str()).collect();
        for v in &all {
            assert_eq!(v.len(), 43);
            assert_eq!(URL_SAFE_NO_PAD.decode(v).unwrap().len(), SECRET_BYTES);
        }
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 2 * SECRET_NAMES.len());
    }

    #[test]
    fn shell_quote_quotes_only_when_needed() {
        assert_eq!(shell_quote("/srv/lettuce"), "/srv/lettuce");
        assert_eq!(shell_quote("/srv/my dir"), "'/srv/my dir'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn timestamps_are_file_name_safe() {
        let t = time::macros::datetime!(2026-11-29 05:04:33 UTC);
        assert_eq!(timestamp(t), "20261129T050433Z");
        assert_eq!(timestamp_rfc3339(t), "2026-11-29T05:04:33Z");
    }
}
