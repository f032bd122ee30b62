//! End to end on the real node at the current Kubernetes release (see
//! `env::node`): the chart installed by Helm, its CronJobs and Jobs running
//! the kubestow image, volume data read through real CSI snapshots by mover
//! Jobs, and faults injected into the real parts.
//!
//! Tenant namespaces are at Pod Security `restricted`: movers run in
//! kubestow's own namespace (README, "Movers stay home"), which is at
//! `baseline` for the snapshot source.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::env;
use crate::env::node::{
    self, JOB_TIMEOUT, apply, claim_dir, create_job_from_cronjob, create_restore_job,
    create_scheduled_like_job, digest, event_reasons, fill, helm, helm_manifest, job_summary,
    kubectl, kubectl_json, namespace, noise, ok, random_password, termination_summary, values,
    wait_job, wait_until,
};

/// A StatefulSet `web` of `replicas` pause pods (restricted-compliant), each
/// with a claim `data-web-<i>` from the default (CSI) storage class, and a
/// ConfigMap beside it.
pub(crate) fn statefulset(ns: &str, replicas: u32) {
    statefulset_of(ns, replicas, "csi-hostpath")
}

/// [`statefulset`] with claims of the given storage class.
pub(crate) fn statefulset_of(ns: &str, replicas: u32, class: &str) {
    apply(&format!(
        r#"apiVersion: v1
kind: ConfigMap
metadata: {{name: web-config, namespace: {ns}}}
data: {{greeting: "hello from {ns}", level: "3"}}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: web, namespace: {ns}}}
spec:
  replicas: {replicas}
  serviceName: web
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      automountServiceAccountToken: false
      securityContext: {{runAsNonRoot: true, runAsUser: 65535, seccompProfile: {{type: RuntimeDefault}}}}
      containers:
        - name: pause
          image: localhost/kubestow/pause:1
          imagePullPolicy: Never
          securityContext: {{allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {{drop: [ALL]}}}}
          volumeMounts: [{{name: data, mountPath: /data}}]
  volumeClaimTemplates:
    - metadata: {{name: data}}
      spec:
        accessModes: [ReadWriteOnce]
        storageClassName: {class}
        resources: {{requests: {{storage: 1Gi}}}}
"#
    ));
    wait_until(
        "the StatefulSet to be ready",
        Duration::from_secs(180),
        || {
            let sts = kubectl_json(&["-n", ns, "get", "statefulset", "web"]);
            (sts["status"]["readyReplicas"].as_u64() == Some(replicas as u64)).then_some(())
        },
    );
}

/// What containerd ran a Job's pod as: (uid, read-only root fs).
fn container_user(ns: &str, job: &str) -> (u64, bool) {
    let pods = kubectl_json(&["-n", ns, "get", "pods", "-l", &format!("job-name={job}")]);
    let id = pods["items"][0]["status"]["containerStatuses"][0]["containerID"]
        .as_str()
        .unwrap_or_else(|| panic!("no container of {ns}/{job}: {pods}"))
        .trim_start_matches("containerd://")
        .to_owned();
    let mut ctr = Command::new("ctr");
    ctr.arg("-a").arg(node::get().containerd_socket()).args([
        "-n",
        "k8s.io",
        "containers",
        "info",
        &id,
    ]);
    let info: Value = serde_json::from_str(&ok(ctr)).unwrap();
    (
        info["Spec"]["process"]["user"]["uid"].as_u64().unwrap_or(0),
        info["Spec"]["root"]["readonly"].as_bool().unwrap_or(false),
    )
}

fn csi_log_count(what: &str) -> usize {
    let log =
        std::fs::read_to_string("/tmp/kubestow-node-it/log/csi-hostpath.log").unwrap_or_default();
    log.lines().filter(|l| l.contains(what)).count()
}

pub(crate) fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_owned())
        .collect()
}

/// Nothing kubestow makes for a run is left in the tenant namespace: no
/// VolumeSnapshots or their contents, no claims but the tenant's, no Jobs,
/// Secrets, ServiceAccounts or pods of kubestow's.
pub(crate) fn assert_nothing_temporary(app: &str, claims: &[String]) {
    let snaps = kubectl_json(&["-n", app, "get", "volumesnapshots"]);
    assert!(names(&snaps).is_empty(), "VolumeSnapshots left: {snaps}");
    let contents = kubectl_json(&["get", "volumesnapshotcontents"]);
    let ours: Vec<_> = contents["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["spec"]["volumeSnapshotRef"]["namespace"] == app)
        .collect();
    assert!(ours.is_empty(), "VolumeSnapshotContents left: {ours:?}");
    let mut pvcs = names(&kubectl_json(&["-n", app, "get", "pvc"]));
    pvcs.sort();
    assert_eq!(&pvcs, claims, "claims in {app}");
    for kind in ["jobs", "secrets", "serviceaccounts", "pods"] {
        let left = kubectl_json(&[
            "-n",
            app,
            "get",
            kind,
            "-l",
            "app.kubernetes.io/managed-by=kubestow",
        ]);
        assert!(
            names(&left).is_empty(),
            "{kind} left in {app}: {:?}",
            names(&left)
        );
    }
}

/// Nothing temporary of kubestow's is left at home (`home`) or among
/// cluster-scoped objects for the volumes of `app`: no mover Jobs, clones,
/// staging claims, home snapshots and their contents, shadow volumes, or
/// volumes still marked for a hand-over.
pub(crate) fn assert_nothing_at_home(home: &str, app: &str) {
    for kind in [
        "jobs",
        "persistentvolumeclaims",
        "volumesnapshots",
        "secrets",
        "serviceaccounts",
    ] {
        let left = kubectl_json(&["-n", home, "get", kind, "-l", "kubestow.io/run"]);
        assert!(
            names(&left).is_empty(),
            "{kind} left at {home}: {:?}",
            names(&left)
        );
    }
    let staging = kubectl_json(&[
        "-n",
        home,
        "get",
        "pvc",
        "-l",
        "app.kubernetes.io/managed-by=kubestow",
    ]);
    assert!(
        names(&staging).is_empty(),
        "staging claims left: {:?}",
        names(&staging)
    );
    let contents = kubectl_json(&["get", "volumesnapshotcontents", "-l", "kubestow.io/run"]);
    let ours: Vec<_> = contents["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["spec"]["volumeSnapshotRef"]["namespace"] == home)
        .collect();
    assert!(
        ours.is_empty(),
        "home VolumeSnapshotContents left: {ours:?}"
    );
    let pvs = kubectl_json(&["get", "pv"]);
    for pv in pvs["items"].as_array().unwrap() {
        let shadow = pv["metadata"]["annotations"]["kubestow.io/volume"]
            .as_str()
            .is_some_and(|v| v.starts_with(&format!("{app}/")));
        let handover = pv["metadata"]["annotations"]["kubestow.io/handover-to"]
            .as_str()
            .is_some_and(|v| v.starts_with(&format!("{app}/")));
        let released =
            pv["status"]["phase"] == "Released" && pv["spec"]["claimRef"]["namespace"] == home;
        assert!(
            !shadow && !handover && !released,
            "volume left: {}",
            pv["metadata"]["name"]
        );
    }
}

/// The issue's whole flow: a plan's CronJob fires on its own schedule and
/// backs up a StatefulSet with 3 claims through CSI snapshots; a Job created
/// from the CronJob by hand runs the same plan; the namespace is deleted and
/// a restore Job made from the chart's restore template brings it back with
/// every byte and object.
#[test]
fn chart_cronjob_backs_up_a_statefulset_through_csi_snapshots_and_a_restore_job_brings_it_back() {
    let _shared = node::shared();
    let n = node::get();
    let sys = env::unique_name("node-ks");
    let app = env::unique_name("node-app");
    namespace(&sys, "baseline");
    namespace(&app, "restricted");
    statefulset(&app, 3);
    // Enough ConfigMaps that their errors overflow a termination message.
    apply(
        &(0..150)
            .map(|i| {
                format!(
                    "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: bulk-config-{i:03}, namespace: {app}}}\ndata: {{n: \"{i}\"}}\n"
                )
            })
            .collect::<Vec<_>>()
            .join("---\n"),
    );
    let tenant = node::TenantWatch::start(&app);
    let claims: Vec<String> = (0..3).map(|i| format!("data-web-{i}")).collect();
    let mut before = BTreeMap::new();
    for (i, c) in claims.iter().enumerate() {
        fill(&claim_dir(&app, c), 100 + i as u64, 3_000_000 + i * 1000);
        before.insert(c.clone(), digest(&claim_dir(&app, c)));
    }
    let config_before =
        kubectl_json(&["-n", &app, "get", "configmap", "web-config"])["data"].clone();
    let snapshots_before = csi_log_count("created snapshot");

    let password = random_password();
    let plans = json!([{
        "name": "e2e",
        "schedule": {"type": "cron", "cron": "* * * * *"},
        "namespaces": app,
        "init": true,
        "volumeSource": "snapshot",
    }, {
        // STOW_MIN_INTERVAL: at most one scheduled run in two days.
        "name": "guarded",
        "schedule": {"type": "daily", "every": 2, "at": "03:00"},
        "suspend": true,
        "namespaces": app,
        "volumeSource": "skip",
    }, {
        // STOW_ONCE: the CronJob suspends itself after a scheduled success.
        "name": "once",
        "schedule": {"type": "once", "at": "03:00", "date": "2099-12-24"},
        "namespaces": app,
        "volumeSource": "skip",
    }]);
    // A failed run fails its Job at once (the failing restore below).
    let with_plans = |plans: Value| {
        let mut v = values(&sys, &password, plans);
        v["job"] = json!({"backoffLimit": 0});
        v
    };
    helm("install", &sys, "ks", &with_plans(plans.clone()));
    let cronjobs = names(&kubectl_json(&[
        "-n",
        &sys,
        "get",
        "cronjobs",
        "-l",
        "app.kubernetes.io/component=backup",
    ]));
    assert_eq!(
        cronjobs,
        ["ks-kubestow-e2e", "ks-kubestow-guarded", "ks-kubestow-once"],
        "a CronJob per plan"
    );
    let cronjob = "ks-kubestow-e2e";

    // The schedule fires on its own (within the next minute boundary).
    let scheduled = wait_until(
        "the CronJob's first scheduled Job",
        Duration::from_secs(90),
        || {
            let jobs = kubectl_json(&["-n", &sys, "get", "jobs"]);
            jobs["items"].as_array().unwrap().iter().find_map(|j| {
                (j["metadata"]["ownerReferences"][0]["kind"] == "CronJob")
                    .then(|| j["metadata"]["name"].as_str().unwrap().to_owned())
            })
        },
    );
    // No second scheduled run: it would race the namespace deletion below.
    // Suspended through the chart, as a GitOps user would (a kubectl patch
    // would conflict with Helm's server-side apply on the next upgrade).
    let mut plans = plans;
    plans[0]["suspend"] = json!(true);
    helm("upgrade", &sys, "ks", &with_plans(plans.clone()));
    wait_job(&sys, &scheduled);
    let summary = job_summary(&sys, &scheduled);
    assert_eq!(summary["status"], "success", "{summary}");
    assert_eq!(summary["counts"]["volumes"], 3, "{summary}");
    assert!(
        csi_log_count("created snapshot") >= snapshots_before + 3,
        "the CSI driver took no snapshots for the run"
    );
    let (uid, read_only) = container_user(&sys, &scheduled);
    assert_eq!(
        (uid, read_only),
        (65532, true),
        "the image runs as 65532 with a read-only root"
    );
    assert_nothing_temporary(&app, &claims);

    // A point in time between the two runs; the ConfigMap changes after it.
    std::thread::sleep(Duration::from_secs(2));
    let between = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    std::thread::sleep(Duration::from_secs(2));
    kubectl(&[
        "-n",
        &app,
        "patch",
        "configmap",
        "web-config",
        "--type=merge",
        "-p",
        r#"{"data":{"greeting":"changed after the point in time"}}"#,
    ]);

    // The same plan by hand.
    create_job_from_cronjob(&sys, cronjob, "e2e-manual");
    wait_job(&sys, "e2e-manual");
    let manual = job_summary(&sys, "e2e-manual");
    assert_eq!(manual["status"], "success", "{manual}");
    assert_eq!(manual["counts"]["volumes"], 3, "{manual}");
    assert_nothing_temporary(&app, &claims);
    assert_eq!(
        event_reasons(&sys, "Job", "e2e-manual"),
        ["RunStarted", "RunSucceeded"]
    );
    guards_skip_scheduled_runs_but_not_manual_ones(&sys);

    // Lose the namespace, volumes included (reclaim policy Delete).
    kubectl(&["delete", "namespace", &app, "--wait=true", "--timeout=180s"]);
    wait_until("the claims' PVs to go", Duration::from_secs(120), || {
        let pvs = kubectl_json(&["get", "pv"]);
        (!pvs["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["spec"]["claimRef"]["namespace"] == app))
        .then_some(())
    });

    // README's CI recipe, as a pipeline runs it: a restore Job from the
    // chart's template for the point in time between the runs, into
    // another namespace; it waits, then reads the termination message.
    let restored_ns = format!("{app}-r");
    let map = format!("{app}={restored_ns}");
    let (code, stdout, stderr) =
        ci_restore(&sys, "ks-kubestow-restore", "e2e-restore", &between, &map);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let restored = last_json(&stdout);
    assert_eq!(restored["status"], "success", "{restored}");
    assert_eq!(restored["mode"], "restore", "{restored}");
    assert_eq!(restored, termination_summary(&sys, "e2e-restore"));
    assert_eq!(
        restored["details"]["snapshot_run"], *scheduled,
        "the run before the point in time: {restored}"
    );

    statefulset_ready(&restored_ns, 3);
    for c in &claims {
        assert_eq!(
            before[c],
            digest(&claim_dir(&restored_ns, c)),
            "data of {restored_ns}/{c}"
        );
    }
    assert_eq!(
        kubectl_json(&["-n", &restored_ns, "get", "configmap", "web-config"])["data"],
        config_before,
        "the ConfigMap as it was at the point in time"
    );
    assert_nothing_temporary(&restored_ns, &claims);
    assert_nothing_at_home(&sys, &restored_ns);

    // A restore that cannot succeed: no run before the point in time. The
    // recipe exits 1 and the termination message says why.
    let (code, stdout, stderr) = ci_restore(
        &sys,
        "ks-kubestow-restore",
        "e2e-restore-early",
        "2000-01-01T00:00:00Z",
        &format!("{app}={app}-early"),
    );
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(
        stderr.contains("restore e2e-restore-early did not complete: ")
            && stderr.contains("Failed"),
        "{stderr}"
    );
    let failed = last_json(&stdout);
    assert_eq!(failed["status"], "failed", "{failed}");
    let reason = failed["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("2000-01-01"),
        "the reason names the point in time: {failed}"
    );

    a_long_summary_leaves_a_valid_termination_message(&sys, &app);
    upgrades_start_no_restore_and_wait_for_no_backup(&sys, &app, &with_plans(plans));
    let seen = tenant.finish();
    assert!(
        seen.is_empty(),
        "kubestow's objects in the tenant namespace: {seen:?}"
    );
    assert_eq!(
        n.script("masquerade-count").trim(),
        "0",
        "kube-proxy masqueraded packets"
    );
}

/// README's CI recipe (helm::readme_ci_restore_block) run on the node with
/// this namespace, template, Job name, point in time and namespace map in
/// place of the README's, polling every 2 s: (exit code, stdout, stderr).
/// A current kubectl cannot read 1.20's batch/v1beta1 CronJobs, so there
/// the recipe's first step is made by `create_restore_job`.
fn ci_restore(
    ns: &str,
    template: &str,
    run: &str,
    point: &str,
    map: &str,
) -> (i32, String, String) {
    let block = crate::helm::readme_ci_restore_block();
    let (first, rest) = block.split_once('\n').unwrap();
    assert!(first.starts_with("NS=kubestow RUN="), "{first}");
    let mut script = format!("NS={ns} RUN={run}\n{rest}")
        .replace("cronjob/kubestow-restore", &format!("cronjob/{template}"))
        .replace(
            "--arg point 2026-11-20T14:00:00Z",
            &format!("--arg point {point}"),
        )
        .replace("--arg map shop=shop-restored", &format!("--arg map {map}"))
        .replace("sleep 10", "sleep 2");
    let cj = kubectl_json(&["-n", ns, "get", "cronjob", template]);
    if cj["apiVersion"] != "batch/v1" {
        let (before, step1) = script.split_once("\n# 1.").unwrap();
        let (_, after) = step1.split_once("\n# 2.").unwrap();
        script = format!("{before}\n# 2.{after}");
        create_restore_job(
            ns,
            template,
            run,
            &[("STOW_RESTORE_POINT", point), ("STOW_NAMESPACE_MAP", map)],
        );
    }
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .env("KUBECONFIG", node::get().kubeconfig())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A restore with far more than 4 KiB of errors (every ConfigMap refused by
/// a quota in the target namespace) fails its Job; the termination message
/// still parses as JSON, says it is shortened and where the whole summary
/// is, and the log's last line has every error.
fn a_long_summary_leaves_a_valid_termination_message(sys: &str, app: &str) {
    let target = format!("{app}-quota");
    namespace(&target, "restricted");
    apply(&format!(
        "apiVersion: v1\nkind: ResourceQuota\nmetadata: {{name: one-configmap, namespace: {target}}}\nspec: {{hard: {{count/configmaps: \"1\"}}}}\n"
    ));
    create_restore_job(
        sys,
        "ks-kubestow-restore",
        "e2e-restore-quota",
        &[
            ("STOW_NAMESPACE_MAP", &format!("{app}={target}")),
            ("STOW_INCLUDE_RESOURCES", "configmaps"),
        ],
    );
    let (completed, _) = node::wait_finished(sys, "e2e-restore-quota");
    assert!(!completed, "a restore with failed items fails its Job");
    let short = termination_summary(sys, "e2e-restore-quota");
    let full = job_summary(sys, "e2e-restore-quota");
    assert!(full.to_string().len() > 4096, "{}", full.to_string().len());
    assert_eq!(short["status"], "partial", "{short}");
    assert_eq!(short["truncated"], true, "{short}");
    let total = full["errors"].as_array().unwrap().len();
    assert!(total >= 150, "{total} errors");
    assert_eq!(short["errors_total"], total, "{short}");
    assert!(short["errors"].as_array().unwrap().len() < total);
    assert_eq!(short["report"], full["details"]["report"], "{short}");
    assert!(short["full_summary"].as_str().unwrap().contains("log"));
}

/// Schedule guards with the chart's CronJobs: the second scheduled run of a
/// plan that runs every two days is skipped, with `RunSkipped` on its Job
/// and on the CronJob; a manual run of it runs and says so; a manual run of
/// a `once` plan leaves its CronJob unsuspended.
fn guards_skip_scheduled_runs_but_not_manual_ones(sys: &str) {
    let guarded = "ks-kubestow-guarded";
    create_scheduled_like_job(sys, guarded, "guarded-1");
    wait_job(sys, "guarded-1");
    assert_eq!(termination_summary(sys, "guarded-1")["status"], "success");
    assert_eq!(
        event_reasons(sys, "Job", "guarded-1"),
        ["RunStarted", "RunSucceeded"]
    );

    create_scheduled_like_job(sys, guarded, "guarded-2");
    wait_job(sys, "guarded-2");
    let skipped = termination_summary(sys, "guarded-2");
    assert_eq!(skipped["status"], "skipped", "{skipped}");
    assert_eq!(
        event_reasons(sys, "Job", "guarded-2"),
        ["RunSkipped", "RunStarted"]
    );
    assert_eq!(event_reasons(sys, "CronJob", guarded), ["RunSkipped"]);

    create_job_from_cronjob(sys, guarded, "guarded-manual");
    wait_job(sys, "guarded-manual");
    let manual = termination_summary(sys, "guarded-manual");
    assert_eq!(manual["status"], "success", "{manual}");
    assert!(manual["details"]["manual"].is_string(), "{manual}");

    create_job_from_cronjob(sys, "ks-kubestow-once", "once-manual");
    wait_job(sys, "once-manual");
    assert_eq!(termination_summary(sys, "once-manual")["status"], "success");
    let once = kubectl_json(&["-n", sys, "get", "cronjob", "ks-kubestow-once"]);
    assert_ne!(
        once["spec"]["suspend"], true,
        "a manual run never suspends a once plan"
    );
}

/// The last line of `out`, parsed as JSON.
fn last_json(out: &str) -> Value {
    let line = out
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// A `helm upgrade` that adds an immediate plan returns before its backup
/// finishes and starts no restore; the same values applied again render
/// the same bytes and leave the finished backup Job alone.
fn upgrades_start_no_restore_and_wait_for_no_backup(sys: &str, app: &str, values: &Value) {
    let jobs = || -> BTreeMap<String, String> {
        kubectl_json(&["-n", sys, "get", "jobs"])["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| {
                (
                    j["metadata"]["name"].as_str().unwrap().to_owned(),
                    j["metadata"]["uid"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let before = jobs();
    let mut values = values.clone();
    values["plans"].as_array_mut().unwrap().push(
        json!({"name": "now", "schedule": {"type": "immediate"}, "namespaces": app,
            "volumeSource": "skip"}),
    );
    let first = helm("upgrade", sys, "ks", &values);
    let returned = jiff::Timestamp::now();
    let after = jobs();
    let new: Vec<&String> = after.keys().filter(|j| !before.contains_key(*j)).collect();
    assert_eq!(new.len(), 1, "one new Job, the immediate plan's: {new:?}");
    assert!(new[0].starts_with("ks-kubestow-now-"), "{new:?}");
    let finished = wait_job(sys, new[0]);
    let completed: jiff::Timestamp = finished["status"]["completionTime"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        completed > returned,
        "helm returned at {returned}, before the backup completed at {completed}"
    );
    assert_eq!(job_summary(sys, new[0])["status"], "success");

    let second = helm("upgrade", sys, "ks", &values);
    assert_eq!(
        helm_manifest(sys, "ks", first),
        helm_manifest(sys, "ks", second),
        "the same values render the same bytes"
    );
    assert_eq!(jobs(), after, "no Job started, none replaced");
}

pub(crate) fn statefulset_ready(ns: &str, replicas: u64) {
    wait_until(
        "the restored StatefulSet to be ready",
        Duration::from_secs(180),
        || {
            let sts = kubectl_json(&["-n", ns, "get", "statefulset", "web"]);
            (sts["status"]["readyReplicas"].as_u64() == Some(replicas)).then_some(())
        },
    );
}

/// A mover container killed mid-upload (SIGKILL to its process, through
/// containerd) fails its pod; the real Job controller starts another, which
/// resumes from what the first one saved, and the run succeeds.
#[test]
fn a_mover_killed_mid_upload_is_retried_by_the_job_controller_and_resumes() {
    let _shared = node::shared();
    let sys = env::unique_name("node-kill-ks");
    let app = env::unique_name("node-kill-app");
    namespace(&sys, "baseline");
    namespace(&app, "restricted");
    statefulset(&app, 1);
    let dir = claim_dir(&app, "data-web-0");
    // 32 files of 4 MiB at 8 MiB/s: about 16 s of upload in 16 MiB packs,
    // with a checkpoint after every file or so (STOW_RESUME_BUFFER=4MiB).
    for i in 0..32u64 {
        std::fs::write(dir.join(format!("part-{i:02}")), noise(500 + i, 4 << 20)).unwrap();
    }
    let before = digest(&dir);
    let password = random_password();
    let plans = json!([{
        "name": "slow",
        "schedule": {"type": "cron", "cron": "0 0 1 1 *"},
        "suspend": true,
        "namespaces": app,
        "init": true,
        "volumeSource": "snapshot",
        "rateLimit": "8MiB",
        "env": {"STOW_RESUME_BUFFER": "4MiB"},
    }]);
    helm("install", &sys, "ks", &values(&sys, &password, plans));
    let cronjob = names(&kubectl_json(&[
        "-n",
        &sys,
        "get",
        "cronjobs",
        "-l",
        "app.kubernetes.io/component=backup",
    ]))
    .remove(0);
    create_job_from_cronjob(&sys, &cronjob, "slow-1");

    // The mover pod, once it has been uploading for a few seconds.
    let (pod, container) = wait_until("a running mover pod", JOB_TIMEOUT, || {
        node::kubestow_pods(&sys).into_iter().find_map(|p| {
            let started =
                p["status"]["containerStatuses"][0]["state"]["running"]["startedAt"].as_str()?;
            let started: jiff::Timestamp = started.parse().ok()?;
            let age = jiff::Timestamp::now().duration_since(started);
            // Half-way: several packs and checkpoints are stored by then.
            (age.as_secs() >= 8).then(|| {
                (
                    p["metadata"]["name"].as_str().unwrap().to_owned(),
                    p["status"]["containerStatuses"][0]["containerID"]
                        .as_str()
                        .unwrap()
                        .trim_start_matches("containerd://")
                        .to_owned(),
                )
            })
        })
    });
    assert!(node::kill_container(&container), "SIGKILL to mover {pod}");

    // The Job controller counts the failure and starts another pod.
    let mover_job =
        kubectl_json(&["-n", &sys, "get", "pod", &pod])["metadata"]["labels"]["job-name"]
            .as_str()
            .unwrap()
            .to_owned();
    wait_until(
        "the mover Job to record the failed pod",
        Duration::from_secs(60),
        || {
            let j = kubectl_json(&["-n", &sys, "get", "job", &mover_job]);
            (j["status"]["failed"].as_u64() >= Some(1)).then_some(())
        },
    );
    wait_job(&sys, "slow-1");
    let summary = job_summary(&sys, "slow-1");
    assert_eq!(summary["status"], "success", "{summary}");
    assert!(
        summary["bytes"]["volume_resumed"].as_u64().unwrap_or(0) > 0,
        "the retried mover resumed nothing: {summary}"
    );
    assert_nothing_temporary(&app, &["data-web-0".to_owned()]);

    // And the data is all there: restore into a new namespace.
    let copy = env::unique_name("node-kill-copy");
    create_restore_job(
        &sys,
        "ks-kubestow-restore",
        "slow-restore",
        &[
            ("STOW_NAMESPACES", &app),
            ("STOW_NAMESPACE_MAP", &format!("{app}={copy}")),
        ],
    );
    wait_job(&sys, "slow-restore");
    statefulset_ready(&copy, 1);
    assert_eq!(before, digest(&claim_dir(&copy, "data-web-0")));
}
