//! The Helm chart (`helm/kubestow`), rendered by a real Helm engine (PyPI
//! `helm-python-sdk`, Helm v4's Go SDK, through `tests/helm/render.py`) for
//! given Kubernetes versions, and, rendered for the test cluster's own
//! version (1.20.2 or a current release), applied to its apiserver.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

use crate::api::{cronjob_api_version, request};
use crate::binary;
use crate::env;

// ---------------------------------------------------------------- rendering

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// How Helm renders: as `helm install` (revision 1) or as `helm upgrade` to
/// revision N.
#[derive(Clone, Copy, Debug)]
enum Action {
    Install,
    Upgrade(u32),
}

/// Helm's output for these values: the parsed objects and the text of
/// every template (NOTES.txt included), byte for byte. `Err` carries Helm's
/// message (a template `fail`, or what values.schema.json rejects).
fn try_render_as(
    values: &Value,
    kube: &str,
    release: &str,
    ns: &str,
    action: Action,
) -> Result<(Vec<Value>, Value), String> {
    let mut cmd = Command::new("python3");
    cmd.arg(root().join("tests/helm/render.py"))
        .args([
            "--kube-version",
            kube,
            "--release",
            release,
            "--namespace",
            ns,
            "--raw",
        ])
        .args(["--values", "-"]);
    if let Action::Upgrade(revision) = action {
        cmd.args(["--upgrade", "--revision", &revision.to_string()]);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (tests/helm/render.py)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(values.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let parsed: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "render.py printed no JSON (run `just setup` to install helm-python-sdk)\n--- stdout\n{}\n--- stderr\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    if parsed["ok"] == json!(true) {
        let objects = parsed["objects"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["object"].clone())
            .collect();
        Ok((objects, parsed["raw"].clone()))
    } else {
        Err(parsed["error"].as_str().unwrap_or_default().to_owned())
    }
}

/// Renders the chart as `helm install`; `Err` carries Helm's message.
fn try_render(values: &Value, kube: &str, release: &str, ns: &str) -> Result<Vec<Value>, String> {
    try_render_as(values, kube, release, ns, Action::Install).map(|(objects, _)| objects)
}

fn render(values: &Value, kube: &str) -> Vec<Value> {
    try_render(values, kube, "kubestow", "kubestow").unwrap_or_else(|e| panic!("render: {e}"))
}

fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| {
            let have: Vec<String> = objs
                .iter()
                .map(|o| format!("{}/{}", o["kind"], o["metadata"]["name"]))
                .collect();
            panic!("no {kind} {name}; rendered: {have:?}")
        })
}

/// The one Job rendered (an immediate plan's).
fn only_job(objs: &[Value]) -> &Value {
    let jobs: Vec<&Value> = objs.iter().filter(|o| o["kind"] == "Job").collect();
    assert_eq!(jobs.len(), 1, "{jobs:#?}");
    jobs[0]
}

fn pod_spec(workload: &Value) -> &Value {
    if workload["kind"] == "CronJob" {
        &workload["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    } else {
        &workload["spec"]["template"]["spec"]
    }
}

fn job_spec(workload: &Value) -> &Value {
    if workload["kind"] == "CronJob" {
        &workload["spec"]["jobTemplate"]["spec"]
    } else {
        &workload["spec"]
    }
}

/// The literal `value` of env var `name` in the kubestow container.
fn env_of(workload: &Value, name: &str) -> Option<String> {
    pod_spec(workload)["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str().map(String::from))
}

fn schedule_of(objs: &[Value], name: &str) -> String {
    find(objs, "CronJob", name)["spec"]["schedule"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn plan(name: &str, schedule: Value) -> Value {
    json!({ "name": name, "schedule": schedule })
}

fn with_plans(plans: Vec<Value>) -> Value {
    let mut values = defaults();
    values["plans"] = json!(plans);
    values
}

/// What every release sets beyond the chart's defaults: a repository and
/// the credentials Secret (the chart makes no password up).
fn defaults() -> Value {
    json!({
        "repository": "s3://bucket/prefix",
        "secret": { "existingSecret": "kubestow-credentials" },
    })
}

// ---------------------------------------------------------------- render tests

#[test]
fn hooks_given_as_lists_render_as_the_json_form_kubestow_accepts() {
    let hooks = json!([
        {"exec": {"namespace": "shop", "selector": "app=db", "container": "db"},
         "command": ["psql", "-c", "CHECKPOINT"], "timeout": "30s"},
        {"command": ["sync"], "on_error": "continue"},
    ]);
    let mut p = plan("db", json!({ "type": "daily", "at": "02:00" }));
    p["preHooks"] = hooks.clone();
    p["postHooks"] = json!("sync");
    p["precondition"] = json!({"resource": "statefulset/shop/db"});
    let objs = render(&with_plans(vec![p]), "1.20.2");
    let cj = objs.iter().find(|o| o["kind"] == "CronJob").unwrap();
    let pre: Value = serde_json::from_str(&env_of(cj, "STOW_PRE_HOOKS").unwrap()).unwrap();
    assert_eq!(pre, hooks);
    assert_eq!(env_of(cj, "STOW_POST_HOOKS").as_deref(), Some("sync"));
    let pre_env = env_of(cj, "STOW_PRE_HOOKS").unwrap();
    let cond = env_of(cj, "STOW_PRECONDITION").unwrap();
    // kubestow's own configuration accepts what the chart rendered.
    let cfg = kubestow::config::Config::from_vars(
        [
            ("STOW_MODE", "backup"),
            ("STOW_REPOSITORY", "s3://bucket/prefix"),
            ("STOW_PASSWORD", "x"),
            ("STOW_PRE_HOOKS", pre_env.as_str()),
            ("STOW_POST_HOOKS", "sync"),
            ("STOW_PRECONDITION", cond.as_str()),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
        None,
    );
    assert!(cfg.is_ok(), "{cfg:?}");
}

#[test]
fn default_values_render_a_hardened_nightly_cronjob_for_1_20() {
    // The defaults plus what a release must set: a repository and the
    // password (here in values, so the chart makes the Secret).
    let values = json!({
        "repository": "s3://bucket/prefix",
        "secret": { "password": "from-values", "env": { "AWS_ACCESS_KEY_ID": "id" } },
    });
    let objs = render(&values, "1.20.2");
    let cj = find(&objs, "CronJob", "kubestow-nightly");
    assert_eq!(
        cj["apiVersion"], "batch/v1beta1",
        "1.20 has no batch/v1 CronJob"
    );
    let spec = &cj["spec"];
    assert_eq!(spec["concurrencyPolicy"], "Forbid");
    assert!(spec["startingDeadlineSeconds"].as_u64().unwrap() > 0);
    assert!(spec.get("timeZone").is_none());
    // randomize: true, spreadHours 2 → minute from the hash, hour 2 or 3.
    let cron = spec["schedule"].as_str().unwrap();
    let f: Vec<&str> = cron.split(' ').collect();
    assert!(f[0].parse::<u32>().unwrap() < 60, "{cron}");
    assert!(["2", "3"].contains(&f[1]), "{cron}");
    assert_eq!(&f[2..], ["*", "*", "*"], "{cron}");
    let job = job_spec(cj);
    for k in [
        "backoffLimit",
        "activeDeadlineSeconds",
        "ttlSecondsAfterFinished",
    ] {
        assert!(job[k].as_u64().is_some(), "{k} missing");
    }
    assert!(
        job.get("podFailurePolicy").is_none(),
        "podFailurePolicy is unknown to 1.20"
    );
    let pod = pod_spec(cj);
    assert_eq!(pod["restartPolicy"], "Never");
    assert_eq!(pod["serviceAccountName"], "kubestow-backup");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert!(c["resources"]["requests"]["memory"].is_string());
    assert_eq!(
        c["envFrom"][0]["secretRef"]["name"], "kubestow-credentials",
        "credentials come from the Secret"
    );
    // No secret as an env literal.
    for e in c["env"].as_array().unwrap() {
        let n = e["name"].as_str().unwrap();
        assert!(
            !n.contains("PASSWORD") && !n.starts_with("AWS_SECRET"),
            "secret env literal {n}"
        );
    }
    let fields: Vec<(&str, &str)> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| {
            Some((
                e["name"].as_str()?,
                e["valueFrom"]["fieldRef"]["fieldPath"].as_str()?,
            ))
        })
        .collect();
    assert_eq!(
        fields,
        [
            ("STOW_POD_NAME", "metadata.name"),
            ("STOW_POD_NAMESPACE", "metadata.namespace"),
            ("STOW_JOB_NAME", "metadata.labels['job-name']"),
        ]
    );
    assert_eq!(env_of(cj, "STOW_MODE").as_deref(), Some("backup"));
    assert_eq!(env_of(cj, "STOW_PLAN").as_deref(), Some("nightly"));
    // The Secret holds the password given, kept on uninstall; two SAs:
    // restore is opt-in.
    let secret = find(&objs, "Secret", "kubestow-credentials");
    assert_eq!(
        secret["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    let decoded = |k: &str| {
        let v = secret["data"][k].as_str().unwrap();
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(v).unwrap()).unwrap()
    };
    assert_eq!(decoded("STOW_PASSWORD"), "from-values");
    assert_eq!(decoded("AWS_ACCESS_KEY_ID"), "id");
    find(&objs, "ServiceAccount", "kubestow-backup");
    let mover = find(&objs, "ServiceAccount", "kubestow-mover");
    assert_eq!(mover["automountServiceAccountToken"], false);
    assert!(
        !objs
            .iter()
            .any(|o| o["metadata"]["name"] == "kubestow-restore"),
        "restore SA is opt-in"
    );
}

#[test]
fn existing_secret_is_referenced_and_nothing_is_created() {
    let objs = render(
        &json!({ "repository": "s3://bucket/prefix", "secret": { "existingSecret": "my-creds" } }),
        "1.20.2",
    );
    assert!(!objs.iter().any(|o| o["kind"] == "Secret"));
    let cj = find(&objs, "CronJob", "kubestow-nightly");
    assert_eq!(
        pod_spec(cj)["containers"][0]["envFrom"][0]["secretRef"]["name"],
        "my-creds"
    );
}

#[test]
fn every_schedule_type_translates_to_cron_and_env() {
    let values = with_plans(vec![
        plan("now", json!({ "type": "immediate" })),
        plan(
            "xmas",
            json!({ "type": "once", "date": "2026-12-24", "at": "03:30" }),
        ),
        plan(
            "office",
            json!({ "type": "hourly", "every": 2, "from": "08:00", "to": "18:00" }),
        ),
        plan(
            "often",
            json!({ "type": "hourly", "everyMinutes": 15, "from": "09:00", "to": "17:00" }),
        ),
        plan("hourly", json!({ "type": "hourly" })),
        plan("daily", json!({ "type": "daily", "at": "01:05" })),
        plan(
            "every3",
            json!({ "type": "daily", "at": "01:00", "every": 3 }),
        ),
        plan(
            "weekdays",
            json!({ "type": "weekly", "days": ["mon", "wed", "fri"], "at": "22:00" }),
        ),
        plan(
            "biweekly",
            json!({ "type": "weekly", "days": ["sat"], "every": 2, "at": "04:00" }),
        ),
        plan(
            "halfyear",
            json!({ "type": "monthly", "months": ["jan", "jul"], "days": [1, 15], "at": "04:00" }),
        ),
        plan(
            "sundays",
            json!({ "type": "monthly", "months": [3, "june"], "weekdays": ["sun"], "at": "05:00" }),
        ),
        plan("raw", json!({ "type": "cron", "cron": "*/5 * * * *" })),
    ]);
    let objs = render(&values, "1.20.2");
    let cases = [
        ("kubestow-xmas", "30 3 24 12 *"),
        ("kubestow-office", "0 8-18/2 * * *"),
        ("kubestow-often", "*/15 9-16 * * *"),
        ("kubestow-hourly", "0 * * * *"),
        ("kubestow-daily", "5 1 * * *"),
        ("kubestow-every3", "0 1 * * *"),
        ("kubestow-weekdays", "0 22 * * 1,3,5"),
        ("kubestow-biweekly", "0 4 * * 6"),
        ("kubestow-halfyear", "0 4 1,15 1,7 *"),
        ("kubestow-sundays", "0 5 * 3,6 0"),
        ("kubestow-raw", "*/5 * * * *"),
    ];
    for (name, cron) in cases {
        assert_eq!(schedule_of(&objs, name), cron, "{name}");
        let cj = find(&objs, "CronJob", name);
        assert_eq!(cj["spec"]["concurrencyPolicy"], "Forbid");
        assert_eq!(
            env_of(cj, "STOW_REPOSITORY").as_deref(),
            Some("s3://bucket/prefix")
        );
    }
    // immediate: a plain Job (no Helm hook, no TTL), no CronJob; its name
    // ends in a hash of its spec.
    let job = only_job(&objs);
    let name = job["metadata"]["name"].as_str().unwrap();
    assert!(
        name.strip_prefix("kubestow-now-")
            .is_some_and(|h| h.len() == 10 && h.bytes().all(|b| b.is_ascii_hexdigit())),
        "{name}"
    );
    assert!(job["metadata"].get("annotations").is_none(), "{job:#}");
    assert!(job["spec"].get("ttlSecondsAfterFinished").is_none());
    assert!(
        !objs
            .iter()
            .any(|o| o["kind"] == "CronJob" && o["metadata"]["name"] == "kubestow-now")
    );
    assert_eq!(env_of(job, "STOW_PLAN").as_deref(), Some("now"));
    // once: STOW_ONCE, nothing else special.
    let xmas = find(&objs, "CronJob", "kubestow-xmas");
    assert_eq!(env_of(xmas, "STOW_ONCE").as_deref(), Some("true"));
    assert_eq!(env_of(xmas, "STOW_MIN_INTERVAL"), None);
    // every N days / weeks: cron cannot say it; STOW_MIN_INTERVAL does, with
    // slack for the run's own duration (the snapshot time is its end).
    let every3 = find(&objs, "CronJob", "kubestow-every3");
    assert_eq!(env_of(every3, "STOW_MIN_INTERVAL").as_deref(), Some("60h"));
    assert_eq!(env_of(every3, "STOW_ONCE"), None);
    let biweekly = find(&objs, "CronJob", "kubestow-biweekly");
    assert_eq!(
        env_of(biweekly, "STOW_MIN_INTERVAL").as_deref(),
        Some("312h")
    );
    let daily = find(&objs, "CronJob", "kubestow-daily");
    assert_eq!(env_of(daily, "STOW_MIN_INTERVAL"), None);
}

#[test]
fn schedule_edge_cases_feb_29_last_day_and_time_zones() {
    // Feb 29th: plain cron, which fires in leap years only.
    let objs = render(
        &with_plans(vec![plan(
            "leap",
            json!({ "type": "monthly", "months": ["feb"], "days": [29], "at": "02:00" }),
        )]),
        "1.20.2",
    );
    assert_eq!(schedule_of(&objs, "kubestow-leap"), "0 2 29 2 *");
    // Last day of the month: cron 28-31, kubestow skips the days that are not
    // the last (STOW_LAST_DAY_OF_MONTH, in STOW_TIMEZONE).
    let objs = render(
        &with_plans(vec![plan(
            "eom",
            json!({ "type": "monthly", "days": ["last"], "at": "23:00" }),
        )]),
        "1.20.2",
    );
    let eom = find(&objs, "CronJob", "kubestow-eom");
    assert_eq!(eom["spec"]["schedule"], "0 23 28-31 * *");
    assert_eq!(
        env_of(eom, "STOW_LAST_DAY_OF_MONTH").as_deref(),
        Some("true")
    );
    let err = try_render(
        &with_plans(vec![plan(
            "mixed",
            json!({ "type": "monthly", "days": [15, "last"] }),
        )]),
        "1.20.2",
        "kubestow",
        "kubestow",
    )
    .unwrap_err();
    assert!(err.contains("cannot be combined"), "{err}");
    // Time zones: spec.timeZone on 1.27+, also STOW_TIMEZONE for kubestow's
    // own day arithmetic; refused on older clusters instead of silently UTC.
    let tz = with_plans(vec![plan(
        "berlin",
        json!({ "type": "daily", "at": "02:30", "timeZone": "Europe/Berlin" }),
    )]);
    let objs = render(&tz, "1.27.0");
    let cj = find(&objs, "CronJob", "kubestow-berlin");
    assert_eq!(cj["apiVersion"], "batch/v1");
    assert_eq!(cj["spec"]["timeZone"], "Europe/Berlin");
    assert_eq!(cj["spec"]["schedule"], "30 2 * * *");
    assert_eq!(
        env_of(cj, "STOW_TIMEZONE").as_deref(),
        Some("Europe/Berlin")
    );
    let err = try_render(&tz, "1.20.2", "kubestow", "kubestow").unwrap_err();
    assert!(err.contains("needs Kubernetes 1.27+"), "{err}");
    // A global time zone applies to every plan.
    let mut global = with_plans(vec![plan("x", json!({ "type": "hourly" }))]);
    global["timeZone"] = json!("America/New_York");
    let objs = render(&global, "1.29.0");
    assert_eq!(
        find(&objs, "CronJob", "kubestow-x")["spec"]["timeZone"],
        "America/New_York"
    );
    // every N weeks with several weekdays is not expressible: refused.
    let err = try_render(
        &with_plans(vec![plan(
            "bad",
            json!({ "type": "weekly", "days": ["mon", "thu"], "every": 2 }),
        )]),
        "1.20.2",
        "kubestow",
        "kubestow",
    )
    .unwrap_err();
    assert!(err.contains("exactly one weekday"), "{err}");
    // An unknown type: values.schema.json names the types there are.
    let err = try_render(
        &with_plans(vec![plan("bad", json!({ "type": "fortnightly" }))]),
        "1.20.2",
        "kubestow",
        "kubestow",
    )
    .unwrap_err();
    assert!(
        err.contains("/plans/0/schedule/type") && err.contains("'immediate'"),
        "{err}"
    );
}

#[test]
fn randomize_is_a_deterministic_spread_by_plan_name() {
    let values = with_plans(
        ["alpha", "beta", "gamma", "delta"]
            .iter()
            .map(|n| {
                plan(
                    n,
                    json!({ "type": "daily", "at": "02:00", "randomize": true }),
                )
            })
            .collect(),
    );
    let a = render(&values, "1.20.2");
    let b = render(&values, "1.20.2");
    let mut minutes = std::collections::BTreeSet::new();
    for n in ["alpha", "beta", "gamma", "delta"] {
        let name = format!("kubestow-{n}");
        let cron = schedule_of(&a, &name);
        assert_eq!(cron, schedule_of(&b, &name), "stable across renders");
        let f: Vec<&str> = cron.split(' ').collect();
        assert_eq!(f[1], "2", "spreadHours defaults to 1: the hour stays");
        minutes.insert(f[0].to_owned());
    }
    assert!(minutes.len() > 1, "plans spread apart: {minutes:?}");
    // The seed moves every plan.
    let mut seeded = values.clone();
    seeded["randomizeSeed"] = json!("cluster-eu-1");
    let c = render(&seeded, "1.20.2");
    assert!(
        ["alpha", "beta", "gamma", "delta"].iter().any(|n| {
            let name = format!("kubestow-{n}");
            schedule_of(&a, &name) != schedule_of(&c, &name)
        }),
        "randomizeSeed changes the spread"
    );
}

#[test]
fn api_version_and_pod_failure_policy_follow_the_cluster_version() {
    for (kube, api, pfp) in [
        ("1.20.2", "batch/v1beta1", false),
        ("1.21.0", "batch/v1", false),
        ("1.25.3", "batch/v1", false),
        ("1.26.0", "batch/v1", true),
        ("1.30.1", "batch/v1", true),
        ("1.37.2", "batch/v1", true),
    ] {
        let objs = render(&defaults(), kube);
        let cj = find(&objs, "CronJob", "kubestow-nightly");
        assert_eq!(cj["apiVersion"], api, "{kube}");
        let policy = &job_spec(cj)["podFailurePolicy"];
        assert_eq!(policy.is_object(), pfp, "{kube}: {policy}");
        if pfp {
            let rule = &policy["rules"][0];
            assert_eq!(rule["action"], "FailJob");
            assert_eq!(rule["onExitCodes"]["values"], json!([2]));
            assert_eq!(rule["onExitCodes"]["operator"], "In");
        }
    }
    // Forced on, e.g. for a 1.25 cluster with the feature gate.
    let mut forced = defaults();
    forced["job"] = json!({ "podFailurePolicy": true });
    let objs = render(&forced, "1.25.0");
    assert!(job_spec(find(&objs, "CronJob", "kubestow-nightly"))["podFailurePolicy"].is_object());
}

#[test]
fn retention_check_and_restore_template_render_when_asked() {
    let values = json!({
        "repository": "s3://bkt/p",
        "secret": { "password": "pw" },
        "plans": [{
            "name": "nightly", "schedule": { "type": "daily", "at": "01:00" },
            "namespaces": ["shop", "billing"], "tags": ["nightly", "team=a"],
            "channels": 4, "rateLimit": "50MiB", "init": true, "existingSecret": "team-a-creds",
            "retention": { "keepDaily": 7, "keepWeekly": 4, "schedule": { "type": "daily", "at": "06:00" } }
        }],
        "check": { "enabled": true, "readData": "10%" },
        "restore": { "enabled": true, "template": { "restorePoint": "2026-11-01T00:00:00Z", "namespaceMap": "shop=shop-restored", "allowHostVolumes": "pv-a" } }
    });
    let objs = render(&values, "1.20.2");
    let cj = find(&objs, "CronJob", "kubestow-nightly");
    assert_eq!(
        env_of(cj, "STOW_NAMESPACES").as_deref(),
        Some("shop,billing")
    );
    assert_eq!(env_of(cj, "STOW_TAGS").as_deref(), Some("nightly,team=a"));
    assert_eq!(env_of(cj, "STOW_CHANNELS").as_deref(), Some("4"));
    assert_eq!(env_of(cj, "STOW_RATE_LIMIT").as_deref(), Some("50MiB"));
    assert_eq!(
        pod_spec(cj)["containers"][0]["envFrom"][0]["secretRef"]["name"],
        "team-a-creds",
        "a plan's own Secret"
    );
    let prune = find(&objs, "CronJob", "kubestow-nightly-prune");
    assert_eq!(
        pod_spec(prune)["containers"][0]["envFrom"][0]["secretRef"]["name"],
        "team-a-creds"
    );
    assert_eq!(prune["spec"]["schedule"], "0 6 * * *");
    assert_eq!(env_of(prune, "STOW_MODE").as_deref(), Some("prune"));
    assert_eq!(env_of(prune, "STOW_PLAN").as_deref(), Some("nightly"));
    assert_eq!(env_of(prune, "STOW_KEEP_DAILY").as_deref(), Some("7"));
    assert_eq!(env_of(prune, "STOW_KEEP_WEEKLY").as_deref(), Some("4"));
    assert_eq!(env_of(prune, "STOW_KEEP_LAST"), None);
    // Repository-only work runs without Kubernetes API access.
    assert_eq!(pod_spec(prune)["serviceAccountName"], "kubestow-mover");
    let check = find(&objs, "CronJob", "kubestow-check");
    assert_eq!(env_of(check, "STOW_MODE").as_deref(), Some("check"));
    assert_eq!(
        env_of(check, "STOW_CHECK_READ_DATA").as_deref(),
        Some("10%")
    );
    // The restore template: a suspended CronJob whose schedule never comes;
    // no restore Job is rendered.
    let restore = find(&objs, "CronJob", "kubestow-restore");
    assert_eq!(restore["spec"]["suspend"], true);
    assert_eq!(restore["spec"]["schedule"], "0 0 31 2 *");
    assert!(!objs.iter().any(|o| o["kind"] == "Job"));
    assert_eq!(pod_spec(restore)["serviceAccountName"], "kubestow-restore");
    assert_eq!(env_of(restore, "STOW_MODE").as_deref(), Some("restore"));
    assert_eq!(
        env_of(restore, "STOW_REPOSITORY").as_deref(),
        Some("s3://bkt/p")
    );
    assert_eq!(
        env_of(restore, "STOW_RESTORE_POINT").as_deref(),
        Some("2026-11-01T00:00:00Z")
    );
    assert_eq!(
        env_of(restore, "STOW_NAMESPACE_MAP").as_deref(),
        Some("shop=shop-restored")
    );
    assert_eq!(env_of(restore, "STOW_EXISTING").as_deref(), Some("skip"));
    assert_eq!(
        env_of(restore, "STOW_EXISTING_CLUSTER_RESOURCES").as_deref(),
        Some("skip")
    );
    assert_eq!(
        env_of(restore, "STOW_ALLOW_HOST_VOLUMES").as_deref(),
        Some("pv-a")
    );
    find(&objs, "ServiceAccount", "kubestow-restore");
    find(&objs, "ClusterRoleBinding", "kubestow-kubestow-restore");
    // Without restore.enabled: no template, no restore account.
    let objs = render(&with_plans(vec![]), "1.20.2");
    assert!(
        !objs
            .iter()
            .any(|o| o["metadata"]["name"].as_str().unwrap().contains("restore")),
        "restore is opt-in"
    );
    // The one-off restore Job of earlier versions is gone, and said so.
    let mut old = with_plans(vec![]);
    old["restore"] = json!({ "enabled": true, "job": { "enabled": true } });
    let err = try_render(&old, "1.20.2", "kubestow", "kubestow").unwrap_err();
    assert!(err.contains("'job' not allowed"), "{err}");
    // A plan may not take the template's name.
    let mut clash = with_plans(vec![plan("restore", json!({ "type": "daily" }))]);
    clash["restore"] = json!({ "enabled": true });
    let err = try_render(&clash, "1.20.2", "kubestow", "kubestow").unwrap_err();
    assert!(err.contains("taken by the restore CronJob"), "{err}");
}

/// Where two renders differ, template by template (empty: byte-identical).
fn differences(a: &Value, b: &Value) -> Vec<String> {
    let (a, b) = (a.as_object().unwrap(), b.as_object().unwrap());
    let mut out = Vec::new();
    for name in a.keys().chain(b.keys().filter(|k| !a.contains_key(*k))) {
        let (x, y) = (a.get(name), b.get(name));
        if x != y {
            out.push(format!(
                "{name}:\n--- first\n{}\n--- second\n{}",
                x.map_or("(none)".into(), |v| v.to_string()),
                y.map_or("(none)".into(), |v| v.to_string())
            ));
        }
    }
    out
}

/// GitOps: `helm template`, Argo CD and Flux render the chart again and
/// again, and `helm upgrade` renders it for each new revision. Every render
/// of the same values is the same, byte for byte (a password generated per
/// render would lock the repository; a name with the revision in it would
/// make a new Job per upgrade), with the password in values or in a Secret
/// of one's own.
#[test]
fn same_values_render_the_same_bytes_every_time_and_for_every_revision() {
    let with_password = full_values("kubestow");
    let mut with_existing = full_values("kubestow");
    with_existing["secret"] = json!({ "existingSecret": "kubestow-credentials" });
    for (label, values) in [
        ("secret.password", &with_password),
        ("secret.existingSecret", &with_existing),
    ] {
        for kube in ["1.20.2", "1.37.2"] {
            let render_as = |action| {
                try_render_as(values, kube, "kubestow", "kubestow", action)
                    .unwrap_or_else(|e| panic!("{label}, {kube}: {e}"))
            };
            let (objs, first) = render_as(Action::Install);
            let templates = first.as_object().unwrap();
            assert!(
                templates.len() >= 8 && templates.keys().any(|k| k.ends_with("NOTES.txt")),
                "{label}, {kube}: {:?}",
                templates.keys().collect::<Vec<_>>()
            );
            let secrets = objs.iter().filter(|o| o["kind"] == "Secret").count();
            assert_eq!(secrets, usize::from(label == "secret.password"), "{label}");
            for (what, action) in [
                ("a second install render", Action::Install),
                ("an upgrade to revision 2", Action::Upgrade(2)),
                ("an upgrade to revision 17", Action::Upgrade(17)),
            ] {
                let (_, again) = render_as(action);
                let diff = differences(&first, &again);
                assert!(
                    diff.is_empty(),
                    "{label}, {kube}: {what} differs from the install render:\n{}",
                    diff.join("\n")
                );
            }
        }
    }
}

/// The chart never makes a password up: without `secret.password` and
/// without `secret.existingSecret`, rendering fails and says which values
/// to set. Plans that all bring their own Secret need neither.
#[test]
fn a_render_without_a_password_or_existing_secret_fails_naming_both() {
    let mut values = with_plans(vec![plan("a", json!({ "type": "daily" }))]);
    values["secret"] = json!({});
    for kube in ["1.20.2", "1.37.2"] {
        let err = try_render(&values, kube, "kubestow", "kubestow").unwrap_err();
        assert!(
            err.contains("secret.password") && err.contains("secret.existingSecret"),
            "{kube}: {err}"
        );
    }
    // The restore template alone uses the chart's Secret too.
    let mut restore_only = values.clone();
    restore_only["plans"] = json!([]);
    restore_only["restore"] = json!({ "enabled": true });
    let err = try_render(&restore_only, "1.37.2", "kubestow", "kubestow").unwrap_err();
    assert!(err.contains("secret.existingSecret"), "{err}");
    // Each plan with its own Secret, no check, copy or restore: no Secret
    // is needed, and none is rendered.
    let mut own = values.clone();
    own["plans"][0]["existingSecret"] = json!("team-a");
    let objs = render(&own, "1.37.2");
    assert!(!objs.iter().any(|o| o["kind"] == "Secret"));
}

/// Everything a render of these values runs: no Helm hook anywhere (an
/// install or upgrade never waits for a backup or restore, nor fails with
/// one), no restore Job, one backup Job for the immediate plan; returns its
/// name.
fn assert_upgrade_safe(objs: &[Value], what: &str) -> String {
    for o in objs {
        let annotations = o["metadata"]["annotations"].as_object();
        assert!(
            annotations.is_none_or(|a| !a.keys().any(|k| k.starts_with("helm.sh/hook"))),
            "{what}: a Helm hook: {}/{}",
            o["kind"],
            o["metadata"]["name"]
        );
    }
    let job = only_job(objs);
    assert_eq!(
        job["metadata"]["labels"]["app.kubernetes.io/component"], "backup",
        "{what}: {job:#}"
    );
    assert_eq!(env_of(job, "STOW_MODE").as_deref(), Some("backup"));
    assert!(
        job["spec"].get("ttlSecondsAfterFinished").is_none(),
        "{what}"
    );
    job["metadata"]["name"].as_str().unwrap().to_owned()
}

/// An install, then upgrades: with the same values, with an unrelated value
/// changed, with the immediate plan changed. No render starts a restore or
/// holds Helm on a backup; the immediate plan's Job keeps its name (so an
/// upgrade leaves it alone and nothing runs again) until what it would run
/// changes; the restore template is a suspended CronJob carrying the
/// restore settings.
#[test]
fn upgrades_start_no_restore_and_wait_for_no_backup() {
    let mut values = with_plans(vec![
        plan("now", json!({ "type": "immediate" })),
        plan("nightly", json!({ "type": "daily", "at": "02:00" })),
    ]);
    values["restore"] = json!({ "enabled": true,
        "template": { "restorePoint": "2026-11-01T00:00:00Z", "namespaces": "shop" } });
    let kube = "1.37.2";
    let as_ = |v: &Value, action| {
        try_render_as(v, kube, "kubestow", "kubestow", action)
            .unwrap()
            .0
    };
    let install = as_(&values, Action::Install);
    let job = assert_upgrade_safe(&install, "install");
    let same = as_(&values, Action::Upgrade(2));
    assert_eq!(assert_upgrade_safe(&same, "upgrade, same values"), job);
    let mut unrelated = values.clone();
    unrelated["check"] = json!({ "enabled": true });
    unrelated["plans"][1]["schedule"]["at"] = json!("03:30");
    unrelated["restore"]["template"]["restorePoint"] = json!("2026-11-02T00:00:00Z");
    let upgraded = as_(&unrelated, Action::Upgrade(3));
    assert_eq!(
        assert_upgrade_safe(&upgraded, "upgrade, unrelated values changed"),
        job,
        "an unrelated change must not run the immediate plan again"
    );
    // What the Job would run changed: a new Job (a Job's pod template
    // cannot change in place), which runs once.
    let mut changed = values.clone();
    changed["plans"][0]["namespaces"] = json!("shop");
    let renamed = assert_upgrade_safe(&as_(&changed, Action::Upgrade(4)), "plan changed");
    assert_ne!(renamed, job);
    let mut resources = values.clone();
    resources["resources"] = json!({ "requests": { "cpu": "200m" } });
    let renamed2 = assert_upgrade_safe(&as_(&resources, Action::Upgrade(5)), "resources");
    assert!(renamed2 != job && renamed2 != renamed);

    for (objs, point) in [
        (&install, "2026-11-01T00:00:00Z"),
        (&upgraded, "2026-11-02T00:00:00Z"),
    ] {
        let template = find(objs, "CronJob", "kubestow-restore");
        assert_eq!(template["spec"]["suspend"], true);
        assert_eq!(
            template["spec"]["schedule"], "0 0 31 2 *",
            "February 31st never comes"
        );
        assert_eq!(env_of(template, "STOW_MODE").as_deref(), Some("restore"));
        assert_eq!(
            env_of(template, "STOW_RESTORE_POINT").as_deref(),
            Some(point)
        );
        assert_eq!(env_of(template, "STOW_NAMESPACES").as_deref(), Some("shop"));
        assert_eq!(
            env_of(template, "STOW_REPOSITORY").as_deref(),
            Some("s3://bucket/prefix")
        );
        assert_eq!(pod_spec(template)["serviceAccountName"], "kubestow-restore");
        // The backup account patches the scheduled plans' CronJobs only.
        let role = find(objs, "Role", "kubestow-backup");
        let names: Vec<&Value> = role["rules"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["resources"] == json!(["cronjobs"]))
            .map(|r| &r["resourceNames"])
            .collect();
        assert_eq!(names, [&json!(["kubestow-nightly"])], "{role:#}");
    }
    // Only an immediate plan: no CronJob rule at all (an empty resourceNames
    // would allow every CronJob).
    let objs = render(
        &with_plans(vec![plan("now", json!({ "type": "immediate" }))]),
        kube,
    );
    let role = find(&objs, "Role", "kubestow-backup");
    assert!(
        !role["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["resources"] == json!(["cronjobs"])),
        "{role:#}"
    );
}

/// values.schema.json, which Helm checks before rendering (install,
/// upgrade, template, lint), refuses values kubestow would refuse at run
/// time, and accepts the chart's defaults once a repository is set.
#[test]
fn values_schema_rejects_what_would_fail_at_run_time() {
    // The schema is generated (its patterns are long); it is up to date.
    let check = Command::new("python3")
        .arg(root().join("tests/helm/gen_schema.py"))
        .arg("--check")
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let schema_error = |values: &Value| -> String {
        let err = try_render(values, "1.37.2", "kubestow", "kubestow")
            .map(|_| ())
            .unwrap_err();
        assert!(
            err.contains("values don't meet the specifications of the schema"),
            "not the schema: {err}"
        );
        err
    };
    // The defaults with a repository: the schema passes them; only the
    // password is left to give (a template `fail`, not the schema).
    let err = try_render(
        &json!({ "repository": "s3://bucket/prefix" }),
        "1.37.2",
        "kubestow",
        "kubestow",
    )
    .unwrap_err();
    assert!(
        !err.contains("schema") && err.contains("secret.password"),
        "{err}"
    );
    render(&defaults(), "1.37.2");
    // No repository, or an empty one: refused unless every plan has its own.
    for repo in [json!(""), json!(null)] {
        let mut v = defaults();
        v["repository"] = repo;
        let err = schema_error(&v);
        assert!(
            err.contains("'repository'") || err.contains("/repository"),
            "{err}"
        );
        assert!(err.contains("/plans/0"), "{err}");
    }
    let mut own = defaults();
    own["repository"] = json!("");
    own["plans"] = json!([{ "name": "a", "repository": "s3://team-a/backups" }]);
    render(&own, "1.37.2");
    own["check"] = json!({ "enabled": true });
    assert!(schema_error(&own).contains("/check/enabled"));
    // Not a repository kubestow can open.
    for bad in ["s3://AB", "file:///", "https://bucket/x", "file://relative"] {
        let mut v = defaults();
        v["repository"] = json!(bad);
        assert!(schema_error(&v).contains("/repository"), "{bad}");
    }
    // An unknown schedule type.
    let err = schema_error(&with_plans(vec![plan(
        "a",
        json!({ "type": "fortnightly" }),
    )]));
    assert!(err.contains("/plans/0/schedule/type"), "{err}");
    // A rate kubestow cannot parse.
    let mut fast = plan("a", json!({ "type": "daily" }));
    fast["rateLimit"] = json!("fast");
    let err = schema_error(&with_plans(vec![fast]));
    assert!(err.contains("/plans/0/rateLimit"), "{err}");
    // Unknown keys: at the top, in a plan, in a schedule.
    let mut v = defaults();
    v["repositry"] = json!("s3://bucket/prefix");
    assert!(schema_error(&v).contains("'repositry' not allowed"));
    let mut typo = plan("a", json!({ "type": "daily", "time": "02:00" }));
    typo["volumesource"] = json!("skip");
    let err = schema_error(&with_plans(vec![typo]));
    assert!(
        err.contains("'volumesource' not allowed") && err.contains("'time' not allowed"),
        "{err}"
    );
    // copy without a destination.
    let mut v = defaults();
    v["copy"] = json!({ "enabled": true });
    assert!(schema_error(&v).contains("/copy/toRepository"));
}

/// The schema's `rateLimit` pattern and kubestow's own parser agree on
/// every sample, but one: a zero rate, which the pattern lets through and
/// kubestow refuses ("would stop all transfers").
#[test]
fn schema_rate_limit_pattern_agrees_with_kubestow() {
    let samples = [
        "50MiB",
        "500KB/s",
        "10 MiB",
        "1.5GiB",
        "unlimited",
        "UNLIMITED",
        "1048576",
        "mon-fri 09:00-18:00=10MiB,*=200MiB",
        "sat+sun=1GiB",
        "fri 22:00-06:00=5MiB, * = unlimited",
        "22:00-24:00=1MiB",
        "fast",
        "1.5",
        "50MiB/h",
        "fri=",
        "=5MiB",
        "xyz=5MiB",
        "Mon-Fri 9:00-18:00=1MiB",
        "09:00-18:00 mon=1MiB",
        "mon 09:00-25:00=1MiB",
        "unlimited/s",
        "",
    ];
    let plans: Vec<Value> = samples
        .iter()
        .enumerate()
        .map(|(i, r)| json!({ "name": format!("r{i}"), "rateLimit": r }))
        .collect();
    let refused = match try_render(&with_plans(plans), "1.37.2", "kubestow", "kubestow") {
        Ok(_) => String::new(),
        Err(e) => e,
    };
    for (i, sample) in samples.iter().enumerate() {
        let schema_ok = !refused.contains(&format!("'/plans/{i}/rateLimit'"));
        let kubestow_ok = sample.is_empty()
            || kubestow::config::Config::from_vars(
                [
                    ("STOW_MODE", "backup"),
                    ("STOW_REPOSITORY", "s3://bucket/prefix"),
                    ("STOW_PASSWORD", "x"),
                    ("STOW_RATE_LIMIT", sample),
                ]
                .map(|(k, v)| (k.to_string(), v.to_string())),
                None,
            )
            .is_ok();
        assert_eq!(
            schema_ok, kubestow_ok,
            "rateLimit {sample:?}: schema {schema_ok}, kubestow {kubestow_ok}\n{refused}"
        );
    }
}

/// The plain manifests in `cronjobs/` match what the chart renders for the
/// values in `tests/helm/cases/` (CronJob/Job spec, structurally).
#[test]
fn plain_cronjob_manifests_match_the_chart() {
    let out = Command::new("python3")
        .arg(root().join("tests/helm/render.py"))
        .arg("compare")
        .arg(root().join("cronjobs"))
        .arg(root().join("tests/helm/cases"))
        .output()
        .unwrap();
    let result: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "compare printed no JSON: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(result["ok"], true, "{:#}", result["problems"]);
    let checked: Vec<&str> = result["checked"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for f in [
        "immediate.yaml",
        "once.yaml",
        "hourly.yaml",
        "daily.yaml",
        "weekly.yaml",
        "monthly.yaml",
        "restore.yaml",
        "copy.yaml",
        "rbac.yaml",
    ] {
        assert!(
            checked.contains(&f),
            "{f} not compared; checked {checked:?}"
        );
    }
}

// ---------------------------------------------------------------- apiserver

/// The collection URL of a rendered object.
fn collection(obj: &Value) -> String {
    let api = obj["apiVersion"].as_str().unwrap();
    let kind = obj["kind"].as_str().unwrap();
    let plural = match kind {
        "Secret" => "secrets",
        "ServiceAccount" => "serviceaccounts",
        "ClusterRole" => "clusterroles",
        "ClusterRoleBinding" => "clusterrolebindings",
        "Role" => "roles",
        "RoleBinding" => "rolebindings",
        "CronJob" => "cronjobs",
        "Job" => "jobs",
        "Deployment" => "deployments",
        other => panic!("the chart renders an unexpected kind {other}"),
    };
    let base = if api.contains('/') {
        format!("/apis/{api}")
    } else {
        format!("/api/{api}")
    };
    match obj["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{base}/namespaces/{ns}/{plural}"),
        None => format!("{base}/{plural}"),
    }
}

async fn create(client: &kube::Client, obj: &Value, dry_run: bool) -> Result<Value, kube::Error> {
    let mut path = collection(obj);
    if dry_run {
        path.push_str("?dryRun=All");
    }
    request(client, http::Method::POST, &path, Some(obj)).await
}

/// Every schedule type, retention, check, copy and the restore template,
/// for one release in `ns`.
fn full_values(ns: &str) -> Value {
    json!({
        "repository": "s3://bucket/prefix",
        "secret": { "password": "full-values-password" },
        "plans": [
            { "name": "now", "schedule": { "type": "immediate" } },
            { "name": "once", "schedule": { "type": "once", "date": "2026-12-24", "at": "03:00" } },
            { "name": "hourly", "schedule": { "type": "hourly", "everyMinutes": 20, "from": "08:00", "to": "18:00" } },
            { "name": "daily", "schedule": { "type": "daily", "every": 3, "randomize": true },
              "retention": { "keepDaily": 7 } },
            { "name": "weekly", "schedule": { "type": "weekly", "days": ["sun"], "every": 2 } },
            { "name": "monthly", "schedule": { "type": "monthly", "days": ["last"] } }
        ],
        "check": { "enabled": true },
        "copy": { "enabled": true, "toRepository": "s3://other/prefix" },
        "restore": { "enabled": true, "namespaces": [ns],
                     "template": { "restorePoint": "2026-11-01T00:00:00Z" } }
    })
}

/// Rendered for the cluster's own version (1.20.2 or a current release), as
/// `helm install` would, every object passes the apiserver's validation.
#[tokio::test]
async fn rendered_manifests_are_accepted_by_the_apiserver() {
    let (client, ns) = env::namespace("helm-dry-run").await;
    let version = env::server_version().await;
    let objs = try_render(&full_values(&ns), version.semver(), &ns, &ns).unwrap();
    assert!(objs.len() >= 15, "{} objects", objs.len());
    // What the chart picks for this version: the CronJob API the cluster
    // serves, and a podFailurePolicy (exit code 2 fails the Job at once)
    // where the Job API has it (1.26+).
    let cronjob_api = cronjob_api_version().await;
    for obj in objs.iter().filter(|o| o["kind"] == "CronJob") {
        assert_eq!(
            obj["apiVersion"], cronjob_api,
            "{}: {}",
            version.git_version, obj["metadata"]["name"]
        );
        assert_eq!(
            job_spec(obj)["podFailurePolicy"].is_object(),
            version.at_least(26),
            "{}: {}",
            version.git_version,
            obj["metadata"]["name"]
        );
    }
    let mut kinds = std::collections::BTreeSet::new();
    for obj in &objs {
        let created = create(&client, obj, true).await.unwrap_or_else(|e| {
            panic!(
                "dry-run create of {} {} rejected: {e}\n{obj:#}",
                obj["kind"], obj["metadata"]["name"]
            )
        });
        assert_eq!(created["kind"], obj["kind"]);
        if obj["kind"] == "CronJob" || obj["kind"] == "Job" {
            // The apiserver kept the policy's rules (it knows the field; it
            // defaults onPodConditions' status to "True").
            let actions = |o: &Value| -> Vec<Value> {
                job_spec(o)["podFailurePolicy"]["rules"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|r| r["action"].clone())
                    .collect()
            };
            assert_eq!(
                actions(&created),
                actions(obj),
                "{}: {}",
                version.git_version,
                obj["metadata"]["name"]
            );
        }
        kinds.insert(obj["kind"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "CronJob",
            "Job",
            "Role",
            "RoleBinding",
            "Secret",
            "ServiceAccount"
        ]
    );
    // Dry run left nothing behind.
    let sas = request(
        &client,
        http::Method::GET,
        &format!("/api/v1/namespaces/{ns}/serviceaccounts"),
        None,
    )
    .await
    .unwrap();
    assert!(
        sas["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["metadata"]["name"] == "default")
    );
}

/// The Job `kubectl create job --from=cronjob/NAME JOB` makes from the
/// CronJob `cj` (its jobTemplate, the `manual` annotation, the CronJob as
/// controlling owner), with this run's variables replacing any of the same
/// name, as README "Restore" does with jq.
fn job_from_cronjob(cj: &Value, job: &str, run_env: &[(&str, &str)]) -> Value {
    let template = &cj["spec"]["jobTemplate"];
    let mut spec = template["spec"].clone();
    let env = spec["template"]["spec"]["containers"][0]["env"]
        .as_array_mut()
        .unwrap();
    env.retain(|e| !run_env.iter().any(|(k, _)| e["name"] == *k));
    env.extend(
        run_env
            .iter()
            .map(|(k, v)| json!({ "name": k, "value": v })),
    );
    json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {
            "name": job,
            "namespace": cj["metadata"]["namespace"],
            "labels": template["metadata"]["labels"],
            "annotations": { "cronjob.kubernetes.io/instantiate": "manual" },
            "ownerReferences": [{
                "apiVersion": cj["apiVersion"], "kind": "CronJob",
                "name": cj["metadata"]["name"], "uid": cj["metadata"]["uid"], "controller": true,
            }],
        },
        "spec": spec,
    })
}

/// README "Restore": the CI recipe, the shell block after the marker
/// comment that names this test.
pub(crate) fn readme_ci_restore_block() -> String {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let marker = "<!-- ci-restore: helm::restore_template_runs_a_ci_restore runs this block -->";
    let after =
        &readme[readme.find(marker).expect("the README's ci-restore marker") + marker.len()..];
    let body = after
        .trim_start()
        .strip_prefix("```sh\n")
        .expect("a sh block right after the marker");
    body[..body.find("\n```").unwrap()].to_owned()
}

/// The env of the kubestow container of a Job, name → value; a name set
/// twice fails (which one the kubelet takes is easy to get wrong).
fn job_env(job: &Value) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    for e in job["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
    {
        let name = e["name"].as_str().unwrap().to_owned();
        let value = e["value"].as_str().unwrap_or("(valueFrom)").to_owned();
        assert!(
            out.insert(name.clone(), value).is_none(),
            "{name} set twice"
        );
    }
    out
}

/// The restore template applied to the apiserver (1.20.2: batch/v1beta1; a
/// current release: batch/v1) and a restore Job created from it, as
/// `kubectl create job --from` does, carries the template's variables with
/// this run's own in place of the template's. Then README's CI recipe, run
/// as written (on 1.20 its first step is made through the API, because a
/// current kubectl reads batch/v1 CronJobs only): it creates the Job, waits
/// until it completes or fails (no kubelet here, so the Job fails at its
/// activeDeadlineSeconds) and exits non-zero, in seconds rather than at the
/// timeout of a `kubectl wait` for the wrong condition.
#[tokio::test]
async fn restore_template_runs_a_ci_restore() {
    let (client, ns) = env::namespace("helm-restore-ci").await;
    let version = env::server_version().await;
    let mut values = defaults();
    values["secret"] = json!({ "password": "ci-restore" });
    values["plans"] = json!([]);
    values["job"] = json!({ "activeDeadlineSeconds": 2 });
    values["restore"] = json!({ "enabled": true,
        "template": { "restorePoint": "2026-01-01T00:00:00Z", "namespaces": "shop" } });
    let objs = try_render(&values, version.semver(), "kubestow", &ns).unwrap();
    for obj in objs
        .iter()
        .filter(|o| o["metadata"]["namespace"].is_string())
    {
        create(&client, obj, false)
            .await
            .unwrap_or_else(|e| panic!("create {} {}: {e}", obj["kind"], obj["metadata"]["name"]));
    }
    let api = cronjob_api_version().await;
    let template_path = format!("/apis/{api}/namespaces/{ns}/cronjobs/kubestow-restore");
    let template = request(&client, http::Method::GET, &template_path, None)
        .await
        .unwrap();
    assert_eq!(template["spec"]["suspend"], true);

    // Through the API, as kubectl does.
    let run = [
        ("STOW_RESTORE_POINT", "2026-11-20T14:00:00Z"),
        ("STOW_NAMESPACE_MAP", "shop=shop-restored"),
    ];
    let made = request(
        &client,
        http::Method::POST,
        &jobs_path(&ns),
        Some(&job_from_cronjob(&template, "restore-api", &run)),
    )
    .await
    .unwrap();
    let want = |job: &Value| {
        let env = job_env(job);
        assert_eq!(env["STOW_MODE"], "restore", "{env:?}");
        assert_eq!(env["STOW_RESTORE_POINT"], "2026-11-20T14:00:00Z", "{env:?}");
        assert_eq!(env["STOW_NAMESPACE_MAP"], "shop=shop-restored", "{env:?}");
        assert_eq!(
            env["STOW_NAMESPACES"], "shop",
            "the template's, kept: {env:?}"
        );
        assert_eq!(env["STOW_REPOSITORY"], "s3://bucket/prefix", "{env:?}");
        assert_eq!(env["STOW_JOB_NAME"], "(valueFrom)", "{env:?}");
        assert_eq!(
            job["spec"]["template"]["spec"]["serviceAccountName"],
            "kubestow-restore"
        );
        assert_eq!(
            job["metadata"]["ownerReferences"][0]["uid"],
            template["metadata"]["uid"]
        );
    };
    want(&made);

    // README's recipe, as written but for the namespace, the Job's name and
    // a poll every second.
    let block = readme_ci_restore_block();
    let (first, rest) = block.split_once('\n').unwrap();
    assert!(first.starts_with("NS=kubestow RUN="), "{first}");
    for arg in [
        "--arg point 2026-11-20T14:00:00Z",
        "--arg map shop=shop-restored",
    ] {
        assert!(
            rest.contains(arg),
            "the test's run values are the README's: {arg}"
        );
    }
    // A poll a second, for up to about 6 minutes: the Job fails 2 s after
    // the job controller first syncs it, but a 1.20 controller whose pod
    // creation failed retries after 10, 20, 40, 80 and 160 s, and keeps no
    // start time until a pod exists.
    let mut script = format!("NS={ns} RUN=restore-readme\n{rest}")
        .replace("sleep 10", "sleep 1")
        .replace("$(seq 1440)", "$(seq 360)");
    if !version.at_least(21) {
        let (before, step1) = script.split_once("\n# 1.").unwrap();
        let (_, after) = step1.split_once("\n# 2.").unwrap();
        script = format!("{before}\n# 2.{after}");
        request(
            &client,
            http::Method::POST,
            &jobs_path(&ns),
            Some(&job_from_cronjob(&template, "restore-readme", &run)),
        )
        .await
        .unwrap();
    }
    for tool in ["kubectl", "jq"] {
        assert!(
            Command::new(tool).arg("--help").output().is_ok(),
            "{tool} is needed (tests/env/setup.sh installs it)"
        );
    }
    let started = Instant::now();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("bash")
            .args(["-euo", "pipefail", "-c", &script])
            .env("KUBECONFIG", env::kubeconfig_path())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    let failed = out.status.code() == Some(1)
        && stderr.contains("restore restore-readme did not complete: ")
        && stderr.contains("Failed");
    if !failed {
        // Once seen in CI only: the Job never failed. Say what the job
        // controller saw and did.
        let path = format!("{}/restore-readme", jobs_path(&ns));
        let job = request(&client, http::Method::GET, &path, None).await;
        let events = request(
            &client,
            http::Method::GET,
            &format!("/api/v1/namespaces/{ns}/events"),
            None,
        )
        .await;
        let events: Vec<String> = events
            .ok()
            .and_then(|e| e["items"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .map(|e| {
                format!(
                    "{} {}: {} {}",
                    e["involvedObject"]["kind"],
                    e["involvedObject"]["name"],
                    e["reason"],
                    e["message"]
                )
            })
            .collect();
        panic!(
            "the recipe exited {:?} after {:?}:\n{stdout}\n{stderr}\njob status: {}\nevents:\n{}\n{}",
            out.status.code(),
            started.elapsed(),
            job.map(|j| j["status"].to_string())
                .unwrap_or_else(|e| e.to_string()),
            events.join("\n"),
            env::cluster().controller_manager_report(&ns),
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(400),
        "the wait took {:?}",
        started.elapsed()
    );
    let job = request(
        &client,
        http::Method::GET,
        &format!("{}/restore-readme", jobs_path(&ns)),
        None,
    )
    .await
    .unwrap();
    want(&job);
    // The template made no Job of its own and is still suspended.
    let template = request(&client, http::Method::GET, &template_path, None)
        .await
        .unwrap();
    assert_eq!(template["spec"]["suspend"], true);
    let jobs = request(&client, http::Method::GET, &jobs_path(&ns), None)
        .await
        .unwrap();
    let mut names: Vec<&str> = jobs["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["metadata"]["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["restore-api", "restore-readme"]);
}

/// A kubeconfig file for ServiceAccount `sa` (the admin one with the token
/// swapped). Before 1.24 the token controller gives every ServiceAccount a
/// token Secret: wait for it and use it. From 1.24 on there is none, so ask
/// the TokenRequest API for one, as the kubelet does for a pod.
pub(crate) async fn service_account_kubeconfig(
    client: &kube::Client,
    ns: &str,
    sa: &str,
    dir: &Path,
) -> PathBuf {
    let token = if env::server_version().await.at_least(24) {
        requested_token(client, ns, sa).await
    } else {
        token_secret(client, ns, sa).await
    };
    let admin = std::fs::read_to_string(env::kubeconfig_path()).unwrap();
    let swapped: Vec<String> = admin
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("token:") {
                format!("    token: {token}")
            } else {
                l.to_owned()
            }
        })
        .collect();
    let path = dir.join(format!("{sa}.kubeconfig"));
    std::fs::write(&path, swapped.join("\n") + "\n").unwrap();
    path
}

/// A one-hour token for `sa` from the TokenRequest API.
async fn requested_token(client: &kube::Client, ns: &str, sa: &str) -> String {
    let review = request(
        client,
        http::Method::POST,
        &format!("/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token"),
        Some(&json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": { "expirationSeconds": 3600 }
        })),
    )
    .await
    .unwrap_or_else(|e| panic!("TokenRequest for {ns}/{sa}: {e}"));
    review["status"]["token"]
        .as_str()
        .unwrap_or_else(|| panic!("TokenRequest for {ns}/{sa} gave no token: {review}"))
        .to_owned()
}

/// The token of `sa`'s token Secret, once the token controller made it.
async fn token_secret(client: &kube::Client, ns: &str, sa: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let account = request(
            client,
            http::Method::GET,
            &format!("/api/v1/namespaces/{ns}/serviceaccounts/{sa}"),
            None,
        )
        .await
        .unwrap();
        let secret = account["secrets"][0]["name"].as_str().map(String::from);
        if let Some(secret) = secret {
            let s = request(
                client,
                http::Method::GET,
                &format!("/api/v1/namespaces/{ns}/secrets/{secret}"),
                None,
            )
            .await
            .unwrap();
            if let Some(t) = s["data"]["token"].as_str() {
                let t = base64::engine::general_purpose::STANDARD.decode(t).unwrap();
                return String::from_utf8(t).unwrap();
            }
        }
        assert!(Instant::now() < deadline, "no token Secret for {ns}/{sa}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn kube_client_from(path: &Path) -> kube::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kubeconfig = kube::config::Kubeconfig::read_from(path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    kube::Client::try_from(config).unwrap()
}

/// `SelfSubjectAccessReview`: may this client `verb` `resource` (or
/// `resource/subresource`) in `ns` (empty: cluster-scoped or every namespace)?
async fn can_i(client: &kube::Client, verb: &str, group: &str, resource: &str, ns: &str) -> bool {
    let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
    let review = json!({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": { "resourceAttributes": {
            "verb": verb, "group": group, "resource": resource,
            "subresource": subresource, "namespace": ns
        } }
    });
    let out = request(
        client,
        http::Method::POST,
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        Some(&review),
    )
    .await
    .unwrap();
    out["status"]["allowed"] == json!(true)
}

#[tokio::test]
async fn backup_service_account_backs_up_but_cannot_create_deployments_and_restore_sa_restores() {
    let (client, ns) = env::namespace("helm-rbac").await;
    let (_, app) = env::namespace("helm-rbac-app").await;
    let mut values = defaults();
    values["restore"] = json!({ "enabled": true, "namespaces": [app.clone()] });
    let version = env::server_version().await;
    let objs = try_render(&values, version.semver(), &ns, &ns).unwrap();
    for obj in &objs {
        let kind = obj["kind"].as_str().unwrap();
        if kind.contains("Role") || kind == "ServiceAccount" {
            create(&client, obj, false)
                .await
                .unwrap_or_else(|e| panic!("create {kind}: {e}"));
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let sa_named = |suffix: &str| {
        objs.iter()
            .find(|o| {
                o["kind"] == "ServiceAccount"
                    && o["metadata"]["name"].as_str().unwrap().ends_with(suffix)
            })
            .map(|o| o["metadata"]["name"].as_str().unwrap().to_owned())
            .unwrap()
    };
    let backup_sa = sa_named("-backup");
    let restore_sa = sa_named("-restore");
    let backup_kc = service_account_kubeconfig(&client, &ns, &backup_sa, dir.path()).await;
    let restore_kc = service_account_kubeconfig(&client, &ns, &restore_sa, dir.path()).await;
    let sa = kube_client_from(&backup_kc).await;

    // Reads every type it backs up, cluster-wide.
    let cronjobs = format!("/apis/{}/cronjobs", cronjob_api_version().await);
    for path in [
        "/api/v1/namespaces",
        "/api/v1/secrets",
        "/api/v1/configmaps",
        "/api/v1/persistentvolumeclaims",
        "/api/v1/persistentvolumes",
        "/api/v1/serviceaccounts",
        "/api/v1/services",
        "/apis/apps/v1/deployments",
        "/apis/apps/v1/statefulsets",
        "/apis/batch/v1/jobs",
        &cronjobs,
        "/apis/rbac.authorization.k8s.io/v1/clusterroles",
        "/apis/rbac.authorization.k8s.io/v1/rolebindings",
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
        "/apis/storage.k8s.io/v1/storageclasses",
    ] {
        request(&sa, http::Method::GET, &format!("{path}?limit=1"), None)
            .await
            .unwrap_or_else(|e| panic!("backup SA cannot list {path}: {e}"));
    }
    // In a tenant namespace, only the snapshot of a claim: movers, their
    // claims and credentials stay in kubestow's namespace.
    for (verb, group, resource) in [
        ("create", "snapshot.storage.k8s.io", "volumesnapshots"),
        ("delete", "snapshot.storage.k8s.io", "volumesnapshots"),
    ] {
        assert!(
            can_i(&sa, verb, group, resource, &app).await,
            "backup SA may not {verb} {resource}"
        );
    }
    for (verb, group, resource) in [
        ("create", "apps", "deployments"),
        ("update", "", "configmaps"),
        ("delete", "", "secrets"),
        ("update", "", "secrets"),
        ("delete", "", "serviceaccounts"),
        ("create", "rbac.authorization.k8s.io", "clusterrolebindings"),
        ("create", "", "persistentvolumeclaims"),
        ("create", "batch", "jobs"),
        ("create", "", "secrets"),
        ("create", "", "serviceaccounts"),
        ("create", "", "pods/exec"),
        ("get", "", "pods/exec"),
    ] {
        assert!(
            !can_i(&sa, verb, group, resource, &app).await,
            "backup SA may {verb} {resource}"
        );
    }
    // A real attempt is refused with 403.
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": "evil", "namespace": app },
        "spec": { "selector": { "matchLabels": { "a": "b" } },
                  "template": { "metadata": { "labels": { "a": "b" } },
                                "spec": { "containers": [{ "name": "c", "image": "x" }] } } }
    });
    match create(&sa, &deployment, false).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 403, "{s:?}"),
        other => panic!("backup SA created a Deployment: {other:?}"),
    }

    // A full backup of the app namespace with the backup SA's credentials.
    let cm = json!({ "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": "settings", "namespace": app }, "data": { "k": "v" } });
    request(
        &client,
        http::Method::POST,
        &format!("/api/v1/namespaces/{app}/configmaps"),
        Some(&cm),
    )
    .await
    .unwrap();
    let repo = format!("file://{}/repo", dir.path().display());
    let run = |mode: &str, kc: &Path| {
        let mut cmd = binary::command();
        cmd.arg(mode)
            .env("KUBECONFIG", kc)
            .env("STOW_REPOSITORY", &repo)
            .env("STOW_PASSWORD", "helm-rbac-password")
            .env("STOW_NAMESPACES", &app)
            .env("STOW_VOLUME_SOURCE", "skip");
        cmd
    };
    let mut backup = run("backup", &backup_kc);
    backup.env("STOW_INIT", "true");
    let out = binary::run(backup).await;
    assert_eq!(
        out.code,
        Some(0),
        "backup with the backup SA\n{}\n{}",
        out.stdout,
        out.stderr
    );

    // Restore with the restore SA into the (emptied) namespace.
    request(
        &client,
        http::Method::DELETE,
        &format!("/api/v1/namespaces/{app}/configmaps/settings"),
        None,
    )
    .await
    .unwrap();
    // This restore SA is scoped to the app namespace (restore.namespaces),
    // so cluster-scoped objects are left out.
    let mut restore = run("restore", &restore_kc);
    restore.env("STOW_INCLUDE_CLUSTER_RESOURCES", "false");
    let out = binary::run(restore).await;
    assert_eq!(
        out.code,
        Some(0),
        "restore with the restore SA\n{}\n{}",
        out.stdout,
        out.stderr
    );
    let back = request(
        &client,
        http::Method::GET,
        &format!("/api/v1/namespaces/{app}/configmaps/settings"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(back["data"]["k"], "v");
}

// ---------------------------------------------------------------- what the roles deny

/// The chart's ServiceAccounts and RBAC, applied to the apiserver: release
/// (and namespace) `home`, restore into `app` only, a plan whose exec hook
/// names `hooked`; `other` is a tenant namespace nothing names.
struct Applied {
    admin: kube::Client,
    home: String,
    app: String,
    hooked: String,
    other: String,
    objs: Vec<Value>,
    dir: tempfile::TempDir,
}

async fn apply_chart_rbac(hint: &str) -> Applied {
    let (admin, home) = env::namespace(hint).await;
    let (_, app) = env::namespace(&format!("{hint}-app")).await;
    let (_, hooked) = env::namespace(&format!("{hint}-hooked")).await;
    let (_, other) = env::namespace(&format!("{hint}-other")).await;
    let values = json!({
        "repository": "s3://bucket/prefix",
        "secret": { "existingSecret": "kubestow-credentials" },
        "restore": { "enabled": true, "namespaces": [app] },
        "plans": [{
            "name": "db", "schedule": { "type": "daily", "at": "02:00" },
            "preHooks": format!("timeout=30s exec:{hooked}/app=db/db:sync"),
        }],
    });
    let version = env::server_version().await;
    let objs = try_render(&values, version.semver(), &home, &home).unwrap();
    for obj in &objs {
        let kind = obj["kind"].as_str().unwrap();
        if kind.contains("Role") || kind == "ServiceAccount" {
            create(&admin, obj, false)
                .await
                .unwrap_or_else(|e| panic!("create {kind} {}: {e}", obj["metadata"]["name"]));
        }
    }
    Applied {
        admin,
        home,
        app,
        hooked,
        other,
        objs,
        dir: tempfile::tempdir().unwrap(),
    }
}

impl Applied {
    /// The ServiceAccount `<release>-<kind>`, with a client holding its token.
    async fn client(&self, kind: &str) -> (String, kube::Client) {
        let suffix = format!("-{kind}");
        let sa = self
            .objs
            .iter()
            .find(|o| {
                o["kind"] == "ServiceAccount"
                    && o["metadata"]["name"].as_str().unwrap().ends_with(&suffix)
            })
            .map(|o| o["metadata"]["name"].as_str().unwrap().to_owned())
            .unwrap_or_else(|| panic!("no {kind} ServiceAccount rendered"));
        let kc = service_account_kubeconfig(&self.admin, &self.home, &sa, self.dir.path()).await;
        (sa.clone(), kube_client_from(&kc).await)
    }
}

/// Waits until RBAC lets `client` do this (the authorizer's cache follows
/// new bindings within moments), so that a denial after it is the role's,
/// not a binding not seen yet.
async fn wait_allowed(client: &kube::Client, verb: &str, group: &str, resource: &str, ns: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !can_i(client, verb, group, resource, ns).await {
        assert!(
            Instant::now() < deadline,
            "never allowed to {verb} {resource} in {ns:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A request that RBAC must refuse: 403, never created or changed.
async fn forbidden(client: &kube::Client, method: http::Method, path: &str, body: &Value) {
    match request(client, method.clone(), path, Some(body)).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 403, "{method} {path}: {s:?}"),
        other => panic!("{method} {path} was not refused: {other:?}"),
    }
}

/// A dry-run create that RBAC allows (nothing is stored).
async fn dry_run_created(client: &kube::Client, path: &str, body: &Value) {
    request(
        client,
        http::Method::POST,
        &format!("{path}?dryRun=All"),
        Some(body),
    )
    .await
    .unwrap_or_else(|e| panic!("dry-run POST {path}: {e}"));
}

fn job_in(ns: &str) -> Value {
    json!({ "apiVersion": "batch/v1", "kind": "Job",
        "metadata": { "name": "probe", "namespace": ns },
        "spec": { "template": { "spec": { "restartPolicy": "Never",
            "containers": [{ "name": "c", "image": "kubestow:test" }] } } } })
}

fn pod_in(ns: &str) -> Value {
    json!({ "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": "probe", "namespace": ns },
        "spec": { "containers": [{ "name": "c", "image": "kubestow:test" }] } })
}

fn jobs_path(ns: &str) -> String {
    format!("/apis/batch/v1/namespaces/{ns}/jobs")
}

/// The backup SA runs movers in its own namespace only: no pod, Job,
/// Secret or ServiceAccount of its in a tenant namespace; exec only where
/// a hook names; no GET subresource that would run or reach anything.
#[tokio::test]
async fn backup_role_creates_movers_at_home_only_and_execs_only_where_hooks_name() {
    let a = apply_chart_rbac("rbac-backup").await;
    let (_, sa) = a.client("backup").await;
    let (home, app, hooked, other) = (&a.home, &a.app, &a.hooked, &a.other);
    wait_allowed(&sa, "create", "batch", "jobs", home).await;

    // Mover Jobs in its own namespace, nowhere else; pods never directly.
    dry_run_created(&sa, &jobs_path(home), &job_in(home)).await;
    forbidden(&sa, http::Method::POST, &jobs_path(app), &job_in(app)).await;
    forbidden(&sa, http::Method::POST, &jobs_path(other), &job_in(other)).await;
    for ns in [app, home] {
        forbidden(
            &sa,
            http::Method::POST,
            &format!("/api/v1/namespaces/{ns}/pods"),
            &pod_in(ns),
        )
        .await;
    }
    // Claims at home only (a tenant gets nothing of kubestow's but the
    // snapshot of its own claim).
    assert!(can_i(&sa, "create", "", "persistentvolumeclaims", home).await);
    assert!(!can_i(&sa, "create", "", "persistentvolumeclaims", app).await);
    assert!(
        can_i(
            &sa,
            "create",
            "snapshot.storage.k8s.io",
            "volumesnapshots",
            app
        )
        .await
    );
    // Cluster-scoped: snapshot contents and read-only copies of volumes.
    assert!(
        can_i(
            &sa,
            "create",
            "snapshot.storage.k8s.io",
            "volumesnapshotcontents",
            ""
        )
        .await
    );
    assert!(can_i(&sa, "create", "", "persistentvolumes", "").await);
    assert!(!can_i(&sa, "patch", "", "persistentvolumes", "").await);

    // Secrets: it reads them (it backs them up), never writes one.
    let secret = |ns: &str| {
        json!({ "apiVersion": "v1", "kind": "Secret",
            "metadata": { "name": "tenant-secret", "namespace": ns },
            "stringData": { "k": "v" } })
    };
    request(
        &a.admin,
        http::Method::POST,
        &format!("/api/v1/namespaces/{app}/secrets"),
        Some(&secret(app)),
    )
    .await
    .unwrap();
    request(
        &sa,
        http::Method::GET,
        &format!("/api/v1/namespaces/{app}/secrets/tenant-secret"),
        None,
    )
    .await
    .expect("the backup SA reads the Secrets it backs up");
    forbidden(
        &sa,
        http::Method::POST,
        &format!("/api/v1/namespaces/{app}/secrets"),
        &json!({ "apiVersion": "v1", "kind": "Secret",
                 "metadata": { "name": "mover-credentials" }, "stringData": { "k": "v" } }),
    )
    .await;
    forbidden(
        &sa,
        http::Method::PUT,
        &format!("/api/v1/namespaces/{app}/secrets/tenant-secret"),
        &secret(app),
    )
    .await;
    for ns in [app, home] {
        forbidden(
            &sa,
            http::Method::POST,
            &format!("/api/v1/namespaces/{ns}/secrets"),
            &json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "x" } }),
        )
        .await;
        forbidden(
            &sa,
            http::Method::POST,
            &format!("/api/v1/namespaces/{ns}/serviceaccounts"),
            &json!({ "apiVersion": "v1", "kind": "ServiceAccount", "metadata": { "name": "mover" } }),
        )
        .await;
    }
    assert!(!can_i(&sa, "create", "", "serviceaccounts", "").await);
    assert!(!can_i(&sa, "create", "", "secrets", "").await);

    // Exec (WebSocket: `get`; 1.35+ also `create`) where the hook names.
    for verb in ["get", "create"] {
        assert!(can_i(&sa, verb, "", "pods/exec", hooked).await, "{verb}");
        for ns in [app, other, home] {
            assert!(
                !can_i(&sa, verb, "", "pods/exec", ns).await,
                "{verb} pods/exec in {ns}"
            );
        }
    }
    // No GET subresource that runs a command or reaches a service.
    for sub in [
        "pods/attach",
        "pods/portforward",
        "pods/proxy",
        "services/proxy",
    ] {
        assert!(!can_i(&sa, "get", "", sub, other).await, "get {sub}");
    }
    assert!(!can_i(&sa, "get", "", "nodes/proxy", "").await);
    // No RBAC changes.
    for (verb, resource) in [
        ("create", "rolebindings"),
        ("create", "clusterrolebindings"),
        ("bind", "clusterroles"),
        ("escalate", "clusterroles"),
    ] {
        assert!(
            !can_i(&sa, verb, "rbac.authorization.k8s.io", resource, home).await,
            "{verb} {resource}"
        );
    }
}

/// With `restore.namespaces`, the restore SA writes there, hands volumes
/// over (PersistentVolume patch) and runs movers at home; nothing else.
#[tokio::test]
async fn restore_role_writes_only_in_its_namespaces_and_runs_movers_at_home() {
    let a = apply_chart_rbac("rbac-restore").await;
    let (_, sa) = a.client("restore").await;
    let (home, app, hooked, other) = (&a.home, &a.app, &a.hooked, &a.other);
    wait_allowed(&sa, "create", "", "configmaps", app).await;
    let cm = |ns: &str| {
        json!({ "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": { "name": "restored", "namespace": ns }, "data": { "k": "v" } })
    };
    dry_run_created(
        &sa,
        &format!("/api/v1/namespaces/{app}/configmaps"),
        &cm(app),
    )
    .await;
    for ns in [other, home, hooked] {
        forbidden(
            &sa,
            http::Method::POST,
            &format!("/api/v1/namespaces/{ns}/configmaps"),
            &cm(ns),
        )
        .await;
    }
    // Jobs: its namespaces (it restores workloads) and home (movers) only.
    dry_run_created(&sa, &jobs_path(app), &job_in(app)).await;
    wait_allowed(&sa, "create", "batch", "jobs", home).await;
    dry_run_created(&sa, &jobs_path(home), &job_in(home)).await;
    for ns in [other, hooked] {
        forbidden(&sa, http::Method::POST, &jobs_path(ns), &job_in(ns)).await;
    }
    // The hand-over: get/patch PersistentVolumes, not create or delete.
    assert!(can_i(&sa, "patch", "", "persistentvolumes", "").await);
    assert!(can_i(&sa, "get", "", "persistentvolumes", "").await);
    for verb in ["create", "delete", "update"] {
        assert!(
            !can_i(&sa, verb, "", "persistentvolumes", "").await,
            "{verb} persistentvolumes"
        );
    }
    // No credentials copied home, no exec or Secrets outside its namespaces.
    assert!(!can_i(&sa, "create", "", "secrets", home).await);
    assert!(!can_i(&sa, "create", "", "secrets", other).await);
    for verb in ["get", "create"] {
        assert!(!can_i(&sa, verb, "", "pods/exec", other).await, "{verb}");
    }
    assert!(!can_i(&sa, "get", "", "nodes/proxy", "").await);
}

/// Mover pods run as the mover SA: no API access at all.
#[tokio::test]
async fn mover_account_has_no_api_access() {
    let a = apply_chart_rbac("rbac-mover").await;
    let (mover, sa) = a.client("mover").await;
    // Nothing binds it: its access cannot be waiting for a binding.
    for obj in &a.objs {
        let subjects = obj["subjects"].as_array().into_iter().flatten();
        for s in subjects {
            assert_ne!(s["name"], mover.as_str(), "{obj}");
        }
    }
    let credentials = json!({ "apiVersion": "v1", "kind": "Secret",
        "metadata": { "name": "kubestow-credentials" }, "stringData": { "STOW_PASSWORD": "x" } });
    request(
        &a.admin,
        http::Method::POST,
        &format!("/api/v1/namespaces/{}/secrets", a.home),
        Some(&credentials),
    )
    .await
    .unwrap();
    for path in [
        format!("/api/v1/namespaces/{}/secrets", a.home),
        format!("/api/v1/namespaces/{}/secrets/kubestow-credentials", a.home),
        format!("/api/v1/namespaces/{}/secrets", a.app),
        "/api/v1/secrets".to_owned(),
        format!("/api/v1/namespaces/{}/configmaps", a.home),
        format!("/api/v1/namespaces/{}/pods", a.home),
    ] {
        match request(&sa, http::Method::GET, &path, None).await {
            Err(kube::Error::Api(s)) => assert_eq!(s.code, 403, "GET {path}: {s:?}"),
            other => panic!("the mover SA read {path}: {other:?}"),
        }
    }
}

/// Exec is bound in exactly the namespaces the hooks name, in every form
/// kubestow accepts; volume rules follow `volumeSource`; movers run as
/// the mover SA.
#[test]
fn chart_rbac_follows_hooks_and_volume_sources() {
    let bindings = |objs: &[Value], role: &str| -> Vec<String> {
        let mut ns: Vec<String> = objs
            .iter()
            .filter(|o| o["kind"] == "RoleBinding" && o["roleRef"]["name"] == role)
            .map(|o| o["metadata"]["namespace"].as_str().unwrap().to_owned())
            .collect();
        ns.sort();
        ns
    };
    let rules = |objs: &[Value], kind: &str, name: &str| -> Vec<(String, String)> {
        find(objs, kind, name)["rules"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| {
                let verbs: Vec<String> = r["verbs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap().to_owned())
                    .collect();
                // `resource.group`; core resources without a group.
                let mut names = Vec::new();
                for g in r["apiGroups"].as_array().unwrap() {
                    for res in r["resources"].as_array().unwrap() {
                        let (g, res) = (g.as_str().unwrap(), res.as_str().unwrap());
                        names.push(if g.is_empty() {
                            res.to_owned()
                        } else {
                            format!("{res}.{g}")
                        });
                    }
                }
                names
                    .into_iter()
                    .flat_map(move |res| verbs.clone().into_iter().map(move |v| (v, res.clone())))
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let mut a = plan("a", json!({ "type": "daily" }));
    a["preHooks"] = json!(
        "timeout=5s scope=volume exec:shop/app=db/db:fsfreeze -f /d\n\
                           # exec:commented/a=b/c:true\n\
                           sh -c 'echo exec:local/'"
    );
    a["postHooks"] = json!([{ "exec": { "namespace": "post", "selector": "a=b", "container": "c" },
                              "command": ["true"] }, { "command": ["sync"] }]);
    let mut b = plan("b", json!({ "type": "daily" }));
    b["precondition"] = json!({ "exec": { "namespace": "pre", "selector": "a=b", "container": "c" },
                                "command": ["true"] });
    b["volumeSource"] = json!("snapshot");
    let mut values = with_plans(vec![a, b]);
    values["restore"] = json!({ "enabled": true, "namespaces": ["app"],
        "template": { "env": { "STOW_PRE_HOOKS": "exec:rst/a=b/c:true" } } });
    let objs = render(&values, "1.30.0");
    assert_eq!(
        bindings(&objs, "kubestow-kubestow-exec"),
        ["post", "pre", "rst", "shop"]
    );
    let exec = rules(&objs, "ClusterRole", "kubestow-kubestow-exec");
    assert!(
        exec.contains(&("get".into(), "pods/exec".into())),
        "{exec:?}"
    );
    assert!(
        exec.contains(&("create".into(), "pods/exec".into())),
        "{exec:?}"
    );
    // Plan a (auto) may use shadow volumes; snapshots for both.
    let backup = rules(&objs, "ClusterRole", "kubestow-kubestow-backup");
    for want in [
        ("create", "persistentvolumes"),
        ("create", "volumesnapshotcontents.snapshot.storage.k8s.io"),
        ("create", "volumesnapshots.snapshot.storage.k8s.io"),
        ("get", "secrets"),
        ("list", "*.*"),
    ] {
        assert!(
            backup.contains(&(want.0.into(), want.1.into())),
            "{want:?} {backup:?}"
        );
    }
    // get on every core resource would include pods/exec and nodes/proxy.
    for wild in ["*", "*.*"] {
        assert!(!backup.contains(&("get".into(), wild.into())), "{backup:?}");
    }
    let cj = find(&objs, "CronJob", "kubestow-a");
    assert_eq!(
        env_of(cj, "STOW_MOVER_SERVICE_ACCOUNT").as_deref(),
        Some("kubestow-mover")
    );
    let template = find(&objs, "CronJob", "kubestow-restore");
    assert_eq!(
        env_of(template, "STOW_MOVER_SERVICE_ACCOUNT").as_deref(),
        Some("kubestow-mover")
    );
    // The backup account may patch the plans' CronJobs (STOW_ONCE), by name,
    // and not the restore template: that would run a Job as the restore SA.
    let role = find(&objs, "Role", "kubestow-backup");
    let cronjobs: Vec<&Value> = role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["resources"] == json!(["cronjobs"]))
        .collect();
    assert_eq!(cronjobs.len(), 1, "{role:#}");
    assert_eq!(
        cronjobs[0]["resourceNames"],
        json!(["kubestow-a", "kubestow-b"])
    );

    // No hooks: no exec at all. Snapshots only: no PersistentVolumes.
    let mut snap = plan("s", json!({ "type": "daily" }));
    snap["volumeSource"] = json!("snapshot");
    let objs = render(&with_plans(vec![snap]), "1.30.0");
    assert!(
        objs.iter()
            .all(|o| !o["metadata"]["name"].as_str().unwrap().ends_with("-exec")),
        "exec rendered without hooks"
    );
    let backup = rules(&objs, "ClusterRole", "kubestow-kubestow-backup");
    assert!(
        !backup.contains(&("create".into(), "persistentvolumes".into())),
        "{backup:?}"
    );
    // No volume data: no writes at all but suspending its CronJob and
    // recording its Events.
    let mut skip = plan("k", json!({ "type": "daily" }));
    skip["volumeSource"] = json!("skip");
    let objs = render(&with_plans(vec![skip]), "1.30.0");
    let backup = rules(&objs, "ClusterRole", "kubestow-kubestow-backup");
    assert!(
        backup
            .iter()
            .all(|(v, _)| v == "get" || v == "list" || v == "watch"),
        "{backup:?}"
    );
    assert_eq!(
        rules(&objs, "Role", "kubestow-backup"),
        [
            ("get".into(), "cronjobs.batch".into()),
            ("patch".into(), "cronjobs.batch".into()),
            ("create".into(), "events".into())
        ]
    );
    // A glob is no namespace: rendering fails rather than binding "*".
    let mut glob = plan("g", json!({ "type": "daily" }));
    glob["preHooks"] = json!("exec:shop-*/app=db/db:sync");
    let e = try_render(&with_plans(vec![glob]), "1.30.0", "kubestow", "kubestow").unwrap_err();
    assert!(e.contains("not a namespace name"), "{e}");
}

// ---------------------------------------------------------------- container image

/// The image (images/build.sh, images/Containerfile) is `FROM scratch` plus
/// the libraries `ldd` lists for the binary. Keep that list to glibc (libc,
/// libm, libpthread, libdl, librt, the loader) and libgcc_s, the same set as
/// distroless/cc: no OpenSSL, no libz.
#[test]
fn binary_links_only_what_distroless_cc_provides() {
    let bin = env!("CARGO_BIN_EXE_kubestow");
    let out = Command::new("ldd").arg(bin).output().expect("ldd");
    assert!(out.status.success(), "ldd {bin} failed");
    let text = String::from_utf8(out.stdout).unwrap();
    let allowed = [
        "linux-vdso.so",
        "libc.so.6",
        "libm.so.6",
        "libgcc_s.so.1",
        "libpthread.so.0",
        "libdl.so.2",
        "librt.so.1",
        "ld-linux-x86-64.so.2",
        "ld-linux-aarch64.so.1",
    ];
    let mut seen = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let lib = line.split_whitespace().next().unwrap();
        let name = lib.rsplit('/').next().unwrap();
        assert!(
            allowed.iter().any(|a| name.starts_with(a)),
            "{name} is not glibc or libgcc_s:\n{text}"
        );
        seen.push(name.to_owned());
    }
    assert!(seen.iter().any(|n| n == "libc.so.6"), "{text}");
    // One recipe: no base image to pull, the non-root user, the binary as entrypoint.
    let containerfile = std::fs::read_to_string(root().join("images/Containerfile")).unwrap();
    assert!(containerfile.contains("FROM scratch"));
    assert!(containerfile.contains("USER 65532:65532"));
    assert!(containerfile.contains(r#"ENTRYPOINT ["/usr/local/bin/kubestow"]"#));
    let mut recipes: Vec<String> = std::fs::read_dir(root().join("images"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    recipes.sort();
    assert_eq!(recipes, ["Containerfile", "build.sh"]);
}

#[test]
fn chart_passes_helm_lint_strict() {
    let out = Command::new("python3")
        .arg(root().join("tests/helm/render.py"))
        .args(["lint", "1.20.2", "1.27.0", "1.33.0", "1.37.2"])
        .output()
        .unwrap();
    let reports: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("lint: {}", String::from_utf8_lossy(&out.stderr)));
    for (version, report) in reports.as_object().unwrap() {
        assert_eq!(report["errors"], json!([]), "{version}: {report:#}");
        for m in report["messages"].as_array().unwrap() {
            assert!(
                m["severity"].as_u64().unwrap() < 2,
                "{version}: helm lint: {m}"
            );
        }
    }
}

/// The optional PrometheusRule: a too-old rule per scheduled plan (none for
/// an immediate one), checked by promtool, whose rule tests feed it the
/// series kubestow pushes (names and grouping labels of src/run/metrics.rs)
/// and assert which alerts fire when.
#[test]
fn prometheus_rule_alerts_fire_on_the_series_kubestow_pushes() {
    let mut nightly = plan("nightly", json!({"type": "daily", "at": "02:00"}));
    nightly["alertAfterHours"] = json!(2);
    let mut values = with_plans(vec![
        nightly,
        plan("weekly", json!({"type": "weekly", "days": ["sun"]})),
        plan("now", json!({"type": "immediate"})),
    ]);
    assert!(
        !render(&values, "1.37.2")
            .iter()
            .any(|o| o["kind"] == "PrometheusRule"),
        "off by default"
    );
    values["prometheusRule"] = json!({"enabled": true, "labels": {"release": "prom"},
        "durationWindow": "1h"});
    let objs = render(&values, "1.37.2");
    let rule = find(&objs, "PrometheusRule", "kubestow");
    assert_eq!(rule["metadata"]["labels"]["release"], "prom");
    let rules = rule["spec"]["groups"][0]["rules"].as_array().unwrap();
    let alerts: Vec<&str> = rules.iter().map(|r| r["alert"].as_str().unwrap()).collect();
    assert_eq!(
        alerts,
        [
            "KubestowBackupTooOld",
            "KubestowBackupTooOld",
            "KubestowRunFailed",
            "KubestowBackupSlower"
        ]
    );
    assert!(rules[0]["expr"].as_str().unwrap().contains("> 7200"));
    assert!(rules[1]["expr"].as_str().unwrap().contains("> 93600"));

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rules.yaml"),
        serde_json::to_string(&rule["spec"]).unwrap(),
    )
    .unwrap();
    let series = |name: &str, labels: &str, values: &str| {
        format!(
            "      - series: '{name}{{job=\"kubestow\",cluster=\"default\",{labels}}}'\n        values: '{values}'\n"
        )
    };
    let mut tests = String::from(
        "rule_files: [rules.yaml]\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n",
    );
    // nightly succeeded at time 0; weekly never reported a success.
    tests += &series(
        "kubestow_last_success_timestamp_seconds",
        "plan=\"nightly\",mode=\"backup\"",
        "0x300",
    );
    // weekly's backup failed from minute 2 on; nightly's check succeeded.
    tests += &series(
        "kubestow_run_status",
        "plan=\"weekly\",mode=\"backup\",status=\"failed\"",
        "0 0 1x300",
    );
    tests += &series(
        "kubestow_run_status",
        "plan=\"weekly\",mode=\"backup\",status=\"success\"",
        "1 1 0x300",
    );
    tests += &series(
        "kubestow_run_status",
        "plan=\"nightly\",mode=\"check\",status=\"success\"",
        "1x300",
    );
    // nightly's backups took 100 s, then 1000 s from minute 121 on.
    tests += &series(
        "kubestow_run_duration_seconds",
        "plan=\"nightly\",mode=\"backup\"",
        "100x120 1000x180",
    );
    tests += r#"    alert_rule_test:
      - {eval_time: 1h, alertname: KubestowBackupTooOld, exp_alerts: []}
      - eval_time: 3h
        alertname: KubestowBackupTooOld
        exp_alerts:
          - exp_labels: {severity: warning, plan: nightly, cluster: default}
            exp_annotations:
              summary: "kubestow plan nightly has no successful backup for 2 hours"
              description: "The last successful backup of plan nightly in cluster default ended 3h 0m 0s ago."
      - {eval_time: 1m, alertname: KubestowRunFailed, exp_alerts: []}
      - eval_time: 3m
        alertname: KubestowRunFailed
        exp_alerts:
          - exp_labels: {severity: warning, plan: weekly, mode: backup, cluster: default}
            exp_annotations:
              summary: "kubestow backup of plan weekly did not succeed"
              description: "The last backup run of plan weekly in cluster default ended failed, partial or cancelled; its summary and Events are on its Job."
      - {eval_time: 100m, alertname: KubestowBackupSlower, exp_alerts: []}
      - eval_time: 125m
        alertname: KubestowBackupSlower
        exp_alerts:
          - exp_labels: {severity: warning, plan: nightly, cluster: default}
            exp_annotations:
              summary: "kubestow backups of plan nightly are getting slower"
              description: "The last backup of plan nightly in cluster default took 16m 40s, more than 2 times its average over 1h."
"#;
    std::fs::write(dir.path().join("tests.yaml"), tests).unwrap();
    for args in [
        vec!["check", "rules", "rules.yaml"],
        vec!["test", "rules", "tests.yaml"],
    ] {
        let out = Command::new("promtool")
            .args(&args)
            .current_dir(dir.path())
            .output()
            .expect("promtool is needed (tests/env/setup.sh installs prometheus)");
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `caBundle`: the ConfigMap (or Secret) mounted read-only in every pod the
/// chart makes and named by SSL_CERT_FILE, which mover Jobs inherit with the
/// mount; both set fails the render.
#[test]
fn a_ca_bundle_is_mounted_in_every_pod_and_named_by_ssl_cert_file() {
    let mut values = with_plans(vec![
        plan("nightly", json!({"type": "daily"})),
        plan("now", json!({"type": "immediate"})),
    ]);
    values["restore"] = json!({"enabled": true});
    values["caBundle"] = json!({"configMap": "s3-ca", "key": "root.pem"});
    let objs = render(&values, "1.37.2");
    let workloads: Vec<&Value> = objs
        .iter()
        .filter(|o| o["kind"] == "CronJob" || o["kind"] == "Job")
        .collect();
    assert!(workloads.len() >= 3, "{}", workloads.len());
    for w in workloads {
        let spec = pod_spec(w);
        assert_eq!(
            env_of(w, "SSL_CERT_FILE").as_deref(),
            Some("/etc/kubestow/ca/root.pem"),
            "{}",
            w["metadata"]["name"]
        );
        let mount = spec["containers"][0]["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "ca-bundle")
            .unwrap();
        assert_eq!(mount["mountPath"], "/etc/kubestow/ca");
        assert_eq!(mount["readOnly"], true);
        let vol = spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "ca-bundle")
            .unwrap();
        assert_eq!(vol["configMap"]["name"], "s3-ca");
    }
    values["caBundle"] = json!({"secret": "s3-ca"});
    let objs = render(&values, "1.37.2");
    let cj = find(&objs, "CronJob", "kubestow-nightly");
    assert_eq!(
        env_of(cj, "SSL_CERT_FILE").as_deref(),
        Some("/etc/kubestow/ca/ca.crt")
    );
    assert!(
        pod_spec(cj)["volumes"]
            .to_string()
            .contains("\"secretName\":\"s3-ca\"")
    );
    values["caBundle"] = json!({"secret": "a", "configMap": "b"});
    let err = try_render(&values, "1.37.2", "kubestow", "kubestow").unwrap_err();
    assert!(
        err.contains("caBundle: set configMap or secret, not both"),
        "{err}"
    );
    values.as_object_mut().unwrap().remove("caBundle");
    let objs = render(&values, "1.37.2");
    let cj = find(&objs, "CronJob", "kubestow-nightly");
    assert_eq!(env_of(cj, "SSL_CERT_FILE"), None);
}
