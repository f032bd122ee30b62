//! `just demo`: kubestow on a real node, end to end.
//!
//! It starts a one-node Kubernetes 1.37 cluster (kubelet, containerd,
//! kube-proxy, a CSI driver with snapshots) and a Garage S3 server, all in a
//! network namespace on this machine (the same fixture the node tests use),
//! deploys a sample shop whose database has data on a CSI volume, installs
//! the kubestow chart with Helm, backs the shop up with a Job made from the
//! plan's CronJob, deletes the namespace, restores it with a Job made from
//! the chart's restore template, and checks that every object and every
//! byte came back.
//! Every kubestow pod runs the image from `just image`.

use std::collections::BTreeMap;

use serde_json::{Value, json};

// The integration tests' fixture (it allows its own dead code), reused so
// the demo and the tests cannot drift.
#[path = "../tests/integration/env/mod.rs"]
mod env;

use env::node::{
    self, create_job_from_cronjob, create_restore_job, digest, fill, helm, job_summary, kubectl,
    kubectl_json, values, wait_job, wait_until,
};

/// The objects of examples/demo-app.yaml in namespace `shop`, plus the PVC
/// the StatefulSet controller made from its claim template.
const OBJECTS: &[&str] = &[
    "configmap/shop-config",
    "secret/shop-db-credentials",
    "serviceaccount/shop-api",
    "role.rbac.authorization.k8s.io/config-reader",
    "rolebinding.rbac.authorization.k8s.io/shop-api-reads-config",
    "deployment.apps/web",
    "statefulset.apps/db",
    "service/web",
    "service/web-public",
    "service/db",
    "cronjob.batch/nightly-report",
    "widget.demo.kubestow.io/storefront-banner",
    "persistentvolumeclaim/data-db-0",
];

/// kubestow's own namespace, where its movers run: Pod Security `baseline`
/// (movers read files of any owner as root with DAC_OVERRIDE).
const SYSTEM: &str = "kubestow";

fn step(n: u32, text: &str) {
    println!("\n\x1b[1m{n}. {text}\x1b[0m");
}

fn fail(msg: &str) -> ! {
    eprintln!("\ndemo failed: {msg}");
    std::process::exit(1);
}

fn show(summary: &Value) {
    println!(
        "   status {}, {:.1} s",
        summary["status"],
        summary["duration_seconds"].as_f64().unwrap_or(0.0)
    );
    println!("   counts: {}", summary["counts"]);
    println!("   bytes:  {}", summary["bytes"]);
    if summary["status"] != "success" {
        fail(&format!("the run did not succeed: {summary}"));
    }
}

fn ready(kind: &str, name: &str, want: u64) {
    wait_until(
        &format!("{kind}/{name} ready"),
        std::time::Duration::from_secs(180),
        || {
            let o = kubectl_json(&["-n", "shop", "get", kind, name]);
            (o["status"]["readyReplicas"].as_u64() == Some(want)).then_some(())
        },
    );
}

/// The parts of an object a user cares about: what the server assigns
/// (ids, versions, timestamps, status, allocated IPs, generated token
/// references) is left out; everything else must match exactly.
fn normalise(mut v: Value) -> Value {
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        for k in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "managedFields",
            "generation",
            "selfLink",
            "namespace",
        ] {
            meta.remove(k);
        }
        if let Some(a) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
            // Set by controllers, not by the user: the binding, and the
            // provisioner of a claim that was provisioned (a restored
            // claim is bound to the volume filled for it instead).
            a.retain(|k, _| {
                !k.starts_with("pv.kubernetes.io/")
                    && !k.starts_with("volume.beta.kubernetes.io/")
                    && k != "volume.kubernetes.io/storage-provisioner"
                    && k != "deployment.kubernetes.io/revision"
            });
            if a.is_empty() {
                meta.remove("annotations");
            }
        }
    }
    if let Some(o) = v.as_object_mut() {
        o.remove("status");
        if o.get("kind") == Some(&Value::from("ServiceAccount")) {
            o.remove("secrets");
        }
    }
    if let Some(spec) = v.get_mut("spec").and_then(Value::as_object_mut) {
        if spec.get("clusterIP") != Some(&Value::from("None")) {
            spec.remove("clusterIP");
            spec.remove("clusterIPs");
        }
        spec.remove("volumeName");
    }
    v
}

fn snapshot_objects() -> Vec<(String, Value)> {
    OBJECTS
        .iter()
        .map(|o| {
            let mut cmd = node::get().kubectl();
            let out = cmd
                .args(["get", "-n", "shop", o, "-o", "json"])
                .output()
                .expect("kubectl");
            let v = if out.status.success() {
                serde_json::from_slice(&out.stdout).unwrap_or_default()
            } else {
                Value::Null
            };
            (o.to_string(), normalise(v))
        })
        .collect()
}

fn main() {
    println!("kubestow demo: back up a namespace with its data, lose it, get it back.");

    step(
        1,
        "Start a real one-node cluster (Kubernetes 1.37) and an S3 server",
    );
    let started = std::time::Instant::now();
    let n = node::get();
    println!(
        "   {}",
        kubectl(&["get", "nodes", "-o", "wide"])
            .lines()
            .collect::<Vec<_>>()
            .join("\n   ")
    );
    println!(
        "   Garage S3 at {}; ready in {:.1?}",
        n.s3("AWS_ENDPOINT_URL"),
        started.elapsed()
    );
    println!("   kubeconfig: {}", n.kubeconfig().display());

    step(
        2,
        "Deploy the sample shop (examples/demo-app.yaml) and give its database some data",
    );
    let app = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/demo-app.yaml");
    // The Widget needs its CRD established first: apply, wait, apply again.
    let _ = n.kubectl().args(["apply", "-f", app]).output();
    kubectl(&[
        "wait",
        "--for",
        "condition=established",
        "--timeout=60s",
        "crd/widgets.demo.kubestow.io",
    ]);
    for line in kubectl(&["apply", "-f", app]).lines() {
        println!("   {line}");
    }
    ready("statefulset", "db", 1);
    ready("deployment", "web", 2);
    let db = node::claim_dir("shop", "data-db-0");
    fill(&db, 42, 5_000_000);
    let data_before = digest(&db);
    println!(
        "   wrote {} files and directories to the database's volume (data-db-0, CSI)",
        data_before.len()
    );
    let before = snapshot_objects();
    if let Some((name, _)) = before.iter().find(|(_, v)| v.is_null()) {
        fail(&format!("{name} was not created"));
    }

    step(
        3,
        "Install the kubestow chart with Helm: one plan for namespace shop",
    );
    node::namespace(SYSTEM, "baseline");
    let password = node::random_password();
    let plans = json!([{
        "name": "shop",
        "schedule": {"type": "daily", "at": "02:00"},
        "namespaces": "shop",
        "init": true,
        // CSI snapshots; `auto` could also pick the kubelet source, which
        // needs kubestow's namespace at `privileged`.
        "volumeSource": "snapshot",
    }]);
    helm("install", SYSTEM, "demo", &values(SYSTEM, &password, plans));
    println!(
        "   {}",
        kubectl(&["-n", SYSTEM, "get", "cronjobs"])
            .lines()
            .collect::<Vec<_>>()
            .join("\n   ")
    );
    let cronjob = kubectl_json(&[
        "-n",
        SYSTEM,
        "get",
        "cronjobs",
        "-l",
        "app.kubernetes.io/component=backup",
    ])["items"][0]["metadata"]["name"]
        .as_str()
        .unwrap_or_else(|| fail("the chart made no CronJob"))
        .to_owned();

    step(
        4,
        "Back up now: kubectl create job --from=cronjob/... (the image runs it)",
    );
    create_job_from_cronjob(SYSTEM, &cronjob, "backup-now");
    wait_job(SYSTEM, "backup-now");
    let summary = job_summary(SYSTEM, "backup-now");
    show(&summary);
    println!(
        "   volume sources: {}",
        summary["details"]["volumes"]["sources"]
    );

    step(5, "Disaster: delete namespace shop, its volume included");
    kubectl(&[
        "delete",
        "namespace",
        "shop",
        "--wait=true",
        "--timeout=180s",
    ]);
    wait_until(
        "the shop's volume to go",
        std::time::Duration::from_secs(120),
        || {
            let pvs = kubectl_json(&["get", "pv"]);
            (!pvs["items"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["spec"]["claimRef"]["namespace"] == "shop"))
            .then_some(())
        },
    );
    println!("   namespace shop and its volume are gone");

    step(
        6,
        "Restore: a Job from the chart's restore template (kubectl create job --from=cronjob/demo-kubestow-restore)",
    );
    create_restore_job(
        SYSTEM,
        "demo-kubestow-restore",
        "restore-shop",
        &[("STOW_NAMESPACES", "shop")],
    );
    wait_job(SYSTEM, "restore-shop");
    show(&job_summary(SYSTEM, "restore-shop"));
    ready("statefulset", "db", 1);
    ready("deployment", "web", 2);

    step(
        7,
        "Verify: every object is back, equal apart from what the server assigns, and every byte",
    );
    let after = snapshot_objects();
    let mut differ = 0;
    for ((name, a), (_, b)) in before.iter().zip(&after) {
        if a == b {
            println!("   \x1b[32m✓\x1b[0m {name}");
        } else {
            differ += 1;
            println!("   \x1b[31m✗\x1b[0m {name}\n      before: {a}\n      after:  {b}");
        }
    }
    let data_after: BTreeMap<String, String> = digest(&node::claim_dir("shop", "data-db-0"));
    if data_after == data_before {
        println!(
            "   \x1b[32m✓\x1b[0m data-db-0: {} entries, contents, modes and owners identical",
            data_after.len()
        );
    } else {
        differ += 1;
        println!(
            "   \x1b[31m✗\x1b[0m data-db-0 differs:\n      before: {data_before:?}\n      after:  {data_after:?}"
        );
    }
    if differ > 0 {
        fail(&format!("{differ} item(s) differ"));
    }
    println!(
        "\nAll {} objects and the volume's data restored identically. The node goes away when the demo exits.",
        after.len()
    );
}
