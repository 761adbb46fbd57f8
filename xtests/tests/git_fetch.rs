//! The git fetch layer (`lettuce_worker::git`) with the real git CLI against a real smart-HTTP
//! server (`xtests::git_server`: git's own http-backend behind Basic auth, on loopback).

use std::collections::HashSet;
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use lettuce_worker::config::Secret;
use lettuce_worker::git::{self, GitAuth, GitError, RepoKey, Scratch, TreeEntry};
use tokio_util::sync::CancellationToken;
use xtests::git_server::{Down, GitServer, WorkRepo};

const USER: &str = "x-access-token";
const TOKEN: &str = "ghs_Lettuce0TestToken0123456789abcdefXYZ";
const LONG: Duration = Duration::from_secs(60);

fn auth() -> GitAuth {
    GitAuth::github(&Secret::new(TOKEN.to_string()))
}

fn b64(user: &str, token: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{token}"))
}

/// A scratch root of its own, deleted afterwards.
struct TempScratch {
    dir: PathBuf,
    scratch: Scratch,
}

impl TempScratch {
    fn new() -> TempScratch {
        let dir = std::env::temp_dir().join(format!(
            "lettuce-scratch-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempScratch {
            scratch: Scratch::new(&dir),
            dir,
        }
    }
}

impl Drop for TempScratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn server() -> GitServer {
    let s = GitServer::start().await;
    s.require(USER, TOKEN);
    s
}

fn key(server: &GitServer, name: &str) -> RepoKey {
    let host = server.base().trim_start_matches("http://").to_string();
    RepoKey::new("github", &host, "acme", name).unwrap()
}

/// A served repository `acme/<name>` with one commit of a few files.
fn simple_repo(server: &GitServer, name: &str) -> (WorkRepo, String) {
    let repo = server.create_repo(&format!("acme/{name}"));
    repo.write("README.md", "# hello\n");
    repo.write("src/lib.rs", "pub fn f() -> u32 { 42 }\n");
    let head = repo.commit("first");
    (repo, head)
}

/// `git ls-tree -r -z --long --full-tree` parsed here independently of the worker.
fn source_tree(repo: &WorkRepo, rev: &str) -> Vec<TreeEntry> {
    let raw = repo.ls_tree_raw(rev);
    raw.split(|b| *b == 0)
        .filter(|r| !r.is_empty())
        .map(|r| {
            let tab = r.iter().position(|b| *b == b'\t').unwrap();
            let meta = std::str::from_utf8(&r[..tab]).unwrap();
            let f: Vec<&str> = meta.split_whitespace().collect();
            TreeEntry {
                path: String::from_utf8_lossy(&r[tab + 1..]).into_owned(),
                mode: u32::from_str_radix(f[0], 8).unwrap(),
                blob: f[2].to_string(),
                size: if f[3] == "-" {
                    0
                } else {
                    f[3].parse().unwrap()
                },
            }
        })
        .collect()
}

fn by_path_in(tree: &[TreeEntry], path: &str) -> TreeEntry {
    tree.iter()
        .find(|e| e.path == path)
        .unwrap_or_else(|| panic!("{path} in the tree"))
        .clone()
}

// ---- /proc helpers ----

struct ProcInfo {
    pid: i32,
    pgrp: i32,
    state: char,
}

fn proc_stat(pid: i32) -> Option<ProcInfo> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    Some(ProcInfo {
        pid,
        state: f[0].chars().next()?,
        pgrp: f[2].parse().ok()?,
    })
}

fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Live processes whose working directory is under `root` (every git child of a Scratch runs
/// in `<root>/git-home`, and its helpers inherit that).
fn procs_under(root: &Path) -> Vec<ProcInfo> {
    all_pids()
        .into_iter()
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(root))
        })
        .filter_map(proc_stat)
        .filter(|p| !matches!(p.state, 'Z' | 'X'))
        .collect()
}

fn alive(pid: i32) -> bool {
    proc_stat(pid).is_some_and(|p| !matches!(p.state, 'Z' | 'X'))
}

fn group_members(pgrp: i32) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter_map(proc_stat)
        .filter(|p| p.pgrp == pgrp && !matches!(p.state, 'Z' | 'X'))
        .map(|p| p.pid)
        .collect()
}

/// Waits until git processes of this scratch are running; returns them and their groups.
async fn wait_for_git(root: &Path) -> (Vec<i32>, HashSet<i32>) {
    xtests::eventually(Duration::from_secs(10), "a git child to run", || async {
        let procs = procs_under(root);
        (!procs.is_empty()).then(|| {
            let groups: HashSet<i32> = procs.iter().map(|p| p.pgrp).collect();
            let mut pids: Vec<i32> = procs.iter().map(|p| p.pid).collect();
            for g in &groups {
                pids.extend(group_members(*g));
            }
            pids.sort();
            pids.dedup();
            (pids, groups)
        })
    })
    .await
}

// ---- tests ----

#[tokio::test(flavor = "multi_thread")]
async fn first_fetch_clones_the_commit_and_reads_its_exact_files() {
    let server = server().await;
    let ts = TempScratch::new();
    let repo = server.create_repo("acme/app");
    repo.write("README.md", "# hello\n");
    repo.write("src/nested/deep/lib.rs", "pub fn f() -> u32 { 42 }\n");
    repo.write("empty", "");
    let binary: Vec<u8> = (0..100_000u32).map(|i| (i * 7919 % 251) as u8).collect();
    repo.write("assets/blob.bin", &binary);
    repo.write("bin/run.sh", "#!/bin/sh\necho hi\n");
    std::fs::set_permissions(
        repo.dir.join("bin/run.sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("README.md", repo.dir.join("link")).unwrap();
    let odd = std::ffi::OsStr::from_bytes(b"caf\xe9.txt");
    std::fs::write(repo.dir.join(odd), "latin-1 name\n").unwrap();
    // A submodule entry (gitlink) pointing at a commit this repository does not have;
    // staged by hand (`commit` would `add -A` it away: there is no such directory).
    let sub = "1234567890abcdef1234567890abcdef12345678";
    repo.git(&["add", "-A"]);
    let gitlink = format!("160000,{sub},vendor/sub");
    repo.git(&["update-index", "--add", "--cacheinfo", &gitlink]);
    repo.git(&["commit", "--quiet", "-m", "first"]);
    repo.push_current();
    let head = repo.head();

    let k = key(&server, "app");
    let dir = ts
        .scratch
        .open(&k, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(
        dir.path(),
        ts.dir
            .join("repos/github")
            .join(server.base().trim_start_matches("http://"))
            .join("acme/app.git")
    );
    let fetched = ts
        .scratch
        .fetch(
            &dir,
            &server.url("acme/app"),
            &auth(),
            None,
            &CancellationToken::new(),
            LONG,
        )
        .await
        .unwrap();
    assert_eq!(fetched.commit, head);
    assert_eq!(fetched.refname, "refs/heads/main");
    assert!(fetched.fresh_clone);
    assert!(dir.path().join("shallow").is_file(), "a shallow fetch");

    let tree = ts.scratch.ls_tree(&dir, &fetched.commit).await.unwrap();
    assert_eq!(tree, source_tree(&repo, "HEAD"));
    assert_eq!(tree.len(), 8);
    let gitlink = by_path_in(&tree, "vendor/sub");
    assert!(gitlink.is_submodule());
    assert_eq!((gitlink.blob.as_str(), gitlink.size), (sub, 0));
    let by_path = |p: &str| by_path_in(&tree, p);
    assert_eq!(by_path("bin/run.sh").mode, 0o100755);
    assert!(by_path("link").is_symlink());
    assert_eq!(by_path("assets/blob.bin").size, 100_000);
    assert!(tree.iter().any(|e| e.path == "caf\u{fffd}.txt"));

    let mut reader = ts.scratch.blob_reader(&dir).unwrap();
    let work = repo.dir.clone();
    let tree2 = tree.clone();
    let tree_oid = repo.git(&["rev-parse", "HEAD^{tree}"]).trim().to_string();
    let reader_back = tokio::task::spawn_blocking(move || {
        for e in tree2.iter().filter(|e| !e.is_submodule()) {
            let got = reader.read(&e.blob, e.size).unwrap();
            let want = if e.is_symlink() {
                std::fs::read_link(work.join(&e.path))
                    .unwrap()
                    .as_os_str()
                    .as_bytes()
                    .to_vec()
            } else if e.path == "caf\u{fffd}.txt" {
                std::fs::read(work.join(std::ffi::OsStr::from_bytes(b"caf\xe9.txt"))).unwrap()
            } else {
                std::fs::read(work.join(&e.path)).unwrap()
            };
            assert_eq!(got, want, "{}", e.path);
            assert_eq!(got.len() as u64, e.size);
        }
        let missing = reader.read(&"0".repeat(40), 0).unwrap_err();
        assert_eq!(missing.kind(), std::io::ErrorKind::NotFound);
        // Still in step after a missing object.
        let readme = tree2.iter().find(|e| e.path == "README.md").unwrap();
        assert_eq!(reader.read(&readme.blob, 0).unwrap(), b"# hello\n");
        assert!(reader.read("not-an-oid", 0).is_err());
        // A tree is not a blob, and the stream stays usable.
        let not_blob = reader.read(&tree_oid, 0).unwrap_err();
        assert_eq!(not_blob.kind(), std::io::ErrorKind::InvalidData);
        assert_eq!(reader.read(&readme.blob, 0).unwrap(), b"# hello\n");
        reader
    })
    .await
    .unwrap();
    drop(reader_back);
    assert!(
        procs_under(&ts.dir).is_empty(),
        "cat-file ends with its reader"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_commit_is_fetched_incrementally_into_the_same_bare_repo() {
    let server = server().await;
    let ts = TempScratch::new();
    let repo = server.create_repo("acme/big");
    let big: Vec<u8> = (0..400_000).map(|_| rand::random::<u8>()).collect();
    repo.write("big.bin", &big);
    repo.write("notes.txt", "one\n");
    let first = repo.commit("first");
    let k = key(&server, "big");
    let cancel = CancellationToken::new();

    let dir = ts.scratch.open(&k, &cancel).await.unwrap();
    let f1 = ts
        .scratch
        .fetch(
            &dir,
            &server.url("acme/big"),
            &auth(),
            Some("main"),
            &cancel,
            LONG,
        )
        .await
        .unwrap();
    assert_eq!(f1.commit, first);
    assert!(f1.fresh_clone);
    let clone_bytes = server.bytes_sent();
    let clone_requests = server.requests();
    drop(dir);
    let marker = ts.scratch.repo_path(&k).join("lettuce-test-marker");
    std::fs::write(&marker, "kept").unwrap();

    repo.write("notes.txt", "one\ntwo\n");
    let second = repo.commit("second");
    server.reset_counters();
    let dir = ts.scratch.open(&k, &cancel).await.unwrap();
    let f2 = ts
        .scratch
        .fetch(
            &dir,
            &server.url("acme/big"),
            &auth(),
            Some("main"),
            &cancel,
            LONG,
        )
        .await
        .unwrap();
    assert_eq!(f2.commit, second);
    assert_eq!(f2.refname, "refs/heads/main");
    assert!(!f2.fresh_clone);
    assert!(marker.exists(), "the same bare repository was reused");
    let fetch_bytes = server.bytes_sent();
    eprintln!(
        "clone: {clone_bytes} bytes in {clone_requests} requests; incremental: {fetch_bytes} bytes in {} requests",
        server.requests()
    );
    assert!(
        fetch_bytes * 4 < clone_bytes,
        "incremental fetch sent {fetch_bytes} bytes, the clone {clone_bytes}"
    );
    assert!(server.requests() <= clone_requests);

    let tree = ts.scratch.ls_tree(&dir, &f2.commit).await.unwrap();
    assert_eq!(tree, source_tree(&repo, "HEAD"));
    let notes = tree.iter().find(|e| e.path == "notes.txt").unwrap().clone();
    let big_entry = tree.iter().find(|e| e.path == "big.bin").unwrap().clone();
    let mut reader = ts.scratch.blob_reader(&dir).unwrap();
    let (n, b) = tokio::task::spawn_blocking(move || {
        (
            reader.read(&notes.blob, notes.size).unwrap(),
            reader.read(&big_entry.blob, big_entry.size).unwrap(),
        )
    })
    .await
    .unwrap();
    assert_eq!(n, b"one\ntwo\n");
    assert_eq!(
        b, big,
        "the unchanged blob is still there after the incremental fetch"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn default_branch_named_refs_tags_and_missing_refs() {
    let server = server().await;
    let ts = TempScratch::new();
    let repo = server.create_repo("acme/refs");
    repo.write("a", "on main\n");
    let on_main = repo.commit("main commit");
    repo.tag("v1");
    repo.branch("trunk");
    repo.write("a", "on trunk\n");
    let on_trunk = repo.commit("trunk commit");
    repo.set_default_branch("trunk");
    let url = server.url("acme/refs");
    let cancel = CancellationToken::new();
    let dir = ts
        .scratch
        .open(&key(&server, "refs"), &cancel)
        .await
        .unwrap();
    let fetch = |r: Option<&'static str>| {
        let (ts, dir, url, cancel) = (&ts, &dir, &url, &cancel);
        async move { ts.scratch.fetch(dir, url, &auth(), r, cancel, LONG).await }
    };

    let f = fetch(None).await.unwrap();
    assert_eq!(
        (f.commit.as_str(), f.refname.as_str()),
        (on_trunk.as_str(), "refs/heads/trunk")
    );
    let f = fetch(Some("main")).await.unwrap();
    assert_eq!(
        (f.commit.as_str(), f.refname.as_str()),
        (on_main.as_str(), "refs/heads/main")
    );
    assert!(!f.fresh_clone);
    let f = fetch(Some("refs/heads/trunk")).await.unwrap();
    assert_eq!(
        (f.commit.as_str(), f.refname.as_str()),
        (on_trunk.as_str(), "refs/heads/trunk")
    );
    let f = fetch(Some("v1")).await.unwrap();
    assert_eq!(
        f.commit, on_main,
        "an annotated tag is peeled to its commit"
    );
    assert_eq!(f.refname, "refs/tags/v1");

    let e = fetch(Some("nope")).await.unwrap_err();
    eprintln!("{e}");
    assert!(
        matches!(e, GitError::RefNotFound { ref refname, .. } if refname == "nope"),
        "{e:?}"
    );
    assert!(!e.is_retryable());
    let e = fetch(Some("bad..ref")).await.unwrap_err();
    assert!(matches!(e, GitError::Invalid { .. }), "{e:?}");

    // An empty repository has no default branch.
    server.create_repo("acme/empty");
    let dir2 = ts
        .scratch
        .open(&key(&server, "empty"), &cancel)
        .await
        .unwrap();
    let e = ts
        .scratch
        .fetch(
            &dir2,
            &server.url("acme/empty"),
            &auth(),
            None,
            &cancel,
            LONG,
        )
        .await
        .unwrap_err();
    assert!(matches!(e, GitError::RefNotFound { .. }), "{e:?}");
    assert!(!e.is_retryable());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_token_is_a_permanent_auth_failure_that_names_no_token() {
    let server = server().await;
    let ts = TempScratch::new();
    simple_repo(&server, "app");
    let url = server.url("acme/app");
    let cancel = CancellationToken::new();
    let dir = ts
        .scratch
        .open(&key(&server, "app"), &cancel)
        .await
        .unwrap();
    let wrong = "ghs_WrongToken0000aaaabbbbccccddddeeee";
    for status in [401, 403] {
        server.set_wrong_token_status(status);
        for refname in [None, Some("main")] {
            let bad = GitAuth::github(&Secret::new(wrong.to_string()));
            let e = ts
                .scratch
                .fetch(&dir, &url, &bad, refname, &cancel, LONG)
                .await
                .unwrap_err();
            eprintln!("{status}: {e}");
            assert!(matches!(e, GitError::AuthFailed { .. }), "{status}: {e:?}");
            assert!(!e.is_retryable());
            for text in [e.to_string(), format!("{e:?}"), format!("{bad:?}")] {
                for secret in [wrong, TOKEN, &b64(USER, wrong), &b64(USER, TOKEN)] {
                    assert!(!text.contains(secret), "a credential leaked into: {text}");
                }
            }
        }
    }
    let e = ts
        .scratch
        .fetch(&dir, &url, &GitAuth::Anonymous, None, &cancel, LONG)
        .await
        .unwrap_err();
    assert!(matches!(e, GitError::AuthFailed { .. }), "{e:?}");
    // A GitLab-style username with the right token is still the wrong pair here.
    let e = ts
        .scratch
        .fetch(
            &dir,
            &url,
            &GitAuth::gitlab(&Secret::new(TOKEN.to_string())),
            None,
            &cancel,
            LONG,
        )
        .await
        .unwrap_err();
    assert!(matches!(e, GitError::AuthFailed { .. }), "{e:?}");
    assert!(!e.to_string().contains(TOKEN));
    ts.scratch
        .fetch(&dir, &url, &auth(), None, &cancel, LONG)
        .await
        .expect("the right token works");
    // A repository the server does not have.
    let e = ts
        .scratch
        .fetch(
            &dir,
            &server.url("acme/absent"),
            &auth(),
            Some("main"),
            &cancel,
            LONG,
        )
        .await
        .unwrap_err();
    eprintln!("{e}");
    assert!(matches!(e, GitError::RepoNotFound { .. }), "{e:?}");
    assert!(!e.is_retryable());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_down_server_is_retryable_and_the_fetch_succeeds_once_it_is_back() {
    let server = server().await;
    let ts = TempScratch::new();
    let (_repo, head) = simple_repo(&server, "app");
    let url = server.url("acme/app");
    let cancel = CancellationToken::new();
    let dir = ts
        .scratch
        .open(&key(&server, "app"), &cancel)
        .await
        .unwrap();
    for how in [Down::Refuse, Down::Unavailable] {
        server.set_down(how).await;
        for refname in [None, Some("main")] {
            let e = ts
                .scratch
                .fetch(&dir, &url, &auth(), refname, &cancel, LONG)
                .await
                .unwrap_err();
            eprintln!("{how:?}: {e}");
            assert!(matches!(e, GitError::Unreachable { .. }), "{how:?}: {e:?}");
            assert!(e.is_retryable());
        }
        server.set_up().await;
        let f = ts
            .scratch
            .fetch(&dir, &url, &auth(), None, &cancel, LONG)
            .await
            .unwrap();
        assert_eq!(f.commit, head);
    }
    // Nobody listens at all.
    let e = ts
        .scratch
        .fetch(
            &dir,
            "http://127.0.0.1:1/acme/app.git",
            &auth(),
            None,
            &cancel,
            LONG,
        )
        .await
        .unwrap_err();
    assert!(matches!(e, GitError::Unreachable { .. }), "{e:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_mid_fetch_kills_every_git_process_within_a_second() {
    let server = server().await;
    let ts = Arc::new(TempScratch::new());
    simple_repo(&server, "app");
    server.set_delay(Duration::from_secs(8));
    let cancel = CancellationToken::new();
    let k = key(&server, "app");
    let url = server.url("acme/app");
    let task = {
        let (ts, cancel) = (ts.clone(), cancel.clone());
        tokio::spawn(async move {
            let dir = ts.scratch.open(&k, &cancel).await?;
            ts.scratch
                .fetch(&dir, &url, &auth(), Some("main"), &cancel, LONG)
                .await
        })
    };
    xtests::eventually(
        Duration::from_secs(10),
        "the server to see a request",
        || async { (server.requests() > 0).then_some(()) },
    )
    .await;
    let (pids, groups) = wait_for_git(&ts.dir).await;
    assert!(
        pids.len() >= 2,
        "git and its remote helper run: {pids:?} in {groups:?}"
    );
    let started = Instant::now();
    cancel.cancel();
    let e = tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .expect("fetch returns within a second of the cancel")
        .unwrap()
        .unwrap_err();
    assert!(matches!(e, GitError::Cancelled), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(1));
    // SIGKILL was sent to the whole group; give the kernel a moment to finish them off.
    xtests::eventually(
        Duration::from_millis(500),
        "every git process to be gone",
        || async { pids.iter().all(|p| !alive(*p)).then_some(()) },
    )
    .await;
    for g in groups {
        assert!(group_members(g).is_empty(), "group {g} still has members");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fetch_past_its_time_limit_is_killed_and_reports_timeout() {
    let server = server().await;
    let ts = TempScratch::new();
    simple_repo(&server, "app");
    server.set_delay(Duration::from_secs(8));
    let cancel = CancellationToken::new();
    let dir = ts
        .scratch
        .open(&key(&server, "app"), &cancel)
        .await
        .unwrap();
    let started = Instant::now();
    let e = ts
        .scratch
        .fetch(
            &dir,
            &server.url("acme/app"),
            &auth(),
            None,
            &cancel,
            Duration::from_millis(800),
        )
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(matches!(e, GitError::Timeout(_)), "{e:?}");
    assert!(e.is_retryable());
    assert!(took < Duration::from_millis(1800), "took {took:?}");
    xtests::eventually(
        Duration::from_millis(500),
        "no git process left",
        || async { procs_under(&ts.dir).is_empty().then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_token_never_appears_in_any_process_argv() {
    let server = server().await;
    let ts = Arc::new(TempScratch::new());
    let (_repo, head) = simple_repo(&server, "app");
    server.set_delay(Duration::from_millis(400));
    let cancel = CancellationToken::new();
    let k = key(&server, "app");
    let url = server.url("acme/app");
    let task = {
        let (ts, cancel) = (ts.clone(), cancel.clone());
        tokio::spawn(async move {
            let dir = ts.scratch.open(&k, &cancel).await?;
            ts.scratch
                .fetch(&dir, &url, &auth(), None, &cancel, LONG)
                .await
        })
    };
    let secrets = [TOKEN.to_string(), b64(USER, TOKEN)];
    let mut ours_seen = HashSet::new();
    let mut header_in_environ = false;
    while !task.is_finished() {
        let ours: HashSet<i32> = procs_under(&ts.dir).iter().map(|p| p.pid).collect();
        for pid in all_pids() {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            for s in &secrets {
                assert!(
                    !text.contains(s.as_str()),
                    "pid {pid} argv has the token: {text}"
                );
            }
            if ours.contains(&pid) {
                ours_seen.insert(pid);
                // Sanity: these are the fetch's processes — the header is in their environment.
                if let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) {
                    header_in_environ |= String::from_utf8_lossy(&env).contains(&secrets[1]);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    let f = task.await.unwrap().unwrap();
    assert_eq!(f.commit, head);
    assert!(ours_seen.len() >= 2, "saw git processes: {ours_seen:?}");
    assert!(
        header_in_environ,
        "the scan looked at the fetch's own processes"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_repository_lock_is_exclusive_per_repository_and_cancellable() {
    let server = server().await;
    let ts = Arc::new(TempScratch::new());
    let cancel = CancellationToken::new();
    let a = key(&server, "a");
    let b = key(&server, "b");
    let held = ts.scratch.open(&a, &cancel).await.unwrap();
    // Another process sees the flock too.
    let other = std::process::Command::new("flock")
        .args(["-n", "-E", "75"])
        .arg(held.lock_path())
        .arg("true")
        .status()
        .unwrap();
    assert_eq!(other.code(), Some(75), "flock(1) finds the lock taken");

    let waiter = {
        let (ts, a, cancel) = (ts.clone(), a.clone(), cancel.clone());
        tokio::spawn(async move { ts.scratch.open(&a, &cancel).await.map(|_| Instant::now()) })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiter.is_finished(),
        "a second open of the same repository waits"
    );
    let other = tokio::time::timeout(Duration::from_millis(300), ts.scratch.open(&b, &cancel))
        .await
        .expect("another repository is not blocked")
        .unwrap();
    drop(other);

    let c2 = CancellationToken::new();
    let cancelled = {
        let (ts, a, c2) = (ts.clone(), a.clone(), c2.clone());
        tokio::spawn(async move { ts.scratch.open(&a, &c2).await.map(|_| ()) })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = Instant::now();
    c2.cancel();
    let e = cancelled.await.unwrap().unwrap_err();
    assert!(matches!(e, GitError::Cancelled), "{e:?}");
    assert!(t.elapsed() < Duration::from_millis(300));

    let released = Instant::now();
    drop(held);
    let got = tokio::time::timeout(Duration::from_secs(1), waiter)
        .await
        .expect("the waiter gets the lock once it is released")
        .unwrap()
        .unwrap();
    assert!(got >= released);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_fetches_of_one_repository_serialize_and_of_two_overlap() {
    let server = server().await;
    let ts = Arc::new(TempScratch::new());
    simple_repo(&server, "a");
    simple_repo(&server, "b");
    // A fetch of a named ref is 3 requests: ~0.9 s each.
    server.set_delay(Duration::from_millis(300));
    let mut tasks = Vec::new();
    for name in ["a", "a", "b"] {
        let (ts, k, url) = (
            ts.clone(),
            key(&server, name),
            server.url(&format!("acme/{name}")),
        );
        tasks.push(tokio::spawn(async move {
            let cancel = CancellationToken::new();
            let dir = ts.scratch.open(&k, &cancel).await.unwrap();
            let start = Instant::now();
            ts.scratch
                .fetch(&dir, &url, &auth(), Some("main"), &cancel, LONG)
                .await
                .unwrap();
            let end = Instant::now();
            drop(dir);
            (name, start, end)
        }));
    }
    let mut spans = Vec::new();
    for t in tasks {
        spans.push(t.await.unwrap());
    }
    let overlap =
        |x: &(&str, Instant, Instant), y: &(&str, Instant, Instant)| x.1 < y.2 && y.1 < x.2;
    let (a1, a2, b) = (&spans[0], &spans[1], &spans[2]);
    assert!(!overlap(a1, a2), "two fetches of one repository overlapped");
    assert!(
        overlap(a1, b) || overlap(a2, b),
        "fetches of different repositories ran one after the other"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_scratch_disk_is_a_retryable_disk_full_naming_the_directory() {
    let server = server().await;
    let repo = server.create_repo("acme/huge");
    let big: Vec<u8> = (0..2_000_000).map(|_| rand::random::<u8>()).collect();
    repo.write("big.bin", &big);
    repo.commit("big");
    let mnt = std::env::temp_dir().join(format!(
        "lettuce-tinyfs-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&mnt)
        .output()
        .unwrap();
    if !mounted.status.success() {
        eprintln!(
            "SKIPPED: cannot mount a tiny tmpfs ({}); the classifier's ENOSPC cases are unit-tested",
            String::from_utf8_lossy(&mounted.stderr).trim()
        );
        let _ = std::fs::remove_dir(&mnt);
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let _unmount = Unmount(mnt.clone());
    let scratch = Scratch::new(&mnt);
    let cancel = CancellationToken::new();
    let dir = scratch.open(&key(&server, "huge"), &cancel).await.unwrap();
    let e = scratch
        .fetch(&dir, &server.url("acme/huge"), &auth(), None, &cancel, LONG)
        .await
        .unwrap_err();
    eprintln!("{e}");
    match &e {
        GitError::DiskFull { dir: d, .. } => assert_eq!(d, dir.path()),
        other => panic!("expected DiskFull, got {other:?}"),
    }
    assert!(e.is_retryable());
    assert!(
        e.to_string().contains(&dir.path().display().to_string()),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_scratch_repository_is_recreated_and_the_fetch_succeeds() {
    let server = server().await;
    let ts = TempScratch::new();
    let (_repo, head) = simple_repo(&server, "app");
    let url = server.url("acme/app");
    let cancel = CancellationToken::new();
    let dir = ts
        .scratch
        .open(&key(&server, "app"), &cancel)
        .await
        .unwrap();
    let auth = auth();
    let fetch = || {
        ts.scratch
            .fetch(&dir, &url, &auth, Some("main"), &cancel, LONG)
    };
    assert!(fetch().await.unwrap().fresh_clone);

    type Damage = fn(&Path);
    let damages: [(&str, Damage); 3] = [
        ("objects deleted", |d| {
            std::fs::remove_dir_all(d.join("objects")).unwrap()
        }),
        ("HEAD garbage", |d| {
            std::fs::write(d.join("HEAD"), "garbage\n").unwrap()
        }),
        ("objects garbage", |d| {
            // Every loose object and pack (small fetches are unpacked to loose objects).
            let mut stack = vec![d.join("objects")];
            while let Some(p) = stack.pop() {
                for e in std::fs::read_dir(&p).unwrap() {
                    let e = e.unwrap();
                    if e.file_type().unwrap().is_dir() {
                        stack.push(e.path());
                    } else {
                        let mut perms = e.metadata().unwrap().permissions();
                        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
                        std::fs::set_permissions(e.path(), perms).unwrap();
                        std::fs::write(e.path(), [0xAB; 64]).unwrap();
                    }
                }
            }
        }),
    ];
    for (what, damage) in damages {
        damage(dir.path());
        let f = fetch().await.unwrap_or_else(|e| panic!("{what}: {e:?}"));
        assert_eq!(f.commit, head, "{what}");
        assert!(f.fresh_clone, "{what}: re-created");
        let tree = ts.scratch.ls_tree(&dir, &f.commit).await.unwrap();
        assert_eq!(tree.len(), 2, "{what}");
        assert!(
            !fetch().await.unwrap().fresh_clone,
            "{what}: reused afterwards"
        );
    }
}

#[tokio::test]
async fn git_version_answers() {
    let v = git::version().await.unwrap();
    assert!(v.starts_with("git version "), "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_server_takes_chunked_and_gzipped_request_bodies() {
    let server = server().await;
    let repo = server.create_repo("acme/many");
    // 3000 branches on distinct commits, in one fast-import: a fetch of all of them sends
    // ~150 KB of "want" lines.
    let mut stream = String::new();
    for i in 0..3000 {
        stream.push_str(&format!(
            "commit refs/heads/b{i}\ncommitter T <t@t.invalid> 1700000000 +0000\ndata 2\nc\nM 644 inline f\ndata {}\n{i}\n\n",
            format!("{i}\n").len()
        ));
    }
    let mut child = std::process::Command::new("git")
        .args(["fast-import", "--quiet"])
        .current_dir(&repo.bare)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stream.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
    // The header goes through the environment here too: the argv test scans every process.
    let header = format!("Authorization: Basic {}", b64(USER, TOKEN));
    for (post_buffer, what) in [("65536", "chunked"), ("1048576", "gzip")] {
        let dest = std::env::temp_dir().join(format!(
            "lettuce-many-{}-{:08x}.git",
            std::process::id(),
            rand::random::<u32>()
        ));
        server.reset_counters();
        let out = tokio::process::Command::new("git")
            .args(["-c", &format!("http.postBuffer={post_buffer}")])
            .args(["clone", "--bare", "--quiet", &server.url("acme/many")])
            .arg(&dest)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_CONFIG_COUNT", "1")
            .env("GIT_CONFIG_KEY_0", "http.extraHeader")
            .env("GIT_CONFIG_VALUE_0", &header)
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let branches = std::process::Command::new("git")
            .args(["for-each-ref", "--count=5000", "refs/heads"])
            .current_dir(&dest)
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&branches.stdout).lines().count(),
            3000
        );
        let _ = std::fs::remove_dir_all(&dest);
        match what {
            "chunked" => assert!(server.chunked_requests() > 0, "{:?}", server.paths()),
            _ => assert!(server.gzipped_requests() > 0, "{:?}", server.paths()),
        }
    }
    assert!(server.last_path().unwrap().contains("git-upload-pack"));
}
