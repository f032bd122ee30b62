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
//!
//! A group-version that `/apis` lists but that answers 404 is in transition:
//! a CustomResourceDefinition created a moment ago is listed some tens of
//! milliseconds before its group-version is served (on 1.20 as on 1.37), and
//! one being deleted drops out. So a 404 is read again for a moment, and if
//! it persists and `/apis` no longer lists the group-version, it is skipped
//! (nothing can be stored under it) instead of being reported.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResourceList;

use super::ResourceType;
use super::api::{Kube, message, status};

/// How often, and how far apart, a listed group-version that answers 404 is
/// read again (about 1 s in all; the gap measured is 10–40 ms).
const NOT_SERVED_RETRIES: u32 = 10;
const NOT_SERVED_DELAY: Duration = Duration::from_millis(100);

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
                let r = until_served(|| async {
                    if group.is_empty() {
                        kube.retry(&gv, || client.list_core_api_resources(&gv))
                            .await
                    } else {
                        kube.retry(&gv, || client.list_api_group_resources(&gv))
                            .await
                    }
                })
                .await;
                (group, gv, r)
            })
            .buffered(parallel.max(1))
            .collect()
            .await;

    let mut out = Discovered::default();
    let mut seen: BTreeSet<(String, String)> = BTreeSet::new();
    // The group-versions listed now, read once if some 404 persisted.
    let mut listed_now: Option<BTreeSet<String>> = None;
    for (group, gv, list) in lists {
        let list = match list {
            Ok(l) => l,
            Err(e)
                if status(&e) == Some(404) && !still_listed(kube, &gv, &mut listed_now).await =>
            {
                tracing::debug!(group_version = %gv, "no longer served (its CustomResourceDefinition was deleted during discovery); skipped");
                continue;
            }
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

/// Runs `fetch` until it answers something other than 404, at most
/// [`NOT_SERVED_RETRIES`] more times: a group-version `/apis` lists may not be
/// served yet.
async fn until_served<T, F, Fut>(fetch: F) -> Result<T, kube::Error>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, kube::Error>>,
{
    let mut r = fetch().await;
    for _ in 0..NOT_SERVED_RETRIES {
        match &r {
            Err(e) if status(e) == Some(404) => {}
            _ => break,
        }
        tokio::time::sleep(NOT_SERVED_DELAY).await;
        r = fetch().await;
    }
    r
}

/// Whether `/api` or `/apis` still lists `gv` (read once into `cache`). If
/// they cannot be read, it counts as listed, so the 404 is reported.
async fn still_listed(kube: &Kube, gv: &str, cache: &mut Option<BTreeSet<String>>) -> bool {
    if cache.is_none() {
        let client = kube.client();
        let core = client.list_core_api_versions().await;
        let groups = client.list_api_groups().await;
        let (Ok(core), Ok(groups)) = (core, groups) else {
            return true;
        };
        let mut listed: BTreeSet<String> = core.versions.into_iter().collect();
        for g in groups.groups {
            listed.extend(g.versions.into_iter().map(|v| v.group_version));
        }
        *cache = Some(listed);
    }
    cache.as_ref().is_some_and(|l| l.contains(gv))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn api_error(code: u16) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure("not found", "NotFound")
                .with_code(code)
                .boxed(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_group_version_not_served_yet_is_read_again() {
        let calls = AtomicU32::new(0);
        let started = tokio::time::Instant::now();
        let r = until_served(|| async {
            if calls.fetch_add(1, Ordering::SeqCst) < 3 {
                Err(api_error(404))
            } else {
                Ok("served")
            }
        })
        .await;
        assert_eq!(r.unwrap(), "served");
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        assert_eq!(started.elapsed(), NOT_SERVED_DELAY * 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lasting_404_gives_up_and_other_errors_are_not_repeated() {
        let calls = AtomicU32::new(0);
        let r: Result<(), _> = until_served(|| async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(api_error(404))
        })
        .await;
        assert_eq!(status(&r.unwrap_err()), Some(404));
        assert_eq!(calls.load(Ordering::SeqCst), NOT_SERVED_RETRIES + 1);

        let calls = AtomicU32::new(0);
        let r: Result<(), _> = until_served(|| async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(api_error(403))
        })
        .await;
        assert_eq!(status(&r.unwrap_err()), Some(403));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

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
