use std::time::Duration;

use jiff::Timestamp;
use jiff::tz::TimeZone;

use super::*;
use crate::repo::{SnapshotId, SnapshotManifest};

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn run_at(run_id: &str, plan: &str, time: &str, complete: bool) -> (SnapshotId, SnapshotManifest) {
    let mut m = SnapshotManifest::new(run_id, 0, if complete { 1 } else { 2 }, plan);
    m.time = ts(time);
    let id = SnapshotId(*blake3::hash(run_id.as_bytes()).as_bytes());
    (id, m)
}

#[test]
fn last_day_of_month_including_february_in_leap_years() {
    let utc = TimeZone::UTC;
    for (t, last) in [
        ("2026-01-31T12:00:00Z", true),
        ("2026-01-30T12:00:00Z", false),
        ("2026-04-30T12:00:00Z", true),
        ("2026-12-31T23:59:59Z", true),
        ("2027-02-28T02:00:00Z", true),  // not a leap year
        ("2028-02-28T02:00:00Z", false), // leap year: the 29th follows
        ("2028-02-29T02:00:00Z", true),
        ("2100-02-28T02:00:00Z", true), // divisible by 100, not by 400
        ("2000-02-29T02:00:00Z", true),
    ] {
        assert_eq!(is_last_day_of_month(ts(t), &utc), last, "{t}");
    }
}

#[test]
fn last_day_of_month_is_judged_in_the_configured_time_zone() {
    // 23:30 UTC on Jan 31st is already Feb 1st in Berlin, and still the 31st
    // in New York.
    let t = ts("2026-01-31T23:30:00Z");
    assert!(is_last_day_of_month(t, &TimeZone::UTC));
    assert!(!is_last_day_of_month(
        t,
        &TimeZone::get("Europe/Berlin").unwrap()
    ));
    assert!(is_last_day_of_month(
        t,
        &TimeZone::get("America/New_York").unwrap()
    ));
    // 22:30 UTC on Feb 27th 2028 is Feb 28th in Auckland, not the last day
    // (leap year); 22:30 UTC on Feb 28th 2028 is the 29th there: the last.
    let akl = TimeZone::get("Pacific/Auckland").unwrap();
    assert!(!is_last_day_of_month(ts("2028-02-27T22:30:00Z"), &akl));
    assert!(is_last_day_of_month(ts("2028-02-28T22:30:00Z"), &akl));
}

/// "Every 3 days" = a daily CronJob at 01:00 + STOW_MIN_INTERVAL=60h (the
/// chart's N×24h − 12h). Across the Jan/Feb boundary, where cron's `*/3`
/// would run on the 31st and again on the 1st, runs stay 3 days apart.
#[test]
fn every_3_days_across_a_month_boundary_with_min_interval() {
    let interval = Duration::from_secs(60 * 3600);
    let mut snapshots = Vec::new();
    let mut ran = Vec::new();
    for day in 26..=31 {
        simulate(
            &mut snapshots,
            &mut ran,
            &format!("2026-01-{day:02}"),
            interval,
        );
    }
    for day in 1..=8 {
        simulate(
            &mut snapshots,
            &mut ran,
            &format!("2026-02-{day:02}"),
            interval,
        );
    }
    assert_eq!(
        ran,
        [
            "2026-01-26",
            "2026-01-29",
            "2026-02-01",
            "2026-02-04",
            "2026-02-07"
        ]
    );
}

/// Cron fires daily at 01:00; a run takes 2h40m and its manifest is stamped
/// at the end (as kubestow does), so the slack must absorb the duration.
fn simulate(
    snapshots: &mut Vec<(SnapshotId, SnapshotManifest)>,
    ran: &mut Vec<String>,
    day: &str,
    interval: Duration,
) {
    let start = ts(&format!("{day}T01:00:00Z"));
    let runs = group_runs(snapshots.clone());
    if min_interval_skip(&runs, "every3", interval, start).is_none() {
        let end = ts(&format!("{day}T03:40:00Z"));
        snapshots.push(run_at(
            &format!("r-{day}"),
            "every3",
            &end.to_string(),
            true,
        ));
        ran.push(day.to_owned());
    }
}

#[test]
fn min_interval_counts_only_complete_runs_of_the_same_plan() {
    let now = ts("2026-03-10T12:00:00Z");
    let day = Duration::from_secs(86400);
    let snaps = vec![
        run_at("old", "nightly", "2026-03-05T12:00:00Z", true),
        run_at("other-plan", "weekly", "2026-03-10T11:00:00Z", true),
        run_at("incomplete", "nightly", "2026-03-10T11:30:00Z", false),
    ];
    let runs = group_runs(snaps.clone());
    assert_eq!(min_interval_skip(&runs, "nightly", 3 * day, now), None);
    let reason = min_interval_skip(&runs, "weekly", 3 * day, now).unwrap();
    assert!(reason.contains("other-plan"), "{reason}");
    assert!(reason.contains("1h00m old"), "{reason}");
    // No run at all: never skipped.
    assert_eq!(min_interval_skip(&[], "nightly", 3 * day, now), None);
    // Exactly the interval old: due.
    let runs = group_runs(vec![run_at("x", "p", "2026-03-07T12:00:00Z", true)]);
    assert_eq!(min_interval_skip(&runs, "p", 3 * day, now), None);
    assert!(min_interval_skip(&runs, "p", 3 * day + Duration::from_secs(1), now).is_some());
}

#[test]
fn an_interval_beyond_signed_durations_skips_instead_of_passing() {
    // Configuration caps it far lower; were it not, the conversion used to
    // fail and the guard let the run through.
    let now = ts("2026-03-10T12:00:00Z");
    let runs = group_runs(vec![run_at("x", "p", "2026-03-07T12:00:00Z", true)]);
    assert!(min_interval_skip(&runs, "p", Duration::MAX, now).is_some());
}
