//! The text of the files `init` writes: `.env` with its fresh secrets, the compose file pinned
//! to a release, the README with the next commands.

use std::fmt::Write as _;
use std::path::Path;

use time::OffsetDateTime;

use super::{IMAGE_TEMPLATE, LicenseSummary};

fn secret<'a>(secrets: &'a [(&str, String)], name: &str) -> &'a str {
    secrets
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.as_str())
        .expect("every secret name is generated")
}

/// The `.env` for the compose stack. Values are written literally (no `${…}`), because Compose
/// does not interpolate inside `env_file` the way it does inside the compose file.
pub(super) fn render_env(
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
pub(super) fn pin_compose(template: &str, version: &str, mount_public_key: bool) -> String {
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

pub(super) fn next_commands(out: &Path) -> Vec<String> {
    vec![
        format!("cd {}", shell_quote(&out.display().to_string())),
        "docker compose up -d".to_string(),
        "docker compose ps".to_string(),
        "docker compose logs -f worker".to_string(),
    ]
}

pub(super) fn render_readme(
    out: &Path,
    domain: &str,
    version: &str,
    summary: &LicenseSummary,
) -> String {
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
pub(super) fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | '+' | ':'))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

pub(super) fn timestamp_rfc3339(now: OffsetDateTime) -> String {
    now.replace_nanosecond(0)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}
