//! The hostile-token corpus (issue 4 point 2, NOTES "JWT pitfalls") and the gate's file
//! handling. Keys are deterministic (`SigningKey::from_bytes(&[n; 32])`) so failures reproduce.

use std::os::unix::fs::PermissionsExt as _;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use ed25519_dalek::Signer as _;
use ed25519_dalek::pkcs8::EncodePublicKey as _;
use hmac::{KeyInit as _, Mac as _};
use serde_json::json;
use time::macros::datetime;

use super::*;

const RSA_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDCvML8IJOvzp47P040k3aKUL4f
kfpYOjmBLJS4j9HTqzPTukd/eYbqvXmhhfvt0jsZmwyh3e9MOFQEZcT12KWaNHZR
qDa+6lRCj3IWTmyziCJ2Sr6+xB/2jYRyi7KC7rGaFMXrtuMeIczAaEiPHSQaw6/o
IihMY1YkUiAcfsf03wIDAQAB
-----END PUBLIC KEY-----
";

const P256_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAENxXP/uY+ipiuCrbg/dWlOrmF7EKr
+iMHZZJr8PqUkXlYLWS7TA1ObAarEaCXKpfPqj9AOCVOhd6aOOVTHABAgA==
-----END PUBLIC KEY-----
";

const ED448_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MEMwBQYDK2VxAzoA7OJtoVikxxXqOJTuv4Cmly3cL4MMWoVxNJwO172hrQ6qgCEu
Oqp/XDSccvwOypIm7cHqY2g9oHuA
-----END PUBLIC KEY-----
";

fn key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

fn now() -> OffsetDateTime {
    datetime!(2026-07-01 12:00:00 UTC)
}

fn at(offset_secs: i64) -> i64 {
    now().unix_timestamp() + offset_secs
}

fn claims() -> Claims {
    Claims {
        sub: "acme-corp".into(),
        jti: "lic_0001".into(),
        iat: Some(at(-86_400)),
        exp: at(30 * 86_400),
        nbf: Some(at(-86_400)),
        seats: Some(25),
        repos: Some(100),
        telemetry_required: true,
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A token with the given header and claims JSON, validly signed by key 1.
fn signed(header: serde_json::Value, payload: serde_json::Value) -> String {
    sign_raw(
        header.to_string().as_bytes(),
        payload.to_string().as_bytes(),
        &key(1),
    )
}

fn std_header() -> serde_json::Value {
    json!({"alg": "EdDSA", "typ": "JWT"})
}

fn payload_with(field: &str, value: serde_json::Value) -> serde_json::Value {
    let mut p = serde_json::to_value(claims()).unwrap();
    p[field] = value;
    p
}

fn payload_without(field: &str) -> serde_json::Value {
    let mut p = serde_json::to_value(claims()).unwrap();
    p.as_object_mut().unwrap().remove(field);
    p
}

fn check(token: &str) -> Result<Claims, LicenseError> {
    let result = verify(token, &key(1).verifying_key(), now());
    if let Err(e) = &result {
        assert_no_token_in(&e.to_string(), token);
    }
    result
}

/// No error text may carry the token or any sizeable piece of it.
fn assert_no_token_in(text: &str, token: &str) {
    if token.len() < 12 {
        return;
    }
    assert!(
        !text.contains(token),
        "error text contains the token: {text}"
    );
    for segment in token.split('.').filter(|s| s.len() >= 12) {
        assert!(
            !text.contains(segment),
            "error text contains a token segment: {text}"
        );
    }
}

#[track_caller]
fn assert_malformed(token: &str) -> String {
    match check(token) {
        Err(LicenseError::Malformed(why)) => why,
        other => panic!("expected LicenseMalformed, got {other:?}"),
    }
}

#[track_caller]
fn assert_invalid(token: &str) -> String {
    match check(token) {
        Err(LicenseError::Invalid(why)) => why,
        other => panic!("expected LicenseInvalid, got {other:?}"),
    }
}

fn hs256(header: &str, payload: &str, secret: &[u8]) -> String {
    let input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(input.as_bytes());
    format!("{input}.{}", b64(&mac.finalize().into_bytes()))
}

// --- Tokens that must verify ---------------------------------------------------------------

#[test]
fn a_minted_token_verifies_and_round_trips_its_claims() {
    let token = sign(&claims(), &key(1));
    assert_eq!(check(&token).unwrap(), claims());
}

#[test]
fn claim_order_and_whitespace_do_not_matter_because_bytes_are_verified() {
    let c = claims();
    let variants = [
        format!(
            r#"{{"sub":"{}","jti":"{}","exp":{},"seats":25}}"#,
            c.sub, c.jti, c.exp
        ),
        format!(
            r#"{{ "seats" : 25 , "exp" : {} ,
              "jti":"{}",   "sub":"{}" }}"#,
            c.exp, c.jti, c.sub
        ),
        format!(
            "{{\"exp\":{},\t\"seats\":25,\"sub\":\"{}\",\"jti\":\"{}\"}}\n",
            c.exp, c.sub, c.jti
        ),
    ];
    for header in [
        r#"{"alg":"EdDSA"}"#,
        r#"{ "typ" : "JWT", "alg" : "EdDSA" }"#,
    ] {
        for payload in &variants {
            let token = sign_raw(header.as_bytes(), payload.as_bytes(), &key(1));
            let got = check(&token).unwrap_or_else(|e| panic!("{payload}: {e}"));
            assert_eq!(got.seats, Some(25));
            assert_eq!(got.exp, c.exp);
        }
    }
}

#[test]
fn the_rfc_9864_alg_name_and_the_explicit_typ_are_accepted() {
    for header in [
        json!({"alg": "Ed25519"}),
        json!({"alg": "EdDSA", "typ": "lettuce-license+jwt"}),
        json!({"alg": "EdDSA", "kid": "vendor-2026"}),
    ] {
        let token = signed(header.clone(), serde_json::to_value(claims()).unwrap());
        check(&token).unwrap_or_else(|e| panic!("{header}: {e}"));
    }
}

#[test]
fn optional_claims_default_as_documented() {
    let payload = json!({"sub": "acme", "jti": "l1", "exp": at(3600)});
    let got = check(&signed(std_header(), payload)).unwrap();
    assert_eq!(got.iat, None);
    assert_eq!(got.nbf, None);
    assert_eq!(got.seats, None);
    assert_eq!(got.repos, None);
    assert!(
        got.telemetry_required,
        "absent telemetry_required means true"
    );
    let off = check(&signed(
        std_header(),
        payload_with("telemetry_required", json!(false)),
    ));
    assert!(!off.unwrap().telemetry_required);
}

// --- Algorithm and header attacks ----------------------------------------------------------

#[test]
fn alg_none_in_any_case_is_invalid() {
    let payload = serde_json::to_string(&claims()).unwrap();
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#);
        // The classic form: an empty signature.
        let bare = format!("{}.{}.", b64(header.as_bytes()), b64(payload.as_bytes()));
        assert!(assert_invalid(&bare).contains("alg"), "{alg}");
        // And with a real Ed25519 signature over the same bytes: still refused.
        let with_sig = sign_raw(header.as_bytes(), payload.as_bytes(), &key(1));
        assert_invalid(&with_sig);
    }
}

#[test]
fn hs256_keyed_with_the_public_key_is_invalid() {
    let public = key(1).verifying_key();
    let pem = public_key_pem(&public);
    let der = public.to_public_key_der().unwrap();
    let payload = serde_json::to_string(&claims()).unwrap();
    for secret in [pem.as_bytes(), der.as_bytes(), public.as_bytes().as_slice()] {
        for header in [r#"{"alg":"HS256","typ":"JWT"}"#, r#"{"alg":"EdDSA"}"#] {
            let token = hs256(header, &payload, secret);
            assert_invalid(&token);
        }
    }
}

#[test]
fn other_asymmetric_algs_are_invalid_even_with_a_valid_ed25519_signature() {
    for alg in [
        "RS256", "ES256", "PS256", "ES512", "EdDSA ", "eddsa", "ED25519", "",
    ] {
        let token = signed(
            json!({"alg": alg, "typ": "JWT"}),
            serde_json::to_value(claims()).unwrap(),
        );
        assert_invalid(&token);
    }
    // alg must be a string.
    let token = signed(json!({"alg": 1}), serde_json::to_value(claims()).unwrap());
    assert_malformed(&token);
}

#[test]
fn crit_and_embedded_key_headers_are_invalid_whatever_their_value() {
    let payload = serde_json::to_value(claims()).unwrap();
    let cases = [
        ("crit", json!(["exp"])),
        ("crit", json!([])),
        ("crit", json!("x")),
        ("crit", json!(null)),
        ("crit", json!(["b64"])),
        (
            "jwk",
            json!({"kty": "OKP", "crv": "Ed25519", "x": b64(key(2).verifying_key().as_bytes())}),
        ),
        ("jku", json!("https://attacker.example/keys")),
        ("x5u", json!("https://attacker.example/cert.pem")),
        ("x5c", json!(["MIIB"])),
    ];
    for (name, value) in cases {
        let mut header = std_header();
        header[name] = value.clone();
        let why = assert_invalid(&signed(header, payload.clone()));
        assert!(why.contains(name), "{name}={value}: {why}");
    }
}

#[test]
fn a_foreign_typ_is_invalid() {
    for typ in [json!("at+jwt"), json!("JWS")] {
        let mut header = std_header();
        header["typ"] = typ;
        assert_invalid(&signed(header, serde_json::to_value(claims()).unwrap()));
    }
    let mut header = std_header();
    header["typ"] = json!(null);
    assert_malformed(&signed(header, serde_json::to_value(claims()).unwrap()));
}

// --- Signature ------------------------------------------------------------------------------

#[test]
fn a_token_signed_by_another_key_is_invalid() {
    let token = sign(&claims(), &key(2));
    assert!(assert_invalid(&token).contains("signature"));
}

#[test]
fn every_flipped_bit_in_every_segment_is_rejected() {
    let token = sign(&claims(), &key(1));
    let parts: Vec<Vec<u8>> = token
        .split('.')
        .map(|s| URL_SAFE_NO_PAD.decode(s).unwrap())
        .collect();
    let mut rejected = [0usize; 3];
    for segment in 0..3 {
        for bit in 0..parts[segment].len() * 8 {
            let mut flipped = parts.clone();
            flipped[segment][bit / 8] ^= 1 << (bit % 8);
            let candidate = flipped.iter().map(|p| b64(p)).collect::<Vec<_>>().join(".");
            let result = check(&candidate);
            assert!(result.is_err(), "segment {segment} bit {bit} accepted");
            // Payload and signature flips can only fail the signature: the claims are never
            // parsed before it verifies.
            if segment > 0 {
                assert!(
                    matches!(result, Err(LicenseError::Invalid(_))),
                    "segment {segment} bit {bit}: {result:?}"
                );
            }
            rejected[segment] += 1;
        }
    }
    assert_eq!(rejected[2], 64 * 8);
}

#[test]
fn a_signature_of_the_wrong_length_is_invalid() {
    let token = sign(&claims(), &key(1));
    let (input, sig) = token.rsplit_once('.').unwrap();
    let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
    for bytes in [&sig[..63], &[sig.as_slice(), &[0]].concat()[..], &sig[..32]] {
        let candidate = format!("{input}.{}", b64(bytes));
        assert!(assert_invalid(&candidate).contains("64 bytes"));
    }
}

#[test]
fn an_all_zero_signature_is_invalid() {
    let token = sign(&claims(), &key(1));
    let (input, _) = token.rsplit_once('.').unwrap();
    assert_invalid(&format!("{input}.{}", b64(&[0u8; 64])));
}

// --- Encoding and structure -----------------------------------------------------------------

#[test]
fn padded_segments_are_malformed() {
    let header = r#"{"alg": "EdDSA"}"#; // 16 bytes: padded base64 ends in "=="
    let payload = serde_json::to_string(&claims()).unwrap();
    let input = format!(
        "{}.{}",
        URL_SAFE.encode(header),
        URL_SAFE_NO_PAD.encode(&payload)
    );
    assert!(input.contains('='));
    let sig = key(1).sign(input.as_bytes());
    let token = format!("{input}.{}", URL_SAFE.encode(sig.to_bytes()));
    assert!(assert_malformed(&token).contains("padding"));
}

#[test]
fn standard_alphabet_base64_is_malformed() {
    // Find claims whose standard encoding differs from base64url (contains '+' or '/').
    let mut c = claims();
    let mut n = 0;
    let token = loop {
        c.sub = format!("acme-{n}-???>>>");
        let payload = serde_json::to_vec(&c).unwrap();
        let header = br#"{"alg":"EdDSA"}"#;
        let input = format!(
            "{}.{}",
            STANDARD_NO_PAD.encode(header),
            STANDARD_NO_PAD.encode(&payload)
        );
        let sig = key(1).sign(input.as_bytes());
        let token = format!("{input}.{}", STANDARD_NO_PAD.encode(sig.to_bytes()));
        if token.contains('+') || token.contains('/') {
            break token;
        }
        n += 1;
    };
    assert!(assert_malformed(&token).contains("standard-alphabet"));
}

#[test]
fn non_canonical_trailing_bits_are_malformed() {
    let token = sign(&claims(), &key(1));
    let (input, sig) = token.rsplit_once('.').unwrap();
    // 64 bytes = 85 full characters + one carrying 4 bits; its 2 low bits must be zero.
    let last = sig.chars().last().unwrap();
    let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let idx = alphabet.find(last).unwrap();
    assert_eq!(idx & 3, 0);
    let bumped = alphabet.chars().nth(idx | 1).unwrap();
    let candidate = format!("{input}.{}{bumped}", &sig[..sig.len() - 1]);
    // It decodes to the same bytes under a lax decoder, so only strictness rejects it.
    assert!(assert_malformed(&candidate).contains("base64url"));
}

#[test]
fn stray_whitespace_anywhere_is_malformed() {
    let token = sign(&claims(), &key(1));
    let (h, rest) = token.split_once('.').unwrap();
    for candidate in [
        format!(" {token}"),
        format!("{token}\n"),
        format!("{h}.\t{rest}"),
        format!("{h} .{rest}"),
        format!("{}\r\n{}", &token[..20], &token[20..]),
    ] {
        assert!(assert_malformed(&candidate).contains("whitespace"));
    }
}

#[test]
fn two_or_four_segments_or_empty_ones_are_malformed() {
    let token = sign(&claims(), &key(1));
    let parts: Vec<&str> = token.split('.').collect();
    for candidate in [
        format!("{}.{}", parts[0], parts[1]),
        format!("{token}.{}", parts[2]),
        format!("{token}."),
        parts[0].to_string(),
        String::new(),
        "..".to_string(),
        format!(".{}.{}", parts[1], parts[2]),
        format!("{}..{}", parts[0], parts[2]),
        format!("{}.{}.", parts[0], parts[1]),
    ] {
        assert_malformed(&candidate);
    }
}

#[test]
fn a_non_json_or_non_object_header_is_malformed() {
    let payload = serde_json::to_vec(&claims()).unwrap();
    for header in [
        &b"not json"[..],
        b"[\"EdDSA\"]",
        b"\"EdDSA\"",
        b"{\"alg\":\"EdDSA\"",
        b"{}",
        b"\xff\xfe",
    ] {
        let token = sign_raw(header, &payload, &key(1));
        assert!(assert_malformed(&token).contains("header"));
    }
}

#[test]
fn array_shaped_claims_are_malformed() {
    // serde would map a JSON array onto the struct's fields in order.
    let c = claims();
    let payload = format!(r#"["{}","{}",null,{}]"#, c.sub, c.jti, c.exp);
    assert!(
        assert_malformed(&sign_raw(
            br#"{"alg":"EdDSA"}"#,
            payload.as_bytes(),
            &key(1)
        ))
        .contains("JSON object")
    );
}

#[test]
fn duplicate_members_are_malformed_not_last_wins() {
    // Why typed structs: a generic map silently keeps the last value.
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(r#"{"seats":5,"seats":500}"#).unwrap();
    assert_eq!(map["seats"], json!(500));

    let c = claims();
    let payload = format!(
        r#"{{"sub":"{}","jti":"{}","exp":{},"seats":5,"seats":500}}"#,
        c.sub, c.jti, c.exp
    );
    let token = sign_raw(br#"{"alg":"EdDSA"}"#, payload.as_bytes(), &key(1));
    assert!(assert_malformed(&token).contains("duplicate field"));

    let payload = format!(
        r#"{{"sub":"{}","jti":"{}","exp":{},"exp":{}}}"#,
        c.sub,
        c.jti,
        at(-86_400),
        c.exp
    );
    let token = sign_raw(br#"{"alg":"EdDSA"}"#, payload.as_bytes(), &key(1));
    assert_malformed(&token);

    let token = sign_raw(
        br#"{"alg":"none","alg":"EdDSA"}"#,
        serde_json::to_string(&c).unwrap().as_bytes(),
        &key(1),
    );
    assert!(assert_malformed(&token).contains("duplicate field"));
}

// --- Claims ---------------------------------------------------------------------------------

#[test]
fn exp_missing_or_of_the_wrong_type_is_malformed() {
    assert!(assert_malformed(&signed(std_header(), payload_without("exp"))).contains("exp"));
    for value in [
        json!(at(3600).to_string()),
        json!(at(3600) as f64 + 0.5),
        json!(1.0e10),
        json!(true),
        json!(null),
        json!([at(3600)]),
    ] {
        assert_malformed(&signed(std_header(), payload_with("exp", value)));
    }
}

#[test]
fn absurd_timestamps_are_malformed_without_overflow() {
    for value in [
        json!(i64::MAX),
        json!(u64::MAX),
        json!(MAX_TIMESTAMP + 1),
        json!(-1),
        json!(i64::MIN),
    ] {
        for field in ["exp", "nbf", "iat"] {
            assert_malformed(&signed(std_header(), payload_with(field, value.clone())));
        }
    }
    // A number too large for any integer type.
    let c = claims();
    let payload = format!(
        r#"{{"sub":"{}","jti":"{}","exp":1{}}}"#,
        c.sub,
        c.jti,
        "0".repeat(400)
    );
    assert_malformed(&sign_raw(
        br#"{"alg":"EdDSA"}"#,
        payload.as_bytes(),
        &key(1),
    ));
    // The far end of the accepted range works and its arithmetic does not overflow.
    let far = check(&signed(
        std_header(),
        payload_with("exp", json!(MAX_TIMESTAMP)),
    ))
    .unwrap();
    assert!(days_left(&far, now()) > 2_000_000);
}

#[test]
fn sub_and_jti_are_required_strings() {
    for field in ["sub", "jti"] {
        assert_malformed(&signed(std_header(), payload_without(field)));
        assert_malformed(&signed(std_header(), payload_with(field, json!(42))));
        assert_malformed(&signed(std_header(), payload_with(field, json!(""))));
        assert_malformed(&signed(std_header(), payload_with(field, json!(null))));
    }
}

#[test]
fn telemetry_required_must_be_a_json_bool() {
    for value in [
        json!("false"),
        json!(0),
        json!(null),
        json!("true"),
        json!(1),
    ] {
        assert_malformed(&signed(
            std_header(),
            payload_with("telemetry_required", value),
        ));
    }
}

#[test]
fn caps_must_be_u32() {
    for field in ["seats", "repos"] {
        for value in [
            json!(-1),
            json!(1.5),
            json!(u64::from(u32::MAX) + 1),
            json!("5"),
            json!(null),
        ] {
            assert_malformed(&signed(std_header(), payload_with(field, value)));
        }
        let max = check(&signed(std_header(), payload_with(field, json!(u32::MAX)))).unwrap();
        assert!(max.seats == Some(u32::MAX) || max.repos == Some(u32::MAX));
    }
}

#[test]
fn exp_honours_the_leeway_and_nothing_more() {
    let ok = check(&signed(std_header(), payload_with("exp", json!(at(-59)))));
    assert!(ok.is_ok(), "{ok:?}");
    let edge = check(&signed(
        std_header(),
        payload_with("exp", json!(at(-LEEWAY_SECS))),
    ));
    assert!(edge.is_ok(), "{edge:?}");
    match check(&signed(std_header(), payload_with("exp", json!(at(-61))))) {
        Err(LicenseError::Expired { exp, now: n }) => {
            assert_eq!(exp, at(-61));
            assert_eq!(n, at(0));
        }
        other => panic!("expected LicenseExpired, got {other:?}"),
    }
}

#[test]
fn expired_names_the_date() {
    let exp = datetime!(2026-05-31 00:00:00 UTC).unix_timestamp();
    let err = check(&signed(std_header(), payload_with("exp", json!(exp)))).unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("LicenseExpired: "), "{text}");
    assert!(text.contains("2026-05-31T00:00:00Z"), "{text}");
    assert!(text.contains("31 days ago"), "{text}");
}

#[test]
fn nbf_in_the_future_is_invalid_beyond_the_leeway() {
    assert!(check(&signed(std_header(), payload_with("nbf", json!(at(59))))).is_ok());
    for nbf in [at(61), at(301), at(86_400)] {
        let why = assert_invalid(&signed(std_header(), payload_with("nbf", json!(nbf))));
        assert!(why.contains("not valid before"), "{why}");
    }
}

#[test]
fn iat_in_the_future_is_invalid() {
    assert!(check(&signed(std_header(), payload_with("iat", json!(at(30))))).is_ok());
    let why = assert_invalid(&signed(std_header(), payload_with("iat", json!(at(3600)))));
    assert!(why.contains("clock"), "{why}");
}

// --- Size and depth -------------------------------------------------------------------------

#[test]
fn a_one_mebibyte_token_is_rejected_before_decoding() {
    let token = format!(
        "{}.{}.{}",
        "a".repeat(512 * 1024),
        "b".repeat(512 * 1024),
        "c".repeat(86)
    );
    assert!(token.len() > 1024 * 1024);
    assert!(assert_malformed(&token).contains("limit"));
    // Even when the bytes are not base64 at all.
    assert_malformed(&"\u{00e9}".repeat(600 * 1024));
}

#[test]
fn a_token_just_over_the_cap_is_malformed_and_one_under_is_judged_normally() {
    let mut c = claims();
    c.sub = "x".repeat(MAX_TOKEN_LEN);
    assert!(assert_malformed(&sign(&c, &key(1))).contains("limit"));
    c.sub = "x".repeat(MAX_TOKEN_LEN / 2);
    assert!(check(&sign(&c, &key(1))).is_ok());
}

#[test]
fn deep_nesting_and_many_claims_are_bounded() {
    let c = claims();
    let deep = format!(
        r#"{{"sub":"{}","jti":"{}","exp":{},"x":{}1{}}}"#,
        c.sub,
        c.jti,
        c.exp,
        "[".repeat(200),
        "]".repeat(200)
    );
    // An unknown claim is skipped without recursion, so even deep nesting costs nothing.
    assert!(check(&sign_raw(br#"{"alg":"EdDSA"}"#, deep.as_bytes(), &key(1))).is_ok());
    let very_deep = format!(
        r#"{{"sub":"{}","jti":"{}","exp":{},"x":{}1{}}}"#,
        c.sub,
        c.jti,
        c.exp,
        "[".repeat(2500),
        "]".repeat(2500)
    );
    assert!(
        check(&sign_raw(
            br#"{"alg":"EdDSA"}"#,
            very_deep.as_bytes(),
            &key(1)
        ))
        .is_ok()
    );
    // Nesting where a claim is expected is a type error.
    let nested_cap = format!(
        r#"{{"sub":"{}","jti":"{}","exp":{},"seats":{}1{}}}"#,
        c.sub,
        c.jti,
        c.exp,
        "[".repeat(200),
        "]".repeat(200)
    );
    assert_malformed(&sign_raw(
        br#"{"alg":"EdDSA"}"#,
        nested_cap.as_bytes(),
        &key(1),
    ));
    let deep_header = format!(
        r#"{{"alg":"EdDSA","x":{}0{}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    assert!(
        check(&sign_raw(
            deep_header.as_bytes(),
            serde_json::to_string(&c).unwrap().as_bytes(),
            &key(1),
        ))
        .is_ok()
    );
    // Many unknown claims within the size cap are ignored.
    let mut p = serde_json::to_value(&c).unwrap();
    for i in 0..300 {
        p[format!("c{i}")] = json!(i);
    }
    assert!(check(&signed(std_header(), p)).is_ok());
    // 10 000 claims exceed the cap.
    let mut p = serde_json::to_value(&c).unwrap();
    for i in 0..10_000 {
        p[format!("c{i}")] = json!(i);
    }
    assert_malformed(&signed(std_header(), p));
}

#[test]
fn every_error_display_starts_with_its_spec_name() {
    let cases = [
        (LicenseError::Missing, "LicenseMissing: "),
        (LicenseError::Malformed("x".into()), "LicenseMalformed: "),
        (LicenseError::Invalid("x".into()), "LicenseInvalid: "),
        (LicenseError::Expired { exp: 0, now: 1 }, "LicenseExpired: "),
        (
            LicenseError::PublicKeyError("x".into()),
            "LicensePublicKeyError: ",
        ),
    ];
    for (e, prefix) in cases {
        assert!(e.to_string().starts_with(prefix), "{e}");
    }
    assert_eq!(
        LicenseError::Missing.to_string(),
        "LicenseMissing: LETTUCE_LICENSE_KEY is required when LETTUCE_SELF_HOSTED=1"
    );
}

#[test]
fn days_left_rounds_down_and_goes_negative() {
    let mut c = claims();
    c.exp = at(86_400 + 10);
    assert_eq!(days_left(&c, now()), 1);
    c.exp = at(86_399);
    assert_eq!(days_left(&c, now()), 0);
    c.exp = at(-1);
    assert_eq!(days_left(&c, now()), -1);
    c.exp = 0;
    assert!(days_left(&c, now()) < -20_000);
}

// --- Public key -----------------------------------------------------------------------------

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "lettuce-license-{tag}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_public_key_loads_from_a_path_or_inline_pem() {
    let expected = key(1).verifying_key();
    let pem = public_key_pem(&expected);
    let dir = temp_dir("pk");
    let path = dir.join("public.pem");
    fs::write(&path, &pem).unwrap();
    assert_eq!(load_public_key(path.to_str().unwrap()).unwrap(), expected);
    assert_eq!(load_public_key(&pem).unwrap(), expected);
    assert_eq!(load_public_key(&format!("  {pem}\n")).unwrap(), expected);
    // Deployments often flatten newlines into literal `\n`.
    assert_eq!(
        load_public_key(&pem.replace('\n', "\\n")).unwrap(),
        expected
    );
    fs::remove_dir_all(dir).unwrap();
}

#[track_caller]
fn assert_key_error(source: &str, needle: &str) -> String {
    match load_public_key(source) {
        Err(LicenseError::PublicKeyError(why)) => {
            assert!(why.contains(needle), "{why} lacks {needle}");
            why
        }
        other => panic!("expected LicensePublicKeyError, got {other:?}"),
    }
}

#[test]
fn a_missing_or_unusable_public_key_is_an_error_naming_the_source() {
    let dir = temp_dir("pkbad");
    let missing = dir.join("nope.pem");
    assert_key_error(missing.to_str().unwrap(), missing.to_str().unwrap());
    assert_key_error(dir.to_str().unwrap(), "not a regular file");
    assert_key_error("", "LETTUCE_LICENSE_PUBLIC_KEY");

    let garbage = dir.join("garbage.pem");
    fs::write(&garbage, "this is not a key\n").unwrap();
    assert_key_error(garbage.to_str().unwrap(), garbage.to_str().unwrap());

    let binary = dir.join("binary.pem");
    fs::write(&binary, [0xffu8, 0xfe, 0]).unwrap();
    assert_key_error(binary.to_str().unwrap(), "not PEM");

    for (name, pem) in [
        ("rsa.pem", RSA_PUBLIC_PEM),
        ("p256.pem", P256_PUBLIC_PEM),
        ("ed448.pem", ED448_PUBLIC_PEM),
    ] {
        let p = dir.join(name);
        fs::write(&p, pem).unwrap();
        let why = assert_key_error(p.to_str().unwrap(), "not an Ed25519 public key");
        assert!(why.contains(name));
        assert_key_error(pem, "inline PEM");
    }

    let private = key(1).to_pkcs8_pem(Default::default()).unwrap();
    let why = assert_key_error(&private, "private key");
    assert!(
        !why.contains(&private[30..60]),
        "the key text leaked: {why}"
    );
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_small_order_public_key_is_refused() {
    // The identity point encodes as 1 followed by zeros: a valid point of order 1.
    let mut bytes = [0u8; 32];
    bytes[0] = 1;
    let weak = VerifyingKey::from_bytes(&bytes).unwrap();
    assert!(weak.is_weak());
    assert_key_error(&public_key_pem(&weak), "weak");
}

#[test]
fn a_keygen_pair_signs_and_verifies() {
    let signing = generate_signing_key();
    assert_ne!(signing.to_bytes(), generate_signing_key().to_bytes());
    let dir = temp_dir("kg");
    let path = dir.join("private.pem");
    fs::write(
        &path,
        signing.to_pkcs8_pem(Default::default()).unwrap().as_bytes(),
    )
    .unwrap();
    let loaded = load_signing_key(&path).unwrap();
    let public = load_public_key(&public_key_pem(&signing.verifying_key())).unwrap();
    assert!(verify(&sign(&claims(), &loaded), &public, now()).is_ok());
    fs::remove_dir_all(dir).unwrap();
}

// --- Cache and gate -------------------------------------------------------------------------

use ed25519_dalek::pkcs8::EncodePrivateKey as _;

#[test]
fn the_cache_is_0600_atomic_and_never_holds_the_token() {
    let dir = temp_dir("cache");
    let path = dir.join("sub/license.json");
    let token = sign(&claims(), &key(1));
    write_cache(&path, &claims(), &token, now()).unwrap();
    let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let text = fs::read_to_string(&path).unwrap();
    assert_no_token_in(&text, &token);
    let cache: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(cache["token_sha256"], json!(token_sha256(&token)));
    assert_eq!(cache["token_sha256"].as_str().unwrap().len(), 64);
    assert_eq!(cache["claims"]["sub"], json!("acme-corp"));
    assert_eq!(cache["verified_at"], json!("2026-07-01T12:00:00Z"));
    assert_eq!(read_cache(&path).unwrap().claims, claims());
    // Rewriting replaces the file and leaves no temporary behind.
    write_cache(&path, &claims(), &token, now() + time::Duration::hours(1)).unwrap();
    let names: Vec<_> = fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("license.json")]);
    fs::remove_dir_all(dir).unwrap();
}

struct GateFixture {
    dir: PathBuf,
    env: crate::config::Env,
}

impl GateFixture {
    fn new(tag: &str) -> GateFixture {
        let dir = temp_dir(tag);
        let key_path = dir.join("public.pem");
        fs::write(&key_path, public_key_pem(&key(1).verifying_key())).unwrap();
        let mut env = crate::config::Env::new();
        env.insert("LETTUCE_SELF_HOSTED".into(), "1".into());
        env.insert(
            "LETTUCE_LICENSE_PUBLIC_KEY".into(),
            key_path.display().to_string(),
        );
        env.insert(
            "LETTUCE_LICENSE_CACHE_PATH".into(),
            dir.join("license.json").display().to_string(),
        );
        GateFixture { dir, env }
    }

    fn with_token(mut self, token: &str) -> GateFixture {
        self.env.insert("LETTUCE_LICENSE_KEY".into(), token.into());
        self
    }

    fn run(&self, now: OffsetDateTime) -> Result<Option<License>, LicenseError> {
        evaluate_and_record(&Config::load(&self.env).unwrap(), now)
    }
}

impl Drop for GateFixture {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn the_gate_is_off_unless_self_hosted() {
    let mut f = GateFixture::new("off");
    f.env.insert("LETTUCE_SELF_HOSTED".into(), "false".into());
    assert!(f.run(now()).unwrap().is_none());
}

#[test]
fn the_gate_needs_a_key_when_self_hosted() {
    let f = GateFixture::new("missing");
    assert_eq!(f.run(now()).unwrap_err(), LicenseError::Missing);
    let f = GateFixture::new("blank").with_token("   ");
    assert_eq!(f.run(now()).unwrap_err(), LicenseError::Missing);
}

#[test]
fn the_gate_passes_a_good_license_and_writes_the_cache() {
    let token = sign(&claims(), &key(1));
    let f = GateFixture::new("good").with_token(&format!("{token}\n"));
    let license = f.run(now()).unwrap().unwrap();
    assert_eq!(license.claims, claims());
    assert_eq!(license.days_left, 30);
    assert!(license.warnings.is_empty(), "{:?}", license.warnings);
    let cache = read_cache(&f.dir.join("license.json")).unwrap();
    assert_eq!(cache.token_sha256, token_sha256(&token));
}

#[test]
fn the_gate_refuses_what_verify_refuses_and_checks_the_key_first() {
    let f = GateFixture::new("other").with_token(&sign(&claims(), &key(2)));
    assert!(matches!(f.run(now()), Err(LicenseError::Invalid(_))));
    let mut f = GateFixture::new("nokey").with_token(&sign(&claims(), &key(1)));
    f.env.insert(
        "LETTUCE_LICENSE_PUBLIC_KEY".into(),
        "/nonexistent/public.pem".into(),
    );
    assert!(
        matches!(f.run(now()), Err(LicenseError::PublicKeyError(w)) if w.contains("/nonexistent/public.pem"))
    );
}

#[test]
fn the_gate_never_trusts_the_cache() {
    // A hand-edited cache with a far-future exp does not rescue an expired token.
    let mut expired = claims();
    expired.exp = at(-86_400);
    let token = sign(&expired, &key(1));
    let f = GateFixture::new("trust").with_token(&token);
    let mut forged = claims();
    forged.exp = MAX_TIMESTAMP;
    write_cache(&f.dir.join("license.json"), &forged, &token, now()).unwrap();
    assert!(matches!(f.run(now()), Err(LicenseError::Expired { .. })));
}

#[test]
fn the_gate_warns_when_the_license_is_near_expiry() {
    let mut c = claims();
    c.exp = at(13 * 86_400 + 100);
    let f = GateFixture::new("near").with_token(&sign(&c, &key(1)));
    let license = f.run(now()).unwrap().unwrap();
    assert_eq!(license.days_left, 13);
    assert!(
        license.warnings.iter().any(|w| w.contains("13 days left")),
        "{:?}",
        license.warnings
    );
    c.exp = at(14 * 86_400 + 100);
    let f = GateFixture::new("far").with_token(&sign(&c, &key(1)));
    assert!(f.run(now()).unwrap().unwrap().warnings.is_empty());
}

#[test]
fn an_unwritable_cache_is_a_warning_not_a_failure() {
    let token = sign(&claims(), &key(1));
    let mut f = GateFixture::new("unwritable").with_token(&token);
    // A path below a regular file can never be created, whoever runs the test.
    let blocker = f.dir.join("file");
    fs::write(&blocker, "x").unwrap();
    f.env.insert(
        "LETTUCE_LICENSE_CACHE_PATH".into(),
        blocker.join("license.json").display().to_string(),
    );
    let license = f.run(now()).unwrap().unwrap();
    assert!(
        license
            .warnings
            .iter()
            .any(|w| w.contains("cannot write the license cache")),
        "{:?}",
        license.warnings
    );
    for w in &license.warnings {
        assert_no_token_in(w, &token);
    }
}

#[test]
fn a_clock_behind_the_high_water_mark_warns_and_the_mark_never_moves_back() {
    let mut c = claims();
    c.iat = Some(at(-10 * 86_400));
    c.nbf = None;
    let f = GateFixture::new("clock").with_token(&sign(&c, &key(1)));
    let cache = f.dir.join("license.json");
    assert!(f.run(now()).unwrap().unwrap().warnings.is_empty());
    // Half an hour back: within tolerance.
    let slightly = now() - time::Duration::minutes(30);
    assert!(f.run(slightly).unwrap().unwrap().warnings.is_empty());
    assert_eq!(read_cache(&cache).unwrap().verified_at, now());
    // Two days back: a warning, and the mark stays where it was.
    let behind = now() - time::Duration::days(2);
    let license = f.run(behind).unwrap().unwrap();
    assert!(
        license.warnings.iter().any(|w| w.contains("2 days behind")),
        "{:?}",
        license.warnings
    );
    assert_eq!(read_cache(&cache).unwrap().verified_at, now());
    // Moving forward raises it.
    let later = now() + time::Duration::days(1);
    assert!(f.run(later).unwrap().unwrap().warnings.is_empty());
    assert_eq!(read_cache(&cache).unwrap().verified_at, later);
}

#[test]
fn a_far_future_mark_fifo_or_huge_cache_is_ignored_never_stuck_or_hung() {
    let c = claims();
    let f = GateFixture::new("future-mark").with_token(&sign(&c, &key(1)));
    let cache = f.dir.join("license.json");
    assert!(f.run(now()).unwrap().unwrap().warnings.is_empty());
    // A hand-edited mark in the year 2200: ignored with a warning, replaced by now.
    let text = fs::read_to_string(&cache).unwrap();
    let mut doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    doc["verified_at"] = json!("2200-01-01T00:00:00Z");
    fs::write(&cache, doc.to_string()).unwrap();
    let license = f.run(now()).unwrap().unwrap();
    assert!(
        license.warnings.iter().any(|w| w.contains("implausible")),
        "{:?}",
        license.warnings
    );
    assert!(!license.warnings.iter().any(|w| w.contains("behind")));
    assert_eq!(read_cache(&cache).unwrap().verified_at, now());

    // A FIFO at the cache path: read_cache returns at once (a blocking open would hang boot).
    fs::remove_file(&cache).unwrap();
    let c_path = std::ffi::CString::new(cache.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    assert!(read_cache(&cache).is_none());
    fs::remove_file(&cache).unwrap();

    // A huge file is not read.
    fs::write(&cache, vec![b' '; 200 * 1024]).unwrap();
    assert!(read_cache(&cache).is_none());
}
