//! The order-keeping parse pipeline of [`super::index`].
//!
//! The calling thread walks the entries in order: it decides what is carried from the previous
//! index, classifies the rest and reads their blobs (the blob reader is one `git cat-file`
//! stream, not shareable). Files to parse go to [`Options::threads`] parser threads, each with
//! its own tree-sitter parsers; their results come back in any order and are handed to the
//! writer in entry order. At most `window` entries are in flight (4 per thread), so memory
//! stays bounded: `window` file contents and their symbols, whatever the repository size.
//!
//! Cancellation: the calling thread polls `cancel()` before each entry and every 25 ms while it
//! waits for a parse; on stop (or any error) it raises a flag the parser threads poll from
//! tree-sitter's progress callback, so a parse in flight ends within milliseconds and every
//! thread is joined before [`run`] returns.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::Mutex;
use std::thread;
use std::time::Duration;

use super::extract::{Parsed, Parsers};
use super::previous::PreviousFile;
use super::record::{FileRecord, Language, Reason, Symbol};
use super::{Blobs, Entry, IndexError, Options, Previous, classify, sort_of_mode, sort_of_reason};

/// One entry, ready to be written.
pub(super) enum Done<'p> {
    /// Classified (and parsed, when it was) now.
    Fresh(FileRecord, Vec<Symbol>),
    /// Same blob as in the previous index: its record and symbol lines are copied.
    Carried(FileRecord, &'p PreviousFile),
}

enum Slot<'p> {
    Ready(Done<'p>),
    /// Sent to a parser thread; the result arrives under the slot's sequence number.
    Parsing(FileRecord),
}

struct Job {
    seq: u64,
    language: Language,
    content: Vec<u8>,
}

/// How long the calling thread waits for a parse result between two `cancel()` polls.
const CANCEL_POLL: Duration = Duration::from_millis(25);

/// Feeds every entry through classification, blob reads and (on the parser threads) parsing,
/// and calls `write` once per entry, in entry order.
pub(super) fn run<'p>(
    entries: impl IntoIterator<Item = Entry>,
    blobs: &mut dyn Blobs,
    previous: Option<&'p Previous>,
    options: &Options,
    cancel: &dyn Fn() -> bool,
    write: &mut dyn FnMut(Done<'p>) -> Result<(), IndexError>,
) -> Result<(), IndexError> {
    let threads = options.threads.max(1);
    let window = threads * 4;
    let stop = AtomicBool::new(false);
    let (job_tx, job_rx) = mpsc::sync_channel::<Job>(window);
    let job_rx = Mutex::new(job_rx);
    let (done_tx, done_rx) = mpsc::channel::<(u64, Parsed)>();
    thread::scope(|scope| {
        // Moved in: dropped when this closure returns, however it returns (the job sender with
        // `order`), so the threads' receive fails and the scope can join them.
        let (job_tx, done_tx) = (job_tx, done_tx);
        for _ in 0..threads {
            let (job_rx, done_tx, stop) = (&job_rx, done_tx.clone(), &stop);
            let timeout = options.parse_timeout;
            thread::Builder::new()
                .name("index-parse".into())
                .spawn_scoped(scope, move || parse_loop(job_rx, done_tx, stop, timeout))
                .map_err(IndexError::Threads)?;
        }
        drop(done_tx);
        let mut order = InOrder {
            pending: VecDeque::with_capacity(window),
            first: 0,
            window,
            jobs: job_tx,
            results: done_rx,
            cancel,
        };
        let result = feed(entries, blobs, previous, options, &mut order, write);
        // Ends every parse in flight and lets the threads' receive fail; the scope joins them.
        stop.store(true, Ordering::Relaxed);
        drop(order);
        result
    })
}

fn feed<'p>(
    entries: impl IntoIterator<Item = Entry>,
    blobs: &mut dyn Blobs,
    previous: Option<&'p Previous>,
    options: &Options,
    order: &mut InOrder<'_, 'p>,
    write: &mut dyn FnMut(Done<'p>) -> Result<(), IndexError>,
) -> Result<(), IndexError> {
    for entry in entries {
        if (order.cancel)() {
            return Err(IndexError::Cancelled);
        }
        let carried = previous.and_then(|p| {
            p.get(&entry.path)
                .filter(|f| *f.blob == *entry.blob)
                .filter(|f| sort_of_reason(f.reason) == sort_of_mode(entry.mode))
        });
        let slot = match carried {
            Some(file) => Slot::Ready(Done::Carried(file.record(&entry.path), file)),
            None => match classify_and_read(&entry, blobs, options)? {
                (record, None) => Slot::Ready(Done::Fresh(record, Vec::new())),
                (record, Some((language, content))) => {
                    let seq = order.first + order.pending.len() as u64;
                    order.jobs.send(Job {
                        seq,
                        language,
                        content,
                    })
                    .map_err(|_| IndexError::ParserGone)?;
                    Slot::Parsing(record)
                }
            },
        };
        order.pending.push_back(slot);
        order.write_ready(write)?;
        while order.pending.len() >= order.window {
            order.wait_one()?;
            order.write_ready(write)?;
        }
    }
    while !order.pending.is_empty() {
        order.wait_one()?;
        order.write_ready(write)?;
    }
    Ok(())
}

/// The entries in flight, oldest first; `first` is the sequence number of the front one, at
/// most `window` of them; files to parse go out through `jobs`.
struct InOrder<'c, 'p> {
    pending: VecDeque<Slot<'p>>,
    first: u64,
    window: usize,
    jobs: SyncSender<Job>,
    results: Receiver<(u64, Parsed)>,
    cancel: &'c dyn Fn() -> bool,
}

impl<'p> InOrder<'_, 'p> {
    /// Writes the ready entries at the front.
    fn write_ready(
        &mut self,
        write: &mut dyn FnMut(Done<'p>) -> Result<(), IndexError>,
    ) -> Result<(), IndexError> {
        while matches!(self.pending.front(), Some(Slot::Ready(_))) {
            let Some(Slot::Ready(done)) = self.pending.pop_front() else {
                unreachable!("the front was checked to be ready");
            };
            self.first += 1;
            write(done)?;
        }
        Ok(())
    }

    /// Waits for one parse result and puts it in its slot.
    fn wait_one(&mut self) -> Result<(), IndexError> {
        let (seq, parsed) = loop {
            match self.results.recv_timeout(CANCEL_POLL) {
                Ok(result) => break result,
                Err(RecvTimeoutError::Timeout) if (self.cancel)() => {
                    return Err(IndexError::Cancelled);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Err(IndexError::ParserGone),
            }
        };
        let slot = seq
            .checked_sub(self.first)
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| self.pending.get_mut(i))
            .ok_or(IndexError::ParserGone)?;
        let Slot::Parsing(record) = slot else {
            return Err(IndexError::ParserGone);
        };
        let mut record = std::mem::take(record);
        let symbols = match parsed {
            Parsed::Symbols(found) => {
                record.parsed = true;
                found
            }
            Parsed::Failed => {
                record.reason = Some(Reason::ParseError);
                Vec::new()
            }
            Parsed::Cancelled => return Err(IndexError::Cancelled),
        };
        *slot = Slot::Ready(Done::Fresh(record, symbols));
        Ok(())
    }
}

/// One parser thread: parses what it is sent until the channel closes or `stop` is raised.
fn parse_loop(
    jobs: &Mutex<Receiver<Job>>,
    results: Sender<(u64, Parsed)>,
    stop: &AtomicBool,
    timeout: Option<Duration>,
) {
    let mut parsers = Parsers::default();
    loop {
        let job = jobs.lock().unwrap_or_else(|e| e.into_inner()).recv();
        let Ok(job) = job else { return };
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let stopped = || stop.load(Ordering::Relaxed);
        let parsed = catch_unwind(AssertUnwindSafe(|| {
            parsers.parse(job.language, &job.content, timeout, &stopped)
        }))
        .unwrap_or_else(|_| {
            // A parser that panicked may be in any state: start again with fresh ones.
            parsers = Parsers::default();
            Parsed::Failed
        });
        if results.send((job.seq, parsed)).is_err() {
            return;
        }
    }
}

/// The record of an entry not carried from a previous index, and the language and content to
/// parse when it is to be parsed.
#[allow(clippy::type_complexity)]
fn classify_and_read(
    entry: &Entry,
    blobs: &mut dyn Blobs,
    options: &Options,
) -> Result<(FileRecord, Option<(Language, Vec<u8>)>), IndexError> {
    let mut record = FileRecord {
        path: entry.path.clone(),
        language: classify::language(&entry.path),
        size: entry.size,
        blob: entry.blob.clone(),
        lines: None,
        parsed: false,
        reason: None,
    };
    let unread = if let Some(sort) = sort_of_mode(entry.mode) {
        record.language = None;
        Some(sort)
    } else if classify::vendored(&entry.path) {
        Some(Reason::Vendored)
    } else if classify::generated_name(&entry.path) {
        Some(Reason::Generated)
    } else if entry.size > options.max_file_bytes {
        Some(Reason::TooLarge)
    } else {
        None
    };
    if unread.is_some() {
        record.reason = unread;
        return Ok((record, None));
    }
    let content = blobs
        .read(&entry.blob, entry.size)
        .map_err(|source| IndexError::Blob {
            path: entry.path.clone(),
            source,
        })?;
    if content.len() as u64 > options.max_file_bytes {
        record.reason = Some(Reason::TooLarge);
        return Ok((record, None));
    }
    if classify::binary(&content) {
        record.reason = Some(Reason::Binary);
        return Ok((record, None));
    }
    record.lines = Some(classify::count_lines(&content));
    if classify::generated_marker(&content) {
        record.reason = Some(Reason::Generated);
        return Ok((record, None));
    }
    let Some(language) = record.language.filter(|l| l.parsed()) else {
        record.reason = Some(Reason::UnsupportedLanguage);
        return Ok((record, None));
    };
    Ok((record, Some((language, content))))
}
