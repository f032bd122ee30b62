//! Configuration, read from the environment in two stages: [`RawConfig`] is
//! what `envy` deserialises (every value a string, so that errors can name the
//! variable and the value), and [`Config`] is the validated result.
//!
//! Validation touches nothing but the environment and the password files, so
//! a [`ConfigErrors`] always means exit code 2 before any side effect.
//!
//! Layout: this file holds the validated types; `raw` reads the environment,
//! `validate` turns it into a [`Config`] section by section, `parse` holds
//! the value parsers and `error` the error types.

mod error;
pub mod hooks;
mod parse;
pub mod rate;
mod raw;
mod secret;
pub mod selector;
mod validate;
pub mod vars;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

pub use error::{ConfigError, ConfigErrors};
pub use hooks::HookSpecError;
pub use parse::DurationError;
pub use rate::{RateError, RateSchedule};
pub use raw::RawConfig;
pub use secret::Secret;
pub use selector::{LabelSelector, SelectorError};

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

/// A mode name that is not one of [`Mode::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown mode `{0}`")]
pub struct UnknownMode(pub String);

impl FromStr for Mode {
    type Err = UnknownMode;
    fn from_str(s: &str) -> Result<Self, UnknownMode> {
        Mode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| UnknownMode(s.to_string()))
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

/// Why a `STOW_REPOSITORY`-style value is not a [`Location`]. The text is
/// the reason the configuration error gives after the variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocationError {
    /// Neither `s3://` nor `file://`.
    #[error("unknown scheme")]
    UnknownScheme,
    /// The bucket breaks S3's naming rules.
    #[error("`{0}` is not a valid S3 bucket name (3-63 lowercase letters, digits, `-` or `.`)")]
    Bucket(String),
    /// A `.` or `..` segment would escape or alias the prefix.
    #[error("the prefix must not contain `.` or `..` segments")]
    DotSegment,
    /// `file://relative`: the path must be absolute.
    #[error("a file repository needs an absolute path: file:///path")]
    RelativePath,
    /// `file:///`: the whole filesystem.
    #[error("refusing to use `/` as a repository")]
    Root,
}

impl Location {
    /// Parses `s3://bucket[/prefix]` or `file:///absolute/path`.
    pub fn parse(s: &str) -> Result<Self, LocationError> {
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            validate_bucket(bucket)?;
            let prefix = prefix.trim_matches('/');
            if prefix.split('/').any(|seg| seg == "." || seg == "..") {
                return Err(LocationError::DotSegment);
            }
            Ok(Location::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.to_string(),
            })
        } else if let Some(path) = s.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(LocationError::RelativePath);
            }
            if path.trim_end_matches('/').is_empty() {
                return Err(LocationError::Root);
            }
            Ok(Location::File {
                path: PathBuf::from(path),
            })
        } else {
            Err(LocationError::UnknownScheme)
        }
    }
}

fn validate_bucket(b: &str) -> Result<(), LocationError> {
    let ok_chars = b
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.');
    let ok_ends = b.starts_with(|c: char| c.is_ascii_alphanumeric())
        && b.ends_with(|c: char| c.is_ascii_alphanumeric());
    if (3..=63).contains(&b.len()) && ok_chars && ok_ends {
        Ok(())
    } else {
        Err(LocationError::Bucket(b.to_string()))
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

#[cfg(test)]
mod tests;
