//! `restore`, volume data: fill each restored claim through a
//! `volume-restore` mover before the workloads that use it are created.

use std::collections::BTreeMap;

use futures::StreamExt;
use tracing::{info, warn};

use super::job::{self, Mount, VOLUME_MOUNT};
use super::{JobEnd, MoverError, MoverOptions, Runner};
use crate::cluster::api::Kube;
use crate::config::vars;
use crate::context::RunContext;
use crate::repo::SnapshotId;
use crate::summary::Report;

/// One claim to fill.
#[derive(Debug, Clone)]
pub struct Fill {
    /// The volume's name in the snapshot (`source namespace/claim`).
    pub volume: String,
    /// Where it goes (namespace mapped).
    pub namespace: String,
    /// Name of the restored claim.
    pub claim: String,
}

/// Fills `fills` from `snapshot`, at most `STOW_CHANNELS` movers at once.
/// A claim that cannot be filled is an item failure.
pub(crate) async fn fill(
    kube: &Kube,
    options: &MoverOptions,
    ctx: &RunContext,
    snapshot: &SnapshotId,
    fills: &[Fill],
    report: &mut Report,
) {
    if fills.is_empty() {
        return;
    }
    let item = |f: &Fill| format!("volume {}/{}", f.namespace, f.claim);
    let image = match super::mover_image(kube, options).await {
        Ok(i) => i,
        Err(e) => {
            for f in fills {
                report.fail_item(item(f), e.to_string());
            }
            return;
        }
    };
    let channels = usize::from(options.channels).max(1);
    let runner = Runner::new(
        kube,
        options,
        &ctx.run_id,
        image,
        ctx.cancel.clone(),
        fills.len(),
    );
    info!(volumes = fills.len(), "filling restored claims");
    let results: Vec<(&Fill, Result<(), MoverError>)> = futures::stream::iter(fills)
        .map(|f| {
            let runner = &runner;
            async move {
                let r = async {
                    let env = BTreeMap::from([
                        (vars::MODE.to_string(), "volume-restore".to_string()),
                        (vars::SNAPSHOT.to_string(), snapshot.to_hex()),
                        (vars::VOLUME_NAME.to_string(), f.volume.clone()),
                        (vars::VOLUME_PATH.to_string(), VOLUME_MOUNT.to_string()),
                    ]);
                    let name = job::object_name(
                        &runner.tag,
                        "restore",
                        &format!("{}/{}", f.namespace, f.claim),
                    );
                    let mount = Mount::Claim {
                        name: f.claim.clone(),
                        read_only: false,
                    };
                    let spec = runner.job(name, &f.namespace, &f.volume, env, mount);
                    match runner.run_job(&spec).await {
                        JobEnd::Succeeded => Ok(()),
                        JobEnd::Failed(e) => Err(e),
                    }
                }
                .await;
                (f, r)
            }
        })
        .buffer_unordered(channels)
        .collect()
        .await;
    runner.clean_up(&[]).await;
    let mut filled = 0;
    for (f, r) in results {
        match r {
            Ok(()) => filled += 1,
            Err(e) => {
                warn!(volume = %f.volume, claim = %format!("{}/{}", f.namespace, f.claim), error = %e, "volume not restored");
                report.fail_item(item(f), e.to_string());
            }
        }
    }
    report.count("volumes_restored", filled);
}
