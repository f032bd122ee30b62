//! The restore's per-item report, stored in the repository.

use super::*;

/// One line of the stored report.
#[derive(Debug, Serialize)]
pub(super) struct ItemReport<'a> {
    pub(super) resource: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) namespace: Option<&'a str>,
    pub(super) name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) source_namespace: Option<&'a str>,
    pub(super) result: &'static str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub(super) reason: &'a str,
    /// What the rewrite could not adjust safely.
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub(super) warnings: &'a [String],
}

pub(super) fn plan_json(items: &[Item]) -> Value {
    let mut by: BTreeMap<&'static str, u64> = BTreeMap::new();
    for it in items {
        if let Some((o, _)) = &it.result {
            *by.entry(o.as_str()).or_default() += 1;
        }
    }
    json!(by)
}

pub(super) fn item_reports(items: &[Item]) -> Vec<ItemReport<'_>> {
    items
        .iter()
        .map(|it| {
            let (o, why) = it.result.as_ref().expect("decided");
            ItemReport {
                resource: it.rt.name(),
                namespace: it.ns.as_deref(),
                name: &it.name,
                source_namespace: it
                    .source_ns
                    .as_deref()
                    .filter(|s| Some(*s) != it.ns.as_deref()),
                result: o.as_str(),
                reason: why,
                warnings: &it.warnings,
            }
        })
        .collect()
}

/// Stores the per-item report: an Object blob of JSON, and a pointer
/// `restores/<blob id>` so it can be found without any snapshot.
pub(super) async fn save_report(
    repo: &Repository,
    ctx: &RunContext,
    snapshot: SnapshotId,
    manifest: &SnapshotManifest,
    items: &[Item],
    report: &Report,
) -> Result<BlobId, crate::repo::RepoError> {
    let doc = json!({
        "version": 1,
        "kind": "restore-report",
        "run_id": ctx.run_id,
        "time": jiff::Timestamp::now(),
        "snapshot": snapshot.to_hex(),
        "snapshot_run": manifest.run_id,
        "counts": report.counts,
        "items": item_reports(items),
    });
    let bytes = Bytes::from(serde_json::to_vec(&doc).expect("report serialises"));
    repo.announce_writer(&ctx.run_id).await?;
    let writer = repo.writer(1);
    let (id, _) = writer.add(BlobKind::Object, bytes).await?;
    writer.finish().await?;
    let pointer = json!({"version": 1, "kind": "restore-report", "run_id": ctx.run_id});
    repo.backend()
        .put(
            &format!("{REPORT_PREFIX}{}", id.to_hex()),
            Bytes::from(pointer.to_string()),
        )
        .await?;
    info!(report = %id, "per-item report saved");
    // A restore never saves a manifest, so its marker would hold prune
    // back until it went stale.
    if let Err(e) = repo.retire_writer().await {
        warn!(error = %e, "could not remove the writer marker");
    }
    Ok(id)
}
