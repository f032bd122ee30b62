//! `STOW_PRECONDITION`, `STOW_PRE_HOOKS` and `STOW_POST_HOOKS` (README
//! "Hooks and preconditions"; docs/design.md §5).
//!
//! [`around`] wraps the mode in the run frame, after the schedule guards:
//! 1. the preconditions, in order; the first one not met ends the run as
//!    skipped before the mode touched the repository;
//! 2. the run-scope pre hooks, in order; one failing with `on-error=fail`
//!    (or a signal) stops them and the mode does not run;
//! 3. the mode;
//! 4. the run-scope post hooks, all of them, whatever happened in 2 and 3,
//!    with their own timeouts: a signal does not stop them.
//!
//! Per-volume hooks (`scope=volume`, backup only) run through the mover's
//! [`Consistency`] seam, see [`VolumeHooks`].
//!
//! Not in `list` and `preflight` (they only look) nor in mover Jobs (their
//! orchestrating run has the hooks).

pub mod exec;

use std::future::Future;
use std::sync::Mutex;
use std::time::Instant;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cluster::api::{Kube, message};
use crate::config::Mode;
pub use crate::config::hooks::{Hook, OnError, Pods, Scope, Target};
use crate::context::RunContext;
use crate::mover::backup::Consistency;
use crate::mover::plan::Planned;
use crate::summary::{ItemError, Outcome, Report, Status};

/// Why hooks stopped a run.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// A pre hook with `on-error=fail` failed; the mode did not run.
    #[error("{0}")]
    Failed(String),
    /// The API server did not answer a precondition's question.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    /// The run was cancelled during the preconditions or pre hooks; the
    /// mode did not run.
    #[error("cancelled by signal")]
    Cancelled,
}

/// What hooks read from the configuration, built once by the mode so the
/// engine never sees the whole `Config`.
#[derive(Debug, Clone)]
pub struct HookOptions {
    /// The run's mode: hooks see it, and `list`/`preflight` have none.
    pub mode: Mode,
    /// `STOW_MOVER`: a mover Job's orchestrating run has the hooks.
    pub mover: bool,
    /// `STOW_RECONNECT_TIMEOUT`, for the cluster connection hooks open.
    pub reconnect_timeout: std::time::Duration,
    /// `STOW_CHANNELS`, for discovering resource types.
    pub channels: u8,
    /// `STOW_PRECONDITION`: all must be met, else the run is skipped.
    pub precondition: Vec<Hook>,
    /// `STOW_PRE_HOOKS`.
    pub pre_hooks: Vec<Hook>,
    /// `STOW_POST_HOOKS`.
    pub post_hooks: Vec<Hook>,
}

/// Whether this run evaluates preconditions and runs hooks.
pub fn applies(options: &HookOptions) -> bool {
    !matches!(options.mode, Mode::List | Mode::Preflight) && !options.mover
}

/// When a command runs; local commands see it as `KUBESTOW_HOOK`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Precondition,
    Pre,
    Post,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Precondition => "precondition",
            Phase::Pre => "pre",
            Phase::Post => "post",
        }
    }
}

fn status_str(s: Status) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

/// Runs hooks; connects to the cluster on first need, so runs with only
/// local commands never do.
struct Runner<'a> {
    options: &'a HookOptions,
    run_id: &'a str,
    kube: tokio::sync::OnceCell<Kube>,
}

impl<'a> Runner<'a> {
    fn new(options: &'a HookOptions, run_id: &'a str, kube: Option<Kube>) -> Self {
        Self {
            options,
            run_id,
            kube: tokio::sync::OnceCell::new_with(kube),
        }
    }

    async fn kube(&self) -> Result<&Kube, crate::cluster::ClusterError> {
        self.kube
            .get_or_try_init(|| async {
                let cluster = crate::cluster::Cluster::connect().await?;
                Ok(Kube::new(cluster, self.options.reconnect_timeout))
            })
            .await
    }

    fn env(
        &self,
        phase: Phase,
        status: Option<Status>,
        volume: Option<&Planned>,
    ) -> Vec<(String, String)> {
        let mut env = vec![
            ("KUBESTOW_RUN_ID".to_string(), self.run_id.to_string()),
            ("KUBESTOW_MODE".to_string(), self.options.mode.to_string()),
            ("KUBESTOW_HOOK".to_string(), phase.as_str().to_string()),
        ];
        if let Some(s) = status {
            env.push(("KUBESTOW_STATUS".into(), status_str(s)));
        }
        if let Some(v) = volume {
            env.push(("KUBESTOW_VOLUME".into(), v.volume.clone()));
        }
        env
    }

    /// Running pods of `pods` that have its container, by name; with
    /// `claim`, only those that mount it.
    async fn select(&self, pods: &Pods, claim: Option<&str>) -> Result<Vec<String>, String> {
        let kube = self.kube().await.map_err(|e| e.to_string())?;
        let items = kube
            .list_all(
                &crate::cluster::types::pods(),
                Some(&pods.namespace),
                Some(&pods.selector),
            )
            .await
            .map_err(|e| {
                format!(
                    "listing pods in {} ({}): {}",
                    pods.namespace,
                    pods.selector,
                    message(&e)
                )
            })?;
        let mut names: Vec<String> = items
            .iter()
            .filter(|p| p.pointer("/status/phase").and_then(Value::as_str) == Some("Running"))
            .filter(|p| p.pointer("/metadata/deletionTimestamp").is_none())
            .filter(|p| has_container(p, &pods.container))
            .filter(|p| claim.is_none_or(|c| mounts(p, c)))
            .filter_map(|p| {
                p.pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .map(String::from)
            })
            .collect();
        names.sort();
        Ok(names)
    }

    /// Runs one command of `hook` (local, or in each selected pod).
    async fn run(
        &self,
        hook: &Hook,
        phase: Phase,
        status: Option<Status>,
        volume: Option<&Planned>,
        cancel: &CancellationToken,
    ) -> Result<(), String> {
        match &hook.target {
            Target::Local { argv } => {
                let env = self.env(phase, status, volume);
                let started = Instant::now();
                let r = exec::local(argv, &env, hook.timeout, cancel).await;
                finished(hook, phase, volume, None, started, r)
            }
            Target::Exec { pods, argv } => {
                let names = self.select(pods, volume.map(|v| v.claim.as_str())).await?;
                if let (true, Some(v)) = (names.is_empty(), volume) {
                    // Pods that do not mount the claim do not write to it.
                    info!(hook = %hook, volume = %v.volume, "no selected Running pod mounts the claim; hook not needed");
                    return Ok(());
                }
                if names.is_empty() {
                    return Err(format!(
                        "no Running pod in namespace {} matches `{}` with a container {}",
                        pods.namespace, pods.selector, pods.container
                    ));
                }
                let client = self
                    .kube()
                    .await
                    .map_err(|e| e.to_string())?
                    .client()
                    .clone();
                // Every pod, even after one failed: each is independent,
                // and what `fail` stops is the run, not the other pods.
                let mut failed = Vec::new();
                for pod in &names {
                    let started = Instant::now();
                    let r = exec::in_pod(
                        client.clone(),
                        &pods.namespace,
                        pod,
                        &pods.container,
                        argv,
                        hook.timeout,
                        cancel,
                    )
                    .await;
                    if let Err(e) = finished(hook, phase, volume, Some(pod), started, r) {
                        failed.push(format!("pod {}/{pod}: {e}", pods.namespace));
                    }
                }
                if failed.is_empty() {
                    Ok(())
                } else {
                    Err(failed.join("; "))
                }
            }
            Target::Resource { .. } => Err("a resource check is not a hook".into()),
        }
    }

    /// Runs `hooks` of `scope` in order. Pre phases stop at the first
    /// failure with `on-error=fail`; post phases run every hook. Returns
    /// the outcomes and the failures that count (`fail`).
    async fn phase(
        &self,
        phase: Phase,
        hooks: &[Hook],
        scope: Scope,
        status: Option<Status>,
        volume: Option<&Planned>,
        cancel: &CancellationToken,
    ) -> (Vec<Value>, Vec<String>) {
        let (mut outcomes, mut failures) = (Vec::new(), Vec::new());
        for (i, hook) in hooks.iter().enumerate().filter(|(_, h)| h.scope == scope) {
            if volume.is_some_and(|v| !for_volume(hook, v)) {
                continue;
            }
            if phase != Phase::Post && cancel.is_cancelled() {
                failures.push("cancelled by signal".to_string());
                break;
            }
            let name = format!("{} hook {} ({hook})", phase.as_str(), i + 1);
            let started = Instant::now();
            let r = self.run(hook, phase, status, volume, cancel).await;
            let mut outcome = json!({
                "phase": phase.as_str(),
                "hook": hook.to_string(),
                "ok": r.is_ok(),
                "seconds": (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
            });
            if let Some(v) = volume {
                outcome["volume"] = json!(v.volume);
            }
            match r {
                Ok(()) => {}
                Err(e) if hook.on_error == OnError::Continue && !cancel.is_cancelled() => {
                    warn!(hook = %name, volume = volume.map(|v| v.volume.as_str()), error = %e, "hook failed; continuing (on-error=continue)");
                    outcome["error"] = json!(e);
                }
                Err(e) => {
                    warn!(hook = %name, volume = volume.map(|v| v.volume.as_str()), error = %e, "hook failed");
                    outcome["error"] = json!(e);
                    failures.push(format!("{name}: {e}"));
                    outcomes.push(outcome);
                    if phase != Phase::Post {
                        break;
                    }
                    continue;
                }
            }
            outcomes.push(outcome);
        }
        (outcomes, failures)
    }

    /// Why the run is skipped, if a condition is not met. Errors are for
    /// the cluster failing to answer (a retry may do better), not for
    /// conditions that are false.
    async fn precondition(&self, cancel: &CancellationToken) -> Result<Option<String>, HookError> {
        for cond in &self.options.precondition {
            let check = async {
                // Commands enforce their own timeout (and kill what they
                // started); a resource check is bounded here.
                if !matches!(cond.target, Target::Resource { .. }) {
                    return self.condition(cond, cancel).await;
                }
                tokio::time::timeout(cond.timeout, self.condition(cond, cancel))
                    .await
                    .unwrap_or_else(|_| {
                        Ok(Some(format!(
                            "timed out after {}",
                            exec::fmt_duration(cond.timeout)
                        )))
                    })
            };
            let r = tokio::select! {
                r = check => r,
                _ = cancel.cancelled() => Err(HookError::Cancelled),
            }?;
            if cancel.is_cancelled() {
                return Err(HookError::Cancelled);
            }
            match r {
                None => info!(condition = %cond, "precondition met"),
                Some(why) => return Ok(Some(format!("precondition not met: {cond}: {why}"))),
            }
        }
        Ok(None)
    }

    /// `None` when met, else why not.
    async fn condition(
        &self,
        cond: &Hook,
        cancel: &CancellationToken,
    ) -> Result<Option<String>, HookError> {
        let phase = Phase::Precondition;
        match &cond.target {
            Target::Local { argv } => {
                let started = Instant::now();
                let r = exec::local(argv, &self.env(phase, None, None), cond.timeout, cancel).await;
                Ok(finished(cond, phase, None, None, started, r).err())
            }
            Target::Exec { pods, argv } => {
                let kube = self.kube().await?;
                let items = kube
                    .list_all(
                        &crate::cluster::types::pods(),
                        Some(&pods.namespace),
                        Some(&pods.selector),
                    )
                    .await
                    .map_err(|e| {
                        kube.cluster
                            .err(format!("listing pods in {}", pods.namespace), e)
                    })?;
                let mut running: Vec<&Value> = items
                    .iter()
                    .filter(|p| {
                        p.pointer("/status/phase").and_then(Value::as_str) == Some("Running")
                    })
                    .filter(|p| p.pointer("/metadata/deletionTimestamp").is_none())
                    .filter(|p| has_container(p, &pods.container))
                    .collect();
                running.sort_by_key(|p| p.pointer("/metadata/name").and_then(Value::as_str));
                let Some(pod) = running
                    .first()
                    .and_then(|p| p.pointer("/metadata/name").and_then(Value::as_str))
                else {
                    return Ok(Some(format!(
                        "no Running pod in namespace {} matches `{}` with a container {}",
                        pods.namespace, pods.selector, pods.container
                    )));
                };
                let started = Instant::now();
                let r = exec::in_pod(
                    kube.client().clone(),
                    &pods.namespace,
                    pod,
                    &pods.container,
                    argv,
                    cond.timeout,
                    cancel,
                )
                .await;
                Ok(finished(cond, phase, None, Some(pod), started, r)
                    .err()
                    .map(|e| format!("pod {}/{pod}: {e}", pods.namespace)))
            }
            Target::Resource {
                kind,
                namespace,
                name,
            } => {
                let kube = self.kube().await?;
                let discovered =
                    crate::cluster::discovery::discover(kube, usize::from(self.options.channels))
                        .await
                        .map_err(|e| kube.cluster.err("discovering API resources", e))?;
                let rt = match resolve_kind(&discovered, kind, namespace.is_some()) {
                    Ok(rt) => rt,
                    Err(why) => return Ok(Some(why)),
                };
                // A list by name, not a get: the chart grants `get` on
                // built-in types only (a `get` on every resource would
                // include the GET subresources: pods/exec over WebSocket,
                // nodes/proxy), while `list` reaches custom resources too.
                let lp = kube::api::ListParams {
                    field_selector: Some(format!("metadata.name={name}")),
                    ..kube::api::ListParams::default()
                };
                let obj = kube
                    .list_page(&rt, namespace.as_deref(), &lp)
                    .await
                    .map_err(|e| kube.cluster.err(format!("reading {} {name}", rt.name()), e))?
                    .items
                    .into_iter()
                    .next();
                Ok(match obj {
                    None => Some("not found".into()),
                    Some(obj) => ready(&rt.kind, &obj).err(),
                })
            }
        }
    }
}

/// Logs a finished command and turns a non-zero exit into an error.
fn finished(
    hook: &Hook,
    phase: Phase,
    volume: Option<&Planned>,
    pod: Option<&str>,
    started: Instant,
    r: Result<exec::Finished, String>,
) -> Result<(), String> {
    let seconds = (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
    let volume = volume.map(|v| v.volume.as_str());
    match r {
        Ok(f) => {
            info!(
                phase = phase.as_str(),
                hook = %hook,
                pod,
                volume,
                exit_code = f.code,
                seconds,
                stdout = %f.stdout,
                stderr = %f.stderr,
                "hook command finished"
            );
            if f.ok() {
                Ok(())
            } else {
                Err(match f.code {
                    Some(c) => format!("exited with code {c}"),
                    None => "ended without an exit code".into(),
                })
            }
        }
        Err(e) => {
            info!(phase = phase.as_str(), hook = %hook, pod, volume, seconds, error = %e, "hook command failed");
            Err(e)
        }
    }
}

fn has_container(pod: &Value, container: &str) -> bool {
    pod.pointer("/spec/containers")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c.get("name").and_then(Value::as_str) == Some(container))
        })
}

fn mounts(pod: &Value, claim: &str) -> bool {
    pod.pointer("/spec/volumes")
        .and_then(Value::as_array)
        .is_some_and(|vs| {
            vs.iter().any(|v| {
                v.pointer("/persistentVolumeClaim/claimName")
                    .and_then(Value::as_str)
                    == Some(claim)
            })
        })
}

/// Whether a `scope=volume` hook concerns volume `v`: local commands
/// concern every volume; exec hooks the volumes of their namespace (the
/// pods that mount the claim are chosen when it runs).
fn for_volume(hook: &Hook, v: &Planned) -> bool {
    match &hook.target {
        Target::Exec { pods, .. } => pods.namespace == v.namespace,
        _ => true,
    }
}

/// The served type for `kind`: a kind, plural or singular name, with an
/// optional `.group`, case-insensitive; the core group wins a tie.
pub(crate) fn resolve_kind(
    discovered: &crate::cluster::discovery::Discovered,
    kind: &str,
    namespaced: bool,
) -> Result<crate::cluster::ResourceType, String> {
    let lower = kind.to_ascii_lowercase();
    let (name, group) = match lower.split_once('.') {
        Some((n, g)) => (n, Some(g)),
        None => (lower.as_str(), None),
    };
    let mut found: Vec<&crate::cluster::ResourceType> = discovered
        .types
        .iter()
        .map(|t| &t.rt)
        .filter(|rt| group.is_none_or(|g| rt.group == g))
        .filter(|rt| {
            rt.kind.eq_ignore_ascii_case(name)
                || rt.plural == name
                || rt.plural.strip_suffix('s') == Some(name)
        })
        .collect();
    if found.len() > 1 && found.iter().any(|rt| rt.group.is_empty()) {
        found.retain(|rt| rt.group.is_empty());
    }
    match found.as_slice() {
        [] => Err(format!("the server has no resource type `{kind}`")),
        [rt] if rt.namespaced != namespaced => Err(if rt.namespaced {
            format!(
                "{} is namespaced: write resource:{kind}/<namespace>/<name>",
                rt.name()
            )
        } else {
            format!(
                "{} is cluster-scoped: write resource:{kind}/<name>",
                rt.name()
            )
        }),
        [rt] => Ok((*rt).clone()),
        _ => Err(format!(
            "`{kind}` is ambiguous; add the group, e.g. {kind}.apps"
        )),
    }
}

/// `Ok` when the object counts as ready: StatefulSets and DaemonSets by
/// their replica counts, anything with a `Ready` or else an `Available`
/// condition by that condition (Pods, Deployments, many custom
/// resources), anything else by existing.
pub fn ready(kind: &str, obj: &Value) -> Result<(), String> {
    let int = |p: &str| obj.pointer(p).and_then(Value::as_i64);
    match kind {
        "StatefulSet" => {
            let want = int("/spec/replicas").unwrap_or(1);
            let have = int("/status/readyReplicas").unwrap_or(0);
            return if have >= want {
                Ok(())
            } else {
                Err(format!("{have} of {want} replicas ready"))
            };
        }
        "DaemonSet" => {
            let want = int("/status/desiredNumberScheduled").unwrap_or(0);
            let have = int("/status/numberReady").unwrap_or(0);
            return if have >= want {
                Ok(())
            } else {
                Err(format!("{have} of {want} pods ready"))
            };
        }
        _ => {}
    }
    let conditions = obj
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for wanted in ["Ready", "Available"] {
        if let Some(c) = conditions
            .iter()
            .find(|c| c.get("type").and_then(Value::as_str) == Some(wanted))
        {
            let status = c.get("status").and_then(Value::as_str).unwrap_or("Unknown");
            if status == "True" {
                return Ok(());
            }
            let why = c
                .get("message")
                .or_else(|| c.get("reason"))
                .and_then(Value::as_str)
                .map(|m| format!(": {m}"))
                .unwrap_or_default();
            return Err(format!("condition {wanted} is {status}{why}"));
        }
    }
    Ok(())
}

/// The run frame's part: preconditions, pre hooks, `mode`, post hooks.
pub async fn around<F, E>(config: &HookOptions, ctx: &RunContext, mode: F) -> Result<Report, E>
where
    F: Future<Output = Result<Report, E>>,
    E: From<HookError> + Outcome,
{
    let has_run_hooks = config
        .pre_hooks
        .iter()
        .chain(&config.post_hooks)
        .any(|h| h.scope == Scope::Run);
    if !applies(config) || (config.precondition.is_empty() && !has_run_hooks) {
        return mode.await;
    }
    let runner = Runner::new(config, &ctx.run_id, None);
    if let Some(reason) = runner.precondition(&ctx.cancel).await? {
        info!(%reason, "run skipped");
        return Ok(Report {
            skipped: true,
            reason: Some(reason),
            ..Report::default()
        });
    }
    let (mut outcomes, failures) = runner
        .phase(
            Phase::Pre,
            &config.pre_hooks,
            Scope::Run,
            None,
            None,
            &ctx.cancel,
        )
        .await;
    let mut result = if ctx.cancel.is_cancelled() {
        Err(HookError::Cancelled.into())
    } else if let Some(f) = failures.first() {
        Err(HookError::Failed(f.clone()).into())
    } else {
        mode.await
    };
    let status = match &result {
        Ok(r) => r.status(),
        Err(e) => e.status(),
    };
    // Post hooks undo what pre hooks did (unfreeze), so a signal that
    // already stopped the run does not stop them; their timeouts do.
    let (post, failures) = runner
        .phase(
            Phase::Post,
            &config.post_hooks,
            Scope::Run,
            Some(status),
            None,
            &CancellationToken::new(),
        )
        .await;
    outcomes.extend(post);
    match &mut result {
        Ok(report) => {
            for f in failures {
                report.fail_item("post hooks", f);
            }
            if !outcomes.is_empty() {
                match &mut report.details {
                    Value::Object(map) => {
                        map.insert("hooks".into(), Value::Array(outcomes));
                    }
                    Value::Null => report.details = json!({ "hooks": outcomes }),
                    _ => {}
                }
            }
        }
        // The run failed already; its error stays the summary's reason.
        Err(_) => {
            for f in failures {
                warn!(error = %f, "post hook failed after the run failed");
            }
        }
    }
    result
}

/// `scope=volume` hooks around each volume's snapshot or live read
/// (backup). Pre hooks run before, post hooks after; when a pre hook
/// fails with `fail`, the post hooks still run and the volume fails.
/// Failed post hooks with `fail` become item errors ([`Self::take_errors`]).
pub(crate) struct VolumeHooks<'a> {
    runner: Runner<'a>,
    cancel: CancellationToken,
    errors: Mutex<Vec<ItemError>>,
}

impl<'a> VolumeHooks<'a> {
    pub(crate) fn new(config: &'a HookOptions, ctx: &'a RunContext, kube: &Kube) -> Self {
        Self {
            runner: Runner::new(config, &ctx.run_id, Some(kube.clone())),
            cancel: ctx.cancel.clone(),
            errors: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn take_errors(&self) -> Vec<ItemError> {
        std::mem::take(&mut *self.errors.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn has(&self, hooks: &[Hook]) -> bool {
        applies(self.runner.options) && hooks.iter().any(|h| h.scope == Scope::Volume)
    }
}

#[async_trait::async_trait]
impl Consistency for VolumeHooks<'_> {
    async fn before(&self, v: &Planned) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let config = self.runner.options;
        if !self.has(&config.pre_hooks) {
            return Ok(());
        }
        let (_, failures) = self
            .runner
            .phase(
                Phase::Pre,
                &config.pre_hooks,
                Scope::Volume,
                None,
                Some(v),
                &self.cancel,
            )
            .await;
        match failures.into_iter().next() {
            None => Ok(()),
            Some(f) => {
                self.after(v).await;
                Err(Box::new(HookError::Failed(f)))
            }
        }
    }

    async fn after(&self, v: &Planned) {
        let config = self.runner.options;
        if !self.has(&config.post_hooks) {
            return;
        }
        let (_, failures) = self
            .runner
            .phase(
                Phase::Post,
                &config.post_hooks,
                Scope::Volume,
                None,
                Some(v),
                &CancellationToken::new(),
            )
            .await;
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        for f in failures {
            errors.push(ItemError {
                item: format!("volume {}", v.volume),
                message: f,
            });
        }
    }
}

#[cfg(test)]
mod tests;
