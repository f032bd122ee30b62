//! `just demo`: kubestow against a real cluster and S3 server, end to end.
//!
//! It starts etcd, kube-apiserver, kube-controller-manager and Garage on
//! loopback (the same fixture the integration tests use), deploys a sample
//! shop, backs it up, deletes its namespace, restores it and checks that
//! every object came back. kubestow runs the way a CronJob would run it:
//! configured only by environment variables, one operation, a JSON summary
//! and an exit code.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

// The integration tests' fixture (it allows its own dead code), reused so
// the demo and the tests cannot drift.
#[path = "../tests/integration/env/mod.rs"]
mod env;

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

fn step(n: u32, text: &str) {
    println!("\n\x1b[1m{n}. {text}\x1b[0m");
}

fn fail(msg: &str) -> ! {
    eprintln!("\ndemo failed: {msg}");
    std::process::exit(1);
}

/// `target/<profile>/kubestow`, beside `target/<profile>/examples/demo`.
fn kubestow_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    let bin = exe
        .parent()
        .and_then(|p| p.parent())
        .expect("target dir")
        .join("kubestow");
    if !bin.exists() {
        fail(&format!(
            "{} is missing; run `cargo build` first (just demo does)",
            bin.display()
        ));
    }
    bin
}

fn kubectl(args: &[&str]) -> (bool, String) {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(env::kubeconfig_path())
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            fail(&format!(
                "cannot run kubectl ({e}); `just setup` installs it"
            ))
        });
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn kubectl_ok(args: &[&str]) -> String {
    let (ok, text) = kubectl(args);
    if !ok {
        fail(&format!("kubectl {}: {text}", args.join(" ")));
    }
    text
}

/// Runs kubestow with the given variables, echoing the command and its log.
fn kubestow(vars: &[(&str, String)], mode: &str) -> (i32, Value) {
    let mut cmd = Command::new(kubestow_binary());
    cmd.arg(mode).env("KUBECONFIG", env::kubeconfig_path());
    for (k, v) in env::s3_env()
        .into_iter()
        .chain(vars.iter().map(|(k, v)| (*k, v.clone())))
    {
        cmd.env(k, v);
    }
    let shown: Vec<String> = vars
        .iter()
        .map(|(k, v)| {
            if k.contains("PASSWORD") {
                format!("{k}=…")
            } else {
                format!("{k}={v}")
            }
        })
        .collect();
    println!("   $ {} kubestow {mode}", shown.join(" "));
    let out = cmd
        .output()
        .unwrap_or_else(|e| fail(&format!("cannot run kubestow: {e}")));
    for line in String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.contains("effective configuration"))
    {
        println!("   | {line}");
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary: Value = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_default();
    (out.status.code().unwrap_or(-1), summary)
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
            a.retain(|k, _| {
                !k.starts_with("pv.kubernetes.io/")
                    && !k.starts_with("volume.beta.kubernetes.io/")
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
            let (ok, text) = kubectl(&["get", "-n", "shop", o, "-o", "json"]);
            let v = if ok {
                serde_json::from_str(&text).unwrap_or_default()
            } else {
                Value::Null
            };
            (o.to_string(), normalise(v))
        })
        .collect()
}

fn repository(dir: &Path) -> String {
    match std::env::var("STOW_REPOSITORY") {
        Ok(url) if url.starts_with("s3://") => url,
        _ => format!("file://{}/repository", dir.display()),
    }
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    println!("kubestow demo: back up a namespace, lose it, get it back.");

    step(
        1,
        "Start a real Kubernetes control plane and an S3 server on 127.0.0.1",
    );
    let started = std::time::Instant::now();
    let cluster = env::cluster();
    println!(
        "   kube-apiserver {} (etcd), kube-controller-manager, Garage S3 at {}",
        cluster.server_url(),
        env::s3_endpoint()
    );
    println!(
        "   ready in {:.1?}; kubeconfig at {}",
        started.elapsed(),
        env::kubeconfig_path().display()
    );

    step(2, "Deploy the sample shop (examples/demo-app.yaml)");
    let app = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/demo-app.yaml");
    // The Widget needs its CRD established first: apply, wait, apply again.
    let _ = kubectl(&["apply", "-f", app]);
    kubectl_ok(&[
        "wait",
        "--for",
        "condition=established",
        "--timeout=60s",
        "crd/widgets.demo.kubestow.io",
    ]);
    for line in kubectl_ok(&["apply", "-f", app]).lines() {
        println!("   {line}");
    }
    // The StatefulSet controller creates the claim from its template.
    for _ in 0..60 {
        if kubectl(&["get", "-n", "shop", "pvc/data-db-0"]).0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let before = snapshot_objects();
    if let Some((name, _)) = before.iter().find(|(_, v)| v.is_null()) {
        fail(&format!("{name} was not created"));
    }

    let dir = tempfile::tempdir().expect("temp dir");
    let repo_url = match repository(dir.path()) {
        url if url.starts_with("s3://") => {
            let (_, bucket) = env::bucket("demo").await;
            let url = format!("s3://{bucket}/kubestow");
            println!("   (S3 requested: using bucket {bucket} on the demo's Garage)");
            url
        }
        url => url,
    };
    let base = vec![
        ("STOW_REPOSITORY", repo_url.clone()),
        ("STOW_PASSWORD", "demo-password-change-me".to_string()),
    ];
    let with = |extra: &[(&'static str, &str)]| -> Vec<(&'static str, String)> {
        let mut v = base.clone();
        v.extend(extra.iter().map(|(k, val)| (*k, val.to_string())));
        v
    };

    step(3, "Preflight: is the cluster reachable, is the repository?");
    let (code, summary) = kubestow(&with(&[]), "preflight");
    if code != 0 {
        fail("preflight failed; see above");
    }
    for c in summary["details"]["checks"]
        .as_array()
        .into_iter()
        .flatten()
    {
        println!(
            "     [{:<4}] {:<10} {}",
            c["level"].as_str().unwrap_or(""),
            c["name"].as_str().unwrap_or(""),
            c["message"].as_str().unwrap_or("")
        );
    }

    step(
        4,
        "Back up namespace shop (STOW_INIT creates the encrypted repository)",
    );
    let (code, summary) = kubestow(
        &with(&[
            ("STOW_NAMESPACES", "shop"),
            ("STOW_INIT", "true"),
            ("STOW_PLAN", "demo"),
        ]),
        "backup",
    );
    if code != 0 {
        fail(&format!("backup exited {code}: {summary}"));
    }
    println!("   backed up: {}", summary["counts"]);

    step(5, "List the snapshots in the repository");
    let (_, summary) = kubestow(&with(&[]), "list");
    for run in summary["details"]["snapshots"]
        .as_array()
        .into_iter()
        .flatten()
    {
        println!("     {}", run);
    }

    step(
        6,
        "Disaster: delete namespace shop and wait until it is gone",
    );
    kubectl_ok(&[
        "delete",
        "namespace",
        "shop",
        "--wait=true",
        "--timeout=180s",
    ]);
    let (exists, _) = kubectl(&["get", "namespace", "shop"]);
    if exists {
        fail("namespace shop still exists");
    }
    println!("   namespace shop is gone");

    step(7, "Restore it from the repository");
    let (code, summary) = kubestow(&with(&[("STOW_NAMESPACES", "shop")]), "restore");
    if code != 0 {
        fail(&format!("restore exited {code}: {summary}"));
    }
    println!("   restored: {}", summary["counts"]);

    step(
        8,
        "Verify: every object is back, equal apart from what the server assigns",
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
    let (_, svc) = kubectl(&[
        "get",
        "-n",
        "shop",
        "service/web-public",
        "-o",
        "jsonpath={.spec.ports[0].nodePort}",
    ]);
    println!("   the NodePort Service kept its explicit port: {svc}");
    if differ > 0 {
        fail(&format!("{differ} object(s) differ"));
    }
    println!(
        "\nAll {} objects restored identically. That is kubestow: one binary, environment variables, a JSON summary, an exit code.",
        after.len()
    );
}
