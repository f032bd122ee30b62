//! What movers take from the orchestrator: its image, and its
//! credentials by reference. The orchestrator's own container names the
//! Secrets it reads (`envFrom`, `secretKeyRef`); movers at home get the same
//! references, so no value is copied. Only secrets that no reference gives
//! (a run outside a pod, a password file, a literal in the pod spec) are
//! returned for a Secret at home, owned by the mover Job.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use tracing::warn;

use super::{MoverError, MoverOptions, str_at};
use crate::cluster::api::Kube;
use crate::cluster::types::pods;
use crate::config::vars;

/// Variables that are secret: a mover gets them by reference only (or
/// from a Secret at home), never as a literal in its Job.
const SECRET_VARS: &[&str] = &[
    vars::PASSWORD,
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
];

/// Where the repository is: plain variables, unless a URL carries
/// credentials (`user:pass@`), which makes it secret. Web-identity and
/// container credentials are left out: they belong to this pod's service
/// account; `STOW_MOVER_SERVICE_ACCOUNT` gives movers an identity.
const LOCATION_VARS: &[&str] = &[
    vars::REPOSITORY,
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
];

/// Settings movers inherit as plain variables when the orchestrator has
/// them set.
const PASSED_ON: &[&str] = &[
    vars::COMPRESSION,
    vars::PLAN,
    vars::RECONNECT_TIMEOUT,
    vars::RESUME_BUFFER,
    vars::TIMEZONE,
    vars::LOG_FORMAT,
    "RUST_LOG",
    // A private CA, and the S3 checksum settings some S3-compatible stores
    // need; the files they name come with the mounts (see `ca_mounts`).
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "AWS_CA_BUNDLE",
    "AWS_REQUEST_CHECKSUM_CALCULATION",
    "AWS_RESPONSE_CHECKSUM_VALIDATION",
];

/// Variables naming certificate files or directories whose volumes movers
/// mount too.
const CA_PATH_VARS: &[&str] = &["SSL_CERT_FILE", "SSL_CERT_DIR", "AWS_CA_BUNDLE"];

/// What movers take from this pod: its image, and how it gets its
/// credentials (references only; values never leave it).
#[derive(Debug, Default)]
pub(crate) struct Origin {
    /// The image movers run.
    pub image: String,
    /// `envFrom` entries naming Secrets or ConfigMaps.
    pub(super) env_from: Vec<Value>,
    /// `env` entries with `valueFrom` Secret or ConfigMap keys.
    pub(super) env_refs: Vec<Value>,
    /// Names this pod sets as literal values.
    pub(super) literal: BTreeSet<String>,
    /// (volumeMount, volume) pairs of ConfigMaps and Secrets holding the
    /// certificate files `CA_PATH_VARS` name, renamed for the mover.
    pub(super) ca_mounts: Vec<(Value, Value)>,
}

impl Origin {
    /// Whether a mover gets `var` through a reference of this pod.
    fn gives(&self, var: &str) -> bool {
        self.env_refs
            .iter()
            .any(|e| str_at(e, "/name") == Some(var))
            || (!self.literal.contains(var)
                && self.env_from.iter().any(|e| e.get("secretRef").is_some()))
    }
}

/// The container that runs kubestow: the one named so, else the first.
fn kubestow_container(pod: &Value) -> Option<&Value> {
    let containers = pod.pointer("/spec/containers").and_then(Value::as_array)?;
    containers
        .iter()
        .find(|c| str_at(c, "/name") == Some("kubestow"))
        .or(containers.first())
}

/// The references of kubestow's container that movers inherit: `envFrom`
/// Secrets and ConfigMaps, and `env` entries from Secret or ConfigMap
/// keys. Literal values are noted, never taken.
fn references(c: &Value, origin: &mut Origin) {
    origin.env_from = c
        .get("envFrom")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|e| e.get("secretRef").is_some() || e.get("configMapRef").is_some())
        .cloned()
        .collect();
    for e in c.get("env").and_then(Value::as_array).into_iter().flatten() {
        let Some(name) = str_at(e, "/name") else {
            continue;
        };
        if e.pointer("/valueFrom/secretKeyRef").is_some()
            || e.pointer("/valueFrom/configMapKeyRef").is_some()
        {
            origin.env_refs.push(e.clone());
        } else if e.get("value").is_some() {
            origin.literal.insert(name.to_string());
        }
    }
}

/// The volumes (ConfigMap, Secret or projected) of this pod that hold the
/// files `paths` name: the mover mounts the same ones, read-only, under
/// the same paths, so a private CA bundle works there too.
fn ca_mounts(pod: &Value, c: &Value, paths: &[String]) -> Vec<(Value, Value)> {
    let volumes = pod
        .pointer("/spec/volumes")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut out = Vec::new();
    for m in c
        .get("volumeMounts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let (Some(name), Some(at)) = (str_at(m, "/name"), str_at(m, "/mountPath")) else {
            continue;
        };
        let at_dir = format!("{}/", at.trim_end_matches('/'));
        if !paths.iter().any(|p| p == at || p.starts_with(&at_dir)) {
            continue;
        }
        let Some(v) = volumes.iter().find(|v| str_at(v, "/name") == Some(name)) else {
            continue;
        };
        if !["configMap", "secret", "projected"]
            .iter()
            .any(|k| v.get(*k).is_some())
        {
            continue;
        }
        let renamed = format!("ca-{}", out.len());
        let mut mount = serde_json::json!({"name": renamed, "mountPath": at, "readOnly": true});
        if let Some(sub) = m.get("subPath") {
            mount["subPath"] = sub.clone();
        }
        let mut volume = v.clone();
        volume["name"] = serde_json::json!(renamed);
        out.push((mount, volume));
    }
    out
}

/// The image movers run (`STOW_IMAGE`, else this pod's own) and the
/// references they inherit (only when this pod runs at home: references
/// resolve in the pod's own namespace).
pub(crate) async fn origin(
    kube: &Kube,
    options: &MoverOptions,
    home: &str,
) -> Result<Origin, MoverError> {
    let (Some(ns), Some(pod)) = (&options.pod_namespace, &options.pod_name) else {
        return options
            .image
            .clone()
            .map(|image| Origin {
                image,
                ..Origin::default()
            })
            .ok_or(MoverError::NoImage);
    };
    let read = match kube.get(&pods(), Some(ns), pod).await {
        Ok(Some(o)) => Ok(o),
        Ok(None) => Err(MoverError::PodGone {
            namespace: ns.clone(),
            pod: pod.clone(),
        }),
        Err(source) => Err(MoverError::ReadPod {
            namespace: ns.clone(),
            pod: pod.clone(),
            source,
        }),
    };
    let obj = match (read, &options.image) {
        (Ok(o), _) => o,
        (Err(e), Some(image)) => {
            warn!(error = %e, "movers get no credential references from this pod");
            return Ok(Origin {
                image: image.clone(),
                ..Origin::default()
            });
        }
        (Err(e), None) => return Err(e),
    };
    let container = kubestow_container(&obj);
    let image = match &options.image {
        Some(i) => i.clone(),
        None => container
            .and_then(|c| str_at(c, "/image"))
            .map(String::from)
            .ok_or_else(|| MoverError::NoContainerImage {
                namespace: ns.clone(),
                pod: pod.clone(),
            })?,
    };
    let mut origin = Origin {
        image,
        ..Origin::default()
    };
    if ns != home {
        return Ok(origin);
    }
    let Some(c) = container else {
        return Ok(origin);
    };
    references(c, &mut origin);
    let paths: Vec<String> = CA_PATH_VARS
        .iter()
        .filter_map(|v| std::env::var(v).ok())
        .filter(|p| !p.is_empty())
        .collect();
    origin.ca_mounts = ca_mounts(&obj, c, &paths);
    Ok(origin)
}

/// What every mover gets: the secrets that no reference of this pod gives
/// (for a Secret at home), and plain variables. `env` reads this process's
/// environment (injectable for tests).
pub(super) fn mover_env(
    options: &MoverOptions,
    run_id: &str,
    movers: usize,
    origin: &Origin,
    env: impl Fn(&str) -> Option<String>,
) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let mut companion = BTreeMap::new();
    let mut base_env = BTreeMap::new();
    for var in SECRET_VARS {
        let value = match env(var).filter(|v| !v.is_empty()) {
            Some(_) if origin.gives(var) => continue,
            Some(v) => Some(v),
            // A password read from STOW_PASSWORD_FILE reaches no mover
            // through a reference.
            None if *var == vars::PASSWORD => {
                options.password.as_ref().map(|p| p.expose().to_string())
            }
            None => None,
        };
        if let Some(v) = value {
            companion.insert(var.to_string(), v);
        }
    }
    for var in LOCATION_VARS {
        let Some(v) = env(var)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
        else {
            continue;
        };
        if origin.gives(var) && !origin.literal.contains(*var) {
            continue;
        }
        // `https://user:pass@host`: credentials, so not a plain variable.
        if v.contains('@') {
            companion.insert(var.to_string(), v);
        } else {
            base_env.insert(var.to_string(), v);
        }
    }
    for var in PASSED_ON {
        if let Some(v) = env(var)
            && !v.trim().is_empty()
        {
            base_env.insert(var.to_string(), v);
        }
    }
    base_env.insert(vars::RUN_ID.to_string(), run_id.to_string());
    // STOW_CHANNELS is shared out: with many volumes, many movers of
    // one stream each; with one volume, one mover with every stream.
    let channels = usize::from(options.channels).max(1);
    let mover_channels = (channels / movers.clamp(1, channels)).max(1);
    base_env.insert(vars::CHANNELS.to_string(), mover_channels.to_string());
    // The bandwidth limit is per pod: each mover in flight gets its
    // share, so all of them together stay at the limit.
    if let Some(rate) = &options.rate_limit {
        let in_flight = movers.clamp(1, channels) as u32;
        base_env.insert(vars::RATE_LIMIT.to_string(), rate.share(in_flight).to_env());
    }
    (companion, base_env)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use serde_json::json;

    fn config(extra: &[(&str, &str)]) -> Config {
        let mut v = vec![
            (vars::MODE, "backup"),
            (vars::REPOSITORY, "s3://backups/p"),
            (vars::PASSWORD, "pw-123"),
        ];
        v.extend_from_slice(extra);
        Config::from_vars(v.iter().map(|(k, v)| (k.to_string(), v.to_string())), None).unwrap()
    }

    fn env_of<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn movers_share_channels_and_the_bandwidth_limit() {
        let c = config(&[(vars::CHANNELS, "4"), (vars::RATE_LIMIT, "40MiB")]);
        let process = [
            (vars::REPOSITORY, "s3://backups/p"),
            ("AWS_SECRET_ACCESS_KEY", "sekrit"),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/var/run/token"),
            (vars::TIMEZONE, "Europe/Berlin"),
            (vars::RATE_LIMIT, "40MiB"),
        ];
        let none = Origin::default();
        // Six volumes: four movers in flight, one stream and 10 MiB/s each.
        let options = crate::modes::options::mover(&c);
        let (secret, base) = mover_env(&options, "run-1", 6, &none, env_of(&process));
        // Outside a pod nothing gives the secrets by reference: a Secret
        // at home carries them.
        assert_eq!(secret[vars::PASSWORD], "pw-123");
        assert_eq!(secret["AWS_SECRET_ACCESS_KEY"], "sekrit");
        assert!(!secret.contains_key("AWS_WEB_IDENTITY_TOKEN_FILE"));
        assert!(!base.contains_key(vars::PASSWORD));
        assert!(!base.contains_key("AWS_SECRET_ACCESS_KEY"));
        assert_eq!(base[vars::REPOSITORY], "s3://backups/p");
        assert_eq!(base[vars::CHANNELS], "1");
        assert_eq!(base[vars::RATE_LIMIT], "*=10MiB");
        assert_eq!(base[vars::TIMEZONE], "Europe/Berlin");
        assert_eq!(base[vars::RUN_ID], "run-1");
        // One volume: one mover with every stream and the whole limit.
        let (_, base) = mover_env(&options, "run-1", 1, &none, env_of(&process));
        assert_eq!(base[vars::CHANNELS], "4");
        assert_eq!(base[vars::RATE_LIMIT], "*=40MiB");
    }

    #[test]
    fn secrets_reach_movers_by_reference_only() {
        let c = config(&[]);
        let options = crate::modes::options::mover(&c);
        let process = [
            (vars::REPOSITORY, "s3://backups/p"),
            (vars::PASSWORD, "pw-123"),
            ("AWS_ACCESS_KEY_ID", "id"),
            ("AWS_SECRET_ACCESS_KEY", "sekrit"),
            ("AWS_SESSION_TOKEN", "tok"),
            ("AWS_ENDPOINT_URL", "https://user:pass@s3.example"),
        ];
        // The chart's pod: envFrom its credentials Secret, one key by
        // secretKeyRef, the session token as a literal.
        let origin = Origin {
            image: "img".into(),
            env_from: vec![json!({"secretRef": {"name": "creds"}})],
            env_refs: vec![json!({"name": "AWS_ACCESS_KEY_ID",
                "valueFrom": {"secretKeyRef": {"name": "s3", "key": "id"}}})],
            literal: BTreeSet::from([vars::REPOSITORY.to_string(), "AWS_SESSION_TOKEN".into()]),
            ca_mounts: Vec::new(),
        };
        let (secret, base) = mover_env(&options, "run-1", 1, &origin, env_of(&process));
        assert!(!secret.contains_key(vars::PASSWORD), "{secret:?}");
        assert!(!secret.contains_key("AWS_ACCESS_KEY_ID"));
        assert!(!secret.contains_key("AWS_SECRET_ACCESS_KEY"));
        // A literal secret of the pod is not copied into the Job spec.
        assert_eq!(secret["AWS_SESSION_TOKEN"], "tok");
        assert!(!base.contains_key("AWS_SESSION_TOKEN"));
        assert_eq!(base[vars::REPOSITORY], "s3://backups/p");
        assert!(
            !base
                .values()
                .any(|v| v.contains("sekrit") || v.contains("pw-123"))
        );
        // An endpoint with credentials in it is a secret too (here the
        // pod's envFrom gives it).
        assert!(!base.contains_key("AWS_ENDPOINT_URL"));
        let (secret, base) = mover_env(&options, "run-1", 1, &Origin::default(), env_of(&process));
        assert_eq!(secret["AWS_ENDPOINT_URL"], "https://user:pass@s3.example");
        assert!(!base.contains_key("AWS_ENDPOINT_URL"));
    }

    #[test]
    fn a_private_ca_mounted_from_a_config_map_reaches_movers() {
        let pod = json!({"spec": {
            "volumes": [
                {"name": "ca", "configMap": {"name": "corp-ca"}},
                {"name": "cache", "emptyDir": {}},
                {"name": "other", "secret": {"secretName": "x"}}],
            "containers": [{"name": "kubestow", "volumeMounts": [
                {"name": "ca", "mountPath": "/etc/corp-ca"},
                {"name": "cache", "mountPath": "/etc/corp-ca-cache"},
                {"name": "other", "mountPath": "/etc/other"}]}]}});
        let c = kubestow_container(&pod).unwrap();
        let got = ca_mounts(&pod, c, &["/etc/corp-ca/bundle.pem".to_string()]);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].0["mountPath"], "/etc/corp-ca");
        assert_eq!(got[0].0["readOnly"], true);
        assert_eq!(got[0].1["configMap"]["name"], "corp-ca");
        assert_eq!(got[0].0["name"], got[0].1["name"]);
        // A path no ConfigMap or Secret holds mounts nothing.
        assert!(ca_mounts(&pod, c, &["/etc/corp-ca-cache/x".to_string()]).is_empty());
        assert!(ca_mounts(&pod, c, &[]).is_empty());
    }

    #[test]
    fn references_come_from_the_kubestow_container() {
        let pod = json!({"spec": {"containers": [
            {"name": "sidecar", "image": "other"},
            {"name": "kubestow", "image": "kubestow:1",
             "envFrom": [{"secretRef": {"name": "creds"}}, {"prefix": "X_"}],
             "env": [{"name": "STOW_REPOSITORY", "value": "s3://b/p"},
                     {"name": "STOW_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                     {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": "s3", "key": "k"}}}]},
        ]}});
        let c = kubestow_container(&pod).unwrap();
        assert_eq!(c["image"], "kubestow:1");
        let mut o = Origin::default();
        references(c, &mut o);
        assert_eq!(o.env_from, vec![json!({"secretRef": {"name": "creds"}})]);
        let names: Vec<&str> = o
            .env_refs
            .iter()
            .filter_map(|e| str_at(e, "/name"))
            .collect();
        assert_eq!(names, ["AWS_SECRET_ACCESS_KEY"]);
        assert!(o.literal.contains(vars::REPOSITORY));
        assert!(o.gives("AWS_SECRET_ACCESS_KEY") && o.gives(vars::PASSWORD));
        assert!(!o.gives(vars::REPOSITORY));
    }
}
