//! `just bench` (resources): kubestow's backup and restore of a
//! 5,000-ConfigMap namespace, side by side with `kubectl`.
//!
//! `kubectl get configmaps -o json` is the raw list, the physical limit of a
//! resource backup; `kubectl create -f` of the same objects is the plain way
//! to put them back. Both tools run against the integration tests' real
//! kube-apiserver 1.20.2 + etcd on loopback, interleaved, several rounds; the
//! medians go into BENCHMARKS.md between the `resources-bench` markers.
//!
//! Run with `cargo run --release --example bench_resources` after
//! `cargo build --release` (the release `kubestow` binary must sit beside
//! `target/release/examples/`). `KUBESTOW_BENCH_OBJECTS` and
//! `KUBESTOW_BENCH_ROUNDS` shrink it for a quick try; BENCHMARKS.md is only
//! rewritten for the default size.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use serde_json::{Value, json};

// The integration tests' fixture (it allows its own dead code), reused so
// the benchmark measures the same servers the tests run against.
#[path = "../../tests/integration/env/mod.rs"]
mod env;
mod scale;

const DEFAULT_OBJECTS: usize = 5000;
const DEFAULT_ROUNDS: usize = 3;
const PASSWORD: &str = "bench-resources-password";
const BEGIN: &str = "<!-- resources-bench:begin -->";
const END: &str = "<!-- resources-bench:end -->";
const HEADING: &str = "## Kubernetes resources: kubestow vs kubectl";

/// One timed process run.
struct Sample {
    secs: f64,
    /// Peak RSS in KiB, from `/usr/bin/time -f %M`.
    rss_kib: u64,
    /// The process's own CPU seconds, user + system (`%U`, `%S`).
    cpu_secs: f64,
    /// CPU seconds each of the cluster's servers spent during the run, in
    /// the order of `env::server_pids`.
    servers: [f64; 3],
    stdout: String,
}

/// CPU seconds (user + system, all threads) that process `pid` has used:
/// fields 14 and 15 of `/proc/<pid>/stat`, in the kernel's fixed 100 Hz
/// clock ticks.
fn cpu_of(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may hold spaces; fields are counted after it.
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map_or(Vec::new(), |(_, rest)| rest.split(' ').collect());
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (tick(11) + tick(12)) as f64 / 100.0
}

fn servers_cpu() -> [f64; 3] {
    env::server_pids().map(|(_, pid)| cpu_of(pid))
}

/// CPU seconds each server spent since `before` (a [`servers_cpu`]).
fn servers_cpu_since(before: [f64; 3]) -> [f64; 3] {
    let now = servers_cpu();
    std::array::from_fn(|i| now[i] - before[i])
}

/// Runs `program args` under `/usr/bin/time`, stdout to `stdout_to` (or
/// captured), and fails loudly on a non-zero exit.
fn timed(
    what: &str,
    program: &Path,
    args: &[&str],
    vars: &[(&str, String)],
    stdout_to: Option<&Path>,
    scratch: &Path,
) -> Sample {
    let rss_file = scratch.join("rss");
    let mut cmd = Command::new("/usr/bin/time");
    cmd.arg("-f")
        .arg("%M %U %S")
        .arg("-o")
        .arg(&rss_file)
        .arg(program)
        .args(args)
        .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
        .stderr(Stdio::piped());
    match stdout_to {
        Some(path) => {
            cmd.stdout(std::fs::File::create(path).expect("create output file"));
        }
        None => {
            cmd.stdout(Stdio::piped());
        }
    }
    let servers_before = servers_cpu();
    let started = Instant::now();
    let out = cmd
        .output()
        .expect("run /usr/bin/time (apt-get install time)");
    let secs = started.elapsed().as_secs_f64();
    let servers = servers_cpu_since(servers_before);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        panic!(
            "{what} failed ({})\n--- stdout (tail)\n{}\n--- stderr (tail)\n{}",
            out.status,
            tail(&stdout, 5),
            tail(&String::from_utf8_lossy(&out.stderr), 30)
        );
    }
    // The last line is "%M %U %S" (earlier ones are the command's own
    // complaints, if any).
    let measured = std::fs::read_to_string(&rss_file).unwrap_or_default();
    let fields: Vec<&str> = measured.lines().last().unwrap_or("").split(' ').collect();
    let field = |i: usize| fields.get(i).and_then(|f| f.trim().parse::<f64>().ok());
    let rss_kib = field(0).unwrap_or(0.0) as u64;
    let cpu_secs = field(1).unwrap_or(0.0) + field(2).unwrap_or(0.0);
    println!(
        "   {what:<42} {secs:>7.2} s   peak RSS {:>5} MiB",
        rss_kib / 1024
    );
    Sample {
        secs,
        rss_kib,
        cpu_secs,
        servers,
        stdout,
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The kubestow summary: the last stdout line.
fn summary(sample: &Sample) -> Value {
    sample
        .stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_default()
}

fn count(summary: &Value, key: &str) -> u64 {
    summary["counts"][key].as_u64().unwrap_or(0)
}

/// `target/<profile>/kubestow`, beside `target/<profile>/examples/bench_resources`.
fn kubestow_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    let bin = exe
        .parent()
        .and_then(|p| p.parent())
        .expect("target dir")
        .join("kubestow");
    assert!(
        bin.exists(),
        "{} is missing; run `cargo build --release` first (just bench does)",
        bin.display()
    );
    bin
}

fn kubestow_vars(
    mode: &str,
    repo: &str,
    extra: &[(&'static str, String)],
) -> Vec<(&'static str, String)> {
    let mut vars = vec![
        ("STOW_MODE", mode.to_owned()),
        ("STOW_REPOSITORY", repo.to_owned()),
        ("STOW_PASSWORD", PASSWORD.to_owned()),
        ("KUBECONFIG", env::kubeconfig_path().display().to_string()),
        ("RUST_LOG", "warn".to_owned()),
    ];
    vars.extend(extra.iter().cloned());
    vars
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(default)
}

async fn create_configmaps(client: &kube::Client, ns: &str, n: usize) {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            async move {
                let cm = ConfigMap {
                    metadata: ObjectMeta {
                        name: Some(format!("cm-{i:05}")),
                        labels: Some([("batch".to_owned(), (i / 100).to_string())].into()),
                        ..Default::default()
                    },
                    data: Some(
                        [
                            ("index".to_owned(), i.to_string()),
                            ("mode".to_owned(), "production".to_owned()),
                            (
                                "endpoint".to_owned(),
                                format!("http://svc-{}.local:8080", i % 50),
                            ),
                            ("payload".to_owned(), "x".repeat(200)),
                        ]
                        .into(),
                    ),
                    ..Default::default()
                };
                api.create(&PostParams::default(), &cm)
                    .await
                    .unwrap_or_else(|e| panic!("create cm-{i:05}: {e}"));
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
}

async fn create_namespace(client: &kube::Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        ..Default::default()
    };
    api.create(&PostParams::default(), &ns)
        .await
        .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
}

/// The raw paged LIST (500 per page, like kubectl) from an in-process
/// client: the API server's own cost without any process start-up.
async fn raw_list_secs(client: &kube::Client, ns: &str, expect: usize) -> f64 {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let started = Instant::now();
    let mut params = ListParams {
        limit: Some(500),
        ..Default::default()
    };
    let mut n = 0;
    loop {
        let page = api.list(&params).await.expect("list configmaps");
        n += page.items.len();
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params.continue_token = Some(token),
            _ => break,
        }
    }
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(n, expect, "listed ConfigMaps");
    println!("   {:<42} {secs:>7.2} s", "raw paged LIST, in-process");
    secs
}

/// ConfigMaps in `ns` other than the controller-made `kube-root-ca.crt`.
async fn count_configmaps(client: &kube::Client, ns: &str) -> usize {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default())
        .await
        .expect("list configmaps")
        .items
        .iter()
        .filter(|c| c.metadata.name.as_deref() != Some("kube-root-ca.crt"))
        .count()
}

/// The `kubectl create -f` input: the listed items without server-set
/// fields and without `kube-root-ca.crt` (the controller creates it in
/// every namespace; kubestow's restore skips it too). `namespace` gives an
/// item's new namespace from its old one; `None` drops the field.
pub(crate) fn create_input(
    listed: &Path,
    out: &Path,
    namespace: impl Fn(&str) -> Option<String>,
) -> usize {
    let list: Value =
        serde_json::from_slice(&std::fs::read(listed).expect("read kubectl output")).expect("json");
    let items: Vec<Value> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|i| i["metadata"]["name"] != "kube-root-ca.crt")
        .map(|i| {
            let mut i = i.clone();
            if let Some(m) = i["metadata"].as_object_mut() {
                let to = m
                    .remove("namespace")
                    .and_then(|ns| ns.as_str().and_then(&namespace));
                for k in [
                    "uid",
                    "resourceVersion",
                    "creationTimestamp",
                    "managedFields",
                    "selfLink",
                    "generation",
                ] {
                    m.remove(k);
                }
                if let Some(to) = to {
                    m.insert("namespace".into(), Value::from(to));
                }
            }
            i
        })
        .collect();
    let n = items.len();
    let doc = json!({"apiVersion": "v1", "kind": "List", "items": items});
    std::fs::write(out, serde_json::to_vec(&doc).expect("serialise")).expect("write list");
    n
}

fn mib(kib: u64) -> u64 {
    (kib + 512) / 1024
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let objects = env_usize("KUBESTOW_BENCH_OBJECTS", DEFAULT_OBJECTS);
    let rounds = env_usize("KUBESTOW_BENCH_ROUNDS", DEFAULT_ROUNDS);
    let kubestow = kubestow_binary();
    let kubectl = PathBuf::from("kubectl");
    let scratch = tempfile::Builder::new()
        .prefix("kubestow-bench-resources-")
        .tempdir()
        .expect("scratch dir");
    let dir = scratch.path();

    println!("Resources benchmark: {objects} ConfigMaps, {rounds} rounds, kubestow vs kubectl");
    let started = Instant::now();
    env::cluster();
    println!(
        "   test environment ready in {:.1?} (kube-apiserver 1.20.2 + etcd on loopback)",
        started.elapsed()
    );
    let kubeconfig = env::kubeconfig_path().display().to_string();
    // Through the server, so a version dispatcher reports what it runs.
    let kubectl_version = Command::new(&kubectl)
        .args(["--kubeconfig", &kubeconfig, "version", "-o", "json"])
        .output()
        .ok()
        .and_then(|o| serde_json::from_slice::<Value>(&o.stdout).ok())
        .and_then(|v| v["clientVersion"]["gitVersion"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "(unknown version)".to_owned());
    println!("   kubectl {kubectl_version}");
    if let Ok(v) = std::env::var("KUBESTOW_BENCH_SCALE") {
        let objects = v
            .parse()
            .ok()
            .filter(|&n: &usize| n > 0)
            .unwrap_or(scale::DEFAULT_OBJECTS);
        return scale::run(objects, dir, &kubectl_version).await;
    }

    let (client, ns) = env::namespace("bench-resources").await;
    let started = Instant::now();
    create_configmaps(&client, &ns, objects).await;
    println!(
        "   created {objects} ConfigMaps in {ns} in {:.1?}",
        started.elapsed()
    );

    // ---------------------------------------------------------- backup
    println!("\nBackup ({rounds} rounds, interleaved)");
    let listed = dir.join("listed.json");
    let (mut get_s, mut backup_s, mut rebackup_s) = (vec![], vec![], vec![]);
    let (mut backup_rss, mut rebackup_rss, mut kubectl_get_rss) = (0u64, 0u64, 0u64);
    let mut repos = vec![];
    let mut raw_s = vec![];
    for round in 0..rounds {
        let repo = format!("file://{}/repo-{round}", dir.display());
        let get = || {
            timed(
                "kubectl get configmaps -o json",
                &kubectl,
                &[
                    "--kubeconfig",
                    &kubeconfig,
                    "get",
                    "configmaps",
                    "-n",
                    &ns,
                    "-o",
                    "json",
                ],
                &[],
                Some(&listed),
                dir,
            )
        };
        let backup = |first: bool| {
            let mut extra = vec![
                ("STOW_NAMESPACES", ns.clone()),
                ("STOW_INCLUDE_RESOURCES", "configmaps".to_owned()),
            ];
            if first {
                extra.push(("STOW_INIT", "true".to_owned()));
            }
            let s = timed(
                if first {
                    "kubestow backup (fresh repository)"
                } else {
                    "kubestow backup (unchanged re-backup)"
                },
                &kubestow,
                &[],
                &kubestow_vars("backup", &repo, &extra),
                None,
                dir,
            );
            let sum = summary(&s);
            assert_eq!(
                count(&sum, "configmaps"),
                objects as u64 + 1,
                "ConfigMaps in the backup (ours plus kube-root-ca.crt): {sum}"
            );
            if !first {
                assert_eq!(count(&sum, "objects_new"), 0, "unchanged: {sum}");
            }
            s
        };
        // Alternate which tool goes first, so neither always meets a warmer server.
        let (g, b) = if round % 2 == 0 {
            let g = get();
            (g, backup(true))
        } else {
            let b = backup(true);
            (get(), b)
        };
        let r = backup(false);
        raw_s.push(raw_list_secs(&client, &ns, objects + 1).await);
        get_s.push(g.secs);
        backup_s.push(b.secs);
        rebackup_s.push(r.secs);
        kubectl_get_rss = kubectl_get_rss.max(g.rss_kib);
        backup_rss = backup_rss.max(b.rss_kib);
        rebackup_rss = rebackup_rss.max(r.rss_kib);
        repos.push(repo);
    }
    let list_bytes = std::fs::metadata(&listed).map(|m| m.len()).unwrap_or(0);

    // --------------------------------------------------------- restore
    println!("\nRestore ({rounds} rounds, interleaved; each into a fresh namespace)");
    let create_file = dir.join("create.json");
    let n_items = create_input(&listed, &create_file, |_| None);
    assert_eq!(n_items, objects, "items for kubectl create");
    let (mut create_s, mut restore4_s, mut restore1_s) = (vec![], vec![], vec![]);
    let (mut create_rss, mut restore4_rss, mut restore1_rss) = (0u64, 0u64, 0u64);
    for round in 0..rounds {
        for step in 0..3 {
            // Rotate the order of the three runs from round to round.
            match (step + round) % 3 {
                0 => {
                    let target = env::unique_name("bench-kubectl-create");
                    create_namespace(&client, &target).await;
                    let s = timed(
                        "kubectl create -f (List)",
                        &kubectl,
                        &[
                            "--kubeconfig",
                            &kubeconfig,
                            "create",
                            "-f",
                            &create_file.display().to_string(),
                            "-n",
                            &target,
                            "-o",
                            "name",
                        ],
                        &[],
                        Some(&dir.join("created.txt")),
                        dir,
                    );
                    assert_eq!(count_configmaps(&client, &target).await, objects);
                    create_s.push(s.secs);
                    create_rss = create_rss.max(s.rss_kib);
                }
                k => {
                    let channels = if k == 1 { 4 } else { 1 };
                    let target = env::unique_name(&format!("bench-restore-c{channels}"));
                    let (s, sum) = restore_run(
                        &kubestow,
                        &repos[round % repos.len()],
                        &ns,
                        "configmaps",
                        &format!("{ns}={target}"),
                        channels,
                        dir,
                    );
                    assert_eq!(count_configmaps(&client, &target).await, objects, "{sum}");
                    if channels == 4 {
                        restore4_s.push(s.secs);
                        restore4_rss = restore4_rss.max(s.rss_kib);
                    } else {
                        restore1_s.push(s.secs);
                        restore1_rss = restore1_rss.max(s.rss_kib);
                    }
                }
            }
        }
    }

    // ---------------------------------------------------------- report
    let (get_m, backup_m, rebackup_m) = (median(&get_s), median(&backup_s), median(&rebackup_s));
    let (create_m, r4_m, r1_m) = (median(&create_s), median(&restore4_s), median(&restore1_s));
    let now = jiff::Timestamp::now().strftime("%Y-%m-%d %H:%M UTC");
    let mut md = String::new();
    md.push_str(&format!(
        "Measured {now} by `just bench` on this machine ({} cores).\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    ));
    md.push_str(&format!(
        "{objects} ConfigMaps (four small data keys each; `kubectl get -o json` of them is {:.1} MiB) in one namespace, \
         against the test environment's real kube-apiserver 1.20.2 + etcd on loopback; kubectl {kubectl_version}. \
         Median of {rounds} interleaved rounds; backups with `STOW_INCLUDE_RESOURCES=configmaps` to a fresh local repository each round \
         (default `STOW_CHANNELS=1`), restores with `STOW_CHANNELS=4` and `1`, each into a fresh namespace (`STOW_NAMESPACE_MAP`). \
         `kubectl create -f` gets a List of the same objects without server-set fields, into a namespace created just before.\n\n",
        list_bytes as f64 / (1024.0 * 1024.0)
    ));
    md.push_str("| operation | kubectl s | kubestow s | kubectl ÷ kubestow | kubestow peak RSS MiB | kubectl peak RSS MiB |\n");
    md.push_str("|---|---|---|---|---|---|\n");
    let row = |md: &mut String, op: &str, k: f64, s: f64, srss: u64, krss: u64| {
        md.push_str(&format!(
            "| {op} | {k:.2} | {s:.2} | {:.2}x | {} | {} |\n",
            k / s,
            mib(srss),
            mib(krss)
        ));
    };
    row(
        &mut md,
        "backup vs `kubectl get configmaps -o json`",
        get_m,
        backup_m,
        backup_rss,
        kubectl_get_rss,
    );
    row(
        &mut md,
        "unchanged re-backup vs `kubectl get configmaps -o json`",
        get_m,
        rebackup_m,
        rebackup_rss,
        kubectl_get_rss,
    );
    row(
        &mut md,
        "restore, `STOW_CHANNELS=4`, vs `kubectl create -f`",
        create_m,
        r4_m,
        restore4_rss,
        create_rss,
    );
    row(
        &mut md,
        "restore, `STOW_CHANNELS=1`, vs `kubectl create -f`",
        create_m,
        r1_m,
        restore1_rss,
        create_rss,
    );
    md.push_str(
        "\nThe ratio is kubectl's time divided by kubestow's: above 1 means kubestow is faster, \
         below 1 is the fraction of kubectl's speed that kubestow reaches. \
         Timings and peak RSS (`/usr/bin/time -f %M`) are of the whole process, start-up included.\n",
    );
    let raw_m = median(&raw_s);
    md.push_str(&format!(
        "For reference, the raw paged LIST of the same ConfigMaps (500 per page, as kubectl pages) from an \
         in-process kube client takes {raw_m:.2} s, with no process start-up, discovery or output; \
         kubestow's whole backup run takes {:.1}x that.\n",
        backup_m / raw_m
    ));
    println!("\n{md}");

    if objects != DEFAULT_OBJECTS || rounds != DEFAULT_ROUNDS {
        println!("(non-default size: BENCHMARKS.md left as it is)");
        return;
    }
    write_section(BEGIN, END, HEADING, &md);
}

/// A kubestow restore of `kinds` from `namespaces` (comma-separated)
/// through `map`, with `channels`, timed; no item may fail.
fn restore_run(
    kubestow: &Path,
    repo: &str,
    namespaces: &str,
    kinds: &str,
    map: &str,
    channels: usize,
    dir: &Path,
) -> (Sample, Value) {
    let s = timed(
        &format!("kubestow restore (STOW_CHANNELS={channels})"),
        kubestow,
        &[],
        &kubestow_vars(
            "restore",
            repo,
            &[
                ("STOW_NAMESPACES", namespaces.to_owned()),
                ("STOW_INCLUDE_RESOURCES", kinds.to_owned()),
                ("STOW_NAMESPACE_MAP", map.to_owned()),
                ("STOW_CHANNELS", channels.to_string()),
            ],
        ),
        None,
        dir,
    );
    let sum = summary(&s);
    assert_eq!(count(&sum, "failed"), 0, "{sum}");
    (s, sum)
}

/// Replaces the text between `begin` and `end` in BENCHMARKS.md with `md`,
/// or appends it under `heading`.
fn write_section(begin: &str, end: &str, heading: &str, md: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("BENCHMARKS.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let block = format!("{begin}\n{md}{end}");
    let new = match (old.find(begin), old.find(end)) {
        (Some(b), Some(e)) if b < e => format!("{}{block}{}", &old[..b], &old[e + end.len()..]),
        _ => format!(
            "{}\n\n{heading}\n\nCommand: `cargo run --release --example bench_resources` (run by `just bench` after \
             `cargo build --release`; needs `just setup`; `KUBESTOW_BENCH_SCALE=100000` for the scale part, run by \
             `just bench-scale`), which rewrites this section.\n\n{block}\n",
            old.trim_end()
        ),
    };
    std::fs::write(&path, new).expect("write BENCHMARKS.md");
    println!("updated {}", path.display());
}
