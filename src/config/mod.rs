//! Configuration, read from the environment in two stages: [`RawConfig`] is
//! what `envy` deserialises (every value a string, so that errors can name the
//! variable and the value), and [`Config`] is the validated result.
//!
//! Validation touches nothing but the environment and the password files, so
//! a [`ConfigErrors`] always means exit code 2 before any side effect.

pub mod hooks;
pub mod rate;
mod secret;
pub mod selector;
pub mod vars;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

pub use rate::RateSchedule;
pub use secret::Secret;
pub use selector::LabelSelector;
use vars as v;

/// The operation one run performs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    Backup,
    Restore,
    VolumeBackup,
    VolumeRestore,
    Check,
    Prune,
    Copy,
    List,
    Preflight,
}

impl Mode {
    pub const ALL: [Mode; 9] = [
        Mode::Backup,
        Mode::Restore,
        Mode::VolumeBackup,
        Mode::VolumeRestore,
        Mode::Check,
        Mode::Prune,
        Mode::Copy,
        Mode::List,
        Mode::Preflight,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Backup => "backup",
            Mode::Restore => "restore",
            Mode::VolumeBackup => "volume-backup",
            Mode::VolumeRestore => "volume-restore",
            Mode::Check => "check",
            Mode::Prune => "prune",
            Mode::Copy => "copy",
            Mode::List => "list",
            Mode::Preflight => "preflight",
        }
    }

    /// Every mode but preflight opens the repository, so it needs the password.
    fn needs_repository(self) -> bool {
        self != Mode::Preflight
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Mode::ALL.into_iter().find(|m| m.as_str() == s).ok_or(())
    }
}

/// Where the repository lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    S3 { bucket: String, prefix: String },
    File { path: PathBuf },
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            Location::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
            Location::File { path } => write!(f, "file://{}", path.display()),
        }
    }
}

impl Location {
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            validate_bucket(bucket)?;
            let prefix = prefix.trim_matches('/');
            if prefix.split('/').any(|seg| seg == "." || seg == "..") {
                return Err("the prefix must not contain `.` or `..` segments".into());
            }
            Ok(Location::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.to_string(),
            })
        } else if let Some(path) = s.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err("a file repository needs an absolute path: file:///path".into());
            }
            if path.trim_end_matches('/').is_empty() {
                return Err("refusing to use `/` as a repository".into());
            }
            Ok(Location::File {
                path: PathBuf::from(path),
            })
        } else {
            Err("unknown scheme".into())
        }
    }
}

fn validate_bucket(b: &str) -> Result<(), String> {
    let ok_chars = b
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.');
    let ok_ends = b.starts_with(|c: char| c.is_ascii_alphanumeric())
        && b.ends_with(|c: char| c.is_ascii_alphanumeric());
    if (3..=63).contains(&b.len()) && ok_chars && ok_ends {
        Ok(())
    } else {
        Err(format!(
            "`{b}` is not a valid S3 bucket name (3-63 lowercase letters, digits, `-` or `.`)"
        ))
    }
}

/// zstd setting for new blobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Compression {
    None,
    Level(i32),
}

/// `STOW_REPOSITORY` with its password: what opening a repository needs.
#[derive(Debug, Clone, Copy)]
pub struct RepositoryAccess<'a> {
    pub location: &'a Location,
    pub password: &'a Secret,
}

impl Config {
    /// The repository and its password, when both are set (validation
    /// requires both for every mode that opens a repository).
    pub fn repository_access(&self) -> Option<RepositoryAccess<'_>> {
        Some(RepositoryAccess {
            location: self.repository.as_ref()?,
            password: self.password.as_ref()?,
        })
    }
}

impl Compression {
    /// `fast`: zstd level 1, the fastest level that still shrinks text well.
    pub const FAST: Compression = Compression::Level(1);
}

/// `STOW_COMPRESSION`'s default.
impl Default for Compression {
    fn default() -> Self {
        Compression::FAST
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterResources {
    Auto,
    All,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Existing {
    Skip,
    Update,
    Recreate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeSource {
    Auto,
    Snapshot,
    Kubelet,
    Skip,
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub enum ReadData {
    All,
    /// Fraction of packs, in percent (0, 100].
    Percent(f64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Plain,
    Json,
}

/// What a run backs up or restores.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub namespaces: Vec<String>,
    pub exclude_namespaces: Vec<String>,
    pub include_resources: Vec<String>,
    pub exclude_resources: Vec<String>,
    pub label_selector: Option<String>,
    pub cluster_resources: Option<ClusterResources>,
}

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub point: Option<jiff::Timestamp>,
    pub snapshot: Option<String>,
    pub source_cluster: Option<String>,
    pub namespace_map: BTreeMap<String, String>,
    pub storage_class_map: BTreeMap<String, String>,
    pub existing: Existing,
    pub dry_run: bool,
    pub volumes: bool,
}

#[derive(Debug, Clone)]
pub struct VolumeOptions {
    pub path: Option<PathBuf>,
    /// The volume's key in snapshots (`STOW_VOLUME_NAME`); `None` means the path.
    pub name: Option<String>,
    pub source: VolumeSource,
    pub exclude: Vec<String>,
    pub image: Option<String>,
    pub mover_resources: BTreeMap<String, String>,
    pub mover_service_account: Option<String>,
    pub mover_start_timeout: Duration,
    pub snapshot_timeout: Duration,
    pub kubelet_dir: PathBuf,
    /// `STOW_MOVER`: this `volume-backup` runs for an orchestrating backup.
    pub mover: bool,
}

/// Retention counts for `prune`; `None` means the rule is not used.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retention {
    pub last: Option<u32>,
    pub hourly: Option<u32>,
    pub daily: Option<u32>,
    pub weekly: Option<u32>,
    pub monthly: Option<u32>,
    pub yearly: Option<u32>,
}

impl Retention {
    /// Whether some rule keeps at least one snapshot.
    pub fn keeps_anything(&self) -> bool {
        [
            self.last,
            self.hourly,
            self.daily,
            self.weekly,
            self.monthly,
            self.yearly,
        ]
        .iter()
        .any(|n| n.is_some_and(|n| n > 0))
    }
}

#[derive(Debug, Clone)]
pub struct CopyTarget {
    pub repository: Location,
    pub password: Secret,
}

/// Identity of this run, from the downward API.
#[derive(Debug, Clone, Default)]
pub struct RunIdentity {
    pub run_id: Option<String>,
    pub pod_name: Option<String>,
    pub pod_namespace: Option<String>,
    pub job_name: Option<String>,
}

/// The validated configuration. `Debug` is safe to log: secrets are redacted.
#[derive(Debug, Clone)]
pub struct Config {
    pub mode: Mode,
    pub repository: Option<Location>,
    pub password: Option<Secret>,
    pub init: bool,
    pub compression: Compression,
    pub plan: String,
    /// `STOW_PLAN` was set (not just defaulted): `list`, `copy` and `prune`
    /// then only consider snapshots of that plan.
    pub plan_explicit: bool,
    pub tags: Vec<String>,
    pub selection: Selection,
    pub restore: RestoreOptions,
    pub volume: VolumeOptions,
    pub channels: u8,
    pub rate_limit: Option<RateSchedule>,
    pub timezone: jiff::tz::TimeZone,
    pub reconnect_timeout: Duration,
    pub resume_buffer: u64,
    /// `STOW_PRECONDITION`: all must be met, else the run is skipped.
    pub precondition: Vec<hooks::Hook>,
    pub pre_hooks: Vec<hooks::Hook>,
    pub post_hooks: Vec<hooks::Hook>,
    pub copy_to: Option<CopyTarget>,
    pub retention: Retention,
    /// `prune`: marked packs are deleted by a later prune once older than this.
    pub prune_grace: Duration,
    pub check_read_data: Option<ReadData>,
    pub pushgateway_url: Option<String>,
    pub cluster_name: String,
    /// `preflight`: the mode whose needs are checked.
    pub preflight_mode: Mode,
    pub log_format: LogFormat,
    pub once: bool,
    pub min_interval: Option<Duration>,
    /// `STOW_LAST_DAY_OF_MONTH`: run only on the month's last day (see the run frame's schedule guards).
    pub last_day_of_month: bool,
    pub identity: RunIdentity,
}

/// Stage one: the environment as strings. Field names are the variable names
/// without the `STOW_` prefix, in lower case (envy's convention).
#[derive(Debug, Default, Deserialize)]
pub struct RawConfig {
    mode: Option<String>,
    repository: Option<String>,
    password: Option<Secret>,
    password_file: Option<String>,
    init: Option<String>,
    compression: Option<String>,
    plan: Option<String>,
    tags: Option<String>,
    namespaces: Option<String>,
    exclude_namespaces: Option<String>,
    include_resources: Option<String>,
    exclude_resources: Option<String>,
    label_selector: Option<String>,
    include_cluster_resources: Option<String>,
    restore_point: Option<String>,
    snapshot: Option<String>,
    source_cluster: Option<String>,
    namespace_map: Option<String>,
    storage_class_map: Option<String>,
    existing: Option<String>,
    dry_run: Option<String>,
    restore_volumes: Option<String>,
    volume_path: Option<String>,
    volume_name: Option<String>,
    volume_source: Option<String>,
    exclude_volumes: Option<String>,
    image: Option<String>,
    mover_resources: Option<String>,
    mover_service_account: Option<String>,
    mover_start_timeout: Option<String>,
    snapshot_timeout: Option<String>,
    kubelet_dir: Option<String>,
    mover: Option<String>,
    channels: Option<String>,
    rate_limit: Option<String>,
    timezone: Option<String>,
    reconnect_timeout: Option<String>,
    resume_buffer: Option<String>,
    precondition: Option<String>,
    pre_hooks: Option<String>,
    post_hooks: Option<String>,
    copy_to_repository: Option<String>,
    copy_to_password: Option<Secret>,
    copy_to_password_file: Option<String>,
    keep_last: Option<String>,
    keep_hourly: Option<String>,
    keep_daily: Option<String>,
    keep_weekly: Option<String>,
    keep_monthly: Option<String>,
    keep_yearly: Option<String>,
    prune_grace: Option<String>,
    check_read_data: Option<String>,
    pushgateway_url: Option<String>,
    cluster_name: Option<String>,
    preflight_mode: Option<String>,
    log_format: Option<String>,
    once: Option<String>,
    min_interval: Option<String>,
    last_day_of_month: Option<String>,
    run_id: Option<String>,
    pod_name: Option<String>,
    pod_namespace: Option<String>,
    job_name: Option<String>,
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret::new)
    }
}

/// One problem with one variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{var}={value} is invalid: {reason}")]
    Invalid {
        var: &'static str,
        /// Already quoted, or `<redacted>` for secrets.
        value: String,
        reason: String,
    },
    #[error("{var} is required {why}")]
    Missing { var: &'static str, why: String },
    #[error("{a} and {b} cannot both be set; {hint}")]
    Conflict {
        a: &'static str,
        b: &'static str,
        hint: &'static str,
    },
    #[error("unknown variable {var}{}", suggestion.map(|s| format!("; did you mean {s}?")).unwrap_or_default())]
    Unknown {
        var: String,
        suggestion: Option<&'static str>,
    },
    #[error("{var}: cannot read {path}: {reason}")]
    File {
        var: &'static str,
        path: String,
        reason: String,
    },
}

impl ConfigError {
    fn invalid(var: &'static str, value: &str, reason: impl Into<String>) -> Self {
        let secret = v::find(var).is_some_and(|d| d.secret);
        ConfigError::Invalid {
            var,
            value: if secret {
                "<redacted>".into()
            } else {
                format!("{value:?}")
            },
            reason: reason.into(),
        }
    }

    /// The variable the error is about.
    pub fn var(&self) -> &str {
        match self {
            ConfigError::Invalid { var, .. }
            | ConfigError::Missing { var, .. }
            | ConfigError::File { var, .. } => var,
            ConfigError::Conflict { a, .. } => a,
            ConfigError::Unknown { var, .. } => var,
        }
    }
}

/// Every problem found, so one run reports them all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Variables that are not ours but look like ours are typos; the rest of the
/// environment is ignored.
const PREFIX: &str = "STOW_";

impl Config {
    /// Reads the process environment. `mode_override` is the first CLI argument.
    pub fn from_env(mode_override: Option<&str>) -> Result<Config, ConfigErrors> {
        Self::from_vars(
            std::env::vars_os().filter_map(|(k, v)| {
                Some((k.into_string().ok()?, v.into_string().unwrap_or_default()))
            }),
            mode_override,
        )
    }

    /// Reads configuration from explicit pairs (tests use this).
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
        mode_override: Option<&str>,
    ) -> Result<Config, ConfigErrors> {
        let vars: Vec<(String, String)> = vars.into_iter().collect();
        let mut errors = Vec::new();
        for (name, _) in &vars {
            if name.starts_with(PREFIX) && v::find(name).is_none() {
                errors.push(ConfigError::Unknown {
                    var: name.clone(),
                    suggestion: closest(name),
                });
            }
        }
        // Empty values mean "unset": Kubernetes manifests often template `value: ""`.
        let ours = vars
            .into_iter()
            .filter(|(k, val)| k.starts_with(PREFIX) && !val.is_empty());
        let raw: RawConfig = match envy::prefixed(PREFIX).from_iter(ours) {
            Ok(raw) => raw,
            Err(e) => {
                // All fields are strings, so this only happens on non-string input.
                errors.push(ConfigError::Invalid {
                    var: v::MODE,
                    value: String::new(),
                    reason: e.to_string(),
                });
                return Err(ConfigErrors(errors));
            }
        };
        match raw.validate(mode_override) {
            Ok(cfg) if errors.is_empty() => Ok(cfg),
            Ok(_) => Err(ConfigErrors(errors)),
            Err(ConfigErrors(mut more)) => {
                errors.append(&mut more);
                Err(ConfigErrors(errors))
            }
        }
    }
}

fn closest(name: &str) -> Option<&'static str> {
    v::ALL
        .iter()
        .map(|var| (strsim::jaro_winkler(name, var.name), var.name))
        .filter(|(score, _)| *score > 0.85)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, n)| n)
}

/// Collects errors while parsing fields, so validation reports all of them.
struct Check(Vec<ConfigError>);

impl Check {
    fn take<T>(&mut self, r: Result<T, ConfigError>) -> Option<T> {
        r.map_err(|e| self.0.push(e)).ok()
    }
}

fn parse_bool(var: &'static str, raw: &Option<String>, default: bool) -> Result<bool, ConfigError> {
    match raw.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None => Ok(default),
        Some("true" | "1" | "yes" | "on") => Ok(true),
        Some("false" | "0" | "no" | "off") => Ok(false),
        Some(_) => Err(ConfigError::invalid(
            var,
            raw.as_deref().unwrap_or_default(),
            "expected true or false",
        )),
    }
}

fn parse_enum<T: Copy>(
    var: &'static str,
    raw: &Option<String>,
    default: T,
    choices: &[(&str, T)],
) -> Result<T, ConfigError> {
    let Some(s) = raw.as_deref() else {
        return Ok(default);
    };
    choices
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(s.trim()))
        .map(|(_, val)| *val)
        .ok_or_else(|| {
            let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
            ConfigError::invalid(var, s, format!("expected one of {}", names.join(", ")))
        })
}

fn list(raw: &Option<String>) -> Vec<String> {
    raw.as_deref()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

fn globs(var: &'static str, raw: &Option<String>) -> Result<Vec<String>, ConfigError> {
    let items = list(raw);
    for g in &items {
        globset::Glob::new(g).map_err(|e| {
            ConfigError::invalid(
                var,
                raw.as_deref().unwrap_or_default(),
                format!("bad glob `{g}`: {}", e.kind()),
            )
        })?;
    }
    Ok(items)
}

/// RFC 1123 label: namespaces, plan names.
fn is_dns_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// RFC 1123 subdomain: storage class names.
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn parse_map(
    var: &'static str,
    raw: &Option<String>,
    valid: fn(&str) -> bool,
    what: &str,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut map = BTreeMap::new();
    let text = raw.as_deref().unwrap_or_default();
    for pair in list(raw) {
        let Some((from, to)) = pair.split_once('=') else {
            return Err(ConfigError::invalid(
                var,
                text,
                format!("`{pair}` is not `old=new`"),
            ));
        };
        let (from, to) = (from.trim(), to.trim());
        for side in [from, to] {
            if !valid(side) {
                return Err(ConfigError::invalid(
                    var,
                    text,
                    format!("`{side}` is not a valid {what}"),
                ));
            }
        }
        if map.insert(from.to_string(), to.to_string()).is_some() {
            return Err(ConfigError::invalid(
                var,
                text,
                format!("`{from}` is mapped twice"),
            ));
        }
    }
    Ok(map)
}

fn parse_size(var: &'static str, raw: &Option<String>, default: u64) -> Result<u64, ConfigError> {
    let Some(s) = raw.as_deref() else {
        return Ok(default);
    };
    let size: bytesize::ByteSize = s
        .trim()
        .parse()
        .map_err(|_| ConfigError::invalid(var, s, "expected a size such as 10MiB"))?;
    if size.as_u64() == 0 {
        return Err(ConfigError::invalid(var, s, "must be greater than zero"));
    }
    Ok(size.as_u64())
}

/// A duration of at least one second, in seconds when bare.
fn positive_duration(
    var: &'static str,
    raw: &Option<String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let Some(s) = raw.as_deref() else {
        return Ok(default);
    };
    let d = parse_duration(var, s, Duration::from_secs(1))?;
    if d < Duration::from_secs(1) {
        return Err(ConfigError::invalid(var, s, "must be at least 1 second"));
    }
    Ok(d)
}

/// A duration: jiff's friendly format (`5m`, `1h 30m`, `3d`) or ISO 8601, or
/// a bare number in `bare_unit`.
pub(crate) fn parse_duration(
    var: &'static str,
    s: &str,
    bare_unit: Duration,
) -> Result<Duration, ConfigError> {
    let s = s.trim();
    if let Ok(n) = s.parse::<u64>() {
        return Ok(bare_unit * n as u32);
    }
    // Spans (not SignedDuration) so that `3d` means three 24-hour days.
    let span: jiff::Span = s
        .parse()
        .map_err(|_| ConfigError::invalid(var, s, "expected a duration such as 5m, 90s or 3d"))?;
    let secs = span
        .total(jiff::SpanTotal::from(jiff::Unit::Second).days_are_24_hours())
        .map_err(|e| ConfigError::invalid(var, s, e.to_string()))?;
    if secs < 0.0 {
        return Err(ConfigError::invalid(var, s, "must not be negative"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_count(var: &'static str, raw: &Option<String>) -> Result<Option<u32>, ConfigError> {
    raw.as_deref()
        .map(|s| {
            s.trim().parse::<u32>().map_err(|_| {
                ConfigError::invalid(var, s, "expected a whole number of snapshots, 0 or more")
            })
        })
        .transpose()
}

fn read_password(
    inline_var: &'static str,
    inline: &Option<Secret>,
    file_var: &'static str,
    file: &Option<String>,
) -> Result<Option<Secret>, ConfigError> {
    match (inline, file) {
        (Some(_), Some(_)) => Err(ConfigError::Conflict {
            a: inline_var,
            b: file_var,
            hint: "set only one",
        }),
        (Some(s), None) => Ok(Some(s.clone())),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
                var: file_var,
                path: path.clone(),
                reason: e.kind().to_string(),
            })?;
            let pw = text.trim_end_matches(['\n', '\r']);
            if pw.is_empty() {
                return Err(ConfigError::File {
                    var: file_var,
                    path: path.clone(),
                    reason: "the file is empty".into(),
                });
            }
            Ok(Some(Secret::new(pw)))
        }
        (None, None) => Ok(None),
    }
}

fn opt(raw: &Option<String>) -> Option<String> {
    raw.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
}

impl RawConfig {
    /// Stage two. Returns every problem, not just the first.
    pub fn validate(self, mode_override: Option<&str>) -> Result<Config, ConfigErrors> {
        let mut c = Check(Vec::new());
        let mode_text = mode_override.map(String::from).or(self.mode.clone());
        let mode = match mode_text.as_deref() {
            None => {
                c.0.push(ConfigError::Missing {
                    var: v::MODE,
                    why: format!(
                        "(or a first argument): one of {}",
                        Mode::ALL.map(Mode::as_str).join(", ")
                    ),
                });
                None
            }
            Some(s) => c.take(s.trim().parse::<Mode>().map_err(|()| {
                ConfigError::invalid(
                    v::MODE,
                    s,
                    format!(
                        "unknown mode; expected one of {}",
                        Mode::ALL.map(Mode::as_str).join(", ")
                    ),
                )
            })),
        };

        let repository = self.repository.as_deref().and_then(|s| {
            c.take(Location::parse(s.trim()).map_err(|r| {
                ConfigError::invalid(
                    v::REPOSITORY,
                    s,
                    format!("{r}; expected s3://bucket/prefix or file:///path"),
                )
            }))
        });
        let password = c
            .take(read_password(
                v::PASSWORD,
                &self.password,
                v::PASSWORD_FILE,
                &self.password_file,
            ))
            .flatten();

        let compression = match self.compression.as_deref().map(str::trim) {
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

        let plan = opt(&self.plan).unwrap_or_else(|| "default".into());
        if !is_dns_label(&plan) {
            c.0.push(ConfigError::invalid(
                v::PLAN,
                &plan,
                "expected a DNS label (lowercase letters, digits, `-`)",
            ));
        }

        let channels = match self.channels.as_deref() {
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

        let rate_limit = self.rate_limit.as_deref().and_then(|s| {
            c.take(RateSchedule::parse(s).map_err(|r| {
                ConfigError::invalid(
                    v::RATE_LIMIT,
                    s,
                    format!("{r}; expected e.g. 50MiB or `mon-fri 09:00-18:00=10MiB,*=200MiB`"),
                )
            }))
        });
        let timezone = match self.timezone.as_deref() {
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

        let reconnect_timeout = match self.reconnect_timeout.as_deref() {
            None => Duration::from_secs(300),
            Some(s) => c
                .take(
                    parse_duration(v::RECONNECT_TIMEOUT, s, Duration::from_secs(60)).and_then(
                        |d| {
                            if (60..=3600).contains(&d.as_secs()) && d.subsec_nanos() == 0 {
                                Ok(d)
                            } else {
                                Err(ConfigError::invalid(
                                    v::RECONNECT_TIMEOUT,
                                    s,
                                    "must be between 1 and 60 minutes",
                                ))
                            }
                        },
                    ),
                )
                .unwrap_or(Duration::from_secs(300)),
        };
        let resume_buffer = c
            .take(parse_size(
                v::RESUME_BUFFER,
                &self.resume_buffer,
                10 * 1024 * 1024,
            ))
            .unwrap_or(10 * 1024 * 1024);

        let selection = Selection {
            namespaces: c
                .take(globs(v::NAMESPACES, &self.namespaces))
                .unwrap_or_default(),
            exclude_namespaces: c
                .take(globs(v::EXCLUDE_NAMESPACES, &self.exclude_namespaces))
                .unwrap_or_default(),
            include_resources: c
                .take(resource_list(v::INCLUDE_RESOURCES, &self.include_resources))
                .unwrap_or_default(),
            exclude_resources: c
                .take(resource_list(v::EXCLUDE_RESOURCES, &self.exclude_resources))
                .unwrap_or_default(),
            label_selector: self
                .label_selector
                .as_deref()
                .and_then(|s| c.take(label_selector(s))),
            cluster_resources: c.take(parse_enum(
                v::INCLUDE_CLUSTER_RESOURCES,
                &self.include_cluster_resources,
                ClusterResources::Auto,
                &[
                    ("auto", ClusterResources::Auto),
                    ("true", ClusterResources::All),
                    ("false", ClusterResources::None),
                ],
            )),
        };

        let point = self.restore_point.as_deref().and_then(|s| {
            c.take(s.trim().parse::<jiff::Timestamp>().map_err(|_| {
                ConfigError::invalid(
                    v::RESTORE_POINT,
                    s,
                    "expected an RFC 3339 time with offset, e.g. 2026-11-22T02:00:00Z",
                )
            }))
        });
        if self.restore_point.is_some() && self.snapshot.is_some() {
            c.0.push(ConfigError::Conflict {
                a: v::RESTORE_POINT,
                b: v::SNAPSHOT,
                hint: "name a snapshot or a point in time, not both",
            });
        }
        let restore = RestoreOptions {
            point,
            snapshot: opt(&self.snapshot),
            source_cluster: opt(&self.source_cluster),
            namespace_map: c
                .take(parse_map(
                    v::NAMESPACE_MAP,
                    &self.namespace_map,
                    is_dns_label,
                    "namespace name",
                ))
                .unwrap_or_default(),
            storage_class_map: c
                .take(parse_map(
                    v::STORAGE_CLASS_MAP,
                    &self.storage_class_map,
                    is_dns_subdomain,
                    "storage class name",
                ))
                .unwrap_or_default(),
            existing: c
                .take(parse_enum(
                    v::EXISTING,
                    &self.existing,
                    Existing::Skip,
                    &[
                        ("skip", Existing::Skip),
                        ("update", Existing::Update),
                        ("recreate", Existing::Recreate),
                    ],
                ))
                .unwrap_or(Existing::Skip),
            dry_run: c
                .take(parse_bool(v::DRY_RUN, &self.dry_run, false))
                .unwrap_or(false),
            volumes: c
                .take(parse_bool(v::RESTORE_VOLUMES, &self.restore_volumes, true))
                .unwrap_or(true),
        };

        let volume = VolumeOptions {
            path: opt(&self.volume_path).map(PathBuf::from),
            name: opt(&self.volume_name),
            source: c
                .take(parse_enum(
                    v::VOLUME_SOURCE,
                    &self.volume_source,
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
                .take(globs(v::EXCLUDE_VOLUMES, &self.exclude_volumes))
                .unwrap_or_default(),
            image: opt(&self.image),
            mover_resources: c
                .take(mover_resources(&self.mover_resources))
                .unwrap_or_default(),
            mover_service_account: opt(&self.mover_service_account),
            mover_start_timeout: c
                .take(positive_duration(
                    v::MOVER_START_TIMEOUT,
                    &self.mover_start_timeout,
                    Duration::from_secs(600),
                ))
                .unwrap_or(Duration::from_secs(600)),
            snapshot_timeout: c
                .take(positive_duration(
                    v::SNAPSHOT_TIMEOUT,
                    &self.snapshot_timeout,
                    Duration::from_secs(600),
                ))
                .unwrap_or(Duration::from_secs(600)),
            kubelet_dir: PathBuf::from(
                opt(&self.kubelet_dir).unwrap_or_else(|| "/var/lib/kubelet".into()),
            ),
            mover: c
                .take(parse_bool(v::MOVER, &self.mover, false))
                .unwrap_or(false),
        };
        if !volume.kubelet_dir.is_absolute() {
            c.0.push(ConfigError::invalid(
                v::KUBELET_DIR,
                &volume.kubelet_dir.display().to_string(),
                "expected an absolute path",
            ));
        }
        if let Some(sa) = &volume.mover_service_account
            && !is_dns_subdomain(sa)
        {
            c.0.push(ConfigError::invalid(
                v::MOVER_SERVICE_ACCOUNT,
                sa,
                "expected a ServiceAccount name (lowercase letters, digits, `-` and `.`)",
            ));
        }
        if let Some(p) = &volume.path
            && !p.is_absolute()
        {
            c.0.push(ConfigError::invalid(
                v::VOLUME_PATH,
                &p.display().to_string(),
                "expected an absolute path",
            ));
        }

        let copy_password = c
            .take(read_password(
                v::COPY_TO_PASSWORD,
                &self.copy_to_password,
                v::COPY_TO_PASSWORD_FILE,
                &self.copy_to_password_file,
            ))
            .flatten();
        let copy_repo = self.copy_to_repository.as_deref().and_then(|s| {
            c.take(Location::parse(s.trim()).map_err(|r| {
                ConfigError::invalid(
                    v::COPY_TO_REPOSITORY,
                    s,
                    format!("{r}; expected s3://bucket/prefix or file:///path"),
                )
            }))
        });

        let retention = Retention {
            last: c.take(parse_count(v::KEEP_LAST, &self.keep_last)).flatten(),
            hourly: c
                .take(parse_count(v::KEEP_HOURLY, &self.keep_hourly))
                .flatten(),
            daily: c
                .take(parse_count(v::KEEP_DAILY, &self.keep_daily))
                .flatten(),
            weekly: c
                .take(parse_count(v::KEEP_WEEKLY, &self.keep_weekly))
                .flatten(),
            monthly: c
                .take(parse_count(v::KEEP_MONTHLY, &self.keep_monthly))
                .flatten(),
            yearly: c
                .take(parse_count(v::KEEP_YEARLY, &self.keep_yearly))
                .flatten(),
        };

        let prune_grace = match self.prune_grace.as_deref() {
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

        let check_read_data = self.check_read_data.as_deref().and_then(|s| {
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

        let preflight_mode = c
            .take(parse_enum(
                v::PREFLIGHT_MODE,
                &self.preflight_mode,
                Mode::Backup,
                &[("backup", Mode::Backup), ("restore", Mode::Restore)],
            ))
            .unwrap_or(Mode::Backup);
        let pushgateway_url = opt(&self.pushgateway_url);
        if let Some(u) = &pushgateway_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            c.0.push(ConfigError::invalid(
                v::PUSHGATEWAY_URL,
                u,
                "expected an http:// or https:// URL",
            ));
        }

        let log_format = c
            .take(parse_enum(
                v::LOG_FORMAT,
                &self.log_format,
                LogFormat::Plain,
                &[("plain", LogFormat::Plain), ("json", LogFormat::Json)],
            ))
            .unwrap_or(LogFormat::Plain);
        let once = c
            .take(parse_bool(v::ONCE, &self.once, false))
            .unwrap_or(false);
        let min_interval = self
            .min_interval
            .as_deref()
            .and_then(|s| c.take(parse_duration(v::MIN_INTERVAL, s, Duration::from_secs(1))));
        let last_day_of_month = c
            .take(parse_bool(
                v::LAST_DAY_OF_MONTH,
                &self.last_day_of_month,
                false,
            ))
            .unwrap_or(false);
        let init = c
            .take(parse_bool(v::INIT, &self.init, false))
            .unwrap_or(false);
        let hooks = |c: &mut Check, var: &'static str, raw: &Option<String>, conditions: bool| {
            let Some(text) = opt(raw) else {
                return Vec::new();
            };
            let parsed = if conditions {
                hooks::parse_preconditions(&text)
            } else {
                hooks::parse_hooks(&text)
            };
            c.take(parsed.map_err(|why| ConfigError::invalid(var, &text, why)))
                .unwrap_or_default()
        };
        let precondition = hooks(&mut c, v::PRECONDITION, &self.precondition, true);
        let pre_hooks = hooks(&mut c, v::PRE_HOOKS, &self.pre_hooks, false);
        let post_hooks = hooks(&mut c, v::POST_HOOKS, &self.post_hooks, false);

        // Requirements that depend on the mode.
        if let Some(mode) = mode {
            if mode.needs_repository() {
                if repository.is_none() && self.repository.is_none() {
                    c.0.push(ConfigError::Missing {
                        var: v::REPOSITORY,
                        why: format!("for mode {mode}"),
                    });
                }
                if password.is_none() && self.password.is_none() && self.password_file.is_none() {
                    c.0.push(ConfigError::Missing {
                        var: v::PASSWORD,
                        why: format!(
                            "(or {}) for mode {mode}: the repository is encrypted",
                            v::PASSWORD_FILE
                        ),
                    });
                }
            }
            if matches!(mode, Mode::VolumeBackup | Mode::VolumeRestore) && volume.path.is_none() {
                c.0.push(ConfigError::Missing {
                    var: v::VOLUME_PATH,
                    why: format!("for mode {mode}"),
                });
            }
            if mode == Mode::Copy {
                if self.copy_to_repository.is_none() {
                    c.0.push(ConfigError::Missing {
                        var: v::COPY_TO_REPOSITORY,
                        why: "for mode copy".into(),
                    });
                }
                if self.copy_to_password.is_none() && self.copy_to_password_file.is_none() {
                    c.0.push(ConfigError::Missing {
                        var: v::COPY_TO_PASSWORD,
                        why: format!("(or {}) for mode copy", v::COPY_TO_PASSWORD_FILE),
                    });
                }
            }
            for (var, list) in [(v::PRE_HOOKS, &pre_hooks), (v::POST_HOOKS, &post_hooks)] {
                if mode != Mode::Backup
                    && let Some(h) = list.iter().find(|h| h.scope == hooks::Scope::Volume)
                {
                    c.0.push(ConfigError::invalid(
                        var,
                        &h.to_string(),
                        format!("scope=volume hooks run around the volumes of a backup; mode {mode} has none"),
                    ));
                }
            }
            if mode == Mode::Prune && retention == Retention::default() {
                c.0.push(ConfigError::Missing {
                    var: v::KEEP_LAST,
                    why: "(or another STOW_KEEP_* rule) for mode prune: without one, prune would remove every snapshot".into(),
                });
            } else if mode == Mode::Prune && !retention.keeps_anything() {
                c.0.push(ConfigError::invalid(
                    v::KEEP_LAST,
                    "0",
                    "every STOW_KEEP_* rule is 0: prune would remove every snapshot",
                ));
            }
        }

        if !c.0.is_empty() {
            return Err(ConfigErrors(c.0));
        }
        Ok(Config {
            mode: mode.expect("mode is set when there are no errors"),
            repository,
            password,
            init,
            compression,
            plan,
            plan_explicit: opt(&self.plan).is_some(),
            tags: list(&self.tags),
            selection,
            restore,
            volume,
            channels,
            rate_limit,
            timezone,
            reconnect_timeout,
            resume_buffer,
            precondition,
            pre_hooks,
            post_hooks,
            copy_to: match (copy_repo, copy_password) {
                (Some(repository), Some(password)) => Some(CopyTarget {
                    repository,
                    password,
                }),
                _ => None,
            },
            retention,
            prune_grace,
            check_read_data,
            pushgateway_url,
            cluster_name: opt(&self.cluster_name).unwrap_or_else(|| "default".into()),
            preflight_mode,
            log_format,
            once,
            min_interval,
            last_day_of_month,
            identity: RunIdentity {
                run_id: opt(&self.run_id),
                pod_name: opt(&self.pod_name),
                pod_namespace: opt(&self.pod_namespace),
                job_name: opt(&self.job_name),
            },
        })
    }
}

/// `resource` or `resource.group`, lower case, as kubectl prints them.
fn resource_list(var: &'static str, raw: &Option<String>) -> Result<Vec<String>, ConfigError> {
    let items = list(raw);
    for r in &items {
        let ok = r != "*"
            && r.split('.').all(|p| {
                !p.is_empty()
                    && p.bytes()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
            });
        if !ok && r != "*" {
            return Err(ConfigError::invalid(
                var,
                raw.as_deref().unwrap_or_default(),
                format!("`{r}` is not a resource name such as deployments or widgets.example.com"),
            ));
        }
    }
    Ok(items)
}

/// Parses the selector the way the API server does (equality and set-based
/// requirements), so a typo fails with exit 2 instead of mid-run.
fn label_selector(s: &str) -> Result<String, ConfigError> {
    let s = s.trim();
    LabelSelector::parse(s).map_err(|why| ConfigError::invalid(v::LABEL_SELECTOR, s, why))?;
    Ok(s.to_string())
}

const MOVER_RESOURCE_KEYS: [&str; 6] = [
    "requests.cpu",
    "requests.memory",
    "requests.ephemeral-storage",
    "limits.cpu",
    "limits.memory",
    "limits.ephemeral-storage",
];

fn mover_resources(raw: &Option<String>) -> Result<BTreeMap<String, String>, ConfigError> {
    let text = raw.as_deref().unwrap_or_default();
    let mut out = BTreeMap::new();
    for pair in list(raw) {
        let (k, val) = pair.split_once('=').ok_or_else(|| {
            ConfigError::invalid(
                v::MOVER_RESOURCES,
                text,
                format!("`{pair}` is not key=quantity"),
            )
        })?;
        if !MOVER_RESOURCE_KEYS.contains(&k.trim()) {
            return Err(ConfigError::invalid(
                v::MOVER_RESOURCES,
                text,
                format!(
                    "unknown key `{k}`; expected one of {}",
                    MOVER_RESOURCE_KEYS.join(", ")
                ),
            ));
        }
        let q = val.trim();
        let digits = q.trim_end_matches(|c: char| c.is_ascii_alphabetic());
        let suffix = &q[digits.len()..];
        let ok_suffix = ["", "m", "k", "M", "G", "T", "Ki", "Mi", "Gi", "Ti"].contains(&suffix);
        if digits.is_empty() || digits.parse::<f64>().is_err() || !ok_suffix {
            return Err(ConfigError::invalid(
                v::MOVER_RESOURCES,
                text,
                format!("`{q}` is not a quantity such as 100m or 512Mi"),
            ));
        }
        out.insert(k.trim().to_string(), q.to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
