//! Readiness, kind resolution and exec exit codes.

use super::*;
use crate::cluster::ResourceType;
use crate::cluster::discovery::{Discovered, DiscoveredType};

#[test]
fn readiness_rules() {
    let ok = |kind: &str, obj: Value| ready(kind, &obj);
    assert!(ok("ConfigMap", json!({"data": {}})).is_ok());
    assert!(
        ok(
            "StatefulSet",
            json!({"spec": {"replicas": 2}, "status": {"readyReplicas": 2}})
        )
        .is_ok()
    );
    let e = ok(
        "StatefulSet",
        json!({"spec": {"replicas": 3}, "status": {"readyReplicas": 1}}),
    )
    .unwrap_err();
    assert_eq!(e, "1 of 3 replicas ready");
    assert!(ok("StatefulSet", json!({"spec": {}, "status": {}})).is_err());
    assert!(
        ok(
            "DaemonSet",
            json!({"status": {"desiredNumberScheduled": 2, "numberReady": 2}})
        )
        .is_ok()
    );
    assert!(
        ok(
            "DaemonSet",
            json!({"status": {"desiredNumberScheduled": 2, "numberReady": 1}})
        )
        .is_err()
    );
    let deploy = |s: &str| {
        json!({"status": {"conditions": [
        {"type": "Progressing", "status": "True"},
        {"type": "Available", "status": s, "message": "Deployment does not have minimum availability."}]}})
    };
    assert!(ok("Deployment", deploy("True")).is_ok());
    assert_eq!(
        ok("Deployment", deploy("False")).unwrap_err(),
        "condition Available is False: Deployment does not have minimum availability."
    );
    let pod = |s: &str| json!({"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": s}]}});
    assert!(ok("Pod", pod("True")).is_ok());
    assert!(
        ok("Pod", pod("False"))
            .unwrap_err()
            .contains("Ready is False")
    );
}

fn dt(group: &str, kind: &str, plural: &str, namespaced: bool) -> DiscoveredType {
    DiscoveredType {
        rt: ResourceType {
            group: group.into(),
            version: "v1".into(),
            kind: kind.into(),
            plural: plural.into(),
            namespaced,
        },
        verbs: vec!["get".into(), "list".into()],
    }
}

#[test]
fn kinds_resolve_by_kind_plural_or_singular_with_optional_group() {
    let d = Discovered {
        types: vec![
            dt("apps", "Deployment", "deployments", true),
            dt("", "Event", "events", true),
            dt("events.k8s.io", "Event", "events", true),
            dt("", "Namespace", "namespaces", false),
            dt("a.example.com", "Widget", "widgets", true),
            dt("b.example.com", "Widget", "widgets", true),
        ],
        ..Discovered::default()
    };
    for k in [
        "Deployment",
        "deployment",
        "deployments",
        "deployments.apps",
        "Deployment.apps",
    ] {
        assert_eq!(
            resolve_kind(&d, k, true).unwrap().plural,
            "deployments",
            "{k}"
        );
    }
    assert_eq!(resolve_kind(&d, "event", true).unwrap().group, "");
    assert_eq!(
        resolve_kind(&d, "events.events.k8s.io", true)
            .unwrap()
            .group,
        "events.k8s.io"
    );
    assert!(
        resolve_kind(&d, "widget", true)
            .unwrap_err()
            .contains("ambiguous")
    );
    assert_eq!(
        resolve_kind(&d, "widgets.b.example.com", true)
            .unwrap()
            .group,
        "b.example.com"
    );
    assert!(
        resolve_kind(&d, "gadget", true)
            .unwrap_err()
            .contains("no resource type")
    );
    assert!(
        resolve_kind(&d, "namespace", true)
            .unwrap_err()
            .contains("cluster-scoped")
    );
    assert!(
        resolve_kind(&d, "deployment", false)
            .unwrap_err()
            .contains("is namespaced")
    );
}

#[test]
fn exec_status_gives_the_exit_code() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Status as S, StatusCause, StatusDetails};
    let ok = S {
        status: Some("Success".into()),
        ..S::default()
    };
    assert_eq!(exec::exit_code(&ok), Some(0));
    let failed = S {
        status: Some("Failure".into()),
        reason: Some("NonZeroExitCode".into()),
        details: Some(StatusDetails {
            causes: Some(vec![StatusCause {
                reason: Some("ExitCode".into()),
                message: Some("3".into()),
                ..StatusCause::default()
            }]),
            ..StatusDetails::default()
        }),
        ..S::default()
    };
    assert_eq!(exec::exit_code(&failed), Some(3));
    let internal = S {
        status: Some("Failure".into()),
        message: Some("container not found".into()),
        ..S::default()
    };
    assert_eq!(exec::exit_code(&internal), None);
}
