//! Benchmark of the code indexer (`lettuce_worker::index`) over a real git repository; not a
//! test. Run it release-built:
//!
//! ```text
//! cargo run --release -p xtests --bin index_bench -- /path/to/repo [/path/to/scratch]
//! ```
//!
//! It lists `HEAD` with `git ls-tree -r -z --long`, reads blobs through one
//! `git cat-file --batch`, runs a full index and then an incremental one (previous = the full
//! output; one parsed file changed), and prints files/s, MB/s, the parse stage's time (a full
//! index with every blob already in memory, on one parser thread and on the default), peak RSS (VmHWM) of the indexing and of the whole run, universal-ctags' time over the same tree
//! (`git archive HEAD` extracted) and the recall of ctags' definitions (path + name + line)
//! for the languages both cover. The last line is a JSON summary.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};
use lettuce_worker::index::{self, Blobs, Entry, Options, Previous};

struct CatFile {
    child: Child,
    stdin: BufWriter<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    /// Blob ids served from memory instead (the modified fixture).
    overrides: HashMap<String, Vec<u8>>,
    reads: u64,
}

impl CatFile {
    fn start(repo: &Path) -> anyhow::Result<CatFile> {
        let mut child = Command::new("git")
            .arg("-C")
            .arg(repo)
            .args(["cat-file", "--batch"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("git cat-file --batch")?;
        let stdin = BufWriter::new(child.stdin.take().context("stdin")?);
        let stdout = BufReader::with_capacity(1 << 20, child.stdout.take().context("stdout")?);
        Ok(CatFile {
            child,
            stdin,
            stdout,
            overrides: HashMap::new(),
            reads: 0,
        })
    }

    fn fetch(&mut self, blob: &str) -> std::io::Result<Vec<u8>> {
        writeln!(self.stdin, "{blob}")?;
        self.stdin.flush()?;
        let mut header = String::new();
        self.stdout.read_line(&mut header)?;
        let size: usize = header
            .split_whitespace()
            .nth(2)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("cat-file said {header:?}")))?;
        let mut content = vec![0u8; size + 1];
        self.stdout.read_exact(&mut content)?;
        content.pop();
        Ok(content)
    }
}

impl Blobs for CatFile {
    fn read(&mut self, blob: &str, _size_hint: u64) -> std::io::Result<Vec<u8>> {
        self.reads += 1;
        match self.overrides.get(blob) {
            Some(content) => Ok(content.clone()),
            None => self.fetch(blob),
        }
    }
}

/// Every regular file's blob, read beforehand: the parse stage's input without git's reads.
struct MemoryBlobs(HashMap<String, Vec<u8>>);

impl MemoryBlobs {
    fn load(repo: &Path, entries: &[Entry], max_bytes: u64) -> anyhow::Result<MemoryBlobs> {
        let mut git = CatFile::start(repo)?;
        let mut blobs = HashMap::new();
        for e in entries {
            if e.mode != 0o120000 && e.mode != 0o160000 && e.size <= max_bytes {
                blobs.insert(e.blob.clone(), git.fetch(&e.blob)?);
            }
        }
        Ok(MemoryBlobs(blobs))
    }
}

impl Blobs for MemoryBlobs {
    fn read(&mut self, blob: &str, _size_hint: u64) -> std::io::Result<Vec<u8>> {
        self.0
            .get(blob)
            .cloned()
            .ok_or_else(|| std::io::Error::other(format!("blob {blob} was not loaded")))
    }
}

impl Drop for CatFile {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ls_tree(repo: &Path) -> anyhow::Result<Vec<Entry>> {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["ls-tree", "-r", "-z", "--long", "HEAD"])
        .output()?;
    if !out.status.success() {
        bail!("git ls-tree: {}", String::from_utf8_lossy(&out.stderr));
    }
    let mut entries = Vec::new();
    for record in out.stdout.split(|&b| b == 0).filter(|r| !r.is_empty()) {
        let record = String::from_utf8_lossy(record);
        let (meta, path) = record.split_once('\t').context("no tab")?;
        let mut fields = meta.split_whitespace();
        let mode = u32::from_str_radix(fields.next().context("mode")?, 8)?;
        let _type = fields.next();
        let blob = fields.next().context("oid")?.to_string();
        let size = fields.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        entries.push(Entry {
            path: path.to_string(),
            mode,
            blob,
            size,
        });
    }
    Ok(entries)
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn json_lines(path: &Path) -> anyhow::Result<Vec<serde_json::Value>> {
    let raw = zstd::decode_all(std::fs::File::open(path)?)?;
    raw.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| Ok(serde_json::from_slice(l)?))
        .collect()
}

/// What ctags is compared with: our symbols as (path, name, line), and the paths we parsed
/// (ctags' definitions elsewhere — generated, vendored, too large — are left out on purpose).
struct Ours {
    symbols: HashSet<(String, String, u64)>,
    parsed: HashSet<String>,
}

fn ours(files: &Path, symbols: &Path) -> anyhow::Result<Ours> {
    let text = |v: &serde_json::Value, k: &str| v[k].as_str().unwrap_or_default().to_string();
    Ok(Ours {
        symbols: json_lines(symbols)?
            .iter()
            .map(|v| {
                let line = v["line"].as_u64().unwrap_or_default();
                (text(v, "path"), text(v, "name"), line)
            })
            .collect(),
        parsed: json_lines(files)?
            .iter()
            .filter(|v| v["parsed"] == true)
            .map(|v| text(v, "path"))
            .collect(),
    })
}

/// ctags kinds that are definitions this indexer also looks for.
fn comparable(language: &str, kind: &str) -> bool {
    let kinds: &[&str] = match language {
        "Rust" => &[
            "function",
            "method",
            "struct",
            "enum",
            "typedef",
            "interface",
            "module",
            "variable",
        ],
        "Python" => &["class", "function", "member"],
        "Go" => &[
            "func",
            "const",
            "type",
            "struct",
            "interface",
            "methodSpec",
            "talias",
        ],
        "JavaScript" => &[
            "class",
            "function",
            "generator",
            "method",
            "getter",
            "setter",
            "constant",
        ],
        "TypeScript" => &[
            "class",
            "function",
            "generator",
            "method",
            "interface",
            "enum",
            "namespace",
            "alias",
            "constant",
        ],
        "Java" => &["class", "interface", "enum", "method", "annotation"],
        _ => &[],
    };
    kinds.contains(&kind)
}

struct Ctags {
    /// `ctags -R` over the whole tree.
    seconds: f64,
    /// Over the files this indexer parsed only.
    seconds_same_files: f64,
    definitions: u64,
    matched: u64,
    /// Definitions in files this indexer did not parse (left out of the recall).
    elsewhere: u64,
    /// Per ctags language: (definitions, matched).
    languages: BTreeMap<String, (u64, u64)>,
}

fn ctags(repo: &Path, scratch: &Path, ours: &Ours) -> Option<Ctags> {
    let tree = scratch.join("tree");
    std::fs::create_dir_all(&tree).ok()?;
    let archive = Command::new("sh")
        .arg("-c")
        .arg("git -C \"$1\" archive HEAD | tar -x -C \"$2\"")
        .arg("sh")
        .arg(repo)
        .arg(&tree)
        .status()
        .ok()?;
    if !archive.success() {
        return None;
    }
    let started = Instant::now();
    let out = Command::new("ctags")
        .current_dir(&tree)
        .args([
            "-R",
            "--output-format=json",
            "--fields=+nKl",
            "--languages=Rust,Python,Go,JavaScript,TypeScript,Java",
            "-f",
            "-",
            ".",
        ])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let seconds = started.elapsed().as_secs_f64();
    // The same again over exactly the files we parsed (`-L`), the parse stage's own input.
    let list = scratch.join("parsed-files");
    let mut parsed: Vec<&String> = ours.parsed.iter().collect();
    parsed.sort();
    let names: String = parsed.iter().map(|p| format!("{p}\n")).collect();
    std::fs::write(&list, names).ok()?;
    let started = Instant::now();
    let same = Command::new("ctags")
        .current_dir(&tree)
        .args([
            "--languages=Rust,Python,Go,JavaScript,TypeScript,Java",
            "-f",
            "/dev/null",
            "-L",
        ])
        .arg(&list)
        .stderr(Stdio::null())
        .status()
        .ok()?;
    let seconds_same_files = started.elapsed().as_secs_f64();
    if !same.success() {
        return None;
    }
    let (mut definitions, mut matched, mut elsewhere) = (0, 0, 0);
    let mut languages: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    // INDEX_BENCH_MISSES=1 lists the ctags definitions not found, on stderr.
    let show_misses = std::env::var_os("INDEX_BENCH_MISSES").is_some();
    for line in out.stdout.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(path), Some(name), Some(line), Some(kind), Some(language)) = (
            v["path"].as_str(),
            v["name"].as_str(),
            v["line"].as_u64(),
            v["kind"].as_str(),
            v["language"].as_str(),
        ) else {
            continue;
        };
        if !comparable(language, kind) {
            continue;
        }
        let path = path.trim_start_matches("./").to_string();
        if !ours.parsed.contains(&path) {
            elsewhere += 1;
            continue;
        }
        definitions += 1;
        let counts = languages.entry(language.to_string()).or_default();
        counts.0 += 1;
        if ours
            .symbols
            .contains(&(path.clone(), name.to_string(), line))
        {
            matched += 1;
            counts.1 += 1;
        } else if show_misses {
            eprintln!("missed: {language} {kind} {path}:{line} {name}");
        }
    }
    Some(Ctags {
        seconds,
        seconds_same_files,
        definitions,
        matched,
        elsewhere,
        languages,
    })
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args_os().skip(1);
    let repo = PathBuf::from(args.next().unwrap_or_else(|| ".".into()));
    let scratch = args.next().map(PathBuf::from).unwrap_or_else(|| {
        std::env::temp_dir().join(format!("index-bench-{}", std::process::id()))
    });
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)?;
    let options = Options::default();
    let never = || false;

    let entries = ls_tree(&repo)?;
    let bytes: u64 = entries.iter().map(|e| e.size).sum();

    let mut blobs = CatFile::start(&repo)?;
    let started = Instant::now();
    let full = index::index(
        entries.clone(),
        &mut blobs,
        None,
        &scratch.join("full"),
        &options,
        &never,
    )?;
    let full_secs = started.elapsed().as_secs_f64();
    let full_reads = blobs.reads;

    // Incremental: the first parsed file gets a modified blob.
    let previous = Previous::read(
        std::fs::File::open(&full.files_path)?,
        std::fs::File::open(&full.symbols_path)?,
    )?;
    let mut changed = entries.clone();
    let target = changed.iter_mut().find(|e| {
        e.mode != 0o120000
            && e.mode != 0o160000
            && e.size < options.max_file_bytes
            && [".rs", ".py", ".go", ".js", ".ts", ".java"]
                .iter()
                .any(|x| e.path.ends_with(x))
    });
    let mut modified = None;
    if let Some(entry) = target {
        let mut content = blobs.fetch(&entry.blob)?;
        content.extend_from_slice(b"\n");
        entry.blob = "f".repeat(40);
        entry.size = content.len() as u64;
        blobs.overrides.insert(entry.blob.clone(), content);
        modified = Some(entry.path.clone());
    }
    blobs.reads = 0;
    let started = Instant::now();
    let incremental = index::index(
        changed,
        &mut blobs,
        Some(&previous),
        &scratch.join("incremental"),
        &options,
        &never,
    )?;
    let incremental_secs = started.elapsed().as_secs_f64();
    let incremental_reads = blobs.reads;
    drop(blobs);
    // The indexer's own peak (full run, then the incremental run with the previous index in
    // memory), before the recall check below loads every symbol of both tools.
    let index_rss = peak_rss_kib();

    // The parse stage (files -> symbols, outputs written), blobs already in memory: once on
    // one parser thread, once on the default (every core).
    let memory = MemoryBlobs::load(&repo, &entries, options.max_file_bytes)?;
    let parse_stage = |threads: usize| -> anyhow::Result<f64> {
        let mut memory = MemoryBlobs(memory.0.clone());
        let options = Options {
            threads,
            ..options.clone()
        };
        let started = Instant::now();
        index::index(
            entries.clone(),
            &mut memory,
            None,
            &scratch.join(format!("parse-{threads}")),
            &options,
            &never,
        )?;
        Ok(started.elapsed().as_secs_f64())
    };
    let parse_secs_one = parse_stage(1)?;
    let parse_secs = parse_stage(options.threads)?;
    drop(memory);

    let ours = ours(&full.files_path, &full.symbols_path)?;
    let ctags = ctags(&repo, &scratch, &ours);
    let rss = peak_rss_kib();

    let mb = bytes as f64 / 1e6;
    println!(
        "full: {} files ({} parsed, {} symbols) in {full_secs:.3}s = {:.0} files/s, {:.1} MB/s; \
         {full_reads} blob reads; parse stage (blobs in memory) {parse_secs:.3}s on {} parser \
         thread(s) ({:.1} MB/s parsed), {parse_secs_one:.3}s on one",
        full.files,
        full.parsed,
        full.symbols,
        full.files as f64 / full_secs,
        mb / full_secs,
        options.threads,
        full.bytes_parsed as f64 / 1e6 / parse_secs.max(1e-9),
    );
    println!(
        "incremental: {} carried, {incremental_reads} blob read(s) ({modified:?} changed) in \
         {incremental_secs:.3}s",
        incremental.carried
    );
    println!("peak RSS (VmHWM) while indexing: {index_rss} KiB; with the recall check: {rss} KiB");
    match &ctags {
        Some(c) => {
            println!(
                "ctags -R: {:.3}s ({:.3}s over only the files we parsed); recall of its {} \
                 definitions in files we parsed: {:.1}% ({} more in files we did not parse)",
                c.seconds,
                c.seconds_same_files,
                c.definitions,
                100.0 * c.matched as f64 / c.definitions.max(1) as f64,
                c.elsewhere
            );
            for (language, (n, m)) in &c.languages {
                println!(
                    "  {language}: {m}/{n} = {:.1}%",
                    100.0 * *m as f64 / (*n).max(1) as f64
                );
            }
        }
        None => println!("ctags: not available (universal-ctags not installed or failed)"),
    }
    for (language, c) in &full.counts {
        println!(
            "  {language}: {} files, {} parsed, {} symbols, {} bytes",
            c.files, c.parsed, c.symbols, c.bytes
        );
    }
    let summary = serde_json::json!({
        "files": full.files,
        "parsed": full.parsed,
        "symbols": full.symbols,
        "bytes": bytes,
        "full_seconds": full_secs,
        "parse_seconds": parse_secs,
        "parse_seconds_one_thread": parse_secs_one,
        "parser_threads": options.threads,
        "parse_ratio_to_ctags": ctags.as_ref().map(|c| parse_secs / c.seconds_same_files),
        "parse_ratio_to_ctags_whole_tree": ctags.as_ref().map(|c| parse_secs / c.seconds),
        "files_per_second": full.files as f64 / full_secs,
        "mb_per_second": mb / full_secs,
        "incremental_seconds": incremental_secs,
        "incremental_carried": incremental.carried,
        "incremental_blob_reads": incremental_reads,
        "peak_rss_kib": index_rss,
        "peak_rss_with_recall_kib": rss,
        "ctags_seconds": ctags.as_ref().map(|c| c.seconds),
        "ctags_seconds_same_files": ctags.as_ref().map(|c| c.seconds_same_files),
        "ctags_definitions": ctags.as_ref().map(|c| c.definitions),
        "ctags_recall": ctags.as_ref().map(|c| c.matched as f64 / c.definitions.max(1) as f64),
        "ctags_recall_by_language": ctags.as_ref().map(|c| c.languages.iter()
            .map(|(l, (n, m))| (l.clone(), serde_json::json!(*m as f64 / (*n).max(1) as f64)))
            .collect::<serde_json::Map<_, _>>()),
    });
    println!("{summary}");
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}
