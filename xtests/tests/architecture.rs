//! ARCHITECTURE.md invariants that a machine can check on the source tree.

use std::path::{Path, PathBuf};

fn worker_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../worker/src")
}

/// Every `.rs` file under `dir`, relative to `worker/src`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The file's text before its unit tests (`#[cfg(test)]`), which may hold SQL-looking
/// strings as test data.
fn product_text(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    match text.find("#[cfg(test)]") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// "All SQL lives in `db/` (and the schema in `schema/`)": no string literal outside
/// `worker/src/db/` starts a SQL statement.
#[test]
fn sql_lives_only_in_db_and_schema() {
    let root = worker_src();
    let mut files = Vec::new();
    sources(&root, &mut files);
    let statement = [
        "SELECT ",
        "INSERT INTO",
        "UPDATE lettuce.",
        "DELETE FROM",
        "CREATE TABLE",
        "CREATE INDEX",
        "CREATE OR REPLACE",
        "ALTER TABLE",
        "DROP TABLE",
        "WITH ",
    ];
    let mut found = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&root).unwrap();
        if rel.starts_with("db") || rel.ends_with("tests.rs") {
            continue;
        }
        for (n, line) in product_text(file).lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for literal in code.split('"').skip(1).step_by(2) {
                if statement
                    .iter()
                    .any(|s| literal.trim_start().starts_with(s))
                {
                    found.push(format!("{}:{}: {}", rel.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "SQL outside worker/src/db/:\n{}",
        found.join("\n")
    );
}

/// Files may grow past ~600 lines only as test corpora (files named `tests.rs`).
#[test]
fn no_source_file_grows_past_600_lines() {
    let root = worker_src();
    let mut files = Vec::new();
    sources(&root, &mut files);
    let mut over = Vec::new();
    for file in &files {
        let rel = file
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let lines = std::fs::read_to_string(file).unwrap().lines().count();
        let corpus = rel.ends_with("tests.rs");
        if lines > 600 && !corpus {
            over.push(format!("{rel}: {lines} lines"));
        }
    }
    assert!(over.is_empty(), "split these files:\n{}", over.join("\n"));
}

/// "No statement is named": the worker's SQL goes out as the unnamed statement with typed
/// parameters (`query_typed*`, `execute_typed`, `params!`) or over the simple protocol, never as
/// a named prepared statement, which a transaction pooler (PgBouncer in `transaction` mode)
/// can send to a server connection that never saw it (`db/statement.rs`). tokio-postgres'
/// `query`/`execute(&str, …)` prepare a named statement first, so they are out too.
#[test]
fn db_sends_no_named_statement() {
    let root = worker_src();
    let mut files = Vec::new();
    sources(&root.join("db"), &mut files);
    let named = [
        ".prepare(",
        ".prepare_cached(",
        ".prepare_typed(",
        ".query(",
        ".query_one(",
        ".query_opt(",
        ".query_raw(",
        ".execute(",
        ".execute_raw(",
        ".copy_in(",
        ".copy_out(",
    ];
    let mut found = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&root).unwrap();
        for (n, line) in product_text(file).lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if named.iter().any(|m| code.contains(m)) {
                found.push(format!("{}:{}: {}", rel.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "named statements in worker/src/db/ (use query_typed/execute_typed with params!):\n{}",
        found.join("\n")
    );
}
