use std::path::Path;
use std::time::Duration;

use super::*;
use crate::cluster::ResourceType;
use crate::cluster::discovery::{Discovered, DiscoveredType};
use crate::config::hooks::*;
use crate::config::{ConfigError, vars as v};
use crate::modes::Error;

fn argv(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

fn one(text: &str) -> Hook {
    let mut h = parse_hooks(text).unwrap();
    assert_eq!(h.len(), 1, "{h:?}");
    h.remove(0)
}

#[test]
fn compact_local_command_is_split_like_a_shell_without_one() {
    let h = one(r#"sh -c 'echo "a b" >> /tmp/x; exit 3'"#);
    assert_eq!(
        h.target,
        Target::Local {
            argv: argv(&["sh", "-c", r#"echo "a b" >> /tmp/x; exit 3"#])
        }
    );
    assert_eq!(h.timeout, DEFAULT_TIMEOUT);
    assert_eq!(h.on_error, OnError::Fail);
    assert_eq!(h.scope, Scope::Run);
    assert_eq!(
        split_words(r#"a\ b "c \"d\" \n" '' e"#).unwrap(),
        argv(&["a b", r#"c "d" \n"#, "", "e"])
    );
    // `[` is a command here, not the JSON form.
    let t = parse_preconditions("[ -f /ready ]").unwrap();
    assert_eq!(
        t[0].target,
        Target::Local {
            argv: argv(&["[", "-f", "/ready", "]"])
        }
    );
}

#[test]
fn compact_options_come_first() {
    let h = one("timeout=2m on-error=continue scope=volume /hooks/flush --all timeout=1s");
    assert_eq!(h.timeout, Duration::from_secs(120));
    assert_eq!(h.on_error, OnError::Continue);
    assert_eq!(h.scope, Scope::Volume);
    // Options after the command are the command's arguments.
    assert_eq!(
        h.target,
        Target::Local {
            argv: argv(&["/hooks/flush", "--all", "timeout=1s"])
        }
    );
    assert_eq!(one("timeout=15 true").timeout, Duration::from_secs(15));
}

#[test]
fn compact_exec_takes_selectors_with_slashes_and_sets() {
    let h = one("exec:shop/app.kubernetes.io/name=db,tier in (a,b)/postgres:psql -c 'CHECKPOINT'");
    assert_eq!(
        h.target,
        Target::Exec {
            pods: Pods {
                namespace: "shop".into(),
                selector: "app.kubernetes.io/name=db,tier in (a,b)".into(),
                container: "postgres".into(),
            },
            argv: argv(&["psql", "-c", "CHECKPOINT"]),
        }
    );
    assert_eq!(
        h.to_string(),
        "exec in shop/app.kubernetes.io/name=db,tier in (a,b)/postgres: `psql -c CHECKPOINT`"
    );
    // The command may hold `:` and `/`.
    let h = one("exec:shop/app=db/db:curl http://localhost:8080/flush");
    assert!(
        matches!(h.target, Target::Exec { ref argv, .. } if argv[1] == "http://localhost:8080/flush")
    );
}

#[test]
fn several_lines_are_several_hooks_in_order() {
    let hooks = parse_hooks(
        "# freeze, then note it\n\
         on-error=continue exec:shop/app=db/db:fsfreeze -f /data\n\
         \n\
         touch /tmp/frozen\n",
    )
    .unwrap();
    assert_eq!(hooks.len(), 2);
    assert_eq!(hooks[0].on_error, OnError::Continue);
    assert_eq!(
        hooks[1].target,
        Target::Local {
            argv: argv(&["touch", "/tmp/frozen"])
        }
    );
    assert!(parse_hooks("  \n# nothing\n").unwrap().is_empty());
}

#[test]
fn preconditions_take_resources_and_no_hook_options() {
    let c = parse_preconditions("resource:deployment/shop/web\ntimeout=5s resource:Namespace/shop")
        .unwrap();
    assert_eq!(
        c[0].target,
        Target::Resource {
            kind: "deployment".into(),
            namespace: Some("shop".into()),
            name: "web".into()
        }
    );
    assert_eq!(
        c[1].target,
        Target::Resource {
            kind: "Namespace".into(),
            namespace: None,
            name: "shop".into()
        }
    );
    assert_eq!(c[1].timeout, Duration::from_secs(5));
    let c = parse_preconditions("exec:db/role=primary/db:pg_isready").unwrap();
    assert!(matches!(c[0].target, Target::Exec { .. }));
    assert!(
        parse_preconditions("on-error=continue true")
            .unwrap_err()
            .to_string()
            .contains("hook option")
    );
    assert!(
        parse_preconditions("scope=volume true")
            .unwrap_err()
            .to_string()
            .contains("hook option")
    );
    assert!(
        parse_hooks("resource:deployment/shop/web")
            .unwrap_err()
            .to_string()
            .contains("precondition")
    );
}

#[test]
fn json_form() {
    let hooks = parse_hooks(
        r#"[{"exec": {"namespace": "shop", "selector": "app=db", "container": "db"},
             "command": ["fsfreeze", "-f", "/data"], "timeout": "30s", "on_error": "continue"},
            {"command": ["sh", "-c", "echo one; echo two"], "timeout": 5, "on-error": "fail", "scope": "volume"}]"#,
    )
    .unwrap();
    assert_eq!(hooks.len(), 2);
    assert!(
        matches!(&hooks[0].target, Target::Exec { pods, argv } if pods.container == "db" && argv.len() == 3)
    );
    assert_eq!(hooks[0].timeout, Duration::from_secs(30));
    assert_eq!(hooks[0].on_error, OnError::Continue);
    assert_eq!(
        hooks[1].target,
        Target::Local {
            argv: argv(&["sh", "-c", "echo one; echo two"])
        }
    );
    assert_eq!(hooks[1].timeout, Duration::from_secs(5));
    assert_eq!(hooks[1].scope, Scope::Volume);
    assert!(parse_hooks("[]").unwrap().is_empty());
    let c = parse_preconditions(r#"{"resource": "statefulsets.apps/db/pg"}"#).unwrap();
    assert!(matches!(&c[0].target, Target::Resource { kind, .. } if kind == "statefulsets.apps"));
}

#[test]
fn malformed_values_say_what_is_wrong() {
    let cases: &[(&str, &str)] = &[
        ("exec:shop/app=db:true", "expected exec:<namespace>"),
        ("exec:shop/app=db/db", "no `:` before the command"),
        ("exec:shop/app=db/db:", "no command"),
        ("exec:Shop/app=db/db:true", "not a namespace"),
        ("exec:shop/app=b@d/db:true", "selector"),
        ("exec:shop//db:true", "selector is empty"),
        ("exec:shop/app=db/DB_1:true", "not a container"),
        ("timeout=soon true", "timeout=soon"),
        ("timeout=0s true", "more than zero"),
        ("on-error=ignore true", "expected fail or continue"),
        ("scope=pod true", "expected run or volume"),
        ("retries=3 true", "unknown option `retries`"),
        ("FOO=1 ./hook", "unknown option `FOO`"),
        ("timeout=5s", "no command"),
        ("echo 'unterminated", "unterminated '"),
        ("true; exec:shop/app=db/db:true", "line breaks"),
        ("[{\"command\": []}]", "`command` is empty"),
        ("[\"sh\", \"-c\", \"true\"]", "invalid JSON"),
        ("[{\"command\": \"echo hi\"}]", "invalid JSON"),
        ("[{\"cmd\": [\"true\"]}]", "unknown field `cmd`"),
        ("[{\"timeout\": \"5s\"}]", "`command`"),
        (
            "[{\"exec\": {\"namespace\": \"a\", \"selector\": \"x=y\"}, \"command\": [\"true\"]}]",
            "container",
        ),
        ("[{\"resource\": \"pod/a/b\"}]", "precondition"),
    ];
    for (text, want) in cases {
        let e = parse_hooks(text).expect_err(text).to_string();
        assert!(e.contains(want), "{text}: {e}");
    }
    for (text, want) in [
        ("resource:deployment", "expected resource:<kind>"),
        ("resource:a/b/c/d", "expected resource:<kind>"),
        ("resource:deploy ment/a/b", "not a kind"),
        ("resource:deployment/A/b", "not a namespace"),
        ("resource:deployment/a/", "name is empty"),
        (
            "{\"resource\": \"pod/a/b\", \"command\": [\"x\"]}",
            "takes no `command`",
        ),
    ] {
        let e = parse_preconditions(text).expect_err(text).to_string();
        assert!(e.contains(want), "{text}: {e}");
    }
    // With several lines, the line is named.
    let e = parse_hooks("true\nscope=pod true").unwrap_err().to_string();
    assert!(e.starts_with("line 2 (hook `scope=pod true`)"), "{e}");
}

fn config(extra: &[(&str, &str)], mode: &str) -> Result<Config, crate::config::ConfigErrors> {
    let mut pairs = vec![
        (v::MODE.to_string(), mode.to_string()),
        (
            v::REPOSITORY.to_string(),
            "file:///nonexistent/repo".to_string(),
        ),
        (v::PASSWORD.to_string(), "pw".to_string()),
        (v::KEEP_LAST.to_string(), "1".to_string()),
    ];
    pairs.extend(
        extra
            .iter()
            .map(|(k, val)| (k.to_string(), val.to_string())),
    );
    Config::from_vars(pairs, None)
}

#[test]
fn config_errors_name_the_variable() {
    for var in [v::PRECONDITION, v::PRE_HOOKS, v::POST_HOOKS] {
        let e = config(&[(var, "exec:nope")], "backup").unwrap_err();
        assert_eq!(e.0.len(), 1, "{e}");
        assert_eq!(e.0[0].var(), var);
        assert!(
            matches!(&e.0[0], ConfigError::Invalid { reason, .. } if reason.contains("exec:")),
            "{e}"
        );
    }
    // Per-volume hooks only exist in backup.
    let e = config(&[(v::POST_HOOKS, "scope=volume true")], "prune").unwrap_err();
    assert_eq!(e.0[0].var(), v::POST_HOOKS);
    assert!(e.to_string().contains("scope=volume"), "{e}");
    let c = config(
        &[
            (v::PRECONDITION, "resource:deployment/shop/web"),
            (v::PRE_HOOKS, "true\nscope=volume true"),
            (v::POST_HOOKS, "  "),
        ],
        "backup",
    )
    .unwrap();
    assert_eq!(c.precondition.len(), 1);
    assert_eq!(c.pre_hooks.len(), 2);
    assert!(c.post_hooks.is_empty());
}

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

// --- running local commands -------------------------------------------------

fn ctx() -> RunContext {
    RunContext {
        run_id: "run-1".into(),
        cancel: CancellationToken::new(),
    }
}

/// A hook line that appends `word` (and the phase it saw) to `log`.
fn note(log: &Path, word: &str) -> String {
    format!(
        "sh -c 'echo {word}:$KUBESTOW_HOOK:${{KUBESTOW_STATUS:-}}${{KUBESTOW_VOLUME:-}} >> {}'",
        log.display()
    )
}

fn lines(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

/// The mode: notes that it ran, then returns `result`.
async fn mode(log: &Path, result: Result<Report, Error>) -> Result<Report, Error> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(log)
        .unwrap();
    writeln!(f, "mode").unwrap();
    result
}

#[tokio::test]
async fn hooks_run_in_order_around_the_mode() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let pre = format!("{}\n{}", note(&log, "pre1"), note(&log, "pre2"));
    let post = format!("{}\n{}", note(&log, "post1"), note(&log, "post2"));
    let c = config(&[(v::PRE_HOOKS, &pre), (v::POST_HOOKS, &post)], "backup").unwrap();
    let report = around(&c, &ctx(), mode(&log, Ok(Report::default())))
        .await
        .unwrap();
    assert_eq!(
        lines(&log),
        [
            "pre1:pre:",
            "pre2:pre:",
            "mode",
            "post1:post:success",
            "post2:post:success"
        ]
    );
    assert_eq!(report.status(), Status::Success);
    let hooks = report.details["hooks"].as_array().unwrap();
    assert_eq!(hooks.len(), 4);
    assert_eq!(hooks[0]["phase"], "pre");
    assert_eq!(hooks[3]["phase"], "post");
    assert!(hooks.iter().all(|h| h["ok"] == true));
}

#[tokio::test]
async fn a_failed_pre_hook_stops_the_run_but_not_the_post_hooks() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let pre = format!(
        "{}\nsh -c 'echo broken >&2; exit 4'\n{}",
        note(&log, "pre1"),
        note(&log, "pre3")
    );
    let c = config(
        &[(v::PRE_HOOKS, &pre), (v::POST_HOOKS, &note(&log, "post"))],
        "backup",
    )
    .unwrap();
    let e = around(&c, &ctx(), mode(&log, Ok(Report::default())))
        .await
        .unwrap_err();
    assert_eq!(lines(&log), ["pre1:pre:", "post:post:failed"]);
    let msg = e.to_string();
    assert!(
        msg.contains("pre hook 2") && msg.contains("exited with code 4"),
        "{msg}"
    );
    assert_eq!(e.status(), Status::Failed);

    // on-error=continue: the run goes on, the failure is in the details.
    std::fs::remove_file(&log).unwrap();
    let pre = format!("on-error=continue sh -c 'exit 4'\n{}", note(&log, "pre2"));
    let c = config(
        &[(v::PRE_HOOKS, &pre), (v::POST_HOOKS, &note(&log, "post"))],
        "backup",
    )
    .unwrap();
    let r = around(&c, &ctx(), mode(&log, Ok(Report::default())))
        .await
        .unwrap();
    assert_eq!(lines(&log), ["pre2:pre:", "mode", "post:post:success"]);
    assert_eq!(r.status(), Status::Success);
    assert_eq!(r.details["hooks"][0]["ok"], false);
    assert!(
        r.details["hooks"][0]["error"]
            .as_str()
            .unwrap()
            .contains("code 4")
    );
}

#[tokio::test]
async fn post_hooks_run_after_a_failed_mode_and_all_of_them() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let post = format!(
        "{}\nsh -c 'exit 1'\n{}",
        note(&log, "post1"),
        note(&log, "post3")
    );
    let c = config(&[(v::POST_HOOKS, &post)], "backup").unwrap();
    let e = around(&c, &ctx(), mode(&log, Err(Error::Missing("boom"))))
        .await
        .unwrap_err();
    assert_eq!(
        lines(&log),
        ["mode", "post1:post:failed", "post3:post:failed"]
    );
    // The mode's error stays the run's error.
    assert_eq!(e.to_string(), "boom");

    // After a successful mode, a failed post hook (on-error=fail) makes it partial.
    std::fs::remove_file(&log).unwrap();
    let r = around(&c, &ctx(), mode(&log, Ok(Report::default())))
        .await
        .unwrap();
    assert_eq!(r.status(), Status::Partial);
    assert_eq!(r.errors.len(), 1);
    assert!(
        r.errors[0].message.contains("post hook 2"),
        "{:?}",
        r.errors
    );
    assert_eq!(lines(&log).len(), 3);
}

#[tokio::test]
async fn an_unmet_precondition_skips_without_hooks_or_mode() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let cond = format!("{}\nsh -c 'exit 1'", note(&log, "cond"));
    let c = config(
        &[
            (v::PRECONDITION, &cond),
            (v::PRE_HOOKS, &note(&log, "pre")),
            (v::POST_HOOKS, &note(&log, "post")),
        ],
        "backup",
    )
    .unwrap();
    let r = around(&c, &ctx(), mode(&log, Ok(Report::default())))
        .await
        .unwrap();
    assert_eq!(r.status(), Status::Skipped);
    let reason = r.reason.unwrap();
    assert!(
        reason.starts_with("precondition not met: command `sh -c 'exit 1'`: exited with code 1"),
        "{reason}"
    );
    assert_eq!(lines(&log), ["cond:precondition:"]);

    // Met: the run goes on.
    let c = config(&[(v::PRECONDITION, "true")], "backup").unwrap();
    let r = around(&c, &ctx(), async { Ok::<_, Error>(Report::default()) })
        .await
        .unwrap();
    assert_eq!(r.status(), Status::Success);

    // A command that does not exist is a condition not met, not a crash.
    let c = config(&[(v::PRECONDITION, "/no/such/command")], "backup").unwrap();
    let r = around(&c, &ctx(), async { Ok::<_, Error>(Report::default()) })
        .await
        .unwrap();
    assert!(
        r.reason
            .unwrap()
            .contains("cannot start `/no/such/command`")
    );
}

#[tokio::test]
async fn list_and_preflight_ignore_hooks() {
    let c = config(
        &[(v::PRECONDITION, "false"), (v::PRE_HOOKS, "false")],
        "list",
    )
    .unwrap();
    let r = around(&c, &ctx(), async { Ok::<_, Error>(Report::default()) })
        .await
        .unwrap();
    assert_eq!(r.status(), Status::Success);
}

#[tokio::test]
async fn a_timeout_kills_the_hook_and_what_it_started() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    // The shell stays the parent of a background sleep: both must go.
    let pre = format!(
        "timeout=1s sh -c 'sleep 30 & echo $! > {}; wait'",
        pid_file.display()
    );
    let c = config(&[(v::PRE_HOOKS, &pre)], "backup").unwrap();
    let started = std::time::Instant::now();
    let e = around(&c, &ctx(), async { Ok::<_, Error>(Report::default()) })
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(e.to_string().contains("timed out after 1s; killed"), "{e}");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(gone(pid).await, "sleep {pid} survived the timeout");
}

/// Gone, or a zombie waiting for a reaper that is not us.
async fn gone(pid: i32) -> bool {
    for _ in 0..50 {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return true,
            Ok(s)
                if s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z')) =>
            {
                return true;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    false
}

#[tokio::test]
async fn a_signal_stops_pre_hooks_and_post_hooks_still_run() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let pre = format!("sh -c 'sleep 30'\n{}", note(&log, "pre2"));
    let c = config(
        &[(v::PRE_HOOKS, &pre), (v::POST_HOOKS, &note(&log, "post"))],
        "backup",
    )
    .unwrap();
    let ctx = ctx();
    let cancel = ctx.cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        cancel.cancel();
    });
    let started = std::time::Instant::now();
    let e = around(&c, &ctx, mode(&log, Ok(Report::default())))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Cancelled), "{e}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(lines(&log), ["post:post:cancelled"]);

    // Cancelled during the mode: the post hooks run though the token is cancelled.
    std::fs::remove_file(&log).unwrap();
    let c = config(&[(v::POST_HOOKS, &note(&log, "post"))], "backup").unwrap();
    let ctx2 = RunContext {
        run_id: "r".into(),
        cancel: CancellationToken::new(),
    };
    let cancelled = async {
        ctx2.cancel.cancel();
        mode(&log, Err(Error::Cancelled)).await
    };
    let e = around(&c, &ctx2, cancelled).await.unwrap_err();
    assert!(matches!(e, Error::Cancelled));
    assert_eq!(lines(&log), ["mode", "post:post:cancelled"]);
}

#[tokio::test]
async fn output_is_kept_up_to_a_limit() {
    let f = exec::local(
        &argv(&[
            "sh",
            "-c",
            "head -c 100000 /dev/zero | tr '\\0' x; echo err >&2",
        ]),
        &[],
        Duration::from_secs(10),
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    assert!(f.ok());
    assert!(f.stdout.starts_with(&"x".repeat(1000)));
    let note = format!("[{} more bytes not shown]", 100_000 - exec::OUTPUT_LIMIT);
    assert!(
        f.stdout.ends_with(&note),
        "{}",
        &f.stdout[f.stdout.len() - 60..]
    );
    assert!(f.stdout.len() < exec::OUTPUT_LIMIT + 100);
    assert_eq!(f.stderr, "err");
}

fn planned(ns: &str, claim: &str) -> Planned {
    Planned {
        namespace: ns.into(),
        claim: claim.into(),
        volume: format!("{ns}/{claim}"),
        pv: "pv-1".into(),
        storage_class: None,
        source: crate::mover::plan::Source::Claim { node: None },
        tolerations: Value::Null,
        node_affinity: None,
        capacity: None,
        access_modes: json!(["ReadWriteOnce"]),
    }
}

/// A client that is never used: the volume hooks below are local.
fn offline_kube() -> Kube {
    // Both ring and aws-lc-rs are linked; the binary picks ring, so do we.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    Kube::new(
        crate::cluster::Cluster {
            client,
            url: "http://127.0.0.1:9".into(),
        },
        Duration::from_secs(1),
    )
}

#[tokio::test]
async fn volume_hooks_wrap_each_volume_and_undo_a_failed_freeze() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let pre = format!(
        "{}\nscope=volume {}\nscope=volume sh -c 'test \"$KUBESTOW_VOLUME\" != shop/bad'",
        note(&log, "run-pre"),
        note(&log, "freeze")
    );
    let post = format!(
        "scope=volume {}\nscope=volume sh -c 'test \"$KUBESTOW_VOLUME\" != shop/data-1'",
        note(&log, "thaw")
    );
    let c = config(&[(v::PRE_HOOKS, &pre), (v::POST_HOOKS, &post)], "backup").unwrap();
    let ctx = ctx();
    let kube = offline_kube();
    let hooks = VolumeHooks::new(&c, &ctx, &kube);
    hooks.before(&planned("shop", "data-0")).await.unwrap();
    hooks.after(&planned("shop", "data-0")).await;
    assert_eq!(
        lines(&log),
        ["freeze:pre:shop/data-0", "thaw:post:shop/data-0"]
    );
    assert!(hooks.take_errors().is_empty());

    // A failing freeze fails the volume; the thaw runs all the same.
    std::fs::remove_file(&log).unwrap();
    let e = hooks.before(&planned("shop", "bad")).await.unwrap_err();
    assert!(e.contains("pre hook 3") && e.contains("code 1"), "{e}");
    assert_eq!(lines(&log), ["freeze:pre:shop/bad", "thaw:post:shop/bad"]);

    // A failing thaw is an item error of that volume.
    hooks.after(&planned("shop", "data-1")).await;
    let errors = hooks.take_errors();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].item, "volume shop/data-1");
}
