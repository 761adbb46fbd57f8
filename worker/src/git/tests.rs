//! Unit tests of the git layer: path parts, remotes and ref names are validated, FETCH_HEAD is
//! read, and `GitAuth` never shows its token.

use super::fetch::{check_refname, check_remote, fetched_refname};
use super::*;

#[test]
fn path_parts_are_validated() {
    assert!(RepoKey::new("github", "github.com", "acme", "app").is_ok());
    assert!(RepoKey::new("gitlab", "gitlab.example:8443", "acme", "app.js").is_ok());
    for (p, h, o, n) in [
        ("", "h", "o", "n"),
        ("github", "h", "..", "n"),
        ("github", "h", "o", ".."),
        ("github", "h", "o/x", "n"),
        ("github", "h", ".hidden", "n"),
        ("github", "h", "o", "a..b"),
        ("github", "h", "o", "new\nline"),
        ("github", "", "o", "n"),
    ] {
        let e = RepoKey::new(p, h, o, n).unwrap_err();
        assert!(matches!(e, GitError::Invalid { .. }), "{p}/{h}/{o}/{n}");
        assert!(!e.is_retryable());
    }
    let s = Scratch::new("/data");
    let k = RepoKey::new("github", "github.com", "acme", "app").unwrap();
    assert_eq!(
        s.repo_path(&k),
        Path::new("/data/repos/github/github.com/acme/app.git")
    );
}

#[test]
fn remotes_are_validated() {
    assert!(check_remote("https://github.com/acme/app.git").is_ok());
    assert!(check_remote("http://127.0.0.1:8080/acme/app.git").is_ok());
    for bad in [
        "file:///etc",
        "ext::sh -c x",
        "-uhttps://x",
        "https://user:pw@github.com/a/b.git",
        "https://github.com/a b",
        "https:///path",
    ] {
        let e = check_remote(bad).unwrap_err();
        assert!(!e.to_string().contains("pw"), "{e}");
    }
}

#[test]
fn refnames_are_validated() {
    for ok in [
        "main",
        "refs/heads/main",
        "v1.2",
        "refs/pull/12/head",
        "feature/x",
    ] {
        assert!(check_refname(ok).is_ok(), "{ok}");
    }
    for bad in [
        "", "-x", "a..b", "a:b", "a b", "x.lock", "/x", "x/", "a^", "@{u}x", "a/.b",
    ] {
        assert!(check_refname(bad).is_err(), "{bad}");
    }
}

#[test]
fn fetch_head_names_the_ref() {
    let oid = "a".repeat(40);
    assert_eq!(
        fetched_refname(&format!("{oid}\t\tbranch 'main' of http://h/a.git\n")).as_deref(),
        Some("refs/heads/main")
    );
    assert_eq!(
        fetched_refname(&format!("{oid}\t\ttag 'v1' of http://h/a.git\n")).as_deref(),
        Some("refs/tags/v1")
    );
    assert_eq!(
        fetched_refname(&format!("{oid}\t\t'refs/pull/1/head' of http://h/a.git\n")).as_deref(),
        Some("refs/pull/1/head")
    );
}

#[test]
fn auth_debug_hides_the_token() {
    let a = GitAuth::github(&Secret::new("ghs_supersecret".into()));
    let d = format!("{a:?}");
    assert!(!d.contains("supersecret"), "{d}");
    assert!(d.contains("x-access-token"));
}
