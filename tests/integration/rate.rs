//! `STOW_RATE_LIMIT` against the real Garage: 30 s transfers must stay
//! within 10% of the limit, also across a window change. Slow, so ignored;
//! `just bench` runs them (`--ignored`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use jiff::Timestamp;
use jiff::tz::TimeZone;
use kubestow::config::RateSchedule;
use kubestow::repo::backend::{Backend, RetryBackend, S3Backend, Throttle, ThrottledBackend};

use crate::env;

const MIB: f64 = 1024.0 * 1024.0;
const STREAMS: usize = 4;
/// Small next to a second's worth, so objects in flight at the edges of a
/// measurement hardly matter.
const OBJECT: usize = 512 * 1024;
const TRANSFER: Duration = Duration::from_secs(30);

/// Garage behind the throttle and retries, stacked as `backend::open` does.
async fn backend(hint: &str, throttle: Arc<Throttle>) -> (Arc<dyn Backend>, Arc<dyn Backend>) {
    let (client, bucket) = env::bucket(hint).await;
    let raw: Arc<dyn Backend> = Arc::new(S3Backend::new(client, &bucket, "rate"));
    let limited = Arc::new(RetryBackend::new(
        Arc::new(ThrottledBackend::new(raw.clone(), throttle)),
        Duration::from_secs(60),
    ));
    (raw, limited)
}

fn object(seed: usize) -> Bytes {
    Bytes::from(
        (0..OBJECT)
            .map(|i| ((i + seed).wrapping_mul(2654435761) >> 24) as u8)
            .collect::<Vec<_>>(),
    )
}

/// `STREAMS` parallel streams transfer `OBJECT`s until `until`; returns when
/// each transfer completed.
async fn transfer(b: Arc<dyn Backend>, download: bool, until: Instant) -> Vec<Instant> {
    let tasks: Vec<_> = (0..STREAMS)
        .map(|s| {
            let b = b.clone();
            tokio::spawn(async move {
                let data = object(s);
                let mut done = Vec::new();
                let mut i = 0;
                while Instant::now() < until {
                    let key = format!("data/{s}/{}", i % 8);
                    if download {
                        assert_eq!(b.get(&format!("data/{s}/0")).await.unwrap().len(), OBJECT);
                    } else {
                        b.put(&key, data.clone()).await.unwrap();
                    }
                    done.push(Instant::now());
                    i += 1;
                }
                done
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    all
}

fn mib_per_s(objects: usize, over: Duration) -> f64 {
    (objects * OBJECT) as f64 / MIB / over.as_secs_f64()
}

fn assert_within_10pct(what: &str, measured: f64, expected: f64) {
    let off = (measured - expected) / expected * 100.0;
    println!("{what}: {measured:.2} MiB/s, limit {expected:.2} MiB/s ({off:+.1}%)");
    assert!(off.abs() <= 10.0, "{what}: {off:+.1}% off the limit");
}

async fn single_rate(download: bool) {
    let limit = 8.0;
    let schedule = RateSchedule::parse("8MiB").unwrap();
    let throttle = Arc::new(Throttle::new(schedule, TimeZone::UTC));
    let what = if download { "download" } else { "upload" };
    let (raw, limited) = backend(&format!("rate-{what}"), throttle).await;
    if download {
        for s in 0..STREAMS {
            raw.put(&format!("data/{s}/0"), object(s)).await.unwrap();
        }
    }
    let start = Instant::now();
    let done = transfer(limited, download, start + TRANSFER).await;
    let took = done.last().unwrap().duration_since(start);
    assert_within_10pct(
        &format!("{what}, single rate, {took:.1?}"),
        mib_per_s(done.len(), took),
        limit,
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "30 s against Garage; run by `just bench`"]
async fn single_rate_upload_stays_within_10_percent() {
    single_rate(false).await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "30 s against Garage; run by `just bench`"]
async fn single_rate_download_stays_within_10_percent() {
    single_rate(true).await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "up to 90 s against Garage; run by `just bench`"]
async fn window_change_during_upload_applies_the_new_rate() {
    let (before, after) = (4.0, 12.0);
    // Windows have minute granularity: start 15 s before a minute boundary
    // (UTC) and give the minute after it the other rate.
    let now = Timestamp::now();
    let minute = 60_000_000_000i128;
    let boundary_ns = (now.as_nanosecond() + 15 * 1_000_000_000 + minute - 1) / minute * minute;
    let boundary = Timestamp::from_nanosecond(boundary_ns).unwrap();
    let b = TimeZone::UTC.to_datetime(boundary);
    let from = b.hour() as u32 * 60 + b.minute() as u32;
    let schedule = format!(
        "{:02}:{:02}-{:02}:{:02}=12MiB,*=4MiB",
        from / 60,
        from % 60,
        (from + 1) / 60,
        (from + 1) % 60
    );
    println!("window change at {boundary}: STOW_RATE_LIMIT={schedule}");
    let schedule = RateSchedule::parse(&schedule).unwrap();

    let (_, limited) = backend(
        "rate-window",
        Arc::new(Throttle::new(schedule, TimeZone::UTC)),
    )
    .await;
    let lead = Duration::from_nanos((boundary_ns - Timestamp::now().as_nanosecond()) as u64);
    tokio::time::sleep(lead.saturating_sub(Duration::from_secs(15))).await;

    // Map the boundary onto the monotonic clock once, at the start.
    let start = Instant::now();
    let switch = start
        + Duration::from_nanos((boundary_ns - Timestamp::now().as_nanosecond()).max(0) as u64);
    let done = transfer(limited, false, start + TRANSFER).await;
    let end = *done.last().unwrap();
    let n_before = done.iter().filter(|t| **t < switch).count();
    let (t_before, t_after) = (switch - start, end - switch);
    assert_within_10pct(
        &format!("upload before the window change, {t_before:.1?}"),
        mib_per_s(n_before, t_before),
        before,
    );
    assert_within_10pct(
        &format!("upload after the window change, {t_after:.1?}"),
        mib_per_s(done.len() - n_before, t_after),
        after,
    );
    let expected = (before * t_before.as_secs_f64() + after * t_after.as_secs_f64())
        / (end - start).as_secs_f64();
    assert_within_10pct(
        &format!("upload across the window change, {:.1?}", end - start),
        mib_per_s(done.len(), end - start),
        expected,
    );
}
