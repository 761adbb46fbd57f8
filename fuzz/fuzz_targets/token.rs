//! Arbitrary bytes as a token: the parser must never panic, and must accept nothing that the
//! fixed key did not sign (a random input never carries a valid signature).
#![no_main]

use ed25519_dalek::SigningKey;
use libfuzzer_sys::fuzz_target;
use time::macros::datetime;

// The exact source the worker compiles, without the rest of the worker.
#[path = "../../worker/src/license/token.rs"]
#[allow(dead_code)]
mod token;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let key = SigningKey::from_bytes(&[7; 32]).verifying_key();
    let now = datetime!(2026-07-01 12:00:00 UTC);
    if let Err(e) = token::verify(text, &key, now) {
        // Errors never echo a token. Only token-shaped inputs are checked: a short or dot-free
        // input can coincide with our own wording (the first run found "contains whitespace").
        let shown = e.to_string();
        let token_shaped = text.len() >= 40 && text.matches('.').count() >= 2;
        assert!(!token_shaped || !shown.contains(text));
    } else {
        panic!("an unsigned input verified");
    }
});
