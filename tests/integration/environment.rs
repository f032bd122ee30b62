//! Proves the shared environment works: Kubernetes objects round-trip, the
//! controller-manager runs, and Garage stores objects.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use kube::api::{Api, ObjectMeta, PostParams};

use crate::env;

#[tokio::test]
async fn configmap_round_trips_through_the_apiserver() {
    let (client, ns) = env::namespace("configmap-round-trip").await;
    let api = Api::<ConfigMap>::namespaced(client, &ns);
    let data = BTreeMap::from([
        ("greeting".to_owned(), "hello".to_owned()),
        ("empty".to_owned(), String::new()),
    ]);
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some("probe".to_owned()),
            ..ObjectMeta::default()
        },
        data: Some(data.clone()),
        ..ConfigMap::default()
    };
    api.create(&PostParams::default(), &cm)
        .await
        .expect("create ConfigMap");

    let read = api.get("probe").await.expect("get ConfigMap");
    assert_eq!(read.metadata.namespace.as_deref(), Some(ns.as_str()));
    assert_eq!(read.data, Some(data));
}

#[tokio::test]
async fn controller_manager_creates_default_service_account() {
    let (client, ns) = env::namespace("kcm-default-sa").await;
    let api = Api::<ServiceAccount>::namespaced(client, &ns);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let sa = loop {
        if let Some(sa) = api.get_opt("default").await.expect("get ServiceAccount") {
            break sa;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "ServiceAccount default never appeared in {ns}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(sa.metadata.namespace.as_deref(), Some(ns.as_str()));
}

#[tokio::test]
async fn object_round_trips_through_garage() {
    let (s3, bucket) = env::bucket("object-round-trip").await;
    let body: Vec<u8> = (0..300_000u32).map(|i| (i * 31 % 251) as u8).collect();
    s3.put_object()
        .bucket(&bucket)
        .key("dir/probe.bin")
        .body(ByteStream::from(body.clone()))
        .send()
        .await
        .expect("put_object");

    let got = s3
        .get_object()
        .bucket(&bucket)
        .key("dir/probe.bin")
        .send()
        .await
        .expect("get_object")
        .body
        .collect()
        .await
        .expect("reading object body")
        .into_bytes();
    assert_eq!(got.as_ref(), body.as_slice());

    let listed = s3
        .list_objects_v2()
        .bucket(&bucket)
        .send()
        .await
        .expect("list_objects_v2");
    let keys: Vec<&str> = listed.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(keys, ["dir/probe.bin"]);
    assert_eq!(listed.contents()[0].size(), Some(body.len() as i64));
}

#[tokio::test]
async fn names_are_unique_and_valid() {
    let a = env::unique_name("Some Test::Name_with/odd chars");
    let b = env::unique_name("Some Test::Name_with/odd chars");
    assert_ne!(a, b);
    for name in [&a, &b] {
        assert!(name.len() <= 63, "{name}");
        assert!(
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "{name}"
        );
        assert!(!name.starts_with('-') && !name.ends_with('-'), "{name}");
    }
    assert!(a.starts_with("t-some-test-name-with-odd-chars-"), "{a}");
}

#[tokio::test]
async fn s3_env_and_kubeconfig_are_exposed() {
    let vars: BTreeMap<_, _> = env::s3_env().into_iter().collect();
    assert_eq!(vars["AWS_REGION"], "garage");
    assert!(vars["AWS_ENDPOINT_URL"].starts_with("http://127.0.0.1:"));
    assert!(vars["AWS_ACCESS_KEY_ID"].starts_with("GK"));
    assert!(!vars["AWS_SECRET_ACCESS_KEY"].is_empty());
    let kubeconfig = std::fs::read_to_string(env::kubeconfig_path()).expect("read kubeconfig");
    assert!(kubeconfig.contains(env::cluster().server_url()));
}

#[tokio::test]
async fn second_cluster_is_independent_of_the_main_one() {
    let second = env::second_cluster();
    assert_ne!(second.server_url(), env::cluster().server_url());
    assert_ne!(second.etcd_prefix(), env::cluster().etcd_prefix());

    let (client, ns) = second.namespace("second-cluster").await;
    let main = env::kube_client().await;
    let main_ns = Api::<k8s_openapi::api::core::v1::Namespace>::all(main);
    assert!(
        main_ns.get_opt(&ns).await.expect("get namespace").is_none(),
        "namespace {ns} of the second cluster is visible in the main one"
    );
    let sa = Api::<ServiceAccount>::namespaced(client, &ns)
        .get("default")
        .await
        .expect("second cluster's controller-manager created the default ServiceAccount");
    assert_eq!(sa.metadata.namespace.as_deref(), Some(ns.as_str()));
}
