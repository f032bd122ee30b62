//! `backup` and `restore` of Kubernetes resources against the real API
//! server (1.20 or a current release, with kube-controller-manager), through
//! the real binary.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};

use crate::api::{self, request};
use crate::binary::{self, Run};
use crate::env;

const PW: &str = "resources-test-password";

// ---------------------------------------------------------------- helpers

fn command(mode: &str, repo: &str, vars: &[(&str, &str)]) -> Command {
    let mut cmd = binary::command();
    cmd.arg(mode)
        .env("STOW_REPOSITORY", repo)
        .env("STOW_PASSWORD", PW);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd
}

async fn kubestow(mode: &str, repo: &str, vars: &[(&str, &str)]) -> Run {
    binary::run(command(mode, repo, vars)).await
}

#[track_caller]
fn assert_code(run: &Run, code: i32) {
    assert_eq!(
        run.code,
        Some(code),
        "exit code\n--- stdout\n{}\n--- stderr (tail)\n{}",
        run.stdout,
        tail(&run.stderr, 40)
    );
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn file_repo() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}/repo", dir.path().display());
    (dir, url)
}

fn count(run: &Run, key: &str) -> u64 {
    run.summary["counts"][key].as_u64().unwrap_or(0)
}

async fn create(client: &kube::Client, path: &str, body: Value) -> Value {
    request(client, http::Method::POST, path, Some(&body))
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

async fn get(client: &kube::Client, path: &str) -> Option<Value> {
    match request(client, http::Method::GET, path, None).await {
        Ok(v) => Some(v),
        Err(kube::Error::Api(s)) if s.code == 404 => None,
        Err(e) => panic!("GET {path}: {e}"),
    }
}

async fn must_get(client: &kube::Client, path: &str) -> Value {
    get(client, path)
        .await
        .unwrap_or_else(|| panic!("{path} does not exist"))
}

async fn put(client: &kube::Client, path: &str, body: &Value) -> Value {
    request(client, http::Method::PUT, path, Some(body))
        .await
        .unwrap_or_else(|e| panic!("PUT {path}: {e}"))
}

async fn delete(client: &kube::Client, path: &str) {
    match request(client, http::Method::DELETE, path, None).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => panic!("DELETE {path}: {e}"),
    }
}

/// Polls `check` every 200 ms until it holds or `timeout` passes.
async fn wait_until<F, Fut>(what: &str, timeout: Duration, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn delete_namespace_and_wait(client: &kube::Client, ns: &str) {
    let path = format!("/api/v1/namespaces/{ns}");
    delete(client, &path).await;
    wait_until(
        &format!("namespace {ns} to be gone"),
        Duration::from_secs(180),
        || async { get(client, &path).await.is_none() },
    )
    .await;
}

fn cm_path(ns: &str, name: &str) -> String {
    format!("/api/v1/namespaces/{ns}/configmaps/{name}")
}

async fn create_cm(client: &kube::Client, ns: &str, name: &str, data: Value) {
    create(
        client,
        &format!("/api/v1/namespaces/{ns}/configmaps"),
        json!({"metadata": {"name": name, "labels": {"app": "shop"}}, "data": data}),
    )
    .await;
}

async fn set_cm(client: &kube::Client, ns: &str, name: &str, data: Value, labels: Value) {
    let path = cm_path(ns, name);
    let mut cm = must_get(client, &path).await;
    cm["data"] = data;
    cm["metadata"]["labels"] = labels;
    put(client, &path, &cm).await;
}

async fn cm_value(client: &kube::Client, ns: &str, name: &str, key: &str) -> Option<String> {
    get(client, &cm_path(ns, name))
        .await
        .and_then(|c| c["data"][key].as_str().map(String::from))
}

/// A CRD with a group of its own (tests share the cluster), and its
/// plural.group name.
async fn create_crd(client: &kube::Client, hint: &str) -> (String, String) {
    let group = format!("{}.example.com", env::unique_name(hint));
    let name = format!("widgets.{group}");
    create(
        client,
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
        crd_body(&group),
    )
    .await;
    wait_established(client, &name).await;
    (group, name)
}

fn crd_body(group: &str) -> Value {
    json!({
        "metadata": {"name": format!("widgets.{group}")},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [{"name": "v1", "served": true, "storage": true, "schema": {
                "openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "properties": {
                        "size": {"type": "integer"}, "colour": {"type": "string"}}}}}}}]
        }
    })
}

async fn wait_established(client: &kube::Client, crd: &str) {
    let path = format!("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd}");
    wait_until(
        &format!("CRD {crd} to be Established"),
        Duration::from_secs(30),
        || async {
            get(client, &path).await.is_some_and(|c| {
                c["status"]["conditions"].as_array().is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == "Established" && c["status"] == "True")
                })
            })
        },
    )
    .await;
    // Discovery lags the condition by a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
}

async fn create_widget(client: &kube::Client, group: &str, ns: &str, name: &str) {
    create(
        client,
        &format!("/apis/{group}/v1/namespaces/{ns}/widgets"),
        json!({"apiVersion": format!("{group}/v1"), "kind": "Widget",
               "metadata": {"name": name, "labels": {"app": "shop"}},
               "spec": {"size": 3, "colour": "teal"}}),
    )
    .await;
}

/// Compares what a person set: everything but server metadata and status,
/// plus the fields the rules say are allocated afresh.
fn comparable(path: &str, v: &Value) -> Value {
    let mut v = v.clone();
    let o = v.as_object_mut().unwrap();
    o.remove("status");
    let meta = o.remove("metadata").unwrap_or_default();
    let mut annotations = meta["annotations"].clone();
    if let Some(a) = annotations.as_object_mut() {
        a.remove("deployment.kubernetes.io/revision");
    }
    o.insert(
        "metadata".into(),
        json!({"name": meta["name"], "labels": meta["labels"], "annotations": annotations}),
    );
    if path.contains("/serviceaccounts/") {
        o.remove("secrets");
    }
    if path.contains("/services/") {
        let spec = o.get_mut("spec").unwrap().as_object_mut().unwrap();
        if spec["clusterIP"] != "None" {
            spec.remove("clusterIP");
            spec.remove("clusterIPs");
        }
        if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
            for p in ports {
                p.as_object_mut().unwrap().remove("nodePort");
            }
        }
    }
    if path.contains("/cronjobs/") || path.contains("/deployments/") {
        // Nothing server-set in spec.
    }
    v
}

fn note_for<'a>(run: &'a Run, item: &str) -> Option<&'a str> {
    run.summary["details"]["notes"]
        .as_array()?
        .iter()
        .find(|n| n["item"] == item)
        .and_then(|n| n["note"].as_str())
}

fn error_for<'a>(run: &'a Run, item: &str) -> Option<&'a str> {
    run.summary["errors"]
        .as_array()?
        .iter()
        .find(|e| e["item"] == item)
        .and_then(|e| e["message"].as_str())
}

/// A snapshot made by hand through the library, as whoever holds the
/// repository key could: the latest snapshot's catalogue, amended, saved
/// as a newer snapshot of its own.
struct Forged {
    repo: kubestow::repo::Repository,
    cat: kubestow::resources::Catalogue,
    latest: kubestow::repo::SnapshotManifest,
    writer: kubestow::repo::Writer,
}

impl Forged {
    async fn open(repo_url: &str) -> Self {
        use kubestow::config::{Compression, Location, Secret};
        use kubestow::repo::{OpenOptions, backend};
        let location = Location::parse(repo_url).unwrap();
        let repo = OpenOptions::new(
            backend::open(&location, Duration::from_secs(60), None).await,
            &Secret::new(PW),
        )
        .compression(Compression::FAST)
        .open()
        .await
        .unwrap();
        let (_, latest) = repo.list_snapshots().await.unwrap().pop().unwrap();
        let (cat, problems) =
            kubestow::resources::Catalogue::read(&repo, &latest.resources.unwrap(), |_| true)
                .await
                .unwrap();
        assert!(problems.is_empty());
        let writer = repo.writer(1);
        Self {
            repo,
            cat,
            latest,
            writer,
        }
    }

    /// Files `bytes` as object `name` of type `rt` in namespace `ns` (or
    /// with the cluster-scoped objects), replacing what was there.
    async fn put_bytes(
        &mut self,
        ns: Option<&str>,
        rt: &kubestow::cluster::ResourceType,
        name: &str,
        bytes: bytes::Bytes,
    ) -> kubestow::repo::BlobId {
        let (id, _) = self
            .writer
            .add(kubestow::repo::BlobKind::Object, bytes)
            .await
            .unwrap();
        self.cat.insert(ns, rt, name, id);
        id
    }

    /// Files `obj` under its own name.
    async fn put(&mut self, ns: Option<&str>, rt: &kubestow::cluster::ResourceType, obj: Value) {
        let name = obj["metadata"]["name"].as_str().unwrap().to_string();
        self.put_bytes(ns, rt, &name, bytes::Bytes::from(obj.to_string()))
            .await;
    }

    async fn save(self) {
        let root = self.cat.write(&self.writer).await.unwrap();
        self.writer.finish().await.unwrap();
        let mut m = kubestow::repo::SnapshotManifest::new("hand-made", 0, 1, "default");
        m.resources = Some(root);
        m.cluster_id = self.latest.cluster_id.clone();
        m.stats = self.latest.stats.clone();
        self.repo.save_snapshot(&m).await.unwrap();
    }
}

fn rtype(
    group: &str,
    kind: &str,
    plural: &str,
    namespaced: bool,
) -> kubestow::cluster::ResourceType {
    kubestow::cluster::ResourceType {
        group: group.into(),
        version: "v1".into(),
        kind: kind.into(),
        plural: plural.into(),
        namespaced,
    }
}

/// A nodePort nobody holds: creates a throwaway Service with a random one
/// and deletes it again (tests run concurrently in one cluster).
async fn free_node_port(client: &kube::Client, ns: &str) -> i64 {
    for _ in 0..50 {
        let port = 30000 + i64::from(rand_u16() % 2700);
        let path = format!("/api/v1/namespaces/{ns}/services");
        let probe = json!({"metadata": {"name": "port-probe"}, "spec": {"type": "NodePort",
            "ports": [{"port": 1, "nodePort": port}]}});
        if request(client, http::Method::POST, &path, Some(&probe))
            .await
            .is_ok()
        {
            delete(client, &format!("{path}/port-probe")).await;
            return port;
        }
    }
    panic!("no free nodePort found");
}

fn rand_u16() -> u16 {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut b = [0u8; 2];
    SystemRandom::new().fill(&mut b).unwrap();
    u16::from_le_bytes(b)
}

// ---------------------------------------------------------------- tests

/// The main story: back up a namespace with a typical application to S3,
/// delete it (and its CRD), restore it, and find every object as it was.
#[tokio::test]
async fn round_trip_through_s3_restores_every_object() {
    let (client, ns) = env::namespace("roundtrip").await;
    let (_, bucket) = env::bucket("roundtrip").await;
    let repo = format!("s3://{bucket}/repo");
    let (group, crd) = create_crd(&client, "rt").await;
    let sc = env::unique_name("sc");
    create(
        &client,
        "/apis/storage.k8s.io/v1/storageclasses",
        json!({"metadata": {"name": sc}, "provisioner": "kubestow.test/none",
               "reclaimPolicy": "Delete", "volumeBindingMode": "WaitForFirstConsumer"}),
    )
    .await;
    let explicit_port = free_node_port(&client, &ns).await;
    let api = format!("/api/v1/namespaces/{ns}");
    let apps = format!("/apis/apps/v1/namespaces/{ns}");
    let rbac = format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}");
    let labels = json!({"app": "shop"});

    create_cm(
        &client,
        &ns,
        "app-config",
        json!({"mode": "prod", "motd.txt": "hello\n"}),
    )
    .await;
    create(
        &client,
        &format!("{api}/secrets"),
        json!({"metadata": {"name": "app-secret",
        "annotations": {"owner": "team-a"}}, "type": "Opaque", "data": {"password": "c2VjcmV0"}}),
    )
    .await;
    create(
        &client,
        &format!("{api}/serviceaccounts"),
        json!({"metadata": {"name": "app"}}),
    )
    .await;
    create(
        &client,
        &format!("{rbac}/roles"),
        json!({"metadata": {"name": "reader"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}]}),
    )
    .await;
    create(
        &client,
        &format!("{rbac}/rolebindings"),
        json!({"metadata": {"name": "app-reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "app", "namespace": ns}]}),
    )
    .await;
    create(
        &client,
        &format!("{rbac}/rolebindings"),
        json!({"metadata": {"name": "app-view"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"kind": "ServiceAccount", "name": "app", "namespace": ns}]}),
    )
    .await;
    let pod_template = json!({"metadata": {"labels": {"app": "web"}}, "spec": {
        "serviceAccountName": "app",
        "containers": [{"name": "web", "image": "nginx:1.25", "ports": [{"containerPort": 80}],
            "envFrom": [{"configMapRef": {"name": "app-config"}}]}]}});
    create(&client, &format!("{apps}/deployments"), json!({"metadata": {"name": "web", "labels": labels},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}}, "template": pod_template}})).await;
    create(&client, &format!("{apps}/statefulsets"), json!({"metadata": {"name": "db"},
        "spec": {"serviceName": "db", "replicas": 1, "selector": {"matchLabels": {"app": "db"}},
          "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "db",
            "image": "postgres:16", "volumeMounts": [{"name": "data", "mountPath": "/var/lib/postgresql"}]}]}},
          "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"],
            "storageClassName": sc, "resources": {"requests": {"storage": "1Gi"}}}}]}})).await;
    create(
        &client,
        &format!("{api}/services"),
        json!({"metadata": {"name": "explicit"},
        "spec": {"type": "NodePort", "selector": {"app": "web"},
          "ports": [{"name": "http", "port": 80, "nodePort": explicit_port}]}}),
    )
    .await;
    create(&client, &format!("{api}/services"), json!({"metadata": {"name": "auto"},
        "spec": {"type": "NodePort", "selector": {"app": "web"}, "ports": [{"name": "http", "port": 80}]}})).await;
    create(
        &client,
        &format!("{api}/services"),
        json!({"metadata": {"name": "plain", "labels": labels},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 8080, "targetPort": 80}]}}),
    )
    .await;
    create(
        &client,
        &format!("{api}/services"),
        json!({"metadata": {"name": "db"},
        "spec": {"clusterIP": "None", "selector": {"app": "db"}, "ports": [{"port": 5432}]}}),
    )
    .await;
    // batch/v1beta1 on 1.20, batch/v1 on the current release.
    let cronjobs = format!(
        "/apis/{}/namespaces/{ns}/cronjobs",
        api::cronjob_api_version().await
    );
    create(
        &client,
        &cronjobs,
        json!({
        "metadata": {"name": "nightly"}, "spec": {"schedule": "0 2 * * *", "jobTemplate": {"spec": {
            "template": {"spec": {"restartPolicy": "OnFailure",
              "containers": [{"name": "c", "image": "busybox", "command": ["true"]}]}}}}}}),
    )
    .await;
    create_widget(&client, &group, &ns, "w1").await;

    // Let the controllers act, so the backup holds ReplicaSets, Pods and
    // the StatefulSet's claim, as a real one would.
    wait_until(
        "controllers to create pods and claims",
        Duration::from_secs(60),
        || async {
            let pods = get(&client, &format!("{api}/pods")).await.unwrap();
            let pvc = get(&client, &format!("{api}/persistentvolumeclaims/data-db-0")).await;
            pods["items"].as_array().is_some_and(|p| p.len() >= 3) && pvc.is_some()
        },
    )
    .await;

    let run = kubestow(
        "backup",
        &repo,
        &[("STOW_INIT", "true"), ("STOW_NAMESPACES", &ns)],
    )
    .await;
    assert_code(&run, 0);
    assert_eq!(count(&run, "services"), 4, "{}", run.stdout);
    assert_eq!(count(&run, &format!("widgets.{group}")), 1);
    assert_eq!(
        count(&run, "customresourcedefinitions.apiextensions.k8s.io"),
        1
    );
    assert_eq!(count(&run, "storageclasses.storage.k8s.io"), 1);
    assert_eq!(count(&run, "clusterroles.rbac.authorization.k8s.io"), 1);
    assert_eq!(count(&run, "namespaces"), 1);
    assert!(count(&run, "pods") >= 3);
    assert!(count(&run, "events") == 0 && count(&run, "events.events.k8s.io") == 0);
    assert!(run.summary["details"]["cluster_id"].as_str().is_some());

    // What must come back, as it is now.
    let wpath = format!("/apis/{group}/v1/namespaces/{ns}/widgets/w1");
    let paths = [
        format!("{api}/configmaps/app-config"),
        format!("{api}/secrets/app-secret"),
        format!("{api}/serviceaccounts/app"),
        format!("{rbac}/roles/reader"),
        format!("{rbac}/rolebindings/app-reader"),
        format!("{rbac}/rolebindings/app-view"),
        format!("{apps}/deployments/web"),
        format!("{apps}/statefulsets/db"),
        format!("{api}/persistentvolumeclaims/data-db-0"),
        format!("{api}/services/explicit"),
        format!("{api}/services/auto"),
        format!("{api}/services/plain"),
        format!("{api}/services/db"),
        format!("{cronjobs}/nightly"),
        wpath.clone(),
        api.clone(),
    ];
    let mut before = BTreeMap::new();
    for p in &paths {
        before.insert(p.clone(), must_get(&client, p).await);
    }
    let auto_port = before[&format!("{api}/services/auto")]["spec"]["ports"][0]["nodePort"].clone();
    let plain_ip = before[&format!("{api}/services/plain")]["spec"]["clusterIP"].clone();

    delete_namespace_and_wait(&client, &ns).await;
    let crd_path = format!("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd}");
    delete(&client, &crd_path).await;
    wait_until("the CRD to be gone", Duration::from_secs(60), || async {
        get(&client, &crd_path).await.is_none()
    })
    .await;
    // Hold the old auto-assigned port and ClusterIP, so that a restore
    // that tried to keep them would show it.
    let (_, other) = env::namespace("roundtrip-blocker").await;
    create(
        &client,
        &format!("/api/v1/namespaces/{other}/services"),
        json!({
        "metadata": {"name": "blocker"}, "spec": {"type": "NodePort", "clusterIP": plain_ip,
            "ports": [{"port": 80, "nodePort": auto_port}]}}),
    )
    .await;

    let run = kubestow("restore", &repo, &[("STOW_NAMESPACES", &ns)]).await;
    assert_code(&run, 0);
    assert_eq!(count(&run, "failed"), 0);
    assert!(count(&run, "created") >= paths.len() as u64);
    assert!(
        run.summary["details"]["report"].as_str().is_some(),
        "a per-item report is stored: {}",
        run.stdout
    );
    let skipped = run.summary["details"]["skipped"].to_string();
    assert!(skipped.contains("its controller recreates it"), "{skipped}");
    assert!(skipped.contains("kube-root-ca.crt"), "{skipped}");

    for p in &paths {
        let after = must_get(&client, p).await;
        assert_eq!(
            comparable(p, &after),
            comparable(p, &before[p]),
            "{p} differs after restore"
        );
    }
    let svc = |name: &str| format!("{api}/services/{name}");
    let explicit = must_get(&client, &svc("explicit")).await;
    assert_eq!(
        explicit["spec"]["ports"][0]["nodePort"], explicit_port,
        "explicit nodePort kept"
    );
    assert!(
        note_for(&run, &format!("services {ns}/explicit"))
            .is_some_and(|n| n.contains("keeps nodePort"))
    );
    let auto = must_get(&client, &svc("auto")).await;
    let new_port = auto["spec"]["ports"][0]["nodePort"].as_i64().unwrap();
    assert_ne!(json!(new_port), auto_port, "auto nodePort is fresh");
    assert!(
        note_for(&run, &format!("services {ns}/auto")).is_none(),
        "the auto port was never requested: {:?}",
        note_for(&run, &format!("services {ns}/auto"))
    );
    let plain = must_get(&client, &svc("plain")).await;
    assert!(
        plain["spec"]["clusterIP"]
            .as_str()
            .is_some_and(|ip| ip.starts_with("10.96."))
    );
    assert_ne!(plain["spec"]["clusterIP"], plain_ip, "a new ClusterIP");
    assert_eq!(
        must_get(&client, &svc("db")).await["spec"]["clusterIP"],
        "None",
        "headless"
    );
    // The custom resource came after its CRD was Established.
    let crd_now = must_get(&client, &crd_path).await;
    assert!(
        crd_now["status"]["conditions"]
            .to_string()
            .contains("Established")
    );
    assert_eq!(must_get(&client, &wpath).await["spec"]["colour"], "teal");
}

/// Restore under another name: objects land in the new namespace and
/// RoleBinding subjects follow; the original is untouched.
#[tokio::test]
async fn restore_into_a_mapped_namespace_rewrites_role_binding_subjects() {
    let (client, ns) = env::namespace("mapped").await;
    let (_dir, repo) = file_repo();
    create_cm(&client, &ns, "conf", json!({"k": "v"})).await;
    create(
        &client,
        &format!("/api/v1/namespaces/{ns}/serviceaccounts"),
        json!({"metadata": {"name": "bot"}}),
    )
    .await;
    create(
        &client,
        &format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings"),
        json!({
        "metadata": {"name": "bot-edit"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
        "subjects": [{"kind": "ServiceAccount", "name": "bot", "namespace": ns},
                     {"kind": "ServiceAccount", "name": "ci", "namespace": "elsewhere"}]}),
    )
    .await;
    assert_code(
        &kubestow(
            "backup",
            &repo,
            &[("STOW_INIT", "true"), ("STOW_NAMESPACES", &ns)],
        )
        .await,
        0,
    );

    let target = env::unique_name("mapped-copy");
    let map = format!("{ns}={target}");
    let run = kubestow(
        "restore",
        &repo,
        &[("STOW_NAMESPACES", &ns), ("STOW_NAMESPACE_MAP", &map)],
    )
    .await;
    assert_code(&run, 0);
    assert_eq!(
        cm_value(&client, &target, "conf", "k").await.as_deref(),
        Some("v")
    );
    let rb = must_get(
        &client,
        &format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{target}/rolebindings/bot-edit"),
    )
    .await;
    assert_eq!(rb["subjects"][0]["namespace"], target.as_str());
    assert_eq!(rb["subjects"][1]["namespace"], "elsewhere");
    assert!(
        get(
            &client,
            &format!("/api/v1/namespaces/{target}/serviceaccounts/bot")
        )
        .await
        .is_some()
    );
    let ns_obj = must_get(&client, &format!("/api/v1/namespaces/{target}")).await;
    assert_eq!(
        ns_obj["metadata"]["labels"]["kubestow.test/fixture"], "true",
        "labels of the source namespace"
    );
    // The source is as it was.
    let orig = must_get(
        &client,
        &format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings/bot-edit"),
    )
    .await;
    assert_eq!(orig["subjects"][0]["namespace"], ns.as_str());
}

/// Selection: a label selector, an excluded type, objects being deleted
/// and kubestow's own objects are left out of the backup.
#[tokio::test]
async fn backup_selection_leaves_out_what_it_should() {
    let (client, ns) = env::namespace("selection").await;
    let (_dir, repo) = file_repo();
    let cms = format!("/api/v1/namespaces/{ns}/configmaps");
    create_cm(&client, &ns, "shop-a", json!({"k": "v"})).await;
    create(
        &client,
        &cms,
        json!({"metadata": {"name": "other", "labels": {"app": "other"}}}),
    )
    .await;
    create(
        &client,
        &cms,
        json!({"metadata": {"name": "mover", "labels": {
        "app": "shop", "app.kubernetes.io/managed-by": "kubestow"}}}),
    )
    .await;
    create(
        &client,
        &cms,
        json!({"metadata": {"name": "going", "labels": {"app": "shop"},
        "finalizers": ["kubestow.test/hold"]}}),
    )
    .await;
    delete(&client, &cm_path(&ns, "going")).await;
    create(
        &client,
        &format!("/api/v1/namespaces/{ns}/secrets"),
        json!({"metadata": {"name": "s", "labels": {"app": "shop"}}, "stringData": {"k": "v"}}),
    )
    .await;

    let run = kubestow(
        "backup",
        &repo,
        &[
            ("STOW_INIT", "true"),
            ("STOW_NAMESPACES", &ns),
            ("STOW_LABEL_SELECTOR", "app=shop"),
            ("STOW_EXCLUDE_RESOURCES", "secrets"),
        ],
    )
    .await;
    assert_code(&run, 0);
    assert_eq!(count(&run, "configmaps"), 1, "only shop-a: {}", run.stdout);
    assert_eq!(count(&run, "secrets"), 0);
    assert_eq!(count(&run, "namespaces"), 1);
    assert_eq!(run.summary["details"]["skipped"]["being_deleted"], 1);
    assert_eq!(run.summary["details"]["skipped"]["kubestow_owned"], 1);

    // Let the held object go.
    let mut going = must_get(&client, &cm_path(&ns, "going")).await;
    going["metadata"]["finalizers"] = json!([]);
    put(&client, &cm_path(&ns, "going"), &going).await;
}

/// STOW_EXISTING=skip, update and recreate, then a dry run that changes
/// nothing and names the conflicts.
#[tokio::test]
async fn existing_objects_follow_the_policy_and_dry_run_changes_nothing() {
    let (client, ns) = env::namespace("existing").await;
    let (_dir, repo) = file_repo();
    create_cm(&client, &ns, "conf", json!({"v": "1"})).await;
    let svc_path = format!("/api/v1/namespaces/{ns}/services");
    create(
        &client,
        &svc_path,
        json!({"metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}),
    )
    .await;
    create(
        &client,
        &svc_path,
        json!({"metadata": {"name": "np"},
        "spec": {"type": "NodePort", "selector": {"app": "web"}, "ports": [{"port": 80}]}}),
    )
    .await;
    let only = [("STOW_NAMESPACES", ns.as_str())];
    assert_code(
        &kubestow("backup", &repo, &[("STOW_INIT", "true"), only[0]]).await,
        0,
    );
    let changed = || {
        set_cm(
            &client,
            &ns,
            "conf",
            json!({"v": "2"}),
            json!({"app": "shop", "edited": "yes"}),
        )
    };

    changed().await;
    let run = kubestow("restore", &repo, &only).await;
    assert_code(&run, 0);
    assert_eq!(count(&run, "created"), 0, "{}", run.stdout);
    assert_eq!(count(&run, "failed"), 0);
    assert!(count(&run, "skipped") >= 3);
    assert_eq!(
        cm_value(&client, &ns, "conf", "v").await.as_deref(),
        Some("2"),
        "skip leaves it"
    );

    let run = kubestow("restore", &repo, &[only[0], ("STOW_EXISTING", "update")]).await;
    assert_code(&run, 0);
    assert!(
        count(&run, "updated") >= 4,
        "namespace, cm, services: {}",
        run.stdout
    );
    let cm = must_get(&client, &cm_path(&ns, "conf")).await;
    assert_eq!(cm["data"]["v"], "1", "update restores the data");
    assert!(
        cm["metadata"]["labels"].get("edited").is_none(),
        "and the labels"
    );
    let uid = cm["metadata"]["uid"].clone();

    changed().await;
    let run = kubestow("restore", &repo, &[only[0], ("STOW_EXISTING", "recreate")]).await;
    assert_code(&run, 0);
    let cm = must_get(&client, &cm_path(&ns, "conf")).await;
    assert_eq!(cm["data"]["v"], "1");
    assert_ne!(cm["metadata"]["uid"], uid, "recreate makes a new object");
    assert!(
        note_for(&run, &format!("configmaps {ns}/conf")).is_some_and(|n| n.contains("replaced")),
        "{}",
        run.stdout
    );
    // The namespace is never deleted to be recreated.
    assert!(
        note_for(&run, &format!("namespaces {ns}")).is_some_and(|n| n.contains("not recreated"))
    );

    // Dry run: one change, one deletion, nothing touched.
    set_cm(
        &client,
        &ns,
        "conf",
        json!({"v": "3"}),
        json!({"app": "shop"}),
    )
    .await;
    delete(&client, &format!("{svc_path}/web")).await;
    let run = kubestow(
        "restore",
        &repo,
        &[
            only[0],
            ("STOW_EXISTING", "update"),
            ("STOW_DRY_RUN", "true"),
        ],
    )
    .await;
    assert_code(&run, 0);
    assert_eq!(
        cm_value(&client, &ns, "conf", "v").await.as_deref(),
        Some("3")
    );
    assert!(
        get(&client, &format!("{svc_path}/web")).await.is_none(),
        "dry run created nothing"
    );
    let conflicts = run.summary["details"]["conflicts"].to_string();
    assert!(
        conflicts.contains(&format!("configmaps {ns}/conf")),
        "{conflicts}"
    );
    assert!(conflicts.contains("would update"), "{conflicts}");
    assert!(
        !conflicts.contains(&format!("services {ns}/web")),
        "{conflicts}"
    );
    assert!(run.stdout.contains(&format!("create services {ns}/web")) || run.stdout.lines().any(|l| l.starts_with("plan: create") && l.contains(&format!("services {ns}/web"))), "{}", run.stdout);
    assert!(
        run.summary["details"]["report"].is_null(),
        "a dry run writes nothing"
    );
}

/// Three backups between changes; STOW_RESTORE_POINT picks the right one
/// each time, and a time before the first is a clear error.
#[tokio::test]
async fn restore_point_picks_the_snapshot_of_that_time() {
    let (client, ns) = env::namespace("pit").await;
    let (_dir, repo) = file_repo();
    create_cm(&client, &ns, "state", json!({"v": "1"})).await;
    let before_all = jiff::Timestamp::now();
    let mut points = Vec::new();
    for v in ["1", "2", "3"] {
        set_cm(
            &client,
            &ns,
            "state",
            json!({"v": v}),
            json!({"app": "shop"}),
        )
        .await;
        let run = kubestow(
            "backup",
            &repo,
            &[("STOW_INIT", "true"), ("STOW_NAMESPACES", &ns)],
        )
        .await;
        assert_code(&run, 0);
        points.push((jiff::Timestamp::now(), v));
    }
    for (i, (point, v)) in points.iter().enumerate() {
        let target = format!("{ns}-p{i}");
        let run = kubestow(
            "restore",
            &repo,
            &[
                ("STOW_NAMESPACES", &ns),
                ("STOW_RESTORE_POINT", &point.to_string()),
                ("STOW_NAMESPACE_MAP", &format!("{ns}={target}")),
            ],
        )
        .await;
        assert_code(&run, 0);
        assert_eq!(
            cm_value(&client, &target, "state", "v").await.as_deref(),
            Some(*v),
            "point {point}"
        );
    }
    let early = before_all
        .checked_sub(jiff::SignedDuration::from_secs(60))
        .unwrap();
    let run = kubestow(
        "restore",
        &repo,
        &[
            ("STOW_NAMESPACES", &ns),
            ("STOW_RESTORE_POINT", &early.to_string()),
        ],
    )
    .await;
    assert_code(&run, 1);
    let reason = run.summary["reason"].as_str().unwrap();
    assert!(
        reason.contains("STOW_RESTORE_POINT") && reason.contains("before the oldest"),
        "{reason}"
    );
}

/// The second cluster (another apiserver, same etcd, other prefix): first
/// without the CRD, so the custom resource's type is unknown there and
/// only that item fails; then in full, CRD first.
#[tokio::test]
async fn restore_into_another_cluster_and_an_unknown_type_fails_only_its_item() {
    let (client, ns) = env::namespace("second").await;
    let (_dir, repo) = file_repo();
    let (group, _crd) = create_crd(&client, "second").await;
    create_cm(&client, &ns, "conf", json!({"k": "v"})).await;
    create_widget(&client, &group, &ns, "w1").await;
    create(&client, &format!("/apis/apps/v1/namespaces/{ns}/deployments"), json!({"metadata": {"name": "web"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}}, "template": {
            "metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}})).await;
    assert_code(
        &kubestow(
            "backup",
            &repo,
            &[("STOW_INIT", "true"), ("STOW_NAMESPACES", &ns)],
        )
        .await,
        0,
    );

    let second = env::second_cluster();
    let other = second.client().await;
    let kubeconfig = second.kubeconfig_path().display().to_string();
    let with = |extra: &[(&'static str, &str)]| {
        let mut cmd = command("restore", &repo, extra);
        cmd.env("KUBECONFIG", &kubeconfig)
            .env("STOW_NAMESPACES", &ns);
        cmd
    };
    let run = binary::run(with(&[(
        "STOW_EXCLUDE_RESOURCES",
        "customresourcedefinitions.apiextensions.k8s.io",
    )]))
    .await;
    assert_code(&run, 3);
    let err = error_for(&run, &format!("widgets.{group} {ns}/w1"))
        .unwrap_or_else(|| panic!("{}", run.stdout));
    assert!(
        err.contains("does not serve") && err.contains(&group),
        "{err}"
    );
    assert_eq!(
        run.summary["errors"].as_array().unwrap().len(),
        1,
        "{}",
        run.stdout
    );
    assert_eq!(
        cm_value(&other, &ns, "conf", "k").await.as_deref(),
        Some("v"),
        "the rest went on"
    );
    assert!(
        get(
            &other,
            &format!("/apis/apps/v1/namespaces/{ns}/deployments/web")
        )
        .await
        .is_some()
    );
    assert_ne!(
        run.summary["details"]["source_cluster"],
        Value::Null,
        "the snapshot names its source cluster"
    );

    let run = binary::run(with(&[])).await;
    assert_code(&run, 0);
    let w = must_get(
        &other,
        &format!("/apis/{group}/v1/namespaces/{ns}/widgets/w1"),
    )
    .await;
    assert_eq!(w["spec"]["size"], 3);
    // Restore read nothing from the first cluster: its kube-system differs.
    let uid = |v: Value| v["metadata"]["uid"].clone();
    assert_ne!(
        uid(must_get(&other, "/api/v1/namespaces/kube-system").await),
        uid(must_get(&client, "/api/v1/namespaces/kube-system").await)
    );
}

/// Bad input: a malformed object blob in the repository, and an RBAC
/// denial. Each fails its item with a clear message; the rest restores.
#[tokio::test]
async fn a_malformed_object_in_the_repository_fails_only_its_item() {
    let (client, ns) = env::namespace("malformed").await;
    let (_dir, repo_url) = file_repo();
    create_cm(&client, &ns, "good", json!({"k": "v"})).await;
    assert_code(
        &kubestow(
            "backup",
            &repo_url,
            &[("STOW_INIT", "true"), ("STOW_NAMESPACES", &ns)],
        )
        .await,
        0,
    );

    // The latest snapshot plus one broken object.
    let mut forged = Forged::open(&repo_url).await;
    let bad = forged
        .put_bytes(
            Some(&ns),
            &rtype("", "ConfigMap", "configmaps", true),
            "broken",
            bytes::Bytes::from_static(b"{\"kind\": \"ConfigMap\", \"metadata\": {\"na"),
        )
        .await;
    forged.save().await;

    let target = env::unique_name("malformed-copy");
    let run = kubestow(
        "restore",
        &repo_url,
        &[
            ("STOW_NAMESPACES", &ns),
            ("STOW_NAMESPACE_MAP", &format!("{ns}={target}")),
        ],
    )
    .await;
    assert_code(&run, 3);
    assert_eq!(run.summary["status"], "partial");
    let err = error_for(&run, &format!("configmaps {target}/broken"))
        .unwrap_or_else(|| panic!("{}", run.stdout));
    assert!(
        err.contains("malformed object") && err.contains(&bad.to_hex()),
        "{err}"
    );
    assert_eq!(run.summary["errors"].as_array().unwrap().len(), 1);
    assert_eq!(
        cm_value(&client, &target, "good", "k").await.as_deref(),
        Some("v")
    );
}

const RBAC: &str = "rbac.authorization.k8s.io";

fn skip_note<'a>(run: &'a Run, item: &str) -> Option<&'a str> {
    run.summary["details"]["skipped"]
        .as_array()?
        .iter()
        .find(|n| n["item"] == item)
        .and_then(|n| n["note"].as_str())
}

/// A repository written by whoever holds its key (issue 13): a
/// ClusterRoleBinding to cluster-admin filed under the namespace, the
/// ClusterRole a RoleBinding pulls in with other rules than the live one,
/// and a claim's volume on the node's `/`. A namespaced restore creates
/// none of them, changes nothing cluster-wide even with
/// `STOW_EXISTING=recreate`, and says so instead of succeeding. Only the
/// explicit settings let the role and the volume through.
#[tokio::test]
async fn a_hostile_repository_cannot_reach_beyond_the_namespace() {
    let (client, ns) = env::namespace("hostile").await;
    let (_dir, repo_url) = file_repo();
    let role = env::unique_name("hostile-role");
    let crb = env::unique_name("hostile-crb");
    let pv = env::unique_name("hostile-pv");
    let role_path = format!("/apis/{RBAC}/v1/clusterroles/{role}");
    let crb_path = format!("/apis/{RBAC}/v1/clusterrolebindings/{crb}");
    let pv_path = format!("/api/v1/persistentvolumes/{pv}");
    let live_rules = json!([{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]);
    create(
        &client,
        &format!("/apis/{RBAC}/v1/clusterroles"),
        json!({"metadata": {"name": role}, "rules": live_rules}),
    )
    .await;
    create_cm(&client, &ns, "conf", json!({"k": "v"})).await;
    create(
        &client,
        &format!("/apis/{RBAC}/v1/namespaces/{ns}/rolebindings"),
        json!({"metadata": {"name": "uses-role"},
               "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": role},
               "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": ns}]}),
    )
    .await;
    let backup = kubestow(
        "backup",
        &repo_url,
        &[("STOW_INIT", "true"), ("STOW_NAMESPACES", &ns)],
    )
    .await;
    assert_code(&backup, 0);

    let mut forged = Forged::open(&repo_url).await;
    let role_type = forged
        .cat
        .cluster
        .get(&format!("clusterroles.{RBAC}"))
        .unwrap_or_else(|| panic!("the backup pulled in {role}: {}", backup.stdout))
        .rt
        .clone();
    let hostile_rules =
        json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list"]}]);
    forged
        .put(
            None,
            &role_type,
            json!({"apiVersion": format!("{RBAC}/v1"), "kind": "ClusterRole",
                   "metadata": {"name": role}, "rules": hostile_rules}),
        )
        .await;
    // Its type recorded as namespaced, as a namespace's list would.
    forged
        .put(
            Some(&ns),
            &rtype(RBAC, "ClusterRoleBinding", "clusterrolebindings", true),
            json!({"apiVersion": format!("{RBAC}/v1"), "kind": "ClusterRoleBinding",
                   "metadata": {"name": crb, "namespace": ns},
                   "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": "cluster-admin"},
                   "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": ns}]}),
        )
        .await;
    forged
        .put(
            Some(&ns),
            &rtype("", "PersistentVolumeClaim", "persistentvolumeclaims", true),
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                   "metadata": {"name": "data", "namespace": ns},
                   "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "",
                            "resources": {"requests": {"storage": "1Gi"}}, "volumeName": pv}}),
        )
        .await;
    forged
        .put(
            None,
            &rtype("", "PersistentVolume", "persistentvolumes", false),
            json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
                   "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                            "storageClassName": "", "persistentVolumeReclaimPolicy": "Retain",
                            "hostPath": {"path": "/"}}}),
        )
        .await;
    forged.save().await;
    let live_role = must_get(&client, &role_path).await;
    let crb_item = |target: &str| format!("clusterrolebindings.{RBAC} {target}/{crb}");
    let assert_crb_refused = |run: &Run, target: &str| {
        assert_code(run, 3);
        let err = error_for(run, &crb_item(target)).unwrap_or_else(|| panic!("{}", run.stdout));
        assert!(
            err.contains(&format!("stored in namespace {ns}"))
                && err.contains("ClusterRoleBinding as cluster-scoped")
                && err.contains("not created"),
            "{err}"
        );
        assert_eq!(
            run.summary["errors"].as_array().unwrap().len(),
            1,
            "only the binding fails: {}",
            run.stdout
        );
    };

    // No cluster-scoped objects at all: the binding still comes in
    // through the namespace, and is refused.
    let t1 = env::unique_name("hostile-none");
    let run = kubestow(
        "restore",
        &repo_url,
        &[
            ("STOW_NAMESPACES", &ns),
            ("STOW_NAMESPACE_MAP", &format!("{ns}={t1}")),
            ("STOW_INCLUDE_CLUSTER_RESOURCES", "false"),
        ],
    )
    .await;
    assert_crb_refused(&run, &t1);
    assert!(get(&client, &crb_path).await.is_none(), "binding created");
    assert_eq!(
        cm_value(&client, &t1, "conf", "k").await.as_deref(),
        Some("v"),
        "the rest is restored"
    );

    // Pulled in automatically, with STOW_EXISTING=recreate: the role is
    // left as it is and the volume is not created.
    let t2 = env::unique_name("hostile-auto");
    let run = kubestow(
        "restore",
        &repo_url,
        &[
            ("STOW_NAMESPACES", &ns),
            ("STOW_NAMESPACE_MAP", &format!("{ns}={t2}")),
            ("STOW_EXISTING", "recreate"),
        ],
    )
    .await;
    assert_crb_refused(&run, &t2);
    assert!(get(&client, &crb_path).await.is_none(), "binding created");
    let now = must_get(&client, &role_path).await;
    assert_eq!(now["metadata"]["uid"], live_role["metadata"]["uid"]);
    assert_eq!(now["rules"], live_rules, "the live role is unchanged");
    let role_item = format!("clusterroles.{RBAC} {role}");
    assert!(
        run.summary["details"]["left_alone"]
            .as_array()
            .unwrap()
            .contains(&json!(role_item)),
        "{}",
        run.stdout
    );
    assert_eq!(count(&run, "left_alone"), 1, "{}", run.stdout);
    assert!(
        get(&client, &pv_path).await.is_none(),
        "host volume created"
    );
    let note = skip_note(&run, &format!("persistentvolumes {pv}"))
        .unwrap_or_else(|| panic!("{}", run.stdout));
    assert!(
        note.contains("hostPath") && note.contains("STOW_ALLOW_HOST_VOLUMES"),
        "{note}"
    );
    assert_eq!(
        cm_value(&client, &t2, "conf", "k").await.as_deref(),
        Some("v")
    );

    // Asked for explicitly: the role is updated, the volume created.
    let t3 = env::unique_name("hostile-asked");
    let run = kubestow(
        "restore",
        &repo_url,
        &[
            ("STOW_NAMESPACES", &ns),
            ("STOW_NAMESPACE_MAP", &format!("{ns}={t3}")),
            ("STOW_EXISTING_CLUSTER_RESOURCES", "update"),
            ("STOW_ALLOW_HOST_VOLUMES", &pv),
        ],
    )
    .await;
    assert_crb_refused(&run, &t3);
    let now = must_get(&client, &role_path).await;
    assert_eq!(now["metadata"]["uid"], live_role["metadata"]["uid"]);
    assert_eq!(now["rules"], hostile_rules);
    assert_eq!(
        must_get(&client, &pv_path).await["spec"]["hostPath"]["path"],
        "/"
    );
    delete(&client, &pv_path).await;
    delete(&client, &role_path).await;
}

/// STOW_NAMESPACE_MAP reaches the namespaces a NetworkPolicy's peers pick
/// by name; a peer picking namespaces by another label cannot be mapped,
/// and the plan and the summary say so.
#[tokio::test]
async fn namespace_map_reaches_network_policy_selectors() {
    let (client, ns) = env::namespace("netpol").await;
    let (_dir, repo) = file_repo();
    let name_label = "kubernetes.io/metadata.name";
    create(
        &client,
        &format!("/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies"),
        json!({"metadata": {"name": "np"}, "spec": {
            "podSelector": {}, "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [
                {"namespaceSelector": {"matchLabels": {name_label: ns}}},
                {"namespaceSelector": {"matchExpressions": [
                    {"key": name_label, "operator": "In", "values": [ns, "monitoring"]}]}}]}],
            "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"team": "shop"}}}]}]}}),
    )
    .await;
    assert_code(
        &kubestow(
            "backup",
            &repo,
            &[("STOW_INIT", "true"), ("STOW_NAMESPACES", &ns)],
        )
        .await,
        0,
    );
    let target = env::unique_name("netpol-copy");
    let map = format!("{ns}={target}");
    let item = format!("networkpolicies.networking.k8s.io {target}/np");
    let warning_of = |run: &Run| -> String {
        let warnings = run.summary["details"]["warnings"].as_array().unwrap();
        assert_eq!(warnings.len(), 1, "{}", run.stdout);
        assert_eq!(warnings[0]["item"], item.as_str());
        warnings[0]["warning"].as_str().unwrap().to_string()
    };

    let run = kubestow(
        "restore",
        &repo,
        &[
            ("STOW_NAMESPACES", &ns),
            ("STOW_NAMESPACE_MAP", &map),
            ("STOW_DRY_RUN", "true"),
        ],
    )
    .await;
    assert_code(&run, 0);
    assert!(
        run.stdout
            .lines()
            .any(|l| l.starts_with("plan: WARN") && l.contains(&item) && l.contains("team")),
        "{}",
        run.stdout
    );
    warning_of(&run);

    let run = kubestow(
        "restore",
        &repo,
        &[("STOW_NAMESPACES", &ns), ("STOW_NAMESPACE_MAP", &map)],
    )
    .await;
    assert_code(&run, 0);
    let warning = warning_of(&run);
    assert!(
        warning.contains("spec.egress[0].to[0].namespaceSelector") && warning.contains("team"),
        "{warning}"
    );
    let np = must_get(
        &client,
        &format!("/apis/networking.k8s.io/v1/namespaces/{target}/networkpolicies/np"),
    )
    .await;
    let from = &np["spec"]["ingress"][0]["from"];
    assert_eq!(
        from[0]["namespaceSelector"]["matchLabels"][name_label],
        target.as_str()
    );
    assert_eq!(
        from[1]["namespaceSelector"]["matchExpressions"][0]["values"],
        json!([target, "monitoring"])
    );
    assert_eq!(
        np["spec"]["egress"][0]["to"][0]["namespaceSelector"],
        json!({"matchLabels": {"team": "shop"}})
    );
}

#[tokio::test]
async fn an_rbac_denial_fails_only_the_denied_items() {
    let (client, ns) = env::namespace("rbac-src").await;
    let (_dir, repo) = file_repo();
    create_cm(&client, &ns, "allowed", json!({"k": "v"})).await;
    create(
        &client,
        &format!("/api/v1/namespaces/{ns}/secrets"),
        json!({"metadata": {"name": "denied"}, "stringData": {"k": "v"}}),
    )
    .await;
    assert_code(
        &kubestow(
            "backup",
            &repo,
            &[("STOW_INIT", "true"), ("STOW_NAMESPACES", &ns)],
        )
        .await,
        0,
    );

    // A ServiceAccount that may only handle ConfigMaps in the target.
    let (_, target) = env::namespace("rbac-dst").await;
    create(
        &client,
        &format!("/api/v1/namespaces/{target}/serviceaccounts"),
        json!({"metadata": {"name": "restorer"}}),
    )
    .await;
    create(&client, &format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{target}/roles"), json!({
        "metadata": {"name": "cm-only"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "create", "update"]}]})).await;
    create(
        &client,
        &format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{target}/rolebindings"),
        json!({
        "metadata": {"name": "restorer"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "cm-only"},
        "subjects": [{"kind": "ServiceAccount", "name": "restorer", "namespace": target}]}),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig =
        crate::helm::service_account_kubeconfig(&client, &target, "restorer", dir.path()).await;

    let mut cmd = command(
        "restore",
        &repo,
        &[
            ("STOW_NAMESPACES", &ns),
            ("STOW_NAMESPACE_MAP", &format!("{ns}={target}")),
        ],
    );
    cmd.env("KUBECONFIG", &kubeconfig);
    let run = binary::run(cmd).await;
    assert_code(&run, 3);
    let err = error_for(&run, &format!("secrets {target}/denied"))
        .unwrap_or_else(|| panic!("{}", run.stdout));
    assert!(err.contains("403") && err.contains("forbidden"), "{err}");
    assert_eq!(
        cm_value(&client, &target, "allowed", "k").await.as_deref(),
        Some("v"),
        "the rest went on"
    );
    assert!(
        get(
            &client,
            &format!("/api/v1/namespaces/{target}/secrets/denied")
        )
        .await
        .is_none()
    );
}

/// A namespace that is still Terminating is waited out, not raced.
#[tokio::test]
async fn restore_waits_for_a_terminating_namespace() {
    let (client, ns) = env::namespace("terminating").await;
    let (_dir, repo) = file_repo();
    create_cm(&client, &ns, "conf", json!({"k": "v"})).await;
    // Held by a finalizer of ours, so deletion stalls until we let go.
    let held = cm_path(&ns, "held");
    create(
        &client,
        &format!("/api/v1/namespaces/{ns}/configmaps"),
        json!({"metadata": {"name": "held", "finalizers": ["kubestow.test/hold"]}}),
    )
    .await;
    assert_code(
        &kubestow(
            "backup",
            &repo,
            &[
                ("STOW_INIT", "true"),
                ("STOW_NAMESPACES", &ns),
                ("STOW_EXCLUDE_RESOURCES", "secrets"),
            ],
        )
        .await,
        0,
    );
    delete(&client, &format!("/api/v1/namespaces/{ns}")).await;
    wait_until(
        "the namespace to be Terminating",
        Duration::from_secs(30),
        || async {
            get(&client, &format!("/api/v1/namespaces/{ns}"))
                .await
                .is_some_and(|n| n["status"]["phase"] == "Terminating")
        },
    )
    .await;
    let restore = tokio::spawn(binary::run(command(
        "restore",
        &repo,
        &[
            ("STOW_NAMESPACES", &ns),
            ("STOW_EXCLUDE_RESOURCES", "configmaps"),
        ],
    )));
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        !restore.is_finished(),
        "restore must wait while the namespace terminates"
    );
    // Let go: the namespace finishes deleting, and the restore proceeds.
    wait_until(
        "the held ConfigMap to be left",
        Duration::from_secs(60),
        || async {
            let Some(mut cm) = get(&client, &held).await else {
                return true;
            };
            cm["metadata"]["finalizers"] = json!([]);
            request(&client, http::Method::PUT, &held, Some(&cm))
                .await
                .is_ok()
        },
    )
    .await;
    let run = restore.await.unwrap();
    assert_code(&run, 0);
    assert!(
        run.stderr.contains("terminating; waiting"),
        "{}",
        tail(&run.stderr, 20)
    );
    let ns_obj = must_get(&client, &format!("/api/v1/namespaces/{ns}")).await;
    assert!(
        ns_obj["metadata"]["deletionTimestamp"].is_null(),
        "a new, live namespace"
    );
}

/// 5,000 ConfigMaps in one namespace back up completely; a second backup
/// stores nothing new.
#[tokio::test]
async fn a_five_thousand_object_namespace_backs_up() {
    const N: usize = 5000;
    let (client, ns) = env::namespace("five-thousand").await;
    let (_dir, repo) = file_repo();
    let path = format!("/api/v1/namespaces/{ns}/configmaps");
    let started = Instant::now();
    futures::stream::iter(0..N)
        .map(|i| {
            let (client, path) = (client.clone(), path.clone());
            async move {
                create(
                    &client,
                    &path,
                    json!({"metadata": {"name": format!("cm-{i:05}"),
                    "labels": {"batch": (i / 100).to_string()}},
                    "data": {"index": i.to_string(), "payload": "x".repeat(200)}}),
                )
                .await;
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
    eprintln!("created {N} ConfigMaps in {:.1?}", started.elapsed());

    let started = Instant::now();
    let run = kubestow(
        "backup",
        &repo,
        &[
            ("STOW_INIT", "true"),
            ("STOW_NAMESPACES", &ns),
            ("STOW_CHANNELS", "4"),
        ],
    )
    .await;
    let took = started.elapsed();
    assert_code(&run, 0);
    // Ours plus kube-root-ca.crt.
    assert_eq!(count(&run, "configmaps"), N as u64 + 1, "{}", run.stdout);
    assert!(count(&run, "objects_new") > N as u64);
    eprintln!(
        "backup of {} objects took {took:.1?}",
        count(&run, "objects")
    );
    assert!(took < Duration::from_secs(120), "backup took {took:?}");

    let run = kubestow(
        "backup",
        &repo,
        &[("STOW_NAMESPACES", &ns), ("STOW_CHANNELS", "4")],
    )
    .await;
    assert_code(&run, 0);
    assert_eq!(count(&run, "configmaps"), N as u64 + 1);
    assert_eq!(
        count(&run, "objects_new"),
        0,
        "unchanged objects cost nothing: {}",
        run.stdout
    );
}
