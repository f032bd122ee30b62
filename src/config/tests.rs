use super::parse::label_selector;
use super::raw::RawConfig;
use super::*;
use vars as v;

fn cfg(pairs: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
    Config::from_vars(
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        None,
    )
}

const BASE: [(&str, &str); 3] = [
    (v::MODE, "backup"),
    (v::REPOSITORY, "s3://backups/prod"),
    (v::PASSWORD, "correct-horse-battery"),
];

fn with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut all: Vec<_> = BASE.to_vec();
    for (k, val) in extra {
        all.retain(|(bk, _)| bk != k);
        all.push((k, val));
    }
    all
}

#[test]
fn defaults_are_applied() {
    let c = cfg(&BASE).unwrap();
    assert_eq!(c.mode, Mode::Backup);
    assert_eq!(
        c.repository,
        Some(Location::S3 {
            bucket: "backups".into(),
            prefix: "prod".into()
        })
    );
    assert_eq!(c.channels, 1);
    assert_eq!(c.compression, Compression::FAST);
    assert_eq!(c.reconnect_timeout, Duration::from_secs(300));
    assert_eq!(c.resume_buffer, 10 * 1024 * 1024);
    assert_eq!(c.restore.existing, Existing::Skip);
    assert_eq!(c.restore.existing_cluster, Existing::Skip);
    assert!(c.restore.host_volumes.is_empty());
    assert!(c.restore.volumes);
    assert_eq!(c.plan, "default");
    assert_eq!(c.selection.cluster_resources, Some(ClusterResources::Auto));
}

#[test]
fn full_configuration_parses() {
    let c = cfg(&with(&[
        (v::CHANNELS, "255"),
        (v::COMPRESSION, "19"),
        (v::RATE_LIMIT, "mon-fri 09:00-18:00=10MiB,*=200MiB"),
        (v::TIMEZONE, "Europe/Berlin"),
        (v::RECONNECT_TIMEOUT, "90s"),
        (v::NAMESPACE_MAP, "shop=shop-restored, billing=billing2"),
        (v::STORAGE_CLASS_MAP, "fast.ssd=standard"),
        (v::NAMESPACES, "shop-*,billing"),
        (
            v::LABEL_SELECTOR,
            "app=shop,tier!=cache,env in (a, b),!legacy",
        ),
        (v::RESTORE_POINT, "2026-11-22T02:00:00+01:00"),
        (v::CHECK_READ_DATA, "12.5%"),
        (v::MOVER_RESOURCES, "requests.cpu=100m,limits.memory=512Mi"),
        (v::MIN_INTERVAL, "3d"),
        (v::KEEP_DAILY, "7"),
        (v::TAGS, "nightly, team=payments"),
    ]))
    .unwrap();
    assert_eq!(c.channels, 255);
    assert_eq!(c.compression, Compression::Level(19));
    assert_eq!(c.reconnect_timeout, Duration::from_secs(90));
    assert_eq!(
        c.restore.namespace_map.get("billing").map(String::as_str),
        Some("billing2")
    );
    assert_eq!(c.restore.point.unwrap().to_string(), "2026-11-22T01:00:00Z");
    assert_eq!(c.check_read_data, Some(ReadData::Percent(12.5)));
    assert_eq!(c.min_interval, Some(Duration::from_secs(3 * 86400)));
    assert_eq!(c.retention.daily, Some(7));
    assert_eq!(c.tags, vec!["nightly", "team=payments"]);
    assert_eq!(c.volume.mover_resources.len(), 2);
}

#[test]
fn cli_argument_overrides_mode() {
    let pairs: Vec<(String, String)> = BASE
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let c = Config::from_vars(pairs, Some("list")).unwrap();
    assert_eq!(c.mode, Mode::List);
}

#[test]
fn preflight_needs_no_repository_or_password() {
    let c = cfg(&[(v::MODE, "preflight")]).unwrap();
    assert!(c.repository.is_none() && c.password.is_none());
}

#[test]
fn empty_values_count_as_unset() {
    let c = cfg(&with(&[(v::CHANNELS, ""), (v::RATE_LIMIT, "")])).unwrap();
    assert_eq!(c.channels, 1);
    assert!(c.rate_limit.is_none());
}

#[test]
fn unknown_variable_suggests_the_closest() {
    let err = cfg(&with(&[("STOW_CHANELS", "4")])).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("unknown variable STOW_CHANELS; did you mean STOW_CHANNELS?"),
        "{msg}"
    );
}

#[test]
fn all_errors_are_reported_together() {
    let err = cfg(&with(&[(v::CHANNELS, "0"), (v::EXISTING, "merge")])).unwrap_err();
    let vars: Vec<&str> = err.0.iter().map(ConfigError::var).collect();
    assert_eq!(vars, vec![v::CHANNELS, v::EXISTING]);
}

#[test]
fn existing_cluster_resources_is_its_own_setting() {
    // STOW_EXISTING does not carry over to cluster-scoped objects.
    let c = cfg(&with(&[(v::EXISTING, "recreate")])).unwrap();
    assert_eq!(c.restore.existing, Existing::Recreate);
    assert_eq!(c.restore.existing_cluster, Existing::Skip);
    let c = cfg(&with(&[(v::EXISTING_CLUSTER_RESOURCES, "Update")])).unwrap();
    assert_eq!(c.restore.existing, Existing::Skip);
    assert_eq!(c.restore.existing_cluster, Existing::Update);
    let err = cfg(&with(&[(v::EXISTING_CLUSTER_RESOURCES, "always")])).unwrap_err();
    let vars: Vec<&str> = err.0.iter().map(ConfigError::var).collect();
    assert_eq!(vars, vec![v::EXISTING_CLUSTER_RESOURCES]);
}

#[test]
fn host_volumes_are_names() {
    let c = cfg(&with(&[(v::ALLOW_HOST_VOLUMES, "pv-a, data.node-1")])).unwrap();
    assert_eq!(
        c.restore.host_volumes.iter().collect::<Vec<_>>(),
        ["data.node-1", "pv-a"]
    );
    let err = cfg(&with(&[(v::ALLOW_HOST_VOLUMES, "pv-a,PV_B")])).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(v::ALLOW_HOST_VOLUMES) && msg.contains("`PV_B`"),
        "{msg}"
    );
}

#[test]
fn password_file_is_read_and_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pw");
    std::fs::write(&path, "from-file\n").unwrap();
    let p = path.to_str().unwrap();
    let c = cfg(&[
        (v::MODE, "check"),
        (v::REPOSITORY, "file:///srv/repo"),
        (v::PASSWORD_FILE, p),
    ])
    .unwrap();
    assert_eq!(c.password.unwrap().expose(), "from-file");
}

#[test]
fn secrets_never_appear_in_debug_or_errors() {
    let c = cfg(&with(&[
        (v::COPY_TO_PASSWORD, "second-secret-xyz"),
        (v::COPY_TO_REPOSITORY, "file:///copy"),
    ]))
    .unwrap();
    let dbg = format!("{c:?}");
    assert!(
        !dbg.contains("correct-horse-battery") && !dbg.contains("second-secret-xyz"),
        "{dbg}"
    );
    // Both passwords and the file: a conflict error must not echo the value.
    let err = cfg(&with(&[(v::PASSWORD_FILE, "/nonexistent")]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(v::PASSWORD) && !err.contains("correct-horse-battery"),
        "{err}"
    );
}

#[test]
fn reconnect_timeout_bounds() {
    for ok in ["1", "60", "1m", "60m", "1h", "5m"] {
        assert!(cfg(&with(&[(v::RECONNECT_TIMEOUT, ok)])).is_ok(), "{ok}");
    }
    for bad in ["0", "61", "59s", "61m", "2h", "-5m", "soon"] {
        assert!(cfg(&with(&[(v::RECONNECT_TIMEOUT, bad)])).is_err(), "{bad}");
    }
}

#[test]
fn locations_parse() {
    assert_eq!(
        Location::parse("s3://b-1.x").unwrap(),
        Location::S3 {
            bucket: "b-1.x".into(),
            prefix: String::new()
        }
    );
    assert_eq!(
        Location::parse("s3://bkt/a/b/").unwrap(),
        Location::S3 {
            bucket: "bkt".into(),
            prefix: "a/b".into()
        }
    );
    assert_eq!(
        Location::parse("file:///srv/r").unwrap(),
        Location::File {
            path: "/srv/r".into()
        }
    );
    for bad in [
        "s3://B",
        "s3://ab",
        "s3://bkt/../x",
        "file://relative",
        "file:///",
        "gs://x/y",
        "/srv/r",
    ] {
        assert!(Location::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn label_selectors() {
    for ok in [
        "app=shop",
        "app==shop",
        "a!=b",
        "!legacy",
        "tier in (a,b)",
        "tier notin (a)",
        "example.com/team=x",
        "app",
    ] {
        assert!(label_selector(ok).is_ok(), "{ok}");
    }
    for bad in [
        "app=sh op",
        "=x",
        "a in (b",
        "a in b",
        "-bad=1",
        "a=b,,c",
        "a)=(b",
    ] {
        assert!(label_selector(bad).is_err(), "{bad}");
    }
}

#[test]
fn readme_lists_every_variable() {
    // The README table is generated from vars::ALL; regenerate with
    // `UPDATE_README=1 cargo test readme_lists_every_variable`.
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
    let readme = std::fs::read_to_string(path).unwrap();
    let (begin, end) = ("<!-- vars:begin -->\n", "<!-- vars:end -->");
    let start = readme
        .find(begin)
        .expect("README lacks the vars:begin marker")
        + begin.len();
    let stop = readme.find(end).expect("README lacks the vars:end marker");
    let table = vars::markdown_table();
    if readme[start..stop] != table {
        if std::env::var_os("UPDATE_README").is_some() {
            let updated = format!("{}{}{}", &readme[..start], table, &readme[stop..]);
            std::fs::write(path, updated).unwrap();
        } else {
            panic!(
                "README variable table is stale; run UPDATE_README=1 cargo test readme_lists_every_variable"
            );
        }
    }
}

#[test]
fn every_raw_field_has_a_documented_variable() {
    // envy maps field `foo_bar` to STOW_FOO_BAR; a field without a catalogue
    // entry would be unreachable because the loader rejects unknown names.
    let dbg = format!("{:?}", RawConfig::default());
    let inner = dbg.trim_start_matches("RawConfig {").trim_end_matches('}');
    let fields: Vec<String> = inner
        .split(", ")
        .filter_map(|f| f.split(':').next())
        .map(|f| f.trim().to_string())
        .filter(|f| !f.is_empty())
        .collect();
    assert_eq!(fields.len(), vars::ALL.len());
    for f in fields {
        let name = format!("STOW_{}", f.to_uppercase());
        assert!(
            vars::find(&name).is_some(),
            "field {f} has no variable {name}"
        );
    }
}

#[test]
fn prune_grace_and_explicit_plan() {
    let c = cfg(&with(&[(v::MODE, "prune"), (v::KEEP_DAILY, "7")])).unwrap();
    assert_eq!(c.prune_grace, Duration::from_secs(3600));
    assert!(!c.plan_explicit);
    let c = cfg(&with(&[
        (v::MODE, "prune"),
        (v::KEEP_LAST, "3"),
        (v::PRUNE_GRACE, "2s"),
        (v::PLAN, "nightly"),
    ]))
    .unwrap();
    assert_eq!(c.prune_grace, Duration::from_secs(2));
    assert!(c.plan_explicit);
    assert_eq!(c.plan, "nightly");
    let c = cfg(&with(&[(v::MODE, "list"), (v::PRUNE_GRACE, "90")])).unwrap();
    assert_eq!(c.prune_grace, Duration::from_secs(90));
    for bad in ["0s", "soon", "-5m"] {
        let e = cfg(&with(&[(v::MODE, "list"), (v::PRUNE_GRACE, bad)])).unwrap_err();
        assert!(e.to_string().contains("STOW_PRUNE_GRACE"), "{bad}: {e}");
    }
    // Rules that are all zero would remove everything.
    let e = cfg(&with(&[
        (v::MODE, "prune"),
        (v::KEEP_LAST, "0"),
        (v::KEEP_DAILY, "0"),
    ]))
    .unwrap_err();
    assert!(e.to_string().contains("every STOW_KEEP_* rule is 0"), "{e}");
}

/// The one error of a configuration that sets `var` to `value` in `mode`:
/// it names the variable and says the value is out of range.
fn assert_out_of_range(mode: &'static str, var: &'static str, value: &'static str) {
    let e = cfg(&with(&[(v::MODE, mode), (var, value)])).unwrap_err();
    assert_eq!(e.0.len(), 1, "{var}={value}: {e}");
    assert_eq!(e.0[0].var(), var, "{e}");
    assert!(e.to_string().contains("out of range"), "{var}={value}: {e}");
}

// A bare number used to be multiplied as `n as u32`, so 2^32 + 1 wrapped
// to 1 (seconds, or minutes for STOW_RECONNECT_TIMEOUT).

#[test]
fn prune_grace_out_of_range_is_a_config_error() {
    assert_out_of_range("list", v::PRUNE_GRACE, "4294967297");
    assert_out_of_range("list", v::PRUNE_GRACE, "18446744073709551615");
    assert_out_of_range("list", v::PRUNE_GRACE, "36501d");
    let c = cfg(&with(&[(v::MODE, "list"), (v::PRUNE_GRACE, "36500d")])).unwrap();
    assert_eq!(c.prune_grace, MAX_DURATION);
}

#[test]
fn reconnect_timeout_out_of_range_is_a_config_error() {
    assert_out_of_range("backup", v::RECONNECT_TIMEOUT, "4294967297");
    // In range for the multiplication, beyond the 60-minute limit.
    let e = cfg(&with(&[(v::RECONNECT_TIMEOUT, "71582789")])).unwrap_err();
    assert_eq!(e.0[0].var(), v::RECONNECT_TIMEOUT, "{e}");
}

#[test]
fn min_interval_out_of_range_is_a_config_error() {
    assert_out_of_range("backup", v::MIN_INTERVAL, "4294967297");
    assert_out_of_range("backup", v::MIN_INTERVAL, "1000000h");
    assert_out_of_range("backup", v::MIN_INTERVAL, "3153600001");
    let c = cfg(&with(&[(v::MIN_INTERVAL, "3153600000")])).unwrap();
    assert_eq!(c.min_interval, Some(MAX_DURATION));
}

#[test]
fn durations_are_checked_not_wrapped() {
    use super::parse::duration;
    let (sec, min) = (Duration::from_secs(1), Duration::from_secs(60));
    for (text, unit) in [
        ("4294967297", sec),
        ("4294967296", sec),
        ("18446744073709551615", sec),
        ("52560001", min),
        ("36500d 1s", sec),
    ] {
        assert!(
            matches!(duration(text, unit), Err(DurationError::TooLarge)),
            "{text}: {:?}",
            duration(text, unit)
        );
    }
    assert_eq!(duration("52560000", min).unwrap(), MAX_DURATION);
    assert_eq!(duration("90", sec).unwrap(), Duration::from_secs(90));
    assert_eq!(duration("90", min).unwrap(), Duration::from_secs(5400));
}

#[test]
fn mover_timeouts_out_of_range_are_config_errors() {
    assert_out_of_range("backup", v::MOVER_START_TIMEOUT, "4294967297");
    assert_out_of_range("backup", v::SNAPSHOT_TIMEOUT, "4294967297");
}

#[test]
fn credentials_in_urls_never_reach_logs_or_errors() {
    // A gateway with basic auth: the effective configuration logged at
    // start (Debug) shows the URL without its password.
    let c = cfg(&with(&[(
        v::PUSHGATEWAY_URL,
        "https://ci:gw-pass-1@gw:9091",
    )]))
    .unwrap();
    let dump = format!("{c:?}");
    assert!(dump.contains("https://***@gw:9091"), "{dump}");
    assert!(!dump.contains("gw-pass-1"), "{dump}");
    // An invalid repository or gateway URL is named, never echoed whole.
    let e = cfg(&with(&[(v::REPOSITORY, "https://key:repo-pass-2@host/x")])).unwrap_err();
    assert!(e.to_string().contains(v::REPOSITORY), "{e}");
    assert!(!e.to_string().contains("repo-pass-2"), "{e}");
    let e = cfg(&with(&[(v::PUSHGATEWAY_URL, "ftp://u:gw-pass-3@gw")])).unwrap_err();
    assert!(e.to_string().contains(v::PUSHGATEWAY_URL), "{e}");
    assert!(!e.to_string().contains("gw-pass-3"), "{e}");
}

/// Found by the config fuzz target (`fuzz/`): the bucket error repeated
/// the credentials an S3 URL carried in place of the bucket.
#[test]
fn credentials_in_an_s3_url_are_not_shown_as_its_bucket() {
    for var in [v::REPOSITORY, v::COPY_TO_REPOSITORY] {
        let e = cfg(&with(&[(var, "s3://user:s3-pass-4@bucket-name/prefix")])).unwrap_err();
        assert!(e.to_string().contains(var), "{e}");
        assert!(e.to_string().contains("***@bucket-name"), "{e}");
        assert!(!e.to_string().contains("s3-pass-4"), "{e}");
    }
}
