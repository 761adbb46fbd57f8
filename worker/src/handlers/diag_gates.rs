//! Diagnostic kinds for the boot gates' effects on jobs, registered (like `diag.*` in
//! `diag.rs`) only with `LETTUCE_DIAG_JOBS=true`.
//!
//! | kind | payload | does |
//! |---|---|---|
//! | `diag.entitlement` | `{"repos": N, "seats": M}` (each optional) | checks N repositories and M seats against the license caps; over a cap → permanent `License limit reached: …` and `lettuce.instance.license_limit_reached_at` stamped |
//! | `diag.github` | anything | needs the GitHub App: completes when configured, else permanent `GitHub App is not configured on this Lettuce instance` |

use serde::Deserialize;
use serde::de::IgnoredAny;

use super::{Handler, HandlerError, JobContext, Registry};

pub fn register(r: &mut Registry) {
    r.register(Entitlement).register(Github);
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntitlementPayload {
    #[serde(default)]
    pub repos: Option<u64>,
    #[serde(default)]
    pub seats: Option<u64>,
}

pub struct Entitlement;
impl Handler for Entitlement {
    const KIND: &'static str = "diag.entitlement";
    type Payload = EntitlementPayload;
    async fn run(&self, ctx: JobContext, p: EntitlementPayload) -> Result<(), HandlerError> {
        if let Some(n) = p.repos {
            ctx.require_repos(n).await?;
        }
        if let Some(n) = p.seats {
            ctx.require_seats(n).await?;
        }
        Ok(())
    }
}

pub struct Github;
impl Handler for Github {
    const KIND: &'static str = "diag.github";
    type Payload = IgnoredAny;
    async fn run(&self, ctx: JobContext, _p: IgnoredAny) -> Result<(), HandlerError> {
        ctx.github_app()?;
        Ok(())
    }
}
