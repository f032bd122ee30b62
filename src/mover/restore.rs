//! `restore`, volume data: each claim with data is filled at home by a
//! `volume-restore` mover, then its volume is handed over to the restored
//! claim ([`super::handover`]) before the workloads that use it exist.

use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use tracing::{info, warn};

use super::handover::{self, Step};
use super::job::{self, Mount, VOLUME_MOUNT, Work};
use super::{JobEnd, MoverError, MoverOptions, Runner, str_at};
use crate::cluster::api::{Kube, status};
use crate::cluster::types::{claims, volumes};
use crate::config::vars;
use crate::context::RunContext;
use crate::repo::SnapshotId;

/// How long a claim may take to bind, or to go, during the hand-over.
const BIND_WAIT: Duration = Duration::from_secs(120);

/// One claim to restore with its data.
#[derive(Debug, Clone)]
pub struct Fill {
    /// The volume's name in the snapshot (`source namespace/claim`).
    pub volume: String,
    /// Where it goes (namespace mapped).
    pub namespace: String,
    /// Name of the restored claim.
    pub claim: String,
    /// The claim to create, as the restore rewrote it.
    pub body: Value,
}

/// How one claim ended.
#[derive(Debug)]
pub enum Filled {
    /// Created on its filled volume (now or by an earlier run).
    Restored,
    /// The claim already exists and is not one this restore hands over:
    /// `STOW_EXISTING` decides, and its data is not touched.
    Exists,
    /// Could not be filled or handed over.
    Failed(MoverError),
}

/// Fills and hands over `fills` from `snapshot`, at most `STOW_CHANNELS`
/// at once; the answers are in the order of `fills`.
pub(crate) async fn fill(
    kube: &Kube,
    options: &MoverOptions,
    ctx: &RunContext,
    snapshot: &SnapshotId,
    fills: &[Fill],
) -> Vec<Filled> {
    if fills.is_empty() {
        return Vec::new();
    }
    let runner =
        match Runner::start(kube, options, &ctx.run_id, ctx.cancel.clone(), fills.len()).await {
            Ok(r) => r,
            Err(e) => {
                let shared = std::sync::Arc::new(e);
                return fills
                    .iter()
                    .map(|_| Filled::Failed(MoverError::Shared(shared.clone())))
                    .collect();
            }
        };
    let channels = usize::from(options.channels).max(1);
    info!(volumes = fills.len(), home = %runner.home, "filling restored claims at home");
    let hand = HandOver {
        runner: &runner,
        snapshot: snapshot.to_hex(),
        exit_after: options.exit_after,
    };
    let mut results: Vec<(usize, Filled)> = futures::stream::iter(fills.iter().enumerate())
        .map(|(n, f)| {
            let hand = &hand;
            async move {
                let r = match hand.one(f).await {
                    Ok(r) => r,
                    Err(e) => Filled::Failed(e),
                };
                (n, r)
            }
        })
        .buffer_unordered(channels)
        .collect()
        .await;
    runner.clean_up(&[]).await;
    results.sort_by_key(|(n, _)| *n);
    for (n, r) in &results {
        if let Filled::Failed(e) = r {
            let f = &fills[*n];
            warn!(volume = %f.volume, claim = %format!("{}/{}", f.namespace, f.claim), error = %e, "volume not restored");
        }
    }
    results.into_iter().map(|(_, r)| r).collect()
}

struct HandOver<'a> {
    runner: &'a Runner<'a>,
    snapshot: String,
    exit_after: Option<Step>,
}

impl HandOver<'_> {
    fn kube(&self) -> &Kube {
        self.runner.kube
    }

    /// Stops the process as a crash would, for the hand-over crash tests.
    fn maybe_exit(&self, step: Step, f: &Fill) {
        if self.exit_after == Some(step) {
            warn!(claim = %format!("{}/{}", f.namespace, f.claim), step = step.name(), "exiting as asked by {}", vars::TEST_EXIT_AFTER);
            std::process::exit(1);
        }
    }

    fn api(what: String) -> impl FnOnce(kube::Error) -> MoverError {
        move |source| MoverError::Api { what, source }
    }

    /// The volume marked for this target, if any: filled from this
    /// snapshot first.
    async fn marked_volume(&self, key: &str) -> Result<Option<Value>, MoverError> {
        let found = self
            .kube()
            .list_all(
                &volumes(),
                None,
                Some(&format!("{}={key}", handover::HANDOVER_LABEL)),
            )
            .await
            .map_err(Self::api("listing volumes being handed over".into()))?;
        let mut found: Vec<Value> = found;
        found.sort_by_key(|pv| !handover::filled_from(pv, &self.snapshot));
        Ok(found.into_iter().next())
    }

    async fn one(&self, f: &Fill) -> Result<Filled, MoverError> {
        let target = format!("{}/{}", f.namespace, f.claim);
        let key = handover::key(&f.namespace, &f.claim);
        let home = self.runner.home.as_str();
        let staging = handover::staging_name(&key);
        let live = self
            .kube()
            .get(&claims(), Some(&f.namespace), &f.claim)
            .await
            .map_err(Self::api(format!("reading claim {target}")))?;
        let marked = self.marked_volume(&key).await?;
        if let Some(live) = live {
            // Rebound by an earlier run that stopped before the end.
            return match marked {
                Some(pv) if str_at(&live, "/spec/volumeName") == str_at(&pv, "/metadata/name") => {
                    self.finish(&pv, &target).await?;
                    Ok(Filled::Restored)
                }
                _ => Ok(Filled::Exists),
            };
        }
        let pv = match marked {
            Some(pv) if handover::filled_from(&pv, &self.snapshot) => {
                info!(claim = %target, "filled by an earlier run; handing it over");
                pv
            }
            stale => {
                if let Some(pv) = stale {
                    self.drop_stale(&pv, home, &staging).await?;
                }
                self.fill_at_home(f, &key, &staging, &target).await?
            }
        };
        let pv_name = str_at(&pv, "/metadata/name")
            .unwrap_or_default()
            .to_string();
        // Step 2: the staging claim goes; the volume stays (Retain).
        self.delete_and_wait(home, &staging).await?;
        self.kube()
            .merge_patch(
                &volumes(),
                None,
                &pv_name,
                &handover::rebind(&f.namespace, &f.claim),
            )
            .await
            .map_err(Self::api(format!(
                "pointing volume {pv_name} at claim {target}"
            )))?;
        // Step 3: the restored claim, on the filled volume.
        let body = handover::target_claim(&f.body, &pv_name);
        match self
            .kube()
            .create(&claims(), Some(&f.namespace), &body, false)
            .await
        {
            Ok(_) => {}
            Err(e) if status(&e) == Some(409) => {}
            Err(e) => return Err(Self::api(format!("creating claim {target}"))(e)),
        }
        self.wait_bound(&f.namespace, &f.claim).await?;
        self.maybe_exit(Step::Rebound, f);
        // Step 4: the volume's own policy back.
        let pv = self.volume(&pv_name).await?;
        self.finish(&pv, &target).await?;
        Ok(Filled::Restored)
    }

    /// A volume marked for this target but not from this snapshot (or not
    /// filled): its staging claim (if any) goes, then the volume gets its
    /// own policy back, so nothing is left Released.
    async fn drop_stale(&self, pv: &Value, home: &str, staging: &str) -> Result<(), MoverError> {
        let name = str_at(pv, "/metadata/name").unwrap_or_default().to_string();
        info!(volume = %name, "a volume an earlier restore marked for this claim is not from this snapshot; releasing it");
        self.delete_and_wait(home, staging).await?;
        self.kube()
            .merge_patch(&volumes(), None, &name, &handover::finish(pv))
            .await
            .map_err(Self::api(format!("releasing volume {name}")))?;
        Ok(())
    }

    /// Step 1: a staging claim at home, filled by a mover, its volume
    /// marked. Returns the marked volume.
    async fn fill_at_home(
        &self,
        f: &Fill,
        key: &str,
        staging: &str,
        target: &str,
    ) -> Result<Value, MoverError> {
        let home = self.runner.home.as_str();
        let body = handover::staging_claim(&f.body, home, key, target);
        match self
            .kube()
            .create(&claims(), Some(home), &body, false)
            .await
        {
            Ok(_) => {}
            // Left by an earlier run: filled again (the mover rewrites
            // every file it restores).
            Err(e) if status(&e) == Some(409) => {}
            Err(e) => return Err(Self::api(format!("creating claim {home}/{staging}"))(e)),
        }
        let env = std::collections::BTreeMap::from([
            (vars::MODE.to_string(), "volume-restore".to_string()),
            (vars::SNAPSHOT.to_string(), self.snapshot.clone()),
            (vars::VOLUME_NAME.to_string(), f.volume.clone()),
            (vars::VOLUME_PATH.to_string(), VOLUME_MOUNT.to_string()),
        ]);
        let name = job::object_name(&self.runner.tag, "restore", target);
        let mount = Mount::Claim {
            name: staging.to_string(),
            read_only: false,
        };
        let spec = self.runner.job(name, &f.volume, env, mount, Work::Fill);
        if let JobEnd::Failed(e) = self.runner.run_job(&spec).await {
            if !matches!(e, MoverError::Cancelled) {
                // Nothing half-filled stays at home: the claim and, by its
                // own policy, its volume go.
                let _ = self.kube().delete(&claims(), Some(home), staging).await;
            }
            return Err(e);
        }
        let claim = self
            .kube()
            .get(&claims(), Some(home), staging)
            .await
            .map_err(Self::api(format!("reading claim {home}/{staging}")))?
            .ok_or_else(|| MoverError::Step(format!("claim {home}/{staging} disappeared")))?;
        let pv_name = str_at(&claim, "/spec/volumeName")
            .ok_or_else(|| MoverError::Step(format!("claim {home}/{staging} is not bound")))?
            .to_string();
        let pv = self.volume(&pv_name).await?;
        let marked = self
            .kube()
            .merge_patch(
                &volumes(),
                None,
                &pv_name,
                &handover::mark(&pv, key, target, &self.snapshot),
            )
            .await
            .map_err(Self::api(format!(
                "marking volume {pv_name} for claim {target}"
            )))?;
        info!(claim = %target, volume = %pv_name, "filled at home");
        self.maybe_exit(Step::Filled, f);
        Ok(marked)
    }

    /// A PersistentVolume that must exist.
    async fn volume(&self, name: &str) -> Result<Value, MoverError> {
        self.kube()
            .get(&volumes(), None, name)
            .await
            .map_err(Self::api(format!("reading volume {name}")))?
            .ok_or_else(|| MoverError::Step(format!("volume {name} disappeared")))
    }

    async fn finish(&self, pv: &Value, target: &str) -> Result<(), MoverError> {
        let name = str_at(pv, "/metadata/name").unwrap_or_default();
        self.kube()
            .merge_patch(&volumes(), None, name, &handover::finish(pv))
            .await
            .map_err(Self::api(format!(
                "restoring the reclaim policy of volume {name}"
            )))?;
        info!(claim = %target, volume = %name, "handed over");
        Ok(())
    }

    async fn delete_and_wait(&self, ns: &str, name: &str) -> Result<(), MoverError> {
        self.kube()
            .delete(&claims(), Some(ns), name)
            .await
            .map_err(Self::api(format!("deleting claim {ns}/{name}")))?;
        self.wait(format!("claim {ns}/{name} to go"), || async {
            self.kube()
                .get(&claims(), Some(ns), name)
                .await
                .map(|c| c.is_none())
        })
        .await
    }

    async fn wait_bound(&self, ns: &str, name: &str) -> Result<(), MoverError> {
        self.wait(format!("claim {ns}/{name} to bind"), || async {
            self.kube()
                .get(&claims(), Some(ns), name)
                .await
                .map(|c| c.is_some_and(|c| str_at(&c, "/status/phase") == Some("Bound")))
        })
        .await
    }

    async fn wait<F, Fut>(&self, what: String, mut done: F) -> Result<(), MoverError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<bool, kube::Error>>,
    {
        let deadline = tokio::time::Instant::now() + BIND_WAIT;
        loop {
            match done().await {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => return Err(Self::api(format!("waiting for {what}"))(e)),
            }
            if tokio::time::Instant::now() > deadline {
                return Err(MoverError::Step(format!(
                    "waited {}s for {what}",
                    BIND_WAIT.as_secs()
                )));
            }
            tokio::select! {
                _ = self.runner.cancel.cancelled() => return Err(MoverError::Cancelled),
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}
