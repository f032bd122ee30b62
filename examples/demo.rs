//! `just demo`: kubestow against a real cluster and S3 server, end to end.
//!
//! It starts etcd, kube-apiserver, kube-controller-manager and Garage on
//! loopback (the same fixture the integration tests use), then runs the real
//! `kubestow` binary the way a CronJob would: configured only by environment
//! variables, one operation, a JSON summary, an exit code.

use std::process::Command;

// The integration tests' fixture (it allows its own dead code), reused so
// the demo and the tests cannot drift.
#[path = "../tests/integration/env/mod.rs"]
mod env;

fn step(n: u32, text: &str) {
    println!("\n\x1b[1m{n}. {text}\x1b[0m");
}

fn kubestow(vars: &[(&str, String)], mode: &str) -> (i32, serde_json::Value) {
    let mut cmd = Command::new(kubestow_binary());
    cmd.arg(mode).env("KUBECONFIG", env::kubeconfig_path());
    for (k, v) in env::s3_env()
        .into_iter()
        .chain(vars.iter().map(|(k, v)| (*k, v.clone())))
    {
        cmd.env(k, v);
    }
    let shown: Vec<String> = vars.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("   $ {} kubestow {mode}", shown.join(" "));
    let out = cmd.output().expect("run kubestow (did `cargo build` run?)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary: serde_json::Value = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_default();
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        println!("   | {line}");
    }
    (out.status.code().unwrap_or(-1), summary)
}

/// `target/<profile>/kubestow`, beside `target/<profile>/examples/demo`.
fn kubestow_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("own path");
    let bin = exe
        .parent()
        .and_then(|p| p.parent())
        .expect("target dir")
        .join("kubestow");
    assert!(
        bin.exists(),
        "{} is missing; run `cargo build` first (just demo does)",
        bin.display()
    );
    bin
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    println!("kubestow demo: one binary, configured by environment variables, one job per run.");

    step(
        1,
        "Start a real Kubernetes control plane and an S3 server on 127.0.0.1",
    );
    let started = std::time::Instant::now();
    let cluster = env::cluster();
    println!(
        "   kube-apiserver {} (etcd-backed), kube-controller-manager, Garage S3 at {}",
        cluster.server_url(),
        env::s3_endpoint()
    );
    println!(
        "   ready in {:.1?}; kubeconfig at {}",
        started.elapsed(),
        env::kubeconfig_path().display()
    );

    step(2, "Create an S3 bucket for the backup repository");
    let (_, bucket) = env::bucket("demo").await;
    let repository = format!("s3://{bucket}/kubestow");
    println!("   STOW_REPOSITORY={repository}");

    step(3, "Run the preflight check: API server, nodes, repository");
    let (code, summary) = kubestow(&[("STOW_REPOSITORY", repository.clone())], "preflight");
    println!("   exit code {code}; checks:");
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
    if code != 0 {
        eprintln!("preflight failed; see the messages above");
        std::process::exit(1);
    }

    step(
        4,
        "A configuration mistake is caught before anything is touched (exit code 2)",
    );
    let (code, summary) = kubestow(
        &[
            ("STOW_REPOSITORY", repository.clone()),
            ("STOW_CHANELS", "4".into()),
        ],
        "preflight",
    );
    println!(
        "   exit code {code}: {}",
        summary["errors"][0]["message"].as_str().unwrap_or("")
    );
    if code != 2 {
        eprintln!("expected exit code 2 for a misspelt variable");
        std::process::exit(1);
    }

    println!("\nDone. Backup and restore join this demo as they land (see README).");
}
