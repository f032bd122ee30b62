//! Metrics pushed to a real Prometheus Pushgateway, scraped back.

use crate::{binary, env};

/// GET /metrics over plain HTTP/1.0 (the gateway closes the connection).
async fn scrape() -> String {
    let addr = env::pushgateway_url()
        .strip_prefix("http://")
        .unwrap()
        .to_string();
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(
            out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200"),
            "{out}"
        );
        out
    })
    .await
    .unwrap()
}

fn with<'a>(group: &[(&'a str, &'a str)], extra: (&'a str, &'a str)) -> Vec<(&'a str, &'a str)> {
    let mut l = group.to_vec();
    l.push(extra);
    l
}

/// The value of the sample of `metric` whose labels include all `labels`.
fn sample(text: &str, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_metrics_scrape_back_with_names_and_labels() {
    let gateway = env::pushgateway_url();
    let (_, ns) = env::namespace("metrics").await;
    let (_, bucket) = env::bucket("metrics").await;
    let plan = env::unique_name("plan");
    let cluster = env::unique_name("cluster");
    let backup = |kubeconfig: Option<&str>| {
        let mut cmd = binary::command();
        cmd.arg("backup")
            .env("STOW_REPOSITORY", format!("s3://{bucket}/"))
            .env("STOW_PASSWORD", "metrics-password")
            .env("STOW_INIT", "true")
            .env("STOW_NAMESPACES", &ns)
            .env("STOW_VOLUME_SOURCE", "skip")
            .env("STOW_PLAN", &plan)
            .env("STOW_CLUSTER_NAME", &cluster)
            .env("STOW_PUSHGATEWAY_URL", gateway);
        if let Some(k) = kubeconfig {
            cmd.env("KUBECONFIG", k);
        }
        cmd
    };
    let run = binary::run(backup(None)).await;
    assert_eq!(run.code, Some(0), "{}\n{}", run.stderr, run.stdout);
    assert!(run.stderr.contains("metrics pushed"), "{}", run.stderr);

    let group = [
        ("job", "kubestow"),
        ("plan", plan.as_str()),
        ("mode", "backup"),
        ("cluster", cluster.as_str()),
    ];
    let text = scrape().await;
    let last_success = sample(&text, "kubestow_last_success_timestamp_seconds", &group)
        .unwrap_or_else(|| panic!("no last success for {plan} in\n{text}"));
    let now = jiff::Timestamp::now().as_second() as f64;
    assert!(
        (now - last_success).abs() < 120.0,
        "{last_success} vs {now}"
    );
    assert_eq!(
        sample(
            &text,
            "kubestow_run_status",
            &with(&group, ("status", "success"))
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "kubestow_run_status",
            &with(&group, ("status", "failed"))
        ),
        Some(0.0)
    );
    assert!(sample(&text, "kubestow_run_duration_seconds", &group).unwrap() > 0.0);
    let bytes = |kind| {
        sample(
            &text,
            "kubestow_last_run_bytes",
            &with(&group, ("kind", kind)),
        )
    };
    assert!(bytes("written").unwrap() > 0.0);
    assert!(bytes("read").is_some());
    assert!(bytes("reused").is_some());
    assert!(
        sample(
            &text,
            "kubestow_last_run_objects",
            &with(&group, ("result", "stored"))
        )
        .unwrap()
            >= 1.0
    );

    // A failed run of the same plan: its status replaces the old one, the
    // last success stays for alerting.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("kubeconfig");
    std::fs::write(&bad, "apiVersion: v1\nkind: Config\nclusters: []\n").unwrap();
    let run = binary::run(backup(Some(bad.to_str().unwrap()))).await;
    assert_eq!(run.code, Some(1), "{}\n{}", run.stderr, run.stdout);
    let text = scrape().await;
    assert_eq!(
        sample(
            &text,
            "kubestow_run_status",
            &with(&group, ("status", "failed"))
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "kubestow_run_status",
            &with(&group, ("status", "success"))
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, "kubestow_last_success_timestamp_seconds", &group),
        Some(last_success)
    );
    // No label takes a new value per run: no run id in this plan's series
    // (the gateway outlives test runs: older groups may still have one).
    let ours: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(&format!("plan=\"{plan}\"")))
        .collect();
    assert!(!ours.is_empty());
    assert!(ours.iter().all(|l| !l.contains("run_id=")), "{ours:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_gateway_does_not_fail_the_run() {
    let mut cmd = binary::command();
    cmd.arg("list")
        .env("STOW_REPOSITORY", "file:///nonexistent-kubestow-repo")
        .env("STOW_PASSWORD", "x")
        .env("STOW_PUSHGATEWAY_URL", "http://127.0.0.1:9");
    let run = binary::run(cmd).await;
    // list fails (no repository) with its own status, not the push's.
    assert_eq!(run.summary["status"], "failed", "{}", run.stdout);
    assert!(
        run.stderr.contains("could not push metrics"),
        "{}",
        run.stderr
    );
}
