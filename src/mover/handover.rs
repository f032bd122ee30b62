//! Handing a volume filled at home over to the restored claim.
//!
//! A restore never runs a mover in a tenant namespace. It fills a staging
//! claim at home, then moves the volume under it to the tenant's claim:
//!
//! 1. **filled**: once the mover succeeded, one patch marks the volume with
//!    the target (`kubestow.io/handover` label and annotations), the
//!    snapshot it holds, its original reclaim policy, and sets the policy
//!    to `Retain`, so that deleting the staging claim keeps the data;
//! 2. the staging claim is deleted (the volume becomes Released) and the
//!    volume's `claimRef` is pointed at the target claim, without a uid;
//! 3. **rebound**: the target claim is created with `volumeName` set, and
//!    binds;
//! 4. the original reclaim policy comes back and the marks go.
//!
//! Every step is idempotent and the marks live on the volume itself, so a
//! run after a crash (a Job retry or a new run) finds where the hand-over
//! stopped and finishes it. Pure functions here; the API calls are in
//! [`super::restore`].

use serde_json::{Value, json};

use crate::cluster::{MANAGED_BY_LABEL, MANAGED_BY_VALUE};

/// Label on a volume being handed over: the target's key.
pub const HANDOVER_LABEL: &str = "kubestow.io/handover";
/// Annotation on a volume being handed over: `namespace/claim`.
pub const TARGET_ANNOTATION: &str = "kubestow.io/handover-to";
/// Annotation on a volume being handed over: the snapshot it was filled from.
pub const FILLED_ANNOTATION: &str = "kubestow.io/filled-from";
/// Annotation on a volume being handed over: its reclaim policy before.
pub const POLICY_ANNOTATION: &str = "kubestow.io/reclaim-policy";

/// A hand-over step after which `STOW_TEST_EXIT_AFTER` stops the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The volume is filled and marked, still held by the staging claim.
    Filled,
    /// The target claim is bound; the volume's policy is still `Retain`.
    Rebound,
}

impl Step {
    /// The step's word in `STOW_TEST_EXIT_AFTER`.
    pub fn name(self) -> &'static str {
        match self {
            Step::Filled => "filled",
            Step::Rebound => "rebound",
        }
    }

    /// Parses a step's word.
    pub fn parse(s: &str) -> Option<Step> {
        match s {
            "filled" => Some(Step::Filled),
            "rebound" => Some(Step::Rebound),
            _ => None,
        }
    }
}

/// The target's key: 16 hex digits of a hash of `namespace/claim`, a valid
/// label value and name part.
pub fn key(namespace: &str, claim: &str) -> String {
    blake3::hash(format!("{namespace}/{claim}").as_bytes()).to_hex()[..16].to_string()
}

/// Name of the staging claim at home; stable for the target, so any later
/// run finds it.
pub fn staging_name(key: &str) -> String {
    format!("kubestow-fill-{key}")
}

/// The staging claim at home: the target's class, size, access modes and
/// volume mode; no data source (the mover fills it), no selector or
/// volume name (a new volume is provisioned).
pub fn staging_claim(target: &Value, home: &str, key: &str, target_name: &str) -> Value {
    let spec = target.get("spec").cloned().unwrap_or_else(|| json!({}));
    let mut out = json!({});
    for field in ["storageClassName", "accessModes", "resources", "volumeMode"] {
        if let Some(v) = spec.get(field) {
            out[field] = v.clone();
        }
    }
    json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": staging_name(key),
            "namespace": home,
            "labels": {MANAGED_BY_LABEL: MANAGED_BY_VALUE, HANDOVER_LABEL: key,
                       "app.kubernetes.io/component": "restore-staging"},
            "annotations": {TARGET_ANNOTATION: target_name},
        },
        "spec": out,
    })
}

/// Step 1: marks the filled volume and keeps its data when the staging
/// claim goes. The original policy is kept from an earlier mark.
pub fn mark(pv: &Value, key: &str, target_name: &str, snapshot: &str) -> Value {
    let original = pv
        .pointer(&format!(
            "/metadata/annotations/{}",
            POLICY_ANNOTATION.replace('/', "~1")
        ))
        .or_else(|| pv.pointer("/spec/persistentVolumeReclaimPolicy"))
        .and_then(Value::as_str)
        .unwrap_or("Delete");
    json!({
        "metadata": {
            "labels": {HANDOVER_LABEL: key},
            "annotations": {
                TARGET_ANNOTATION: target_name,
                FILLED_ANNOTATION: snapshot,
                POLICY_ANNOTATION: original,
            },
        },
        "spec": {"persistentVolumeReclaimPolicy": "Retain"},
    })
}

/// Step 2: points the volume at the target claim. Without a uid the volume
/// is pre-bound: Available to that claim only.
pub fn rebind(namespace: &str, claim: &str) -> Value {
    json!({"spec": {"claimRef": {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "namespace": namespace, "name": claim,
        "uid": null, "resourceVersion": null,
    }}})
}

/// Step 3: the target claim as the snapshot has it, on the filled volume
/// (without a data source: nothing is to populate it any more).
pub fn target_claim(body: &Value, pv: &str) -> Value {
    let mut c = body.clone();
    if let Some(spec) = c.get_mut("spec").and_then(Value::as_object_mut) {
        spec.remove("dataSource");
        spec.remove("dataSourceRef");
    }
    c["spec"]["volumeName"] = json!(pv);
    c
}

/// Step 4: the original reclaim policy back, the marks gone.
pub fn finish(pv: &Value) -> Value {
    let policy = pv
        .pointer(&format!(
            "/metadata/annotations/{}",
            POLICY_ANNOTATION.replace('/', "~1")
        ))
        .and_then(Value::as_str)
        .unwrap_or("Delete");
    json!({
        "metadata": {
            "labels": {HANDOVER_LABEL: null},
            "annotations": {TARGET_ANNOTATION: null, FILLED_ANNOTATION: null,
                            POLICY_ANNOTATION: null},
        },
        "spec": {"persistentVolumeReclaimPolicy": policy},
    })
}

/// Whether the volume was filled from `snapshot` for this target.
pub fn filled_from(pv: &Value, snapshot: &str) -> bool {
    pv.pointer(&format!(
        "/metadata/annotations/{}",
        FILLED_ANNOTATION.replace('/', "~1")
    ))
    .and_then(Value::as_str)
        == Some(snapshot)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pv(policy: &str) -> Value {
        json!({"metadata": {"name": "pvc-1"},
               "spec": {"persistentVolumeReclaimPolicy": policy,
                        "claimRef": {"namespace": "kubestow", "name": "kubestow-fill-x", "uid": "u"}}})
    }

    /// Applies a JSON merge patch, as the API server does.
    fn merge(target: &mut Value, patch: &Value) {
        match (target.as_object_mut(), patch.as_object()) {
            (Some(t), Some(p)) => {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge(t.entry(k.clone()).or_insert(json!({})), v);
                    }
                }
            }
            _ => *target = patch.clone(),
        }
    }

    #[test]
    fn marking_keeps_the_data_and_finishing_restores_the_policy() {
        let mut v = pv("Delete");
        let k = key("shop", "data-0");
        let p = mark(&v, &k, "shop/data-0", "abc");
        merge(&mut v, &p);
        assert_eq!(v["spec"]["persistentVolumeReclaimPolicy"], "Retain");
        assert_eq!(v["metadata"]["labels"][HANDOVER_LABEL], k);
        assert!(filled_from(&v, "abc"));
        assert!(!filled_from(&v, "abd"));
        // Marking again (a retried run) keeps the original policy.
        let p = mark(&v, &k, "shop/data-0", "abc");
        merge(&mut v, &p);
        assert_eq!(v["metadata"]["annotations"][POLICY_ANNOTATION], "Delete");
        merge(&mut v, &rebind("shop", "data-0"));
        assert_eq!(v["spec"]["claimRef"]["namespace"], "shop");
        assert!(v["spec"]["claimRef"].get("uid").is_none(), "{v}");
        let p = finish(&v);
        merge(&mut v, &p);
        assert_eq!(v["spec"]["persistentVolumeReclaimPolicy"], "Delete");
        assert!(v["metadata"]["labels"].get(HANDOVER_LABEL).is_none(), "{v}");
        assert!(!filled_from(&v, "abc"));
        // A Retain volume stays Retain.
        let mut r = pv("Retain");
        let p = mark(&r, &k, "shop/data-0", "abc");
        merge(&mut r, &p);
        let p = finish(&r);
        merge(&mut r, &p);
        assert_eq!(r["spec"]["persistentVolumeReclaimPolicy"], "Retain");
    }

    #[test]
    fn staging_claim_takes_size_and_class_but_no_source() {
        let target = json!({"metadata": {"name": "data-0", "namespace": "shop"},
            "spec": {"storageClassName": "fast", "accessModes": ["ReadWriteOnce"],
                     "resources": {"requests": {"storage": "2Gi"}},
                     "dataSourceRef": {"kind": "VolumeSnapshot", "name": "s"},
                     "selector": {"matchLabels": {"a": "b"}}, "volumeName": "old"}});
        let k = key("shop", "data-0");
        let s = staging_claim(&target, "kubestow", &k, "shop/data-0");
        assert_eq!(s["metadata"]["namespace"], "kubestow");
        assert_eq!(s["metadata"]["name"], staging_name(&k));
        assert_eq!(s["spec"]["storageClassName"], "fast");
        assert_eq!(s["spec"]["resources"]["requests"]["storage"], "2Gi");
        for gone in ["dataSourceRef", "selector", "volumeName"] {
            assert!(s["spec"].get(gone).is_none(), "{gone}: {s}");
        }
        assert_ne!(key("shop", "data-0"), key("shop", "data-1"));
        let t = target_claim(&target, "pvc-9");
        assert_eq!(t["spec"]["volumeName"], "pvc-9");
        assert!(t["spec"].get("dataSourceRef").is_none(), "{t}");
        assert_eq!(Step::parse("filled"), Some(Step::Filled));
        assert_eq!(Step::parse(Step::Rebound.name()), Some(Step::Rebound));
        assert_eq!(Step::parse("x"), None);
    }
}
