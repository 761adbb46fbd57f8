//! Unit tests of the GitHub client: endpoints, rate-limit headers, repository paths.

use super::repos::repo_path;
use super::*;
use crate::providers::RepoRef;

#[test]
fn hosts_default_to_github_com_and_ghes_gets_api_v3() {
    assert_eq!(
        endpoints("github.com", None, None),
        Endpoints {
            api: "https://api.github.com".into(),
            server: "https://github.com".into()
        }
    );
    assert_eq!(
        endpoints("ghes.example.com", None, None),
        Endpoints {
            api: "https://ghes.example.com/api/v3".into(),
            server: "https://ghes.example.com".into()
        }
    );
    assert_eq!(
        endpoints(
            "github.com",
            Some("http://127.0.0.1:9/"),
            Some("http://127.0.0.1:8")
        ),
        Endpoints {
            api: "http://127.0.0.1:9".into(),
            server: "http://127.0.0.1:8".into()
        }
    );
    assert_eq!(
        endpoints("ghes.local", None, Some("http://127.0.0.1:8")).api,
        "http://127.0.0.1:8/api/v3"
    );
}

fn answer(status: u16, headers: &[(&'static str, &str)]) -> Answer {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.insert(*k, HeaderValue::from_str(v).unwrap());
    }
    Answer {
        provider: "GitHub",
        status: StatusCode::from_u16(status).unwrap(),
        headers: map,
        body: Vec::new(),
    }
}

#[test]
fn rate_limits_are_read_from_either_kind_of_header() {
    let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
    let primary = answer(
        403,
        &[
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "1800000300"),
        ],
    );
    assert_eq!(
        rate_limit_until(&primary, now),
        Some(now + time::Duration::seconds(300))
    );
    let secondary = answer(403, &[("retry-after", "42")]);
    assert_eq!(
        rate_limit_until(&secondary, now),
        Some(now + time::Duration::seconds(42))
    );
    assert_eq!(
        rate_limit_until(&answer(429, &[]), now),
        Some(now + time::Duration::seconds(60))
    );
    // A 403 without those headers is a permission problem, not a rate limit.
    assert_eq!(
        rate_limit_until(&answer(403, &[("x-ratelimit-remaining", "17")]), now),
        None
    );
    assert_eq!(
        rate_limit_until(&answer(500, &[("retry-after", "1")]), now),
        None
    );
}

#[test]
fn repository_names_cannot_leave_the_repos_path() {
    for bad in [
        "acme",
        "acme/x/y",
        "../x",
        "acme/..",
        "a b/c",
        "acme/r?x=1",
        "/r",
    ] {
        assert!(repo_path(&RepoRef::github(1, bad)).is_err(), "{bad}");
    }
    assert!(repo_path(&RepoRef::github(1, "acme-inc/my_repo.js")).is_ok());
}
