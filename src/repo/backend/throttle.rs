//! `STOW_RATE_LIMIT`: one token bucket per process, charged by every upload
//! and download stream.
//!
//! Bytes are charged in slices of [`SLICE`], each taking a ticket in one
//! FIFO queue: parallel streams interleave slice by slice (fair; an object
//! smaller than a slice is one turn, so it waits for at most one slice of each
//! other stream), and a 16 MiB pack spans many slices, so a rate change
//! applies in the middle of it.
//! Tickets are counted in bytes, not in times, so a new rate also applies to
//! slices already waiting.
//!
//! The rate comes from the [`RateSchedule`] at the current wall-clock time in
//! `STOW_TIMEZONE`. It is evaluated again every second and exactly at every
//! minute boundary (windows have minute granularity), and waiters wake at
//! those moments, so a window change takes effect within a second even in the
//! middle of a long transfer.

use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use jiff::Timestamp;
use jiff::tz::TimeZone;
use tokio::time::Instant;

use super::{Backend, ObjectInfo, Result};
use crate::config::rate::{Rate, RateSchedule};

/// Unit of charging: small enough for fair sharing and mid-object rate
/// changes, large enough that locking costs nothing next to the transfer.
pub const SLICE: u64 = 128 * 1024;
/// Bucket capacity in time at the current rate (at least one slice).
const BURST: Duration = Duration::from_millis(100);
/// The schedule is looked at again at least this often.
const REEVALUATE: Duration = Duration::from_secs(1);

/// The wall clock the schedule is evaluated at; injectable for tests.
pub type WallClock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// A token bucket shared by the backends it throttles, limiting their combined
/// transfer rate to what the schedule gives for the current local time.
pub struct Throttle {
    schedule: RateSchedule,
    tz: TimeZone,
    wall: WallClock,
    state: Mutex<State>,
}

struct State {
    /// Bytes per second in force; `None` = unlimited.
    rate: Rate,
    /// Total bytes ever asked for; a slice's ticket is this total after it.
    reserved: f64,
    /// Total bytes the bucket has let through; a ticket may go once this
    /// reaches it. `served - reserved` is the bucket's content (≤ capacity).
    served: f64,
    /// Refill is accounted up to here.
    last: Instant,
    /// When the schedule must be evaluated again.
    next_eval: Instant,
}

impl std::fmt::Debug for Throttle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttle")
            .field("schedule", &self.schedule.to_string())
            .field("tz", &self.tz.iana_name())
            .finish()
    }
}

fn capacity(rate: u64) -> f64 {
    (rate as f64 * BURST.as_secs_f64()).max(SLICE as f64)
}

impl Throttle {
    /// Evaluates `schedule` in time zone `tz` on the system clock.
    pub fn new(schedule: RateSchedule, tz: TimeZone) -> Self {
        Self::with_clock(schedule, tz, Arc::new(Timestamp::now))
    }

    /// With a given wall clock; the refill runs on tokio's clock, so tests
    /// can pause and advance both together.
    pub fn with_clock(schedule: RateSchedule, tz: TimeZone, wall: WallClock) -> Self {
        let now = Instant::now();
        let throttle = Self {
            schedule,
            tz,
            wall,
            state: Mutex::new(State {
                rate: None,
                reserved: 0.0,
                served: 0.0,
                last: now,
                next_eval: now,
            }),
        };
        // Starts with a full bucket.
        let mut st = throttle.lock();
        throttle.update(&mut st, now);
        drop(st);
        throttle
    }

    /// The process-wide throttle for `schedule` (`STOW_RATE_LIMIT`): every
    /// repository opened in this process with the same schedule (e.g.
    /// source and target of `copy`) shares one bucket.
    pub fn shared(schedule: &RateSchedule, tz: &TimeZone) -> Arc<Throttle> {
        // Weak: the bucket lives as long as some backend uses it.
        type Registry = Mutex<Vec<Weak<Throttle>>>;
        static SHARED: Registry = Mutex::new(Vec::new());
        let mut all = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|w| w.strong_count() > 0);
        if let Some(t) = all
            .iter()
            .filter_map(Weak::upgrade)
            .find(|t| t.schedule == *schedule && t.tz == *tz)
        {
            return t;
        }
        let t = Arc::new(Throttle::new(schedule.clone(), tz.clone()));
        all.push(Arc::downgrade(&t));
        t
    }

    /// The rate in force now.
    pub fn rate(&self) -> Rate {
        let mut st = self.lock();
        self.update(&mut st, Instant::now());
        st.rate
    }

    /// Waits until `bytes` may be transferred.
    pub async fn acquire(&self, bytes: u64) {
        let mut left = bytes;
        while left > 0 {
            let n = left.min(SLICE);
            self.acquire_slice(n).await;
            left -= n;
        }
    }

    async fn acquire_slice(&self, n: u64) {
        let mut ticket = Ticket {
            throttle: self,
            bytes: n as f64,
            at: None,
        };
        loop {
            let wait = {
                let mut st = self.lock();
                let now = Instant::now();
                self.update(&mut st, now);
                let Some(rate) = st.rate else {
                    ticket.at = None;
                    return;
                };
                let at = *ticket.at.get_or_insert_with(|| {
                    st.reserved += n as f64;
                    st.reserved
                });
                // Half a byte of slack absorbs float rounding.
                let missing = at - st.served;
                if missing <= 0.5 {
                    ticket.at = None;
                    return;
                }
                // Wake at the next evaluation too: the rate may change then.
                Duration::from_secs_f64(missing / rate as f64).min(st.next_eval - now)
            };
            tokio::time::sleep(wait).await;
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere cannot leave the counters inconsistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Brings refill and rate up to `now`, switching rates exactly at the
    /// evaluation points in between.
    fn update(&self, st: &mut State, now: Instant) {
        if now.saturating_duration_since(st.last) > 2 * REEVALUATE {
            // Idle (waiters wake every second): the bucket is full whatever
            // the rates were, so there is nothing to replay.
            self.refill(st, now);
            self.evaluate(st, now, now);
        }
        while st.next_eval <= now {
            let at = st.next_eval;
            self.refill(st, at);
            self.evaluate(st, at, now);
        }
        self.refill(st, now);
    }

    fn refill(&self, st: &mut State, to: Instant) {
        let dt = to.saturating_duration_since(st.last).as_secs_f64();
        st.last = st.last.max(to);
        match st.rate {
            Some(r) => st.served = (st.served + r as f64 * dt).min(st.reserved + capacity(r)),
            // Unlimited: every waiting ticket goes.
            None => st.served = st.served.max(st.reserved),
        }
    }

    /// Sets the rate in force at `at` (≤ `now`) and when to look again.
    fn evaluate(&self, st: &mut State, at: Instant, now: Instant) {
        let wall = (self.wall)() - (now - at);
        let rate = self.schedule.rate_at(self.tz.to_datetime(wall));
        if let (None, Some(r)) = (st.rate, rate) {
            // From unlimited to limited: start with a full bucket.
            st.served = st.reserved + capacity(r);
        }
        st.rate = rate;
        const MINUTE_NS: i128 = 60_000_000_000;
        let to_minute = MINUTE_NS - wall.as_nanosecond().rem_euclid(MINUTE_NS);
        let to_minute = Duration::from_nanos(to_minute as u64);
        st.next_eval = at + REEVALUATE.min(to_minute);
    }
}

/// A slice's place in the queue; gives its bytes back if the transfer is
/// cancelled while waiting, so later tickets do not wait for it.
struct Ticket<'a> {
    throttle: &'a Throttle,
    bytes: f64,
    at: Option<f64>,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if self.at.is_some() {
            self.throttle.lock().served += self.bytes;
        }
    }
}

/// Charges the shared [`Throttle`] for the bytes of every upload and download.
#[derive(Debug)]
pub struct ThrottledBackend {
    inner: Arc<dyn Backend>,
    throttle: Arc<Throttle>,
}

impl ThrottledBackend {
    /// Wraps `inner`, charging `throttle`.
    pub fn new(inner: Arc<dyn Backend>, throttle: Arc<Throttle>) -> Self {
        Self { inner, throttle }
    }
}

#[async_trait]
impl Backend for ThrottledBackend {
    fn location(&self) -> String {
        self.inner.location()
    }
    // Listing, heads and deletes carry no payload: free.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        self.inner.list(prefix).await
    }
    // Downloads are charged once the size is known: the average rate holds.
    async fn get(&self, key: &str) -> Result<Bytes> {
        let data = self.inner.get(key).await?;
        self.throttle.acquire(data.len() as u64).await;
        Ok(data)
    }
    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes> {
        let data = self.inner.get_range(key, offset, len).await?;
        self.throttle.acquire(data.len() as u64).await;
        Ok(data)
    }
    // Uploads are charged before sending: the SDK takes the whole body.
    async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        self.throttle.acquire(data.len() as u64).await;
        self.inner.put(key, data).await
    }
    async fn delete(&self, key: &str) -> Result<()> {
        self.inner.delete(key).await
    }
    async fn head(&self, key: &str) -> Result<Option<u64>> {
        self.inner.head(key).await
    }
    async fn probe(&self) -> Result<()> {
        self.inner.probe().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::backend::MemBackend;

    const MIB: u64 = 1024 * 1024;

    /// Wall clock that follows tokio's paused clock from `start`.
    fn clock(start: &str) -> WallClock {
        let base: Timestamp = start.parse().unwrap();
        let t0 = Instant::now();
        Arc::new(move || base + t0.elapsed())
    }

    fn throttle(schedule: &str, start: &str) -> Arc<Throttle> {
        Arc::new(Throttle::with_clock(
            RateSchedule::parse(schedule).unwrap(),
            TimeZone::UTC,
            clock(start),
        ))
    }

    fn secs(d: Duration) -> f64 {
        d.as_secs_f64()
    }

    /// Virtual time to move `bytes` through `t` in chunks of `chunk`.
    async fn time_to_send(t: &Throttle, bytes: u64, chunk: u64) -> Duration {
        let start = Instant::now();
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk);
            t.acquire(n).await;
            left -= n;
        }
        start.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn ten_mib_at_one_mib_per_second_takes_ten_seconds() {
        let t = throttle("1MiB", "2026-11-23T10:00:00Z");
        let took = secs(time_to_send(&t, 10 * MIB, 16 * MIB).await);
        // The first burst (one slice here) is free; the rest runs at the rate.
        let burst = SLICE as f64 / MIB as f64;
        assert!(
            (10.0 - burst - 0.002..=10.0 - burst + 0.002).contains(&took),
            "{took}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn many_small_objects_obey_the_rate_too() {
        // Waits shorter than the timer's millisecond do not add up: refill
        // follows elapsed time, not the number of wake-ups.
        let t = throttle("4MiB/s", "2026-11-23T10:00:00Z");
        let took = secs(time_to_send(&t, 40 * MIB, 1000).await);
        let burst = BURST.as_secs_f64();
        assert!(
            (10.0 - burst - 0.002..=10.0 - burst + 0.002).contains(&took),
            "{took}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idle_time_does_not_accumulate_beyond_the_burst() {
        let t = throttle("10MiB", "2026-11-23T10:00:00Z");
        tokio::time::sleep(Duration::from_secs(3600)).await;
        let took = secs(time_to_send(&t, 20 * MIB, 16 * MIB).await);
        // Only 100 ms worth (1 MiB) is banked after an hour of idling.
        assert!((1.899..=1.901).contains(&took), "{took}");
    }

    #[tokio::test(start_paused = true)]
    async fn window_change_applies_from_the_boundary_on() {
        // 1 MiB/s until 10:00, 3 MiB/s from then on; the transfer starts at
        // 09:59:55 with one 20 MiB object, so the switch is mid-object.
        let t = throttle("10:00-11:00=3MiB,*=1MiB", "2026-11-23T09:59:55Z");
        let sent = Arc::new(Mutex::new(0u64));
        let task = {
            let (t, sent) = (t.clone(), sent.clone());
            tokio::spawn(async move {
                let start = Instant::now();
                let mut left = 20 * MIB;
                while left > 0 {
                    let n = left.min(SLICE);
                    t.acquire(n).await;
                    *sent.lock().unwrap() += n;
                    left -= n;
                }
                start.elapsed()
            })
        };
        tokio::time::sleep(Duration::from_secs(5)).await;
        // 5 s at 1 MiB/s plus the first slice.
        let at_switch = *sent.lock().unwrap();
        assert!(
            (5 * MIB..=5 * MIB + 2 * SLICE).contains(&at_switch),
            "{at_switch}"
        );
        assert_eq!(t.rate(), Some(3 * MIB));
        // The remaining 15 MiB at 3 MiB/s: 5 more seconds.
        let took = secs(task.await.unwrap());
        assert!((9.87..=10.01).contains(&took), "{took}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_window_does_not_hold_back_the_change() {
        // 10 KiB/s: one slice takes almost 13 s, but the switch to unlimited
        // at 10:00 (2 s in) must release the transfer within a second.
        let t = throttle("10:00-11:00=unlimited,*=10KiB", "2026-11-23T09:59:58Z");
        let took = secs(time_to_send(&t, 10 * MIB, 16 * MIB).await);
        assert!((1.99..=2.01).contains(&took), "{took}");
    }

    #[tokio::test(start_paused = true)]
    async fn unlimited_windows_cost_nothing() {
        let t = throttle("unlimited", "2026-11-23T10:00:00Z");
        assert_eq!(time_to_send(&t, 1 << 40, 16 * MIB).await, Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn local_time_zone_decides_the_window() {
        // 09:00 UTC is 10:00 in Berlin in November.
        let t = Throttle::with_clock(
            RateSchedule::parse("10:00-11:00=1MiB,*=unlimited").unwrap(),
            TimeZone::get("Europe/Berlin").unwrap(),
            clock("2026-11-23T09:00:00Z"),
        );
        assert_eq!(t.rate(), Some(MIB));
    }

    #[tokio::test(start_paused = true)]
    async fn parallel_streams_share_the_rate_fairly() {
        let t = throttle("2MiB", "2026-11-23T10:00:00Z");
        // One 10 MiB object against ten seconds' worth of slice-sized ones:
        // the big object must not go first, both progress together.
        let big = tokio::spawn({
            let t = t.clone();
            async move { time_to_send(&t, 10 * MIB, 16 * MIB).await }
        });
        let small = tokio::spawn({
            let t = t.clone();
            async move { time_to_send(&t, 10 * MIB, SLICE).await }
        });
        let (big, small) = (secs(big.await.unwrap()), secs(small.await.unwrap()));
        // 20 MiB in total at 2 MiB/s (less the 0.1 s burst); the big one
        // got the first slice free, so it ends at most two slices earlier.
        assert!((9.899..=9.901).contains(&small), "{big} {small}");
        assert!((9.77..=9.901).contains(&big), "{big} {small}");
    }

    #[tokio::test(start_paused = true)]
    async fn tiny_objects_are_not_starved_by_a_big_one() {
        let t = throttle("1MiB", "2026-11-23T10:00:00Z");
        let big = tokio::spawn({
            let t = t.clone();
            async move { t.acquire(16 * MIB).await }
        });
        tokio::task::yield_now().await;
        // Each 4 KiB object waits for at most one slice of the pack (else
        // it would wait for the whole pack: 16 s).
        let start = Instant::now();
        for _ in 0..8 {
            t.acquire(4096).await;
        }
        let took = secs(start.elapsed());
        assert!(
            took <= 8.0 * (SLICE + 4096) as f64 / MIB as f64 + 0.002,
            "{took}"
        );
        big.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_waits_give_their_bytes_back() {
        let t = throttle("1MiB", "2026-11-23T10:00:00Z");
        // Takes a ticket for 10 MiB, then gives up.
        let r = tokio::time::timeout(Duration::from_secs(1), t.acquire(100 * MIB)).await;
        assert!(r.is_err());
        let took = secs(time_to_send(&t, MIB, MIB).await);
        assert!(took <= 1.01, "{took}");
    }

    #[tokio::test(start_paused = true)]
    async fn backend_charges_uploads_and_downloads_only() {
        let t = throttle("1MiB", "2026-11-23T10:00:00Z");
        let b = ThrottledBackend::new(Arc::new(MemBackend::new()), t);
        let start = Instant::now();
        b.put("a/b", Bytes::from(vec![7u8; 4 * MIB as usize]))
            .await
            .unwrap();
        let up = secs(start.elapsed());
        assert!((3.87..=3.88).contains(&up), "{up}");
        let start = Instant::now();
        assert_eq!(b.get("a/b").await.unwrap().len(), 4 * MIB as usize);
        assert_eq!(
            b.get_range("a/b", 0, 2 * MIB).await.unwrap().len(),
            2 * MIB as usize
        );
        assert!((5.99..=6.01).contains(&secs(start.elapsed())));
        let start = Instant::now();
        for _ in 0..100 {
            b.list("a/").await.unwrap();
            b.head("a/b").await.unwrap();
        }
        b.delete("a/b").await.unwrap();
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[test]
    fn the_same_limit_shares_one_bucket() {
        let s = RateSchedule::parse("5MiB").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let a = Throttle::shared(&s, &TimeZone::UTC);
            let b = Throttle::shared(&s, &TimeZone::UTC);
            assert!(Arc::ptr_eq(&a, &b));
            let other = Throttle::shared(&RateSchedule::parse("6MiB").unwrap(), &TimeZone::UTC);
            assert!(!Arc::ptr_eq(&a, &other));
        });
    }
}
