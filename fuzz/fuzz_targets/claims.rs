//! Arbitrary header and payload bytes, validly signed: drives the header checks and the claim
//! parser (which only ever see signed input) and checks the outcome's invariants.
#![no_main]

use ed25519_dalek::SigningKey;
use libfuzzer_sys::fuzz_target;
use time::macros::datetime;

#[path = "../../worker/src/license/token.rs"]
#[allow(dead_code)]
mod token;

fuzz_target!(|data: &[u8]| {
    // The first byte splits the input into header and payload.
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let split = (split as usize).min(rest.len());
    let (header, payload) = rest.split_at(split);
    let signing = SigningKey::from_bytes(&[7; 32]);
    let now = datetime!(2026-07-01 12:00:00 UTC);
    let jwt = token::sign_raw(header, payload, &signing);
    match token::verify(&jwt, &signing.verifying_key(), now) {
        Ok(claims) => {
            // Whatever got through obeys the rules.
            assert!((0..=token::MAX_TIMESTAMP).contains(&claims.exp));
            assert!(now.unix_timestamp() <= claims.exp + token::LEEWAY_SECS);
            assert!(!claims.sub.trim().is_empty() && !claims.jti.trim().is_empty());
            let _ = token::days_left(&claims, now);
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
