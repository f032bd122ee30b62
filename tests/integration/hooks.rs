//! `STOW_PRECONDITION`, `STOW_PRE_HOOKS` and `STOW_POST_HOOKS` through the
//! real binary against the real API server. Local commands run end to end;
//! pod exec cannot (the cluster has no kubelet to exec into), so the pod
//! selection, the error it gives and the on-error policy are what is
//! checked there.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::api::request;
use crate::binary::{self, Run};
use crate::env;

const PW: &str = "hooks-test-password";

fn command(repo: &str, vars: &[(&str, &str)]) -> Command {
    let mut cmd = binary::command();
    cmd.arg("backup")
        .env("STOW_REPOSITORY", repo)
        .env("STOW_PASSWORD", PW)
        .env("STOW_VOLUME_SOURCE", "skip");
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd
}

async fn backup(repo: &str, vars: &[(&str, &str)]) -> Run {
    binary::run(command(repo, vars)).await
}

#[track_caller]
fn assert_code(run: &Run, code: i32) {
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(
        run.code,
        Some(code),
        "exit code\n--- stdout\n{}\n--- stderr (tail)\n{}",
        run.stdout,
        lines[lines.len().saturating_sub(40)..].join("\n")
    );
}

/// A file repository that does not exist yet, in a fresh directory.
fn file_repo() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}/repo", dir.path().display());
    (dir, url)
}

/// A hook that appends `word`, the phase and (post hooks) the run's status
/// to `log`, and how many snapshots the repository holds at that moment.
fn note(log: &Path, repo_dir: &Path, word: &str) -> String {
    format!(
        "sh -c 'echo {word} $KUBESTOW_HOOK ${{KUBESTOW_STATUS:-none}} $(find {} -type f 2>/dev/null | wc -l) >> {}'",
        repo_dir.join("snapshots").display(),
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

async fn create(client: &kube::Client, path: &str, body: Value) -> Value {
    request(client, http::Method::POST, path, Some(&body))
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

/// A pod that the API server reports as Running (there is no kubelet; the
/// status is written through the status subresource) and one that stays
/// Pending. Neither is bound to a node.
async fn db_pods(client: &kube::Client, ns: &str) {
    for (name, running) in [("db-0", true), ("db-1", false)] {
        let pod = create(
            client,
            &format!("/api/v1/namespaces/{ns}/pods"),
            json!({"metadata": {"name": name, "labels": {"app": "db"}},
                   "spec": {"containers": [{"name": "db", "image": "postgres:16"}]}}),
        )
        .await;
        if running {
            let mut pod = pod;
            pod["status"] =
                json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]});
            request(
                client,
                http::Method::PUT,
                &format!("/api/v1/namespaces/{ns}/pods/{name}/status"),
                Some(&pod),
            )
            .await
            .unwrap();
        }
    }
}

// ------------------------------------------------------------------ tests

#[tokio::test(flavor = "multi_thread")]
async fn a_precondition_not_met_skips_the_run_and_writes_nothing() {
    let (client, ns) = env::namespace("precond").await;
    let (s3, bucket) = env::bucket("precond").await;
    let (dir, file_url) = file_repo();
    let log = dir.path().join("log");
    let pre = note(&log, &dir.path().join("repo"), "pre");
    for (cond, why) in [
        (
            "sh -c 'exit 1'".to_string(),
            "exited with code 1".to_string(),
        ),
        (format!("resource:configmap/{ns}/go"), "not found".into()),
        (
            format!("resource:statefulsets.apps/{ns}/db"),
            "0 of 1 replicas ready".into(),
        ),
        (
            format!("exec:{ns}/app=nothing/db:true"),
            format!("no Running pod in namespace {ns} matches `app=nothing`"),
        ),
    ] {
        if cond.contains("statefulsets") {
            create(
                &client,
                &format!("/apis/apps/v1/namespaces/{ns}/statefulsets"),
                json!({"metadata": {"name": "db"}, "spec": {
                    "replicas": 1, "serviceName": "db",
                    "selector": {"matchLabels": {"app": "sts"}},
                    "template": {"metadata": {"labels": {"app": "sts"}},
                                 "spec": {"containers": [{"name": "db", "image": "postgres:16"}]}}}}),
            )
            .await;
        }
        for repo in [file_url.clone(), format!("s3://{bucket}/repo")] {
            let run = backup(
                &repo,
                &[
                    ("STOW_NAMESPACES", ns.as_str()),
                    ("STOW_INIT", "true"),
                    ("STOW_PRECONDITION", cond.as_str()),
                    ("STOW_PRE_HOOKS", pre.as_str()),
                ],
            )
            .await;
            assert_code(&run, 0);
            assert_eq!(run.summary["status"], "skipped", "{}", run.stdout);
            let reason = run.summary["reason"].as_str().unwrap();
            assert!(reason.starts_with("precondition not met: "), "{reason}");
            assert!(reason.contains(&why), "{cond}: {reason}");
        }
        // Not even initialised, and no hook ran.
        assert!(!dir.path().join("repo").exists());
        let listed = s3.list_objects_v2().bucket(&bucket).send().await.unwrap();
        assert_eq!(listed.key_count(), Some(0), "{:?}", listed.contents());
        assert!(lines(&log).is_empty());
    }

    // Met: the same run backs up.
    create(
        &client,
        &format!("/api/v1/namespaces/{ns}/configmaps"),
        json!({"metadata": {"name": "go"}}),
    )
    .await;
    let cond = format!("resource:ConfigMap/{ns}/go\ntrue");
    let run = backup(
        &file_url,
        &[
            ("STOW_NAMESPACES", ns.as_str()),
            ("STOW_INIT", "true"),
            ("STOW_PRECONDITION", cond.as_str()),
        ],
    )
    .await;
    assert_code(&run, 0);
    assert_eq!(run.summary["status"], "success");
}

#[tokio::test(flavor = "multi_thread")]
async fn pre_and_post_hooks_run_in_order_around_a_backup() {
    let (_, ns) = env::namespace("hookorder").await;
    let (dir, repo) = file_repo();
    let log = dir.path().join("log");
    let repo_dir = dir.path().join("repo");
    let pre = format!(
        "{}\n{}",
        note(&log, &repo_dir, "pre1"),
        note(&log, &repo_dir, "pre2")
    );
    let post = format!(
        "{}\n{}",
        note(&log, &repo_dir, "post1"),
        note(&log, &repo_dir, "post2")
    );
    let run = backup(
        &repo,
        &[
            ("STOW_NAMESPACES", ns.as_str()),
            ("STOW_INIT", "true"),
            ("STOW_PRE_HOOKS", pre.as_str()),
            ("STOW_POST_HOOKS", post.as_str()),
        ],
    )
    .await;
    assert_code(&run, 0);
    // Pre hooks saw no snapshot yet, post hooks the one the run wrote.
    assert_eq!(
        lines(&log),
        [
            "pre1 pre none 0",
            "pre2 pre none 0",
            "post1 post success 1",
            "post2 post success 1"
        ]
    );
    let hooks = run.summary["details"]["hooks"].as_array().unwrap();
    assert_eq!(hooks.len(), 4, "{hooks:?}");
    assert!(hooks.iter().all(|h| h["ok"] == true));
    assert!(
        run.stderr.contains("hook command finished"),
        "{}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn post_hooks_run_after_a_failed_backup() {
    let (_, ns) = env::namespace("hookfail").await;
    let (dir, repo) = file_repo();
    let log = dir.path().join("log");
    let repo_dir = dir.path().join("repo");
    // No STOW_INIT: the repository does not exist, so the backup fails
    // after the pre hooks ran.
    let run = backup(
        &repo,
        &[
            ("STOW_NAMESPACES", ns.as_str()),
            ("STOW_PRE_HOOKS", &note(&log, &repo_dir, "pre")),
            ("STOW_POST_HOOKS", &note(&log, &repo_dir, "post")),
        ],
    )
    .await;
    assert_code(&run, 1);
    assert_eq!(run.summary["status"], "failed");
    assert_eq!(lines(&log), ["pre pre none 0", "post post failed 0"]);

    // A failing pre hook (on-error=fail) stops the run before it lists
    // anything; the post hooks still run.
    std::fs::remove_file(&log).unwrap();
    let pre = format!(
        "{}\nsh -c 'echo frozen-fail >&2; exit 7'",
        note(&log, &repo_dir, "pre")
    );
    let run = backup(
        &repo,
        &[
            ("STOW_NAMESPACES", ns.as_str()),
            ("STOW_INIT", "true"),
            ("STOW_PRE_HOOKS", pre.as_str()),
            ("STOW_POST_HOOKS", &note(&log, &repo_dir, "post")),
        ],
    )
    .await;
    assert_code(&run, 1);
    let reason = run.summary["reason"].as_str().unwrap();
    assert!(
        reason.contains("pre hook 2") && reason.contains("exited with code 7"),
        "{reason}"
    );
    assert!(run.stderr.contains("frozen-fail"), "hook output is logged");
    assert_eq!(lines(&log), ["pre pre none 0", "post post failed 0"]);
    assert!(
        !repo_dir.exists(),
        "nothing written after a failed pre hook"
    );

    // A failing post hook (on-error=fail) after a good backup: partial.
    std::fs::remove_file(&log).unwrap();
    let post = format!("sh -c 'exit 2'\n{}", note(&log, &repo_dir, "post"));
    let run = backup(
        &repo,
        &[
            ("STOW_NAMESPACES", ns.as_str()),
            ("STOW_INIT", "true"),
            ("STOW_POST_HOOKS", post.as_str()),
        ],
    )
    .await;
    assert_code(&run, 3);
    assert_eq!(run.summary["status"], "partial");
    assert_eq!(run.summary["errors"][0]["item"], "post hooks");
    assert_eq!(lines(&log), ["post post success 1"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn post_hooks_run_after_sigterm() {
    let (_, ns) = env::namespace("hooksig").await;
    let (dir, repo) = file_repo();
    let log = dir.path().join("log");
    let repo_dir = dir.path().join("repo");
    let started_file = dir.path().join("started");
    let pid_file = dir.path().join("pid");
    let pre = format!(
        "sh -c 'echo $$ > {}; touch {}; exec sleep 60'",
        pid_file.display(),
        started_file.display()
    );
    let child = command(
        &repo,
        &[
            ("STOW_NAMESPACES", ns.as_str()),
            ("STOW_INIT", "true"),
            ("STOW_PRE_HOOKS", pre.as_str()),
            ("STOW_POST_HOOKS", &note(&log, &repo_dir, "post")),
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !started_file.exists() {
        assert!(Instant::now() < deadline, "the pre hook never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let signalled = Instant::now();
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let run = Run::from_output(out);
    assert!(
        signalled.elapsed() < Duration::from_secs(15),
        "{:?}",
        signalled.elapsed()
    );
    assert_code(&run, 1);
    assert_eq!(run.summary["status"], "cancelled");
    assert_eq!(lines(&log), ["post post cancelled 0"]);
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(gone(pid).await, "the pre hook's sleep {pid} survived");
    assert!(!repo_dir.exists());
}

/// Gone, or a zombie waiting for a reaper that is not us.
async fn gone(pid: u32) -> bool {
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

#[tokio::test(flavor = "multi_thread")]
async fn a_hook_timeout_is_enforced() {
    let (_, ns) = env::namespace("hooktimeout").await;
    let (dir, repo) = file_repo();
    let log = dir.path().join("log");
    let repo_dir = dir.path().join("repo");
    let pid_file = dir.path().join("pid");
    // The background sleep is a grandchild: the whole group must go.
    let pre = format!(
        "timeout=1s sh -c 'sleep 30 & echo $! > {}; wait'",
        pid_file.display()
    );
    let started = Instant::now();
    let run = backup(
        &repo,
        &[
            ("STOW_NAMESPACES", ns.as_str()),
            ("STOW_INIT", "true"),
            ("STOW_PRE_HOOKS", pre.as_str()),
            ("STOW_POST_HOOKS", &note(&log, &repo_dir, "post")),
        ],
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert_code(&run, 1);
    let reason = run.summary["reason"].as_str().unwrap();
    assert!(reason.contains("timed out after 1s; killed"), "{reason}");
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(gone(pid).await, "sleep {pid} survived the timeout");
    assert_eq!(lines(&log), ["post post failed 0"]);

    // on-error=continue: the timed-out hook is noted and the backup runs.
    let pre = format!(
        "timeout=1s on-error=continue sleep 30\n{}",
        note(&log, &repo_dir, "pre")
    );
    let run = backup(
        &repo,
        &[
            ("STOW_NAMESPACES", ns.as_str()),
            ("STOW_INIT", "true"),
            ("STOW_PRE_HOOKS", pre.as_str()),
        ],
    )
    .await;
    assert_code(&run, 0);
    let hooks = run.summary["details"]["hooks"].as_array().unwrap();
    assert_eq!(hooks[0]["ok"], false);
    assert!(hooks[0]["error"].as_str().unwrap().contains("timed out"));
    assert_eq!(hooks[1]["ok"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_hooks_select_running_pods_and_follow_the_error_policy() {
    let (client, ns) = env::namespace("hookexec").await;
    db_pods(&client, &ns).await;
    let (dir, repo) = file_repo();
    let log = dir.path().join("log");
    let repo_dir = dir.path().join("repo");
    let exec = format!("exec:{ns}/app=db/db:sh -c 'echo flushed'");

    // fail (the default): the exec error names the Running pod only, the
    // backup does not run, post hooks do.
    let run = backup(
        &repo,
        &[
            ("STOW_NAMESPACES", ns.as_str()),
            ("STOW_INIT", "true"),
            ("STOW_PRE_HOOKS", exec.as_str()),
            ("STOW_POST_HOOKS", &note(&log, &repo_dir, "post")),
        ],
    )
    .await;
    assert_code(&run, 1);
    let reason = run.summary["reason"].as_str().unwrap();
    assert!(reason.contains(&format!("pod {ns}/db-0: ")), "{reason}");
    assert!(
        !reason.contains("db-1"),
        "a Pending pod is not selected: {reason}"
    );
    assert_eq!(lines(&log), ["post post failed 0"]);
    assert!(!repo_dir.exists());

    // continue: the backup goes on; the failure is in the summary.
    let lenient = format!("on-error=continue {exec}");
    let run = backup(
        &repo,
        &[
            ("STOW_NAMESPACES", ns.as_str()),
            ("STOW_INIT", "true"),
            ("STOW_PRE_HOOKS", lenient.as_str()),
        ],
    )
    .await;
    assert_code(&run, 0);
    assert_eq!(run.summary["status"], "success");
    let hook = &run.summary["details"]["hooks"][0];
    assert_eq!(hook["ok"], false);
    assert!(
        hook["error"]
            .as_str()
            .unwrap()
            .contains(&format!("pod {ns}/db-0")),
        "{hook}"
    );

    // No pod matches: a clear error, under the same policy.
    let none = format!("exec:{ns}/app=cache/db:true");
    let run = backup(
        &repo,
        &[
            ("STOW_NAMESPACES", ns.as_str()),
            ("STOW_POST_HOOKS", none.as_str()),
        ],
    )
    .await;
    assert_code(&run, 3);
    let msg = run.summary["errors"][0]["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!(
            "no Running pod in namespace {ns} matches `app=cache` with a container db"
        )),
        "{msg}"
    );

    // A precondition exec in the same pod: not met, so skipped.
    let run = backup(
        &repo,
        &[
            ("STOW_NAMESPACES", ns.as_str()),
            (
                "STOW_PRECONDITION",
                &format!("exec:{ns}/app=db/db:pg_isready"),
            ),
        ],
    )
    .await;
    assert_code(&run, 0);
    assert_eq!(run.summary["status"], "skipped");
    let reason = run.summary["reason"].as_str().unwrap();
    assert!(reason.contains(&format!("pod {ns}/db-0: ")), "{reason}");
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_hooks_are_configuration_errors() {
    let (dir, repo) = file_repo();
    for (var, value) in [
        ("STOW_PRECONDITION", "resource:deployment"),
        ("STOW_PRE_HOOKS", "exec:shop/app=db:true"),
        ("STOW_POST_HOOKS", "on-error=maybe true"),
    ] {
        let run = backup(&repo, &[(var, value), ("STOW_INIT", "true")]).await;
        assert_code(&run, 2);
        assert_eq!(run.summary["errors"][0]["item"], var, "{}", run.stdout);
        assert!(!dir.path().join("repo").exists());
    }
}

/// A local hook's environment holds neither password (nor where its file
/// is) nor the storage credentials, though the run itself has them all.
#[tokio::test(flavor = "multi_thread")]
async fn hooks_never_see_passwords_or_storage_credentials() {
    let (_, ns) = env::namespace("hookenv").await;
    let (dir, repo) = file_repo();
    let seen = dir.path().join("env");
    let pw_file = dir.path().join("password");
    std::fs::write(&pw_file, "pw-from-a-file-123").unwrap();
    let hook = format!("sh -c 'env > {}'", seen.display());
    let mut cmd = binary::command();
    cmd.arg("backup")
        .env("STOW_REPOSITORY", &repo)
        .env("STOW_PASSWORD_FILE", &pw_file)
        .env("STOW_VOLUME_SOURCE", "skip")
        .env("STOW_NAMESPACES", &ns)
        .env("STOW_INIT", "true")
        .env("STOW_PRE_HOOKS", &hook)
        .env("AWS_ACCESS_KEY_ID", "AKIDHOOKTEST")
        .env("AWS_SECRET_ACCESS_KEY", "hook-secret-key-456")
        .env("AWS_SESSION_TOKEN", "hook-session-789")
        .env("AWS_ENDPOINT_URL", "http://user:endpoint-pass@127.0.0.1:9");
    let run = binary::run(cmd).await;
    assert_code(&run, 0);
    let env = std::fs::read_to_string(&seen).unwrap();
    assert!(
        env.contains("KUBESTOW_HOOK=pre"),
        "the hook did not run: {env}"
    );
    for leaked in [
        "STOW_PASSWORD_FILE",
        "pw-from-a-file-123",
        "AWS_ACCESS_KEY_ID",
        "hook-secret-key-456",
        "hook-session-789",
        "endpoint-pass",
    ] {
        assert!(!env.contains(leaked), "a hook saw {leaked}");
    }
}
