use super::*;

fn cfg() -> HeartbeatConfig {
    HeartbeatConfig::new("http://x/", "lic-1", "Acme", Some(50), None)
}

#[test]
fn body_has_exactly_the_documented_fields_with_their_types() {
    let now = time::macros::datetime!(2026-11-29 05:06:07.123456 UTC);
    let body = Payload::new(
        &cfg(),
        Uuid::nil(),
        now.date(),
        now,
        db::telemetry::Figures {
            workers_active: 3,
            jobs_completed_24h: 10,
            jobs_failed_24h: 2,
        },
    );
    let json = serde_json::to_value(&body).unwrap();
    let obj = json.as_object().unwrap();
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut want = FIELDS.to_vec();
    want.sort_unstable();
    assert_eq!(keys, want);
    assert_eq!(json["schema"], 1);
    assert_eq!(json["day"], "2026-11-29");
    assert_eq!(json["sent_at"], "2026-11-29T05:06:07Z");
    assert_eq!(json["seats_licensed"], 50);
    assert!(json["repos_licensed"].is_null());
    assert_eq!(json["instance_id"], Uuid::nil().to_string());
}

#[test]
fn backoff_doubles_and_is_capped() {
    let mut c = cfg();
    c.retry_base = Duration::from_secs(10);
    c.retry_max = Duration::from_secs(60);
    let within = |d: Duration, plain: u64| {
        d >= Duration::from_secs(plain) && d <= Duration::from_secs(plain).mul_f64(1.1)
    };
    assert!(within(c.backoff(1), 10));
    assert!(within(c.backoff(2), 20));
    assert!(within(c.backoff(3), 40));
    assert!(within(c.backoff(4), 60));
    assert!(within(c.backoff(100), 60));
}

#[test]
fn ages_read_in_the_largest_unit() {
    assert_eq!(describe_age(time::Duration::seconds(40)), "40 s");
    assert_eq!(describe_age(time::Duration::minutes(90)), "1 h");
    assert_eq!(describe_age(time::Duration::days(8)), "8 d");
}
