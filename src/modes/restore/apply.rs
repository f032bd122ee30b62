//! Creating the plan's objects level by level, and filling restored claims.

use super::*;

impl Restorer<'_> {
    pub(super) async fn discover(&self) -> Result<Discovered, Error> {
        discover(&self.kube, self.channels)
            .await
            .map_err(|e| self.kube.cluster.err("discovering API resources", e).into())
    }

    /// Waits out namespaces that are Terminating, and plans a bare
    /// Namespace for target namespaces that neither exist nor come with
    /// the snapshot.
    pub(super) async fn prepare_namespaces(&self, items: &mut Vec<Item>) {
        let ns_type = ResourceType::namespaces();
        let targets: BTreeSet<String> = items
            .iter()
            .filter(|i| i.open())
            .filter_map(|i| {
                if i.rt.is("", "namespaces") {
                    Some(i.name.clone())
                } else {
                    i.ns.clone()
                }
            })
            .collect();
        let planned: HashSet<String> = items
            .iter()
            .filter(|i| i.open() && i.rt.is("", "namespaces"))
            .map(|i| i.name.clone())
            .collect();
        for ns in targets {
            match self.wait_namespace_gone_if_terminating(&ns).await {
                Ok(exists) => {
                    if !exists && !planned.contains(&ns) {
                        let mut it = item(&ns_type, None, None, &ns, BlobId([0; 32]));
                        it.blob = None;
                        it.obj = Some(Object::new(
                            &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
                        ));
                        it.target = Some(ns_type.clone());
                        it.notes.push("not in the snapshot; created empty".into());
                        items.push(it);
                    }
                }
                Err(why) => {
                    for it in items.iter_mut().filter(|i| {
                        i.open()
                            && (i.ns.as_deref() == Some(ns.as_str())
                                || (i.rt.is("", "namespaces") && i.name == ns))
                    }) {
                        it.done(Outcome::Failed, why.clone());
                    }
                }
            }
        }
    }

    /// `Ok(true)` if the namespace exists (and is not terminating),
    /// `Ok(false)` if it does not (or cannot be read).
    pub(super) async fn wait_namespace_gone_if_terminating(
        &self,
        ns: &str,
    ) -> Result<bool, String> {
        let rt = ResourceType::namespaces();
        let deadline = tokio::time::Instant::now() + NAMESPACE_WAIT;
        let mut logged = false;
        loop {
            match self.kube.get(&rt, None, ns).await {
                Ok(None) => return Ok(false),
                Ok(Some(live)) if live.pointer("/metadata/deletionTimestamp").is_none() => {
                    return Ok(true);
                }
                Ok(Some(_)) => {
                    if !logged {
                        info!(
                            namespace = ns,
                            "namespace is terminating; waiting until it is gone"
                        );
                        logged = true;
                    }
                    if tokio::time::Instant::now() > deadline {
                        return Err(format!(
                            "namespace {ns} is still terminating after {}s",
                            NAMESPACE_WAIT.as_secs()
                        ));
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                // Not allowed to look: let the creates speak for themselves.
                Err(_) => return Ok(true),
            }
        }
    }

    pub(super) async fn apply(&self, items: &mut Vec<Item>) -> Result<(), Error> {
        self.prepare_namespaces(items).await;
        items.sort_by_cached_key(|i| (order::level(&i.rt), i.label()));
        let mut by_level: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (n, it) in items.iter().enumerate() {
            by_level.entry(order::level(&it.rt)).or_default().push(n);
        }
        // Claims whose data could not be restored, by namespace: what
        // mounts them is held back.
        let mut unfilled: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (level, indices) in by_level {
            if self.ctx.cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
            for &n in &indices {
                let it = &mut items[n];
                if !it.open() {
                    continue;
                }
                let (Some(ns), Some(obj)) = (it.ns.as_deref(), it.obj.as_ref()) else {
                    continue;
                };
                let Some(claims) = unfilled.get(ns) else {
                    continue;
                };
                if let Some(claim) = super::hold::mounts_unfilled(&obj.value(), claims) {
                    it.done(
                        Outcome::Failed,
                        format!(
                            "not created: it mounts claim {ns}/{claim}, whose data could not be restored (run the restore again)"
                        ),
                    );
                }
            }
            if level > order::CRDS {
                self.after_crds(items).await?;
            }
            let mut open: Vec<usize> = indices.into_iter().filter(|n| items[*n].open()).collect();
            if level == order::level(&crate::cluster::types::claims()) {
                // Claims with data are created by the hand-over, on their
                // filled volumes, before any workload that mounts them.
                for (ns, claim) in self.fill_volumes(items, &open).await {
                    unfilled.entry(ns).or_default().insert(claim);
                }
                if self.ctx.cancel.is_cancelled() {
                    return Err(Error::Cancelled);
                }
                open.retain(|n| items[*n].open());
            }
            if open.is_empty() {
                continue;
            }
            info!(level = %order::level_name(level), objects = open.len(), "restoring");
            let results: Vec<(usize, Outcome, String)> = {
                let items = &*items;
                futures::stream::iter(open)
                    .map(|n| async move {
                        let (o, why) = self.apply_one(&items[n]).await;
                        (n, o, why)
                    })
                    .buffer_unordered(self.channels)
                    .collect()
                    .await
            };
            self.progress.add_objects(results.len() as u64);
            for (n, outcome, why) in results {
                items[n].done(outcome, why);
            }
        }
        Ok(())
    }

    /// Restores the open claims among `open` that have data in the
    /// snapshot: each is filled at home and its volume handed over to the
    /// claim. A claim that already exists is left open, for `STOW_EXISTING`.
    /// Returns the claims (namespace, name) that could not be restored.
    pub(super) async fn fill_volumes(
        &self,
        items: &mut [Item],
        open: &[usize],
    ) -> Vec<(String, String)> {
        let Some(v) = &self.volumes else {
            return Vec::new();
        };
        let mut which = Vec::new();
        let mut fills = Vec::new();
        for &n in open {
            let i = &items[n];
            if !i.rt.is("", "persistentvolumeclaims") {
                continue;
            }
            let (Some(source_ns), Some(namespace), Some(body)) = (
                i.source_ns.as_deref(),
                i.ns.clone(),
                i.obj.as_ref().map(Object::value),
            ) else {
                continue;
            };
            let volume = format!("{source_ns}/{}", i.name);
            if !v.available.contains(&volume) {
                continue;
            }
            which.push(n);
            fills.push(crate::mover::restore::Fill {
                volume,
                namespace,
                claim: i.name.clone(),
                body,
            });
        }
        if fills.is_empty() {
            return Vec::new();
        }
        let results = crate::mover::restore::fill(
            &self.kube,
            &crate::modes::options::mover(v.config),
            self.ctx,
            &v.snapshot,
            &fills,
        )
        .await;
        let mut filled = 0;
        let mut failed = Vec::new();
        let mut report = Report::default();
        for (n, r) in which.into_iter().zip(results) {
            let it = &mut items[n];
            match r {
                crate::mover::restore::Filled::Restored => {
                    filled += 1;
                    let mut notes = it.notes.clone();
                    notes.push("filled at home and handed over".into());
                    it.done(Outcome::Created, notes.join("; "));
                }
                crate::mover::restore::Filled::Exists => {
                    it.notes
                        .push("already exists: its data is left as it is".into());
                }
                crate::mover::restore::Filled::Failed(e) => {
                    failed.push((it.ns.clone().unwrap_or_default(), it.name.clone()));
                    report.fail_item(
                        format!("volume {}/{}", it.ns.as_deref().unwrap_or(""), it.name),
                        e.to_string(),
                    );
                    it.done(Outcome::Failed, format!("volume not restored: {e}"));
                }
            }
        }
        self.progress.add_objects(filled);
        report.count("volumes_restored", filled);
        v.report
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .absorb(report);
        failed
    }

    /// Once the CRD level is done: wait until the restored CRDs are
    /// Established, then find the types of the custom resources that
    /// waited for them. Runs once.
    pub(super) async fn after_crds(&self, items: &mut [Item]) -> Result<(), Error> {
        let waiting = items.iter().any(|i| i.open() && i.target.is_none());
        if !waiting {
            return Ok(());
        }
        let crds: Vec<(ResourceType, String)> = items
            .iter()
            .filter(|i| {
                i.rt.is(select::CRDS.0, select::CRDS.1)
                    && matches!(i.result, Some((o, _)) if o != Outcome::Failed)
            })
            .filter_map(|i| Some((i.target.clone()?, i.name.clone())))
            .collect();
        for (rt, name) in &crds {
            self.wait_established(rt, name).await;
        }
        // Discovery follows an Established CRD within moments.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let discovered = self.discover().await?;
            let missing = items.iter().any(|i| {
                i.open()
                    && i.target.is_none()
                    && discovered
                        .find(&i.rt.group, &i.rt.version, &i.rt.kind)
                        .is_none()
            });
            if !missing || tokio::time::Instant::now() > deadline {
                resolve(items, &discovered, false);
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    pub(super) async fn wait_established(&self, rt: &ResourceType, name: &str) {
        let deadline = tokio::time::Instant::now() + SETTLE_WAIT;
        loop {
            let established = match self.kube.get(rt, None, name).await {
                Ok(Some(crd)) => crd
                    .pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Established" && c["status"] == "True"),
                _ => false,
            };
            if established {
                info!(crd = name, "established");
                return;
            }
            if tokio::time::Instant::now() > deadline {
                warn!(
                    crd = name,
                    "not Established after {}s",
                    SETTLE_WAIT.as_secs()
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Which setting decides what happens to an existing object of type
    /// `rt`, and its variable. Cluster-scoped objects (but Namespaces,
    /// which are what a namespaced restore restores) are shared by every
    /// namespace, so `STOW_EXISTING` never reaches them.
    pub(super) fn policy(&self, rt: &ResourceType) -> (Existing, &'static str) {
        policy_for(rt, self.existing, self.existing_cluster)
    }

    /// Creates one object, then follows `STOW_EXISTING` (or
    /// `STOW_EXISTING_CLUSTER_RESOURCES`) if it exists.
    pub(super) async fn apply_one(&self, it: &Item) -> (Outcome, String) {
        if self.ctx.cancel.is_cancelled() {
            return (Outcome::Skipped, "the run was cancelled first".into());
        }
        let (Some(rt), Some(obj)) = (it.target.as_ref(), it.obj.as_ref()) else {
            return (Outcome::Failed, "no target type".into());
        };
        let ns = it.ns.as_deref();
        let mut notes = it.notes.clone();
        let mut obj = obj.value();
        let created = self.create(rt, ns, &mut obj, &mut notes).await;
        match created {
            Ok(()) => (Outcome::Created, notes.join("; ")),
            Err(e) if status(&e) == Some(409) && reason(&e) == Some("AlreadyExists") => {
                // Deleting a Namespace or a CRD would take everything in it:
                // those are updated instead of recreated.
                let cascades = rt.is("", "namespaces") || rt.is(select::CRDS.0, select::CRDS.1);
                let (existing, var) = self.policy(rt);
                match existing {
                    Existing::Skip => (Outcome::Skipped, format!("already exists ({var}=skip)")),
                    Existing::Update => self.update(rt, ns, &it.name, obj, notes).await,
                    Existing::Recreate if cascades => {
                        notes.push(
                            "updated, not recreated: deleting it would delete what it holds".into(),
                        );
                        self.update(rt, ns, &it.name, obj, notes).await
                    }
                    Existing::Recreate => self.recreate(rt, ns, &it.name, obj, notes).await,
                }
            }
            Err(e) => (Outcome::Failed, message(&e)),
        }
    }

    /// POST, retrying once without nodePorts that are already taken.
    pub(super) async fn create(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        obj: &mut Value,
        notes: &mut Vec<String>,
    ) -> Result<(), kube::Error> {
        match self.kube.create(rt, ns, obj, false).await {
            Ok(_) => Ok(()),
            Err(e)
                if rt.is("", "services")
                    && status(&e) == Some(422)
                    && message(&e).contains("already allocated")
                    && message(&e).contains("nodePort") =>
            {
                let taken = rewrite::allocated_node_ports(&message(&e));
                rewrite::drop_node_ports(obj, &taken);
                notes.retain(|n| !n.starts_with("keeps nodePort"));
                notes.push(format!(
                    "nodePort {} already allocated in the target; the server assigned a new one",
                    taken
                        .iter()
                        .map(i64::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                ));
                self.kube.create(rt, ns, obj, false).await.map(|_| ())
            }
            Err(e) => Err(e),
        }
    }

    pub(super) async fn update(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        obj: Value,
        mut notes: Vec<String>,
    ) -> (Outcome, String) {
        for _ in 0..3 {
            let live = match self.kube.get(rt, ns, name).await {
                Ok(Some(l)) => l,
                Ok(None) => {
                    let mut obj = obj.clone();
                    return match self.create(rt, ns, &mut obj, &mut notes).await {
                        Ok(()) => (Outcome::Created, notes.join("; ")),
                        Err(e) => (Outcome::Failed, message(&e)),
                    };
                }
                Err(e) => return (Outcome::Failed, message(&e)),
            };
            let mut ours = obj.clone();
            rewrite::carry_over(rt, &mut ours, &live);
            match self.kube.replace(rt, ns, name, &ours).await {
                Ok(_) => return (Outcome::Updated, notes.join("; ")),
                // Changed between get and put: try again.
                Err(e) if status(&e) == Some(409) => continue,
                Err(e) => {
                    return (
                        Outcome::Failed,
                        format!(
                            "exists and cannot be updated: {} (STOW_EXISTING=recreate replaces it)",
                            message(&e)
                        ),
                    );
                }
            }
        }
        (
            Outcome::Failed,
            "exists and kept changing while it was updated".into(),
        )
    }

    pub(super) async fn recreate(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        mut obj: Value,
        mut notes: Vec<String>,
    ) -> (Outcome, String) {
        let old_uid = match self.kube.get(rt, ns, name).await {
            Ok(Some(l)) => l.pointer("/metadata/uid").cloned(),
            Ok(None) => None,
            Err(e) => return (Outcome::Failed, message(&e)),
        };
        if let Err(e) = self.kube.delete(rt, ns, name).await {
            return (
                Outcome::Failed,
                format!("cannot delete the existing object: {}", message(&e)),
            );
        }
        let deadline = tokio::time::Instant::now() + SETTLE_WAIT;
        loop {
            match self.kube.get(rt, ns, name).await {
                Ok(None) => break,
                Ok(Some(l)) if l.pointer("/metadata/uid").cloned() != old_uid => break,
                Ok(Some(l)) => {
                    if tokio::time::Instant::now() > deadline {
                        return (
                            Outcome::Failed,
                            format!(
                                "the existing object is still there {}s after deletion (finalizers: {})",
                                SETTLE_WAIT.as_secs(),
                                l.pointer("/metadata/finalizers").unwrap_or(&Value::Null)
                            ),
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return (Outcome::Failed, message(&e)),
            }
        }
        notes.insert(0, "replaced the existing object".into());
        match self.create(rt, ns, &mut obj, &mut notes).await {
            Ok(()) => (Outcome::Created, notes.join("; ")),
            // A controller recreated it first (a namespace's `default`
            // ServiceAccount, say): make that one match instead.
            Err(e) if status(&e) == Some(409) => {
                notes[0] = "deleted, recreated by the cluster meanwhile, then updated".into();
                self.update(rt, ns, name, obj, notes).await
            }
            Err(e) => (Outcome::Failed, message(&e)),
        }
    }

    /// Plans without changing anything: every item gets what would happen
    /// to it; an object that exists is a conflict. Prints the plan.
    pub(super) async fn dry_run(&self, items: &mut [Item]) -> Vec<Value> {
        // Existing names per (type, namespace), one metadata list each.
        let mut keys: BTreeSet<(ResourceType, Option<String>)> = BTreeSet::new();
        for it in items.iter().filter(|i| i.open()) {
            if let Some(t) = &it.target {
                keys.insert((t.clone(), it.ns.clone()));
            }
        }
        let listed: Vec<(Scope, Result<HashSet<String>, String>)> = futures::stream::iter(keys)
            .map(|(rt, ns)| async move {
                let r = self
                    .kube
                    .list_names(&rt, ns.as_deref())
                    .await
                    .map_err(|e| message(&e));
                ((rt, ns), r)
            })
            .buffer_unordered(self.channels)
            .collect()
            .await;
        let existing: HashMap<Scope, Result<HashSet<String>, String>> =
            listed.into_iter().collect();
        let mut conflicts = Vec::new();
        for it in items.iter_mut().filter(|i| i.open()) {
            let Some(t) = it.target.clone() else {
                it.done(Outcome::Created, "would create once its CRD is Established");
                continue;
            };
            let (policy, var) = self.policy(&t);
            let exists = match existing.get(&(t, it.ns.clone())) {
                Some(Ok(names)) => names.contains(&it.name),
                Some(Err(e)) => {
                    it.done(Outcome::Failed, format!("cannot check the target: {e}"));
                    continue;
                }
                None => false,
            };
            if exists {
                let what = match policy {
                    Existing::Skip => format!("exists; would skip ({var}=skip)"),
                    Existing::Update => format!("exists; would update ({var}=update)"),
                    Existing::Recreate => {
                        format!("exists; would delete and recreate ({var}=recreate)")
                    }
                };
                conflicts.push(json!({"item": it.label(), "conflict": what}));
                let outcome = match policy {
                    Existing::Skip => Outcome::Skipped,
                    Existing::Update => Outcome::Updated,
                    Existing::Recreate => Outcome::Created,
                };
                it.done(outcome, what);
            } else {
                let why = it.notes.join("; ");
                it.done(Outcome::Created, why);
            }
        }
        for it in items.iter() {
            let (o, why) = it.result.as_ref().expect("decided");
            let verb = match o {
                Outcome::Created => "create",
                Outcome::Updated => "update",
                Outcome::Skipped => "skip",
                Outcome::Failed => "FAIL",
            };
            let level = order::level_name(order::level(&it.rt));
            if why.is_empty() {
                println!("plan: {verb:<6} {:<40} [{level}]", it.label());
            } else {
                println!("plan: {verb:<6} {:<40} [{level}] {why}", it.label());
            }
            for w in &it.warnings {
                println!("plan: {:<6} {:<40} {w}", "WARN", it.label());
            }
        }
        println!(
            "plan: {} conflict(s) with existing objects",
            conflicts.len()
        );
        conflicts
    }
}
