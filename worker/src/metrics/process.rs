//! The standard `process_*` figures of this process, read from `/proc/self` at scrape time
//! (Linux only; elsewhere nothing is reported).
//! `ProcessMetrics` is the series they are exported as.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// One reading; `None` fields could not be read.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Sample {
    pub cpu_seconds: Option<f64>,
    pub resident_bytes: Option<u64>,
    pub virtual_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
    /// Seconds since the Unix epoch.
    pub start_time_seconds: Option<f64>,
}

/// Reads the current figures.
pub fn sample() -> Sample {
    // SAFETY: sysconf has no preconditions; it only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    // SAFETY: as above.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let stat = std::fs::read_to_string("/proc/self/stat").ok();
    let fields = stat.as_deref().and_then(stat_fields);
    let boot_time = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<f64>().ok())
    });
    let mut out = Sample::default();
    if let Some(f) = fields
        && ticks > 0
    {
        let ticks = ticks as f64;
        out.cpu_seconds = Some((f.utime + f.stime) as f64 / ticks);
        out.virtual_bytes = Some(f.vsize);
        if page > 0 {
            out.resident_bytes = Some(f.rss_pages.saturating_mul(page as u64));
        }
        out.start_time_seconds = boot_time.map(|b| b + f.start_ticks as f64 / ticks);
    }
    out.open_fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count() as u64);
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        out.max_fds = Some(limit.rlim_cur);
    }
    out
}

struct StatFields {
    utime: u64,
    stime: u64,
    start_ticks: u64,
    vsize: u64,
    rss_pages: u64,
}

/// The fields of `/proc/self/stat` we use. The command name (field 2) is in parentheses and
/// may hold spaces and parentheses itself, so the count starts after its last `)`.
fn stat_fields(stat: &str) -> Option<StatFields> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // `rest` starts at field 3 (state): field n is index n - 3.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let at = |n: usize| f.get(n - 3)?.parse::<u64>().ok();
    Some(StatFields {
        utime: at(14)?,
        stime: at(15)?,
        start_ticks: at(22)?,
        vsize: at(23)?,
        rss_pages: at(24)?,
    })
}

/// The `process_*` series.
#[derive(Default)]
pub(super) struct ProcessMetrics {
    cpu_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    resident_bytes: Gauge,
    virtual_bytes: Gauge,
    open_fds: Gauge,
    max_fds: Gauge,
    start_time_seconds: FloatGauge,
}

impl ProcessMetrics {
    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "process_cpu_seconds",
            "User and system CPU time of this process, in seconds",
            self.cpu_seconds.clone(),
        );
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory of this process, in bytes",
            self.resident_bytes.clone(),
        );
        registry.register(
            "process_virtual_memory_bytes",
            "Virtual memory of this process, in bytes",
            self.virtual_bytes.clone(),
        );
        registry.register(
            "process_open_fds",
            "Open file descriptors of this process",
            self.open_fds.clone(),
        );
        registry.register(
            "process_max_fds",
            "The open file descriptor limit of this process",
            self.max_fds.clone(),
        );
        registry.register(
            "process_start_time_seconds",
            "Start time of this process, in seconds since the Unix epoch",
            self.start_time_seconds.clone(),
        );
    }

    pub(super) fn refresh(&self) {
        let s = sample();
        let int = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        if let Some(cpu) = s.cpu_seconds {
            let seen = self.cpu_seconds.get();
            if cpu > seen {
                self.cpu_seconds.inc_by(cpu - seen);
            }
        }
        if let Some(v) = s.resident_bytes {
            self.resident_bytes.set(int(v));
        }
        if let Some(v) = s.virtual_bytes {
            self.virtual_bytes.set(int(v));
        }
        if let Some(v) = s.open_fds {
            self.open_fds.set(int(v));
        }
        if let Some(v) = s.max_fds {
            self.max_fds.set(int(v));
        }
        if let Some(v) = s.start_time_seconds {
            self.start_time_seconds.set(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parses_past_a_command_name_with_spaces_and_parentheses() {
        let line = "4242 (wor) ker (x)) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 777 123456789 2048 18446744073709551615";
        let f = stat_fields(line).unwrap();
        assert_eq!((f.utime, f.stime), (250, 50));
        assert_eq!(f.start_ticks, 777);
        assert_eq!(f.vsize, 123_456_789);
        assert_eq!(f.rss_pages, 2048);
        assert!(stat_fields("garbage").is_none());
    }

    #[test]
    fn this_process_reads_as_alive() {
        let s = sample();
        assert!(s.resident_bytes.unwrap() > 0);
        assert!(s.open_fds.unwrap() >= 3);
        assert!(s.max_fds.unwrap() >= s.open_fds.unwrap());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let start = s.start_time_seconds.unwrap();
        assert!(
            start <= now + 1.0 && start > now - 86_400.0 * 365.0,
            "{start}"
        );
        assert!(s.cpu_seconds.unwrap() >= 0.0);
    }
}
