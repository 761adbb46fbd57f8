//! `worker healthcheck`: exit 0 when the local worker's `/healthz` answers 200.
//!
//! A liveness probe must not depend on anything but the process it probes: it reads only
//! `LETTUCE_HTTP_ADDR` (from the environment or the `LETTUCE_CONFIG` file), never the secret
//! store, the database or the rest of the configuration, so a Vault or Secrets Manager outage
//! cannot turn a healthy container unhealthy.

use std::process::ExitCode;
use std::time::Duration;

use super::fail;
use crate::config::{Env, RawConfig, parse_http_addr};

pub async fn run(env: &Env) -> ExitCode {
    let raw = match RawConfig::layer(env) {
        Ok(raw) => raw,
        Err(e) => return fail(&e.to_string(), 2),
    };
    let value = raw.get("LETTUCE_HTTP_ADDR").unwrap_or("0.0.0.0:9090");
    let addr = match parse_http_addr(value) {
        Ok(Some(addr)) => addr,
        Ok(None) => return fail("unhealthy: LETTUCE_HTTP_ADDR is off, nothing to probe", 1),
        Err(problem) => return fail(&format!("LETTUCE_HTTP_ADDR: {problem}"), 2),
    };
    // A wildcard bind address is probed on loopback.
    let host = if addr.ip().is_unspecified() {
        if addr.is_ipv4() {
            "127.0.0.1".to_string()
        } else {
            "[::1]".to_string()
        }
    } else if addr.is_ipv6() {
        format!("[{}]", addr.ip())
    } else {
        addr.ip().to_string()
    };
    let url = format!("http://{host}:{}/healthz", addr.port());
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
    {
        Ok(c) => c,
        Err(e) => return fail(&format!("unhealthy: {e}"), 1),
    };
    match client.get(&url).send().await {
        Ok(r) if r.status().as_u16() == 200 => ExitCode::SUCCESS,
        Ok(r) => fail(&format!("unhealthy: {url} answered {}", r.status()), 1),
        Err(e) => fail(&format!("unhealthy: {url}: {e}"), 1),
    }
}
