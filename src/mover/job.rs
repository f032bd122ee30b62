//! The objects an orchestrating run creates: names, labels and the mover
//! Job itself. Pure functions, so the specs are unit-tested as JSON.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::cluster::{MANAGED_BY_LABEL, MANAGED_BY_VALUE};

/// Label holding the run tag on everything a run creates.
pub const RUN_LABEL: &str = "kubestow.io/run";
/// Annotation with the full run id (labels are too short for it).
pub const RUN_ID_ANNOTATION: &str = "kubestow.io/run-id";
/// Annotation naming the volume (`namespace/claim`) a mover works on.
pub const VOLUME_ANNOTATION: &str = "kubestow.io/volume";
const COMPONENT_LABEL: &str = "app.kubernetes.io/component";

/// Where movers see what they read or fill.
pub const VOLUME_MOUNT: &str = "/kubestow/volume";

/// Attempts a mover Job gets (a retry resumes: the repository keeps what
/// the failed attempt uploaded).
pub const BACKOFF_LIMIT: u32 = 2;
/// Finished mover Jobs are removed by Kubernetes after this long even if
/// the orchestrator died before it could delete them.
pub const TTL_AFTER_FINISHED: u32 = 3600;

/// Eight hex digits naming a run in object names and labels; stable for a
/// run id, so a retried orchestrator finds its own leftovers.
pub fn run_tag(run_id: &str) -> String {
    blake3::hash(run_id.as_bytes()).to_hex()[..8].to_string()
}

/// `kubestow-<tag>-<what>-<hash of key>`: at most 40 characters, a valid
/// name for every kind (Jobs need 63 minus the pod suffix).
pub fn object_name(tag: &str, what: &str, key: &str) -> String {
    let h = &blake3::hash(key.as_bytes()).to_hex()[..8];
    format!("kubestow-{tag}-{what}-{h}")
}

/// Labels on every object a run creates: they make backup and restore
/// skip it, and the clean-up find it.
pub fn labels(tag: &str) -> Value {
    json!({
        MANAGED_BY_LABEL: MANAGED_BY_VALUE,
        RUN_LABEL: tag,
        COMPONENT_LABEL: "mover",
    })
}

/// The label selector for a run's objects.
pub fn selector(tag: &str) -> String {
    format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE},{RUN_LABEL}={tag}")
}

/// An owner for temporary objects: the garbage collector deletes them
/// with it (owners must be in the same namespace).
#[derive(Debug, Clone, PartialEq)]
pub struct Owner {
    /// `apiVersion` of the owner, e.g. `batch/v1`.
    pub api_version: String,
    /// Kind of the owner, e.g. `Job`.
    pub kind: String,
    /// Name of the owner, in the owned object's namespace.
    pub name: String,
    /// UID of the owner; the garbage collector matches owners by it.
    pub uid: String,
}

impl Owner {
    /// A `batch/v1` Job as owner.
    pub fn job(name: &str, uid: &str) -> Owner {
        Owner {
            api_version: "batch/v1".into(),
            kind: "Job".into(),
            name: name.into(),
            uid: uid.into(),
        }
    }
}

/// `metadata` for a temporary object: labels, run id, owner.
pub fn metadata(name: &str, ns: &str, tag: &str, run_id: &str, owner: Option<&Owner>) -> Value {
    let mut m = json!({
        "name": name,
        "namespace": ns,
        "labels": labels(tag),
        "annotations": {RUN_ID_ANNOTATION: run_id},
    });
    if let Some(o) = owner {
        m["ownerReferences"] = json!([{
            "apiVersion": o.api_version, "kind": o.kind, "name": o.name, "uid": o.uid,
            "blockOwnerDeletion": false, "controller": false,
        }]);
    }
    m
}

/// What the mover mounts.
#[derive(Debug, Clone, PartialEq)]
pub enum Mount {
    /// A claim at [`VOLUME_MOUNT`].
    Claim {
        /// Name of the claim, in the Job's namespace.
        name: String,
        /// Whether the claim is mounted read-only (backups).
        read_only: bool,
    },
    /// One volume's directory on the node (below the kubelet's pods
    /// directory), read-only at [`VOLUME_MOUNT`]. Nothing else of the
    /// node is visible to the mover.
    HostDir {
        /// Absolute path of the volume's directory on the node.
        path: String,
    },
}

/// What a mover does to files, which decides the capabilities it keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// Reads a volume: `DAC_OVERRIDE` only, to read files and directories
    /// of any owner and mode.
    Read,
    /// Fills a volume: also `CHOWN`, `FOWNER` (modes and times of files
    /// it does not own), `FSETID` (keep set-id bits after a chown) and
    /// `SETFCAP` (restore file capabilities).
    Fill,
}

impl Work {
    /// The capabilities kept after dropping all; each is allowed by the
    /// `baseline` Pod Security level.
    pub fn capabilities(self) -> &'static [&'static str] {
        match self {
            Work::Read => &["DAC_OVERRIDE"],
            Work::Fill => &["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "SETFCAP"],
        }
    }
}

/// Everything a mover Job needs.
#[derive(Debug, Clone)]
pub struct MoverJob {
    /// Name of the Job, see [`object_name`].
    pub name: String,
    /// Namespace of the Job: kubestow's own, never a tenant's.
    pub namespace: String,
    /// The run tag for labels, see [`run_tag`].
    pub tag: String,
    /// The full run id, for the annotation.
    pub run_id: String,
    /// `namespace/claim`, for the annotation.
    pub volume: String,
    /// Container image of the mover.
    pub image: String,
    /// The orchestrating Job, when it runs in the same namespace.
    pub owner: Option<Owner>,
    /// Service account the mover pod runs as.
    pub service_account: String,
    /// `envFrom` entries: the orchestrator's own Secret references, so
    /// credentials reach the mover by reference and are never copied.
    pub env_from: Vec<Value>,
    /// `env` entries taken by reference (`valueFrom`) from the orchestrator.
    pub env_refs: Vec<Value>,
    /// Plain variables, mode and volume path included; never secrets.
    pub env: BTreeMap<String, String>,
    /// (volumeMount, volume) pairs mounted as well, read-only: the
    /// orchestrator's CA bundle.
    pub extra_mounts: Vec<(Value, Value)>,
    /// What the mover reads or fills.
    pub mount: Mount,
    /// Whether it reads or fills, for its capabilities.
    pub work: Work,
    /// The pod's `tolerations`, a JSON array.
    pub tolerations: Value,
    /// Pin to this node (`matchFields` on the node name, as DaemonSets do;
    /// node names and hostname labels differ on some clouds).
    pub node: Option<String>,
    /// Required node affinity copied from the volume.
    pub node_affinity: Option<Value>,
    /// `requests.cpu=…` style keys from `STOW_MOVER_RESOURCES`.
    pub resources: BTreeMap<String, String>,
}

impl MoverJob {
    /// The `batch/v1` Job object to create.
    pub fn to_json(&self) -> Value {
        let mut env: Vec<Value> = self
            .env
            .iter()
            .map(|(k, v)| json!({"name": k, "value": v}))
            .collect();
        env.extend(self.env_refs.iter().cloned());
        for (var, field) in [
            (crate::config::vars::POD_NAME, "metadata.name"),
            (crate::config::vars::POD_NAMESPACE, "metadata.namespace"),
        ] {
            env.push(json!({"name": var, "valueFrom": {"fieldRef": {"fieldPath": field}}}));
        }
        let (mount, volume) = match &self.mount {
            Mount::Claim { name, read_only } => (
                json!({"name": "data", "mountPath": VOLUME_MOUNT, "readOnly": read_only}),
                json!({"name": "data", "persistentVolumeClaim": {"claimName": name, "readOnly": read_only}}),
            ),
            Mount::HostDir { path } => (
                // HostToContainer: a volume the kubelet mounts again while
                // the mover runs stays visible inside it.
                json!({"name": "data", "mountPath": VOLUME_MOUNT, "readOnly": true,
                       "mountPropagation": "HostToContainer"}),
                json!({"name": "data", "hostPath": {"path": path, "type": "Directory"}}),
            ),
        };
        let mut resources = json!({});
        for (k, v) in &self.resources {
            if let Some((section, key)) = k.split_once('.') {
                resources[section][key] = json!(v);
            }
        }
        let mut terms: Vec<Value> = Vec::new();
        if let Some(node) = &self.node {
            terms.push(json!({"matchFields": [
                {"key": "metadata.name", "operator": "In", "values": [node]}]}));
        }
        let mut pod_spec = json!({
            "restartPolicy": "Never",
            "serviceAccountName": self.service_account,
            // Movers talk to the repository only, never to the API.
            "automountServiceAccountToken": false,
            "tolerations": self.tolerations,
            // Root, with all capabilities dropped but the few that
            // reading (or restoring owners of) any file needs: `baseline`.
            "securityContext": {"runAsUser": 0, "runAsGroup": 0, "runAsNonRoot": false,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "mover",
                "image": self.image,
                "imagePullPolicy": "IfNotPresent",
                "envFrom": self.env_from,
                "env": env,
                "resources": resources,
                "securityContext": {"allowPrivilegeEscalation": false,
                                    "readOnlyRootFilesystem": true,
                                    "privileged": false,
                                    "capabilities": {"drop": ["ALL"],
                                                     "add": self.work.capabilities()}},
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "volumeMounts": [mount, {"name": "tmp", "mountPath": "/tmp"}],
            }],
            "volumes": [volume, {"name": "tmp", "emptyDir": {}}],
        });
        for (m, v) in &self.extra_mounts {
            if let Some(a) = pod_spec["containers"][0]["volumeMounts"].as_array_mut() {
                a.push(m.clone());
            }
            if let Some(a) = pod_spec["volumes"].as_array_mut() {
                a.push(v.clone());
            }
        }
        let affinity_terms = self
            .node_affinity
            .as_ref()
            .and_then(|a| a.pointer("/required/nodeSelectorTerms"))
            .and_then(Value::as_array);
        match (terms.pop(), affinity_terms) {
            (Some(pin), _) => {
                pod_spec["affinity"] = json!({"nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [pin]}}});
            }
            (None, Some(t)) => {
                pod_spec["affinity"] = json!({"nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": t}}});
            }
            (None, None) => {}
        }
        let mut meta = metadata(
            &self.name,
            &self.namespace,
            &self.tag,
            &self.run_id,
            self.owner.as_ref(),
        );
        meta["annotations"][VOLUME_ANNOTATION] = json!(self.volume);
        json!({
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": meta,
            "spec": {
                "backoffLimit": BACKOFF_LIMIT,
                "ttlSecondsAfterFinished": TTL_AFTER_FINISHED,
                // Exit 2 (configuration) and 3 (items failed, result
                // saved) come out the same on a retry. Servers before
                // 1.26 ignore this field and retry anyway.
                "podFailurePolicy": {"rules": [{"action": "FailJob",
                    "onExitCodes": {"containerName": "mover", "operator": "In", "values": [2, 3]}}]},
                "template": {
                    "metadata": {"labels": labels(&self.tag),
                                 "annotations": {VOLUME_ANNOTATION: self.volume}},
                    "spec": pod_spec,
                },
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(mount: Mount) -> MoverJob {
        MoverJob {
            name: object_name("abcd1234", "b", "shop/data-0"),
            namespace: "shop".into(),
            tag: "abcd1234".into(),
            run_id: "backup-2025".into(),
            volume: "shop/data-0".into(),
            image: "ghcr.io/kubestow/kubestow:1".into(),
            owner: Some(Owner::job("backup-28934521", "u-1")),
            service_account: "kubestow-abcd1234-mover".into(),
            env_from: vec![json!({"secretRef": {"name": "kubestow-credentials"}})],
            env_refs: vec![json!({"name": "AWS_SECRET_ACCESS_KEY",
                "valueFrom": {"secretKeyRef": {"name": "s3", "key": "secret"}}})],
            env: BTreeMap::from([("STOW_MODE".into(), "volume-backup".into())]),
            extra_mounts: Vec::new(),
            mount,
            work: Work::Read,
            tolerations: json!([{"key": "dedicated", "operator": "Exists"}]),
            node: None,
            node_affinity: None,
            resources: BTreeMap::from([
                ("requests.cpu".into(), "100m".into()),
                ("limits.memory".into(), "512Mi".into()),
            ]),
        }
    }

    #[test]
    fn names_are_stable_short_and_distinct() {
        let t = run_tag("backup-1");
        assert_eq!(t, run_tag("backup-1"));
        assert_ne!(t, run_tag("backup-2"));
        let a = object_name(&t, "b", "shop/data-0");
        assert!(a.len() <= 40, "{a}");
        assert_ne!(a, object_name(&t, "b", "shop/data-1"));
        assert_ne!(a, object_name(&t, "r", "shop/data-0"));
        assert_eq!(
            selector(&t),
            format!("app.kubernetes.io/managed-by=kubestow,kubestow.io/run={t}")
        );
    }

    #[test]
    fn claim_mover_spec() {
        let j = job(Mount::Claim {
            name: "kubestow-abcd1234-c-1".into(),
            read_only: true,
        })
        .to_json();
        assert_eq!(
            j["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "kubestow"
        );
        assert_eq!(j["metadata"]["ownerReferences"][0]["kind"], "Job");
        assert_eq!(j["metadata"]["ownerReferences"][0]["uid"], "u-1");
        assert_eq!(
            j["metadata"]["annotations"][VOLUME_ANNOTATION],
            "shop/data-0"
        );
        assert_eq!(j["spec"]["backoffLimit"], BACKOFF_LIMIT);
        assert_eq!(j["spec"]["ttlSecondsAfterFinished"], TTL_AFTER_FINISHED);
        let pod = &j["spec"]["template"]["spec"];
        assert_eq!(pod["automountServiceAccountToken"], false);
        assert_eq!(pod["restartPolicy"], "Never");
        assert_eq!(pod["tolerations"][0]["key"], "dedicated");
        assert!(pod.get("affinity").is_none());
        let c = &pod["containers"][0];
        assert_eq!(c["envFrom"][0]["secretRef"]["name"], "kubestow-credentials");
        assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
        assert_eq!(
            c["securityContext"]["capabilities"]["add"],
            json!(["DAC_OVERRIDE"])
        );
        assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        assert_eq!(c["resources"]["requests"]["cpu"], "100m");
        assert_eq!(c["resources"]["limits"]["memory"], "512Mi");
        assert_eq!(c["volumeMounts"][0]["readOnly"], true);
        assert_eq!(c["volumeMounts"][0]["mountPath"], VOLUME_MOUNT);
        assert_eq!(pod["volumes"][0]["persistentVolumeClaim"]["readOnly"], true);
        let env: Vec<&str> = c["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        assert!(
            env.contains(&"STOW_MODE")
                && env.contains(&"STOW_POD_NAME")
                && env.contains(&"AWS_SECRET_ACCESS_KEY"),
            "{env:?}"
        );
        // Secrets only by reference: no literal value anywhere in the spec.
        let secret_ref = &c["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "AWS_SECRET_ACCESS_KEY")
            .unwrap();
        assert!(secret_ref.get("value").is_none(), "{secret_ref}");
    }

    #[test]
    fn kubelet_mover_is_pinned_and_mounts_only_its_volume_read_only() {
        let dir = "/var/lib/kubelet/pods/u-1/volumes/kubernetes.io~csi/pv-1/mount";
        let mut m = job(Mount::HostDir { path: dir.into() });
        m.node = Some("node-a".into());
        m.node_affinity =
            Some(json!({"required": {"nodeSelectorTerms": [{"matchExpressions": []}]}}));
        let j = m.to_json();
        let pod = &j["spec"]["template"]["spec"];
        let term = &pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            ["nodeSelectorTerms"][0];
        assert_eq!(term["matchFields"][0]["values"][0], "node-a");
        let mount = &pod["containers"][0]["volumeMounts"][0];
        assert_eq!(mount["mountPropagation"], "HostToContainer");
        assert_eq!(mount["readOnly"], true);
        assert_eq!(mount["mountPath"], VOLUME_MOUNT);
        assert_eq!(pod["volumes"][0]["hostPath"]["path"], dir);
        assert_eq!(
            pod["volumes"].as_array().unwrap().len(),
            2,
            "data and /tmp only"
        );

        // Without a node, the volume's own affinity is copied.
        m.node = None;
        let j = m.to_json();
        let terms = &j["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            ["nodeSelectorTerms"];
        assert!(terms[0].get("matchExpressions").is_some(), "{terms}");
    }
}
