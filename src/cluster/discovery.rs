//! Discovery: every resource type the server serves, each once, at the
//! server's preferred version of its group.
//!
//! Like client-go's `ServerPreferredResources`: the versions of a group are
//! walked preferred first, and a resource is taken from the first version
//! that serves it. So `batch/v1` Jobs and, on a 1.20 server, `batch/v1beta1`
//! CronJobs are both found. Custom resources appear like any other group.
//! This is the legacy (per group-version) discovery that 1.20 serves; the
//! group-versions are fetched concurrently, and a group-version that fails
//! (an aggregated API whose backend is down, typically) is reported
//! instead of failing the whole run.

use std::collections::BTreeSet;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResourceList;

use super::ResourceType;
use super::api::{Kube, message};

/// A served type and its verbs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveredType {
    /// The type, at the version it was discovered under.
    pub rt: ResourceType,
    /// The API verbs the server allows on it (`list`, `create`, …).
    pub verbs: Vec<String>,
}

impl DiscoveredType {
    /// Whether the server allows `verb` on this type.
    pub fn can(&self, verb: &str) -> bool {
        self.verbs.iter().any(|v| v == verb)
    }
}

/// What the server serves.
#[derive(Debug, Clone, Default)]
pub struct Discovered {
    /// Each resource once, at its preferred version.
    pub types: Vec<DiscoveredType>,
    /// Every served version of every resource.
    pub all: Vec<DiscoveredType>,
    /// Group-versions that could not be read: (group/version, message).
    pub failures: Vec<(String, String)>,
}

impl Discovered {
    /// The type serving `kind` in `group`: the same version when served,
    /// else the preferred one.
    pub fn find(&self, group: &str, version: &str, kind: &str) -> Option<&DiscoveredType> {
        self.exact(group, version, kind).or_else(|| {
            self.types
                .iter()
                .find(|t| t.rt.group == group && t.rt.kind == kind)
        })
    }

    /// The exact group/version/kind, if served at all.
    pub fn exact(&self, group: &str, version: &str, kind: &str) -> Option<&DiscoveredType> {
        self.all
            .iter()
            .find(|t| t.rt.group == group && t.rt.version == version && t.rt.kind == kind)
    }

    /// The preferred-version type with this plural name in `group`.
    pub fn by_plural(&self, group: &str, plural: &str) -> Option<&DiscoveredType> {
        self.types
            .iter()
            .find(|t| t.rt.group == group && t.rt.plural == plural)
    }
}

/// Runs discovery with at most `parallel` requests in flight.
pub(crate) async fn discover(kube: &Kube, parallel: usize) -> Result<Discovered, kube::Error> {
    let client = kube.client();
    let core = kube
        .retry("/api", || client.list_core_api_versions())
        .await?;
    let groups = kube.retry("/apis", || client.list_api_groups()).await?;

    // (group, group/version) in the order each group should be walked.
    let mut order: Vec<(String, String)> = core
        .versions
        .iter()
        .map(|v| (String::new(), v.clone()))
        .collect();
    for g in &groups.groups {
        let preferred = g
            .preferred_version
            .as_ref()
            .map(|p| p.group_version.clone());
        if let Some(p) = &preferred {
            order.push((g.name.clone(), p.clone()));
        }
        for v in &g.versions {
            if Some(&v.group_version) != preferred.as_ref() {
                order.push((g.name.clone(), v.group_version.clone()));
            }
        }
    }

    let lists: Vec<(String, String, Result<APIResourceList, kube::Error>)> =
        futures::stream::iter(order)
            .map(|(group, gv)| async move {
                let r = if group.is_empty() {
                    kube.retry(&gv, || client.list_core_api_resources(&gv))
                        .await
                } else {
                    kube.retry(&gv, || client.list_api_group_resources(&gv))
                        .await
                };
                (group, gv, r)
            })
            .buffered(parallel.max(1))
            .collect()
            .await;

    let mut out = Discovered::default();
    let mut seen: BTreeSet<(String, String)> = BTreeSet::new();
    for (group, gv, list) in lists {
        let list = match list {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(group_version = %gv, error = %message(&e), "discovery failed");
                out.failures.push((gv, message(&e)));
                continue;
            }
        };
        let version = gv.rsplit('/').next().unwrap_or(&gv).to_string();
        for r in list.resources {
            if r.name.contains('/') {
                continue; // subresource
            }
            let rgroup = r.group.clone().unwrap_or_else(|| group.clone());
            let t = DiscoveredType {
                rt: ResourceType {
                    group: rgroup.clone(),
                    version: r.version.clone().unwrap_or_else(|| version.clone()),
                    kind: r.kind.clone(),
                    plural: r.name.clone(),
                    namespaced: r.namespaced,
                },
                verbs: r.verbs.clone(),
            };
            if seen.insert((rgroup, r.name.clone())) {
                out.types.push(t.clone());
            }
            out.all.push(t);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(group: &str, version: &str, kind: &str) -> DiscoveredType {
        DiscoveredType {
            rt: ResourceType {
                group: group.into(),
                version: version.into(),
                kind: kind.into(),
                plural: format!("{}s", kind.to_lowercase()),
                namespaced: true,
            },
            verbs: vec!["list".into()],
        }
    }

    #[test]
    fn find_prefers_the_same_version() {
        let d = Discovered {
            types: vec![t("batch", "v1", "CronJob")],
            all: vec![
                t("batch", "v1", "CronJob"),
                t("batch", "v1beta1", "CronJob"),
            ],
            failures: vec![],
        };
        assert_eq!(
            d.find("batch", "v1beta1", "CronJob").unwrap().rt.version,
            "v1beta1"
        );
        assert_eq!(d.find("batch", "v2", "CronJob").unwrap().rt.version, "v1");
        assert!(d.find("batch", "v1", "Job").is_none());
        assert!(d.exact("batch", "v2", "CronJob").is_none());
    }
}
