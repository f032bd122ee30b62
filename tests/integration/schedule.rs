//! The schedule guards around a run (`STOW_ONCE`, `STOW_MIN_INTERVAL`,
//! `STOW_LAST_DAY_OF_MONTH`) against a real API server, and runs started by
//! hand from a CronJob, which bypass them.

use std::path::Path;

use serde_json::json;

use crate::api::{cronjob_api_version, request};
use crate::binary;
use crate::env;

/// A CronJob (batch/v1beta1 on 1.20, batch/v1 from 1.21 on) and a Job it
/// owns, as the CronJob controller would create it.
async fn cronjob_with_job(client: &kube::Client, ns: &str, name: &str) -> String {
    cronjob_with_job_annotated(client, ns, name, json!({})).await
}

/// [`cronjob_with_job`] with annotations on the Job (`kubectl create job
/// --from=cronjob/...` sets `cronjob.kubernetes.io/instantiate: manual`).
async fn cronjob_with_job_annotated(
    client: &kube::Client,
    ns: &str,
    name: &str,
    annotations: serde_json::Value,
) -> String {
    let api = cronjob_api_version().await;
    let pod = json!({ "spec": { "restartPolicy": "Never",
        "containers": [{ "name": "kubestow", "image": "kubestow:test" }] } });
    let cj = request(
        client,
        http::Method::POST,
        &format!("/apis/{api}/namespaces/{ns}/cronjobs"),
        Some(&json!({
            "apiVersion": api, "kind": "CronJob",
            "metadata": { "name": name },
            "spec": { "schedule": "0 0 1 1 *", "suspend": false,
                      "jobTemplate": { "spec": { "template": pod } } }
        })),
    )
    .await
    .unwrap();
    let job = format!("{name}-28893120");
    request(
        client,
        http::Method::POST,
        &format!("/apis/batch/v1/namespaces/{ns}/jobs"),
        Some(&json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": { "name": job, "annotations": annotations, "ownerReferences": [{
                "apiVersion": api, "kind": "CronJob", "name": name,
                "uid": cj["metadata"]["uid"], "controller": true }] },
            "spec": { "template": pod }
        })),
    )
    .await
    .unwrap();
    job
}

async fn suspended(client: &kube::Client, ns: &str, name: &str) -> bool {
    let cj = request(
        client,
        http::Method::GET,
        &format!(
            "/apis/{}/namespaces/{ns}/cronjobs/{name}",
            cronjob_api_version().await
        ),
        None,
    )
    .await
    .unwrap();
    cj["spec"]["suspend"] == json!(true)
}

#[tokio::test]
async fn stow_once_suspends_its_cronjob_after_success_only() {
    let (client, ns) = env::namespace("stow-once").await;
    let dir = tempfile::tempdir().unwrap();
    let repo = format!("file://{}/repo", dir.path().display());
    let ok_job = cronjob_with_job(&client, &ns, "once-ok").await;
    let bad_job = cronjob_with_job(&client, &ns, "once-bad").await;
    let cmd = |mode: &str, job: &str| {
        let mut cmd = binary::command();
        cmd.arg(mode)
            .env("STOW_ONCE", "true")
            .env("STOW_POD_NAMESPACE", &ns)
            .env("STOW_JOB_NAME", job)
            .env("STOW_REPOSITORY", &repo)
            .env("STOW_PASSWORD", "once-password")
            .env("STOW_NAMESPACES", &ns)
            .env("STOW_VOLUME_SOURCE", "skip");
        cmd
    };
    // A failing run (no repository, no STOW_INIT) leaves the CronJob alone.
    let run = binary::run(cmd("list", &bad_job)).await;
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    assert!(!suspended(&client, &ns, "once-bad").await);
    // A successful backup suspends it (through batch/v1beta1 on 1.20,
    // batch/v1 on the current release).
    let mut ok = cmd("backup", &ok_job);
    ok.env("STOW_INIT", "true");
    let run = binary::run(ok).await;
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    assert_eq!(
        run.summary["details"]["once"]["suspended_cronjob"],
        format!("{ns}/once-ok"),
        "{}",
        run.stdout
    );
    assert!(suspended(&client, &ns, "once-ok").await);
    assert!(!suspended(&client, &ns, "once-bad").await);
    // Every mode: a successful `list` suspends the other one too.
    let run = binary::run(cmd("list", &bad_job)).await;
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    assert!(suspended(&client, &ns, "once-bad").await);
}

#[tokio::test]
async fn min_interval_skips_a_backup_while_the_last_run_is_young() {
    let (_client, ns) = env::namespace("min-interval").await;
    let dir = tempfile::tempdir().unwrap();
    let repo = format!("file://{}/repo", dir.path().display());
    let cmd = || {
        let mut cmd = binary::command();
        cmd.arg("backup")
            .env("STOW_REPOSITORY", &repo)
            .env("STOW_PASSWORD", "min-interval-password")
            .env("STOW_PLAN", "every3")
            .env("STOW_MIN_INTERVAL", "60h")
            .env("STOW_INIT", "true")
            .env("STOW_NAMESPACES", &ns)
            .env("STOW_VOLUME_SOURCE", "skip");
        cmd
    };
    // No repository yet: the first run is due (and creates it).
    let first = binary::run(cmd()).await;
    assert_eq!(first.code, Some(0), "{}\n{}", first.stdout, first.stderr);
    assert_eq!(first.summary["status"], "success");
    let snapshots = |d: &Path| std::fs::read_dir(d.join("repo/snapshots")).unwrap().count();
    let before = snapshots(dir.path());
    let second = binary::run(cmd()).await;
    assert_eq!(second.code, Some(0), "{}\n{}", second.stdout, second.stderr);
    assert_eq!(second.summary["status"], "skipped", "{}", second.stdout);
    assert!(
        second.summary["reason"]
            .as_str()
            .unwrap()
            .contains("STOW_MIN_INTERVAL"),
        "{}",
        second.stdout
    );
    assert_eq!(
        snapshots(dir.path()),
        before,
        "a skipped run writes nothing"
    );
    // Another plan is not held back by this one's runs.
    let mut other = cmd();
    other.env("STOW_PLAN", "other");
    let third = binary::run(other).await;
    assert_eq!(third.summary["status"], "success", "{}", third.stdout);
    // STOW_LAST_DAY_OF_MONTH: skipped unless today (UTC) is the last day.
    let mut eom = cmd();
    eom.env("STOW_PLAN", "eom")
        .env("STOW_LAST_DAY_OF_MONTH", "true");
    let run = binary::run(eom).await;
    let today = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date();
    let want = if today.day() == today.days_in_month() {
        "success"
    } else {
        "skipped"
    };
    assert_eq!(run.summary["status"], want, "{}", run.stdout);
}

/// A backup of `ns` as Job `job` of plan `plan`, guarded by
/// `STOW_MIN_INTERVAL=60h`.
fn guarded_backup(ns: &str, repo: &str, job: &str, plan: &str) -> std::process::Command {
    let mut cmd = binary::command();
    cmd.arg("backup")
        .env("STOW_POD_NAMESPACE", ns)
        .env("STOW_JOB_NAME", job)
        .env("STOW_REPOSITORY", repo)
        .env("STOW_PASSWORD", "guarded-password")
        .env("STOW_INIT", "true")
        .env("STOW_PLAN", plan)
        .env("STOW_MIN_INTERVAL", "60h")
        .env("STOW_NAMESPACES", ns)
        .env("STOW_VOLUME_SOURCE", "skip");
    cmd
}

/// A Job created by hand from a guarded plan's CronJob runs although the
/// guard would skip a scheduled one, says so in its summary, and
/// `STOW_ONCE` does not suspend the CronJob after it.
#[tokio::test]
async fn a_manual_run_bypasses_the_schedule_guards_and_does_not_suspend() {
    let (client, ns) = env::namespace("manual-run").await;
    let dir = tempfile::tempdir().unwrap();
    let repo = format!("file://{}/repo", dir.path().display());
    let manual = json!({"cronjob.kubernetes.io/instantiate": "manual"});
    let scheduled_job = cronjob_with_job(&client, &ns, "guarded").await;
    let manual_job = cronjob_with_job_annotated(&client, &ns, "by-hand", manual).await;
    let cmd = |job: &str| {
        let mut cmd = guarded_backup(&ns, &repo, job, "guarded");
        cmd.env("STOW_ONCE", "true");
        cmd
    };
    // A first scheduled run is due (no run yet), and suspends its CronJob.
    let first = binary::run(cmd(&scheduled_job)).await;
    assert_eq!(first.summary["status"], "success", "{}", first.stdout);
    assert!(suspended(&client, &ns, "guarded").await);
    // Scheduled again: skipped by STOW_MIN_INTERVAL.
    let again = binary::run(cmd(&scheduled_job)).await;
    assert_eq!(again.summary["status"], "skipped", "{}", again.stdout);
    // By hand: it runs, says why, and leaves its CronJob running.
    let by_hand = binary::run(cmd(&manual_job)).await;
    assert_eq!(
        by_hand.code,
        Some(0),
        "{}\n{}",
        by_hand.stdout,
        by_hand.stderr
    );
    assert_eq!(by_hand.summary["status"], "success", "{}", by_hand.stdout);
    assert!(
        by_hand.summary["details"]["manual"]
            .as_str()
            .is_some_and(|m| m.contains("started by hand")),
        "{}",
        by_hand.stdout
    );
    assert!(
        by_hand.summary["details"].get("once").is_none(),
        "{}",
        by_hand.stdout
    );
    assert!(!suspended(&client, &ns, "by-hand").await);
}

/// The reasons of the events kubestow recorded on an object, sorted.
async fn event_reasons(client: &kube::Client, ns: &str, kind: &str, name: &str) -> Vec<String> {
    let list = request(
        client,
        http::Method::GET,
        &format!("/api/v1/namespaces/{ns}/events"),
        None,
    )
    .await
    .unwrap();
    let mut reasons: Vec<String> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["involvedObject"]["kind"] == kind
                && e["involvedObject"]["name"] == name
                && e["source"]["component"] == "kubestow"
        })
        .map(|e| e["reason"].as_str().unwrap_or("").to_owned())
        .collect();
    reasons.sort();
    reasons
}

/// A run records Events on its Job: started and succeeded; a skipped run
/// records why on the Job and on its CronJob, where `kubectl describe
/// cronjob` shows it.
#[tokio::test]
async fn runs_record_events_on_their_job_and_skips_on_the_cronjob() {
    let (client, ns) = env::namespace("run-events").await;
    let dir = tempfile::tempdir().unwrap();
    let repo = format!("file://{}/repo", dir.path().display());
    let first_job = cronjob_with_job(&client, &ns, "evented").await;
    let cmd = |job: &str| guarded_backup(&ns, &repo, job, "evented");
    let run = binary::run(cmd(&first_job)).await;
    assert_eq!(run.summary["status"], "success", "{}", run.stdout);
    assert_eq!(
        event_reasons(&client, &ns, "Job", &first_job).await,
        ["RunStarted", "RunSucceeded"]
    );
    // A second Job of the same CronJob, skipped by STOW_MIN_INTERVAL.
    let second_job = cronjob_with_job(&client, &ns, "evented-2").await;
    let run = binary::run(cmd(&second_job)).await;
    assert_eq!(run.summary["status"], "skipped", "{}", run.stdout);
    assert_eq!(
        event_reasons(&client, &ns, "Job", &second_job).await,
        ["RunSkipped", "RunStarted"]
    );
    assert_eq!(
        event_reasons(&client, &ns, "CronJob", "evented-2").await,
        ["RunSkipped"]
    );
}
