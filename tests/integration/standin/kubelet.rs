//! "Test kubelet": registers fake nodes, schedules the pods of its namespaces
//! onto them (the cluster has no scheduler), runs `kubestow` containers as
//! local processes and reports pod status like a kubelet, so the real
//! controllers (Job, StatefulSet, GC) see pods run, finish and go away.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use http::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{call, delete, get_opt, list, now_rfc3339, s};

/// Node status refresh; the node lifecycle controller waits 40 s.
const HEARTBEAT: Duration = Duration::from_secs(10);
/// How often running processes are checked (exits, faults, deletion).
const TICK: Duration = Duration::from_millis(100);
/// Delay before restarting a container (restartPolicy OnFailure/Always).
const RESTART_DELAY: Duration = Duration::from_secs(1);
/// A kubelet truncates termination messages to 4 KiB.
const MESSAGE_LIMIT: usize = 4096;

/// What a fault-injection function sees about a pod.
#[derive(Debug, Clone)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// The `job-name` label.
    pub job_name: Option<String>,
    /// How many pods of the same Job this kubelet started before (0-based).
    pub attempt: usize,
}

/// A kill the kubelet inflicts on a pod's first kubestow process (SIGKILL,
/// exit code 137, like an OOM kill).
#[derive(Clone)]
pub enum Fault {
    KillAfter(Duration),
    KillWhen(Arc<dyn Fn() -> bool + Send + Sync>),
}

/// One process the kubelet ran.
#[derive(Debug, Clone)]
pub struct RunRecord {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub job_name: Option<String>,
    pub attempt: usize,
    pub started: SystemTime,
    /// `None` while running; 128 + signal when killed.
    pub exit_code: Option<i32>,
}

type FaultFn = dyn Fn(&PodInfo) -> Option<Fault> + Send + Sync;

/// The kubelet for `nodes`, acting only on pods in `namespaces`. Stops, kills
/// its processes and deletes its Node objects when dropped (the deletion
/// needs a multi-thread runtime; on a current-thread one the nodes stay).
pub struct TestKubelet {
    inner: Arc<Inner>,
    task: JoinHandle<()>,
}

struct Inner {
    client: kube::Client,
    root: PathBuf,
    nodes: Vec<String>,
    namespaces: Vec<String>,
    binary: PathBuf,
    started_at: String,
    fault: Mutex<Option<Arc<FaultFn>>>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    runs: Vec<RunRecord>,
    /// Pods started per (namespace, Job).
    job_pods: HashMap<(String, String), usize>,
    /// Live child processes, killed on drop.
    pids: HashSet<u32>,
}

impl TestKubelet {
    /// Registers the nodes (Ready) and starts scheduling and running pods.
    pub async fn start(
        client: kube::Client,
        root: &Path,
        nodes: &[&str],
        namespaces: &[&str],
        kubestow_binary: &Path,
    ) -> TestKubelet {
        std::fs::create_dir_all(root.join("logs")).expect("creating the kubelet log dir");
        let inner = Arc::new(Inner {
            client,
            root: root.to_owned(),
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
            namespaces: namespaces.iter().map(|n| n.to_string()).collect(),
            binary: kubestow_binary.to_owned(),
            started_at: now_rfc3339(),
            fault: Mutex::new(None),
            state: Mutex::new(State::default()),
        });
        for node in &inner.nodes {
            inner.register(node).await;
        }
        let task = tokio::spawn(inner.clone().run());
        TestKubelet { inner, task }
    }

    /// Decides per pod (when it starts) whether and how to kill it.
    pub fn set_fault(&self, f: impl Fn(&PodInfo) -> Option<Fault> + Send + Sync + 'static) {
        *self.inner.fault.lock().unwrap() = Some(Arc::new(f));
    }

    /// Every process run so far, in start order.
    pub fn runs(&self) -> Vec<RunRecord> {
        self.inner.state.lock().unwrap().runs.clone()
    }

    /// The stdout+stderr of a pod's processes so far.
    pub fn log(&self, namespace: &str, pod: &str) -> String {
        std::fs::read_to_string(self.inner.log_path(namespace, pod)).unwrap_or_default()
    }
}

impl Drop for TestKubelet {
    fn drop(&mut self) {
        self.task.abort();
        for pid in self.inner.state.lock().unwrap().pids.drain() {
            kill(pid, rustix::process::Signal::KILL);
        }
        // Leftover NotReady nodes would fail other tests' preflight checks;
        // deleting needs to block, which only a multi-thread runtime allows.
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
            return;
        }
        let inner = self.inner.clone();
        tokio::task::block_in_place(|| {
            handle.block_on(async {
                let deletes = inner.nodes.iter().map(|n| {
                    let path = format!("/api/v1/nodes/{n}");
                    let client = inner.client.clone();
                    async move { delete(&client, &path, None).await }
                });
                let _ = tokio::time::timeout(
                    Duration::from_secs(5),
                    futures::future::join_all(deletes),
                )
                .await;
            })
        });
    }
}

fn kill(pid: u32, signal: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

fn node_labels(node: &str) -> BTreeMap<&'static str, String> {
    BTreeMap::from([
        ("kubernetes.io/hostname", node.to_owned()),
        ("kubernetes.io/os", "linux".to_owned()),
        ("kubernetes.io/arch", "amd64".to_owned()),
    ])
}

/// A live pod task's handle: tells it about deletion (the grace period).
struct PodEntry {
    node: String,
    deleting: watch::Sender<Option<u64>>,
}

impl Inner {
    fn log_path(&self, namespace: &str, pod: &str) -> PathBuf {
        self.root
            .join("logs")
            .join(format!("{namespace}_{pod}.log"))
    }

    /// Where a real kubelet keeps a pod's volumes, under the node's root.
    fn pod_dir(&self, node: &str, uid: &str) -> PathBuf {
        self.root
            .join("nodes")
            .join(node)
            .join("var/lib/kubelet/pods")
            .join(uid)
    }

    async fn register(&self, node: &str) {
        let body = json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": node, "labels": node_labels(node)},
        });
        if let Err(e) = call(&self.client, Method::POST, "/api/v1/nodes", Some(body)).await {
            assert!(e.code == Some(409), "registering node {node}: {e}");
        }
        self.heartbeat(node)
            .await
            .unwrap_or_else(|e| panic!("reporting status of node {node}: {e}"));
    }

    async fn heartbeat(&self, node: &str) -> Result<(), super::ApiError> {
        let resources =
            json!({"cpu": "8", "memory": "32Gi", "pods": "110", "ephemeral-storage": "100Gi"});
        let status = json!({"status": {
            "conditions": [{
                "type": "Ready",
                "status": "True",
                "reason": "KubeletReady",
                "message": "test kubelet is posting ready status",
                "lastHeartbeatTime": now_rfc3339(),
                "lastTransitionTime": self.started_at,
            }],
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": node},
            ],
            "capacity": resources,
            "allocatable": resources,
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": node, "systemUUID": node, "bootID": node,
                "kernelVersion": "test", "osImage": "test kubelet",
                "containerRuntimeVersion": "test://1", "kubeletVersion": "v1.20.2",
                "kubeProxyVersion": "v1.20.2", "operatingSystem": "linux", "architecture": "amd64",
            },
        }});
        let path = format!("/api/v1/nodes/{node}/status");
        call(&self.client, Method::PATCH, &path, Some(status))
            .await
            .map(drop)
    }

    async fn run(self: Arc<Self>) {
        // Owning the pod tasks here means aborting this task aborts them too.
        let mut tasks = tokio::task::JoinSet::new();
        let mut pods: HashMap<String, PodEntry> = HashMap::new();
        let mut last_beat = Instant::now();
        loop {
            if last_beat.elapsed() >= HEARTBEAT {
                for node in &self.nodes {
                    if let Err(e) = self.heartbeat(node).await {
                        eprintln!("test kubelet: heartbeat of {node}: {e}");
                    }
                }
                last_beat = Instant::now();
            }
            while let Some(done) = tasks.try_join_next() {
                if let Err(e) = done {
                    eprintln!("test kubelet: a pod task failed: {e}");
                }
            }
            match self.list_pods().await {
                Ok(listed) => self.sync(listed, &mut pods, &mut tasks).await,
                Err(e) => eprintln!("test kubelet: listing pods: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Pods of all our namespaces; an error if any list fails (a partial
    /// list would look like vanished pods).
    async fn list_pods(&self) -> Result<Vec<Value>, super::ApiError> {
        let mut all = Vec::new();
        for ns in &self.namespaces {
            all.extend(list(&self.client, &format!("/api/v1/namespaces/{ns}/pods")).await?);
        }
        Ok(all)
    }

    async fn sync(
        self: &Arc<Self>,
        listed: Vec<Value>,
        pods: &mut HashMap<String, PodEntry>,
        tasks: &mut tokio::task::JoinSet<()>,
    ) {
        let mut seen = HashSet::new();
        for pod in listed {
            let uid = s(&pod, "/metadata/uid").to_owned();
            seen.insert(uid.clone());
            let node = s(&pod, "/spec/nodeName");
            let deleting = pod.pointer("/metadata/deletionTimestamp").is_some();
            if node.is_empty() {
                if !deleting && let Err(e) = self.schedule(&pod).await {
                    eprintln!("test kubelet: scheduling {}: {e}", id(&pod));
                }
                continue;
            }
            if !self.nodes.iter().any(|n| n == node) {
                continue;
            }
            match pods.get(&uid) {
                Some(entry) if deleting && !entry.deleting.is_closed() => {
                    let grace = pod["metadata"]["deletionGracePeriodSeconds"]
                        .as_u64()
                        .unwrap_or(30);
                    // Only the first notice counts, as for a kubelet.
                    entry.deleting.send_if_modified(|g| {
                        let first = g.is_none();
                        if first {
                            *g = Some(grace);
                        }
                        first
                    });
                }
                Some(_) | None if deleting => self.confirm_delete(&pod).await,
                Some(_) => {}
                None => {
                    if matches!(s(&pod, "/status/phase"), "Succeeded" | "Failed") {
                        continue;
                    }
                    let (tx, rx) = watch::channel(None);
                    pods.insert(
                        uid,
                        PodEntry {
                            node: node.to_owned(),
                            deleting: tx,
                        },
                    );
                    tasks.spawn(self.clone().run_pod(pod, rx));
                }
            }
        }
        // Vanished pods (force-deleted, or terminal ones deleted at once):
        // stop what still runs, then drop their volume dirs like a kubelet.
        pods.retain(|uid, entry| {
            if seen.contains(uid) {
                return true;
            }
            if !entry.deleting.is_closed() {
                entry.deleting.send_replace(Some(0));
                return true;
            }
            // remove_dir_all does not follow the CSI mount symlinks.
            let _ = std::fs::remove_dir_all(self.pod_dir(&entry.node, uid));
            false
        });
    }

    /// The scheduler: binds the pod to the first node that fits, once all
    /// its PVCs are Bound. Leaves it Pending otherwise.
    async fn schedule(&self, pod: &Value) -> Result<(), super::ApiError> {
        let ns = s(pod, "/metadata/namespace");
        let mut required = Vec::new(); // Node selector terms, each list ORed, all lists ANDed.
        let pod_terms = "/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms";
        if let Some(terms) = pod.pointer(pod_terms) {
            required.push(terms.clone());
        }
        for vol in pod["spec"]["volumes"].as_array().into_iter().flatten() {
            let claim = s(vol, "/persistentVolumeClaim/claimName");
            if claim.is_empty() {
                continue;
            }
            let path = format!("/api/v1/namespaces/{ns}/persistentvolumeclaims/{claim}");
            let Some(pvc) = get_opt(&self.client, &path).await? else {
                return Ok(());
            };
            if s(&pvc, "/status/phase") != "Bound" {
                return Ok(());
            }
            let pv_path = format!("/api/v1/persistentvolumes/{}", s(&pvc, "/spec/volumeName"));
            let pv = call(&self.client, Method::GET, &pv_path, None).await?;
            if let Some(terms) = pv.pointer("/spec/nodeAffinity/required/nodeSelectorTerms") {
                required.push(terms.clone());
            }
        }
        let fits = |node: &str| {
            let labels = node_labels(node);
            let selector_ok = pod["spec"]["nodeSelector"]
                .as_object()
                .into_iter()
                .flatten()
                .all(|(k, v)| labels.get(k.as_str()).map(String::as_str) == v.as_str());
            selector_ok
                && required
                    .iter()
                    .all(|terms| terms_match(terms, node, &labels))
        };
        let Some(node) = self.nodes.iter().find(|n| fits(n)) else {
            return Ok(());
        };
        let name = s(pod, "/metadata/name");
        let binding = json!({
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": name, "namespace": ns},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        });
        let path = format!("/api/v1/namespaces/{ns}/pods/{name}/binding");
        match call(&self.client, Method::POST, &path, Some(binding)).await {
            Err(e) if e.code != Some(409) && e.code != Some(404) => Err(e),
            _ => Ok(()),
        }
    }

    /// What a kubelet does once a pod's containers are gone: remove its
    /// volume dirs, then delete it for good (grace 0), only if it is still
    /// the same pod. (A real kubelet, too, confirms the deletion only once the
    /// pod's volumes are cleaned up.)
    async fn confirm_delete(&self, pod: &Value) {
        let (ns, name) = (s(pod, "/metadata/namespace"), s(pod, "/metadata/name"));
        let node = s(pod, "/spec/nodeName");
        if !node.is_empty() {
            // remove_dir_all does not follow the CSI mount symlinks.
            let _ = std::fs::remove_dir_all(self.pod_dir(node, s(pod, "/metadata/uid")));
        }
        let options = json!({
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": s(pod, "/metadata/uid")},
        });
        let path = format!("/api/v1/namespaces/{ns}/pods/{name}");
        match delete(&self.client, &path, Some(options)).await {
            Err(e) if e.code != Some(409) => eprintln!("test kubelet: confirming deletion: {e}"),
            _ => {}
        }
    }

    async fn run_pod(self: Arc<Self>, pod: Value, mut deleting: watch::Receiver<Option<u64>>) {
        // Like a kubelet, wait for what the pod needs (PVC bound, Secret).
        let mut last_error = String::new();
        let slots = loop {
            match self.prepare(&pod).await {
                Ok(slots) => break slots,
                Err(e) if e != last_error => {
                    eprintln!("test kubelet: pod {} waits: {e}", id(&pod));
                    last_error = e;
                }
                Err(_) => {}
            }
            if deleting.borrow().is_some() {
                self.confirm_delete(&pod).await;
                return;
            }
            let _ = tokio::time::timeout(Duration::from_millis(500), deleting.changed()).await;
        };
        let (ns, name) = (s(&pod, "/metadata/namespace"), s(&pod, "/metadata/name"));
        let labels: BTreeMap<String, String> =
            serde_json::from_value(pod["metadata"]["labels"].clone()).unwrap_or_default();
        let job_name = labels.get("job-name").cloned();
        let attempt = job_name.as_ref().map_or(0, |job| {
            let mut state = self.state.lock().unwrap();
            let count = state
                .job_pods
                .entry((ns.to_owned(), job.clone()))
                .or_default();
            *count += 1;
            *count - 1
        });
        let info = PodInfo {
            namespace: ns.to_owned(),
            name: name.to_owned(),
            labels,
            job_name,
            attempt,
        };
        let fault_fn = self.fault.lock().unwrap().clone();
        let fault = fault_fn.and_then(|f| f(&info));
        let mut run = PodRun {
            inner: self.clone(),
            restart_policy: s(&pod, "/spec/restartPolicy").to_owned(),
            pod,
            info,
            slots,
            fault,
            start_time: now_rfc3339(),
            next_id: 0,
            kill_deadline: None,
        };
        run.run(deleting).await;
    }

    /// Volumes, environments and arguments of all containers.
    async fn prepare(&self, pod: &Value) -> Result<Vec<Slot>, String> {
        let mut objects = Objects {
            client: &self.client,
            ns: s(pod, "/metadata/namespace"),
            cache: HashMap::new(),
        };
        let volumes = self.volumes(pod, &mut objects).await?;
        let mut slots = Vec::new();
        for (init, key) in [(true, "initContainers"), (false, "containers")] {
            for c in pod["spec"][key].as_array().into_iter().flatten() {
                let (env, args) = container_env(pod, c, &volumes, &mut objects).await?;
                slots.push(Slot {
                    name: s(c, "/name").to_owned(),
                    image: s(c, "/image").to_owned(),
                    init,
                    env,
                    args,
                    restarts: 0,
                    state: json!({"waiting": {"reason": "ContainerCreating"}}),
                    last_state: json!({}),
                    container_id: None,
                    proc: None,
                    restart_at: None,
                    exit_code: None,
                });
            }
        }
        Ok(slots)
    }

    /// Maps each volume to a local directory.
    async fn volumes(
        &self,
        pod: &Value,
        objects: &mut Objects<'_>,
    ) -> Result<HashMap<String, PathBuf>, String> {
        let ns = s(pod, "/metadata/namespace");
        let node = s(pod, "/spec/nodeName");
        let pod_dir = self.pod_dir(node, s(pod, "/metadata/uid"));
        let mut out = HashMap::new();
        let mkdir = |dir: &Path| {
            std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))
        };
        for vol in pod["spec"]["volumes"].as_array().into_iter().flatten() {
            let name = s(vol, "/name").to_owned();
            let dir = if let Some(claim) = vol
                .pointer("/persistentVolumeClaim/claimName")
                .and_then(Value::as_str)
            {
                let path = format!("/api/v1/namespaces/{ns}/persistentvolumeclaims/{claim}");
                let pvc = get_opt(&self.client, &path)
                    .await
                    .map_err(|e| e.to_string())?;
                let pvc = pvc.ok_or(format!("PVC {ns}/{claim} does not exist"))?;
                if s(&pvc, "/status/phase") != "Bound" {
                    return Err(format!("PVC {ns}/{claim} is not Bound"));
                }
                let pv_name = s(&pvc, "/spec/volumeName");
                let pv = call(
                    &self.client,
                    Method::GET,
                    &format!("/api/v1/persistentvolumes/{pv_name}"),
                    None,
                )
                .await
                .map_err(|e| e.to_string())?;
                let data = self.root.join("pv").join(pv_name);
                mkdir(&data)?;
                if pv["spec"]["csi"].is_object() {
                    // What kubestow's `kubelet` source reads through hostPath.
                    let link = pod_dir
                        .join("volumes/kubernetes.io~csi")
                        .join(pv_name)
                        .join("mount");
                    mkdir(link.parent().unwrap())?;
                    if std::fs::symlink_metadata(&link).is_err() {
                        std::os::unix::fs::symlink(&data, &link)
                            .map_err(|e| format!("linking {}: {e}", link.display()))?;
                    }
                }
                data
            } else if let Some(host) = vol.pointer("/hostPath/path").and_then(Value::as_str) {
                let dir = self
                    .root
                    .join("nodes")
                    .join(node)
                    .join(host.trim_start_matches('/'));
                // Only directory types are created; the tests mount no files.
                let kind = s(vol, "/hostPath/type");
                if !dir.exists() && matches!(kind, "" | "Directory" | "DirectoryOrCreate") {
                    mkdir(&dir)?;
                }
                dir
            } else if vol["emptyDir"].is_object() {
                let dir = pod_dir.join("volumes/kubernetes.io~empty-dir").join(&name);
                mkdir(&dir)?;
                dir
            } else if let Some((kind, plugin, key)) = [
                ("secret", "secret", "secretName"),
                ("configMap", "configmap", "name"),
            ]
            .into_iter()
            .find(|(kind, _, _)| vol[*kind].is_object())
            {
                let src = &vol[kind];
                let dir = pod_dir
                    .join(format!("volumes/kubernetes.io~{plugin}"))
                    .join(&name);
                mkdir(&dir)?;
                let object = s(src, &format!("/{key}"));
                let data = match objects.get(kind, object).await? {
                    Some(data) => data,
                    None if src["optional"] == true => BTreeMap::new(),
                    None => return Err(format!("{kind} {ns}/{object} does not exist")),
                };
                let items: Vec<(String, String)> = match src["items"].as_array() {
                    Some(items) => items
                        .iter()
                        .map(|i| (s(i, "/key").to_owned(), s(i, "/path").to_owned()))
                        .collect(),
                    None => data.keys().map(|k| (k.clone(), k.clone())).collect(),
                };
                for (k, path) in items {
                    let Some(bytes) = data.get(&k) else { continue };
                    let file = dir.join(path);
                    mkdir(file.parent().unwrap())?;
                    std::fs::write(&file, bytes)
                        .map_err(|e| format!("writing {}: {e}", file.display()))?;
                }
                dir
            } else {
                continue; // Not needed by the tests: projected, downwardAPI, ...
            };
            out.insert(name, dir);
        }
        Ok(out)
    }
}

/// A Secret's or ConfigMap's keys, decoded.
type Data = BTreeMap<String, Vec<u8>>;

/// Secrets and ConfigMaps of the pod's namespace, each read once, as
/// decoded key → bytes.
struct Objects<'a> {
    client: &'a kube::Client,
    ns: &'a str,
    cache: HashMap<(String, String), Option<Data>>,
}

impl Objects<'_> {
    /// `kind` is `secret` or `configMap`.
    async fn get(
        &mut self,
        kind: &str,
        name: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
        let key = (kind.to_owned(), name.to_owned());
        if let Some(hit) = self.cache.get(&key) {
            return Ok(hit.clone());
        }
        let plural = if kind == "secret" {
            "secrets"
        } else {
            "configmaps"
        };
        let path = format!("/api/v1/namespaces/{}/{plural}/{name}", self.ns);
        let obj = get_opt(self.client, &path)
            .await
            .map_err(|e| e.to_string())?;
        let b64 = |v: &Value| {
            base64::engine::general_purpose::STANDARD
                .decode(v.as_str().unwrap_or(""))
                .unwrap_or_default()
        };
        let data = obj.map(|o| {
            let mut data = BTreeMap::new();
            for (k, v) in o["data"].as_object().into_iter().flatten() {
                let bytes = if kind == "secret" {
                    b64(v)
                } else {
                    v.as_str().unwrap_or("").as_bytes().to_vec()
                };
                data.insert(k.clone(), bytes);
            }
            for (k, v) in o["binaryData"].as_object().into_iter().flatten() {
                data.insert(k.clone(), b64(v));
            }
            data
        });
        self.cache.insert(key, data.clone());
        Ok(data)
    }

    /// One key, honouring `optional`; `None` means "leave the variable unset".
    async fn key(&mut self, kind: &str, selector: &Value) -> Result<Option<String>, String> {
        let (name, key) = (s(selector, "/name"), s(selector, "/key"));
        let optional = selector["optional"] == true;
        match self
            .get(kind, name)
            .await?
            .and_then(|d| d.get(key).cloned())
        {
            Some(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
            None if optional => Ok(None),
            None => Err(format!("{kind} {}/{name} has no key {key:?}", self.ns)),
        }
    }
}

/// A container's environment (envFrom, then env; `$(VAR)` expanded) and
/// arguments, with paths under its mounts rewritten to the local directories.
async fn container_env(
    pod: &Value,
    c: &Value,
    volumes: &HashMap<String, PathBuf>,
    objects: &mut Objects<'_>,
) -> Result<(Vec<(String, String)>, Vec<String>), String> {
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |env: &mut Vec<(String, String)>, k: String, v: String| {
        env.retain(|(name, _)| *name != k);
        env.push((k, v));
    };
    for from in c["envFrom"].as_array().into_iter().flatten() {
        let prefix = s(from, "/prefix");
        for (kind, key) in [("secret", "secretRef"), ("configMap", "configMapRef")] {
            if !from[key].is_object() {
                continue;
            }
            let name = s(&from[key], "/name");
            match objects.get(kind, name).await? {
                Some(data) => {
                    for (k, v) in data {
                        set(
                            &mut env,
                            format!("{prefix}{k}"),
                            String::from_utf8_lossy(&v).into_owned(),
                        );
                    }
                }
                None if from[key]["optional"] == true => {}
                None => return Err(format!("{kind} {}/{name} does not exist", objects.ns)),
            }
        }
    }
    for e in c["env"].as_array().into_iter().flatten() {
        let from = &e["valueFrom"];
        let value = if let Some(field) = from.pointer("/fieldRef/fieldPath").and_then(Value::as_str)
        {
            Some(field_value(pod, field))
        } else if from["secretKeyRef"].is_object() {
            objects.key("secret", &from["secretKeyRef"]).await?
        } else if from["configMapKeyRef"].is_object() {
            objects.key("configMap", &from["configMapKeyRef"]).await?
        } else if from.is_object() {
            None // resourceFieldRef: not needed.
        } else {
            Some(expand(s(e, "/value"), &env))
        };
        if let Some(value) = value {
            set(&mut env, s(e, "/name").to_owned(), value);
        }
    }
    let mut mounts = Vec::new();
    for m in c["volumeMounts"].as_array().into_iter().flatten() {
        let Some(local) = volumes.get(s(m, "/name")) else {
            continue;
        };
        let mount = s(m, "/mountPath").trim_end_matches('/');
        if !mount.is_empty() {
            mounts.push((mount.to_owned(), local.join(s(m, "/subPath"))));
        }
    }
    for (_, v) in env.iter_mut() {
        *v = rewrite(v, &mounts);
    }
    let args = c["args"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| rewrite(&expand(a.as_str().unwrap_or(""), &env), &mounts))
        .collect();
    Ok((env, args))
}

fn field_value(pod: &Value, field: &str) -> String {
    let map_key = |prefix: &str| {
        field
            .strip_prefix(prefix)?
            .strip_suffix("']")
            .map(str::to_owned)
    };
    match field {
        "metadata.name" | "metadata.namespace" | "metadata.uid" => {
            s(pod, &format!("/{}", field.replace('.', "/"))).to_owned()
        }
        "spec.nodeName" | "spec.serviceAccountName" => {
            s(pod, &format!("/{}", field.replace('.', "/"))).to_owned()
        }
        "status.hostIP" | "status.podIP" => "127.0.0.1".to_owned(),
        _ => {
            if let Some(k) = map_key("metadata.labels['") {
                pod["metadata"]["labels"][k]
                    .as_str()
                    .unwrap_or("")
                    .to_owned()
            } else if let Some(k) = map_key("metadata.annotations['") {
                pod["metadata"]["annotations"][k]
                    .as_str()
                    .unwrap_or("")
                    .to_owned()
            } else {
                String::new()
            }
        }
    }
}

/// Kubernetes' `$(VAR)` expansion from variables defined earlier; `$$` is a
/// literal `$`; unknown references stay as they are.
fn expand(value: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(after) = after.strip_prefix('$') {
            out.push('$');
            rest = after;
        } else if let Some(body) = after.strip_prefix('(')
            && let Some(end) = body.find(')')
        {
            let name = &body[..end];
            match env.iter().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => out.push_str(&format!("$({name})")),
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The process runs on the host, so a path under a mount (also inside a
/// `file://` URL) must point into that volume's directory; longest mount
/// wins, whole path components only.
fn rewrite(value: &str, mounts: &[(String, PathBuf)]) -> String {
    let (scheme, path) = match value.strip_prefix("file://") {
        Some(path) => ("file://", path),
        None => ("", value),
    };
    let best = mounts
        .iter()
        .filter(|(m, _)| {
            path == m
                || path
                    .strip_prefix(m.as_str())
                    .is_some_and(|r| r.starts_with('/'))
        })
        .max_by_key(|(m, _)| m.len());
    match best {
        Some((m, local)) => format!("{scheme}{}{}", local.display(), &path[m.len()..]),
        None => value.to_owned(),
    }
}

fn terms_match(terms: &Value, node: &str, labels: &BTreeMap<&str, String>) -> bool {
    terms.as_array().into_iter().flatten().any(|term| {
        let exprs: Vec<&Value> = term["matchExpressions"]
            .as_array()
            .into_iter()
            .flatten()
            .collect();
        let fields: Vec<&Value> = term["matchFields"]
            .as_array()
            .into_iter()
            .flatten()
            .collect();
        // An empty term matches no node.
        (!exprs.is_empty() || !fields.is_empty())
            && exprs
                .iter()
                .all(|r| requirement(r, labels.get(s(r, "/key")).map(String::as_str)))
            && fields
                .iter()
                .all(|r| requirement(r, (s(r, "/key") == "metadata.name").then_some(node)))
    })
}

fn requirement(req: &Value, value: Option<&str>) -> bool {
    let listed = || {
        value.is_some_and(|v| {
            req["values"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|x| x == v)
        })
    };
    match s(req, "/operator") {
        "In" => listed(),
        "NotIn" => !listed(),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        _ => false,
    }
}

fn id(pod: &Value) -> String {
    format!(
        "{}/{}",
        s(pod, "/metadata/namespace"),
        s(pod, "/metadata/name")
    )
}

/// One container of a running pod.
struct Slot {
    name: String,
    image: String,
    init: bool,
    env: Vec<(String, String)>,
    args: Vec<String>,
    restarts: u32,
    state: Value,
    last_state: Value,
    container_id: Option<String>,
    proc: Option<Proc>,
    restart_at: Option<Instant>,
    /// Set once the container is terminated for good.
    exit_code: Option<i32>,
}

impl Slot {
    fn kubestow(&self) -> bool {
        self.image.contains("kubestow")
    }
}

struct Proc {
    child: tokio::process::Child,
    pid: u32,
    started: Instant,
    started_at: String,
    fault: Option<Fault>,
    run: usize,
    stdout: JoinHandle<String>,
}

/// A pod on one of our nodes, from start to its end or deletion.
struct PodRun {
    inner: Arc<Inner>,
    pod: Value,
    info: PodInfo,
    restart_policy: String,
    slots: Vec<Slot>,
    /// For the pod's first kubestow process.
    fault: Option<Fault>,
    start_time: String,
    next_id: usize,
    kill_deadline: Option<Instant>,
}

impl PodRun {
    async fn run(&mut self, mut deleting: watch::Receiver<Option<u64>>) {
        let init: Vec<usize> = (0..self.slots.len())
            .filter(|&i| self.slots[i].init)
            .collect();
        for i in init {
            if self.slots[i].kubestow() {
                self.start(i);
            } else {
                self.slots[i].exit_code = Some(0); // Other init containers succeed at once.
                self.slots[i].state = json!({"terminated": {"exitCode": 0, "reason": "Completed"}});
            }
            self.report().await;
            match self.supervise(&[i], &mut deleting).await {
                None => return,
                Some(false) => {
                    self.report().await;
                    return; // Failed for good: the pod failed.
                }
                Some(true) => {}
            }
        }
        let main: Vec<usize> = (0..self.slots.len())
            .filter(|&i| !self.slots[i].init)
            .collect();
        for &i in &main {
            if self.slots[i].kubestow() {
                self.start(i);
            } else {
                // Runs (no process) until the pod is deleted.
                self.slots[i].state = json!({"running": {"startedAt": now_rfc3339()}});
                self.slots[i].container_id = Some(self.container_id());
            }
        }
        self.report().await;
        if self.supervise(&main, &mut deleting).await.is_some() {
            self.report().await;
        }
    }

    fn container_id(&mut self) -> String {
        self.next_id += 1;
        format!("test://{}-{}", self.info.name, self.next_id)
    }

    /// Watches the slots until all have terminated for good (`Some(all
    /// succeeded)`) or the pod was deleted (`None`, deletion confirmed).
    async fn supervise(
        &mut self,
        group: &[usize],
        deleting: &mut watch::Receiver<Option<u64>>,
    ) -> Option<bool> {
        loop {
            let grace = *deleting.borrow();
            if let Some(grace) = grace {
                let live = || {
                    self.slots
                        .iter()
                        .filter_map(|s| s.proc.as_ref().map(|p| p.pid))
                };
                let deadline = *self.kill_deadline.get_or_insert_with(|| {
                    live().for_each(|pid| kill(pid, rustix::process::Signal::TERM));
                    Instant::now() + Duration::from_secs(grace)
                });
                if Instant::now() >= deadline {
                    live().for_each(|pid| kill(pid, rustix::process::Signal::KILL));
                }
            }
            let mut changed = false;
            for &i in group {
                let Some(p) = self.slots[i].proc.as_mut() else {
                    if self.slots[i]
                        .restart_at
                        .is_some_and(|t| Instant::now() >= t)
                        && grace.is_none()
                    {
                        self.start(i);
                        changed = true;
                    }
                    continue;
                };
                let fault_due = match &p.fault {
                    Some(Fault::KillAfter(after)) => p.started.elapsed() >= *after,
                    Some(Fault::KillWhen(when)) => when(),
                    None => false,
                };
                if fault_due {
                    p.fault = None;
                    let _ = p.child.start_kill();
                }
                if let Ok(Some(status)) = p.child.try_wait() {
                    self.finished(i, status, grace.is_some()).await;
                    changed = true;
                }
            }
            if grace.is_some() && self.slots.iter().all(|s| s.proc.is_none()) {
                self.inner.confirm_delete(&self.pod).await;
                return None;
            }
            if group.iter().all(|&i| self.slots[i].exit_code.is_some()) {
                return Some(group.iter().all(|&i| self.slots[i].exit_code == Some(0)));
            }
            if changed {
                self.report().await;
            }
            let _ = tokio::time::timeout(TICK, deleting.changed()).await;
        }
    }

    fn start(&mut self, i: usize) {
        let log = self.inner.log_path(&self.info.namespace, &self.info.name);
        let slot = &self.slots[i];
        let mut cmd = tokio::process::Command::new(&self.inner.binary);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(slot.env.iter().map(|(k, v)| (k, v)))
            .args(&slot.args)
            .current_dir(&self.inner.root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "running {} for pod {}: {e}",
                self.inner.binary.display(),
                self.info.name
            )
        });
        let pid = child.id().expect("a just-spawned child has a pid");
        let stdout = pump(child.stdout.take().unwrap(), log.clone());
        drop(pump(child.stderr.take().unwrap(), log));
        let run = {
            let mut state = self.inner.state.lock().unwrap();
            state.pids.insert(pid);
            state.runs.push(RunRecord {
                namespace: self.info.namespace.clone(),
                pod: self.info.name.clone(),
                container: slot.name.clone(),
                job_name: self.info.job_name.clone(),
                attempt: self.info.attempt,
                started: SystemTime::now(),
                exit_code: None,
            });
            state.runs.len() - 1
        };
        let started_at = now_rfc3339();
        let id = self.container_id();
        let slot = &mut self.slots[i];
        slot.state = json!({"running": {"startedAt": started_at}});
        slot.container_id = Some(id);
        slot.restart_at = None;
        slot.proc = Some(Proc {
            child,
            pid,
            started: Instant::now(),
            started_at,
            fault: self.fault.take(),
            run,
            stdout,
        });
    }

    /// Records a process exit and applies the restart policy.
    async fn finished(&mut self, i: usize, status: ExitStatus, deleting: bool) {
        let p = self.slots[i].proc.take().unwrap();
        let code = status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
        let mut message = p.stdout.await.unwrap_or_default();
        if message.len() > MESSAGE_LIMIT {
            let mut end = MESSAGE_LIMIT;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        {
            let mut state = self.inner.state.lock().unwrap();
            state.pids.remove(&p.pid);
            state.runs[p.run].exit_code = Some(code);
        }
        let slot = &mut self.slots[i];
        slot.state = json!({"terminated": {
            "exitCode": code,
            "reason": if code == 0 { "Completed" } else { "Error" },
            "message": message,
            "startedAt": p.started_at,
            "finishedAt": now_rfc3339(),
            "containerID": slot.container_id,
        }});
        let restart = match self.restart_policy.as_str() {
            "Always" => true,
            "OnFailure" => code != 0,
            _ => false,
        };
        if restart && !deleting {
            slot.last_state = std::mem::replace(
                &mut slot.state,
                json!({"waiting": {"reason": "CrashLoopBackOff"}}),
            );
            slot.restarts += 1;
            slot.restart_at = Some(Instant::now() + RESTART_DELAY);
        } else {
            slot.exit_code = Some(code);
        }
    }

    /// The pod phase from its containers, as a kubelet computes it.
    fn phase(&self) -> &'static str {
        let (init, main): (Vec<&Slot>, Vec<&Slot>) = self.slots.iter().partition(|s| s.init);
        if init.iter().any(|s| s.exit_code.is_some_and(|c| c != 0)) {
            return "Failed";
        }
        if init.iter().any(|s| s.exit_code.is_none()) {
            return "Pending";
        }
        if main.iter().all(|s| s.exit_code.is_some()) {
            if main.iter().all(|s| s.exit_code == Some(0)) {
                "Succeeded"
            } else {
                "Failed"
            }
        } else {
            "Running"
        }
    }

    async fn report(&self) {
        let phase = self.phase();
        let running = |s: &Slot| s.state["running"].is_object();
        let statuses = |init: bool| -> Vec<Value> {
            self.slots
                .iter()
                .filter(|s| s.init == init)
                .map(|s| {
                    json!({
                        "name": s.name,
                        "image": s.image,
                        "imageID": format!("test://{}", s.image),
                        "containerID": s.container_id,
                        "ready": !init && running(s),
                        "started": running(s),
                        "restartCount": s.restarts,
                        "state": s.state,
                        "lastState": s.last_state,
                    })
                })
                .collect()
        };
        let main = statuses(false);
        let ready = phase == "Running" && self.slots.iter().filter(|s| !s.init).all(running);
        let now = now_rfc3339();
        let condition = |kind: &str, ok: bool| {
            let mut c = json!({"type": kind, "status": if ok { "True" } else { "False" }, "lastTransitionTime": now});
            if !ok && matches!(phase, "Succeeded" | "Failed") {
                c["reason"] = json!("PodCompleted");
            }
            c
        };
        let mut status = json!({
            "phase": phase,
            "conditions": [
                condition("PodScheduled", true),
                condition("Initialized", phase != "Pending"),
                condition("ContainersReady", ready),
                condition("Ready", ready),
            ],
            "hostIP": "127.0.0.1",
            "podIP": "127.0.0.1",
            "podIPs": [{"ip": "127.0.0.1"}],
            "startTime": self.start_time,
            "containerStatuses": main,
        });
        let init = statuses(true);
        if !init.is_empty() {
            status["initContainerStatuses"] = json!(init);
        }
        let (ns, name) = (&self.info.namespace, &self.info.name);
        let path = format!("/api/v1/namespaces/{ns}/pods/{name}/status");
        match call(
            &self.inner.client,
            Method::PATCH,
            &path,
            Some(json!({"status": status})),
        )
        .await
        {
            Err(e) if e.code != Some(404) => {
                eprintln!("test kubelet: status of pod {ns}/{name}: {e}")
            }
            _ => {}
        }
    }
}

/// Appends a process stream to the pod's log, line by line; yields the last
/// non-empty line (kubestow's JSON summary on stdout).
fn pump(stream: impl AsyncRead + Unpin + Send + 'static, log: PathBuf) -> JoinHandle<String> {
    tokio::spawn(async move {
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .await
            .ok();
        let mut reader = BufReader::new(stream);
        let mut line = Vec::new();
        let mut last = String::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if let Some(f) = file.as_mut() {
                let _ = f.write_all(&line).await;
            }
            let text = String::from_utf8_lossy(&line).trim_end().to_owned();
            if !text.is_empty() {
                last = text;
            }
        }
        last
    })
}
