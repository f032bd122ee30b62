//! Persistent-volume data through mover Jobs (docs/design.md §4).
//!
//! `backup` plans a source for every selected claim ([`plan`]), then runs
//! one mover Job per claim, at most `STOW_CHANNELS` at a time: the same
//! image in `volume-backup` mode with `STOW_MOVER=true`, which saves the
//! tree and a mover result to the repository. The orchestrator reads the
//! results and links each tree in the snapshot it writes last. `restore`
//! creates each claim and fills it through a `volume-restore` mover before
//! the workloads that use it are created.
//!
//! Every mover runs in kubestow's own namespace ("home",
//! `STOW_MOVER_NAMESPACE`, else this pod's), never in a tenant's: tenants
//! are not trusted with the repository password or the bucket's keys.
//! Movers get credentials by reference to the Secrets this pod reads them
//! from (its `envFrom` and `secretKeyRef` entries), so nothing is copied.
//! Only when this process has a secret that no reference gives (a run
//! outside a pod, or a password file) does a Secret in home carry it,
//! owned by the mover Job so it goes with it. Snapshots are taken in the
//! claim's namespace and brought home through a VolumeSnapshotContent on
//! the same handle ([`backup`]); restores fill a claim at home and hand
//! its volume over ([`restore`]). Temporary objects carry the run's label;
//! a retried run removes what an earlier attempt left.

pub mod backup;
mod error;
pub mod handover;
pub mod job;
mod origin;
pub mod plan;
pub mod restore;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::cluster::ResourceType;
use crate::cluster::api::{Kube, message, status};
use crate::cluster::types::{
    claims, events, jobs, pods, secrets, service_accounts, snapshot_contents, volume_snapshots,
    volumes,
};
use crate::config::{RateSchedule, Secret, VolumeSource};
pub use error::MoverError;
use job::{MoverJob, Owner, Work};
use origin::{mover_env, origin};

/// How often a waiting orchestrator looks at a Job or snapshot.
const POLL: Duration = Duration::from_secs(1);
/// How long a mover Job may have no pod before its events are read.
const REFUSAL_LOOK: Duration = Duration::from_secs(3);
/// How long the clean-up waits for temporary objects to disappear.
const CLEANUP_WAIT: Duration = Duration::from_secs(60);

/// What mover Jobs read from the configuration, built once by the mode so
/// the engine never sees the whole `Config`.
#[derive(Debug, Clone)]
pub struct MoverOptions {
    /// `STOW_IMAGE`; `None` means this pod's own image.
    pub image: Option<String>,
    /// Where movers run: `STOW_MOVER_NAMESPACE`, else this pod's namespace.
    pub home: Option<String>,
    /// This pod (downward API): its image is the movers' default, and
    /// its Secret references are theirs.
    pub pod_namespace: Option<String>,
    /// See [`Self::pod_namespace`].
    pub pod_name: Option<String>,
    /// The orchestrating Job, which owns movers in its namespace.
    pub job_name: Option<String>,
    /// `STOW_MOVER_SERVICE_ACCOUNT`; `None` means one without API access per Job.
    pub service_account: Option<String>,
    /// Resource requests and limits of mover containers.
    pub resources: BTreeMap<String, String>,
    /// How long a mover pod may take to start.
    pub start_timeout: Duration,
    /// How long a VolumeSnapshot may take to become ready.
    pub snapshot_timeout: Duration,
    /// The kubelet's directory on nodes, for the `kubelet` source.
    pub kubelet_dir: std::path::PathBuf,
    /// The repository password movers get in their Secret.
    pub password: Option<Secret>,
    /// `STOW_CHANNELS`, shared out among the movers in flight.
    pub channels: u8,
    /// `STOW_RATE_LIMIT`, shared out among the movers in flight.
    pub rate_limit: Option<RateSchedule>,
    /// How volume data is read.
    pub source: VolumeSource,
    /// Globs of volumes not to back up.
    pub exclude: Vec<String>,
    /// `STOW_TEST_EXIT_AFTER`: crash tests of the restore hand-over.
    pub exit_after: Option<handover::Step>,
}

/// How one mover Job ended.
#[derive(Debug)]
pub enum JobEnd {
    /// A pod of the Job succeeded.
    Succeeded,
    /// Failed for good (after the Job's retries), or never started.
    Failed(MoverError),
}

fn str_at<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

/// Runs mover Jobs for one orchestrating run and cleans up after it.
pub(crate) struct Runner<'a> {
    pub kube: &'a Kube,
    pub tag: String,
    pub run_id: String,
    pub image: String,
    pub cancel: CancellationToken,
    /// kubestow's namespace: every mover, clone and home snapshot is here.
    pub home: String,
    service_account: Option<String>,
    resources: BTreeMap<String, String>,
    start_timeout: Duration,
    /// `envFrom` entries of this pod, by reference.
    env_from: Vec<Value>,
    /// `env` entries of this pod taken by reference (`valueFrom`).
    env_refs: Vec<Value>,
    /// This pod's CA bundle volumes, mounted the same way in movers.
    ca_mounts: Vec<(Value, Value)>,
    /// Secrets no reference gives: a Secret at home per Job, if any.
    companion: BTreeMap<String, String>,
    /// Plain variables every mover gets.
    base_env: BTreeMap<String, String>,
    /// The orchestrating Job, when it runs at home: movers are owned by it.
    orchestrator: Option<Owner>,
    /// Namespaces where the run may have created something.
    touched: std::sync::Mutex<BTreeSet<String>>,
}

impl<'a> Runner<'a> {
    /// Finds home, the image and the references movers get, and the Job
    /// this run belongs to.
    pub async fn start(
        kube: &'a Kube,
        options: &MoverOptions,
        run_id: &str,
        cancel: CancellationToken,
        movers: usize,
    ) -> Result<Runner<'a>, MoverError> {
        let home = options.home.clone().ok_or(MoverError::NoHome)?;
        let origin = origin(kube, options, &home).await?;
        let (companion, base_env) =
            mover_env(options, run_id, movers, &origin, |v| std::env::var(v).ok());
        let mut runner = Runner {
            kube,
            tag: job::run_tag(run_id),
            run_id: run_id.to_string(),
            image: origin.image,
            cancel,
            home,
            service_account: options.service_account.clone(),
            resources: options.resources.clone(),
            start_timeout: options.start_timeout,
            env_from: origin.env_from,
            env_refs: origin.env_refs,
            ca_mounts: origin.ca_mounts,
            companion,
            base_env,
            orchestrator: None,
            touched: std::sync::Mutex::new(BTreeSet::new()),
        };
        runner.find_orchestrator(options).await;
        Ok(runner)
    }

    fn touch(&self, ns: &str) {
        self.touched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ns.to_string());
    }

    /// Creates an object, or returns the one a previous attempt of this
    /// run left under the same name.
    pub async fn create(
        &self,
        rt: &ResourceType,
        ns: &str,
        body: &Value,
    ) -> Result<Value, MoverError> {
        self.touch(ns);
        let name = str_at(body, "/metadata/name").unwrap_or_default();
        match self.kube.create(rt, Some(ns), body, false).await {
            Ok(v) => Ok(v),
            Err(e) if status(&e) == Some(409) => match self.kube.get(rt, Some(ns), name).await {
                Ok(Some(v)) => Ok(v),
                Ok(None) => Err(MoverError::Adopt {
                    kind: rt.kind.clone(),
                    namespace: ns.to_string(),
                    name: name.to_string(),
                    source: e,
                }),
                Err(source) => Err(MoverError::Adopt {
                    kind: rt.kind.clone(),
                    namespace: ns.to_string(),
                    name: name.to_string(),
                    source,
                }),
            },
            Err(source) => Err(MoverError::Create {
                kind: rt.kind.clone(),
                namespace: ns.to_string(),
                name: name.to_string(),
                source,
            }),
        }
    }

    /// Looks up the Job this run belongs to (`STOW_JOB_NAME` in
    /// `STOW_POD_NAMESPACE`), so movers at home are owned by it (owners
    /// must be in the same namespace).
    async fn find_orchestrator(&mut self, options: &MoverOptions) {
        let (Some(ns), Some(job)) = (&options.pod_namespace, &options.job_name) else {
            return;
        };
        if *ns != self.home {
            return;
        }
        if let Ok(Some(obj)) = self.kube.get(&jobs(), Some(ns), job).await
            && let Some(uid) = str_at(&obj, "/metadata/uid")
        {
            self.orchestrator = Some(Owner::job(job, uid));
        }
    }

    /// The Secret (only for secrets no reference gives) and service
    /// account (only without `STOW_MOVER_SERVICE_ACCOUNT`) of one mover
    /// Job, at home and owned by it.
    async fn job_companions(&self, spec: &MoverJob, job_uid: &str) -> Result<(), MoverError> {
        let ns = spec.namespace.as_str();
        let owner = Owner::job(&spec.name, job_uid);
        if !self.companion.is_empty() {
            let secret = json!({
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": job::metadata(&spec.name, ns, &self.tag, &self.run_id, Some(&owner)),
                "type": "Opaque",
                "stringData": self.companion,
            });
            self.create(&secrets(), ns, &secret).await?;
        }
        if self.service_account.is_none() {
            let sa = json!({
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": job::metadata(&spec.service_account, ns, &self.tag, &self.run_id, Some(&owner)),
                "automountServiceAccountToken": false,
            });
            self.create(&service_accounts(), ns, &sa).await?;
        }
        Ok(())
    }

    /// A mover Job for `volume`, at home; `env` adds to the base variables.
    pub fn job(
        &self,
        name: String,
        volume: &str,
        env: BTreeMap<String, String>,
        mount: job::Mount,
        work: Work,
    ) -> MoverJob {
        let mut all = self.base_env.clone();
        all.extend(env);
        let mut env_from = self.env_from.clone();
        if !self.companion.is_empty() {
            env_from.push(json!({"secretRef": {"name": name}}));
        }
        MoverJob {
            namespace: self.home.clone(),
            tag: self.tag.clone(),
            run_id: self.run_id.clone(),
            volume: volume.to_string(),
            image: self.image.clone(),
            env_from,
            env_refs: self.env_refs.clone(),
            extra_mounts: self.ca_mounts.clone(),
            owner: self.orchestrator.clone(),
            service_account: self.service_account.clone().unwrap_or_else(|| name.clone()),
            name,
            env: all,
            mount,
            work,
            tolerations: json!([]),
            node: None,
            node_affinity: None,
            resources: self.resources.clone(),
        }
    }

    /// Creates the Job, waits until it succeeds or fails for good, and
    /// deletes it. A Job of the same name from an earlier attempt of this
    /// run is adopted if still going, replaced if it failed.
    pub async fn run_job(&self, spec: &MoverJob) -> JobEnd {
        let ns = spec.namespace.as_str();
        let name = spec.name.as_str();
        let end = self.wait_job(spec).await;
        if let Err(e) = self.kube.delete(&jobs(), Some(ns), name).await {
            warn!(job = %format!("{ns}/{name}"), error = %message(&e), "could not delete the mover Job; its TTL removes it");
        }
        end
    }

    async fn wait_job(&self, spec: &MoverJob) -> JobEnd {
        let (ns, name) = (spec.namespace.as_str(), spec.name.as_str());
        let what = format!("mover Job {ns}/{name}");
        let ids = || (ns.to_string(), name.to_string());
        let body = spec.to_json();
        let mut existing = match self.create(&jobs(), ns, &body).await {
            Ok(j) => j,
            Err(e) => return JobEnd::Failed(e),
        };
        if condition(&existing, "Failed") {
            info!(job = %what, "replacing a failed mover Job of an earlier attempt");
            if let Err(e) = self.kube.delete(&jobs(), Some(ns), name).await {
                let (namespace, job) = ids();
                return JobEnd::Failed(MoverError::DeleteFailedJob {
                    namespace,
                    job,
                    source: e,
                });
            }
            existing = loop {
                match self.kube.create(&jobs(), Some(ns), &body, false).await {
                    Ok(j) => break j,
                    Err(e) if status(&e) == Some(409) => tokio::time::sleep(POLL).await,
                    Err(source) => {
                        let (namespace, job) = ids();
                        return JobEnd::Failed(MoverError::CreateJob {
                            namespace,
                            job,
                            source,
                        });
                    }
                }
            };
        }
        let uid = str_at(&existing, "/metadata/uid")
            .unwrap_or_default()
            .to_string();
        // The pod waits for its Secret (and is re-created by the Job
        // controller until its service account exists): created owned by
        // the Job, they go when it goes.
        if let Err(e) = self.job_companions(spec, &uid).await {
            return JobEnd::Failed(e);
        }
        info!(job = %what, volume = %spec.volume, "mover started");
        let created = tokio::time::Instant::now();
        let mut started = false;
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return JobEnd::Failed(MoverError::Cancelled),
                _ = tokio::time::sleep(POLL) => {}
            }
            let job = match self.kube.get(&jobs(), Some(ns), name).await {
                Ok(Some(j)) if str_at(&j, "/metadata/uid") == Some(&uid) => j,
                Ok(_) => {
                    let (namespace, job) = ids();
                    return JobEnd::Failed(MoverError::JobDeleted { namespace, job });
                }
                Err(source) => {
                    let (namespace, job) = ids();
                    return JobEnd::Failed(MoverError::WatchJob {
                        namespace,
                        job,
                        source,
                    });
                }
            };
            if job
                .pointer("/status/succeeded")
                .and_then(Value::as_u64)
                .unwrap_or(0)
                > 0
            {
                return JobEnd::Succeeded;
            }
            if condition(&job, "Failed") {
                let why = self.last_failure(ns, name).await;
                let (namespace, job) = ids();
                return JobEnd::Failed(MoverError::JobFailed {
                    namespace,
                    job,
                    why,
                });
            }
            if !started {
                let pods = self
                    .kube
                    .list_all(&pods(), Some(ns), Some(&format!("job-name={name}")))
                    .await
                    .unwrap_or_default();
                started = pods
                    .iter()
                    .any(|p| str_at(p, "/status/phase").is_some_and(|ph| ph != "Pending"))
                    || job.pointer("/status/failed").is_some();
                // No pod at all: the Job controller's FailedCreate event
                // says why (admission, quota). Pod Security never relents.
                let refused = if !started && pods.is_empty() && created.elapsed() > REFUSAL_LOOK {
                    self.refusal(ns, name).await
                } else {
                    None
                };
                if let Some(why) = &refused
                    && why.contains("PodSecurity")
                {
                    let (namespace, job) = ids();
                    return JobEnd::Failed(MoverError::Rejected {
                        namespace,
                        job,
                        why: why.clone(),
                    });
                }
                if !started && created.elapsed() > self.start_timeout {
                    let why = pods
                        .iter()
                        .find_map(pending_reason)
                        .or(refused)
                        .unwrap_or_else(|| {
                            "no pod was created (quota, admission or an unknown service account?)"
                                .into()
                        });
                    let (namespace, job) = ids();
                    return JobEnd::Failed(MoverError::NotStarted {
                        namespace,
                        job,
                        seconds: self.start_timeout.as_secs(),
                        why,
                    });
                }
            }
        }
    }

    /// The newest `FailedCreate` event of a Job: why it has no pod.
    async fn refusal(&self, ns: &str, job: &str) -> Option<String> {
        let events = self.kube.list_all(&events(), Some(ns), None).await.ok()?;
        events
            .iter()
            .filter(|e| {
                str_at(e, "/involvedObject/kind") == Some("Job")
                    && str_at(e, "/involvedObject/name") == Some(job)
                    && str_at(e, "/reason") == Some("FailedCreate")
            })
            .max_by_key(|e| {
                str_at(e, "/lastTimestamp")
                    .or_else(|| str_at(e, "/eventTime"))
                    .unwrap_or_default()
                    .to_string()
            })
            .and_then(|e| str_at(e, "/message"))
            .map(String::from)
    }

    /// Why the last failed pod of a Job failed: its summary's reason or
    /// first error, else its exit code.
    async fn last_failure(&self, ns: &str, job: &str) -> String {
        let pods = self
            .kube
            .list_all(&pods(), Some(ns), Some(&format!("job-name={job}")))
            .await
            .unwrap_or_default();
        let mut failed: Vec<&Value> = pods
            .iter()
            .filter(|p| str_at(p, "/status/phase") == Some("Failed"))
            .collect();
        failed.sort_by_key(|p| {
            str_at(p, "/metadata/creationTimestamp")
                .unwrap_or_default()
                .to_string()
        });
        let Some(pod) = failed.last() else {
            return "no failed pod left to tell why".into();
        };
        let term = pod.pointer("/status/containerStatuses/0/state/terminated");
        let code = term.and_then(|t| t.get("exitCode")).and_then(Value::as_i64);
        let msg = term
            .and_then(|t| t.get("message"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let summary: Option<Value> = msg
            .lines()
            .last()
            .and_then(|l| serde_json::from_str(l).ok());
        let reason = summary.as_ref().and_then(|s| {
            s.get("reason")
                .and_then(Value::as_str)
                .map(String::from)
                .or_else(|| {
                    s.pointer("/errors/0").map(|e| {
                        format!(
                            "{}: {}",
                            str_at(e, "/item").unwrap_or(""),
                            str_at(e, "/message").unwrap_or("")
                        )
                    })
                })
        });
        match (reason, code) {
            (Some(r), Some(c)) => format!("exit code {c}: {r}"),
            (Some(r), None) => r,
            (None, Some(c)) => {
                let tail: String = msg
                    .chars()
                    .rev()
                    .take(300)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                if tail.trim().is_empty() {
                    format!("exit code {c}")
                } else {
                    format!("exit code {c}: {}", tail.trim())
                }
            }
            (None, None) => str_at(pod, "/status/message")
                .unwrap_or("unknown")
                .to_string(),
        }
    }

    /// Deletes everything the run created: at home, in the namespaces it
    /// touched (snapshots of tenant claims) and `extra`, and the
    /// cluster-scoped snapshot contents and shadow volumes; then waits a
    /// while for it to be gone.
    pub async fn clean_up(&self, extra: &[String]) {
        let mut namespaces = self
            .touched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        namespaces.insert(self.home.clone());
        namespaces.extend(extra.iter().cloned());
        let selector = job::selector(&self.tag);
        // Jobs first: their pods stop using the claims, and their Secrets
        // and service accounts go with them (owned by the Jobs). Claims
        // before the volumes and contents they hold on to.
        let namespaced = [jobs(), claims(), volume_snapshots()];
        let cluster = [snapshot_contents(), volumes()];
        let mut scopes: Vec<(ResourceType, Option<&str>)> = Vec::new();
        for ns in &namespaces {
            for rt in &namespaced {
                scopes.push((rt.clone(), Some(ns.as_str())));
            }
        }
        for rt in &cluster {
            scopes.push((rt.clone(), None));
        }
        for (rt, ns) in &scopes {
            let found = match self.kube.list_all(rt, *ns, Some(&selector)).await {
                Ok(f) => f,
                // No snapshot CRDs: nothing of that kind to delete.
                Err(e) if status(&e) == Some(404) => continue,
                Err(e) => {
                    warn!(namespace = ?ns, kind = %rt.kind, error = %message(&e), "cannot list temporary objects to delete");
                    continue;
                }
            };
            for obj in found {
                let name = str_at(&obj, "/metadata/name").unwrap_or_default();
                debug!(namespace = ?ns, kind = %rt.kind, %name, "deleting");
                if let Err(e) = self.kube.delete(rt, *ns, name).await {
                    warn!(namespace = ?ns, kind = %rt.kind, %name, error = %message(&e), "could not delete a temporary object");
                }
            }
        }
        let deadline = tokio::time::Instant::now() + CLEANUP_WAIT;
        scopes.push((service_accounts(), Some(self.home.as_str())));
        scopes.push((secrets(), Some(self.home.as_str())));
        for (rt, ns) in &scopes {
            loop {
                let left = self
                    .kube
                    .list_all(rt, *ns, Some(&selector))
                    .await
                    .map(|l| l.len())
                    .unwrap_or(0);
                if left == 0 {
                    break;
                }
                if tokio::time::Instant::now() > deadline {
                    warn!(namespace = ?ns, kind = %rt.kind, left, "temporary objects are still being deleted");
                    break;
                }
                tokio::time::sleep(POLL).await;
            }
        }
    }
}

fn condition(obj: &Value, kind: &str) -> bool {
    obj.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| str_at(c, "/type") == Some(kind) && str_at(c, "/status") == Some("True"))
        })
}

/// Why a pod has not started: unschedulable, image pull, …
fn pending_reason(pod: &Value) -> Option<String> {
    let waiting = pod
        .pointer("/status/containerStatuses/0/state/waiting")
        .map(|w| {
            format!(
                "{}: {}",
                str_at(w, "/reason").unwrap_or(""),
                str_at(w, "/message").unwrap_or("")
            )
        });
    let unscheduled = pod
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| {
            cs.iter().find(|c| {
                str_at(c, "/type") == Some("PodScheduled") && str_at(c, "/status") == Some("False")
            })
        })
        .map(|c| format!("unschedulable: {}", str_at(c, "/message").unwrap_or("")));
    waiting.or(unscheduled).or_else(|| {
        Some(format!(
            "pod {} is {} and not bound to a node",
            str_at(pod, "/metadata/name").unwrap_or(""),
            str_at(pod, "/status/phase").unwrap_or("Pending")
        ))
    })
}
