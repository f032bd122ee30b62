//! Stage two: [`RawConfig`] to [`Config`]. One function per section, each
//! reading its variables and recording every problem in the shared [`Check`],
//! so that one run reports all mistakes. Sections run in a fixed order, which
//! is the order errors are reported in.

use std::path::PathBuf;
use std::time::Duration;

use super::error::{Check, ConfigError, ConfigErrors};
use super::hooks::{self, Hook};
use super::parse::{
    globs, is_dns_label, is_dns_subdomain, label_selector, list, mover_resources, opt, parse_bool,
    parse_count, parse_duration, parse_enum, parse_map, parse_size, positive_duration,
    read_password, resource_list,
};
use super::raw::RawConfig;
use super::vars as v;
use super::{
    ClusterResources, Compression, Config, CopyTarget, Existing, Location, LogFormat, Mode,
    RateSchedule, ReadData, RestoreOptions, Retention, RunIdentity, Secret, Selection,
    VolumeOptions, VolumeSource,
};

impl RawConfig {
    /// Stage two. Returns every problem, not just the first.
    pub fn validate(self, mode_override: Option<&str>) -> Result<Config, ConfigErrors> {
        let raw = &self;
        let mut c = Check::default();
        let mode = mode(raw, mode_override, &mut c);
        let repo = repository(raw, &mut c);
        let ops = operations(raw, &mut c);
        let selection = selection(raw, &mut c);
        let restore = restore(raw, &mut c);
        let volume = volume(raw, &mut c);
        let copy_to = copy_target(raw, &mut c);
        let prune = retention(raw, &mut c);
        let report = reporting(raw, &mut c);
        let guards = schedule_guards(raw, &mut c);
        // Read here rather than with the repository, to keep the order in
        // which errors have always been reported.
        let init = c
            .take(parse_bool(v::INIT, &raw.init, false))
            .unwrap_or(false);
        let hooks = hooks(raw, &mut c);
        if let Some(mode) = mode {
            requirements(raw, mode, &repo, &volume, &hooks, &prune.retention, &mut c);
        }

        if !c.0.is_empty() {
            return Err(ConfigErrors(c.0));
        }
        Ok(Config {
            mode: mode.expect("mode is set when there are no errors"),
            repository: repo.location,
            password: repo.password,
            init,
            compression: repo.compression,
            plan: repo.plan,
            plan_explicit: opt(&raw.plan).is_some(),
            tags: list(&raw.tags),
            selection,
            restore,
            volume,
            channels: ops.channels,
            rate_limit: ops.rate_limit,
            timezone: ops.timezone,
            reconnect_timeout: ops.reconnect_timeout,
            resume_buffer: ops.resume_buffer,
            precondition: hooks.precondition,
            pre_hooks: hooks.pre,
            post_hooks: hooks.post,
            copy_to,
            retention: prune.retention,
            prune_grace: prune.grace,
            check_read_data: prune.check_read_data,
            pushgateway_url: report.pushgateway_url,
            cluster_name: opt(&raw.cluster_name).unwrap_or_else(|| "default".into()),
            preflight_mode: report.preflight_mode,
            log_format: report.log_format,
            once: guards.once,
            min_interval: guards.min_interval,
            last_day_of_month: guards.last_day_of_month,
            identity: identity(raw),
        })
    }
}

fn mode_names() -> String {
    Mode::ALL.map(Mode::as_str).join(", ")
}

/// `STOW_MODE`, or the first CLI argument, which wins.
fn mode(raw: &RawConfig, mode_override: Option<&str>, c: &mut Check) -> Option<Mode> {
    let text = mode_override.map(String::from).or(raw.mode.clone());
    match text.as_deref() {
        None => {
            c.push(ConfigError::Missing {
                var: v::MODE,
                why: format!("(or a first argument): one of {}", mode_names()),
            });
            None
        }
        Some(s) => c.take(s.trim().parse::<Mode>().map_err(|_| {
            ConfigError::invalid(
                v::MODE,
                s,
                format!("unknown mode; expected one of {}", mode_names()),
            )
        })),
    }
}

/// The repository, its password, how new blobs are written, and the plan
/// that names this run's snapshots.
struct Repository {
    location: Option<Location>,
    password: Option<Secret>,
    compression: Compression,
    plan: String,
}

/// A `STOW_*REPOSITORY` value; the error names `var`.
fn location(var: &'static str, s: &str) -> Result<Location, ConfigError> {
    Location::parse(s.trim()).map_err(|e| {
        ConfigError::invalid(
            var,
            s,
            format!("{e}; expected s3://bucket/prefix or file:///path"),
        )
    })
}

fn repository(raw: &RawConfig, c: &mut Check) -> Repository {
    let location = raw
        .repository
        .as_deref()
        .and_then(|s| c.take(location(v::REPOSITORY, s)));
    let password = c
        .take(read_password(
            v::PASSWORD,
            &raw.password,
            v::PASSWORD_FILE,
            &raw.password_file,
        ))
        .flatten();

    let compression = match raw.compression.as_deref().map(str::trim) {
        None | Some("fast") => Compression::FAST,
        Some("none") => Compression::None,
        Some(s) => c
            .take(
                s.parse::<i32>()
                    .ok()
                    .filter(|l| (1..=19).contains(l))
                    .map(Compression::Level)
                    .ok_or_else(|| {
                        ConfigError::invalid(
                            v::COMPRESSION,
                            s,
                            "expected none, fast, or a level 1..19",
                        )
                    }),
            )
            .unwrap_or(Compression::FAST),
    };

    let plan = opt(&raw.plan).unwrap_or_else(|| "default".into());
    if !is_dns_label(&plan) {
        c.push(ConfigError::invalid(
            v::PLAN,
            &plan,
            "expected a DNS label (lowercase letters, digits, `-`)",
        ));
    }
    Repository {
        location,
        password,
        compression,
        plan,
    }
}

/// How transfers run: channels, rate, reconnects and resumption.
struct Operations {
    channels: u8,
    rate_limit: Option<RateSchedule>,
    timezone: jiff::tz::TimeZone,
    reconnect_timeout: Duration,
    resume_buffer: u64,
}

fn operations(raw: &RawConfig, c: &mut Check) -> Operations {
    let channels = match raw.channels.as_deref() {
        None => 1,
        Some(s) => c
            .take(
                s.trim()
                    .parse::<u8>()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| {
                        ConfigError::invalid(v::CHANNELS, s, "expected a number from 1 to 255")
                    }),
            )
            .unwrap_or(1),
    };

    let rate_limit = raw.rate_limit.as_deref().and_then(|s| {
        c.take(RateSchedule::parse(s).map_err(|e| {
            ConfigError::invalid(
                v::RATE_LIMIT,
                s,
                format!("{e}; expected e.g. 50MiB or `mon-fri 09:00-18:00=10MiB,*=200MiB`"),
            )
        }))
    });
    let timezone = match raw.timezone.as_deref() {
        None => jiff::tz::TimeZone::UTC,
        Some(s) => c
            .take(jiff::tz::TimeZone::get(s.trim()).map_err(|_| {
                ConfigError::invalid(
                    v::TIMEZONE,
                    s,
                    "unknown IANA time zone; expected e.g. UTC or Europe/Berlin",
                )
            }))
            .unwrap_or(jiff::tz::TimeZone::UTC),
    };

    let reconnect_timeout = match raw.reconnect_timeout.as_deref() {
        None => Duration::from_secs(300),
        Some(s) => c
            .take(
                parse_duration(v::RECONNECT_TIMEOUT, s, Duration::from_secs(60)).and_then(|d| {
                    if (60..=3600).contains(&d.as_secs()) && d.subsec_nanos() == 0 {
                        Ok(d)
                    } else {
                        Err(ConfigError::invalid(
                            v::RECONNECT_TIMEOUT,
                            s,
                            "must be between 1 and 60 minutes",
                        ))
                    }
                }),
            )
            .unwrap_or(Duration::from_secs(300)),
    };
    let resume_buffer = c
        .take(parse_size(
            v::RESUME_BUFFER,
            &raw.resume_buffer,
            10 * 1024 * 1024,
        ))
        .unwrap_or(10 * 1024 * 1024);
    Operations {
        channels,
        rate_limit,
        timezone,
        reconnect_timeout,
        resume_buffer,
    }
}

fn selection(raw: &RawConfig, c: &mut Check) -> Selection {
    Selection {
        namespaces: c
            .take(globs(v::NAMESPACES, &raw.namespaces))
            .unwrap_or_default(),
        exclude_namespaces: c
            .take(globs(v::EXCLUDE_NAMESPACES, &raw.exclude_namespaces))
            .unwrap_or_default(),
        include_resources: c
            .take(resource_list(v::INCLUDE_RESOURCES, &raw.include_resources))
            .unwrap_or_default(),
        exclude_resources: c
            .take(resource_list(v::EXCLUDE_RESOURCES, &raw.exclude_resources))
            .unwrap_or_default(),
        label_selector: raw
            .label_selector
            .as_deref()
            .and_then(|s| c.take(label_selector(s))),
        cluster_resources: c.take(parse_enum(
            v::INCLUDE_CLUSTER_RESOURCES,
            &raw.include_cluster_resources,
            ClusterResources::Auto,
            &[
                ("auto", ClusterResources::Auto),
                ("true", ClusterResources::All),
                ("false", ClusterResources::None),
            ],
        )),
    }
}

fn restore(raw: &RawConfig, c: &mut Check) -> RestoreOptions {
    let point = raw.restore_point.as_deref().and_then(|s| {
        c.take(s.trim().parse::<jiff::Timestamp>().map_err(|_| {
            ConfigError::invalid(
                v::RESTORE_POINT,
                s,
                "expected an RFC 3339 time with offset, e.g. 2026-11-22T02:00:00Z",
            )
        }))
    });
    if raw.restore_point.is_some() && raw.snapshot.is_some() {
        c.push(ConfigError::Conflict {
            a: v::RESTORE_POINT,
            b: v::SNAPSHOT,
            hint: "name a snapshot or a point in time, not both",
        });
    }
    RestoreOptions {
        point,
        snapshot: opt(&raw.snapshot),
        source_cluster: opt(&raw.source_cluster),
        namespace_map: c
            .take(parse_map(
                v::NAMESPACE_MAP,
                &raw.namespace_map,
                is_dns_label,
                "namespace name",
            ))
            .unwrap_or_default(),
        storage_class_map: c
            .take(parse_map(
                v::STORAGE_CLASS_MAP,
                &raw.storage_class_map,
                is_dns_subdomain,
                "storage class name",
            ))
            .unwrap_or_default(),
        existing: c
            .take(parse_enum(
                v::EXISTING,
                &raw.existing,
                Existing::Skip,
                &[
                    ("skip", Existing::Skip),
                    ("update", Existing::Update),
                    ("recreate", Existing::Recreate),
                ],
            ))
            .unwrap_or(Existing::Skip),
        dry_run: c
            .take(parse_bool(v::DRY_RUN, &raw.dry_run, false))
            .unwrap_or(false),
        volumes: c
            .take(parse_bool(v::RESTORE_VOLUMES, &raw.restore_volumes, true))
            .unwrap_or(true),
    }
}

/// Volumes and the mover pods that copy them.
fn volume(raw: &RawConfig, c: &mut Check) -> VolumeOptions {
    let volume = VolumeOptions {
        path: opt(&raw.volume_path).map(PathBuf::from),
        name: opt(&raw.volume_name),
        source: c
            .take(parse_enum(
                v::VOLUME_SOURCE,
                &raw.volume_source,
                VolumeSource::Auto,
                &[
                    ("auto", VolumeSource::Auto),
                    ("snapshot", VolumeSource::Snapshot),
                    ("kubelet", VolumeSource::Kubelet),
                    ("skip", VolumeSource::Skip),
                ],
            ))
            .unwrap_or(VolumeSource::Auto),
        exclude: c
            .take(globs(v::EXCLUDE_VOLUMES, &raw.exclude_volumes))
            .unwrap_or_default(),
        image: opt(&raw.image),
        mover_resources: c
            .take(mover_resources(&raw.mover_resources))
            .unwrap_or_default(),
        mover_service_account: opt(&raw.mover_service_account),
        mover_start_timeout: c
            .take(positive_duration(
                v::MOVER_START_TIMEOUT,
                &raw.mover_start_timeout,
                Duration::from_secs(600),
            ))
            .unwrap_or(Duration::from_secs(600)),
        snapshot_timeout: c
            .take(positive_duration(
                v::SNAPSHOT_TIMEOUT,
                &raw.snapshot_timeout,
                Duration::from_secs(600),
            ))
            .unwrap_or(Duration::from_secs(600)),
        kubelet_dir: PathBuf::from(
            opt(&raw.kubelet_dir).unwrap_or_else(|| "/var/lib/kubelet".into()),
        ),
        mover: c
            .take(parse_bool(v::MOVER, &raw.mover, false))
            .unwrap_or(false),
    };
    if !volume.kubelet_dir.is_absolute() {
        c.push(ConfigError::invalid(
            v::KUBELET_DIR,
            &volume.kubelet_dir.display().to_string(),
            "expected an absolute path",
        ));
    }
    if let Some(sa) = &volume.mover_service_account
        && !is_dns_subdomain(sa)
    {
        c.push(ConfigError::invalid(
            v::MOVER_SERVICE_ACCOUNT,
            sa,
            "expected a ServiceAccount name (lowercase letters, digits, `-` and `.`)",
        ));
    }
    if let Some(p) = &volume.path
        && !p.is_absolute()
    {
        c.push(ConfigError::invalid(
            v::VOLUME_PATH,
            &p.display().to_string(),
            "expected an absolute path",
        ));
    }
    volume
}

/// `copy`'s second repository; `None` unless both it and its password are
/// usable (the mode requirements report which is missing).
fn copy_target(raw: &RawConfig, c: &mut Check) -> Option<CopyTarget> {
    let password = c
        .take(read_password(
            v::COPY_TO_PASSWORD,
            &raw.copy_to_password,
            v::COPY_TO_PASSWORD_FILE,
            &raw.copy_to_password_file,
        ))
        .flatten();
    let repository = raw
        .copy_to_repository
        .as_deref()
        .and_then(|s| c.take(location(v::COPY_TO_REPOSITORY, s)));
    Some(CopyTarget {
        repository: repository?,
        password: password?,
    })
}

/// What `prune` keeps and when it deletes, and how much `check` reads.
struct Maintenance {
    retention: Retention,
    grace: Duration,
    check_read_data: Option<ReadData>,
}

fn retention(raw: &RawConfig, c: &mut Check) -> Maintenance {
    let retention = Retention {
        last: c.take(parse_count(v::KEEP_LAST, &raw.keep_last)).flatten(),
        hourly: c
            .take(parse_count(v::KEEP_HOURLY, &raw.keep_hourly))
            .flatten(),
        daily: c
            .take(parse_count(v::KEEP_DAILY, &raw.keep_daily))
            .flatten(),
        weekly: c
            .take(parse_count(v::KEEP_WEEKLY, &raw.keep_weekly))
            .flatten(),
        monthly: c
            .take(parse_count(v::KEEP_MONTHLY, &raw.keep_monthly))
            .flatten(),
        yearly: c
            .take(parse_count(v::KEEP_YEARLY, &raw.keep_yearly))
            .flatten(),
    };

    let grace = match raw.prune_grace.as_deref() {
        None => Duration::from_secs(3600),
        Some(s) => c
            .take(
                parse_duration(v::PRUNE_GRACE, s, Duration::from_secs(1)).and_then(|d| {
                    if d >= Duration::from_secs(1) {
                        Ok(d)
                    } else {
                        Err(ConfigError::invalid(
                            v::PRUNE_GRACE,
                            s,
                            "must be at least 1 second",
                        ))
                    }
                }),
            )
            .unwrap_or(Duration::from_secs(3600)),
    };

    let check_read_data = raw.check_read_data.as_deref().and_then(|s| {
        let t = s.trim();
        let parsed = if t == "all" {
            Some(ReadData::All)
        } else {
            t.strip_suffix('%')
                .and_then(|n| n.parse::<f64>().ok())
                .filter(|p| *p > 0.0 && *p <= 100.0)
                .map(ReadData::Percent)
        };
        c.take(parsed.ok_or_else(|| {
            ConfigError::invalid(
                v::CHECK_READ_DATA,
                s,
                "expected `all` or a percentage such as 10%",
            )
        }))
    });
    Maintenance {
        retention,
        grace,
        check_read_data,
    }
}

/// Logs, metrics, and the mode `preflight` checks for.
struct Reporting {
    preflight_mode: Mode,
    pushgateway_url: Option<String>,
    log_format: LogFormat,
}

fn reporting(raw: &RawConfig, c: &mut Check) -> Reporting {
    let preflight_mode = c
        .take(parse_enum(
            v::PREFLIGHT_MODE,
            &raw.preflight_mode,
            Mode::Backup,
            &[("backup", Mode::Backup), ("restore", Mode::Restore)],
        ))
        .unwrap_or(Mode::Backup);
    let pushgateway_url = opt(&raw.pushgateway_url);
    if let Some(u) = &pushgateway_url
        && !(u.starts_with("http://") || u.starts_with("https://"))
    {
        c.push(ConfigError::invalid(
            v::PUSHGATEWAY_URL,
            u,
            "expected an http:// or https:// URL",
        ));
    }

    let log_format = c
        .take(parse_enum(
            v::LOG_FORMAT,
            &raw.log_format,
            LogFormat::Plain,
            &[("plain", LogFormat::Plain), ("json", LogFormat::Json)],
        ))
        .unwrap_or(LogFormat::Plain);
    Reporting {
        preflight_mode,
        pushgateway_url,
        log_format,
    }
}

/// When a scheduled run actually runs (the run frame applies them).
struct ScheduleGuards {
    once: bool,
    min_interval: Option<Duration>,
    last_day_of_month: bool,
}

fn schedule_guards(raw: &RawConfig, c: &mut Check) -> ScheduleGuards {
    let once = c
        .take(parse_bool(v::ONCE, &raw.once, false))
        .unwrap_or(false);
    let min_interval = raw
        .min_interval
        .as_deref()
        .and_then(|s| c.take(parse_duration(v::MIN_INTERVAL, s, Duration::from_secs(1))));
    let last_day_of_month = c
        .take(parse_bool(
            v::LAST_DAY_OF_MONTH,
            &raw.last_day_of_month,
            false,
        ))
        .unwrap_or(false);
    ScheduleGuards {
        once,
        min_interval,
        last_day_of_month,
    }
}

struct Hooks {
    precondition: Vec<Hook>,
    pre: Vec<Hook>,
    post: Vec<Hook>,
}

fn hooks(raw: &RawConfig, c: &mut Check) -> Hooks {
    let mut parse = |var: &'static str, value: &Option<String>, conditions: bool| {
        let Some(text) = opt(value) else {
            return Vec::new();
        };
        let parsed = if conditions {
            hooks::parse_preconditions(&text)
        } else {
            hooks::parse_hooks(&text)
        };
        c.take(parsed.map_err(|e| ConfigError::invalid(var, &text, e)))
            .unwrap_or_default()
    };
    Hooks {
        precondition: parse(v::PRECONDITION, &raw.precondition, true),
        pre: parse(v::PRE_HOOKS, &raw.pre_hooks, false),
        post: parse(v::POST_HOOKS, &raw.post_hooks, false),
    }
}

/// The downward API's view of this pod; nothing to validate.
fn identity(raw: &RawConfig) -> RunIdentity {
    RunIdentity {
        run_id: opt(&raw.run_id),
        pod_name: opt(&raw.pod_name),
        pod_namespace: opt(&raw.pod_namespace),
        job_name: opt(&raw.job_name),
    }
}

/// Requirements that depend on the mode. They look at the raw values too: a
/// set but invalid variable has already been reported, not missing.
fn requirements(
    raw: &RawConfig,
    mode: Mode,
    repo: &Repository,
    volume: &VolumeOptions,
    lists: &Hooks,
    retention: &Retention,
    c: &mut Check,
) {
    if mode.needs_repository() {
        if repo.location.is_none() && raw.repository.is_none() {
            c.push(ConfigError::Missing {
                var: v::REPOSITORY,
                why: format!("for mode {mode}"),
            });
        }
        if repo.password.is_none() && raw.password.is_none() && raw.password_file.is_none() {
            c.push(ConfigError::Missing {
                var: v::PASSWORD,
                why: format!(
                    "(or {}) for mode {mode}: the repository is encrypted",
                    v::PASSWORD_FILE
                ),
            });
        }
    }
    if matches!(mode, Mode::VolumeBackup | Mode::VolumeRestore) && volume.path.is_none() {
        c.push(ConfigError::Missing {
            var: v::VOLUME_PATH,
            why: format!("for mode {mode}"),
        });
    }
    if mode == Mode::Copy {
        if raw.copy_to_repository.is_none() {
            c.push(ConfigError::Missing {
                var: v::COPY_TO_REPOSITORY,
                why: "for mode copy".into(),
            });
        }
        if raw.copy_to_password.is_none() && raw.copy_to_password_file.is_none() {
            c.push(ConfigError::Missing {
                var: v::COPY_TO_PASSWORD,
                why: format!("(or {}) for mode copy", v::COPY_TO_PASSWORD_FILE),
            });
        }
    }
    for (var, list) in [(v::PRE_HOOKS, &lists.pre), (v::POST_HOOKS, &lists.post)] {
        if mode != Mode::Backup
            && let Some(h) = list.iter().find(|h| h.scope == hooks::Scope::Volume)
        {
            c.push(ConfigError::invalid(
                var,
                &h.to_string(),
                format!(
                    "scope=volume hooks run around the volumes of a backup; mode {mode} has none"
                ),
            ));
        }
    }
    if mode == Mode::Prune && *retention == Retention::default() {
        c.push(ConfigError::Missing {
            var: v::KEEP_LAST,
            why: "(or another STOW_KEEP_* rule) for mode prune: without one, prune would remove every snapshot".into(),
        });
    } else if mode == Mode::Prune && !retention.keeps_anything() {
        c.push(ConfigError::invalid(
            v::KEEP_LAST,
            "0",
            "every STOW_KEEP_* rule is 0: prune would remove every snapshot",
        ));
    }
}
