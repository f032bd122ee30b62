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
//! Pods can only read Secrets of their own namespace, so each mover Job
//! gets its own copy of the repository settings: a Secret, and a service
//! account without API access, both created right after the Job and owned
//! by it. Deleting the Job (the orchestrator does at the end, Kubernetes
//! does after `ttlSecondsAfterFinished` if the orchestrator died) removes
//! them too, so the orchestrator never needs to delete Secrets or service
//! accounts. VolumeSnapshots and cloned claims exist before their Job and
//! are deleted explicitly; everything carries the run's label, and a
//! retried run removes what an earlier attempt left.

pub mod backup;
mod error;
pub mod job;
pub mod plan;
pub mod restore;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::cluster::ResourceType;
use crate::cluster::api::{Kube, message, status};
use crate::cluster::types::{claims, jobs, pods, secrets, service_accounts, volume_snapshots};
use crate::config::{RateSchedule, Secret, VolumeSource, vars};
pub use error::MoverError;
use job::{MoverJob, Owner};

/// How often a waiting orchestrator looks at a Job or snapshot.
const POLL: Duration = Duration::from_secs(1);
/// How long the clean-up waits for temporary objects to disappear.
const CLEANUP_WAIT: Duration = Duration::from_secs(60);

/// AWS SDK variables handed to movers. Web-identity and container
/// credentials are left out: they belong to the orchestrator's service
/// account; set `STOW_MOVER_SERVICE_ACCOUNT` to give movers their own.
const AWS_VARS: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
];

/// Settings movers inherit as plain variables when the orchestrator has
/// them set.
const PASSED_ON: &[&str] = &[
    vars::COMPRESSION,
    vars::PLAN,
    vars::RECONNECT_TIMEOUT,
    vars::RESUME_BUFFER,
    vars::TIMEZONE,
    vars::LOG_FORMAT,
    "RUST_LOG",
];

/// What mover Jobs read from the configuration, built once by the mode so
/// the engine never sees the whole `Config`.
#[derive(Debug, Clone)]
pub struct MoverOptions {
    /// `STOW_IMAGE`; `None` means this pod's own image.
    pub image: Option<String>,
    /// This pod (downward API): its image is the movers' default.
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
    service_account: Option<String>,
    resources: BTreeMap<String, String>,
    start_timeout: Duration,
    /// `envFrom` content: repository, password, S3 credentials.
    secret_env: BTreeMap<String, String>,
    /// Plain variables every mover gets.
    base_env: BTreeMap<String, String>,
    /// The orchestrating Job (namespace, owner), when known: movers in
    /// its namespace are owned by it.
    orchestrator: Option<(String, Owner)>,
    /// Namespaces where the run may have created something.
    touched: std::sync::Mutex<BTreeSet<String>>,
}

/// The image movers run: `STOW_IMAGE`, else this pod's own.
pub(crate) async fn mover_image(kube: &Kube, options: &MoverOptions) -> Result<String, MoverError> {
    if let Some(i) = &options.image {
        return Ok(i.clone());
    }
    let (Some(ns), Some(pod)) = (&options.pod_namespace, &options.pod_name) else {
        return Err(MoverError::NoImage);
    };
    let obj = kube
        .get(&pods(), Some(ns), pod)
        .await
        .map_err(|source| MoverError::ReadPod {
            namespace: ns.clone(),
            pod: pod.clone(),
            source,
        })?
        .ok_or_else(|| MoverError::PodGone {
            namespace: ns.clone(),
            pod: pod.clone(),
        })?;
    let containers = obj
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    // The container that runs kubestow: the one named so, else the first.
    containers
        .iter()
        .find(|c| str_at(c, "/name") == Some("kubestow"))
        .or(containers.first())
        .and_then(|c| str_at(c, "/image"))
        .map(String::from)
        .ok_or_else(|| MoverError::NoContainerImage {
            namespace: ns.clone(),
            pod: pod.clone(),
        })
}

impl<'a> Runner<'a> {
    pub fn new(
        kube: &'a Kube,
        options: &MoverOptions,
        run_id: &str,
        image: String,
        cancel: CancellationToken,
        movers: usize,
    ) -> Self {
        let (secret_env, base_env) = mover_env(options, run_id, movers, |v| std::env::var(v).ok());
        Runner {
            kube,
            tag: job::run_tag(run_id),
            run_id: run_id.to_string(),
            image,
            cancel,
            service_account: options.service_account.clone(),
            resources: options.resources.clone(),
            start_timeout: options.start_timeout,
            secret_env,
            base_env,
            orchestrator: None,
            touched: std::sync::Mutex::new(BTreeSet::new()),
        }
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
    /// `STOW_POD_NAMESPACE`), so movers next to it are owned by it.
    pub async fn find_orchestrator(&mut self, options: &MoverOptions) {
        let (Some(ns), Some(job)) = (&options.pod_namespace, &options.job_name) else {
            return;
        };
        if let Ok(Some(obj)) = self.kube.get(&jobs(), Some(ns), job).await
            && let Some(uid) = str_at(&obj, "/metadata/uid")
        {
            self.orchestrator = Some((ns.clone(), Owner::job(job, uid)));
        }
    }

    /// The Secret and service account of one mover Job, owned by it.
    async fn job_companions(&self, spec: &MoverJob, job_uid: &str) -> Result<(), MoverError> {
        let ns = spec.namespace.as_str();
        let owner = Owner::job(&spec.name, job_uid);
        let secret = json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": job::metadata(&spec.env_secret, ns, &self.tag, &self.run_id, Some(&owner)),
            "type": "Opaque",
            "stringData": self.secret_env,
        });
        self.create(&secrets(), ns, &secret).await?;
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

    /// A mover Job for `volume` in `ns`; `env` adds to the base variables.
    pub fn job(
        &self,
        name: String,
        ns: &str,
        volume: &str,
        env: BTreeMap<String, String>,
        mount: job::Mount,
    ) -> MoverJob {
        let mut all = self.base_env.clone();
        all.extend(env);
        MoverJob {
            namespace: ns.to_string(),
            tag: self.tag.clone(),
            run_id: self.run_id.clone(),
            volume: volume.to_string(),
            image: self.image.clone(),
            env_secret: name.clone(),
            owner: self
                .orchestrator
                .as_ref()
                .filter(|(o_ns, _)| o_ns == ns)
                .map(|(_, o)| o.clone()),
            service_account: self.service_account.clone().unwrap_or_else(|| name.clone()),
            name,
            env: all,
            mount,
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
                if !started && created.elapsed() > self.start_timeout {
                    let why = pods.iter().find_map(pending_reason).unwrap_or_else(|| {
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

    /// Deletes everything the run created in the namespaces it touched
    /// (and `extra`), then waits a while for it to be gone.
    pub async fn clean_up(&self, extra: &[String]) {
        let mut namespaces = self
            .touched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        namespaces.extend(extra.iter().cloned());
        let selector = job::selector(&self.tag);
        // Jobs first: their pods stop using the claims, and their Secrets
        // and service accounts go with them (owned by the Jobs).
        let deleted = [jobs(), volume_snapshots(), claims()];
        let kinds = [
            jobs(),
            volume_snapshots(),
            claims(),
            service_accounts(),
            secrets(),
        ];
        let deadline = tokio::time::Instant::now() + CLEANUP_WAIT;
        for ns in &namespaces {
            for rt in &deleted {
                let found = match self.kube.list_all(rt, Some(ns), Some(&selector)).await {
                    Ok(f) => f,
                    Err(e) => {
                        warn!(namespace = %ns, kind = %rt.kind, error = %message(&e), "cannot list temporary objects to delete");
                        continue;
                    }
                };
                for obj in found {
                    let name = str_at(&obj, "/metadata/name").unwrap_or_default();
                    debug!(namespace = %ns, kind = %rt.kind, %name, "deleting");
                    if let Err(e) = self.kube.delete(rt, Some(ns), name).await {
                        warn!(namespace = %ns, kind = %rt.kind, %name, error = %message(&e), "could not delete a temporary object");
                    }
                }
            }
        }
        for ns in &namespaces {
            for rt in &kinds {
                loop {
                    let left = self
                        .kube
                        .list_all(rt, Some(ns), Some(&selector))
                        .await
                        .map(|l| l.len())
                        .unwrap_or(0);
                    if left == 0 {
                        break;
                    }
                    if tokio::time::Instant::now() > deadline {
                        warn!(namespace = %ns, kind = %rt.kind, left, "temporary objects are still being deleted");
                        break;
                    }
                    tokio::time::sleep(POLL).await;
                }
            }
        }
    }
}

/// What every mover gets: the Secret's content (repository, password, S3
/// credentials) and plain variables. `env` reads this process's
/// environment (injectable for tests).
fn mover_env(
    options: &MoverOptions,
    run_id: &str,
    movers: usize,
    env: impl Fn(&str) -> Option<String>,
) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let mut secret_env = BTreeMap::new();
    if let Some(repo) = env(vars::REPOSITORY) {
        secret_env.insert(vars::REPOSITORY.to_string(), repo.trim().to_string());
    }
    if let Some(pw) = &options.password {
        secret_env.insert(vars::PASSWORD.to_string(), pw.expose().to_string());
    }
    for var in AWS_VARS {
        if let Some(v) = env(var)
            && !v.is_empty()
        {
            secret_env.insert(var.to_string(), v);
        }
    }
    let mut base_env = BTreeMap::new();
    for var in PASSED_ON {
        if let Some(v) = env(var)
            && !v.trim().is_empty()
        {
            base_env.insert(var.to_string(), v);
        }
    }
    base_env.insert(vars::RUN_ID.to_string(), run_id.to_string());
    // STOW_CHANNELS is shared out: with many volumes, many movers of
    // one stream each; with one volume, one mover with every stream.
    let channels = usize::from(options.channels).max(1);
    let mover_channels = (channels / movers.clamp(1, channels)).max(1);
    base_env.insert(vars::CHANNELS.to_string(), mover_channels.to_string());
    // The bandwidth limit is per pod: each mover in flight gets its
    // share, so all of them together stay at the limit.
    if let Some(rate) = &options.rate_limit {
        let in_flight = movers.clamp(1, channels) as u32;
        base_env.insert(vars::RATE_LIMIT.to_string(), rate.share(in_flight).to_env());
    }
    (secret_env, base_env)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn config(extra: &[(&str, &str)]) -> Config {
        let mut v = vec![
            (vars::MODE, "backup"),
            (vars::REPOSITORY, "s3://backups/p"),
            (vars::PASSWORD, "pw-123"),
        ];
        v.extend_from_slice(extra);
        Config::from_vars(v.iter().map(|(k, v)| (k.to_string(), v.to_string())), None).unwrap()
    }

    fn env_of<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn movers_share_channels_and_the_bandwidth_limit() {
        let c = config(&[(vars::CHANNELS, "4"), (vars::RATE_LIMIT, "40MiB")]);
        let process = [
            (vars::REPOSITORY, "s3://backups/p"),
            ("AWS_SECRET_ACCESS_KEY", "sekrit"),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/var/run/token"),
            (vars::TIMEZONE, "Europe/Berlin"),
            (vars::RATE_LIMIT, "40MiB"),
        ];
        // Six volumes: four movers in flight, one stream and 10 MiB/s each.
        let (secret, base) = mover_env(
            &crate::modes::options::mover(&c),
            "run-1",
            6,
            env_of(&process),
        );
        assert_eq!(secret[vars::PASSWORD], "pw-123");
        assert_eq!(secret["AWS_SECRET_ACCESS_KEY"], "sekrit");
        assert!(!secret.contains_key("AWS_WEB_IDENTITY_TOKEN_FILE"));
        assert!(!base.contains_key(vars::PASSWORD));
        assert_eq!(base[vars::CHANNELS], "1");
        assert_eq!(base[vars::RATE_LIMIT], "*=10MiB");
        assert_eq!(base[vars::TIMEZONE], "Europe/Berlin");
        assert_eq!(base[vars::RUN_ID], "run-1");
        // One volume: one mover with every stream and the whole limit.
        let (_, base) = mover_env(
            &crate::modes::options::mover(&c),
            "run-1",
            1,
            env_of(&process),
        );
        assert_eq!(base[vars::CHANNELS], "4");
        assert_eq!(base[vars::RATE_LIMIT], "*=40MiB");
    }
}
