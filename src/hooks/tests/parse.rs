//! Parsing hook and precondition settings.

use std::time::Duration;

use super::*;
use crate::config::ConfigError;
use crate::config::hooks::*;

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

#[test]
fn timeout_out_of_range_is_refused_not_wrapped() {
    // `n as u32` made 4294967297 a one-second timeout.
    for text in [
        "timeout=4294967297 true",
        "timeout=18446744073709551615 true",
        "[{\"command\": [\"true\"], \"timeout\": 4294967297}]",
    ] {
        let e = parse_hooks(text).expect_err(text).to_string();
        assert!(e.contains("out of range"), "{text}: {e}");
    }
    let e = parse_preconditions("timeout=4294967297 resource:deployment/shop/web")
        .unwrap_err()
        .to_string();
    assert!(e.contains("out of range"), "{e}");
    for var in [v::PRECONDITION, v::PRE_HOOKS, v::POST_HOOKS] {
        let value = if var == v::PRECONDITION {
            "timeout=4294967297 resource:deployment/shop/web"
        } else {
            "timeout=4294967297 true"
        };
        let e = config(&[(var, value)], "backup").unwrap_err();
        assert_eq!(e.0.len(), 1, "{e}");
        assert_eq!(e.0[0].var(), var, "{e}");
        assert!(e.to_string().contains("out of range"), "{e}");
    }
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
