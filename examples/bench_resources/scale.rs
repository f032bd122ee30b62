//! `just bench-scale` (resources): 100,000 objects, half ConfigMaps and half
//! custom resources of a CRD, spread over 100 namespaces.
//!
//! - The limit: a parallel in-process client creates the source objects
//!   with many requests in flight, then fresh copies of a fifth of them at
//!   8 and 64 in flight; its best rate is the fastest this API server
//!   takes these objects, whoever sends them.
//! - Backup: kubestow against `kubectl get configmaps,widgets -A -l ... -o
//!   json` of the same set (the raw list, written out).
//! - Restore: kubestow with `STOW_CHANNELS=4` against `kubectl create
//!   -f` of a List of the same objects, each into fresh namespaces.
//! - Where the time goes: the CPU seconds of the client and of each server
//!   process (kube-apiserver, etcd, kube-controller-manager) while each of
//!   the above ran.
//!
//! One round (it takes minutes); the result replaces the section between
//! the `resources-scale` markers in BENCHMARKS.md, unless the size was
//! changed with `KUBESTOW_BENCH_SCALE`.

use std::path::Path;
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, PostParams};
use serde_json::{Value, json};

use super::{
    count, cpu_of, create_input, env, kubestow_binary, kubestow_vars, mib, restore_run,
    servers_cpu, servers_cpu_since, summary, timed,
};

pub const DEFAULT_OBJECTS: usize = 100_000;
const NAMESPACES: usize = 100;
/// Requests in flight for the parallel client that creates the source.
const CLIENT_IN_FLIGHT: usize = 64;
/// The limit is probed again at these requests in flight, each on its own
/// fresh copy of the first `PROBE_NAMESPACES` namespaces' objects: on 2
/// cores the client, the API server and etcd compete, so more in flight is
/// not always faster.
const PROBE_IN_FLIGHT: [usize; 2] = [8, 64];
const PROBE_NAMESPACES: usize = 20;
/// Restores measured, by `STOW_CHANNELS`. More were no faster: 8, 16 and
/// 64 took 627/s, 668/s and 639/s against 4's 649/s and 769/s (runs of
/// 2026-12-04 and 12-02), and each restore of 100k objects takes minutes.
const RESTORE_CHANNELS: [usize; 1] = [4];
/// One run of the in-process client at `in_flight` requests.
struct Probe {
    in_flight: usize,
    objects: usize,
    secs: f64,
    /// This process's CPU seconds (the client).
    client_cpu: f64,
    /// As in `Sample::servers`.
    servers: [f64; 3],
}

impl Probe {
    fn rate(&self) -> f64 {
        self.objects as f64 / self.secs
    }
}

const GROUP: &str = "scale.bench.kubestow.io";
const LABEL: &str = "kubestow-bench";
const BEGIN: &str = "<!-- resources-scale:begin -->";
const END: &str = "<!-- resources-scale:end -->";

fn widgets() -> ApiResource {
    ApiResource {
        group: GROUP.into(),
        version: "v1".into(),
        api_version: format!("{GROUP}/v1"),
        kind: "Widget".into(),
        plural: "widgets".into(),
    }
}

async fn install_crd(client: &kube::Client) {
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "metadata": {"name": format!("widgets.{GROUP}")},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [{"name": "v1", "served": true, "storage": true, "schema": {
                "openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "properties": {
                        "size": {"type": "integer"}, "colour": {"type": "string"},
                        "owner": {"type": "string"}}}}}}}]
        }
    }))
    .expect("CRD");
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    match api.create(&PostParams::default(), &crd).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("create CRD: {e}"),
    }
    let name = format!("widgets.{GROUP}");
    for _ in 0..300 {
        let c = api.get(&name).await.expect("get CRD");
        let established = c.status.and_then(|s| s.conditions).is_some_and(|cs| {
            cs.iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        });
        if established {
            // Discovery lags the condition by a moment.
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("CRD {name} not Established in 30 s");
}

/// Object `i` of namespace `ns`: even ones ConfigMaps, odd ones Widgets.
fn object(ns: &str, i: usize) -> Value {
    let labels = json!({LABEL: "scale", "batch": (i / 100).to_string()});
    let colour = ["red", "green", "blue"][i % 3];
    if i.is_multiple_of(2) {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": format!("cm-{i:05}"), "namespace": ns, "labels": labels},
               "data": {"index": i.to_string(), "mode": "production",
                        "endpoint": format!("http://svc-{}.local:8080", i % 50),
                        "payload": "x".repeat(200)}})
    } else {
        json!({"apiVersion": format!("{GROUP}/v1"), "kind": "Widget",
               "metadata": {"name": format!("w-{i:05}"), "namespace": ns, "labels": labels},
               "spec": {"size": i, "colour": colour,
                        "owner": format!("team-{}", i % 20)}})
    }
}

/// Creates the objects with `in_flight` requests at once; objects per second.
async fn create_all(client: &kube::Client, objects: &[Value], in_flight: usize) -> f64 {
    let wr = widgets();
    let started = Instant::now();
    futures::stream::iter(objects)
        .map(|o| {
            let client = client.clone();
            let wr = wr.clone();
            async move {
                let ns = o["metadata"]["namespace"].as_str().expect("namespace");
                let pp = PostParams::default();
                let r = if o["kind"] == "ConfigMap" {
                    let cm: ConfigMap = serde_json::from_value(o.clone()).expect("ConfigMap");
                    Api::<ConfigMap>::namespaced(client, ns)
                        .create(&pp, &cm)
                        .await
                        .map(drop)
                } else {
                    let w: DynamicObject = serde_json::from_value(o.clone()).expect("Widget");
                    Api::<DynamicObject>::namespaced_with(client, ns, &wr)
                        .create(&pp, &w)
                        .await
                        .map(drop)
                };
                r.unwrap_or_else(|e| panic!("create {}: {e}", o["metadata"]["name"]));
            }
        })
        .buffer_unordered(in_flight)
        .collect::<Vec<()>>()
        .await;
    objects.len() as f64 / started.elapsed().as_secs_f64()
}

/// The benchmark's objects (both kinds) in `namespaces`.
async fn count_objects(client: &kube::Client, namespaces: &[String]) -> usize {
    let lp = ListParams::default().labels(&format!("{LABEL}=scale"));
    let mut n = 0;
    for ns in namespaces {
        n += Api::<ConfigMap>::namespaced(client.clone(), ns)
            .list(&lp)
            .await
            .expect("list ConfigMaps")
            .items
            .len();
        n += Api::<DynamicObject>::namespaced_with(client.clone(), ns, &widgets())
            .list(&lp)
            .await
            .expect("list Widgets")
            .items
            .len();
    }
    n
}

/// Fresh, settled namespaces: `count` of them.
async fn namespaces(hint: &str, count: usize) -> Vec<String> {
    futures::stream::iter(0..count)
        .map(|_| async { env::namespace(hint).await.1 })
        .buffered(16)
        .collect()
        .await
}

pub async fn run(objects: usize, dir: &Path, kubectl_version: &str) {
    let kubestow = kubestow_binary();
    let kubeconfig = env::kubeconfig_path().display().to_string();
    let client = env::kube_client().await;
    let per_ns = objects.div_ceil(NAMESPACES);
    println!(
        "\nResources at scale: {objects} objects (ConfigMaps and Widgets) in {NAMESPACES} namespaces"
    );
    install_crd(&client).await;
    let source = namespaces("scale-src", NAMESPACES).await;
    let wanted: Vec<Value> = (0..objects)
        .map(|i| object(&source[i / per_ns], i % per_ns))
        .collect();
    let limit = create_all(&client, &wanted, CLIENT_IN_FLIGHT).await;
    println!("   parallel client, {CLIENT_IN_FLIGHT} in flight: {objects} objects at {limit:.0}/s");
    assert_eq!(count_objects(&client, &source).await, objects);
    let mut probes = Vec::new();
    for in_flight in PROBE_IN_FLIGHT {
        let target = namespaces(&format!("scale-p{in_flight}"), PROBE_NAMESPACES).await;
        let subset: Vec<Value> = (0..PROBE_NAMESPACES * per_ns)
            .map(|i| {
                let mut o = object(&target[i / per_ns], i % per_ns);
                // Not part of the set the backup and `kubectl get` select.
                o["metadata"]["labels"][LABEL] = json!("probe");
                o
            })
            .collect();
        let (client_before, servers_before) = (cpu_of(std::process::id()), servers_cpu());
        let started = Instant::now();
        create_all(&client, &subset, in_flight).await;
        let probe = Probe {
            in_flight,
            objects: subset.len(),
            secs: started.elapsed().as_secs_f64(),
            client_cpu: cpu_of(std::process::id()) - client_before,
            servers: servers_cpu_since(servers_before),
        };
        println!(
            "   parallel client, {in_flight} in flight: {} objects at {:.0}/s",
            probe.objects,
            probe.rate()
        );
        probes.push(probe);
    }
    drop(wanted);

    // ---------------------------------------------------------- backup
    let listed = dir.join("scale-listed.json");
    let selector = format!("{LABEL}=scale");
    let kinds = format!("configmaps,widgets.{GROUP}");
    let get = timed(
        "kubectl get -A -l ... -o json",
        Path::new("kubectl"),
        &[
            "--kubeconfig",
            &kubeconfig,
            "get",
            &kinds,
            "-A",
            "-l",
            &selector,
            "-o",
            "json",
        ],
        &[],
        Some(&listed),
        dir,
    );
    let repo = format!("file://{}/scale-repo", dir.display());
    let backup_vars = kubestow_vars(
        "backup",
        &repo,
        &[
            ("STOW_NAMESPACES", source.join(",")),
            ("STOW_INCLUDE_RESOURCES", kinds.clone()),
            ("STOW_INIT", "true".to_owned()),
        ],
    );
    let backup = timed("kubestow backup", &kubestow, &[], &backup_vars, None, dir);
    let sum = summary(&backup);
    let backed_up = count(&sum, "configmaps") + count(&sum, &format!("widgets.{GROUP}"));
    // Each namespace also holds the controller's kube-root-ca.crt.
    assert_eq!(
        backed_up,
        (objects + NAMESPACES) as u64,
        "objects in the backup: {sum}"
    );

    // --------------------------------------------------------- restore
    let kubectl_ns = namespaces("scale-kubectl", NAMESPACES).await;
    let map: Vec<(String, String)> = source.iter().cloned().zip(kubectl_ns.clone()).collect();
    let create_file = dir.join("scale-create.json");
    let items = create_input(&listed, &create_file, |ns| {
        map.iter()
            .find(|(from, _)| from == ns)
            .map(|(_, to)| to.clone())
    });
    assert_eq!(items, objects, "items for kubectl create");
    let create = timed(
        "kubectl create -f (List)",
        Path::new("kubectl"),
        &[
            "--kubeconfig",
            &kubeconfig,
            "create",
            "-f",
            &create_file.display().to_string(),
            "-o",
            "name",
        ],
        &[],
        Some(&dir.join("scale-created.txt")),
        dir,
    );
    assert_eq!(count_objects(&client, &kubectl_ns).await, objects);
    let mut restores = Vec::new();
    for channels in RESTORE_CHANNELS {
        let target = namespaces(&format!("scale-c{channels}"), NAMESPACES).await;
        let map: Vec<String> = source
            .iter()
            .zip(&target)
            .map(|(s, t)| format!("{s}={t}"))
            .collect();
        let (s, sum) = restore_run(
            &kubestow,
            &repo,
            &source.join(","),
            &kinds,
            &map.join(","),
            channels,
            dir,
        );
        assert_eq!(count_objects(&client, &target).await, objects, "{sum}");
        restores.push((channels, s));
    }

    // ---------------------------------------------------------- report
    let now = jiff::Timestamp::now().strftime("%Y-%m-%d %H:%M UTC");
    let list_mib = std::fs::metadata(&listed).map_or(0.0, |m| m.len() as f64 / 1048576.0);
    let mut md = format!(
        "Measured {now} by `just bench-scale` on this machine ({} cores), one round.\n\
         {objects} objects in {NAMESPACES} namespaces: half ConfigMaps (four small data keys), half custom \
         resources of a CRD (`widgets.{GROUP}`); `kubectl get -o json` of them is {list_mib:.0} MiB. \
         Against the test environment's real kube-apiserver 1.20.2 + etcd on loopback; kubectl {kubectl_version}. \
         The backup goes to a fresh local repository with the default `STOW_CHANNELS=1`; each restore and \
         `kubectl create -f` (a List of the same objects without server-set fields) goes into {NAMESPACES} fresh namespaces.\n\n\
         | operation | kubestow s | kubectl s | kubectl ÷ kubestow | objects/s | kubestow peak RSS MiB | kubectl peak RSS MiB |\n\
         |---|---|---|---|---|---|---|\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let n = objects as f64;
    let row = |md: &mut String, op: &str, ours: &super::Sample, theirs: &super::Sample| {
        md.push_str(&format!(
            "| {op} | {:.1} | {:.1} | {:.2}x | {:.0} | {} | {} |\n",
            ours.secs,
            theirs.secs,
            theirs.secs / ours.secs,
            n / ours.secs,
            mib(ours.rss_kib),
            mib(theirs.rss_kib)
        ));
    };
    row(
        &mut md,
        "backup vs `kubectl get -A -l … -o json`",
        &backup,
        &get,
    );
    for (channels, s) in &restores {
        let op = format!("restore, `STOW_CHANNELS={channels}`, vs `kubectl create -f`");
        row(&mut md, &op, s, &create);
    }
    md.push_str(&format!(
        "\nThe API server's limit, measured: an in-process client with {CLIENT_IN_FLIGHT} requests in flight \
         created the same objects at {limit:.0}/s (kubectl: {:.0}/s, one request at a time). \
         The same client on fresh copies of the first {PROBE_NAMESPACES} namespaces' objects: {}.\n",
        n / create.secs,
        probes
            .iter()
            .map(|p| format!(
                "{:.0}/s with {} in flight ({} objects)",
                p.rate(),
                p.in_flight,
                p.objects
            ))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    // Where the time goes: CPU seconds of the client and of each server
    // while it ran, against the 2 cores' wall time.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    md.push_str(
        "\nCPU seconds (user + system) spent while each ran, by process; \"busy\" is their sum over the wall time of all cores:\n\n\
         | operation | wall s | client | kube-apiserver | etcd | kube-controller-manager | busy |\n\
         |---|---|---|---|---|---|---|\n",
    );
    let cpu_row = |md: &mut String, op: &str, wall: f64, client: f64, servers: &[f64; 3]| {
        let busy = (client + servers.iter().sum::<f64>()) / (wall * cores);
        md.push_str(&format!(
            "| {op} | {wall:.1} | {client:.1} | {:.1} | {:.1} | {:.1} | {:.0}% |\n",
            servers[0],
            servers[1],
            servers[2],
            100.0 * busy
        ));
    };
    for p in &probes {
        cpu_row(
            &mut md,
            &format!(
                "in-process client, {} in flight, {} objects",
                p.in_flight, p.objects
            ),
            p.secs,
            p.client_cpu,
            &p.servers,
        );
    }
    cpu_row(
        &mut md,
        "`kubectl create -f`",
        create.secs,
        create.cpu_secs,
        &create.servers,
    );
    for (channels, s) in &restores {
        cpu_row(
            &mut md,
            &format!("kubestow restore, `STOW_CHANNELS={channels}`"),
            s.secs,
            s.cpu_secs,
            &s.servers,
        );
    }
    cpu_row(
        &mut md,
        "`kubectl get -A -l … -o json`",
        get.secs,
        get.cpu_secs,
        &get.servers,
    );
    cpu_row(
        &mut md,
        "kubestow backup",
        backup.secs,
        backup.cpu_secs,
        &backup.servers,
    );
    println!("\n{md}");
    if objects != DEFAULT_OBJECTS {
        println!("(non-default size: BENCHMARKS.md left as it is)");
        return;
    }
    super::write_section(BEGIN, END, "## Kubernetes resources at scale", &md);
}
