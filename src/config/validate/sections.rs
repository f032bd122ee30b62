//! The sections of validation, in the order [`RawConfig::validate`] runs
//! them. Each reads its variables from the raw configuration and records
//! every problem in the shared [`Check`].

use std::path::PathBuf;
use std::time::Duration;

use crate::config::error::{Check, ConfigError};
use crate::config::hooks::{self, Hook};
use crate::config::parse::{
    globs, is_dns_label, is_dns_subdomain, label_selector, mover_resources, names, opt, parse_bool,
    parse_count, parse_duration, parse_enum, parse_map, parse_size, positive_duration,
    read_password, resource_list,
};
use crate::config::raw::RawConfig;
use crate::config::vars as v;
use crate::config::{
    ClusterResources, Compression, CopyTarget, Existing, Location, LogFormat, Mode, RateSchedule,
    ReadData, RestoreOptions, Retention, Secret, Selection, VolumeOptions, VolumeSource,
};

/// The repository, its password, how new blobs are written, and the plan
/// that names this run's snapshots.
pub(super) struct Repository {
    pub(super) location: Option<Location>,
    pub(super) password: Option<Secret>,
    pub(super) compression: Compression,
    pub(super) plan: String,
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

pub(super) fn repository(raw: &RawConfig, c: &mut Check) -> Repository {
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
pub(super) struct Operations {
    pub(super) channels: u8,
    pub(super) rate_limit: Option<RateSchedule>,
    pub(super) timezone: jiff::tz::TimeZone,
    pub(super) reconnect_timeout: Duration,
    pub(super) resume_buffer: u64,
}

pub(super) fn operations(raw: &RawConfig, c: &mut Check) -> Operations {
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

pub(super) fn selection(raw: &RawConfig, c: &mut Check) -> Selection {
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

pub(super) fn restore(raw: &RawConfig, c: &mut Check) -> RestoreOptions {
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
                EXISTING,
            ))
            .unwrap_or(Existing::Skip),
        existing_cluster: c
            .take(parse_enum(
                v::EXISTING_CLUSTER_RESOURCES,
                &raw.existing_cluster_resources,
                Existing::Skip,
                EXISTING,
            ))
            .unwrap_or(Existing::Skip),
        dry_run: c
            .take(parse_bool(v::DRY_RUN, &raw.dry_run, false))
            .unwrap_or(false),
        volumes: c
            .take(parse_bool(v::RESTORE_VOLUMES, &raw.restore_volumes, true))
            .unwrap_or(true),
        host_volumes: c
            .take(names(
                v::ALLOW_HOST_VOLUMES,
                &raw.allow_host_volumes,
                is_dns_subdomain,
                "PersistentVolume name",
            ))
            .unwrap_or_default(),
    }
}

/// The choices of `STOW_EXISTING` and `STOW_EXISTING_CLUSTER_RESOURCES`.
const EXISTING: &[(&str, Existing)] = &[
    ("skip", Existing::Skip),
    ("update", Existing::Update),
    ("recreate", Existing::Recreate),
];

/// Volumes and the mover pods that copy them.
pub(super) fn volume(raw: &RawConfig, c: &mut Check) -> VolumeOptions {
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
        mover_namespace: opt(&raw.mover_namespace),
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
        test_exit_after: opt(&raw.test_exit_after),
        kubelet_dir: PathBuf::from(
            opt(&raw.kubelet_dir).unwrap_or_else(|| "/var/lib/kubelet".into()),
        ),
        mover: c
            .take(parse_bool(v::MOVER, &raw.mover, false))
            .unwrap_or(false),
    };
    if let Some(step) = &volume.test_exit_after
        && !matches!(step.as_str(), "filled" | "rebound")
    {
        c.push(ConfigError::invalid(
            v::TEST_EXIT_AFTER,
            step,
            "expected `filled` or `rebound`",
        ));
    }
    if !volume.kubelet_dir.is_absolute() {
        c.push(ConfigError::invalid(
            v::KUBELET_DIR,
            &volume.kubelet_dir.display().to_string(),
            "expected an absolute path",
        ));
    }
    if let Some(ns) = &volume.mover_namespace
        && !is_dns_label(ns)
    {
        c.push(ConfigError::invalid(
            v::MOVER_NAMESPACE,
            ns,
            "expected a namespace name (lowercase letters, digits and `-`)",
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
pub(super) fn copy_target(raw: &RawConfig, c: &mut Check) -> Option<CopyTarget> {
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
pub(super) struct Maintenance {
    pub(super) retention: Retention,
    pub(super) grace: Duration,
    pub(super) check_read_data: Option<ReadData>,
}

pub(super) fn retention(raw: &RawConfig, c: &mut Check) -> Maintenance {
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
pub(super) struct Reporting {
    pub(super) preflight_mode: Mode,
    pub(super) pushgateway_url: Option<crate::config::SecretUrl>,
    pub(super) log_format: LogFormat,
}

pub(super) fn reporting(raw: &RawConfig, c: &mut Check) -> Reporting {
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
        pushgateway_url: pushgateway_url.map(crate::config::SecretUrl::new),
        log_format,
    }
}

/// When a scheduled run actually runs (the run frame applies them).
pub(super) struct ScheduleGuards {
    pub(super) once: bool,
    pub(super) min_interval: Option<Duration>,
    pub(super) last_day_of_month: bool,
}

pub(super) fn schedule_guards(raw: &RawConfig, c: &mut Check) -> ScheduleGuards {
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

pub(super) struct Hooks {
    pub(super) precondition: Vec<Hook>,
    pub(super) pre: Vec<Hook>,
    pub(super) post: Vec<Hook>,
}

pub(super) fn hooks(raw: &RawConfig, c: &mut Check) -> Hooks {
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
