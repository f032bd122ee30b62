use super::*;
use crate::cluster::discovery::DiscoveredType;
use crate::config::Selection;

fn run(id: &str, secs: i64, resources: bool, cluster: &str, namespaces: &[&str]) -> Run {
    let mut m = SnapshotManifest::new(id, 0, 1, "default");
    m.time = jiff::Timestamp::from_second(secs).unwrap();
    m.resources = resources.then_some(BlobId([1; 32]));
    m.cluster_id = Some(cluster.into());
    m.stats = json!({ "namespaces": namespaces });
    let mut sid = [0u8; 32];
    sid[..id.len().min(32)].copy_from_slice(&id.as_bytes()[..id.len().min(32)]);
    Run {
        run_id: id.into(),
        time: m.time,
        parts: vec![(SnapshotId(sid), m)],
        complete: true,
    }
}

fn opts() -> RestoreOptions {
    RestoreOptions {
        point: None,
        snapshot: None,
        source_cluster: None,
        namespace_map: BTreeMap::new(),
        storage_class_map: BTreeMap::new(),
        existing: Existing::Skip,
        existing_cluster: Existing::Skip,
        dry_run: false,
        volumes: true,
        host_volumes: BTreeSet::new(),
    }
}

#[test]
fn restore_point_picks_the_newest_at_or_before() {
    let runs = vec![
        run("a", 100, true, "c1", &["shop"]),
        run("b", 200, true, "c1", &["shop"]),
        run("c", 300, true, "c2", &["other"]),
        run("v", 350, false, "c1", &["shop"]),
    ];
    let all = Selector::new(&Selection::default()).unwrap();
    let at = |secs: i64| {
        let mut o = opts();
        o.point = Some(jiff::Timestamp::from_second(secs).unwrap());
        o
    };
    assert_eq!(choose(&runs, &at(150), &all).unwrap().1.run_id, "a");
    assert_eq!(choose(&runs, &at(200), &all).unwrap().1.run_id, "b");
    assert_eq!(choose(&runs, &at(400), &all).unwrap().1.run_id, "c");
    assert_eq!(choose(&runs, &opts(), &all).unwrap().1.run_id, "c");
    let err = choose(&runs, &at(50), &all).unwrap_err().to_string();
    assert!(
        err.contains("STOW_RESTORE_POINT") && err.contains("before the oldest"),
        "{err}"
    );

    let mut o = at(400);
    o.source_cluster = Some("c1".into());
    assert_eq!(choose(&runs, &o, &all).unwrap().1.run_id, "b");
    let shop = Selector::new(&Selection {
        namespaces: vec!["shop".into()],
        ..Selection::default()
    })
    .unwrap();
    assert_eq!(choose(&runs, &at(400), &shop).unwrap().1.run_id, "b");
}

#[test]
fn snapshot_by_id_prefix_or_run() {
    let runs = vec![
        run("a", 100, true, "c", &[]),
        run("b", 200, false, "c", &[]),
    ];
    let all = Selector::new(&Selection::default()).unwrap();
    let mut o = opts();
    o.snapshot = Some("a".into());
    assert_eq!(choose(&runs, &o, &all).unwrap().1.run_id, "a");
    o.snapshot = Some(runs[0].parts[0].0.to_hex()[..10].to_string());
    assert_eq!(choose(&runs, &o, &all).unwrap().1.run_id, "a");
    o.snapshot = Some("b".into());
    assert!(
        choose(&runs, &o, &all)
            .unwrap_err()
            .to_string()
            .contains("no Kubernetes resources")
    );
    o.snapshot = Some("zzz".into());
    assert!(choose(&runs, &o, &all).is_err());
}

async fn store(w: &crate::repo::Writer, v: Value) -> BlobId {
    w.add(BlobKind::Object, Bytes::from(v.to_string()))
        .await
        .unwrap()
        .0
}

fn rt(group: &str, kind: &str, plural: &str, namespaced: bool) -> ResourceType {
    ResourceType {
        group: group.into(),
        version: "v1".into(),
        kind: kind.into(),
        plural: plural.into(),
        namespaced,
    }
}

/// `auto` takes the cluster objects the selected ones use: the CRD of
/// a custom resource, a claim's volume and class, the class of that
/// volume, a binding's ClusterRole; nothing else.
#[tokio::test]
async fn auto_cluster_objects_follow_references() {
    let repo = crate::resources::catalogue::tests::mem_repo().await;
    let w = repo.writer(1);
    let mut cat = Catalogue::default();
    let obj = |kind: &str, name: &str, extra: Value| {
        let mut v = json!({"kind": kind, "metadata": {"name": name, "namespace": "shop"}});
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        v
    };
    let pvc = rt("", "PersistentVolumeClaim", "persistentvolumeclaims", true);
    let rb = rt(
        "rbac.authorization.k8s.io",
        "RoleBinding",
        "rolebindings",
        true,
    );
    let widget = rt("example.com", "Widget", "widgets", true);
    let pv = rt("", "PersistentVolume", "persistentvolumes", false);
    let sc = rt("storage.k8s.io", "StorageClass", "storageclasses", false);
    let cr = rt(
        "rbac.authorization.k8s.io",
        "ClusterRole",
        "clusterroles",
        false,
    );
    let crd = rt(
        "apiextensions.k8s.io",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        false,
    );
    let id = store(
        &w,
        obj(
            "PersistentVolumeClaim",
            "data",
            json!({"spec": {"volumeName": "pv-1", "storageClassName": "fast"}}),
        ),
    )
    .await;
    cat.insert(Some("shop"), &pvc, "data", id);
    let id = store(
        &w,
        obj(
            "RoleBinding",
            "b",
            json!({"roleRef": {"kind": "ClusterRole", "name": "view"}}),
        ),
    )
    .await;
    cat.insert(Some("shop"), &rb, "b", id);
    let id = store(&w, obj("Widget", "w", json!({}))).await;
    cat.insert(Some("shop"), &widget, "w", id);
    for (t, kind, name, extra) in [
        (
            &pv,
            "PersistentVolume",
            "pv-1",
            json!({"spec": {"storageClassName": "slow"}}),
        ),
        (&pv, "PersistentVolume", "pv-2", json!({})),
        (&sc, "StorageClass", "fast", json!({})),
        (&sc, "StorageClass", "slow", json!({})),
        (&sc, "StorageClass", "unused", json!({})),
        (&cr, "ClusterRole", "view", json!({})),
        (&cr, "ClusterRole", "admin", json!({})),
        (
            &crd,
            "CustomResourceDefinition",
            "widgets.example.com",
            json!({}),
        ),
        (
            &crd,
            "CustomResourceDefinition",
            "gadgets.example.com",
            json!({}),
        ),
    ] {
        let id = store(&w, obj(kind, name, extra)).await;
        cat.insert(None, t, name, id);
    }
    w.finish().await.unwrap();
    let selector = Selector::new(&Selection::default()).unwrap();
    let items = plan(&repo, &cat, &selector, &Maps::default()).await;
    let mut cluster: Vec<String> = items
        .iter()
        .filter(|i| !i.rt.namespaced)
        .map(|i| i.label())
        .collect();
    cluster.sort();
    assert_eq!(
        cluster,
        [
            "clusterroles.rbac.authorization.k8s.io view",
            "customresourcedefinitions.apiextensions.k8s.io widgets.example.com",
            "persistentvolumes pv-1",
            "storageclasses.storage.k8s.io fast",
            "storageclasses.storage.k8s.io slow",
        ]
    );
    assert!(items.iter().all(|i| i.open()));
}

#[test]
fn stored_objects_are_checked() {
    let rt = ResourceType {
        group: String::new(),
        version: "v1".into(),
        kind: "ConfigMap".into(),
        plural: "configmaps".into(),
        namespaced: true,
    };
    assert!(
        check_object(
            &rt,
            "a",
            br#"{"kind":"ConfigMap","metadata":{"name":"a"}}"#,
            None
        )
        .is_ok()
    );
    let e = check_object(&rt, "a", b"{oops", None).unwrap_err();
    assert!(e.contains("not JSON"), "{e}");
    let e = check_object(
        &rt,
        "a",
        br#"{"kind":"Secret","metadata":{"name":"a"}}"#,
        None,
    )
    .unwrap_err();
    assert!(e.contains("kind Secret"), "{e}");
    assert!(check_object(&rt, "a", b"[1]", None).is_err());
    // Filed under one name, the object would be created under another.
    let e = check_object(
        &rt,
        "view",
        br#"{"kind":"ConfigMap","metadata":{"name":"cluster-admin"}}"#,
        None,
    )
    .unwrap_err();
    assert!(
        e.contains("named cluster-admin") && e.contains("catalogue says view"),
        "{e}"
    );
}

fn served(group: &str, kind: &str, plural: &str, namespaced: bool) -> DiscoveredType {
    DiscoveredType {
        rt: rt(group, kind, plural, namespaced),
        verbs: vec!["create".into()],
    }
}

fn discovered() -> Discovered {
    let types = vec![
        served("", "ConfigMap", "configmaps", true),
        served(RBAC, "RoleBinding", "rolebindings", true),
        served(RBAC, "ClusterRoleBinding", "clusterrolebindings", false),
        served(RBAC, "ClusterRole", "clusterroles", false),
        served("storage.k8s.io", "StorageClass", "storageclasses", false),
        served("storage.k8s.io", "CSIDriver", "csidrivers", false),
    ];
    Discovered {
        all: types.clone(),
        types,
        failures: vec![],
    }
}

const RBAC: &str = "rbac.authorization.k8s.io";

/// An item as the plan makes it: `ns` is where the catalogue stores it
/// (`None`: with the cluster-scoped objects).
fn stored(t: ResourceType, ns: Option<&str>, obj: Value) -> Item {
    let name = obj["metadata"]["name"].as_str().unwrap().to_string();
    let mut it = item(&t, ns, ns, &name, BlobId([2; 32]));
    it.obj = Some(Object::new(&obj));
    it
}

fn failure(it: &Item) -> &str {
    match &it.result {
        Some((Outcome::Failed, why)) => why,
        other => panic!("{} not refused: {other:?}", it.label()),
    }
}

/// A hostile repository: objects whose stored scope disagrees with the
/// cluster are refused, each naming what disagrees; the honest ones
/// resolve.
#[test]
fn objects_whose_stored_scope_disagrees_with_the_cluster_are_refused() {
    let crb = |ns: Option<&str>| {
        json!({"kind": "ClusterRoleBinding", "metadata": {"name": "evil", "namespace": ns},
               "roleRef": {"kind": "ClusterRole", "name": "cluster-admin"}})
    };
    let mut items = vec![
        // A ClusterRoleBinding under a namespace, its type claimed
        // namespaced as the catalogue of a namespace would.
        stored(
            rt(RBAC, "ClusterRoleBinding", "clusterrolebindings", true),
            Some("shop"),
            crb(Some("shop")),
        ),
        // The same with its type honestly cluster-scoped.
        stored(
            rt(RBAC, "ClusterRoleBinding", "clusterrolebindings", false),
            Some("shop"),
            crb(None),
        ),
        // A RoleBinding with the cluster-scoped objects.
        stored(
            rt(RBAC, "RoleBinding", "rolebindings", true),
            None,
            json!({"kind": "RoleBinding", "metadata": {"name": "rb"}}),
        ),
        // In a namespace, but the catalogue says cluster-scoped (which
        // would pass the label selector by).
        stored(
            rt("", "ConfigMap", "configmaps", false),
            Some("shop"),
            json!({"kind": "ConfigMap", "metadata": {"name": "flag", "namespace": "shop"}}),
        ),
        // Stored in one namespace, naming another.
        stored(
            rt("", "ConfigMap", "configmaps", true),
            Some("shop"),
            json!({"kind": "ConfigMap", "metadata": {"name": "moved", "namespace": "kube-system"}}),
        ),
        // A cluster-scoped object naming a namespace.
        stored(
            rt(RBAC, "ClusterRole", "clusterroles", false),
            None,
            json!({"kind": "ClusterRole", "metadata": {"name": "view", "namespace": "shop"}}),
        ),
        // A CSIDriver filed as a StorageClass, to be pulled in by a claim.
        stored(
            rt("storage.k8s.io", "CSIDriver", "storageclasses", false),
            None,
            json!({"kind": "CSIDriver", "metadata": {"name": "fast"}}),
        ),
    ];
    let honest = [
        stored(
            rt("", "ConfigMap", "configmaps", true),
            Some("shop"),
            json!({"kind": "ConfigMap", "metadata": {"name": "conf", "namespace": "shop"}}),
        ),
        stored(
            rt("", "ConfigMap", "configmaps", true),
            Some("shop"),
            json!({"kind": "ConfigMap", "metadata": {"name": "bare"}}),
        ),
        stored(
            rt(RBAC, "ClusterRole", "clusterroles", false),
            None,
            json!({"kind": "ClusterRole", "metadata": {"name": "edit"}}),
        ),
    ];
    let hostile = items.len();
    items.extend(honest);
    resolve(&mut items, &discovered(), true);

    let why: Vec<&str> = items[..hostile].iter().map(failure).collect();
    for w in &why {
        assert!(
            w.starts_with("refused") && w.ends_with("not created"),
            "{w}"
        );
    }
    assert!(
        why[0].contains("stored in namespace shop")
            && why[0].contains("serves ClusterRoleBinding as cluster-scoped"),
        "{}",
        why[0]
    );
    assert!(why[1].contains("stored in namespace shop"), "{}", why[1]);
    assert!(
        why[2].contains("stored with the cluster-scoped objects")
            && why[2].contains("serves RoleBinding as namespaced"),
        "{}",
        why[2]
    );
    assert!(
        why[3].contains("catalogue records ConfigMap as cluster-scoped"),
        "{}",
        why[3]
    );
    assert!(
        why[4].contains("metadata.namespace is kube-system"),
        "{}",
        why[4]
    );
    assert!(why[5].contains("metadata.namespace is shop"), "{}", why[5]);
    assert!(
        why[6].contains("under storageclasses.storage.k8s.io")
            && why[6].contains("csidrivers.storage.k8s.io"),
        "{}",
        why[6]
    );
    // The label names kind, namespace and name.
    assert_eq!(
        items[0].label(),
        "clusterrolebindings.rbac.authorization.k8s.io shop/evil"
    );
    for it in &items[hostile..] {
        assert!(it.open(), "{}: {:?}", it.label(), it.result);
        assert!(it.target.is_some());
    }
}

/// A custom resource waiting for its CRD is checked against the scope
/// that CRD gives it.
#[test]
fn custom_resources_are_checked_against_the_planned_crd() {
    let crd_type = rt(
        "apiextensions.k8s.io",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        false,
    );
    let crd = |group: &str, scope: &str| {
        stored(
            crd_type.clone(),
            None,
            json!({"kind": "CustomResourceDefinition",
                   "metadata": {"name": format!("widgets.{group}")},
                   "spec": {"group": group, "scope": scope,
                            "names": {"kind": "Widget", "plural": "widgets"}}}),
        )
    };
    let widget = |group: &str| {
        stored(
            rt(group, "Widget", "widgets", true),
            Some("shop"),
            json!({"kind": "Widget", "metadata": {"name": "w", "namespace": "shop"}}),
        )
    };
    let mut d = discovered();
    d.types.push(served(
        "apiextensions.k8s.io",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        false,
    ));
    d.all = d.types.clone();
    let mut items = vec![
        crd("a.example.com", "Namespaced"),
        widget("a.example.com"),
        crd("b.example.com", "Cluster"),
        widget("b.example.com"),
    ];
    resolve(&mut items, &d, true);
    assert!(items[0].open() && items[2].open(), "the CRDs resolve");
    assert!(
        items[1].open() && items[1].target.is_none(),
        "waits for its CRD"
    );
    assert!(
        failure(&items[3]).contains("serves Widget as cluster-scoped"),
        "{:?}",
        items[3].result
    );
}

#[test]
fn existing_cluster_objects_follow_their_own_setting() {
    use crate::config::vars;
    let cases = [
        (rt("", "ConfigMap", "configmaps", true), vars::EXISTING),
        (ResourceType::namespaces(), vars::EXISTING),
        (
            rt(RBAC, "ClusterRole", "clusterroles", false),
            vars::EXISTING_CLUSTER_RESOURCES,
        ),
        (
            rt("", "PersistentVolume", "persistentvolumes", false),
            vars::EXISTING_CLUSTER_RESOURCES,
        ),
    ];
    for (t, var) in cases {
        let (policy, named) = policy_for(&t, Existing::Recreate, Existing::Skip);
        assert_eq!(named, var, "{}", t.name());
        let want = if var == vars::EXISTING {
            Existing::Recreate
        } else {
            Existing::Skip
        };
        assert_eq!(policy, want, "{}", t.name());
    }
    let mut it = stored(
        rt(RBAC, "ClusterRole", "clusterroles", false),
        None,
        json!({"kind": "ClusterRole", "metadata": {"name": "admin"}}),
    );
    it.done(
        Outcome::Skipped,
        format!("already exists ({}=skip)", vars::EXISTING_CLUSTER_RESOURCES),
    );
    assert!(left_alone(&it));
    it.done(Outcome::Skipped, "already exists (STOW_EXISTING=skip)");
    assert!(!left_alone(&it));
}
