//! The checks of gates 2 and 3: `license.signature` and `license.expiry`, `github.app`, and the
//! live `github.api`.

use time::OffsetDateTime;

use super::{Check, Level, check, hinted};
use crate::boot::github;
use crate::config::{Config, RawConfig};
use crate::license;

/// `license.signature` and `license.expiry`; returns the claims when the token verified.
pub(super) fn license_checks(
    config: &Config,
    raw: &RawConfig,
    now: OffsetDateTime,
    unknown_offline: &dyn Fn(&RawConfig, &str) -> bool,
    out: &mut Vec<Check>,
) -> Option<license::Claims> {
    if !config.self_hosted {
        out.push(check(
            "license.signature",
            Level::Skip,
            "LETTUCE_SELF_HOSTED is false: no license needed",
        ));
        out.push(check(
            "license.expiry",
            Level::Skip,
            "LETTUCE_SELF_HOSTED is false: no license needed",
        ));
        return None;
    }
    let token = config.license_key.as_ref().map(|t| t.expose().trim());
    match token {
        Some(t) if !t.is_empty() => {}
        _ if unknown_offline(raw, "LETTUCE_LICENSE_KEY") => {
            for id in ["license.signature", "license.expiry"] {
                out.push(check(
                    id,
                    Level::Skip,
                    "skipped (--offline): LETTUCE_LICENSE_KEY would come from the secret store",
                ));
            }
            return None;
        }
        _ => {
            out.push(hinted(
                "license.signature",
                Level::Fail,
                license::LicenseError::Missing.to_string(),
                "set LETTUCE_LICENSE_KEY to the license JWT from Lettuce sales",
            ));
            out.push(check("license.expiry", Level::Skip, "no license to check"));
            return None;
        }
    };
    // The same findings gate 2 computes for `worker run` (without its one side effect, the
    // cache write), rendered as checks.
    match license::evaluate(config, now) {
        Ok(Some(l)) => {
            out.push(check(
                "license.signature",
                Level::Ok,
                format!(
                    "signature valid: customer {}, license {}",
                    l.claims.sub, l.claims.jti
                ),
            ));
            let date = OffsetDateTime::from_unix_timestamp(l.claims.exp)
                .map(|d| d.date().to_string())
                .unwrap_or_else(|_| l.claims.exp.to_string());
            let message = format!("expires on {date} ({} days left)", l.days_left);
            out.push(if license::expiring_soon(l.days_left) {
                hinted(
                    "license.expiry",
                    Level::Warn,
                    message,
                    "ask Lettuce sales for a renewal before the license expires",
                )
            } else {
                check("license.expiry", Level::Ok, message)
            });
            for w in l.warnings.iter().filter(|w| w.id != "license.expiry") {
                let hint = match w.id {
                    "license.clock" => {
                        "check NTP on this host; a clock turned back does not stretch a license"
                    }
                    _ => {
                        "check LETTUCE_LICENSE_CACHE_PATH: the worker keeps its license cache there"
                    }
                };
                out.push(hinted(w.id, Level::Warn, w.message.clone(), hint));
            }
            Some(l.claims)
        }
        Ok(None) => None,
        Err(e @ license::LicenseError::PublicKeyError(_)) => {
            out.push(hinted(
                "license.signature",
                Level::Fail,
                e.to_string(),
                "point LETTUCE_LICENSE_PUBLIC_KEY at the Ed25519 public key PEM (path or inline text)",
            ));
            out.push(check("license.expiry", Level::Skip, "no license to check"));
            None
        }
        Err(e @ license::LicenseError::Expired { .. }) => {
            out.push(check(
                "license.signature",
                Level::Ok,
                "signature valid".to_string(),
            ));
            out.push(hinted(
                "license.expiry",
                Level::Fail,
                e.to_string(),
                "install a renewed license in LETTUCE_LICENSE_KEY; the next boot refuses an expired one",
            ));
            None
        }
        Err(e) => {
            out.push(hinted(
                "license.signature",
                Level::Fail,
                e.to_string(),
                "use the exact token Lettuce issued and the matching public key",
            ));
            out.push(check(
                "license.expiry",
                Level::Skip,
                "no verified license to check",
            ));
            None
        }
    }
}

pub(super) fn github_check(
    config: &Config,
    raw: &RawConfig,
    unknown_offline: &dyn Fn(&RawConfig, &str) -> bool,
) -> Check {
    let gitlab = config
        .github
        .gitlab_host
        .as_ref()
        .map(|h| format!("; GitLab host {h}"))
        .unwrap_or_default();
    match github::check(&config.github) {
        Ok(github::GithubStatus::NotConfigured { .. }) => hinted(
            "github.app",
            Level::Warn,
            format!(
                "{}: none of {} is set; GitHub jobs will fail{gitlab}",
                github::NOT_CONFIGURED,
                github::VARIABLES.join(", ")
            ),
            "register a GitHub App and set all five GITHUB_APP_* variables on every worker and api",
        ),
        Ok(github::GithubStatus::Configured(app)) => check(
            "github.app",
            Level::Ok,
            format!(
                "app {} (`{}`) on {}; private key: {} {}{gitlab}",
                app.app_id,
                app.app_name,
                app.github_host,
                app.key_form.describe(),
                app.key_encoding
            ),
        ),
        Err(github::GithubError::Incomplete { missing })
            if missing.iter().all(|m| unknown_offline(raw, m)) =>
        {
            check(
                "github.app",
                Level::Skip,
                format!(
                    "skipped (--offline): {} would come from the secret store",
                    missing.join(", ")
                ),
            )
        }
        Err(e) => {
            let hint = match e {
                github::GithubError::Incomplete { .. } => {
                    "set the missing variables (or unset all five to run without GitHub)"
                }
                github::GithubError::BadAppId(_) => {
                    "GITHUB_APP_ID is the numeric App ID from the App's settings page"
                }
                github::GithubError::BadPrivateKey { .. } => {
                    "paste the App's .pem as is, with literal \\n, or base64-encoded"
                }
                github::GithubError::Client(_) => {
                    "check GITHUB_APP_PRIVATE_KEY (an RSA key GitHub issued) and GITHUB_API_URL"
                }
            };
            hinted("github.app", Level::Fail, e.to_string(), hint)
        }
    }
}

/// `github.api`: the App JWT against `GET /app`, and the installations the App can see.
pub(super) async fn github_api_check(config: &Config) -> Check {
    use crate::providers::ProviderError;
    use crate::providers::github::{GithubClient, GithubSettings};
    let probe = async {
        let settings = GithubSettings::from_config(config)?;
        let client = GithubClient::new(&settings, Default::default())?;
        let api = client.endpoints().api.clone();
        client.probe_app().await.map(|p| (p, api))
    };
    match probe.await {
        Ok((p, api)) => check(
            "github.api",
            if p.installations == 0 {
                Level::Warn
            } else {
                Level::Ok
            },
            format!(
                "{api} accepts the App JWT: app `{}`; {} installation(s) visible",
                p.slug, p.installations
            ),
        ),
        Err(e @ ProviderError::BadCredentials { .. }) => hinted(
            "github.api",
            Level::Fail,
            e.to_string(),
            "GITHUB_APP_PRIVATE_KEY does not match GITHUB_APP_ID: generate a new private key on the App's settings page, or fix the id",
        ),
        Err(e) => hinted(
            "github.api",
            Level::Fail,
            e.to_string(),
            "check that this host reaches GITHUB_HOST (or GITHUB_API_URL) over HTTPS",
        ),
    }
}
