//! `preflight`: checks the cluster and the repository before real work.
//!
//! Each check ends `ok`, `warn` (worth knowing, not blocking) or `fail`
//! (required; the run exits 1).

use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};
use serde::Serialize;
use tracing::{info, warn};

use crate::cluster::Cluster;
use crate::config::{Config, Mode, VolumeSource};
use crate::context::RunContext;
use crate::error::error_chain;
use crate::repo::OpenOptions;

/// Oldest Kubernetes minor version we support (docs/design.md: users run 1.17+).
pub const MIN_MINOR: u32 = 17;

/// How a check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// The check passed.
    Ok,
    /// Worth knowing, but the run can go on.
    Warn,
    /// A requirement is not met; the run exits 1.
    Fail,
}

/// One check's outcome, as logged and put in the summary.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was checked, e.g. `apiserver`, `nodes`, `password`.
    pub name: String,
    /// How it ended.
    pub level: Level,
    /// What was found, or why it failed.
    pub message: String,
}

/// Collects checks and logs each as it lands.
#[derive(Debug, Default)]
pub struct Checks(pub Vec<Check>);

impl Checks {
    fn push(&mut self, name: impl Into<String>, level: Level, message: impl Into<String>) {
        let message = message.into();
        let name = name.into();
        match level {
            Level::Ok => info!(check = %name, "{message}"),
            // A failed check is reported in the summary; the operator acts on the run's status.
            Level::Warn | Level::Fail => warn!(check = %name, level = ?level, "{message}"),
        }
        self.0.push(Check {
            name,
            level,
            message,
        });
    }

    /// The checks that ended in [`Level::Fail`].
    pub fn failed(&self) -> impl Iterator<Item = &Check> {
        self.0.iter().filter(|c| c.level == Level::Fail)
    }
}

/// Why the checks stopped a run.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    /// Required checks failed: `"<check>: <message>"` each.
    #[error("preflight failed: {}", .0.join("; "))]
    Failed(Vec<String>),
    /// The run was cancelled before the checks were done.
    #[error("cancelled by signal during preflight")]
    Cancelled,
}

/// What the checks are for: `preflight` checks for `STOW_PREFLIGHT_MODE`;
/// `backup` and `restore` check for themselves before they start.
///
/// With `open`, the repository is opened too, which proves the password.
pub async fn all_checks(config: &Config, mode: Mode, open: Option<OpenOptions>) -> Checks {
    let mut checks = Checks::default();
    if let Some(cluster) = check_cluster(&mut checks).await {
        check_storage(&cluster, config, mode, &mut checks).await;
        check_pod_security(&cluster, config, mode, &mut checks).await;
        check_rbac(&cluster, config, mode, &mut checks).await;
    }
    check_repository(config, open, &mut checks).await;
    checks
}

/// The same checks, run first by `backup` and `restore`: any failure stops
/// the run before it changes anything, with the same messages.
pub async fn gate(config: &Config, ctx: &RunContext) -> Result<(), PreflightError> {
    let checks = tokio::select! {
        // The run opens the repository itself right after (a second
        // index load would double its start-up on a large repository).
        c = all_checks(config, config.mode, None) => c,
        () = ctx.cancel.cancelled() => return Err(PreflightError::Cancelled),
    };
    let failed: Vec<String> = checks
        .failed()
        .map(|c| format!("{}: {}", c.name, c.message))
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(PreflightError::Failed(failed))
    }
}

/// The checks as a table, for people at a terminal.
pub fn table(checks: &[Check]) -> String {
    let width = checks
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let mut out = format!("{:<width$}  {:<5}  MESSAGE\n", "CHECK", "LEVEL");
    for c in checks {
        let level = match c.level {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        };
        out.push_str(&format!(
            "{:<width$}  {:<5}  {}\n",
            c.name, level, c.message
        ));
    }
    out
}

/// Parses "1", "20+", "20-gke.1" leniently: managed clusters decorate the minor.
fn parse_minor(s: &str) -> Option<u32> {
    let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

async fn check_cluster(checks: &mut Checks) -> Option<Cluster> {
    let cluster = match Cluster::connect().await {
        Ok(c) => c,
        Err(e) => {
            checks.push("apiserver", Level::Fail, e.to_string());
            return None;
        }
    };
    // Preflight answers quickly rather than waiting out the reconnect window.
    let version =
        tokio::time::timeout(Duration::from_secs(15), cluster.client.apiserver_version()).await;
    match version {
        Err(_) => {
            checks.push(
                "apiserver",
                Level::Fail,
                format!("API server at {} did not answer within 15s", cluster.url),
            );
            return None;
        }
        Ok(Err(e)) => {
            checks.push(
                "apiserver",
                Level::Fail,
                format!(
                    "cannot reach the API server at {}: {}",
                    cluster.url,
                    error_chain(&e)
                ),
            );
            return None;
        }
        Ok(Ok(info)) => {
            let minor = parse_minor(&info.minor);
            let level = match (info.major.as_str(), minor) {
                ("1", Some(m)) if m >= MIN_MINOR => Level::Ok,
                _ => Level::Warn,
            };
            let supported = if level == Level::Ok {
                "supported"
            } else {
                "outside the supported range (1.17 or newer)"
            };
            checks.push(
                "apiserver",
                level,
                format!(
                    "API server {} reachable, version {} ({supported})",
                    cluster.url, info.git_version
                ),
            );
        }
    }
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    match nodes.list(&ListParams::default()).await {
        Err(e) => checks.push(
            "nodes",
            Level::Warn,
            format!("cannot list nodes: {}", error_chain(&e)),
        ),
        Ok(list) => {
            let total = list.items.len();
            let ready = list.items.iter().filter(|n| is_ready(n)).count();
            let level = if total == 0 || ready < total {
                Level::Warn
            } else {
                Level::Ok
            };
            checks.push("nodes", level, format!("{total} node(s), {ready} Ready"));
        }
    }
    Some(cluster)
}

fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn check_repository(config: &Config, open: Option<OpenOptions>, checks: &mut Checks) {
    let Some(location) = &config.repository else {
        return checks.push(
            "repository",
            Level::Warn,
            "no repository configured (STOW_REPOSITORY); not checked",
        );
    };
    let backend = crate::repo::backend::open_direct(location).await;
    match tokio::time::timeout(Duration::from_secs(30), backend.probe()).await {
        Err(_) => checks.push(
            "repository",
            Level::Fail,
            format!("{location} did not answer within 30s"),
        ),
        Ok(Err(e)) => checks.push(
            "repository",
            Level::Fail,
            format!("{location} is not reachable: {e}"),
        ),
        Ok(Ok(())) => {
            let initialised = matches!(backend.exists("config").await, Ok(true));
            let state = if initialised {
                "holds a kubestow repository"
            } else {
                "holds no repository yet (STOW_INIT=true creates one)"
            };
            checks.push(
                "repository",
                Level::Ok,
                format!("{location} is reachable and {state}"),
            );
            if let Some(open) = open
                && initialised
            {
                let opened = tokio::time::timeout(Duration::from_secs(60), open.open()).await;
                match opened {
                    Ok(Ok(_)) => {
                        checks.push("password", Level::Ok, "the password opens the repository")
                    }
                    Ok(Err(e)) => checks.push("password", Level::Fail, e.to_string()),
                    Err(_) => checks.push(
                        "password",
                        Level::Fail,
                        "opening the repository took over 60s",
                    ),
                }
            }
        }
    }
    free_space(location, checks);
}

/// Free space where the backend can tell: a filesystem repository's
/// volume. Object stores have no such notion.
fn free_space(location: &crate::config::Location, checks: &mut Checks) {
    const LOW: u64 = 1 << 30;
    let crate::config::Location::File { path } = location else {
        return checks.push(
            "free space",
            Level::Ok,
            "an S3 bucket does not report free space",
        );
    };
    // The repository may not exist yet: ask its nearest existing parent.
    let Some(existing) = path.ancestors().find(|p| p.exists()) else {
        return;
    };
    match rustix::fs::statvfs(existing) {
        Ok(st) => {
            let free = st.f_bavail.saturating_mul(st.f_frsize);
            let level = if free < LOW { Level::Warn } else { Level::Ok };
            checks.push(
                "free space",
                level,
                format!(
                    "{} free on the filesystem of {}",
                    bytesize::ByteSize(free).display().iec(),
                    existing.display()
                ),
            );
        }
        Err(e) => checks.push(
            "free space",
            Level::Warn,
            format!("cannot tell free space of {}: {e}", existing.display()),
        ),
    }
}

async fn list_json(cluster: &Cluster, path: &str) -> Result<Vec<serde_json::Value>, String> {
    let req = http::Request::get(path)
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    match cluster.client.request::<serde_json::Value>(req).await {
        Ok(mut v) => Ok(match v["items"].take() {
            serde_json::Value::Array(a) => a,
            _ => Vec::new(),
        }),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(Vec::new()),
        Err(e) => Err(error_chain(&e)),
    }
}

/// Pod Security levels from the least to the most restrictive.
const LEVELS: [&str; 3] = ["privileged", "baseline", "restricted"];

/// The Pod Security level movers need: `baseline` (root with a few
/// capabilities), or `privileged` for `STOW_VOLUME_SOURCE=kubelet`
/// (hostPath). `None` when the mode runs no movers. With `auto`, claims
/// that end up read through the kubelet need `privileged` too: a warning,
/// since most may be snapshotted.
pub fn mover_level(config: &Config, mode: Mode) -> Option<&'static str> {
    match mode {
        Mode::Backup => match config.volume.source {
            VolumeSource::Skip => None,
            VolumeSource::Kubelet => Some("privileged"),
            VolumeSource::Auto | VolumeSource::Snapshot => Some("baseline"),
        },
        Mode::Restore if config.restore.volumes && !config.restore.dry_run => Some("baseline"),
        _ => None,
    }
}

/// Whether a namespace's `enforce` label admits pods of `needed` level.
pub fn admits(labels: &serde_json::Value, needed: &str) -> Result<(), String> {
    let enforce = labels
        .get("pod-security.kubernetes.io/enforce")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("privileged");
    let rank = |l: &str| LEVELS.iter().position(|x| *x == l);
    match (rank(enforce), rank(needed)) {
        (Some(have), Some(need)) if have > need => Err(enforce.to_string()),
        _ => Ok(()),
    }
}

/// Whether kubestow's namespace, where every mover runs, admits movers
/// at its Pod Security `enforce` label. (Cluster-wide defaults set in the
/// API server's admission configuration are not visible here; a mover
/// refused by them fails its claim with the admission message.)
async fn check_pod_security(cluster: &Cluster, config: &Config, mode: Mode, checks: &mut Checks) {
    let Some(needed) = mover_level(config, mode) else {
        return;
    };
    let Some(home) = config
        .volume
        .mover_namespace
        .as_deref()
        .or(config.identity.pod_namespace.as_deref())
    else {
        return checks.push(
            "pod security",
            Level::Warn,
            format!(
                "movers run in kubestow's own namespace: set {} (or {} through the downward API)",
                crate::config::vars::MOVER_NAMESPACE,
                crate::config::vars::POD_NAMESPACE
            ),
        );
    };
    let req = match http::Request::get(format!("/api/v1/namespaces/{home}")).body(Vec::new()) {
        Ok(r) => r,
        Err(e) => return checks.push("pod security", Level::Warn, e.to_string()),
    };
    let ns: serde_json::Value = match cluster.client.request(req).await {
        Ok(v) => v,
        Err(e) => {
            return checks.push(
                "pod security",
                Level::Warn,
                format!("cannot read namespace {home}: {}", error_chain(&e)),
            );
        }
    };
    let labels = ns.pointer("/metadata/labels").cloned().unwrap_or_default();
    let auto = mode == Mode::Backup && config.volume.source == VolumeSource::Auto;
    match admits(&labels, needed) {
        Ok(()) if auto && admits(&labels, "privileged").is_err() => checks.push(
            "pod security",
            Level::Warn,
            format!(
                "namespace {home} admits movers at Pod Security `{needed}`, but not the kubelet source's (hostPath, `privileged`): claims that cannot be snapshotted and are read through the kubelet will fail; set STOW_VOLUME_SOURCE=snapshot, or label it pod-security.kubernetes.io/enforce=privileged"
            ),
        ),
        Ok(()) => checks.push(
            "pod security",
            Level::Ok,
            format!("namespace {home} admits movers (they need Pod Security `{needed}`)"),
        ),
        Err(level) => checks.push(
            "pod security",
            Level::Fail,
            format!(
                "namespace {home} enforces Pod Security `{level}`, which rejects mover pods: they need `{needed}`{}; label it pod-security.kubernetes.io/enforce={needed}",
                if needed == "privileged" {
                    " for STOW_VOLUME_SOURCE=kubelet (hostPath; `snapshot` needs only `baseline`)"
                } else {
                    " (root with DAC_OVERRIDE, and CHOWN, FOWNER, FSETID, SETFCAP to restore)"
                }
            ),
        ),
    }
}

/// CSI drivers and snapshot classes per storage class, and reclaim
/// policies: what the volume sources will be able to use.
async fn check_storage(cluster: &Cluster, config: &Config, mode: Mode, checks: &mut Checks) {
    let volumes = match mode {
        Mode::Backup => config.volume.source != VolumeSource::Skip,
        Mode::Restore => config.restore.volumes,
        _ => false,
    };
    if !volumes {
        return;
    }
    let classes = match list_json(cluster, "/apis/storage.k8s.io/v1/storageclasses").await {
        Ok(c) => c,
        Err(e) => {
            return checks.push(
                "storage classes",
                Level::Warn,
                format!("cannot list storage classes: {e}"),
            );
        }
    };
    let snapshot_classes = list_json(
        cluster,
        "/apis/snapshot.storage.k8s.io/v1/volumesnapshotclasses",
    )
    .await
    .unwrap_or_default();
    let drivers: Vec<String> = list_json(cluster, "/apis/storage.k8s.io/v1/csidrivers")
        .await
        .unwrap_or_default()
        .iter()
        .filter_map(|d| {
            d.pointer("/metadata/name")
                .and_then(|n| n.as_str())
                .map(String::from)
        })
        .collect();
    if classes.is_empty() {
        checks.push(
            "storage classes",
            Level::Warn,
            "no storage classes: restored claims cannot get volumes",
        );
    }
    for sc in &classes {
        let name = sc
            .pointer("/metadata/name")
            .and_then(|v| v.as_str())
            .unwrap_or("?");
        let provisioner = sc
            .get("provisioner")
            .and_then(|v| v.as_str())
            .unwrap_or("?");
        let csi = if drivers.iter().any(|d| d == provisioner) {
            "CSI driver"
        } else {
            "provisioner"
        };
        let snap = crate::mover::plan::snapshot_class(&snapshot_classes, provisioner);
        let retain = sc.get("reclaimPolicy").and_then(|v| v.as_str()) == Some("Retain");
        let (mut level, mut msg) = match snap {
            Some(vsc) => (
                Level::Ok,
                format!(
                    "{csi} {provisioner}, VolumeSnapshotClass {vsc}: volumes are read from snapshots"
                ),
            ),
            None if mode == Mode::Backup && config.volume.source == VolumeSource::Snapshot => (
                Level::Warn,
                format!(
                    "{csi} {provisioner} has no VolumeSnapshotClass: its claims fail with STOW_VOLUME_SOURCE=snapshot"
                ),
            ),
            None => (
                Level::Ok,
                format!(
                    "{csi} {provisioner}, no VolumeSnapshotClass: volumes are read through the kubelet"
                ),
            ),
        };
        if retain && snap.is_some() && mode == Mode::Backup {
            level = Level::Warn;
            msg.push_str(
                "; reclaimPolicy Retain leaves the volume of every temporary snapshot clone behind \
                 (Released PersistentVolumes to delete by hand)",
            );
        }
        checks.push(format!("storage class {name}"), level, msg);
    }
}

/// Where a permission is needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Cluster-scoped objects, or every namespace at once.
    Cluster,
    /// The namespaces the run selects (after `STOW_NAMESPACE_MAP` for a
    /// restore); every namespace when it names none or uses globs.
    Targets,
    /// kubestow's own namespace, where mover Jobs, their claims and
    /// snapshots run: `STOW_MOVER_NAMESPACE`, else `STOW_POD_NAMESPACE`.
    Home,
}

/// One permission a mode needs. Permissions to read or create objects are
/// *per item*: without one, the run still goes on and reports those
/// objects as failed (a warning here); the others are required (a failure:
/// the run stops before it starts). See [`required`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    /// The API verb: `get`, `list`, `create`, `patch`, `delete`, …
    pub verb: &'static str,
    /// The API group; empty for the core group.
    pub group: &'static str,
    /// The resource, plural.
    pub resource: &'static str,
    /// Where it is needed.
    pub scope: Scope,
    /// What the run does with it.
    pub why: &'static str,
}

const fn need(
    verb: &'static str,
    group: &'static str,
    resource: &'static str,
    scope: Scope,
    why: &'static str,
) -> Need {
    Need {
        verb,
        group,
        resource,
        scope,
        why,
    }
}

const SNAPSHOTS: &str = "snapshot.storage.k8s.io";

/// Whether a run cannot do its job without this permission.
fn required(need: &Need, config: &Config, mode: Mode) -> bool {
    let Need {
        verb,
        group,
        resource,
        scope,
        ..
    } = *need;
    // A backup's movers: every volume needs them. Events only make a
    // mover's failure clearer. A restore learns whether its snapshot has
    // volume data only after opening the repository: without these, its
    // volumes fail as items.
    let movers = mode == Mode::Backup
        && ((scope == Scope::Home && resource != "events")
            || matches!(
                (verb, group, resource),
                (
                    "create" | "delete",
                    SNAPSHOTS,
                    "volumesnapshots" | "volumesnapshotcontents"
                ) | ("create" | "delete" | "get", "", "persistentvolumes")
                    | ("list", "", "pods")
                    | ("list", "storage.k8s.io", "storageclasses")
            ));
    // Without listing namespaces, a backup of globs finds nothing; literal
    // names are read one by one instead.
    let namespaces = (verb, resource) == ("list", "namespaces")
        && crate::resources::select::Selector::new(&config.selection)
            .ok()
            .and_then(|s| s.literal_namespaces())
            .is_none();
    movers || namespaces
}

/// kubestow's own namespace, where movers run: `STOW_MOVER_NAMESPACE`,
/// else this pod's (`STOW_POD_NAMESPACE`); `None` when neither is set.
pub fn home(config: &Config) -> Option<&str> {
    config
        .volume
        .mover_namespace
        .as_deref()
        .or(config.identity.pod_namespace.as_deref())
}

/// The permissions `mode` needs with this configuration.
pub fn needs(config: &Config, mode: Mode) -> Vec<Need> {
    use Scope::{Cluster, Home, Targets};
    let mut out: Vec<Need> = Vec::new();
    // Mover Jobs and the claims they mount live in kubestow's namespace
    // only: nothing of kubestow's is created in a tenant namespace.
    let mut movers = vec![
        need("create", "batch", "jobs", Home, "to run mover Jobs"),
        need("delete", "batch", "jobs", Home, "to remove mover Jobs"),
        need(
            "list",
            "",
            "events",
            Home,
            "to name why a mover pod could not be created",
        ),
    ];
    // Credentials reach movers by reference; without a named account each
    // mover Job gets one of its own (the chart names one).
    if config.volume.mover_service_account.is_none() {
        movers.push(need(
            "create",
            "",
            "serviceaccounts",
            Home,
            "to give each mover Job a service account without API access \
             (STOW_MOVER_SERVICE_ACCOUNT names one instead)",
        ));
    }
    match mode {
        Mode::Backup => {
            out.extend_from_slice(&[
                need(
                    "list",
                    "",
                    "namespaces",
                    Cluster,
                    "to find the namespaces to back up",
                ),
                need("list", "", "configmaps", Targets, "to back up objects"),
                need("list", "", "secrets", Targets, "to back up objects"),
                need("list", "apps", "deployments", Targets, "to back up objects"),
                need(
                    "list",
                    "",
                    "persistentvolumeclaims",
                    Targets,
                    "to back up claims",
                ),
                need(
                    "list",
                    "apiextensions.k8s.io",
                    "customresourcedefinitions",
                    Cluster,
                    "to back up the CRDs of custom resources",
                ),
            ]);
            let source = config.volume.source;
            if source != VolumeSource::Skip {
                out.extend_from_slice(&[
                    need(
                        "get",
                        "",
                        "persistentvolumes",
                        Cluster,
                        "to plan volume sources",
                    ),
                    need(
                        "list",
                        "",
                        "pods",
                        Targets,
                        "to find the pods that mount claims",
                    ),
                    need(
                        "list",
                        "storage.k8s.io",
                        "storageclasses",
                        Cluster,
                        "to plan volume sources",
                    ),
                ]);
                out.extend_from_slice(&movers);
                out.extend_from_slice(&[
                    need(
                        "create",
                        "",
                        "persistentvolumeclaims",
                        Home,
                        "to give mover Jobs a claim to mount",
                    ),
                    need(
                        "delete",
                        "",
                        "persistentvolumeclaims",
                        Home,
                        "to remove the claims of mover Jobs",
                    ),
                ]);
                if source != VolumeSource::Kubelet {
                    out.extend_from_slice(&[
                        need(
                            "create",
                            SNAPSHOTS,
                            "volumesnapshots",
                            Targets,
                            "to snapshot claims in their namespace",
                        ),
                        need(
                            "delete",
                            SNAPSHOTS,
                            "volumesnapshots",
                            Targets,
                            "to remove temporary snapshots",
                        ),
                        need(
                            "create",
                            SNAPSHOTS,
                            "volumesnapshotcontents",
                            Cluster,
                            "to bind a claim's snapshot to a VolumeSnapshot in kubestow's namespace",
                        ),
                        need(
                            "delete",
                            SNAPSHOTS,
                            "volumesnapshotcontents",
                            Cluster,
                            "to remove temporary snapshot contents",
                        ),
                        need(
                            "create",
                            SNAPSHOTS,
                            "volumesnapshots",
                            Home,
                            "to clone snapshots in kubestow's namespace",
                        ),
                        need(
                            "delete",
                            SNAPSHOTS,
                            "volumesnapshots",
                            Home,
                            "to remove temporary snapshots",
                        ),
                    ]);
                }
                if source != VolumeSource::Snapshot {
                    out.extend_from_slice(&[
                        need(
                            "create",
                            "",
                            "persistentvolumes",
                            Cluster,
                            "to read a claim that no pod mounts and that cannot be snapshotted \
                             through a read-only copy of its volume",
                        ),
                        need(
                            "delete",
                            "",
                            "persistentvolumes",
                            Cluster,
                            "to remove read-only copies of volumes",
                        ),
                    ]);
                }
            }
        }
        Mode::Restore => {
            out.extend_from_slice(&[
                need(
                    "get",
                    "",
                    "namespaces",
                    Cluster,
                    "to check target namespaces",
                ),
                need(
                    "create",
                    "",
                    "namespaces",
                    Cluster,
                    "to create missing namespaces",
                ),
                need("create", "", "configmaps", Targets, "to restore objects"),
                need("create", "", "secrets", Targets, "to restore objects"),
                need(
                    "create",
                    "apps",
                    "deployments",
                    Targets,
                    "to restore workloads",
                ),
                need(
                    "create",
                    "",
                    "persistentvolumeclaims",
                    Targets,
                    "to restore claims",
                ),
            ]);
            match config.restore.existing {
                crate::config::Existing::Skip => {}
                crate::config::Existing::Update => {
                    out.push(need(
                        "update",
                        "apps",
                        "deployments",
                        Targets,
                        "to update existing objects (STOW_EXISTING=update)",
                    ));
                }
                crate::config::Existing::Recreate => {
                    out.push(need(
                        "delete",
                        "apps",
                        "deployments",
                        Targets,
                        "to recreate existing objects (STOW_EXISTING=recreate)",
                    ));
                }
            }
            // ClusterRoles stand for the shared objects this reaches.
            match config.restore.existing_cluster {
                crate::config::Existing::Skip => {}
                crate::config::Existing::Update => out.push(need(
                    "update",
                    "rbac.authorization.k8s.io",
                    "clusterroles",
                    Cluster,
                    "to update existing cluster-scoped objects (STOW_EXISTING_CLUSTER_RESOURCES=update)",
                )),
                crate::config::Existing::Recreate => out.push(need(
                    "delete",
                    "rbac.authorization.k8s.io",
                    "clusterroles",
                    Cluster,
                    "to recreate existing cluster-scoped objects (STOW_EXISTING_CLUSTER_RESOURCES=recreate)",
                )),
            }
            if config.restore.volumes && !config.restore.dry_run {
                out.extend_from_slice(&movers);
                out.extend_from_slice(&[
                    need(
                        "create",
                        "",
                        "persistentvolumeclaims",
                        Home,
                        "to fill volumes in kubestow's namespace",
                    ),
                    need(
                        "delete",
                        "",
                        "persistentvolumeclaims",
                        Home,
                        "to release filled volumes to the restored claims",
                    ),
                    need(
                        "get",
                        "",
                        "persistentvolumes",
                        Cluster,
                        "to hand filled volumes over to the restored claims",
                    ),
                    need(
                        "patch",
                        "",
                        "persistentvolumes",
                        Cluster,
                        "to hand filled volumes over to the restored claims",
                    ),
                ]);
            }
        }
        _ => {}
    }
    out
}

/// Where each need is checked: `(need, namespace)`, the namespace empty
/// for all namespaces or cluster-scoped objects. `Targets` needs are asked
/// in the namespaces the run names (all namespaces when it names none or
/// uses globs), `Home` needs in kubestow's namespace; without one, they
/// are left out and the second value is `true`.
fn asks(needs: &[Need], config: &Config, mode: Mode) -> (Vec<(Need, String)>, bool) {
    let selector = crate::resources::select::Selector::new(&config.selection).ok();
    let mut targets: Vec<String> = selector
        .and_then(|s| s.literal_namespaces())
        .unwrap_or_default();
    if mode == Mode::Restore {
        for ns in targets.iter_mut() {
            if let Some(to) = config.restore.namespace_map.get(ns.as_str()) {
                *ns = to.clone();
            }
        }
    }
    if targets.is_empty() {
        targets.push(String::new());
    }
    let home = home(config);
    let mut out = Vec::new();
    let mut no_home = false;
    for need in needs {
        match need.scope {
            Scope::Cluster => out.push((*need, String::new())),
            Scope::Targets => out.extend(targets.iter().map(|ns| (*need, ns.clone()))),
            Scope::Home => match home {
                Some(ns) => out.push((*need, ns.to_string())),
                None => no_home = true,
            },
        }
    }
    (out, no_home)
}

/// `SelfSubjectAccessReview` for every permission the mode needs, where it
/// needs it ([`Scope`]).
async fn check_rbac(cluster: &Cluster, config: &Config, mode: Mode, checks: &mut Checks) {
    let needs = needs(config, mode);
    if needs.is_empty() {
        return;
    }
    let (asks, no_home) = asks(&needs, config, mode);
    if no_home {
        checks.push(
            "mover namespace",
            Level::Warn,
            format!(
                "mover Jobs run in kubestow's own namespace, which is not known: set {} \
                 (or {} through the downward API); the permissions movers need there were not checked",
                crate::config::vars::MOVER_NAMESPACE,
                crate::config::vars::POD_NAMESPACE,
            ),
        );
    }
    use futures::StreamExt;
    let results: Vec<(Need, String, Result<bool, String>)> = futures::stream::iter(asks)
        .map(|(need, ns)| async move {
            let r = access(cluster, need, &ns).await;
            (need, ns, r)
        })
        .buffered(8)
        .collect()
        .await;
    let mut missing = 0;
    for (need, ns, r) in &results {
        let Need {
            verb,
            group,
            resource,
            why,
            ..
        } = need;
        let level = if required(need, config, mode) {
            Level::Fail
        } else {
            Level::Warn
        };
        let what = match (group.is_empty(), ns.is_empty()) {
            (true, true) => format!("{verb} {resource}"),
            (true, false) => format!("{verb} {resource} in namespace {ns}"),
            (false, true) => format!("{verb} {resource}.{group}"),
            (false, false) => format!("{verb} {resource}.{group} in namespace {ns}"),
        };
        match r {
            Ok(true) => {}
            Ok(false) => {
                missing += 1;
                let effect = if level == Level::Warn && *resource != "events" {
                    "; those objects will fail as items"
                } else {
                    ""
                };
                checks.push(
                    "rbac",
                    level,
                    format!("missing permission: {what} ({why}){effect}"),
                );
            }
            Err(e) => {
                missing += 1;
                checks.push(
                    "rbac",
                    level,
                    format!("cannot check permission {what}: {e}"),
                );
            }
        }
    }
    if missing == 0 {
        checks.push(
            "rbac",
            Level::Ok,
            format!(
                "all {} permission(s) {mode} needs are granted",
                results.len()
            ),
        );
    }
}

async fn access(cluster: &Cluster, need: Need, ns: &str) -> Result<bool, String> {
    let Need {
        verb,
        group,
        resource,
        ..
    } = need;
    let mut attrs = serde_json::json!({"verb": verb, "group": group, "resource": resource});
    if !ns.is_empty() {
        attrs["namespace"] = serde_json::json!(ns);
    }
    let body = serde_json::json!({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": attrs},
    });
    let req = http::Request::post("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews")
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&body).expect("serialises"))
        .map_err(|e| e.to_string())?;
    let v: serde_json::Value = cluster
        .client
        .request(req)
        .await
        .map_err(|e| error_chain(&e))?;
    Ok(v.pointer("/status/allowed").and_then(|a| a.as_bool()) == Some(true))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &[(&str, &str)]) -> Config {
        let mut v = vec![
            ("STOW_MODE", "backup"),
            ("STOW_REPOSITORY", "s3://backups/p"),
            ("STOW_PASSWORD", "pw"),
        ];
        v.extend_from_slice(extra);
        Config::from_vars(v.iter().map(|(k, v)| (k.to_string(), v.to_string())), None).unwrap()
    }

    fn find<'a>(needs: &'a [Need], verb: &str, resource: &str, scope: Scope) -> Option<&'a Need> {
        needs
            .iter()
            .find(|n| n.verb == verb && n.resource == resource && n.scope == scope)
    }

    fn has(needs: &[Need], verb: &str, resource: &str, scope: Scope) -> bool {
        find(needs, verb, resource, scope).is_some()
    }

    #[test]
    fn what_each_mode_needs_and_what_it_cannot_do_without() {
        use Scope::{Cluster, Home, Targets};
        let c = config(&[("STOW_NAMESPACES", "shop-*")]);
        let backup = needs(&c, Mode::Backup);
        let jobs = find(&backup, "create", "jobs", Home).unwrap();
        assert!(required(jobs, &c, Mode::Backup), "movers need it");
        let list_secrets = find(&backup, "list", "secrets", Targets).unwrap();
        assert!(
            !required(list_secrets, &c, Mode::Backup),
            "only those items fail"
        );
        let events = find(&backup, "list", "events", Home).unwrap();
        assert!(!required(events, &c, Mode::Backup), "only messages suffer");
        let ns = find(&backup, "list", "namespaces", Cluster).unwrap();
        assert!(required(ns, &c, Mode::Backup), "globs need the list");
        let literal = config(&[("STOW_NAMESPACES", "shop")]);
        assert!(!required(ns, &literal, Mode::Backup));
        // No volume data: no mover permissions at all.
        let skip = config(&[("STOW_VOLUME_SOURCE", "skip")]);
        let none = needs(&skip, Mode::Backup);
        assert!(none.iter().all(|n| n.scope != Home), "{none:?}");
        assert!(!has(&none, "create", "persistentvolumes", Cluster));
        // kubelet source: no snapshots anywhere, but read-only copies of
        // volumes no pod mounts.
        let kubelet = needs(&config(&[("STOW_VOLUME_SOURCE", "kubelet")]), Mode::Backup);
        assert!(kubelet.iter().all(|n| n.group != SNAPSHOTS), "{kubelet:?}");
        assert!(has(&kubelet, "create", "persistentvolumes", Cluster));
        // snapshot source: no PersistentVolumes are created.
        let snapshot = needs(&config(&[("STOW_VOLUME_SOURCE", "snapshot")]), Mode::Backup);
        assert!(!has(&snapshot, "create", "persistentvolumes", Cluster));
        assert!(has(&snapshot, "create", "volumesnapshotcontents", Cluster));
        // A restore's movers fail as items: the snapshot may have no volumes.
        let restore = needs(&c, Mode::Restore);
        let jobs = find(&restore, "create", "jobs", Home).unwrap();
        assert!(!required(jobs, &c, Mode::Restore));
        let patch = find(&restore, "patch", "persistentvolumes", Cluster).unwrap();
        assert!(!required(patch, &c, Mode::Restore));
        let dry = config(&[("STOW_DRY_RUN", "true")]);
        assert!(!has(
            &needs(&dry, Mode::Restore),
            "patch",
            "persistentvolumes",
            Cluster
        ));
        let update = config(&[("STOW_EXISTING", "update")]);
        assert!(has(
            &needs(&update, Mode::Restore),
            "update",
            "deployments",
            Targets
        ));
        // STOW_EXISTING does not reach cluster-scoped objects; their own setting does.
        assert!(!has(
            &needs(&update, Mode::Restore),
            "update",
            "clusterroles",
            Cluster
        ));
        let shared = config(&[("STOW_EXISTING_CLUSTER_RESOURCES", "recreate")]);
        assert!(has(
            &needs(&shared, Mode::Restore),
            "delete",
            "clusterroles",
            Cluster
        ));
    }

    /// Movers run in kubestow's namespace only: nothing is created in a
    /// tenant's namespace but the snapshot of its claim, and with a named
    /// mover account no mode creates Secrets or ServiceAccounts.
    #[test]
    fn movers_need_rights_in_kubestow_namespace_only() {
        use Scope::{Cluster, Home, Targets};
        for source in ["auto", "snapshot", "kubelet"] {
            let c = config(&[
                ("STOW_VOLUME_SOURCE", source),
                ("STOW_MOVER_SERVICE_ACCOUNT", "kubestow-mover"),
            ]);
            for mode in [Mode::Backup, Mode::Restore] {
                let all = needs(&c, mode);
                for n in &all {
                    assert!(
                        !matches!(n.resource, "secrets" | "serviceaccounts" | "pods")
                            || n.verb == "list"
                            || (mode == Mode::Restore && n.scope == Targets),
                        "{source} {mode}: {n:?}"
                    );
                    if n.scope == Targets && mode == Mode::Backup && n.verb != "list" {
                        assert_eq!(n.resource, "volumesnapshots", "{source}: {n:?}");
                    }
                    if matches!(n.resource, "jobs" | "events") {
                        assert_eq!(n.scope, Home, "{source} {mode}: {n:?}");
                    }
                }
                assert!(has(&all, "create", "persistentvolumeclaims", Home));
            }
        }
        let backup = needs(&config(&[]), Mode::Backup);
        // Without a named account, movers get one each, at home.
        let accounts: Vec<_> = backup
            .iter()
            .filter(|n| n.resource == "serviceaccounts")
            .collect();
        assert_eq!(accounts.len(), 1, "{accounts:?}");
        assert_eq!((accounts[0].verb, accounts[0].scope), ("create", Home));
        assert!(!has(&backup, "create", "persistentvolumeclaims", Targets));
        assert!(has(&backup, "create", "volumesnapshots", Targets));
        assert!(has(&backup, "create", "volumesnapshots", Home));
        assert!(has(&backup, "delete", "volumesnapshotcontents", Cluster));
    }

    #[test]
    fn home_is_the_mover_namespace_else_this_pods() {
        let both = config(&[
            ("STOW_MOVER_NAMESPACE", "backups"),
            ("STOW_POD_NAMESPACE", "kubestow"),
        ]);
        assert_eq!(home(&both), Some("backups"));
        let pod = config(&[("STOW_POD_NAMESPACE", "kubestow")]);
        assert_eq!(home(&pod), Some("kubestow"));
        assert_eq!(home(&config(&[])), None);
    }

    #[test]
    fn each_need_is_asked_where_it_applies() {
        let c = config(&[
            ("STOW_NAMESPACES", "shop,web"),
            ("STOW_POD_NAMESPACE", "kubestow"),
        ]);
        let (backup, no_home) = asks(&needs(&c, Mode::Backup), &c, Mode::Backup);
        assert!(!no_home);
        let at = |verb: &str, resource: &str| -> Vec<&str> {
            backup
                .iter()
                .filter(|(n, _)| n.verb == verb && n.resource == resource)
                .map(|(_, ns)| ns.as_str())
                .collect()
        };
        assert_eq!(at("create", "jobs"), ["kubestow"]);
        assert_eq!(at("create", "persistentvolumeclaims"), ["kubestow"]);
        assert_eq!(at("create", "volumesnapshots"), ["shop", "web", "kubestow"]);
        assert_eq!(at("create", "volumesnapshotcontents"), [""]);
        assert_eq!(at("create", "persistentvolumes"), [""]);
        assert_eq!(at("list", "pods"), ["shop", "web"]);
        // A restore asks in the mapped namespaces, movers still at home.
        let r = config(&[
            ("STOW_NAMESPACES", "shop"),
            ("STOW_NAMESPACE_MAP", "shop=shop2"),
            ("STOW_MOVER_NAMESPACE", "backups"),
        ]);
        let (restore, _) = asks(&needs(&r, Mode::Restore), &r, Mode::Restore);
        let ns_of = |verb: &str, resource: &str| -> Vec<String> {
            restore
                .iter()
                .filter(|(n, _)| n.verb == verb && n.resource == resource)
                .map(|(_, ns)| ns.clone())
                .collect()
        };
        assert_eq!(
            ns_of("create", "persistentvolumeclaims"),
            ["shop2", "backups"]
        );
        assert_eq!(ns_of("create", "jobs"), ["backups"]);
        assert_eq!(ns_of("patch", "persistentvolumes"), [""]);
        // Without a home, its needs are left out and said so.
        let none = config(&[]);
        let (homeless, no_home) = asks(&needs(&none, Mode::Backup), &none, Mode::Backup);
        assert!(no_home);
        assert!(homeless.iter().all(|(n, _)| n.scope != Scope::Home));
    }

    #[test]
    fn pod_security_levels_that_admit_movers() {
        use serde_json::json;
        let at = |l: &str| json!({"pod-security.kubernetes.io/enforce": l});
        assert!(admits(&json!({}), "privileged").is_ok());
        assert!(admits(&at("privileged"), "privileged").is_ok());
        assert_eq!(
            admits(&at("baseline"), "privileged"),
            Err("baseline".into())
        );
        assert!(admits(&at("baseline"), "baseline").is_ok());
        assert_eq!(
            admits(&at("restricted"), "baseline"),
            Err("restricted".into())
        );
        let backup = config(&[("STOW_VOLUME_SOURCE", "snapshot")]);
        assert_eq!(mover_level(&backup, Mode::Backup), Some("baseline"));
        let auto = config(&[]);
        assert_eq!(mover_level(&auto, Mode::Backup), Some("baseline"));
        let kubelet = config(&[("STOW_VOLUME_SOURCE", "kubelet")]);
        assert_eq!(mover_level(&kubelet, Mode::Backup), Some("privileged"));
        assert_eq!(mover_level(&auto, Mode::Restore), Some("baseline"));
        let skip = config(&[("STOW_VOLUME_SOURCE", "skip")]);
        assert_eq!(mover_level(&skip, Mode::Backup), None);
        assert_eq!(mover_level(&auto, Mode::Check), None);
    }

    #[test]
    fn minor_versions_from_managed_clusters() {
        assert_eq!(parse_minor("20"), Some(20));
        assert_eq!(parse_minor("27+"), Some(27));
        assert_eq!(parse_minor("x"), None);
    }
}
