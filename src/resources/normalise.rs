//! The stored form of an object: the object as the API server returns it,
//! with `apiVersion`/`kind` filled in and the fields that change without
//! the object changing removed, serialised with sorted keys. An unchanged
//! object therefore always produces the same bytes, hence the same blob id.
//!
//! Removed: `metadata.resourceVersion`, `metadata.managedFields`,
//! `metadata.selfLink`. Everything else (status included) is kept: restore
//! needs some of it (a Job's completion, a PVC's volume).
//!
//! One fact would be lost with `managedFields`: whether a Service's
//! nodePort was chosen by a person or allocated by the server. It is kept
//! as the annotation [`EXPLICIT_NODE_PORTS`], which restore reads and
//! removes.

use serde_json::{Map, Value};

use super::ResourceType;

/// Annotation on stored Services: the nodePorts that were set explicitly,
/// comma-separated (empty: none were). Absent when it could not be told.
pub const EXPLICIT_NODE_PORTS: &str = "backup.kubestow.io/explicit-node-ports";
/// kubectl's annotation with the last applied configuration; it tells which nodePorts were set explicitly.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Turns a listed object into its stored form, in place.
pub fn for_storage(obj: &mut Value, rt: &ResourceType) {
    let Some(o) = obj.as_object_mut() else {
        return;
    };
    o.insert("apiVersion".into(), Value::String(rt.api_version()));
    o.insert("kind".into(), Value::String(rt.kind.clone()));
    if rt.is("", "services")
        && let Some(ports) = explicit_node_ports(obj)
    {
        let value = ports
            .iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(",");
        if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            let ann = meta
                .entry("annotations")
                .or_insert_with(|| Value::Object(Map::new()));
            if let Some(a) = ann.as_object_mut() {
                a.insert(EXPLICIT_NODE_PORTS.into(), Value::String(value));
            }
        }
    }
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
        meta.remove("managedFields");
        meta.remove("selfLink");
    }
}

/// `(port, protocol)`: how the API identifies a Service port.
fn port_key(p: &Value) -> Option<(i64, String)> {
    Some((
        p.get("port")?.as_i64()?,
        p.get("protocol")
            .and_then(Value::as_str)
            .unwrap_or("TCP")
            .to_string(),
    ))
}

/// The nodePorts of a live Service that a client set explicitly, sorted;
/// `None` when the Service has nodePorts but nothing tells how they came
/// about. Sources, first that exists wins:
/// 1. `kubectl.kubernetes.io/last-applied-configuration` (kubectl apply);
/// 2. `metadata.managedFields`: a manager that set `f:nodePort` of a port
///    chose it; a port the server allocated is owned by no manager.
pub fn explicit_node_ports(svc: &Value) -> Option<Vec<i64>> {
    let ports: Vec<(i64, String, i64)> = svc
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let (port, proto) = port_key(p)?;
            Some((port, proto, p.get("nodePort")?.as_i64()?))
        })
        .collect();
    if ports.is_empty() {
        return None;
    }
    let explicit_keys: Vec<(i64, String)> = if let Some(applied) = svc
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(LAST_APPLIED))
        .and_then(Value::as_str)
        .and_then(|s| serde_json::from_str::<Value>(s).ok())
    {
        applied
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|p| p.get("nodePort").is_some_and(|n| !n.is_null()))
            .filter_map(port_key)
            .collect()
    } else if let Some(managed) = svc
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
    {
        let mut keys = Vec::new();
        for entry in managed {
            let Some(fields) = entry
                .pointer("/fieldsV1/f:spec/f:ports")
                .and_then(Value::as_object)
            else {
                continue;
            };
            for (k, v) in fields {
                let Some(json) = k.strip_prefix("k:") else {
                    continue;
                };
                if v.get("f:nodePort").is_none() {
                    continue;
                }
                if let Some(key) = serde_json::from_str::<Value>(json)
                    .ok()
                    .as_ref()
                    .and_then(port_key)
                {
                    keys.push(key);
                }
            }
        }
        keys
    } else {
        return None;
    };
    let mut out: Vec<i64> = ports
        .into_iter()
        .filter(|(port, proto, _)| explicit_keys.iter().any(|(p, pr)| p == port && pr == proto))
        .map(|(_, _, node)| node)
        .collect();
    out.sort_unstable();
    out.dedup();
    Some(out)
}

/// JSON with object keys sorted at every level, whatever map type
/// serde_json was built with.
pub fn canonical_bytes(v: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(m) => {
            out.push(b'{');
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort_unstable();
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, k).expect("strings serialise");
                out.push(b':');
                write_canonical(&m[k], out);
            }
            out.push(b'}');
        }
        Value::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(x, out);
            }
            out.push(b']');
        }
        scalar => serde_json::to_writer(&mut *out, scalar).expect("scalars serialise"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc_type() -> ResourceType {
        ResourceType {
            group: String::new(),
            version: "v1".into(),
            kind: "Service".into(),
            plural: "services".into(),
            namespaced: true,
        }
    }

    #[test]
    fn canonical_bytes_sort_keys_and_are_stable() {
        let a = json!({"b": 1, "a": {"z": [3, {"y": 1, "x": 2}], "c": "s"}});
        let s = String::from_utf8(canonical_bytes(&a)).unwrap();
        assert_eq!(s, r#"{"a":{"c":"s","z":[3,{"x":2,"y":1}]},"b":1}"#);
        let back: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(back, a);
    }

    #[test]
    fn volatile_fields_go_and_type_is_filled_in() {
        let mut a = json!({"metadata": {"name": "x", "resourceVersion": "5", "uid": "u",
            "managedFields": [{"manager": "m"}], "selfLink": "/x"}, "data": {"k": "v"}});
        let mut b = a.clone();
        b["metadata"]["resourceVersion"] = json!("9");
        b["metadata"]["managedFields"] = json!([{"manager": "other"}]);
        let cm = ResourceType {
            kind: "ConfigMap".into(),
            plural: "configmaps".into(),
            ..svc_type()
        };
        for_storage(&mut a, &cm);
        for_storage(&mut b, &cm);
        assert_eq!(canonical_bytes(&a), canonical_bytes(&b));
        assert_eq!(a["apiVersion"], "v1");
        assert_eq!(a["kind"], "ConfigMap");
        assert_eq!(a["metadata"]["uid"], "u");
        assert!(a["metadata"].get("resourceVersion").is_none());
    }

    fn service(managed: Value, annotations: Value) -> Value {
        json!({
            "metadata": {"name": "s", "managedFields": managed, "annotations": annotations},
            "spec": {"type": "NodePort", "ports": [
                {"port": 80, "protocol": "TCP", "nodePort": 30080},
                {"port": 81, "protocol": "TCP", "nodePort": 31234},
            ]}
        })
    }

    #[test]
    fn node_ports_from_managed_fields() {
        // As recorded by a 1.20 server for `kubectl create` with port 80's
        // nodePort set and port 81's allocated.
        let managed = json!([{
            "manager": "kubectl-create", "operation": "Update",
            "fieldsV1": {"f:spec": {"f:ports": {
                ".": {},
                "k:{\"port\":80,\"protocol\":\"TCP\"}": {".": {}, "f:nodePort": {}, "f:port": {}},
                "k:{\"port\":81,\"protocol\":\"TCP\"}": {".": {}, "f:port": {}},
            }}}
        }]);
        let mut s = service(managed, json!({}));
        assert_eq!(explicit_node_ports(&s), Some(vec![30080]));
        for_storage(&mut s, &svc_type());
        assert_eq!(s["metadata"]["annotations"][EXPLICIT_NODE_PORTS], "30080");
        assert!(s["metadata"].get("managedFields").is_none());
    }

    #[test]
    fn node_ports_from_last_applied_win() {
        let applied = json!({"spec": {"ports": [{"port": 81, "nodePort": 31234}]}}).to_string();
        let s = service(json!([]), json!({ LAST_APPLIED: applied }));
        assert_eq!(explicit_node_ports(&s), Some(vec![31234]));
    }

    #[test]
    fn unknown_origin_is_none_and_no_ports_is_none() {
        assert_eq!(explicit_node_ports(&service(json!([]), json!({}))), None);
        let cluster_ip = json!({"metadata": {}, "spec": {"ports": [{"port": 80}]}});
        assert_eq!(explicit_node_ports(&cluster_ip), None);
    }
}
