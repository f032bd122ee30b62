//! Progress of a long run: counters the workers bump, and a reporter that
//! shows them every 10 s in the log (bytes, files, objects, rate,
//! estimated time remaining), or as a live bar when stderr is a terminal.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tracing::info;

/// How often the log shows progress.
pub const EVERY: Duration = Duration::from_secs(10);

/// Counters shared by every worker of one run phase.
#[derive(Debug)]
pub struct Progress {
    what: String,
    bytes: AtomicU64,
    files: AtomicU64,
    objects: AtomicU64,
    /// Bytes expected in all; 0 while unknown.
    total: AtomicU64,
    started: Instant,
}

/// One reading of the counters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    /// Bytes moved so far.
    pub bytes: u64,
    /// Files done so far.
    pub files: u64,
    /// Kubernetes objects done so far.
    pub objects: u64,
    /// Bytes expected in all, when known.
    pub total: Option<u64>,
    /// Time since the start.
    pub elapsed: Duration,
}

impl Reading {
    /// Bytes per second since the start.
    pub fn rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs <= 0.0 {
            0.0
        } else {
            self.bytes as f64 / secs
        }
    }

    /// Time left at the average rate so far, when the total is known.
    pub fn eta(&self) -> Option<Duration> {
        let total = self.total?;
        let rate = self.rate();
        if rate <= 0.0 {
            return None;
        }
        let left = total.saturating_sub(self.bytes) as f64;
        Some(Duration::from_secs_f64(left / rate))
    }

    /// How much of the total is done, when the total is known.
    pub fn percent(&self) -> Option<f64> {
        self.total
            .filter(|t| *t > 0)
            .map(|t| (self.bytes as f64 * 100.0 / t as f64).min(100.0))
    }
}

impl Progress {
    /// Counters for `what` ("volume backup", …), starting now.
    pub fn new(what: impl Into<String>) -> Arc<Progress> {
        Arc::new(Progress {
            what: what.into(),
            bytes: AtomicU64::new(0),
            files: AtomicU64::new(0),
            objects: AtomicU64::new(0),
            total: AtomicU64::new(0),
            started: Instant::now(),
        })
    }

    /// Counts `n` bytes moved.
    pub fn add_bytes(&self, n: u64) {
        self.bytes.fetch_add(n, Relaxed);
    }
    /// Counts `n` files done.
    pub fn add_files(&self, n: u64) {
        self.files.fetch_add(n, Relaxed);
    }
    /// Counts `n` objects done.
    pub fn add_objects(&self, n: u64) {
        self.objects.fetch_add(n, Relaxed);
    }
    /// The expected total (e.g. the parent snapshot's size, or what a
    /// restore will write), for the time estimate.
    pub fn set_total(&self, bytes: u64) {
        self.total.store(bytes, Relaxed);
    }

    /// The counters now.
    pub fn read(&self) -> Reading {
        let total = self.total.load(Relaxed);
        Reading {
            bytes: self.bytes.load(Relaxed),
            files: self.files.load(Relaxed),
            objects: self.objects.load(Relaxed),
            total: (total > 0).then_some(total),
            elapsed: self.started.elapsed(),
        }
    }

    /// Starts showing progress until the returned guard is dropped.
    pub fn show(self: &Arc<Self>) -> Shown {
        let p = self.clone();
        let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let task = tokio::spawn(async move {
            if tty {
                bar(&p).await
            } else {
                let mut tick = tokio::time::interval(EVERY);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    log(&p.what, &p.read());
                }
            }
        });
        Shown { task }
    }
}

/// Stops the display when dropped.
pub struct Shown {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Shown {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn mib(b: f64) -> String {
    format!("{:.1}", b / (1u64 << 20) as f64)
}

/// Progress lines for a loop that cannot run a task of its own (the
/// blocking walkers of volume backup and restore): call [`Ticker::tick`]
/// as often as convenient; it logs every [`EVERY`].
#[derive(Debug)]
pub struct Ticker {
    what: &'static str,
    started: Instant,
    last: Instant,
    total: Option<u64>,
}

impl Ticker {
    /// A ticker for `what`, with the expected total when known.
    pub fn new(what: &'static str, total: Option<u64>) -> Ticker {
        let now = Instant::now();
        Ticker {
            what,
            started: now,
            last: now,
            total,
        }
    }

    /// Logs `bytes` and `files` so far if the last line is old enough.
    pub fn tick(&mut self, bytes: impl FnOnce() -> u64, files: impl FnOnce() -> u64) {
        if self.last.elapsed() < EVERY {
            return;
        }
        self.last = Instant::now();
        let reading = Reading {
            bytes: bytes(),
            files: files(),
            objects: 0,
            total: self.total,
            elapsed: self.started.elapsed(),
        };
        log(self.what, &reading);
    }
}

/// One log line, fields first.
pub fn log(what: &str, r: &Reading) {
    info!(
        task = what,
        bytes = r.bytes,
        files = r.files,
        objects = r.objects,
        mib_per_s = %mib(r.rate()),
        percent = ?r.percent().map(|p| (p * 10.0).round() / 10.0),
        eta_seconds = ?r.eta().map(|d| d.as_secs()),
        "progress"
    );
}

async fn bar(p: &Progress) {
    let pb = indicatif::ProgressBar::new(0);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    pb.set_prefix(p.what.clone());
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tick.tick().await;
        let r = p.read();
        pb.set_length(r.total.unwrap_or(r.bytes).max(r.bytes));
        pb.set_position(r.bytes);
        pb.set_message(format!("{} files, {} objects", r.files, r.objects));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_eta_and_percent() {
        let r = Reading {
            bytes: 30 << 20,
            files: 3,
            objects: 0,
            total: Some(120 << 20),
            elapsed: Duration::from_secs(10),
        };
        assert_eq!(r.rate(), 3.0 * (1 << 20) as f64);
        assert_eq!(r.eta(), Some(Duration::from_secs(30)));
        assert_eq!(r.percent(), Some(25.0));
        // Unknown total: no estimate; nothing done yet: no rate.
        let r = Reading { total: None, ..r };
        assert_eq!(r.eta(), None);
        assert_eq!(r.percent(), None);
        let r = Reading {
            bytes: 0,
            total: Some(1),
            elapsed: Duration::ZERO,
            ..r
        };
        assert_eq!(r.rate(), 0.0);
        assert_eq!(r.eta(), None);
    }

    #[test]
    fn counters_add_up() {
        let p = Progress::new("volume shop/data");
        p.add_bytes(5);
        p.add_bytes(7);
        p.add_files(2);
        p.add_objects(1);
        p.set_total(100);
        let r = p.read();
        assert_eq!(
            (r.bytes, r.files, r.objects, r.total),
            (12, 2, 1, Some(100))
        );
    }
}
