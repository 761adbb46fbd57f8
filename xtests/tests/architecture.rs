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
