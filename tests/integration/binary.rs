//! Running the real `kubestow` binary against the test environment.

use std::process::{Command, Output};

use crate::env;

/// A `kubestow` command with a clean environment pointed at the test
/// cluster and Garage. Add `STOW_*` variables per test.
pub fn command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kubestow"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("KUBECONFIG", env::kubeconfig_path())
        .env("RUST_LOG", "info");
    for (k, v) in env::s3_env() {
        cmd.env(k, v);
    }
    cmd
}

/// The finished run: exit code, parsed summary, and both streams for messages.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub summary: serde_json::Value,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn from_output(out: Output) -> Self {
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let summary = stdout
            .lines()
            .last()
            .and_then(|l| serde_json::from_str(l).ok())
            .unwrap_or(serde_json::Value::Null);
        Run {
            code: out.status.code(),
            summary,
            stdout,
            stderr,
        }
    }
}

/// Asserts exit code 0 and status `success`, showing both streams if not.
pub fn assert_success(run: &Run) {
    assert_eq!(
        run.code,
        Some(0),
        "stderr: {}\nstdout: {}",
        run.stderr,
        run.stdout
    );
    assert_eq!(run.summary["status"], "success", "{}", run.stdout);
}

/// Runs kubestow off the async runtime (the binary may take a while).
pub async fn run(mut cmd: Command) -> Run {
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run kubestow"))
        .await
        .unwrap();
    Run::from_output(out)
}
