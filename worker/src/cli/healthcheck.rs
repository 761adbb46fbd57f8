//! `worker healthcheck`: exit 0 when the local worker's `/healthz` answers 200.

use std::process::ExitCode;
use std::time::Duration;

use super::fail;
use crate::config::Config;

pub async fn run(config: &Config) -> ExitCode {
    let Some(addr) = config.http_addr else {
        return fail("unhealthy: LETTUCE_HTTP_ADDR is off, nothing to probe", 1);
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
