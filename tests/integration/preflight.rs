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
    let version = env::server_version().await;
    assert!(
        api["message"]
            .as_str()
            .unwrap()
            .contains(&format!("v{}.{}", version.major, version.minor)),
        "{api} (the cluster runs {})",
        version.git_version
    );
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

/// Backup rules everywhere: read, snapshots, contents, volumes.
fn backup_cluster_rules() -> serde_json::Value {
    serde_json::json!([
        {"apiGroups": ["*"], "resources": ["*"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["snapshot.storage.k8s.io"], "resources": ["volumesnapshots", "volumesnapshotcontents"], "verbs": ["create", "delete"]},
        {"apiGroups": [""], "resources": ["persistentvolumes"], "verbs": ["create", "delete"]},
    ])
}

/// The chart's backup rules in kubestow's namespace, without `create jobs`.
fn backup_home_rules_without_job_create() -> serde_json::Value {
    serde_json::json!([
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["delete"]},
        {"apiGroups": [""], "resources": ["persistentvolumeclaims"], "verbs": ["create", "delete"]},
        {"apiGroups": ["snapshot.storage.k8s.io"], "resources": ["volumesnapshots"], "verbs": ["create", "delete"]},
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_names_exactly_the_missing_permission_and_backup_stops_there() {
    use crate::api::request;
    use http::Method;
    let (client, ns) = env::namespace("preflight-rbac").await;
    let (_, app) = env::namespace("preflight-rbac-app").await;
    let (s3, bucket) = env::bucket("preflight-rbac").await;
    let role = env::unique_name("preflight-backup");
    request(&client, Method::POST, &format!("/api/v1/namespaces/{ns}/serviceaccounts"),
        Some(&serde_json::json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "backup"}})))
        .await
        .unwrap();
    request(
        &client,
        Method::POST,
        "/apis/rbac.authorization.k8s.io/v1/clusterroles",
        Some(
            &serde_json::json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": role}, "rules": backup_cluster_rules()}),
        ),
    )
    .await
    .unwrap();
    // Movers run in kubestow's namespace: its rights there are a Role.
    request(
        &client,
        Method::POST,
        &format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles"),
        Some(
            &serde_json::json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "backup"}, "rules": backup_home_rules_without_job_create()}),
        ),
    )
    .await
    .unwrap();
    request(
        &client,
        Method::POST,
        &format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings"),
        Some(
            &serde_json::json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "backup"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "backup"},
            "subjects": [{"kind": "ServiceAccount", "name": "backup", "namespace": ns}]}),
        ),
    )
    .await
    .unwrap();
    request(&client, Method::POST, "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        Some(&serde_json::json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": role},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": "backup", "namespace": ns}]})))
        .await
        .unwrap();
    // A snapshot-capable class with reclaim policy Retain: a warning.
    crate::kubeapi::install_snapshot_crds(&client).await;
    let driver = format!("{role}.csi.test");
    crate::kubeapi::storage_class(&client, &role, &driver, "Retain").await;
    crate::kubeapi::snapshot_class(&client, &role, &driver).await;

    let dir = tempfile::tempdir().unwrap();
    let kubeconfig =
        crate::helm::service_account_kubeconfig(&client, &ns, "backup", dir.path()).await;
    let cmd = |mode: &str| {
        let mut cmd = binary::command();
        cmd.arg(mode)
            .env("KUBECONFIG", &kubeconfig)
            .env("STOW_REPOSITORY", format!("s3://{bucket}/repo"))
            .env("STOW_PASSWORD", "preflight-password")
            .env("STOW_INIT", "true")
            .env("STOW_MOVER_NAMESPACE", &ns)
            .env("STOW_MOVER_SERVICE_ACCOUNT", "mover")
            .env("STOW_NAMESPACES", &app);
        cmd
    };
    let run = binary::run(cmd("preflight")).await;
    assert_eq!(run.code, Some(1), "{}\n{}", run.stderr, run.stdout);
    let checks = run.summary["details"]["checks"].as_array().unwrap();
    let failed: Vec<&str> = checks
        .iter()
        .filter(|c| c["level"] == "fail")
        .map(|c| c["message"].as_str().unwrap())
        .collect();
    assert_eq!(
        failed,
        vec![format!(
            "missing permission: create jobs.batch in namespace {ns} (to run mover Jobs)"
        )],
        "{}",
        run.stdout
    );
    let sc = check(&run, &format!("storage class {role}"));
    assert_eq!(sc["level"], "warn", "{sc}");
    assert!(sc["message"].as_str().unwrap().contains("Retain"), "{sc}");

    // backup runs the same checks first and stops before writing anything.
    let run = binary::run(cmd("backup")).await;
    assert_eq!(run.code, Some(1), "{}\n{}", run.stderr, run.stdout);
    let reason = run.summary["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!(
            "missing permission: create jobs.batch in namespace {ns}"
        )),
        "{reason}"
    );
    let objects = s3.list_objects_v2().bucket(&bucket).send().await.unwrap();
    assert_eq!(
        objects.key_count(),
        Some(0),
        "the failed backup wrote {objects:?}"
    );

    // Without volume data it runs no movers: the backup goes through.
    let mut skip = cmd("backup");
    skip.env("STOW_VOLUME_SOURCE", "skip");
    let run = binary::run(skip).await;
    assert_eq!(run.code, Some(0), "{}\n{}", run.stderr, run.stdout);
    for (path, name) in [
        (
            "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
            &role,
        ),
        ("/apis/rbac.authorization.k8s.io/v1/clusterroles", &role),
        ("/apis/storage.k8s.io/v1/storageclasses", &role),
        (
            "/apis/snapshot.storage.k8s.io/v1/volumesnapshotclasses",
            &role,
        ),
    ] {
        let _ = request(&client, Method::DELETE, &format!("{path}/{name}"), None).await;
    }
}
