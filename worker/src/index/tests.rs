//! Unit tests of the indexer: exact symbols per language, classification, incremental
//! carry-over, cancellation, reading a previous index back.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write;
use std::path::Path;
use std::rc::Rc;

use serde_json::Value;

use super::extract::{Parsed, Parsers};
use super::*;

type Row = (&'static str, Kind, u32, u32, Option<&'static str>);

fn symbols_of(language: Language, src: &str) -> Vec<(String, Kind, u32, u32, Option<String>)> {
    let mut parsers = Parsers::default();
    match parsers.parse(language, src.as_bytes(), None, &|| false) {
        Parsed::Symbols(s) => s
            .into_iter()
            .map(|s| (s.name, s.kind, s.line, s.column, s.enclosing))
            .collect(),
        other => panic!("{language:?} did not parse: {other:?}"),
    }
}

/// The exact set (and, as written, the source order) of definitions.
fn assert_symbols(language: Language, src: &str, expected: &[Row]) {
    let got = symbols_of(language, src);
    let expected: Vec<(String, Kind, u32, u32, Option<String>)> = expected
        .iter()
        .map(|&(n, k, l, c, e)| (n.to_string(), k, l, c, e.map(str::to_string)))
        .collect();
    assert_eq!(got, expected, "{language:?}");
}

use Kind::{Class, Constant, Function, Interface, Method, Module, Trait, Type};

#[test]
fn rust_symbols() {
    assert_symbols(
        Language::Rust,
        include_str!("testdata/sample.rs"),
        &[
            ("LIMIT", Constant, 1, 11, None),
            ("COUNTER", Constant, 2, 12, None),
            ("Point", Type, 4, 12, None),
            ("Shape", Type, 8, 6, None),
            ("Bits", Type, 12, 7, None),
            ("Id", Type, 16, 6, None),
            ("Area", Trait, 18, 11, None),
            ("Unit", Type, 19, 10, Some("Area")),
            ("area", Method, 20, 8, Some("Area")),
            ("name", Method, 21, 8, Some("Area")),
            ("new", Method, 27, 12, Some("Point")),
            ("ORIGIN", Constant, 30, 11, Some("Point")),
            ("Unit", Type, 34, 10, Some("Shape")),
            ("area", Method, 35, 8, Some("Shape")),
            ("helper", Function, 36, 12, Some("area")),
            ("inner", Module, 41, 5, None),
            ("nested", Function, 42, 12, Some("inner")),
            ("main", Function, 45, 4, None),
        ],
    );
}

#[test]
fn python_symbols() {
    assert_symbols(
        Language::Python,
        include_str!("testdata/sample.py"),
        &[
            ("MAX_SIZE", Constant, 3, 1, None),
            ("A", Constant, 4, 1, None),
            ("B", Constant, 4, 5, None),
            ("_PRIVATE", Constant, 6, 1, None),
            ("Alias", Type, 10, 6, None),
            ("top", Function, 13, 5, None),
            ("inner", Function, 14, 9, Some("top")),
            ("fetch", Function, 19, 11, None),
            ("Base", Class, 23, 7, None),
            ("method", Method, 26, 9, Some("Base")),
            ("static_async", Method, 30, 15, Some("Base")),
            ("Nested", Class, 33, 11, Some("Base")),
            ("deep", Method, 34, 13, Some("Nested")),
        ],
    );
}

#[test]
fn go_symbols() {
    assert_symbols(
        Language::Go,
        include_str!("testdata/sample.go"),
        &[
            ("Pi", Constant, 5, 7, None),
            ("A", Constant, 8, 2, None),
            ("B", Constant, 8, 5, None),
            ("C", Constant, 9, 2, None),
            ("Point", Type, 12, 6, None),
            ("Shape", Interface, 16, 6, None),
            ("Area", Method, 17, 2, Some("Shape")),
            ("ID", Type, 20, 6, None),
            ("Celsius", Type, 22, 6, None),
            ("List", Type, 24, 6, None),
            ("New", Function, 26, 6, None),
            ("Move", Method, 28, 17, Some("Point")),
            ("step", Constant, 29, 8, Some("Move")),
            ("Len", Method, 33, 18, Some("List")),
        ],
    );
}

#[test]
fn javascript_symbols() {
    assert_symbols(
        Language::JavaScript,
        include_str!("testdata/sample.js"),
        &[
            ("VERSION", Constant, 3, 14, None),
            ("helper", Function, 4, 7, None),
            ("legacy", Function, 6, 5, None),
            ("main", Function, 8, 10, None),
            ("inner", Function, 10, 9, Some("main")),
            ("gen", Function, 14, 11, None),
            ("Widget", Class, 16, 22, None),
            ("constructor", Method, 18, 3, Some("Widget")),
            ("size", Method, 21, 7, Some("Widget")),
            ("create", Method, 24, 10, Some("Widget")),
            ("#hidden", Method, 27, 3, Some("Widget")),
            ("Thing", Class, 30, 7, None),
            ("run", Method, 31, 3, Some("Thing")),
            ("obj", Constant, 34, 7, None),
            ("first", Constant, 38, 15, None),
            ("second", Constant, 38, 24, None),
            ("others", Constant, 38, 46, None),
            ("alpha", Constant, 39, 9, None),
            ("renamed", Constant, 39, 22, None),
            ("gamma", Constant, 39, 31, None),
            ("epsilon", Constant, 39, 51, None),
        ],
    );
}

#[test]
fn typescript_symbols() {
    assert_symbols(
        Language::TypeScript,
        include_str!("testdata/sample.ts"),
        &[
            ("Shape", Interface, 1, 18, None),
            ("area", Method, 2, 3, Some("Shape")),
            ("Id", Type, 6, 13, None),
            ("Color", Type, 8, 6, None),
            ("Geometry", Module, 12, 11, None),
            ("ORIGIN", Constant, 13, 16, Some("Geometry")),
            ("distance", Function, 14, 19, Some("Geometry")),
            ("external", Module, 19, 16, None),
            ("ext", Function, 20, 19, Some("external")),
            ("Base", Class, 23, 16, None),
            ("describe", Method, 24, 12, Some("Base")),
            ("run", Method, 26, 10, Some("Base")),
            ("overload", Function, 29, 10, None),
            ("overload", Function, 30, 10, None),
            ("handler", Function, 32, 14, None),
        ],
    );
}

#[test]
fn tsx_symbols() {
    assert_symbols(
        Language::Tsx,
        include_str!("testdata/sample.tsx"),
        &[
            ("App", Function, 1, 17, None),
            ("Button", Function, 4, 14, None),
        ],
    );
}

#[test]
fn java_symbols() {
    assert_symbols(
        Language::Java,
        include_str!("testdata/Sample.java"),
        &[
            ("Outer", Class, 5, 14, None),
            ("MAX", Constant, 6, 29, Some("Outer")),
            ("A", Constant, 8, 25, Some("Outer")),
            ("B", Constant, 8, 34, Some("Outer")),
            ("Outer", Method, 10, 12, Some("Outer")),
            ("run", Method, 12, 10, Some("Outer")),
            ("Local", Class, 13, 15, Some("run")),
            ("Inner", Class, 16, 18, Some("Outer")),
            ("get", Method, 17, 13, Some("Inner")),
            ("Mode", Type, 20, 10, Some("Outer")),
            ("flip", Method, 20, 31, Some("Mode")),
            ("Shape", Interface, 23, 11, None),
            ("SIDES", Constant, 24, 9, Some("Shape")),
            ("area", Method, 25, 12, Some("Shape")),
            ("Pair", Class, 28, 8, None),
            ("Pair", Method, 29, 5, Some("Pair")),
            ("Marker", Interface, 33, 12, None),
        ],
    );
}

#[test]
fn broken_syntax_still_yields_what_parses() {
    let src = "def ok():\n    pass\n\ndef broken(:\n    return\n\nclass Later:\n    pass\n";
    let names: Vec<String> = symbols_of(Language::Python, src)
        .into_iter()
        .map(|s| s.0)
        .collect();
    assert!(names.contains(&"ok".to_string()), "{names:?}");
    assert!(names.contains(&"Later".to_string()), "{names:?}");
}

#[test]
fn deeply_nested_input_does_not_overflow() {
    let depth = 50_000;
    let src = format!("const X = {}{};\n", "[".repeat(depth), "]".repeat(depth));
    let got = symbols_of(Language::JavaScript, &src);
    assert_eq!(got, vec![("X".to_string(), Constant, 1, 7, None)]);
}

#[test]
fn language_names_are_their_json() {
    for l in [
        Language::Rust,
        Language::JavaScript,
        Language::TypeScript,
        Language::Tsx,
        Language::CSharp,
        Language::Cpp,
    ] {
        assert_eq!(serde_json::to_value(l).unwrap(), Value::from(l.name()));
    }
}

#[test]
fn classify_rules() {
    use super::classify::*;
    assert_eq!(language("src/main.rs"), Some(Language::Rust));
    assert_eq!(language("a/B.JAVA"), Some(Language::Java));
    assert_eq!(language("ui/App.tsx"), Some(Language::Tsx));
    assert_eq!(language("types.d.ts"), Some(Language::TypeScript));
    assert_eq!(language("tools/BUILD"), Some(Language::Python));
    assert_eq!(language(".bashrc"), None);
    assert_eq!(language("Makefile"), None);
    assert_eq!(language("notes.xyz"), None);
    assert!(vendored("vendor/a.go"));
    assert!(vendored("web/node_modules/x/index.js"));
    assert!(vendored("src/third_party/lib.c"));
    assert!(!vendored("src/vendor.rs"));
    assert!(!vendored("vendored/a.go"));
    assert!(generated_name("dist/app.min.js"));
    assert!(generated_name("api/service.pb.go"));
    assert!(generated_name("proto/msg_pb2.py"));
    assert!(generated_name("Cargo.lock"));
    assert!(generated_name("web/package-lock.json"));
    assert!(!generated_name("src/min.js"));
    assert!(generated_marker(
        b"// Code generated by protoc-gen-go. DO NOT EDIT.\npackage x\n"
    ));
    assert!(generated_marker(b"/* @generated by relay */\n"));
    assert!(generated_marker(b"// <auto-generated>\n"));
    assert!(generated_marker(
        b"# Automatically Generated -- DO NOT EDIT\n"
    ));
    assert!(!generated_marker(
        b"// DO NOT EDIT this by hand, it is important\n"
    ));
    let mut late = vec![b' '; MARKER_SNIFF_BYTES];
    late.extend_from_slice(b"@generated");
    assert!(!generated_marker(&late));
    assert!(binary(b"\x89PNG\r\n\x1a\n\0\0"));
    assert!(!binary("h\u{e9}llo \u{1f600}".as_bytes()));
    let mut late_nul = vec![b'a'; BINARY_SNIFF_BYTES];
    late_nul.push(0);
    assert!(!binary(&late_nul));
    assert_eq!(count_lines(b""), 0);
    assert_eq!(count_lines(b"a"), 1);
    assert_eq!(count_lines(b"a\n"), 1);
    assert_eq!(count_lines(b"a\nb"), 2);
    assert_eq!(count_lines(b"\n\n"), 2);
}

// ---------------------------------------------------------------------------------------
// index() over an in-memory repository

fn blob_id(content: &[u8]) -> String {
    let mut h = DefaultHasher::new();
    content.hash(&mut h);
    format!("{:040x}", h.finish())
}

/// An in-memory repository: entries plus blobs; records every blob read and panics on a
/// read of a blob marked forbidden (too large, symlink, vendored …: never to be read).
#[derive(Default, Clone)]
struct Repo {
    entries: Vec<Entry>,
    blobs: HashMap<String, Vec<u8>>,
    forbidden: HashSet<String>,
    reads: Rc<RefCell<Vec<String>>>,
}

impl Repo {
    fn add(&mut self, path: &str, mode: u32, content: &[u8]) -> String {
        let blob = blob_id(content);
        self.entries.push(Entry {
            path: path.to_string(),
            mode,
            blob: blob.clone(),
            size: content.len() as u64,
        });
        self.blobs.insert(blob.clone(), content.to_vec());
        blob
    }
    fn file(&mut self, path: &str, content: &str) -> &mut Self {
        self.add(path, 0o100644, content.as_bytes());
        self
    }
    fn unreadable(&mut self, path: &str, mode: u32, content: &[u8]) -> &mut Self {
        let blob = self.add(path, mode, content);
        self.forbidden.insert(blob);
        self
    }
    fn sorted(&mut self) -> &mut Self {
        self.entries.sort_by(|a, b| a.path.cmp(&b.path));
        self
    }
    fn reads(&self) -> Vec<String> {
        self.reads.borrow().clone()
    }
}

impl Blobs for Repo {
    fn read(&mut self, blob: &str, _size_hint: u64) -> std::io::Result<Vec<u8>> {
        assert!(
            !self.forbidden.contains(blob),
            "read a blob it must not: {blob}"
        );
        self.reads.borrow_mut().push(blob.to_string());
        self.blobs
            .get(blob)
            .cloned()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, blob.to_string()))
    }
}

fn run(
    repo: &mut Repo,
    previous: Option<&Previous>,
    dir: &Path,
    options: &Options,
) -> Result<Output, IndexError> {
    let entries = repo.entries.clone();
    index(entries, repo, previous, dir, options, &|| false)
}

fn lines(path: &Path) -> Vec<String> {
    let raw = zstd::decode_all(std::fs::File::open(path).unwrap()).unwrap();
    String::from_utf8(raw)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn records(path: &Path) -> HashMap<String, Value> {
    lines(path)
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["path"].as_str().unwrap().to_string(), v)
        })
        .collect()
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir =
        std::env::temp_dir().join(format!("lettuce-index-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn classification_of_every_kind_of_entry() {
    let dir = tempdir("classify");
    let options = Options {
        max_file_bytes: 1000,
        ..Options::default()
    };
    let mut repo = Repo::default();
    repo.file("src/lib.rs", "pub fn one() {}\nfn two() {}").add(
        "assets/logo.png",
        0o100644,
        b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR",
    );
    repo.file(
        "api/api.go",
        "// Code generated by protoc-gen-go. DO NOT EDIT.\npackage api\nfunc X() {}\n",
    )
    .file("README.md", "# Title\n")
    .file("notes.xyz", "plain\n")
    .file("bad.py", "def ok():\n    pass\ndef (:\n")
    .unreadable("vendor/dep/lib.rs", 0o100644, b"fn vendored() {}\n")
    .unreadable("web/app.min.js", 0o100644, b"function a(){}")
    .unreadable("Cargo.lock", 0o100644, b"# lock\n")
    .unreadable("big.rs", 0o100644, &vec![b'a'; 1001])
    .unreadable("link.rs", 0o120000, b"src/lib.rs")
    .unreadable("deps/sub", 0o160000, b"");
    // An entry whose size says small but whose blob is over the limit.
    let liar = repo.add("liar.rs", 0o100644, &vec![b'/'; 2000]);
    repo.entries.last_mut().unwrap().size = 10;
    repo.sorted();

    let out = run(&mut repo, None, &dir, &options).unwrap();
    let files = records(&out.files_path);
    let get = |p: &str| files.get(p).unwrap_or_else(|| panic!("{p} not listed"));
    let reason = |p: &str| get(p).get("reason").cloned().unwrap_or(Value::Null);

    assert_eq!(files.len(), repo.entries.len());
    let lib = get("src/lib.rs");
    assert_eq!(lib["language"], "rust");
    assert_eq!(lib["parsed"], true);
    assert_eq!(lib["lines"], 2);
    assert!(lib.get("reason").is_none(), "{lib}");
    assert_eq!(reason("assets/logo.png"), "binary");
    assert_eq!(get("assets/logo.png")["lines"], Value::Null);
    assert_eq!(get("assets/logo.png")["language"], Value::Null);
    assert_eq!(reason("api/api.go"), "generated");
    assert_eq!(get("api/api.go")["lines"], 3);
    assert_eq!(get("api/api.go")["language"], "go");
    assert_eq!(reason("README.md"), "unsupported_language");
    assert_eq!(get("README.md")["language"], "markdown");
    assert_eq!(reason("notes.xyz"), "unsupported_language");
    assert_eq!(get("notes.xyz")["language"], Value::Null);
    assert_eq!(get("bad.py")["parsed"], true);
    assert_eq!(reason("vendor/dep/lib.rs"), "vendored");
    assert_eq!(reason("web/app.min.js"), "generated");
    assert_eq!(reason("Cargo.lock"), "generated");
    assert_eq!(reason("big.rs"), "too_large");
    assert_eq!(get("big.rs")["size"], 1001);
    assert_eq!(get("big.rs")["lines"], Value::Null);
    assert_eq!(reason("link.rs"), "symlink");
    assert_eq!(get("link.rs")["language"], Value::Null);
    assert_eq!(get("link.rs")["lines"], Value::Null);
    assert_eq!(reason("deps/sub"), "submodule");
    assert_eq!(reason("liar.rs"), "too_large");
    assert_eq!(get("liar.rs")["blob"], liar.as_str());
    for (path, record) in &files {
        assert_eq!(
            record["parsed"] == true,
            record.get("reason").is_none(),
            "{path}: {record}"
        );
    }

    let symbols: Vec<Value> = lines(&out.symbols_path)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let paths: HashSet<&str> = symbols
        .iter()
        .map(|s| s["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, HashSet::from(["src/lib.rs", "bad.py"]));
    assert_eq!(
        symbols[symbols.len() - 2..],
        [
            serde_json::json!({"path": "src/lib.rs", "name": "one", "kind": "function",
                "line": 1, "column": 8, "enclosing": null}),
            serde_json::json!({"path": "src/lib.rs", "name": "two", "kind": "function",
                "line": 2, "column": 4, "enclosing": null}),
        ]
    );

    assert_eq!(out.files, files.len() as u64);
    assert_eq!(out.symbols, symbols.len() as u64);
    assert_eq!(out.parsed, 2);
    assert_eq!(out.carried, 0);
    assert_eq!(
        out.bytes_parsed,
        get("src/lib.rs")["size"].as_u64().unwrap() + get("bad.py")["size"].as_u64().unwrap()
    );
    let rust = out.counts["rust"];
    // src/lib.rs, vendor/dep/lib.rs, big.rs, liar.rs (link.rs has no language).
    assert_eq!((rust.files, rust.parsed, rust.symbols), (4, 1, 2));
    assert_eq!(rust.bytes, 27 + 17 + 1001 + 10);
    assert_eq!(out.counts["go"].files, 1);
    assert_eq!(out.counts["go"].parsed, 0);
    assert!(!out.counts.contains_key(""));
    assert_eq!(listing(&dir), [FILES_NAME, SYMBOLS_NAME]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn parse_over_its_time_budget_is_a_parse_error_and_the_next_file_parses() {
    let dir = tempdir("timeout");
    let big: String = (0..20_000)
        .map(|i| format!("def f{i}(x):\n    return x\n"))
        .collect();
    let mut repo = Repo::default();
    repo.file("a_big.py", &big)
        .file("b_small.py", "def g():\n    pass\n");
    let options = Options {
        parse_timeout: Some(std::time::Duration::ZERO),
        ..Options::default()
    };
    let out = run(&mut repo, None, &dir, &options).unwrap();
    let files = records(&out.files_path);
    assert_eq!(files["a_big.py"]["reason"], "parse_error");
    assert_eq!(files["a_big.py"]["parsed"], false);
    assert_eq!(files["a_big.py"]["lines"], 40_000);
    // Small inputs finish before tree-sitter first reports progress.
    assert_eq!(files["b_small.py"]["parsed"], true);
    assert_eq!(out.symbols, 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn sample_repo() -> Repo {
    let mut repo = Repo::default();
    repo.file("a/lib.rs", include_str!("testdata/sample.rs"))
        .file("b/app.py", include_str!("testdata/sample.py"))
        .file("c/main.go", include_str!("testdata/sample.go"))
        .file("d/Sample.java", include_str!("testdata/Sample.java"))
        .file("e/notes.txt", "hello\n")
        .unreadable("f/link", 0o120000, b"a/lib.rs")
        .file("g/index.ts", include_str!("testdata/sample.ts"));
    repo.sorted();
    repo
}

#[test]
fn incremental_reads_only_the_changed_blob_and_equals_a_full_index() {
    let (full1, full2, incr) = (tempdir("full1"), tempdir("full2"), tempdir("incr"));
    let options = Options::default();
    let mut repo = sample_repo();
    let first = run(&mut repo, None, &full1, &options).unwrap();
    let previous = Previous::read(
        std::fs::File::open(&first.files_path).unwrap(),
        std::fs::File::open(&first.symbols_path).unwrap(),
    )
    .unwrap();

    // Change one file: a new blob id at the same path.
    let mut changed = sample_repo();
    let new_src = "def only():\n    pass\n";
    let new_blob = blob_id(new_src.as_bytes());
    let entry = changed
        .entries
        .iter_mut()
        .find(|e| e.path == "b/app.py")
        .unwrap();
    entry.blob = new_blob.clone();
    entry.size = new_src.len() as u64;
    changed
        .blobs
        .insert(new_blob.clone(), new_src.as_bytes().to_vec());

    let mut full_repo = changed.clone();
    full_repo.reads = Rc::default();
    let full = run(&mut full_repo, None, &full2, &options).unwrap();
    let out = run(&mut changed, Some(&previous), &incr, &options).unwrap();

    assert_eq!(changed.reads(), vec![new_blob]);
    assert_eq!(lines(&out.files_path), lines(&full.files_path));
    assert_eq!(lines(&out.symbols_path), lines(&full.symbols_path));
    assert_eq!(out.carried, 6);
    assert_eq!(out.counts, full.counts);
    assert_eq!(
        (out.files, out.symbols, out.parsed),
        (full.files, full.symbols, full.parsed)
    );
    assert_eq!(out.bytes_parsed, new_src.len() as u64);
    assert_eq!(full.carried, 0);
    assert_ne!(lines(&first.symbols_path), lines(&out.symbols_path));
    for dir in [full1, full2, incr] {
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn a_previous_record_is_carried_only_for_the_same_path_blob_and_mode() {
    let (first_dir, second_dir) = (tempdir("mode1"), tempdir("mode2"));
    let mut repo = Repo::default();
    repo.file("x.rs", "fn x() {}\n").file("y.rs", "fn y() {}\n");
    let first = run(&mut repo, None, &first_dir, &Options::default()).unwrap();
    let previous = Previous::read(
        std::fs::File::open(&first.files_path).unwrap(),
        std::fs::File::open(&first.symbols_path).unwrap(),
    )
    .unwrap();
    assert_eq!(previous.len(), 2);
    // x.rs turns into a symlink with the same blob id; y.rs moves to z.rs.
    let mut next = repo.clone();
    next.reads = Rc::default();
    next.entries[0].mode = 0o120000;
    next.forbidden.insert(next.entries[0].blob.clone());
    next.entries[1].path = "z.rs".to_string();
    let out = run(&mut next, Some(&previous), &second_dir, &Options::default()).unwrap();
    let files = records(&out.files_path);
    assert_eq!(out.carried, 0);
    assert_eq!(files["x.rs"]["reason"], "symlink");
    assert_eq!(files["z.rs"]["parsed"], true);
    assert_eq!(next.reads(), vec![next.entries[1].blob.clone()]);
    for dir in [first_dir, second_dir] {
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn previous_round_trip_carries_everything() {
    let (a, b) = (tempdir("rt1"), tempdir("rt2"));
    let mut repo = sample_repo();
    let first = run(&mut repo, None, &a, &Options::default()).unwrap();
    let previous = Previous::read(
        std::fs::File::open(&first.files_path).unwrap(),
        std::fs::File::open(&first.symbols_path).unwrap(),
    )
    .unwrap();
    assert_eq!(previous.len(), repo.entries.len());
    for e in &repo.entries {
        assert_eq!(previous.blob(&e.path), Some(e.blob.as_str()));
    }
    let mut again = sample_repo();
    let second = run(&mut again, Some(&previous), &b, &Options::default()).unwrap();
    assert!(again.reads().is_empty());
    assert_eq!(second.carried, repo.entries.len() as u64);
    assert_eq!(second.bytes_parsed, 0);
    assert_eq!(lines(&first.files_path), lines(&second.files_path));
    assert_eq!(lines(&first.symbols_path), lines(&second.symbols_path));
    assert_eq!(first.counts, second.counts);
    assert_eq!(
        (first.symbols, first.parsed),
        (second.symbols, second.parsed)
    );
    for dir in [a, b] {
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

fn zst(lines: &[&str]) -> Vec<u8> {
    let mut text = lines.join("\n");
    text.push('\n');
    zstd::encode_all(text.as_bytes(), 3).unwrap()
}

fn corrupt_line(err: IndexError) -> (&'static str, u64) {
    match err {
        IndexError::CorruptPrevious { file, line, .. } => (file, line),
        other => panic!("not CorruptPrevious: {other:?}"),
    }
}

#[test]
fn corrupt_previous_names_the_file_and_line() {
    let good_file =
        r#"{"path":"a.rs","language":"rust","size":3,"blob":"ab","lines":1,"parsed":true}"#;
    let other_file =
        r#"{"path":"b.rs","language":"rust","size":3,"blob":"cd","lines":1,"parsed":true}"#;
    let sym_a =
        r#"{"path":"a.rs","name":"f","kind":"function","line":1,"column":4,"enclosing":null}"#;
    let sym_b =
        r#"{"path":"b.rs","name":"g","kind":"function","line":1,"column":4,"enclosing":null}"#;
    let empty = zst(&[]);
    let read = |files: Vec<u8>, symbols: Vec<u8>| Previous::read(&files[..], &symbols[..]);

    assert!(read(zst(&[good_file, other_file]), zst(&[sym_a, sym_b])).is_ok());
    let e = read(zst(&[good_file, "{not json", other_file]), empty.clone()).unwrap_err();
    assert_eq!(corrupt_line(e), (FILES_NAME, 2));
    let bad_language = good_file.replace("\"rust\"", "\"cobol\"");
    let e = read(zst(&[other_file, &bad_language]), empty.clone()).unwrap_err();
    assert_eq!(corrupt_line(e), (FILES_NAME, 2));
    let e = read(zst(&[good_file, good_file]), empty.clone()).unwrap_err();
    assert_eq!(corrupt_line(e), (FILES_NAME, 2));
    let e = read(b"not zstd at all".to_vec(), empty.clone()).unwrap_err();
    assert_eq!(corrupt_line(e).0, FILES_NAME);
    let mut truncated = zst(&[good_file, other_file]);
    truncated.truncate(truncated.len() - 4);
    assert!(matches!(
        read(truncated, empty.clone()),
        Err(IndexError::CorruptPrevious { .. })
    ));
    let unknown = sym_a.replace("a.rs", "zzz.rs");
    let e = read(zst(&[good_file]), zst(&[sym_a, &unknown])).unwrap_err();
    assert_eq!(corrupt_line(e), (SYMBOLS_NAME, 2));
    let e = read(zst(&[good_file, other_file]), zst(&[sym_a, sym_b, sym_a])).unwrap_err();
    assert_eq!(corrupt_line(e), (SYMBOLS_NAME, 3));
    let bad_kind = sym_a.replace("function", "lambda");
    let e = read(zst(&[good_file]), zst(&[sym_a, sym_a, &bad_kind])).unwrap_err();
    assert_eq!(corrupt_line(e), (SYMBOLS_NAME, 3));
    let e = read(zst(&[good_file]), zst(&["", sym_a])).unwrap_err();
    assert_eq!(corrupt_line(e), (SYMBOLS_NAME, 1));
}

#[test]
fn cancel_between_files_leaves_no_output() {
    let dir = tempdir("cancel");
    let mut repo = sample_repo();
    let reads = repo.reads.clone();
    let entries = repo.entries.clone();
    let cancel = || reads.borrow().len() >= 2;
    let err = index(entries, &mut repo, None, &dir, &Options::default(), &cancel).unwrap_err();
    assert!(matches!(err, IndexError::Cancelled), "{err:?}");
    assert_eq!(repo.reads().len(), 2);
    assert!(listing(&dir).is_empty(), "{:?}", listing(&dir));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn cancel_during_a_parse_stops_it() {
    let big: String = (0..20_000)
        .map(|i| format!("fn f{i}() {{ let x = {i}; }}\n"))
        .collect();
    let calls = std::cell::Cell::new(0u32);
    let cancel = || {
        calls.set(calls.get() + 1);
        calls.get() > 1
    };
    let mut parsers = Parsers::default();
    assert!(matches!(
        parsers.parse(Language::Rust, big.as_bytes(), None, &cancel),
        Parsed::Cancelled
    ));
    // The parser is reusable afterwards.
    assert!(matches!(
        parsers.parse(Language::Rust, b"fn ok() {}", None, &|| false),
        Parsed::Symbols(s) if s.len() == 1
    ));

    let dir = tempdir("cancel-parse");
    let mut repo = Repo::default();
    repo.file("a.rs", "fn a() {}\n").file("big.rs", &big);
    let reads = repo.reads.clone();
    let entries = repo.entries.clone();
    // Says stop once the big file has been read: only the parse can notice.
    let cancel = || reads.borrow().len() >= 2;
    let options = Options {
        max_file_bytes: 10 << 20,
        ..Options::default()
    };
    let err = index(entries, &mut repo, None, &dir, &options, &cancel).unwrap_err();
    assert!(matches!(err, IndexError::Cancelled), "{err:?}");
    assert!(listing(&dir).is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_failing_blob_read_is_an_error_naming_the_path_and_leaves_no_output() {
    let dir = tempdir("blob-error");
    let mut repo = Repo::default();
    repo.file("a.rs", "fn a() {}\n");
    repo.entries.push(Entry {
        path: "missing.rs".to_string(),
        mode: 0o100644,
        blob: "0".repeat(40),
        size: 5,
    });
    let err = run(&mut repo, None, &dir, &Options::default()).unwrap_err();
    match err {
        IndexError::Blob { path, .. } => assert_eq!(path, "missing.rs"),
        other => panic!("{other:?}"),
    }
    assert!(listing(&dir).is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_unwritable_out_dir_is_an_io_error_naming_it() {
    let dir = tempdir("io-error");
    let blocker = dir.join("file");
    std::fs::File::create(&blocker)
        .unwrap()
        .write_all(b"x")
        .unwrap();
    let mut repo = Repo::default();
    repo.file("a.rs", "fn a() {}\n");
    let out_dir = blocker.join("out");
    match run(&mut repo, None, &out_dir, &Options::default()).unwrap_err() {
        IndexError::Io { path, .. } => assert_eq!(path, out_dir),
        other => panic!("{other:?}"),
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn garbage_in_any_language_never_fails_the_index() {
    let dir = tempdir("garbage");
    let junk: [&[u8]; 6] = [
        b"declare module \"\xc3\xa9",
        b"class \xff\xfe { def (((( \"\xe2\x82",
        b"}}}}])) fn impl<<<< for struct 'abc\xe2\x82\xac",
        b"\xef\xbb\xbfpackage main\nfunc (",
        b"const = => class extends { #",
        b"\r\r\r\t\t\x0b\x0c@interface record enum {",
    ];
    let mut repo = Repo::default();
    for (i, content) in junk.iter().enumerate() {
        for ext in ["rs", "py", "go", "js", "ts", "tsx", "java"] {
            repo.add(&format!("junk{i}.{ext}"), 0o100644, content);
        }
    }
    let out = run(&mut repo, None, &dir, &Options::default()).unwrap();
    assert_eq!(out.files, 42);
    for (path, record) in records(&out.files_path) {
        assert_eq!(record["parsed"], true, "{path}: {record}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn every_visited_kind_is_a_node_kind_of_its_grammar() {
    // A misspelt kind would silently never reach its rule.
    let grammars = |language: Language| -> Vec<tree_sitter::Language> {
        match language {
            Language::Rust => vec![tree_sitter_rust::LANGUAGE.into()],
            Language::Python => vec![tree_sitter_python::LANGUAGE.into()],
            Language::Go => vec![tree_sitter_go::LANGUAGE.into()],
            Language::Java => vec![tree_sitter_java::LANGUAGE.into()],
            _ => vec![
                tree_sitter_javascript::LANGUAGE.into(),
                tree_sitter_typescript::LANGUAGE_TYPESCRIPT.into(),
                tree_sitter_typescript::LANGUAGE_TSX.into(),
            ],
        }
    };
    for language in [
        Language::Rust,
        Language::Python,
        Language::Go,
        Language::JavaScript,
        Language::Java,
    ] {
        let kinds = super::visited::visited_kinds(language);
        assert!(!kinds.is_empty(), "{language:?}");
        for kind in kinds {
            let found = grammars(language).iter().any(|g| {
                (0..g.node_kind_count())
                    .any(|id| g.node_kind_for_id(id as u16) == Some(kind))
            });
            assert!(found, "{language:?}: {kind} is no node kind of its grammar");
        }
    }
}

#[test]
fn parser_threads_write_the_same_outputs_in_entry_order_as_one() {
    let mut repo = Repo::default();
    for i in 0..200 {
        let body: String = (0..(i % 7) * 40)
            .map(|j| format!("fn f{i}_{j}() {{ let x = {j}; }}\n"))
            .collect();
        repo.file(&format!("src/m{i:03}.rs"), &format!("pub struct S{i};\n{body}"));
        repo.file(&format!("py/m{i:03}.py"), &format!("class C{i}:\n    def m(self): pass\n"));
        repo.file(&format!("doc/{i:03}.md"), "# not parsed\n");
    }
    let run = |threads: usize, name: &str| {
        let dir = tempdir(name);
        let mut repo = repo.clone();
        let entries = repo.entries.clone();
        let options = Options {
            threads,
            ..Options::default()
        };
        let out = index(entries, &mut repo, None, &dir, &options, &|| false).unwrap();
        let files = zstd::decode_all(std::fs::File::open(&out.files_path).unwrap()).unwrap();
        let symbols = zstd::decode_all(std::fs::File::open(&out.symbols_path).unwrap()).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        (out.symbols, files, symbols)
    };
    let one = run(1, "threads-1");
    let four = run(4, "threads-4");
    assert!(one.0 > 2_000, "{} symbols", one.0);
    assert_eq!(one, four);
    // Entry order: the files listing follows the entries.
    let paths: Vec<String> = String::from_utf8(one.1)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["path"].as_str().unwrap().to_string())
        .collect();
    let expected: Vec<String> = repo.entries.iter().map(|e| e.path.clone()).collect();
    assert_eq!(paths, expected);
}
