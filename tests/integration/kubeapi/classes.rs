//! The VolumeSnapshot API objects a test cluster needs: the CRDs of the
//! external-snapshotter's v1 API, StorageClasses and VolumeSnapshotClasses.

use std::time::Duration;

use http::Method;
use serde_json::json;

use super::{call, call_raw};

const SNAPSHOT_API: &str = "/apis/snapshot.storage.k8s.io/v1";
const CRD_API: &str = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";
const DEFAULT_CLASS_ANNOTATION: &str = "snapshot.storage.kubernetes.io/is-default-class";

/// The external-snapshotter v1 CRDs (see tests/manifests/snapshot-crds).
const CRDS: [(&str, &str); 3] = [
    (
        "volumesnapshotclasses.snapshot.storage.k8s.io",
        include_str!(
            "../../manifests/snapshot-crds/snapshot.storage.k8s.io_volumesnapshotclasses.yaml"
        ),
    ),
    (
        "volumesnapshotcontents.snapshot.storage.k8s.io",
        include_str!(
            "../../manifests/snapshot-crds/snapshot.storage.k8s.io_volumesnapshotcontents.yaml"
        ),
    ),
    (
        "volumesnapshots.snapshot.storage.k8s.io",
        include_str!("../../manifests/snapshot-crds/snapshot.storage.k8s.io_volumesnapshots.yaml"),
    ),
];

/// Creates the snapshot CRDs unless present, and waits until the v1 API
/// serves them. Safe to call from concurrent tests.
pub async fn install_snapshot_crds(client: &kube::Client) {
    for (name, yaml) in CRDS {
        let created = call_raw(
            client,
            Method::POST,
            CRD_API,
            "application/yaml",
            yaml.into(),
        )
        .await;
        if let Err(e) = created {
            assert!(e.is(409), "creating CRD {name}: {e}");
        }
    }
    super::wait_for(
        "the snapshot CRDs to be Established and served",
        Duration::from_secs(30),
        async || {
            for (name, _) in CRDS {
                let crd = call(client, Method::GET, &format!("{CRD_API}/{name}"), None)
                    .await
                    .map_err(|e| e.to_string())?;
                let established = crd["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Established" && c["status"] == "True");
                if !established {
                    return Err(format!("CRD {name} not Established"));
                }
            }
            let resources = call(client, Method::GET, SNAPSHOT_API, None)
                .await
                .map_err(|e| e.to_string())?;
            for plural in [
                "volumesnapshots",
                "volumesnapshotcontents",
                "volumesnapshotclasses",
            ] {
                if !resources["resources"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|r| r["name"] == plural)
                {
                    return Err(format!("{SNAPSHOT_API} does not serve {plural} yet"));
                }
            }
            Ok(())
        },
    )
    .await;
}

/// Creates a StorageClass for `driver` (Immediate binding, expandable) with
/// the given reclaim policy (`Delete` or `Retain`).
pub async fn storage_class(client: &kube::Client, name: &str, driver: &str, reclaim: &str) {
    let body = json!({
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": name},
        "provisioner": driver,
        "reclaimPolicy": reclaim,
        "volumeBindingMode": "Immediate",
        "allowVolumeExpansion": true,
    });
    let path = "/apis/storage.k8s.io/v1/storageclasses";
    if let Err(e) = call(client, Method::POST, path, Some(body)).await {
        assert!(e.is(409), "creating StorageClass {name}: {e}");
    }
}

/// Creates a VolumeSnapshotClass for `driver` (deletionPolicy Delete),
/// annotated as the default class of that driver, as clusters usually have.
pub async fn snapshot_class(client: &kube::Client, name: &str, driver: &str) {
    install_snapshot_crds(client).await;
    let body = json!({
        "apiVersion": "snapshot.storage.k8s.io/v1",
        "kind": "VolumeSnapshotClass",
        "metadata": {"name": name, "annotations": {DEFAULT_CLASS_ANNOTATION: "true"}},
        "driver": driver,
        "deletionPolicy": "Delete",
    });
    let path = format!("{SNAPSHOT_API}/volumesnapshotclasses");
    if let Err(e) = call(client, Method::POST, &path, Some(body)).await {
        assert!(e.is(409), "creating VolumeSnapshotClass {name}: {e}");
    }
}
