//! The daily license reminder (README "License"): while fewer than 14 days are left, a WARN every day;
//! once the license has expired under a running worker, an ERROR every day. It never stops the
//! worker — the next boot refuses an expired license. The boot-time WARN comes from the gate.

use std::time::Duration;

use time::OffsetDateTime;

use crate::license::{Claims, days_left, format_unix};
use crate::runtime::periodic::PeriodicTask;

/// What a daily check has to say about the license.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// Fewer than 14 days left.
    Expiring { days_left: i64, exp: String },
    /// Expired while this worker runs.
    Expired { exp: String },
}

/// The notice for `claims` at `now`, if any. Pure.
pub fn daily_notice(claims: &Claims, now: OffsetDateTime) -> Option<Notice> {
    let left = days_left(claims, now);
    if now.unix_timestamp() > claims.exp {
        Some(Notice::Expired {
            exp: format_unix(claims.exp),
        })
    } else if crate::license::expiring_soon(left) {
        Some(Notice::Expiring {
            days_left: left,
            exp: format_unix(claims.exp),
        })
    } else {
        None
    }
}

/// Logs [`daily_notice`] once a day.
pub(crate) struct LicenseWatch {
    pub claims: Claims,
}

impl PeriodicTask for LicenseWatch {
    fn name(&self) -> &'static str {
        "license-watch"
    }
    fn interval(&self) -> Duration {
        Duration::from_secs(86_400)
    }
    async fn activate(&mut self) -> Result<Option<String>, String> {
        match daily_notice(&self.claims, OffsetDateTime::now_utc()) {
            Some(Notice::Expiring { days_left, exp }) => tracing::warn!(
                license.id = %self.claims.jti,
                days_left,
                "the license expires on {exp} ({days_left} days left); ask sales for a renewal"
            ),
            Some(Notice::Expired { exp }) => tracing::error!(
                license.id = %self.claims.jti,
                "LicenseExpired: the license expired on {exp}; this worker keeps running, but the next boot will refuse to start"
            ),
            None => {}
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> Claims {
        Claims {
            sub: "acme".into(),
            jti: "lic-1".into(),
            iat: None,
            exp,
            nbf: None,
            seats: None,
            repos: None,
            telemetry_required: true,
        }
    }

    #[test]
    fn warns_inside_the_last_14_days_and_errors_once_expired() {
        let now = OffsetDateTime::from_unix_timestamp(1_900_000_000).unwrap();
        let day = 86_400;
        assert_eq!(
            daily_notice(&claims(now.unix_timestamp() + 30 * day), now),
            None
        );
        assert!(matches!(
            daily_notice(&claims(now.unix_timestamp() + 5 * day + 10), now),
            Some(Notice::Expiring { days_left: 5, .. })
        ));
        assert!(matches!(
            daily_notice(&claims(now.unix_timestamp() - 1), now),
            Some(Notice::Expired { .. })
        ));
    }
}
