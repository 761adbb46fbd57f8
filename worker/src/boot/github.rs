//! Gate 3: the GitHub App variables (README "Boot gates").
//!
//! A pure function over the five variables decides one of three things: none is set (the
//! instance runs without GitHub; GitHub-dependent jobs fail with [`NOT_CONFIGURED`]), some are
//! set (boot refuses and names exactly the missing ones), or all are set (the app id must be
//! numeric and the private key a parseable RSA PEM). Deployments routinely mangle the key's
//! newlines, so real newlines, literal `\n` sequences and base64 of the whole PEM are all
//! accepted, and every message says which form was seen. Nothing here ever prints the key or
//! the client secret: messages carry variable names, forms and parser errors only.

use base64::Engine as _;
use pkcs8::der::{Decode, SecretDocument};

use crate::config::{GithubAppVars, Secret};

/// The message an operator sees, in logs and on jobs, when no GitHub App is configured.
pub const NOT_CONFIGURED: &str = "GitHub App is not configured on this Lettuce instance";

/// The five variables, in the fixed order every message uses.
pub const VARIABLES: [&str; 5] = [
    "GITHUB_APP_ID",
    "GITHUB_APP_NAME",
    "GITHUB_APP_PRIVATE_KEY",
    "GITHUB_APP_CLIENT_ID",
    "GITHUB_APP_CLIENT_SECRET",
];

/// How `GITHUB_APP_PRIVATE_KEY` was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyForm {
    /// A PEM with real line breaks.
    Pem,
    /// A PEM on one line, with literal `\n` sequences where the breaks belong.
    EscapedNewlines,
    /// Base64 of the whole PEM text.
    Base64,
}

impl KeyForm {
    pub fn describe(self) -> &'static str {
        match self {
            KeyForm::Pem => "PEM with real newlines",
            KeyForm::EscapedNewlines => "PEM with literal \\n sequences",
            KeyForm::Base64 => "base64 of a PEM",
        }
    }
}

/// A complete, valid GitHub App configuration (no secrets kept: handlers that need the key
/// read it from the configuration when they sign).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GithubApp {
    pub app_id: u64,
    pub app_name: String,
    pub key_form: KeyForm,
    /// `PKCS#1` (`BEGIN RSA PRIVATE KEY`) or `PKCS#8` (`BEGIN PRIVATE KEY`).
    pub key_encoding: &'static str,
    /// `github.com` or the GHES host.
    pub github_host: String,
    /// Set when the instance also clones from a GitLab host.
    pub gitlab_host: Option<String>,
}

/// What the gate decided when boot may go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GithubStatus {
    /// None of the five variables is set: GitHub-dependent jobs fail with [`NOT_CONFIGURED`].
    NotConfigured {
        gitlab_host: Option<String>,
    },
    Configured(GithubApp),
}

impl GithubStatus {
    /// The app, or the permanent error a GitHub-dependent job reports.
    pub fn app(&self) -> Result<&GithubApp, &'static str> {
        match self {
            GithubStatus::Configured(app) => Ok(app),
            GithubStatus::NotConfigured { .. } => Err(NOT_CONFIGURED),
        }
    }
}

/// Why boot refuses (exit 4).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GithubError {
    #[error(
        "GitHubAppIncomplete: missing {} (set all five GitHub App variables, or none to run without GitHub)",
        .missing.join(", ")
    )]
    Incomplete { missing: Vec<&'static str> },
    #[error("GitHubAppInvalid: GITHUB_APP_ID must be a positive integer, got `{0}`")]
    BadAppId(String),
    #[error("GitHubAppInvalid: GITHUB_APP_PRIVATE_KEY ({}) is not a parseable RSA private key: {reason}", .form.describe())]
    BadPrivateKey { form: KeyForm, reason: String },
    /// The App variables passed the gate but the client cannot be built from them.
    #[error("GitHubAppInvalid: {0}")]
    Client(String),
}

/// The gate: a pure function of the GitHub variables (blank counts as unset; the config loader
/// already maps empty and whitespace-only values to `None`).
pub fn check(vars: &GithubAppVars) -> Result<GithubStatus, GithubError> {
    let given = [
        vars.app_id.is_some(),
        vars.app_name.is_some(),
        vars.private_key.is_some(),
        vars.client_id.is_some(),
        vars.client_secret.is_some(),
    ];
    if given.iter().all(|g| !g) {
        return Ok(GithubStatus::NotConfigured {
            gitlab_host: vars.gitlab_host.clone(),
        });
    }
    let missing: Vec<&'static str> = VARIABLES
        .iter()
        .zip(given)
        .filter(|(_, g)| !g)
        .map(|(name, _)| *name)
        .collect();
    if !missing.is_empty() {
        return Err(GithubError::Incomplete { missing });
    }
    // All five are present from here on.
    let id_text = vars.app_id.as_deref().unwrap_or_default().trim();
    let app_id = id_text
        .parse::<u64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| GithubError::BadAppId(id_text.to_string()))?;
    let key = vars
        .private_key
        .as_ref()
        .map(|k| k.expose().as_str())
        .unwrap_or_default();
    let (key_form, key_encoding) = parse_private_key(key)?;
    Ok(GithubStatus::Configured(GithubApp {
        app_id,
        app_name: vars.app_name.clone().unwrap_or_default(),
        key_form,
        key_encoding,
        github_host: vars.github_host.clone(),
        gitlab_host: vars.gitlab_host.clone(),
    }))
}

/// Recognises the form the key was written in, normalises it to PEM and parses it as RSA.
/// Returns the form and the encoding (`PKCS#1` or `PKCS#8`).
pub fn parse_private_key(value: &str) -> Result<(KeyForm, &'static str), GithubError> {
    decode_private_key(value).map(|k| (k.form, k.encoding))
}

/// A decoded App key: how it was written, and the RSA key itself as PKCS#1 DER (what a signer
/// takes), kept as a [`Secret`].
pub struct DecodedKey {
    pub form: KeyForm,
    pub encoding: &'static str,
    pub pkcs1_der: Secret<Vec<u8>>,
}

/// [`parse_private_key`], keeping the key: the provider signs App JWTs with it.
pub fn decode_private_key(value: &str) -> Result<DecodedKey, GithubError> {
    let trimmed = value.trim();
    let (form, pem) = if trimmed.starts_with("-----BEGIN") {
        if trimmed.contains("\\n") {
            (KeyForm::EscapedNewlines, trimmed.replace("\\n", "\n"))
        } else {
            (KeyForm::Pem, trimmed.to_string())
        }
    } else {
        // Base64 of the PEM; line breaks inside the base64 are tolerated.
        let compact: String = trimmed.split_whitespace().collect();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(compact.as_bytes())
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .filter(|text| text.trim_start().starts_with("-----BEGIN"));
        match decoded {
            Some(text) => (KeyForm::Base64, text.trim().replace("\\n", "\n")),
            None => {
                return Err(GithubError::BadPrivateKey {
                    form: KeyForm::Base64,
                    reason: "not a PEM (no -----BEGIN line) and not base64 of a PEM".into(),
                });
            }
        }
    };
    let bad = |reason: String| GithubError::BadPrivateKey { form, reason };
    let (label, doc) =
        SecretDocument::from_pem(&pem).map_err(|e| bad(format!("PEM does not decode: {e}")))?;
    match label {
        "RSA PRIVATE KEY" => {
            pkcs1::RsaPrivateKeyRef::from_der(doc.as_bytes())
                .map_err(|e| bad(format!("PKCS#1 body does not parse: {e}")))?;
            Ok(DecodedKey {
                form,
                encoding: "PKCS#1",
                pkcs1_der: Secret::new(doc.as_bytes().to_vec()),
            })
        }
        "PRIVATE KEY" => {
            let info = pkcs8::PrivateKeyInfoRef::try_from(doc.as_bytes())
                .map_err(|e| bad(format!("PKCS#8 body does not parse: {e}")))?;
            if info.algorithm.oid != pkcs1::ALGORITHM_OID {
                return Err(bad(format!(
                    "PKCS#8 key is not RSA (algorithm {})",
                    info.algorithm.oid
                )));
            }
            pkcs1::RsaPrivateKeyRef::from_der(info.private_key.as_bytes())
                .map_err(|e| bad(format!("RSA key inside PKCS#8 does not parse: {e}")))?;
            Ok(DecodedKey {
                form,
                encoding: "PKCS#8",
                pkcs1_der: Secret::new(info.private_key.as_bytes().to_vec()),
            })
        }
        other => Err(bad(format!(
            "PEM label is `{other}`; expected `RSA PRIVATE KEY` or `PRIVATE KEY`"
        ))),
    }
}

/// Logs the gate's outcome when boot goes on: a WARN listing the five names when GitHub is
/// off, an INFO naming the host otherwise, and the GitLab host when one is set.
pub fn log(status: &GithubStatus) {
    match status {
        GithubStatus::NotConfigured { gitlab_host } => {
            tracing::warn!(
                missing = %VARIABLES.join(", "),
                "{NOT_CONFIGURED}: set GITHUB_APP_ID, GITHUB_APP_NAME, GITHUB_APP_PRIVATE_KEY, GITHUB_APP_CLIENT_ID and GITHUB_APP_CLIENT_SECRET to enable GitHub jobs"
            );
            if let Some(host) = gitlab_host {
                tracing::info!(gitlab_host = %host, "GitLab host configured");
            }
        }
        GithubStatus::Configured(app) => {
            tracing::info!(
                app_id = app.app_id,
                app_name = %app.app_name,
                github_host = %app.github_host,
                private_key_form = app.key_form.describe(),
                private_key_encoding = app.key_encoding,
                "GitHub App configured"
            );
            if let Some(host) = &app.gitlab_host {
                tracing::info!(gitlab_host = %host, "GitLab host configured");
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::{Config, Env};

    /// A fresh 2048-bit RSA key from the openssl CLI, as (PKCS#1 PEM, PKCS#8 PEM).
    pub(crate) fn openssl_rsa_key() -> (String, String) {
        let dir = std::env::temp_dir().join(format!(
            "lettuce-gh-{}-{:x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let p8 = dir.join("k8.pem");
        let p1 = dir.join("k1.pem");
        let ok = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(&p8)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl CLI runs")
            .success();
        assert!(ok);
        let ok = std::process::Command::new("openssl")
            .args(["rsa", "-traditional", "-in"])
            .arg(&p8)
            .arg("-out")
            .arg(&p1)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok);
        let out = (
            std::fs::read_to_string(&p1).unwrap(),
            std::fs::read_to_string(&p8).unwrap(),
        );
        std::fs::remove_dir_all(&dir).unwrap();
        out
    }

    fn vars(pairs: &[(&str, &str)]) -> GithubAppVars {
        let env: Env = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load(&env).unwrap().github
    }

    #[test]
    fn none_set_means_not_configured_and_blank_counts_as_unset() {
        let status = check(&vars(&[("GITHUB_APP_ID", "  "), ("GITHUB_APP_NAME", "")])).unwrap();
        assert!(matches!(status, GithubStatus::NotConfigured { .. }));
        assert_eq!(status.app().unwrap_err(), NOT_CONFIGURED);
    }

    #[test]
    fn a_partial_set_names_exactly_the_missing_ones_in_fixed_order() {
        let err = check(&vars(&[
            ("GITHUB_APP_CLIENT_ID", "Iv1.abc"),
            ("GITHUB_APP_NAME", "lettuce"),
            ("GITHUB_APP_CLIENT_SECRET", " "),
        ]))
        .unwrap_err();
        assert_eq!(
            err,
            GithubError::Incomplete {
                missing: vec![
                    "GITHUB_APP_ID",
                    "GITHUB_APP_PRIVATE_KEY",
                    "GITHUB_APP_CLIENT_SECRET"
                ]
            }
        );
        let text = err.to_string();
        assert!(text.starts_with("GitHubAppIncomplete: missing GITHUB_APP_ID, GITHUB_APP_PRIVATE_KEY, GITHUB_APP_CLIENT_SECRET"), "{text}");
        assert!(!text.contains('\n'));
    }

    #[test]
    fn every_key_form_is_accepted_and_named() {
        let (pkcs1_pem, pkcs8_pem) = openssl_rsa_key();
        let b64 = base64::engine::general_purpose::STANDARD.encode(pkcs1_pem.as_bytes());
        let escaped = pkcs1_pem.trim().replace('\n', "\\n");
        for (value, form, encoding) in [
            (pkcs1_pem.clone(), KeyForm::Pem, "PKCS#1"),
            (pkcs8_pem.clone(), KeyForm::Pem, "PKCS#8"),
            (escaped, KeyForm::EscapedNewlines, "PKCS#1"),
            (b64, KeyForm::Base64, "PKCS#1"),
        ] {
            let status = check(&vars(&[
                ("GITHUB_APP_ID", "12345"),
                ("GITHUB_APP_NAME", "lettuce"),
                ("GITHUB_APP_PRIVATE_KEY", &value),
                ("GITHUB_APP_CLIENT_ID", "Iv1.abc"),
                ("GITHUB_APP_CLIENT_SECRET", "s3cr3t"),
                ("GITHUB_HOST", "ghes.example.com"),
            ]))
            .unwrap();
            let app = status.app().unwrap();
            assert_eq!((app.key_form, app.key_encoding), (form, encoding));
            assert_eq!(app.app_id, 12345);
            assert_eq!(app.github_host, "ghes.example.com");
        }
    }

    #[test]
    fn bad_id_and_bad_keys_are_refused_without_echoing_the_key() {
        let (pkcs1_pem, _) = openssl_rsa_key();
        let base = |id: &str, key: &str| {
            check(&vars(&[
                ("GITHUB_APP_ID", id),
                ("GITHUB_APP_NAME", "lettuce"),
                ("GITHUB_APP_PRIVATE_KEY", key),
                ("GITHUB_APP_CLIENT_ID", "Iv1.abc"),
                ("GITHUB_APP_CLIENT_SECRET", "s3cr3t"),
            ]))
        };
        assert_eq!(
            base("12a", &pkcs1_pem).unwrap_err(),
            GithubError::BadAppId("12a".into())
        );
        // A truncated PEM, an Ed25519 PKCS#8 key and plain junk.
        let truncated =
            pkcs1_pem[..pkcs1_pem.len() / 2].to_string() + "\n-----END RSA PRIVATE KEY-----\n";
        let ed = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF\n-----END PRIVATE KEY-----\n";
        for (key, form, needle) in [
            (truncated.as_str(), KeyForm::Pem, "PEM with real newlines"),
            (ed, KeyForm::Pem, "not RSA"),
            (
                "definitely-not-a-key",
                KeyForm::Base64,
                "not base64 of a PEM",
            ),
        ] {
            let err = base("1", key).unwrap_err();
            let text = err.to_string();
            assert!(
                matches!(err, GithubError::BadPrivateKey { form: f, .. } if f == form),
                "{text}"
            );
            assert!(text.contains(needle), "{text}");
            assert!(!text.contains("MC4CAQAw") && !text.contains(&pkcs1_pem[40..80]));
        }
    }
}
