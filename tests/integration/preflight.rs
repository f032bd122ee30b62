//! `kubestow preflight` against the real API server and Garage.

use crate::binary;
use crate::env;

fn check<'a>(run: &'a binary::Run, name: &str) -> &'a serde_json::Value {
    run.summary["details"]["checks"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no {name} check in {}", run.stdout))
}

#[tokio::test]
async fn preflight_succeeds_against_the_test_environment() {
    let (_, bucket) = env::bucket("preflight").await;
    let mut cmd = binary::command();
    cmd.arg("preflight")
        .env("STOW_REPOSITORY", format!("s3://{bucket}/repo"));
    let run = binary::run(cmd).await;
    assert_eq!(
        run.code,
        Some(0),
        "stderr: {}\nstdout: {}",
        run.stderr,
        run.stdout
    );
    assert_eq!(run.summary["status"], "success");
    let api = check(&run, "apiserver");
    assert_eq!(api["level"], "ok");
    assert!(api["message"].as_str().unwrap().contains("v1.20"), "{api}");
    // Nodes are reported, not fatal: the environment has none except the
    // test kubelets of tests running at the same time.
    let nodes = check(&run, "nodes");
    assert!(
        nodes["message"].as_str().unwrap().contains(" node(s), "),
        "{nodes}"
    );
    let repo = check(&run, "repository");
    assert_eq!(repo["level"], "ok", "{repo}");
    assert!(repo["message"].as_str().unwrap().contains(&bucket));
}

#[tokio::test]
async fn preflight_fails_clearly_when_the_apiserver_is_down() {
    // A kubeconfig whose server has nothing listening: what a stopped
    // apiserver looks like to a client.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let real = std::fs::read_to_string(env::kubeconfig_path()).unwrap();
    let url = env::cluster().server_url().to_string();
    let dead = real.replace(&url, &format!("https://127.0.0.1:{port}"));
    assert_ne!(real, dead, "kubeconfig should contain {url}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    std::fs::write(&path, dead).unwrap();

    let mut cmd = binary::command();
    cmd.arg("preflight").env("KUBECONFIG", &path);
    let run = binary::run(cmd).await;
    assert_eq!(run.code, Some(1), "{}", run.stdout);
    assert_eq!(run.summary["status"], "failed");
    let api = check(&run, "apiserver");
    assert_eq!(api["level"], "fail");
    let msg = api["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!("127.0.0.1:{port}")) && msg.contains("cannot reach the API server"),
        "{msg}"
    );
}

#[tokio::test]
async fn preflight_names_a_missing_bucket() {
    let mut cmd = binary::command();
    cmd.arg("preflight")
        .env("STOW_REPOSITORY", "s3://no-such-bucket-kubestow/x");
    let run = binary::run(cmd).await;
    assert_eq!(run.code, Some(1), "{}", run.stdout);
    let repo = check(&run, "repository");
    assert_eq!(repo["level"], "fail");
    assert!(
        repo["message"]
            .as_str()
            .unwrap()
            .contains("no-such-bucket-kubestow"),
        "{repo}"
    );
}
