//! Planning: how each selected claim's data is read (`STOW_VOLUME_SOURCE`).
//!
//! Pure functions over objects the orchestrator fetched, so every rule is
//! unit-tested without a cluster.

use serde_json::Value;

use crate::config::VolumeSource;

/// Opt-out annotation on a claim.
pub const SKIP_ANNOTATION: &str = "kubestow.io/skip-volume";
/// Marks a VolumeSnapshotClass as its driver's default.
const DEFAULT_CLASS_ANNOTATION: &str = "snapshot.storage.kubernetes.io/is-default-class";

/// How a mover reaches a claim's data.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// Clone of a CSI VolumeSnapshot of this class, mounted read-only.
    Snapshot {
        /// Name of the VolumeSnapshotClass.
        class: String,
    },
    /// The live volume under the kubelet's pods directory of `node`, as
    /// mounted for pod `pod_uid`; `rel` is below `<kubelet dir>/pods/`.
    Kubelet {
        /// Node the using pod runs on.
        node: String,
        /// UID of the pod that mounts the volume.
        pod_uid: String,
        /// The volume's path below `<kubelet dir>/pods/<pod_uid>/volumes/`.
        rel: String,
    },
    /// The claim itself, mounted read-only: nothing mounts it, or its
    /// plugin has no known kubelet path. `node` pins the mover next to the
    /// pod that uses it; otherwise the scheduler follows the volume's
    /// node affinity.
    Claim {
        /// Node of the pod using the claim, if one runs.
        node: Option<String>,
    },
}

impl Source {
    /// The source's `STOW_VOLUME_SOURCE` word, for logs and stats.
    pub fn name(&self) -> &'static str {
        match self {
            Source::Snapshot { .. } => "snapshot",
            Source::Kubelet { .. } => "kubelet",
            Source::Claim { .. } => "claim",
        }
    }
}

/// One claim whose data is backed up.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    /// Namespace of the claim.
    pub namespace: String,
    /// Name of the claim.
    pub claim: String,
    /// `namespace/claim`: the volume's name in the snapshot.
    pub volume: String,
    /// Name of the PersistentVolume bound to the claim.
    pub pv: String,
    /// The claim's `spec.storageClassName`, if set.
    pub storage_class: Option<String>,
    /// How the mover reaches the data.
    pub source: Source,
    /// Tolerations of the pod using the claim, for the mover.
    pub tolerations: Value,
    /// The bound volume's node affinity, copied to the mover.
    pub node_affinity: Option<Value>,
    /// The claim's capacity (`status.capacity.storage`), for clones.
    pub capacity: Option<String>,
    /// The claim's `spec.accessModes` (JSON array), for clones.
    pub access_modes: Value,
}

/// A claim whose data is not backed up, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Left {
    /// `namespace/claim`.
    pub volume: String,
    /// Why it is not backed up, for the report.
    pub reason: String,
    /// Skipped on purpose (`false`), or a failure the run must report.
    pub failed: bool,
}

/// The planner's answer for every claim it was given.
#[derive(Debug, Default)]
pub struct Plan {
    /// Claims whose data is backed up.
    pub volumes: Vec<Planned>,
    /// Claims skipped or failed.
    pub left: Vec<Left>,
}

/// What the planner looks at.
pub struct Inputs<'a> {
    /// The selected PersistentVolumeClaims.
    pub claims: &'a [Value],
    /// The PersistentVolumes the claims are bound to.
    pub volumes: &'a [Value],
    /// All StorageClasses.
    pub storage_classes: &'a [Value],
    /// All VolumeSnapshotClasses (none if they cannot be listed).
    pub snapshot_classes: &'a [Value],
    /// Pods of the claims' namespaces, to find who mounts each claim.
    pub pods: &'a [Value],
    /// `STOW_VOLUME_SOURCE`.
    pub source: VolumeSource,
    /// `namespace/claim` globs (`STOW_EXCLUDE_VOLUMES`).
    pub exclude: &'a globset::GlobSet,
}

fn s<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

fn named<'a>(items: &'a [Value], name: &str) -> Option<&'a Value> {
    items.iter().find(|o| s(o, "/metadata/name") == Some(name))
}

/// The CSI driver of a volume: its own `spec.csi.driver`, else its storage
/// class's provisioner.
fn driver<'a>(pv: &'a Value, storage_classes: &'a [Value]) -> Option<&'a str> {
    s(pv, "/spec/csi/driver").or_else(|| {
        let class = s(pv, "/spec/storageClassName")?;
        s(named(storage_classes, class)?, "/provisioner")
    })
}

/// The snapshot class for a driver: the one marked default, else the
/// first by name.
pub fn snapshot_class<'a>(classes: &'a [Value], driver: &str) -> Option<&'a str> {
    let mut mine: Vec<&Value> = classes
        .iter()
        .filter(|c| s(c, "/driver") == Some(driver))
        .collect();
    mine.sort_by_key(|c| {
        let default = c
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
            .and_then(Value::as_str)
            == Some("true");
        (
            !default,
            s(c, "/metadata/name").unwrap_or_default().to_string(),
        )
    });
    mine.first().and_then(|c| s(c, "/metadata/name"))
}

/// Where the kubelet mounts a volume of this kind for a pod, below
/// `<kubelet dir>/pods/<pod uid>/volumes/`; `None` for kinds that are not
/// mounted there (hostPath) or unknown ones.
pub fn kubelet_rel(pv: &Value) -> Option<String> {
    let name = s(pv, "/metadata/name")?;
    let spec = pv.get("spec")?;
    if spec.get("csi").is_some() {
        return Some(format!("kubernetes.io~csi/{name}/mount"));
    }
    if let Some(driver) = s(spec, "/flexVolume/driver") {
        return Some(format!("{}/{name}", driver.replace('/', "~")));
    }
    const IN_TREE: &[(&str, &str)] = &[
        ("awsElasticBlockStore", "aws-ebs"),
        ("azureDisk", "azure-disk"),
        ("azureFile", "azure-file"),
        ("cephfs", "cephfs"),
        ("cinder", "cinder"),
        ("fc", "fc"),
        ("gcePersistentDisk", "gce-pd"),
        ("glusterfs", "glusterfs"),
        ("iscsi", "iscsi"),
        ("local", "local-volume"),
        ("nfs", "nfs"),
        ("portworxVolume", "portworx-volume"),
        ("rbd", "rbd"),
        ("vsphereVolume", "vsphere-volume"),
    ];
    IN_TREE
        .iter()
        .find(|(key, _)| spec.get(*key).is_some())
        .map(|(_, plugin)| format!("kubernetes.io~{plugin}/{name}"))
}

/// A running pod in `ns` that mounts `claim`.
fn user<'a>(pods: &'a [Value], ns: &str, claim: &str) -> Option<&'a Value> {
    pods.iter().find(|p| {
        s(p, "/metadata/namespace") == Some(ns)
            && s(p, "/status/phase") == Some("Running")
            && s(p, "/spec/nodeName").is_some()
            && p.pointer("/metadata/deletionTimestamp").is_none()
            && p.pointer("/spec/volumes")
                .and_then(Value::as_array)
                .is_some_and(|vols| {
                    vols.iter()
                        .any(|v| s(v, "/persistentVolumeClaim/claimName") == Some(claim))
                })
    })
}

/// Plans a source for every claim in `inp`, or says why it is left out.
pub fn plan(inp: &Inputs) -> Plan {
    let mut plan = Plan::default();
    if inp.source == VolumeSource::Skip {
        return plan;
    }
    for pvc in inp.claims {
        let (Some(ns), Some(name)) = (s(pvc, "/metadata/namespace"), s(pvc, "/metadata/name"))
        else {
            continue;
        };
        let volume = format!("{ns}/{name}");
        let mut leave = |reason: String, failed: bool| {
            plan.left.push(Left {
                volume: volume.clone(),
                reason,
                failed,
            })
        };
        let annotated = pvc
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(SKIP_ANNOTATION))
            .and_then(Value::as_str)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        if annotated {
            leave(format!("annotation {SKIP_ANNOTATION}=true"), false);
            continue;
        }
        if inp.exclude.is_match(&volume) {
            leave(
                format!("excluded by {}", crate::config::vars::EXCLUDE_VOLUMES),
                false,
            );
            continue;
        }
        if pvc.pointer("/metadata/deletionTimestamp").is_some() {
            leave("the claim is being deleted".into(), false);
            continue;
        }
        let phase = s(pvc, "/status/phase").unwrap_or("Pending");
        let pv = s(pvc, "/spec/volumeName").and_then(|v| named(inp.volumes, v));
        let Some(pv) = pv.filter(|_| phase == "Bound") else {
            leave(
                format!("the claim is {phase}, not Bound: it has no data to read"),
                false,
            );
            continue;
        };
        let pv_name = s(pv, "/metadata/name").unwrap_or_default().to_string();
        if s(pvc, "/spec/volumeMode") == Some("Block") {
            leave(
                "a raw block volume: only filesystem volumes are backed up".into(),
                false,
            );
            continue;
        }
        let user = user(inp.pods, ns, name);
        let class = driver(pv, inp.storage_classes)
            .and_then(|d| snapshot_class(inp.snapshot_classes, d).map(|c| (d, c)));
        let live = || match user {
            Some(pod) => {
                let node = s(pod, "/spec/nodeName").unwrap_or_default().to_string();
                match kubelet_rel(pv) {
                    Some(rel) => Source::Kubelet {
                        node,
                        pod_uid: s(pod, "/metadata/uid").unwrap_or_default().to_string(),
                        rel,
                    },
                    None => Source::Claim { node: Some(node) },
                }
            }
            None => Source::Claim { node: None },
        };
        let source = match (inp.source, class) {
            (VolumeSource::Snapshot | VolumeSource::Auto, Some((_, class))) => Source::Snapshot {
                class: class.to_string(),
            },
            (VolumeSource::Snapshot, None) => {
                let why = match driver(pv, inp.storage_classes) {
                    Some(d) => format!("no VolumeSnapshotClass for CSI driver {d}"),
                    None => "the volume is not provisioned by a CSI driver".into(),
                };
                leave(
                    format!(
                        "{why}, and {}=snapshot allows no other source",
                        crate::config::vars::VOLUME_SOURCE
                    ),
                    true,
                );
                continue;
            }
            _ => live(),
        };
        if pv.pointer("/spec/hostPath").is_some() && matches!(source, Source::Claim { node: None })
        {
            // A hostPath volume is a directory on whichever node mounts
            // it: without a pod using it, nothing says which.
            leave(
                "a hostPath volume that no running pod mounts: its node is unknown".into(),
                false,
            );
            continue;
        }
        plan.volumes.push(Planned {
            namespace: ns.to_string(),
            claim: name.to_string(),
            volume,
            pv: pv_name,
            storage_class: s(pvc, "/spec/storageClassName").map(String::from),
            source,
            tolerations: user
                .and_then(|p| p.pointer("/spec/tolerations"))
                .cloned()
                .unwrap_or(Value::Array(Vec::new())),
            node_affinity: pv.pointer("/spec/nodeAffinity").cloned(),
            capacity: s(pvc, "/status/capacity/storage").map(String::from),
            access_modes: pvc
                .pointer("/spec/accessModes")
                .cloned()
                .unwrap_or_else(|| serde_json::json!(["ReadWriteOnce"])),
        });
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claim(name: &str, pv: Option<&str>, class: &str) -> Value {
        json!({"metadata": {"namespace": "shop", "name": name},
               "spec": {"volumeName": pv, "storageClassName": class,
                        "accessModes": ["ReadWriteOnce"]},
               "status": {"phase": if pv.is_some() {"Bound"} else {"Pending"},
                          "capacity": {"storage": "1Gi"}}})
    }

    fn csi_pv(name: &str, driver: &str) -> Value {
        json!({"metadata": {"name": name},
               "spec": {"csi": {"driver": driver, "volumeHandle": name},
                        "storageClassName": "fast",
                        "nodeAffinity": {"required": {"nodeSelectorTerms": [
                            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]}}}})
    }

    fn pod(uid: &str, claim: &str, node: &str) -> Value {
        json!({"metadata": {"namespace": "shop", "name": format!("pod-{uid}"), "uid": uid},
               "spec": {"nodeName": node,
                        "tolerations": [{"key": "dedicated", "operator": "Exists"}],
                        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]},
               "status": {"phase": "Running"}})
    }

    fn vsc(name: &str, driver: &str, default: bool) -> Value {
        json!({"metadata": {"name": name, "annotations": {
                   DEFAULT_CLASS_ANNOTATION: if default {"true"} else {"false"}}},
               "driver": driver})
    }

    struct World {
        claims: Vec<Value>,
        pvs: Vec<Value>,
        scs: Vec<Value>,
        vscs: Vec<Value>,
        pods: Vec<Value>,
    }

    fn world() -> World {
        World {
            claims: vec![
                claim("data-0", Some("pv-0"), "fast"),
                claim("data-1", Some("pv-1"), "slow"),
                claim("pending", None, "fast"),
            ],
            pvs: vec![
                csi_pv("pv-0", "fast.csi"),
                json!({"metadata": {"name": "pv-1"},
                       "spec": {"nfs": {"server": "x", "path": "/"}, "storageClassName": "slow"}}),
            ],
            scs: vec![
                json!({"metadata": {"name": "fast"}, "provisioner": "fast.csi"}),
                json!({"metadata": {"name": "slow"}, "provisioner": "nfs.example"}),
            ],
            vscs: vec![
                vsc("b-class", "fast.csi", false),
                vsc("a-class", "other.csi", true),
            ],
            pods: vec![pod("u0", "data-0", "node-a"), pod("u1", "data-1", "node-b")],
        }
    }

    fn run(w: &World, source: VolumeSource, exclude: &[&str]) -> Plan {
        let mut b = globset::GlobSetBuilder::new();
        for g in exclude {
            b.add(globset::Glob::new(g).unwrap());
        }
        let exclude = b.build().unwrap();
        plan(&Inputs {
            claims: &w.claims,
            volumes: &w.pvs,
            storage_classes: &w.scs,
            snapshot_classes: &w.vscs,
            pods: &w.pods,
            source,
            exclude: &exclude,
        })
    }

    fn by_volume<'a>(p: &'a Plan, v: &str) -> &'a Planned {
        p.volumes.iter().find(|x| x.volume == v).unwrap()
    }

    #[test]
    fn auto_uses_snapshots_where_the_driver_has_a_class_else_the_kubelet() {
        let w = world();
        let p = run(&w, VolumeSource::Auto, &[]);
        assert_eq!(
            by_volume(&p, "shop/data-0").source,
            Source::Snapshot {
                class: "b-class".into()
            }
        );
        assert_eq!(
            by_volume(&p, "shop/data-1").source,
            Source::Kubelet {
                node: "node-b".into(),
                pod_uid: "u1".into(),
                rel: "kubernetes.io~nfs/pv-1".into()
            }
        );
        assert_eq!(
            by_volume(&p, "shop/data-1").tolerations[0]["key"],
            "dedicated"
        );
        // The unbound claim is skipped, not failed.
        assert_eq!(p.left.len(), 1);
        assert_eq!(p.left[0].volume, "shop/pending");
        assert!(!p.left[0].failed);
        assert!(p.left[0].reason.contains("Pending"), "{:?}", p.left);
    }

    #[test]
    fn kubelet_source_reads_csi_volumes_through_the_pods_dir() {
        let w = world();
        let p = run(&w, VolumeSource::Kubelet, &[]);
        assert_eq!(
            by_volume(&p, "shop/data-0").source,
            Source::Kubelet {
                node: "node-a".into(),
                pod_uid: "u0".into(),
                rel: "kubernetes.io~csi/pv-0/mount".into()
            }
        );
    }

    #[test]
    fn snapshot_source_fails_claims_it_cannot_snapshot() {
        let w = world();
        let p = run(&w, VolumeSource::Snapshot, &[]);
        assert_eq!(p.volumes.len(), 1);
        let nfs = p.left.iter().find(|l| l.volume == "shop/data-1").unwrap();
        assert!(nfs.failed);
        assert!(
            nfs.reason
                .contains("no VolumeSnapshotClass for CSI driver nfs.example"),
            "{}",
            nfs.reason
        );
    }

    #[test]
    fn the_default_class_wins() {
        let mut w = world();
        w.vscs.push(vsc("z-default", "fast.csi", true));
        assert_eq!(snapshot_class(&w.vscs, "fast.csi"), Some("z-default"));
        w.vscs.pop();
        assert_eq!(snapshot_class(&w.vscs, "fast.csi"), Some("b-class"));
        assert_eq!(snapshot_class(&w.vscs, "none"), None);
    }

    #[test]
    fn unmounted_claims_are_mounted_directly_with_the_volume_affinity() {
        let mut w = world();
        w.pods.clear();
        let p = run(&w, VolumeSource::Kubelet, &[]);
        let v = by_volume(&p, "shop/data-0");
        assert_eq!(v.source, Source::Claim { node: None });
        assert_eq!(
            v.node_affinity.as_ref().unwrap()["required"]["nodeSelectorTerms"][0]["matchExpressions"]
                [0]["key"],
            "zone"
        );
        // Not running pods do not count as users.
        let mut w = world();
        w.pods[0]["status"]["phase"] = json!("Pending");
        let p = run(&w, VolumeSource::Kubelet, &[]);
        assert_eq!(
            by_volume(&p, "shop/data-0").source,
            Source::Claim { node: None }
        );
    }

    #[test]
    fn opt_outs_and_odd_volumes_are_skipped_with_reasons() {
        let mut w = world();
        w.claims[0]["metadata"]["annotations"] = json!({SKIP_ANNOTATION: "true"});
        let p = run(&w, VolumeSource::Auto, &["shop/data-1"]);
        assert!(p.volumes.is_empty());
        let reasons: Vec<&str> = p.left.iter().map(|l| l.reason.as_str()).collect();
        assert!(reasons[0].contains(SKIP_ANNOTATION), "{reasons:?}");
        assert!(reasons[1].contains("STOW_EXCLUDE_VOLUMES"), "{reasons:?}");
        assert!(p.left.iter().all(|l| !l.failed));

        let mut w = world();
        w.claims[0]["spec"]["volumeMode"] = json!("Block");
        w.pvs[1] = json!({"metadata": {"name": "pv-1"},
                          "spec": {"hostPath": {"path": "/srv"}, "storageClassName": "slow"}});
        w.pods.clear();
        let p = run(&w, VolumeSource::Auto, &[]);
        assert!(p.volumes.is_empty(), "{:?}", p.volumes);
        assert!(p.left.iter().any(|l| l.reason.contains("raw block")));
        assert!(p.left.iter().any(|l| l.reason.contains("hostPath")));
        // Everything skipped when the source is `skip`.
        let p = run(&world(), VolumeSource::Skip, &[]);
        assert!(p.volumes.is_empty() && p.left.is_empty());
    }

    #[test]
    fn in_tree_plugins_map_to_their_kubelet_directories() {
        let pv = |spec: Value| json!({"metadata": {"name": "v"}, "spec": spec});
        assert_eq!(
            kubelet_rel(&pv(json!({"awsElasticBlockStore": {}}))).as_deref(),
            Some("kubernetes.io~aws-ebs/v")
        );
        assert_eq!(
            kubelet_rel(&pv(json!({"local": {"path": "/mnt"}}))).as_deref(),
            Some("kubernetes.io~local-volume/v")
        );
        assert_eq!(
            kubelet_rel(&pv(json!({"flexVolume": {"driver": "acme/fs"}}))).as_deref(),
            Some("acme~fs/v")
        );
        assert_eq!(kubelet_rel(&pv(json!({"hostPath": {"path": "/x"}}))), None);
    }
}
