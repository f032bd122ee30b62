//! Workloads held back because a claim they mount was not filled: a
//! database must never start on an empty volume. A StatefulSet would even
//! create the missing claim itself, empty, from its template.

use std::collections::BTreeSet;

use serde_json::Value;

/// Where a kind keeps its pod spec.
fn pod_spec(obj: &Value) -> Option<&Value> {
    let ptr = match obj.get("kind").and_then(Value::as_str)? {
        "Pod" => "/spec",
        "CronJob" => "/spec/jobTemplate/spec/template/spec",
        // Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs,
        // ReplicationControllers, and custom kinds that follow the shape.
        _ => "/spec/template/spec",
    };
    obj.pointer(ptr)
}

/// The claim of `unfilled` (names in the object's namespace) that this
/// object's pods would mount, if any: named in its pod spec, or made from
/// a StatefulSet's volume claim template (`<template>-<name>-<ordinal>`).
pub(super) fn mounts_unfilled(obj: &Value, unfilled: &BTreeSet<String>) -> Option<String> {
    if unfilled.is_empty() {
        return None;
    }
    let named = pod_spec(obj)
        .and_then(|s| s.get("volumes"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.pointer("/persistentVolumeClaim/claimName"))
        .filter_map(Value::as_str)
        .find(|c| unfilled.contains(*c));
    if let Some(c) = named {
        return Some(c.to_string());
    }
    if obj.get("kind").and_then(Value::as_str) != Some("StatefulSet") {
        return None;
    }
    let name = obj.pointer("/metadata/name").and_then(Value::as_str)?;
    let templates: Vec<&str> = obj
        .pointer("/spec/volumeClaimTemplates")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| t.pointer("/metadata/name").and_then(Value::as_str))
        .collect();
    unfilled
        .iter()
        .find(|c| {
            templates.iter().any(|t| {
                c.strip_prefix(&format!("{t}-{name}-"))
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            })
        })
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn workloads_that_mount_an_unfilled_claim() {
        let deploy = json!({"kind": "Deployment", "metadata": {"name": "db"},
            "spec": {"template": {"spec": {"volumes": [
                {"name": "c", "configMap": {"name": "x"}},
                {"name": "d", "persistentVolumeClaim": {"claimName": "db-data"}}]}}}});
        assert_eq!(
            mounts_unfilled(&deploy, &set(&["db-data"])),
            Some("db-data".into())
        );
        assert_eq!(mounts_unfilled(&deploy, &set(&["other"])), None);
        assert_eq!(mounts_unfilled(&deploy, &set(&[])), None);
        let pod = json!({"kind": "Pod", "spec": {"volumes": [
            {"name": "d", "persistentVolumeClaim": {"claimName": "db-data"}}]}});
        assert_eq!(
            mounts_unfilled(&pod, &set(&["db-data"])),
            Some("db-data".into())
        );
        let cron = json!({"kind": "CronJob", "spec": {"jobTemplate": {"spec": {"template": {"spec": {"volumes": [
            {"name": "d", "persistentVolumeClaim": {"claimName": "db-data"}}]}}}}}});
        assert_eq!(
            mounts_unfilled(&cron, &set(&["db-data"])),
            Some("db-data".into())
        );
        let sts = json!({"kind": "StatefulSet", "metadata": {"name": "web"},
            "spec": {"volumeClaimTemplates": [{"metadata": {"name": "data"}}],
                     "template": {"spec": {}}}});
        assert_eq!(
            mounts_unfilled(&sts, &set(&["data-web-2"])),
            Some("data-web-2".into())
        );
        // Another StatefulSet's claim, or not an ordinal: not this one's.
        assert_eq!(
            mounts_unfilled(&sts, &set(&["data-webx-2", "data-web-a", "data-web-"])),
            None
        );
        let cm = json!({"kind": "ConfigMap", "data": {}});
        assert_eq!(mounts_unfilled(&cm, &set(&["db-data"])), None);
    }
}
