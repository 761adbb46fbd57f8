//! Probes of the services around the worker: `artifacts` (the S3 bucket or local directory),
//! `telemetry.receiver` (with the last receipt the database records) and `otlp`.

use time::OffsetDateTime;

use super::{Check, Level, PROBE_TIMEOUT, check, hinted};
use crate::artifacts::ArtifactStore;
use crate::config::{Config, Env};
use crate::db;
use crate::heartbeat::decision as telemetry;

pub(super) async fn artifact_check(config: &Config, offline: bool) -> Check {
    // S3 is network (and its credentials may be waiting in the secret store): skip offline.
    // A local directory is not network, so it is probed even offline.
    if offline && config.s3.is_some() {
        let bucket = config
            .s3
            .as_ref()
            .map(|s| s.bucket.as_str())
            .unwrap_or_default();
        return check(
            "artifacts",
            Level::Skip,
            format!("skipped (--offline): S3 bucket {bucket}"),
        );
    }
    let store = match ArtifactStore::from_config(config) {
        Ok(s) => s,
        Err(e) => {
            return hinted(
                "artifacts",
                Level::Fail,
                e.to_string(),
                "check the CODEWAZE_S3_* variables",
            );
        }
    };
    match tokio::time::timeout(PROBE_TIMEOUT * 4, store.probe()).await {
        Ok(Ok(())) => {
            let durability = ArtifactStore::durability_warning(config);
            match durability {
                Some(w) => hinted(
                    "artifacts",
                    Level::Warn,
                    format!(
                        "probe object written, read back and deleted in {}; {w}",
                        store.describe()
                    ),
                    "set CODEWAZE_S3_BUCKET so every replica shares one artifact store",
                ),
                None => check(
                    "artifacts",
                    Level::Ok,
                    format!(
                        "probe object written, read back and deleted in {}",
                        store.describe()
                    ),
                ),
            }
        }
        Ok(Err(e)) => hinted(
            "artifacts",
            Level::Fail,
            format!("{}: {e}", store.describe()),
            "check the bucket exists and the credentials may put, get and delete objects (or that CODEWAZE_DATA_DIR is writable)",
        ),
        Err(_) => hinted(
            "artifacts",
            Level::Fail,
            format!(
                "{}: no answer within {:?}",
                store.describe(),
                PROBE_TIMEOUT * 4
            ),
            "check CODEWAZE_S3_ENDPOINT and the network path to it",
        ),
    }
}

/// The last heartbeat receipt as the database records it (`None` when it cannot be read, e.g.
async fn receipt_status(config: &Config) -> Option<crate::heartbeat::HeartbeatStatus> {
    let pool = db::pool_for_url(config.database_url.expose(), 1).ok()?;
    let status = crate::heartbeat::status(&pool, OffsetDateTime::now_utc());
    tokio::time::timeout(PROBE_TIMEOUT, status).await.ok()?.ok()
}

pub(super) async fn receiver_check(
    config: &Config,
    decision: &telemetry::TelemetryDecision,
    offline: bool,
) -> Check {
    if !decision.effective {
        return check("telemetry.receiver", Level::Skip, "telemetry is off");
    }
    if offline {
        return check(
            "telemetry.receiver",
            Level::Skip,
            format!("skipped (--offline): {}", decision.url),
        );
    }
    let receipt = receipt_status(config).await;
    let receipt_text = receipt
        .as_ref()
        .map_or_else(|| "no receipt recorded".to_string(), |r| r.describe());
    let http = match reqwest::Client::builder().timeout(PROBE_TIMEOUT).build() {
        Ok(h) => h,
        Err(e) => return check("telemetry.receiver", Level::Warn, e.to_string()),
    };
    match http.get(&decision.url).send().await {
        Ok(_) if receipt.as_ref().is_some_and(|r| r.receipt_stale) => hinted(
            "telemetry.receiver",
            Level::Warn,
            format!("{} reachable, but {receipt_text}", decision.url),
            "No telemetry receipt verified in 7 days: check the worker logs for heartbeat errors",
        ),
        Ok(r) => check(
            "telemetry.receiver",
            Level::Ok,
            format!(
                "{} answered HTTP {}; {receipt_text}",
                decision.url,
                r.status().as_u16()
            ),
        ),
        Err(e) => hinted(
            "telemetry.receiver",
            Level::Warn,
            format!(
                "{} unreachable: {}; {receipt_text}",
                decision.url,
                crate::error_text::full(&e)
            ),
            "allow outbound HTTPS to the receiver (or set LETTUCE_TELEMETRY_URL to your proxy); the worker runs anyway",
        ),
    }
}

pub(super) async fn otlp_check(env: &Env, offline: bool) -> Check {
    let endpoint = [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .find_map(|k| {
        env.get(*k)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    });
    let Some(endpoint) = endpoint else {
        return check("otlp", Level::Skip, "no OTLP endpoint set: no exporter");
    };
    if offline {
        return check(
            "otlp",
            Level::Skip,
            format!("skipped (--offline): {endpoint}"),
        );
    }
    let url = match reqwest::Url::parse(&endpoint) {
        Ok(u) => u,
        Err(e) => {
            return hinted(
                "otlp",
                Level::Warn,
                format!("{endpoint} is not a URL: {e}"),
                "set OTEL_EXPORTER_OTLP_ENDPOINT like http://collector:4318",
            );
        }
    };
    let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
        return hinted(
            "otlp",
            Level::Warn,
            format!("{endpoint} names no host"),
            "set OTEL_EXPORTER_OTLP_ENDPOINT like http://collector:4318",
        );
    };
    let addr = format!(
        "{}:{port}",
        host.trim_start_matches('[').trim_end_matches(']')
    );
    match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(&addr)).await {
        Ok(Ok(_)) => check("otlp", Level::Ok, format!("{endpoint} accepts connections")),
        Ok(Err(e)) => hinted(
            "otlp",
            Level::Warn,
            format!("{endpoint} unreachable: {e}"),
            "start the collector or fix OTEL_EXPORTER_OTLP_ENDPOINT; traces are dropped meanwhile",
        ),
        Err(_) => hinted(
            "otlp",
            Level::Warn,
            format!("{endpoint}: no connection within {PROBE_TIMEOUT:?}"),
            "start the collector or fix OTEL_EXPORTER_OTLP_ENDPOINT; traces are dropped meanwhile",
        ),
    }
}
