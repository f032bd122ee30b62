//! Retention, as a pure function.

use super::*;

// Retention, as a pure function.

fn c(run: &str, plan: &str, time: &str, complete: bool) -> Candidate {
    Candidate {
        run_id: run.into(),
        plan: plan.into(),
        time: t(time),
        complete,
    }
}

/// Run ids kept, in input order.
fn kept(runs: &[Candidate], p: &Retention, tz: &str, now: &str) -> Vec<String> {
    let tz = TimeZone::get(tz).unwrap();
    retention(runs, p, &tz, t(now), Duration::from_secs(24 * 3600))
        .iter()
        .zip(runs)
        .filter(|(v, _)| matches!(v, Verdict::Keep(_)))
        .map(|(_, r)| r.run_id.clone())
        .collect()
}

#[test]
fn retention_weeks_months_years() {
    let runs = vec![
        c("sun", "p", "2026-01-04T12:00:00Z", true), // ISO week 1 of 2026
        c("mon", "p", "2026-01-05T12:00:00Z", true), // ISO week 2
        c("tue", "p", "2026-01-06T12:00:00Z", true), // ISO week 2
        c("dec", "p", "2025-12-31T12:00:00Z", true), // ISO week 1 of 2026 too
        c("nov", "p", "2025-11-15T12:00:00Z", true),
        c("y24", "p", "2024-07-01T12:00:00Z", true),
    ];
    let k = |f: fn(&mut Retention)| kept(&runs, &policy(f), "UTC", NOW);
    assert_eq!(k(|r| r.weekly = Some(2)), ["sun", "tue"]);
    assert_eq!(k(|r| r.weekly = Some(3)), ["sun", "tue", "nov"]);
    assert_eq!(k(|r| r.monthly = Some(3)), ["tue", "dec", "nov"]);
    assert_eq!(k(|r| r.yearly = Some(3)), ["tue", "dec", "y24"]);
}

#[test]
fn retention_buckets_use_the_time_zone() {
    // 23:30 UTC on the 1st is 00:30 on the 2nd in Berlin (UTC+1 in January).
    let runs = vec![
        c("a", "p", "2026-01-01T23:30:00Z", true),
        c("b", "p", "2026-01-02T00:30:00Z", true),
    ];
    let p = policy(|r| r.daily = Some(5));
    assert_eq!(kept(&runs, &p, "UTC", NOW), ["a", "b"]);
    assert_eq!(kept(&runs, &p, "Europe/Berlin", NOW), ["b"]);
}

#[test]
fn retention_is_per_plan_and_per_run() {
    let runs = vec![
        c("n1", "nightly", "2026-06-01T00:00:00Z", true),
        c("n2", "nightly", "2026-06-02T00:00:00Z", true),
        c("w1", "weekly", "2026-05-01T00:00:00Z", true),
        c("w2", "weekly", "2026-05-08T00:00:00Z", true),
    ];
    assert_eq!(
        kept(&runs, &policy(|r| r.last = Some(1)), "UTC", NOW),
        ["n2", "w2"]
    );
}

#[test]
fn incomplete_runs_wait_then_go_and_never_count() {
    let runs = vec![
        c("old-done", "p", "2026-06-01T00:00:00Z", true),
        c("old-partial", "p", "2026-06-02T00:00:00Z", false),
        c("young-partial", "p", "2026-06-29T12:00:00Z", false),
    ];
    let tz = TimeZone::UTC;
    let v = retention(
        &runs,
        &policy(|r| r.last = Some(1)),
        &tz,
        t(NOW),
        Duration::from_secs(24 * 3600),
    );
    assert_eq!(
        v[0],
        Verdict::Keep(vec!["last"]),
        "incomplete runs do not use up keep-last"
    );
    assert!(matches!(v[1], Verdict::Forget(r) if r.contains("incomplete")));
    assert!(matches!(&v[2], Verdict::Keep(r) if r[0].contains("in flight")));
    // Reasons are listed per rule; ties in time are broken by run id.
    let runs = vec![
        c("a", "p", "2026-06-01T00:00:00Z", true),
        c("b", "p", "2026-06-01T00:00:00Z", true),
    ];
    let v = retention(
        &runs,
        &policy(|r| {
            r.last = Some(1);
            r.daily = Some(1);
            r.yearly = Some(1);
        }),
        &tz,
        t(NOW),
        Duration::ZERO,
    );
    assert_eq!(v[0], Verdict::Forget("no rule keeps it"));
    assert_eq!(v[1], Verdict::Keep(vec!["last", "daily", "yearly"]));
}

#[test]
fn retention_table() {
    // Daily history with gaps and several runs on some days.
    let runs = vec![
        c("d1a", "p", "2026-06-01T01:00:00Z", true),
        c("d1b", "p", "2026-06-01T23:00:00Z", true),
        c("d2", "p", "2026-06-02T12:00:00Z", true),
        c("d5a", "p", "2026-06-05T08:00:00Z", true),
        c("d5b", "p", "2026-06-05T09:30:00Z", true),
        c("d5c", "p", "2026-06-05T09:45:00Z", true),
        c("d6", "p", "2026-06-06T00:00:00Z", true),
    ];
    type Case = (&'static str, fn(&mut Retention), &'static [&'static str]);
    let cases: &[Case] = &[
        ("last 3", |r| r.last = Some(3), &["d5b", "d5c", "d6"]),
        ("last 0 keeps nothing", |r| r.last = Some(0), &[]),
        (
            "last more than there are",
            |r| r.last = Some(50),
            &["d1a", "d1b", "d2", "d5a", "d5b", "d5c", "d6"],
        ),
        // Newest of each of the last 3 days that have runs; gaps cost nothing.
        ("daily 3", |r| r.daily = Some(3), &["d2", "d5c", "d6"]),
        (
            "daily 10",
            |r| r.daily = Some(10),
            &["d1b", "d2", "d5c", "d6"],
        ),
        // 09:30 and 09:45 share an hour.
        ("hourly 3", |r| r.hourly = Some(3), &["d5a", "d5c", "d6"]),
        // ISO weeks: Mon 1 Jun .. Sun 7 Jun 2026 is one week.
        ("weekly 2", |r| r.weekly = Some(2), &["d6"]),
        ("monthly 1", |r| r.monthly = Some(1), &["d6"]),
        ("yearly 5", |r| r.yearly = Some(5), &["d6"]),
        // Rules add up.
        (
            "last 1 + daily 2",
            |r| {
                r.last = Some(1);
                r.daily = Some(2);
            },
            &["d5c", "d6"],
        ),
        (
            "last 2 + daily 4",
            |r| {
                r.last = Some(2);
                r.daily = Some(4);
            },
            &["d1b", "d2", "d5c", "d6"],
        ),
    ];
    for (name, f, want) in cases {
        let p = policy(f);
        assert_eq!(kept(&runs, &p, "UTC", NOW), *want, "{name}");
    }
}
