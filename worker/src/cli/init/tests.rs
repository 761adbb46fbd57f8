//! Unit tests of `worker init`: input checks, the pinned compose file, the generated secrets,
//! and writes that never replace or follow what `init` did not write.

use super::render::{shell_quote, timestamp_rfc3339};
use super::*;

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lettuce-init-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn existing_fifos_and_symlinks_are_refused_never_read_or_followed() {
    let dir = scratch();
    let fifo = dir.join(".env");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    // Returns at once (reading a FIFO would hang until a writer came).
    let err = read_existing(&fifo).unwrap_err().to_string();
    assert!(err.contains("not a regular file"), "{err}");

    let target = dir.join("elsewhere");
    std::fs::write(&target, "theirs").unwrap();
    let link = dir.join("docker-compose.yml");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let err = read_existing(&link).unwrap_err().to_string();
    assert!(err.contains("not a regular file"), "{err}");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "theirs");

    assert!(read_existing(&dir.join("absent")).unwrap().is_none());
    std::fs::write(dir.join("plain"), "x").unwrap();
    assert_eq!(read_existing(&dir.join("plain")).unwrap().unwrap(), b"x");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_file_that_appears_meanwhile_is_kept_not_replaced() {
    let dir = scratch();
    let path = dir.join(".env");
    write_atomically(&path, "ours\n", 0o600).unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "ours\n");
    // Someone else's .env created after the backup step: the final link refuses it.
    std::fs::write(&path, "theirs\n").unwrap();
    let err = write_atomically(&path, "ours again\n", 0o600)
        .unwrap_err()
        .to_string();
    assert!(err.contains("appeared while init was writing"), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "theirs\n");
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn compose_template_has_the_pieces_init_rewrites() {
    assert!(COMPOSE_TEMPLATE.contains(IMAGE_TEMPLATE));
    assert!(COMPOSE_TEMPLATE.contains("\n    build:\n"));
}

#[test]
fn pin_compose_pins_the_image_and_drops_the_build_fallback() {
    let out = pin_compose(COMPOSE_TEMPLATE, "1.4.2", false);
    assert!(out.contains("    image: ghcr.io/uselettuce/worker:1.4.2\n"));
    assert!(!out.contains("LETTUCE_VERSION:?"));
    assert!(!out.contains("build:"));
    assert!(!out.contains("dockerfile:"));
    assert!(!out.contains("public.pem:ro"));
    assert!(!out.contains("Fallback for a source checkout"));
    assert!(
        !out.contains("the tag always names"),
        "the comment block goes with it"
    );
    // The rest of the worker service survives the cut.
    assert!(out.contains("    restart: unless-stopped\n    env_file:\n"));
    let mounted = pin_compose(COMPOSE_TEMPLATE, "1.4.2", true);
    assert!(mounted.contains(
        "worker:1.4.2\n    volumes:\n      - ./public.pem:/var/lib/lettuce/public.pem:ro\n"
    ));
}

#[test]
fn domains_and_versions_are_checked() {
    assert_eq!(
        normalize_domain("https://Lettuce.Example.com/").unwrap(),
        "lettuce.example.com"
    );
    assert_eq!(normalize_domain("10.0.0.5:8443").unwrap(), "10.0.0.5:8443");
    for bad in ["", "  ", "a b", "x/y", "-x", "a\nb", "a$b"] {
        assert!(normalize_domain(bad).is_err(), "{bad:?}");
    }
    for good in ["1.4.2", "v1", "1.4.2-rc.1", "latest", "1_2"] {
        assert!(check_version(good).is_ok(), "{good:?}");
    }
    for bad in [
        "",
        "-1",
        ".1",
        "1 2",
        "1:2",
        "a/b",
        "${X}",
        &"9".repeat(129),
    ] {
        assert!(check_version(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn secrets_are_fresh_43_character_base64url() {
    let a = generate_secrets().unwrap();
    let b = generate_secrets().unwrap();
    let mut all: Vec<&str> = a.iter().chain(&b).map(|(_, v)| v.as_str()).collect();
    for v in &all {
        assert_eq!(v.len(), 43);
        assert_eq!(URL_SAFE_NO_PAD.decode(v).unwrap().len(), SECRET_BYTES);
    }
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 2 * SECRET_NAMES.len());
}

#[test]
fn shell_quote_quotes_only_when_needed() {
    assert_eq!(shell_quote("/srv/lettuce"), "/srv/lettuce");
    assert_eq!(shell_quote("/srv/my dir"), "'/srv/my dir'");
    assert_eq!(shell_quote("it's"), r"'it'\''s'");
}

#[test]
fn timestamps_are_file_name_safe() {
    let t = time::macros::datetime!(2026-11-29 05:04:33 UTC);
    assert_eq!(timestamp(t), "20261129T050433Z");
    assert_eq!(timestamp_rfc3339(t), "2026-11-29T05:04:33Z");
}
