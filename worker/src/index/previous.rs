//! A previous index read back for an incremental run: the path → record map in memory, the
//! symbol lines spilled to an unlinked temporary file with one byte span per path.

use std::collections::HashMap;
use std::collections::hash_map::Entry as MapEntry;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::IndexError;
use super::record::{FileRecord, Language, Reason, SymbolRecord};

/// Longest line accepted from a previous index (a longer one is corruption, not a record).
const MAX_LINE_BYTES: u64 = 1 << 20;

const FILES: &str = "files.jsonl.zst";
const SYMBOLS: &str = "symbols.jsonl.zst";

/// What the previous index said of one path, without the path (the map key).
#[derive(Debug, Clone)]
pub(crate) struct PreviousFile {
    pub language: Option<Language>,
    pub size: u64,
    pub blob: Box<str>,
    pub lines: Option<u64>,
    pub parsed: bool,
    pub reason: Option<Reason>,
    /// The path's symbol lines in the spill file: byte offset, byte length, line count.
    pub symbols_at: u64,
    pub symbols_len: u64,
    pub symbols: u64,
}

impl PreviousFile {
    pub fn record(&self, path: &str) -> FileRecord {
        FileRecord {
            path: path.to_string(),
            language: self.language,
            size: self.size,
            blob: self.blob.to_string(),
            lines: self.lines,
            parsed: self.parsed,
            reason: self.reason,
        }
    }
}

/// A previous index of the same repository (see the module doc, "Incremental").
pub struct Previous {
    files: HashMap<String, PreviousFile>,
    /// The symbol lines, uncompressed, grouped per path; already unlinked, so it disappears
    /// with this value (or the process).
    spill: File,
    spill_dir: PathBuf,
}

impl std::fmt::Debug for Previous {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Previous")
            .field("files", &self.files.len())
            .finish_non_exhaustive()
    }
}

/// Reads one line of at most [`MAX_LINE_BYTES`] (without its newline) into `buf`; false at
/// the end of the input.
fn read_line(reader: &mut impl BufRead, buf: &mut Vec<u8>) -> io::Result<Result<bool, String>> {
    buf.clear();
    let n = reader.take(MAX_LINE_BYTES + 1).read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(Ok(false));
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
    } else if n as u64 > MAX_LINE_BYTES {
        return Ok(Err(format!("line longer than {MAX_LINE_BYTES} bytes")));
    }
    Ok(Ok(true))
}

fn corrupt(file: &'static str, line: u64, detail: impl ToString) -> IndexError {
    IndexError::CorruptPrevious {
        file,
        line,
        detail: detail.to_string(),
    }
}

/// Iterates the lines of a zstd stream, numbering them from 1; decoding and read errors are
/// corruption of the line being read.
fn for_each_line(
    input: impl Read,
    file: &'static str,
    mut each: impl FnMut(u64, &[u8]) -> Result<(), IndexError>,
) -> Result<(), IndexError> {
    let decoder = zstd::Decoder::new(input).map_err(|e| corrupt(file, 1, e))?;
    let mut reader = BufReader::with_capacity(64 * 1024, decoder);
    let mut buf = Vec::new();
    let mut line = 0u64;
    loop {
        line += 1;
        match read_line(&mut reader, &mut buf).map_err(|e| corrupt(file, line, e))? {
            Ok(true) => each(line, &buf)?,
            Ok(false) => return Ok(()),
            Err(detail) => return Err(corrupt(file, line, detail)),
        }
    }
}

fn spill_file(dir: &Path) -> Result<File, IndexError> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let io_err = |source| IndexError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let path = dir.join(format!(
        ".lettuce-index-previous-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(io_err)?;
    std::fs::remove_file(&path).map_err(io_err)?;
    Ok(file)
}

impl Previous {
    /// Reads a previous index's `files.jsonl.zst` and `symbols.jsonl.zst` (zstd streams, as
    /// [`super::index`] writes them), validating every line. Symbols go to a spill file in the
    /// system temporary directory; see [`Previous::read_in`].
    pub fn read(files: impl Read, symbols: impl Read) -> Result<Previous, IndexError> {
        Previous::read_in(&std::env::temp_dir(), files, symbols)
    }

    /// [`Previous::read`] with the spill file in `spill_dir` (the job's scratch directory).
    pub fn read_in(
        spill_dir: &Path,
        files: impl Read,
        symbols: impl Read,
    ) -> Result<Previous, IndexError> {
        let mut map: HashMap<String, PreviousFile> = HashMap::new();
        for_each_line(files, FILES, |line, bytes| {
            let record: FileRecord =
                serde_json::from_slice(bytes).map_err(|e| corrupt(FILES, line, e))?;
            let previous = PreviousFile {
                language: record.language,
                size: record.size,
                blob: record.blob.into_boxed_str(),
                lines: record.lines,
                parsed: record.parsed,
                reason: record.reason,
                symbols_at: 0,
                symbols_len: 0,
                symbols: 0,
            };
            match map.entry(record.path) {
                MapEntry::Occupied(e) => Err(corrupt(
                    FILES,
                    line,
                    format!("path {:?} listed twice", e.key()),
                )),
                MapEntry::Vacant(e) => {
                    e.insert(previous);
                    Ok(())
                }
            }
        })?;

        let spill = spill_file(spill_dir)?;
        let spill_err = |source| IndexError::Io {
            path: spill_dir.to_path_buf(),
            source,
        };
        let mut writer = BufWriter::with_capacity(64 * 1024, spill);
        let mut offset = 0u64;
        // The path whose symbols are being read, and where its run started.
        let mut current: Option<String> = None;
        let mut run_start = 0u64;
        for_each_line(symbols, SYMBOLS, |line, bytes| {
            let symbol: SymbolRecord =
                serde_json::from_slice(bytes).map_err(|e| corrupt(SYMBOLS, line, e))?;
            if current.as_deref() != Some(symbol.path.as_str()) {
                if let Some(file) = current.take().and_then(|done| map.get_mut(&done)) {
                    file.symbols_at = run_start;
                    file.symbols_len = offset - run_start;
                }
                let Some(file) = map.get(&symbol.path) else {
                    return Err(corrupt(
                        SYMBOLS,
                        line,
                        format!("path {:?} is not in {FILES}", symbol.path),
                    ));
                };
                if file.symbols > 0 {
                    return Err(corrupt(
                        SYMBOLS,
                        line,
                        format!("symbols of {:?} are not contiguous", symbol.path),
                    ));
                }
                run_start = offset;
                current = Some(symbol.path);
            }
            if let Some(file) = current.as_deref().and_then(|p| map.get_mut(p)) {
                file.symbols += 1;
            }
            writer
                .write_all(bytes)
                .and_then(|()| writer.write_all(b"\n"))
                .map_err(spill_err)?;
            offset += bytes.len() as u64 + 1;
            Ok(())
        })?;
        if let Some(done) = current.take()
            && let Some(file) = map.get_mut(&done)
        {
            file.symbols_at = run_start;
            file.symbols_len = offset - run_start;
        }
        let spill = writer.into_inner().map_err(|e| spill_err(e.into_error()))?;
        Ok(Previous {
            files: map,
            spill,
            spill_dir: spill_dir.to_path_buf(),
        })
    }

    /// How many files the previous index lists.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether the previous index lists no file.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The blob id the previous index had at `path`.
    pub fn blob(&self, path: &str) -> Option<&str> {
        self.files.get(path).map(|f| &*f.blob)
    }

    pub(crate) fn get(&self, path: &str) -> Option<&PreviousFile> {
        self.files.get(path)
    }

    /// Copies the symbol lines of `file` to `out`, 64 KiB at a time.
    pub(crate) fn copy_symbols(
        &self,
        file: &PreviousFile,
        out: &mut dyn Write,
    ) -> Result<(), CopyError> {
        let mut buf = vec![0u8; file.symbols_len.min(64 * 1024) as usize];
        let mut at = file.symbols_at;
        let end = file.symbols_at + file.symbols_len;
        while at < end {
            let n = ((end - at) as usize).min(buf.len());
            self.spill
                .read_exact_at(&mut buf[..n], at)
                .map_err(|e| CopyError::Spill(self.spill_dir.clone(), e))?;
            out.write_all(&buf[..n]).map_err(CopyError::Out)?;
            at += n as u64;
        }
        Ok(())
    }
}

/// Which side of a symbol copy failed.
pub(crate) enum CopyError {
    Spill(PathBuf, io::Error),
    Out(io::Error),
}
