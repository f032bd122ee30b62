//! Running local commands around a mode and around each volume.

use std::path::Path;
use std::time::Duration;

use super::*;
use crate::modes::Error;
use crate::modes::options::hooks as options;

fn ctx() -> RunContext {
    RunContext {
        run_id: "run-1".into(),
        cancel: CancellationToken::new(),
    }
}

/// A hook line that appends `word` (and the phase it saw) to `log`.
fn note(log: &Path, word: &str) -> String {
    format!(
        "sh -c 'echo {word}:$KUBESTOW_HOOK:${{KUBESTOW_STATUS:-}}${{KUBESTOW_VOLUME:-}} >> {}'",
        log.display()
    )
}

fn lines(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

/// The mode: notes that it ran, then returns `result`.
async fn mode(log: &Path, result: Result<Report, Error>) -> Result<Report, Error> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(log)
        .unwrap();
    writeln!(f, "mode").unwrap();
    result
}

#[tokio::test]
async fn hooks_run_in_order_around_the_mode() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let pre = format!("{}\n{}", note(&log, "pre1"), note(&log, "pre2"));
    let post = format!("{}\n{}", note(&log, "post1"), note(&log, "post2"));
    let c = config(&[(v::PRE_HOOKS, &pre), (v::POST_HOOKS, &post)], "backup").unwrap();
    let report = around(&options(&c), &ctx(), mode(&log, Ok(Report::default())))
        .await
        .unwrap();
    assert_eq!(
        lines(&log),
        [
            "pre1:pre:",
            "pre2:pre:",
            "mode",
            "post1:post:success",
            "post2:post:success"
        ]
    );
    assert_eq!(report.status(), Status::Success);
    let hooks = report.details["hooks"].as_array().unwrap();
    assert_eq!(hooks.len(), 4);
    assert_eq!(hooks[0]["phase"], "pre");
    assert_eq!(hooks[3]["phase"], "post");
    assert!(hooks.iter().all(|h| h["ok"] == true));
}

#[tokio::test]
async fn a_failed_pre_hook_stops_the_run_but_not_the_post_hooks() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let pre = format!(
        "{}\nsh -c 'echo broken >&2; exit 4'\n{}",
        note(&log, "pre1"),
        note(&log, "pre3")
    );
    let c = config(
        &[(v::PRE_HOOKS, &pre), (v::POST_HOOKS, &note(&log, "post"))],
        "backup",
    )
    .unwrap();
    let e = around(&options(&c), &ctx(), mode(&log, Ok(Report::default())))
        .await
        .unwrap_err();
    assert_eq!(lines(&log), ["pre1:pre:", "post:post:failed"]);
    let msg = e.to_string();
    assert!(
        msg.contains("pre hook 2") && msg.contains("exited with code 4"),
        "{msg}"
    );
    assert_eq!(e.status(), Status::Failed);

    // on-error=continue: the run goes on, the failure is in the details.
    std::fs::remove_file(&log).unwrap();
    let pre = format!("on-error=continue sh -c 'exit 4'\n{}", note(&log, "pre2"));
    let c = config(
        &[(v::PRE_HOOKS, &pre), (v::POST_HOOKS, &note(&log, "post"))],
        "backup",
    )
    .unwrap();
    let r = around(&options(&c), &ctx(), mode(&log, Ok(Report::default())))
        .await
        .unwrap();
    assert_eq!(lines(&log), ["pre2:pre:", "mode", "post:post:success"]);
    assert_eq!(r.status(), Status::Success);
    assert_eq!(r.details["hooks"][0]["ok"], false);
    assert!(
        r.details["hooks"][0]["error"]
            .as_str()
            .unwrap()
            .contains("code 4")
    );
}

#[tokio::test]
async fn post_hooks_run_after_a_failed_mode_and_all_of_them() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let post = format!(
        "{}\nsh -c 'exit 1'\n{}",
        note(&log, "post1"),
        note(&log, "post3")
    );
    let c = config(&[(v::POST_HOOKS, &post)], "backup").unwrap();
    let e = around(
        &options(&c),
        &ctx(),
        mode(&log, Err(Error::Missing("boom"))),
    )
    .await
    .unwrap_err();
    assert_eq!(
        lines(&log),
        ["mode", "post1:post:failed", "post3:post:failed"]
    );
    // The mode's error stays the run's error.
    assert_eq!(e.to_string(), "boom");

    // After a successful mode, a failed post hook (on-error=fail) makes it partial.
    std::fs::remove_file(&log).unwrap();
    let r = around(&options(&c), &ctx(), mode(&log, Ok(Report::default())))
        .await
        .unwrap();
    assert_eq!(r.status(), Status::Partial);
    assert_eq!(r.errors.len(), 1);
    assert!(
        r.errors[0].message.contains("post hook 2"),
        "{:?}",
        r.errors
    );
    assert_eq!(lines(&log).len(), 3);
}

#[tokio::test]
async fn an_unmet_precondition_skips_without_hooks_or_mode() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let cond = format!("{}\nsh -c 'exit 1'", note(&log, "cond"));
    let c = config(
        &[
            (v::PRECONDITION, &cond),
            (v::PRE_HOOKS, &note(&log, "pre")),
            (v::POST_HOOKS, &note(&log, "post")),
        ],
        "backup",
    )
    .unwrap();
    let r = around(&options(&c), &ctx(), mode(&log, Ok(Report::default())))
        .await
        .unwrap();
    assert_eq!(r.status(), Status::Skipped);
    let reason = r.reason.unwrap();
    assert!(
        reason.starts_with("precondition not met: command `sh -c 'exit 1'`: exited with code 1"),
        "{reason}"
    );
    assert_eq!(lines(&log), ["cond:precondition:"]);

    // Met: the run goes on.
    let c = config(&[(v::PRECONDITION, "true")], "backup").unwrap();
    let r = around(&options(&c), &ctx(), async {
        Ok::<_, Error>(Report::default())
    })
    .await
    .unwrap();
    assert_eq!(r.status(), Status::Success);

    // A command that does not exist is a condition not met, not a crash.
    let c = config(&[(v::PRECONDITION, "/no/such/command")], "backup").unwrap();
    let r = around(&options(&c), &ctx(), async {
        Ok::<_, Error>(Report::default())
    })
    .await
    .unwrap();
    assert!(
        r.reason
            .unwrap()
            .contains("cannot start `/no/such/command`")
    );
}

#[tokio::test]
async fn list_and_preflight_ignore_hooks() {
    let c = config(
        &[(v::PRECONDITION, "false"), (v::PRE_HOOKS, "false")],
        "list",
    )
    .unwrap();
    let r = around(&options(&c), &ctx(), async {
        Ok::<_, Error>(Report::default())
    })
    .await
    .unwrap();
    assert_eq!(r.status(), Status::Success);
}

#[tokio::test]
async fn a_timeout_kills_the_hook_and_what_it_started() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    // The shell stays the parent of a background sleep: both must go.
    let pre = format!(
        "timeout=1s sh -c 'sleep 30 & echo $! > {}; wait'",
        pid_file.display()
    );
    let c = config(&[(v::PRE_HOOKS, &pre)], "backup").unwrap();
    let started = std::time::Instant::now();
    let e = around(&options(&c), &ctx(), async {
        Ok::<_, Error>(Report::default())
    })
    .await
    .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(e.to_string().contains("timed out after 1s; killed"), "{e}");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(gone(pid).await, "sleep {pid} survived the timeout");
}

/// Gone, or a zombie waiting for a reaper that is not us.
async fn gone(pid: i32) -> bool {
    for _ in 0..50 {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return true,
            Ok(s)
                if s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z')) =>
            {
                return true;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    false
}

#[tokio::test]
async fn a_signal_stops_pre_hooks_and_post_hooks_still_run() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let pre = format!("sh -c 'sleep 30'\n{}", note(&log, "pre2"));
    let c = config(
        &[(v::PRE_HOOKS, &pre), (v::POST_HOOKS, &note(&log, "post"))],
        "backup",
    )
    .unwrap();
    let ctx = ctx();
    let cancel = ctx.cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        cancel.cancel();
    });
    let started = std::time::Instant::now();
    let e = around(&options(&c), &ctx, mode(&log, Ok(Report::default())))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Cancelled), "{e}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(lines(&log), ["post:post:cancelled"]);

    // Cancelled during the mode: the post hooks run though the token is cancelled.
    std::fs::remove_file(&log).unwrap();
    let c = config(&[(v::POST_HOOKS, &note(&log, "post"))], "backup").unwrap();
    let ctx2 = RunContext {
        run_id: "r".into(),
        cancel: CancellationToken::new(),
    };
    let cancelled = async {
        ctx2.cancel.cancel();
        mode(&log, Err(Error::Cancelled)).await
    };
    let e = around(&options(&c), &ctx2, cancelled).await.unwrap_err();
    assert!(matches!(e, Error::Cancelled));
    assert_eq!(lines(&log), ["mode", "post:post:cancelled"]);
}

#[tokio::test]
async fn output_is_kept_up_to_a_limit() {
    let f = exec::local(
        &argv(&[
            "sh",
            "-c",
            "head -c 100000 /dev/zero | tr '\\0' x; echo err >&2",
        ]),
        &[],
        Duration::from_secs(10),
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    assert!(f.ok());
    assert!(f.stdout.starts_with(&"x".repeat(1000)));
    let note = format!("[{} more bytes not shown]", 100_000 - exec::OUTPUT_LIMIT);
    assert!(
        f.stdout.ends_with(&note),
        "{}",
        &f.stdout[f.stdout.len() - 60..]
    );
    assert!(f.stdout.len() < exec::OUTPUT_LIMIT + 100);
    assert_eq!(f.stderr, "err");
}

fn planned(ns: &str, claim: &str) -> Planned {
    Planned {
        namespace: ns.into(),
        claim: claim.into(),
        volume: format!("{ns}/{claim}"),
        pv: "pv-1".into(),
        storage_class: None,
        source: crate::mover::plan::Source::Claim { node: None },
        tolerations: Value::Null,
        node_affinity: None,
        capacity: None,
        access_modes: json!(["ReadWriteOnce"]),
    }
}

/// A client that is never used: the volume hooks below are local.
fn offline_kube() -> Kube {
    // Both ring and aws-lc-rs are linked; the binary picks ring, so do we.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    Kube::new(
        crate::cluster::Cluster {
            client,
            url: "http://127.0.0.1:9".into(),
        },
        Duration::from_secs(1),
    )
}

#[tokio::test]
async fn volume_hooks_wrap_each_volume_and_undo_a_failed_freeze() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let pre = format!(
        "{}\nscope=volume {}\nscope=volume sh -c 'test \"$KUBESTOW_VOLUME\" != shop/bad'",
        note(&log, "run-pre"),
        note(&log, "freeze")
    );
    let post = format!(
        "scope=volume {}\nscope=volume sh -c 'test \"$KUBESTOW_VOLUME\" != shop/data-1'",
        note(&log, "thaw")
    );
    let c = config(&[(v::PRE_HOOKS, &pre), (v::POST_HOOKS, &post)], "backup").unwrap();
    let ctx = ctx();
    let kube = offline_kube();
    let o = options(&c);
    let hooks = VolumeHooks::new(&o, &ctx, &kube);
    hooks.before(&planned("shop", "data-0")).await.unwrap();
    hooks.after(&planned("shop", "data-0")).await;
    assert_eq!(
        lines(&log),
        ["freeze:pre:shop/data-0", "thaw:post:shop/data-0"]
    );
    assert!(hooks.take_errors().is_empty());

    // A failing freeze fails the volume; the thaw runs all the same.
    std::fs::remove_file(&log).unwrap();
    let e = hooks
        .before(&planned("shop", "bad"))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("pre hook 3") && e.contains("code 1"), "{e}");
    assert_eq!(lines(&log), ["freeze:pre:shop/bad", "thaw:post:shop/bad"]);

    // A failing thaw is an item error of that volume.
    hooks.after(&planned("shop", "data-1")).await;
    let errors = hooks.take_errors();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].item, "volume shop/data-1");
}
