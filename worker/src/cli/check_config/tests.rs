//! Unit tests of check-config's checks.

use super::database::version_check;
use super::*;

#[test]
fn servers_older_than_15_fail_the_version_check() {
    let old = version_check(140_010, "14.10");
    assert_eq!(old.level, Level::Fail);
    assert!(old.message.contains("too old"), "{}", old.message);
    assert_eq!(version_check(150_004, "15.4").level, Level::Ok);
    assert_eq!(version_check(170_000, "17.0").level, Level::Ok);
}
