//! The binary's contract at its edges: configuration errors exit 2 before
//! anything is touched, secrets never print, the summary is one JSON line.
//! These run the real binary and need no servers.

use std::path::PathBuf;
use std::process::{Command, Output};

const PASSWORD: &str = "pw-MARKER-7f3a9c";

/// A repository path that must still not exist after a rejected run.
fn untouched_repo(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("kubestow-cli-{}-{tag}", std::process::id()))
}

fn run(vars: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kubestow"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("KUBECONFIG", "/nonexistent/kubeconfig");
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd.args(args).output().expect("run kubestow")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// (variable the error must name, changes to the base environment; `None` unsets).
type Case = (
    &'static str,
    &'static [(&'static str, Option<&'static str>)],
);

const BAD: &[Case] = &[
    ("STOW_MODE", &[("STOW_MODE", Some("explode"))]),
    ("STOW_MODE", &[("STOW_MODE", None)]),
    ("STOW_CHANNELS", &[("STOW_CHANNELS", Some("0"))]),
    ("STOW_CHANNELS", &[("STOW_CHANNELS", Some("256"))]),
    ("STOW_CHANNELS", &[("STOW_CHANNELS", Some("many"))]),
    ("STOW_RATE_LIMIT", &[("STOW_RATE_LIMIT", Some("fast"))]),
    (
        "STOW_RATE_LIMIT",
        &[("STOW_RATE_LIMIT", Some("mon-fri 9-17=1MiB"))],
    ),
    (
        "STOW_RATE_LIMIT",
        &[("STOW_RATE_LIMIT", Some("mon 18:00-18:00=1MiB"))],
    ),
    (
        "STOW_RATE_LIMIT",
        &[("STOW_RATE_LIMIT", Some("funday 09:00-10:00=1MiB,*=5MiB"))],
    ),
    (
        "STOW_RATE_LIMIT",
        &[("STOW_RATE_LIMIT", Some("mon 09:00-25:00=1MiB"))],
    ),
    (
        "STOW_NAMESPACE_MAP",
        &[("STOW_NAMESPACE_MAP", Some("shop"))],
    ),
    (
        "STOW_NAMESPACE_MAP",
        &[("STOW_NAMESPACE_MAP", Some("shop=Shop_Restored"))],
    ),
    (
        "STOW_NAMESPACE_MAP",
        &[("STOW_NAMESPACE_MAP", Some("a=b,a=c"))],
    ),
    (
        "STOW_STORAGE_CLASS_MAP",
        &[("STOW_STORAGE_CLASS_MAP", Some("fast="))],
    ),
    (
        "STOW_REPOSITORY",
        &[("STOW_REPOSITORY", Some("ftp://host/x"))],
    ),
    (
        "STOW_REPOSITORY",
        &[("STOW_REPOSITORY", Some("s3://UPPER/x"))],
    ),
    (
        "STOW_REPOSITORY",
        &[("STOW_REPOSITORY", Some("file://relative/path"))],
    ),
    ("STOW_REPOSITORY", &[("STOW_REPOSITORY", None)]),
    (
        "STOW_RECONNECT_TIMEOUT",
        &[("STOW_RECONNECT_TIMEOUT", Some("0"))],
    ),
    (
        "STOW_RECONNECT_TIMEOUT",
        &[("STOW_RECONNECT_TIMEOUT", Some("61"))],
    ),
    (
        "STOW_RECONNECT_TIMEOUT",
        &[("STOW_RECONNECT_TIMEOUT", Some("2h"))],
    ),
    ("STOW_PASSWORD", &[("STOW_PASSWORD", None)]),
    (
        "STOW_PASSWORD",
        &[("STOW_PASSWORD_FILE", Some("/etc/hostname"))],
    ),
    (
        "STOW_PASSWORD_FILE",
        &[
            ("STOW_PASSWORD", None),
            ("STOW_PASSWORD_FILE", Some("/nonexistent/pw")),
        ],
    ),
    ("STOW_CHANELS", &[("STOW_CHANELS", Some("2"))]),
    ("STOW_EXISTING", &[("STOW_EXISTING", Some("merge"))]),
    (
        "STOW_EXISTING_CLUSTER_RESOURCES",
        &[("STOW_EXISTING_CLUSTER_RESOURCES", Some("merge"))],
    ),
    (
        "STOW_ALLOW_HOST_VOLUMES",
        &[("STOW_ALLOW_HOST_VOLUMES", Some("pv-a,/etc"))],
    ),
    ("STOW_COMPRESSION", &[("STOW_COMPRESSION", Some("25"))]),
    (
        "STOW_RESTORE_POINT",
        &[("STOW_RESTORE_POINT", Some("yesterday"))],
    ),
    (
        "STOW_RESTORE_POINT",
        &[
            ("STOW_RESTORE_POINT", Some("2026-11-22T02:00:00Z")),
            ("STOW_SNAPSHOT", Some("abc")),
        ],
    ),
    (
        "STOW_TIMEZONE",
        &[("STOW_TIMEZONE", Some("Mars/Olympus_Mons"))],
    ),
    (
        "STOW_CHECK_READ_DATA",
        &[("STOW_CHECK_READ_DATA", Some("150%"))],
    ),
    ("STOW_DRY_RUN", &[("STOW_DRY_RUN", Some("maybe"))]),
    (
        "STOW_LABEL_SELECTOR",
        &[("STOW_LABEL_SELECTOR", Some("app in (a"))],
    ),
    (
        "STOW_INCLUDE_CLUSTER_RESOURCES",
        &[("STOW_INCLUDE_CLUSTER_RESOURCES", Some("sometimes"))],
    ),
    ("STOW_VOLUME_SOURCE", &[("STOW_VOLUME_SOURCE", Some("nfs"))]),
    (
        "STOW_RESUME_BUFFER",
        &[("STOW_RESUME_BUFFER", Some("lots"))],
    ),
    ("STOW_COPY_TO_REPOSITORY", &[("STOW_MODE", Some("copy"))]),
    ("STOW_KEEP_LAST", &[("STOW_MODE", Some("prune"))]),
    ("STOW_VOLUME_PATH", &[("STOW_MODE", Some("volume-backup"))]),
    (
        "STOW_VOLUME_PATH",
        &[("STOW_VOLUME_PATH", Some("relative/dir"))],
    ),
    ("STOW_KEEP_DAILY", &[("STOW_KEEP_DAILY", Some("-1"))]),
    (
        "STOW_PUSHGATEWAY_URL",
        &[("STOW_PUSHGATEWAY_URL", Some("pushgateway:9091"))],
    ),
    (
        "STOW_MOVER_RESOURCES",
        &[("STOW_MOVER_RESOURCES", Some("cpu=1"))],
    ),
    ("STOW_NAMESPACES", &[("STOW_NAMESPACES", Some("[abc"))]),
    ("STOW_LOG_FORMAT", &[("STOW_LOG_FORMAT", Some("xml"))]),
    ("STOW_MIN_INTERVAL", &[("STOW_MIN_INTERVAL", Some("often"))]),
    ("STOW_PLAN", &[("STOW_PLAN", Some("My_Plan"))]),
    (
        "STOW_INCLUDE_RESOURCES",
        &[("STOW_INCLUDE_RESOURCES", Some("Deployments"))],
    ),
];

#[test]
fn bad_configurations_exit_2_naming_the_variable() {
    assert!(BAD.len() >= 25);
    let mut failures = Vec::new();
    for (i, (var, changes)) in BAD.iter().enumerate() {
        let repo = untouched_repo(&i.to_string());
        let repo_url = format!("file://{}", repo.display());
        let mut vars: Vec<(&str, String)> = vec![
            ("STOW_MODE", "backup".into()),
            ("STOW_REPOSITORY", repo_url),
            ("STOW_PASSWORD", PASSWORD.into()),
        ];
        for (k, v) in changes.iter() {
            vars.retain(|(bk, _)| bk != k);
            if let Some(v) = v {
                vars.push((k, v.to_string()));
            }
        }
        let pairs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let out = run(&pairs, &[]);
        let (stdout, stderr) = text(&out);
        let summary: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_default();
        let problems = [
            (
                out.status.code() != Some(2),
                format!("exit code {:?}", out.status.code()),
            ),
            (!stderr.contains(var), format!("stderr does not name {var}")),
            (
                summary["status"] != "config_error",
                format!("summary status {}", summary["status"]),
            ),
            (
                stdout.trim().lines().count() != 1,
                "summary is not one line".into(),
            ),
            (
                stdout.contains(PASSWORD) || stderr.contains(PASSWORD),
                "the password leaked".into(),
            ),
            (repo.exists(), "the repository path was touched".into()),
        ];
        for (bad, what) in problems {
            if bad {
                failures.push(format!(
                    "case {i} {changes:?}: {what}\n  stderr: {stderr}\n  stdout: {stdout}"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} problem(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn typo_suggests_the_real_variable() {
    let out = run(&[("STOW_MODE", "preflight"), ("STOW_CHANELS", "2")], &[]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("did you mean STOW_CHANNELS?"), "{stderr}");
}

#[test]
fn first_argument_overrides_the_mode() {
    // The environment says backup (which would need a password); the argument wins.
    let out = run(
        &[("STOW_MODE", "backup"), ("STOW_LOG_FORMAT", "json")],
        &["preflight"],
    );
    let (stdout, _) = text(&out);
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(summary["mode"], "preflight");
}

#[test]
fn effective_configuration_is_logged_without_secrets() {
    let out = run(
        &[
            ("STOW_MODE", "preflight"),
            ("STOW_PASSWORD", PASSWORD),
            ("STOW_COPY_TO_PASSWORD", "copy-MARKER-91b2"),
            ("STOW_LOG_FORMAT", "json"),
            ("STOW_CHANNELS", "7"),
        ],
        &[],
    );
    let (stdout, stderr) = text(&out);
    assert!(
        stderr.contains("effective configuration") && stderr.contains("channels: 7"),
        "{stderr}"
    );
    for secret in [PASSWORD, "copy-MARKER-91b2"] {
        assert!(
            !stderr.contains(secret) && !stdout.contains(secret),
            "{secret} leaked"
        );
    }
    // JSON logs: every stderr line is a JSON object.
    for line in stderr.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v.get("level").is_some(), "{line}");
    }
}

#[test]
fn copy_from_a_missing_repository_fails_clearly() {
    // Every mode is implemented now; this was the unimplemented-mode check.
    let repo = untouched_repo("copy-missing");
    let url = format!("file://{}", repo.display());
    let dest = untouched_repo("copy-missing-dest");
    let dest_url = format!("file://{}", dest.display());
    let out = run(
        &[
            ("STOW_MODE", "copy"),
            ("STOW_REPOSITORY", &url),
            ("STOW_PASSWORD", PASSWORD),
            ("STOW_COPY_TO_REPOSITORY", &dest_url),
            ("STOW_COPY_TO_PASSWORD", "x"),
        ],
        &[],
    );
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(summary["status"], "failed");
    assert!(
        summary["reason"]
            .as_str()
            .unwrap()
            .contains("no repository here"),
        "{stdout}"
    );
    assert!(!repo.exists() && !dest.exists(), "nothing was created");
}

#[test]
fn preflight_without_a_cluster_fails_clearly() {
    let out = run(&[("STOW_MODE", "preflight")], &[]);
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(summary["status"], "failed");
    assert_eq!(summary["errors"][0]["item"], "apiserver");
}

#[test]
fn help_lists_every_variable() {
    let out = run(&[], &["--help"]);
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(0));
    for v in kubestow::config::vars::ALL {
        assert!(stdout.contains(v.name), "{} missing from --help", v.name);
    }
}

#[test]
fn sigterm_cancels_the_run_with_a_clear_status() {
    // An "API server" that accepts connections and never answers keeps
    // preflight waiting, so the signal arrives mid-run.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: 'https://127.0.0.1:{port}', insecure-skip-tls-verify: true}}}}]\n\
             users: [{{name: u, user: {{token: t}}}}]\ncontexts: [{{name: x, context: {{cluster: c, user: u}}}}]\ncurrent-context: x\n"
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kubestow"))
        .env_clear()
        .env("KUBECONFIG", &kubeconfig)
        .env("STOW_MODE", "preflight")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the binary has connected, i.e. the run is under way.
    let (_conn, _) = listener.accept().unwrap();
    let started = std::time::Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = {
        let mut out = String::new();
        use std::io::Read;
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        out
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    let code = child.wait().unwrap().code();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(8),
        "drained in {:?}",
        started.elapsed()
    );
    assert_eq!(code, Some(1), "{out}\n{stderr}");
    let summary: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(summary["status"], "cancelled");
    assert!(stderr.contains("SIGTERM"), "{stderr}");
}
