//! Entitlements: the caps a license carries (`seats`, `repos`), as handlers see them.
//!
//! Boot derives them from the verified claims once; handlers reach them through their
//! `JobContext` (`ctx.require_repos(n)`), never through the license itself. Exceeding a cap is
//! a permanent job error starting with `License limit reached:` (the UI shows a badge from
//! `lettuce.instance.license_limit_reached_at`), never a crash: the worker keeps running.
//! Not self-hosted (dev mode) means no caps.

use crate::license::Claims;

/// The caps in force; `None` means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Entitlements {
    pub seats: Option<u32>,
    pub repos: Option<u32>,
}

/// A cap that a job would exceed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("License limit reached: {wanted} {what} needed, the license allows {cap}")]
pub struct LimitReached {
    /// `seats` or `repositories`.
    pub what: &'static str,
    pub wanted: u64,
    pub cap: u32,
}

impl Entitlements {
    /// No caps (dev mode, or a license without `seats`/`repos`).
    pub fn unlimited() -> Self {
        Entitlements::default()
    }

    /// The caps of a verified license; unlimited without one.
    pub fn from_claims(claims: Option<&Claims>) -> Self {
        claims.map_or_else(Entitlements::unlimited, |c| Entitlements {
            seats: c.seats,
            repos: c.repos,
        })
    }

    /// Ok when `wanted` seats fit under the cap.
    pub fn check_seats(&self, wanted: u64) -> Result<(), LimitReached> {
        check("seats", self.seats, wanted)
    }

    /// Ok when `wanted` repositories fit under the cap.
    pub fn check_repos(&self, wanted: u64) -> Result<(), LimitReached> {
        check("repositories", self.repos, wanted)
    }
}

fn check(what: &'static str, cap: Option<u32>, wanted: u64) -> Result<(), LimitReached> {
    match cap {
        Some(cap) if wanted > u64::from(cap) => Err(LimitReached { what, wanted, cap }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_allow_up_to_and_including_the_limit() {
        let e = Entitlements {
            seats: Some(5),
            repos: Some(10),
        };
        assert!(e.check_repos(10).is_ok());
        let err = e.check_repos(11).unwrap_err();
        assert_eq!(
            err.to_string(),
            "License limit reached: 11 repositories needed, the license allows 10"
        );
        assert!(e.check_seats(5).is_ok());
        assert!(
            e.check_seats(6)
                .unwrap_err()
                .to_string()
                .starts_with("License limit reached: 6 seats")
        );
        let none = Entitlements::unlimited();
        assert!(none.check_repos(u64::MAX).is_ok() && none.check_seats(u64::MAX).is_ok());
    }
}
