//! The App's own credentials: the RS256 App JWT, the installation tokens it buys (cached per
//! installation), and the check-config probe (`GET /app`).
//!
//! The App authenticates with a JWT it signs itself (RS256 over `GITHUB_APP_PRIVATE_KEY`, by
//! `ring`, already in the tree through rustls' stack): `iss` = `GITHUB_APP_ID`, `iat` 60 s in
//! the past for clock skew, `exp` 10 minutes after `iat`. The JWT buys installation tokens
//! (`POST /app/installations/{id}/access_tokens`), which every repository call uses. Tokens are
//! cached per installation until [`REFRESH_BEFORE`] their `expires_at`; each installation's
//! cache slot is an async mutex held across the refresh, so however many jobs ask at once only
//! one request is in flight and the others take its result. A 401 on a cached token drops that
//! token (only if it is still the cached one) and retries once with a new one; a 401 on a fresh
//! credential is [`ProviderError::BadCredentials`].

use std::time::Duration;

use base64::Engine as _;
use reqwest::{Method, StatusCode};
use ring::signature::RSA_PKCS1_SHA256;
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{AppProbe, CachedToken, GithubClient, Slot};
use crate::config::Secret;
use crate::providers::ProviderError;

/// A cached installation token is replaced this long before its `expires_at`.
pub const REFRESH_BEFORE: Duration = Duration::from_secs(5 * 60);
/// How far `iat` is back-dated (GitHub's advice for clock drift).
pub const JWT_BACKDATE_SECS: i64 = 60;
/// `exp - iat`; GitHub refuses more than 10 minutes.
pub const JWT_LIFETIME_SECS: i64 = 600;

#[derive(Deserialize)]
struct TokenBody {
    token: String,
    expires_at: String,
}

#[derive(Deserialize)]
struct AppBody {
    slug: String,
    #[serde(default)]
    name: String,
}

impl GithubClient {
    /// A fresh App JWT.
    fn app_jwt(&self) -> Result<Secret<String>, ProviderError> {
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let iat = OffsetDateTime::now_utc().unix_timestamp() - JWT_BACKDATE_SECS;
        let header = b64(br#"{"alg":"RS256","typ":"JWT"}"#);
        let claims = json!({
            "iat": iat,
            "exp": iat + JWT_LIFETIME_SECS,
            "iss": self.app_id.to_string(),
        });
        let signing_input = format!("{header}.{}", b64(claims.to_string().as_bytes()));
        let mut signature = vec![0u8; self.key.public().modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &self.rng,
                signing_input.as_bytes(),
                &mut signature,
            )
            .map_err(|_| ProviderError::Rejected("signing the App JWT failed".into()))?;
        Ok(Secret::new(format!("{signing_input}.{}", b64(&signature))))
    }

    /// Asks GitHub for a new installation token.
    async fn issue_token(&self, installation_id: u64) -> Result<CachedToken, ProviderError> {
        let jwt = self.app_jwt()?;
        let what = format!("an access token for installation {installation_id}");
        let answer = self
            .send(
                Method::POST,
                &format!("/app/installations/{installation_id}/access_tokens"),
                &jwt,
                None,
            )
            .await?;
        if answer.status == StatusCode::UNAUTHORIZED {
            return Err(self.bad_credentials("fresh App JWT"));
        }
        let answer = self.verdict(
            answer,
            &what,
            || ProviderError::InstallationMissing { installation_id },
            "installation access",
        )?;
        let body: TokenBody = answer.json(&what)?;
        let expires_at = OffsetDateTime::parse(&body.expires_at, &Rfc3339).map_err(|e| {
            ProviderError::Rejected(format!(
                "GitHub's expires_at for {what} does not parse: {e}"
            ))
        })?;
        tracing::debug!(installation_id, %expires_at, "GitHub installation token issued");
        Ok(CachedToken {
            token: Secret::new(body.token),
            expires_at,
        })
    }

    fn slot(&self, installation_id: u64) -> Slot {
        self.tokens
            .lock()
            .expect("token cache lock")
            .entry(installation_id)
            .or_default()
            .clone()
    }

    /// The installation's token, from the cache or freshly issued (`true`). Concurrent callers
    /// for one installation queue on its slot, so one refresh serves them all.
    pub(super) async fn token(
        &self,
        installation_id: u64,
    ) -> Result<(Secret<String>, OffsetDateTime, bool), ProviderError> {
        let slot = self.slot(installation_id);
        let mut cached = slot.lock().await;
        let refresh_at = OffsetDateTime::now_utc() + REFRESH_BEFORE;
        if let Some(c) = cached.as_ref().filter(|c| c.expires_at > refresh_at) {
            return Ok((c.token.clone(), c.expires_at, false));
        }
        *cached = None;
        let fresh = self.issue_token(installation_id).await?;
        let out = (fresh.token.clone(), fresh.expires_at, true);
        *cached = Some(fresh);
        Ok(out)
    }

    /// Drops `token` from the cache if it is still the cached one (a concurrent caller may
    /// already have replaced it).
    pub(super) async fn drop_token(&self, installation_id: u64, token: &Secret<String>) {
        let slot = self.slot(installation_id);
        let mut cached = slot.lock().await;
        if cached.as_ref().is_some_and(|c| c.token == *token) {
            *cached = None;
        }
    }

    /// check-config's probe: `GET /app` with a fresh JWT (the App's slug), then the
    /// installations it can see.
    pub async fn probe_app(&self) -> Result<AppProbe, ProviderError> {
        let jwt = self.app_jwt()?;
        let not_found = || ProviderError::Rejected("GitHub answered 404 to GET /app".into());
        let answer = self.send(Method::GET, "/app", &jwt, None).await?;
        if answer.status == StatusCode::UNAUTHORIZED {
            return Err(self.bad_credentials("fresh App JWT"));
        }
        let app: AppBody = self
            .verdict(answer, "GET /app", not_found, "none")?
            .json("GET /app")?;
        // Every page of installations (100 a page), up to a bound so a probe stays quick.
        const PER_PAGE: usize = 100;
        const MAX_PAGES: usize = 50;
        let mut installations = 0;
        for page in 1..=MAX_PAGES {
            let answer = self
                .send(
                    Method::GET,
                    &format!("/app/installations?per_page={PER_PAGE}&page={page}"),
                    &jwt,
                    None,
                )
                .await?;
            let listed: Vec<Value> = self
                .verdict(
                    answer,
                    "GET /app/installations",
                    || ProviderError::Rejected("GitHub answered 404 to GET /app/installations".into()),
                    "none",
                )?
                .json("GET /app/installations")?;
            installations += listed.len();
            if listed.len() < PER_PAGE {
                break;
            }
        }
        Ok(AppProbe {
            slug: app.slug,
            name: app.name,
            installations,
        })
    }
}
