//! Gate 4: telemetry resolution (README "Telemetry"). Decides, once at boot, whether this instance
//! sends the daily heartbeat. It sends nothing itself: the heartbeat task reads the decision.
//!
//! The rule, in precedence order:
//! 1. Not self-hosted (dev mode): never sends, whatever the switch or the license say.
//! 2. The license claims `telemetry_required` (the default for a license): sends, even when the
//!    operator switched telemetry off — that contradiction is logged as a WARN at boot.
//! 3. Otherwise the operator's switch (`LETTUCE_TELEMETRY_ENABLED`, or the deprecated
//!    `LETTUCE_TELEMETRY_DISABLED` when the new variable is not set) decides.
//!
//! An unparsable switch never gets here: the config loader rejects it (exit 2).

use crate::license::Claims;
use crate::config::Config;

/// Why the decision came out as it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    /// `LETTUCE_SELF_HOSTED` is false: dev mode never sends.
    NotSelfHosted,
    /// The license requires telemetry and the operator agrees (or left the default).
    Required,
    /// The license requires telemetry but the operator switched it off: it still sends.
    RequiredOverridesOptOut,
    /// The license leaves it to the operator, who left it on.
    OperatorEnabled,
    /// The license leaves it to the operator, who switched it off.
    OperatorDisabled,
}

/// The outcome of gate 4, handed to the runtime (the heartbeat task reads `effective`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryDecision {
    /// True when the daily heartbeat must be sent.
    pub effective: bool,
    /// One sentence an operator can read (logs, `check-config`).
    pub reason: String,
    pub basis: Basis,
    /// The receiver (`LETTUCE_TELEMETRY_URL`).
    pub url: String,
    /// True when the operator's opt-out contradicts the license (logged as a WARN).
    pub contradiction: bool,
    /// True when the deprecated `LETTUCE_TELEMETRY_DISABLED` was set (logged as a WARN once).
    pub deprecated_alias_used: bool,
}

/// Resolves telemetry from the configuration and the verified license claims (`None` when
/// not self-hosted or no license was verified). A pure function: it logs nothing.
pub fn resolve(config: &Config, license: Option<&Claims>) -> TelemetryDecision {
    decide(
        config.self_hosted,
        config.telemetry_enabled,
        license.map(|c| c.telemetry_required),
        config.telemetry_url.clone(),
        config.telemetry_deprecated_alias_used,
    )
}

/// The rule itself over plain values, so every combination is unit-testable.
pub fn decide(
    self_hosted: bool,
    operator_enabled: bool,
    license_requires: Option<bool>,
    url: String,
    deprecated_alias_used: bool,
) -> TelemetryDecision {
    let required = license_requires.unwrap_or(false);
    let (effective, basis, reason) = if !self_hosted {
        (
            false,
            Basis::NotSelfHosted,
            "telemetry off: LETTUCE_SELF_HOSTED is false (dev mode never sends)".to_string(),
        )
    } else if required && !operator_enabled {
        (
            true,
            Basis::RequiredOverridesOptOut,
            "telemetry on: LETTUCE_TELEMETRY_ENABLED is false, but the license requires telemetry (telemetry_required=true), so the daily heartbeat continues; ask Lettuce sales for a license with telemetry_required=false to opt out".to_string(),
        )
    } else if required {
        (
            true,
            Basis::Required,
            "telemetry on: required by the license and enabled by LETTUCE_TELEMETRY_ENABLED"
                .to_string(),
        )
    } else if operator_enabled {
        (
            true,
            Basis::OperatorEnabled,
            "telemetry on: LETTUCE_TELEMETRY_ENABLED is true (the license does not require it)"
                .to_string(),
        )
    } else {
        (
            false,
            Basis::OperatorDisabled,
            "telemetry off: LETTUCE_TELEMETRY_ENABLED is false and the license allows opting out"
                .to_string(),
        )
    };
    TelemetryDecision {
        effective,
        reason,
        basis,
        url,
        contradiction: basis == Basis::RequiredOverridesOptOut,
        deprecated_alias_used,
    }
}

/// The deprecation warning for `LETTUCE_TELEMETRY_DISABLED`.
pub const DEPRECATED_ALIAS_WARNING: &str = "LETTUCE_TELEMETRY_DISABLED is deprecated and will be removed; use LETTUCE_TELEMETRY_ENABLED=false (or true) instead";

/// Logs the decision at boot: the deprecated alias and a contradiction as WARNs (once each,
/// since boot runs once per process), the decision itself at INFO.
pub fn log(decision: &TelemetryDecision) {
    if decision.deprecated_alias_used {
        tracing::warn!("{DEPRECATED_ALIAS_WARNING}");
    }
    if decision.contradiction {
        tracing::warn!(telemetry.effective = true, "{}", decision.reason);
    } else {
        tracing::info!(telemetry.effective = decision.effective, url = %decision.url, "{}", decision.reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Env;

    fn config(pairs: &[(&str, &str)]) -> Config {
        let env: Env = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load(&env).unwrap()
    }

    fn d(self_hosted: bool, enabled: bool, requires: Option<bool>) -> TelemetryDecision {
        decide(self_hosted, enabled, requires, "u".into(), false)
    }

    #[test]
    fn dev_mode_never_sends() {
        for enabled in [true, false] {
            for requires in [None, Some(true), Some(false)] {
                let x = d(false, enabled, requires);
                assert!(!x.effective);
                assert_eq!(x.basis, Basis::NotSelfHosted);
            }
        }
    }

    #[test]
    fn a_required_license_overrides_an_opt_out_with_a_contradiction() {
        let x = d(true, false, Some(true));
        assert!(x.effective && x.contradiction);
        assert!(x.reason.contains("LETTUCE_TELEMETRY_ENABLED is false"));
        let x = d(true, true, Some(true));
        assert!(x.effective && !x.contradiction);
        assert_eq!(x.basis, Basis::Required);
    }

    #[test]
    fn without_the_requirement_the_operator_decides() {
        assert!(d(true, true, Some(false)).effective);
        let off = d(true, false, Some(false));
        assert!(!off.effective && !off.contradiction);
        assert_eq!(off.basis, Basis::OperatorDisabled);
        // Self-hosted with no verified license (check-config before the license gate passed).
        assert!(!d(true, false, None).effective);
    }

    #[test]
    fn every_switch_spelling_and_the_alias_reach_the_decision() {
        for (value, on) in [
            ("true", true),
            ("1", true),
            ("YES", true),
            ("on", true),
            ("false", false),
            ("0", false),
            ("No", false),
            ("OFF", false),
        ] {
            let c = config(&[
                ("LETTUCE_SELF_HOSTED", "true"),
                ("LETTUCE_TELEMETRY_ENABLED", value),
            ]);
            let x = resolve(&c, None);
            assert_eq!(x.effective, on, "{value}");
            assert!(!x.deprecated_alias_used);
        }
        let c = config(&[
            ("LETTUCE_SELF_HOSTED", "true"),
            ("LETTUCE_TELEMETRY_DISABLED", "1"),
        ]);
        let x = resolve(&c, None);
        assert!(!x.effective && x.deprecated_alias_used);
        assert!(DEPRECATED_ALIAS_WARNING.contains("LETTUCE_TELEMETRY_ENABLED"));
        let err = Config::load(
            &[(
                "LETTUCE_TELEMETRY_ENABLED".to_string(),
                "perhaps".to_string(),
            )]
            .into_iter()
            .collect(),
        )
        .unwrap_err();
        assert_eq!(err.vars[0].name, "LETTUCE_TELEMETRY_ENABLED");
    }
}
