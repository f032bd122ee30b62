use super::*;
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
        dry_run: false,
        volumes: true,
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
            br#"{"kind":"ConfigMap","metadata":{"name":"a"}}"#,
            None
        )
        .is_ok()
    );
    let e = check_object(&rt, b"{oops", None).unwrap_err();
    assert!(e.contains("not JSON"), "{e}");
    let e = check_object(&rt, br#"{"kind":"Secret","metadata":{"name":"a"}}"#, None).unwrap_err();
    assert!(e.contains("kind Secret"), "{e}");
    assert!(check_object(&rt, b"[1]", None).is_err());
}
