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
pub mod trust;
mod validate;
pub mod vars;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

pub use error::{ConfigError, ConfigErrors};
pub use hooks::HookSpecError;
pub use parse::{DurationError, MAX_DURATION};
pub use rate::{RateError, RateSchedule};
pub use raw::RawConfig;
pub use secret::{Secret, SecretUrl, redact_urls};
pub use selector::{LabelSelector, SelectorError};

/// The operation one run performs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// A backup of the selected objects and their volumes.
    Backup,
    /// A restore of objects (and volumes) from a snapshot.
    Restore,
    /// One volume's data, from `STOW_VOLUME_PATH` (what a mover Job runs).
    VolumeBackup,
    /// One volume's data back into `STOW_VOLUME_PATH`.
    VolumeRestore,
    /// Verifies the repository's structure (and data, per `STOW_CHECK_READ_DATA`).
    Check,
    /// Removes the snapshots the `STOW_KEEP_*` rules do not keep, and data no snapshot uses.
    Prune,
    /// Copies snapshots to `STOW_COPY_TO_REPOSITORY`.
    Copy,
    /// Lists snapshots.
    List,
    /// Checks the cluster for what `STOW_PREFLIGHT_MODE` needs; opens no repository.
    Preflight,
}

impl Mode {
    /// Every mode, in the order help texts list them.
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

    /// The name `STOW_MODE` and the first argument use.
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
    /// Objects in an S3 bucket (or an S3-compatible store).
    S3 {
        /// The bucket's name.
        bucket: String,
        /// Key prefix without leading or trailing `/`; may be empty.
        prefix: String,
    },
    /// A directory.
    File {
        /// Absolute, and not `/`.
        path: PathBuf,
    },
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
        // `s3://key:secret@bucket` puts credentials where the bucket goes:
        // name the bucket without them.
        let shown = match b.rsplit_once('@') {
            Some((_, host)) => format!("***@{host}"),
            None => b.to_string(),
        };
        Err(LocationError::Bucket(shown))
    }
}

/// zstd setting for new blobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Compression {
    /// Blobs are stored uncompressed.
    None,
    /// A zstd level, 1..=19.
    Level(i32),
}

/// `STOW_REPOSITORY` with its password: what opening a repository needs.
#[derive(Debug, Clone, Copy)]
pub struct RepositoryAccess<'a> {
    /// Where the repository lives.
    pub location: &'a Location,
    /// The repository's password.
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

/// `STOW_INCLUDE_CLUSTER_RESOURCES`: which cluster-scoped objects a run covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterResources {
    /// Those the selected namespaced objects use.
    Auto,
    /// All of them.
    All,
    /// None.
    None,
}

/// `STOW_EXISTING`: what restore does with objects that already exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Existing {
    /// Leave them as they are.
    Skip,
    /// Update them to the snapshot's version.
    Update,
    /// Delete them and create them again.
    Recreate,
}

/// `STOW_VOLUME_SOURCE`: how volume data is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeSource {
    /// Choose a source automatically.
    Auto,
    /// From a VolumeSnapshot of the PVC.
    Snapshot,
    /// From the kubelet's directory on the node that mounts the volume.
    Kubelet,
    /// Back up no volume data.
    Skip,
}

/// `STOW_CHECK_READ_DATA`: how much pack data `check` reads and verifies.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub enum ReadData {
    /// Every pack.
    All,
    /// Fraction of packs, in percent (0, 100].
    Percent(f64),
}

/// `STOW_LOG_FORMAT`: how log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line.
    Json,
}

/// What a run backs up or restores.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// `STOW_NAMESPACES`: globs of namespaces to include; empty means all.
    pub namespaces: Vec<String>,
    /// `STOW_EXCLUDE_NAMESPACES`: globs of namespaces to leave out.
    pub exclude_namespaces: Vec<String>,
    /// `STOW_INCLUDE_RESOURCES`: resource names to include; empty means all.
    pub include_resources: Vec<String>,
    /// `STOW_EXCLUDE_RESOURCES`: resource names to leave out.
    pub exclude_resources: Vec<String>,
    /// `STOW_LABEL_SELECTOR`, already checked to parse.
    pub label_selector: Option<String>,
    /// `STOW_INCLUDE_CLUSTER_RESOURCES`.
    pub cluster_resources: Option<ClusterResources>,
}

/// What a restore restores, from where, and how.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// `STOW_RESTORE_POINT`: restore the latest snapshot at or before this time.
    pub point: Option<jiff::Timestamp>,
    /// `STOW_SNAPSHOT`: the snapshot id to restore.
    pub snapshot: Option<String>,
    /// `STOW_SOURCE_CLUSTER`: only snapshots taken from this cluster id.
    pub source_cluster: Option<String>,
    /// `STOW_NAMESPACE_MAP`: old namespace to new.
    pub namespace_map: BTreeMap<String, String>,
    /// `STOW_STORAGE_CLASS_MAP`: old storage class to new.
    pub storage_class_map: BTreeMap<String, String>,
    /// `STOW_EXISTING`: namespaced objects and Namespaces.
    pub existing: Existing,
    /// `STOW_EXISTING_CLUSTER_RESOURCES`: cluster-scoped objects other
    /// than Namespaces.
    pub existing_cluster: Existing,
    /// `STOW_DRY_RUN`: print the plan and the conflicts, change nothing.
    pub dry_run: bool,
    /// `STOW_RESTORE_VOLUMES`: also restore volume data.
    pub volumes: bool,
    /// `STOW_ALLOW_HOST_VOLUMES`: PersistentVolumes with a `hostPath` or
    /// `local` volume that may be restored, by name.
    pub host_volumes: BTreeSet<String>,
}

/// How volumes are read and written, and the mover Jobs that do it.
#[derive(Debug, Clone)]
pub struct VolumeOptions {
    /// `STOW_VOLUME_PATH`: the volume's absolute path, for the volume modes.
    pub path: Option<PathBuf>,
    /// The volume's key in snapshots (`STOW_VOLUME_NAME`); `None` means the path.
    pub name: Option<String>,
    /// `STOW_VOLUME_SOURCE`.
    pub source: VolumeSource,
    /// `STOW_EXCLUDE_VOLUMES`: globs of `namespace/pvc` whose data is not backed up.
    pub exclude: Vec<String>,
    /// `STOW_IMAGE`: image for mover Jobs; `None` means the running pod's image.
    pub image: Option<String>,
    /// `STOW_MOVER_RESOURCES`: mover pod requests and limits, by key such as `limits.memory`.
    pub mover_resources: BTreeMap<String, String>,
    /// `STOW_MOVER_NAMESPACE`: where movers run; `None` means this pod's namespace.
    pub mover_namespace: Option<String>,
    /// `STOW_MOVER_SERVICE_ACCOUNT`: the ServiceAccount mover pods run as.
    pub mover_service_account: Option<String>,
    /// `STOW_MOVER_START_TIMEOUT`: how long a mover may stay unscheduled or unstarted.
    pub mover_start_timeout: Duration,
    /// `STOW_SNAPSHOT_TIMEOUT`: how long to wait for a VolumeSnapshot to become ready.
    pub snapshot_timeout: Duration,
    /// `STOW_KUBELET_DIR`: the kubelet's root directory on the nodes (absolute).
    pub kubelet_dir: PathBuf,
    /// `STOW_TEST_EXIT_AFTER`: a hand-over step after which a restore exits (crash tests).
    pub test_exit_after: Option<String>,
    /// `STOW_MOVER`: this `volume-backup` runs for an orchestrating backup.
    pub mover: bool,
}

/// Retention counts for `prune`; `None` means the rule is not used.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retention {
    /// `STOW_KEEP_LAST`: the most recent snapshots.
    pub last: Option<u32>,
    /// `STOW_KEEP_HOURLY`: the last snapshot of each of so many hours.
    pub hourly: Option<u32>,
    /// `STOW_KEEP_DAILY`: the last snapshot of each of so many days.
    pub daily: Option<u32>,
    /// `STOW_KEEP_WEEKLY`: the last snapshot of each of so many weeks.
    pub weekly: Option<u32>,
    /// `STOW_KEEP_MONTHLY`: the last snapshot of each of so many months.
    pub monthly: Option<u32>,
    /// `STOW_KEEP_YEARLY`: the last snapshot of each of so many years.
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

/// `copy`'s destination: `STOW_COPY_TO_REPOSITORY` and its password.
#[derive(Debug, Clone)]
pub struct CopyTarget {
    /// Where snapshots are copied to.
    pub repository: Location,
    /// The destination repository's password.
    pub password: Secret,
}

/// Identity of this run, from the downward API.
#[derive(Debug, Clone, Default)]
pub struct RunIdentity {
    /// `STOW_RUN_ID`: stable across Job retries, so that a retry resumes.
    pub run_id: Option<String>,
    /// `STOW_POD_NAME`: this pod's name.
    pub pod_name: Option<String>,
    /// `STOW_POD_NAMESPACE`: this pod's namespace.
    pub pod_namespace: Option<String>,
    /// `STOW_JOB_NAME`: the Job running this pod.
    pub job_name: Option<String>,
}

/// The validated configuration. `Debug` is safe to log: secrets are redacted.
#[derive(Debug, Clone)]
pub struct Config {
    /// `STOW_MODE`, or the first CLI argument.
    pub mode: Mode,
    /// `STOW_REPOSITORY`; set for every mode but `preflight`.
    pub repository: Option<Location>,
    /// `STOW_PASSWORD` or the content of `STOW_PASSWORD_FILE`.
    pub password: Option<Secret>,
    /// `STOW_INIT`: create the repository on first backup if it does not exist.
    pub init: bool,
    /// `STOW_COMPRESSION`.
    pub compression: Compression,
    /// `STOW_PLAN`: the plan this run's snapshots belong to.
    pub plan: String,
    /// `STOW_PLAN` was set (not just defaulted): `list`, `copy` and `prune`
    /// then only consider snapshots of that plan.
    pub plan_explicit: bool,
    /// `STOW_TAGS`: tags recorded in the snapshot.
    pub tags: Vec<String>,
    /// What a run backs up or restores.
    pub selection: Selection,
    /// Restore options.
    pub restore: RestoreOptions,
    /// Volume and mover options.
    pub volume: VolumeOptions,
    /// `STOW_CHANNELS`: parallel upload streams, mover Jobs and API calls, 1..=255.
    pub channels: u8,
    /// `STOW_RATE_LIMIT`; `None` means unlimited.
    pub rate_limit: Option<RateSchedule>,
    /// `STOW_TIMEZONE`: for rate-limit windows and `STOW_LAST_DAY_OF_MONTH`.
    pub timezone: jiff::tz::TimeZone,
    /// `STOW_RECONNECT_TIMEOUT`: how long network and server errors are retried.
    pub reconnect_timeout: Duration,
    /// `STOW_RESUME_BUFFER`: bytes of unsaved progress a crash may lose.
    pub resume_buffer: u64,
    /// `STOW_PRECONDITION`: all must be met, else the run is skipped.
    pub precondition: Vec<hooks::Hook>,
    /// `STOW_PRE_HOOKS`, run in order before the mode.
    pub pre_hooks: Vec<hooks::Hook>,
    /// `STOW_POST_HOOKS`, run in order after the mode.
    pub post_hooks: Vec<hooks::Hook>,
    /// `copy`'s destination; set when mode is `copy`.
    pub copy_to: Option<CopyTarget>,
    /// `STOW_KEEP_*`: what `prune` keeps.
    pub retention: Retention,
    /// `prune`: marked packs are deleted by a later prune once older than this.
    pub prune_grace: Duration,
    /// `STOW_CHECK_READ_DATA`; `None` means `check` reads no pack data.
    pub check_read_data: Option<ReadData>,
    /// `STOW_PUSHGATEWAY_URL`: where metrics are pushed; `None` means nowhere.
    pub pushgateway_url: Option<SecretUrl>,
    /// `STOW_CLUSTER_NAME`: this cluster's name in metrics.
    pub cluster_name: String,
    /// `preflight`: the mode whose needs are checked.
    pub preflight_mode: Mode,
    /// `STOW_LOG_FORMAT`.
    pub log_format: LogFormat,
    /// `STOW_ONCE`: suspend the CronJob that started this run after it succeeds.
    pub once: bool,
    /// `STOW_MIN_INTERVAL`: skip the run if the plan's last complete snapshot is younger.
    pub min_interval: Option<Duration>,
    /// `STOW_LAST_DAY_OF_MONTH`: run only on the month's last day (see the run frame's schedule guards).
    pub last_day_of_month: bool,
    /// Who this run is, from the downward API.
    pub identity: RunIdentity,
}

#[cfg(test)]
mod tests;
