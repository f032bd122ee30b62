//! Every environment variable kubestow reads, as documented constants.
//!
//! This is the single catalogue: the config loader rejects any `STOW_*`
//! variable missing from [`ALL`], and the README table is checked against it
//! by a test (`readme_lists_every_variable`).

/// How a variable is documented in the README table.
#[derive(Debug, Clone, Copy)]
pub struct Var {
    /// The variable's name, e.g. `STOW_MODE`.
    pub name: &'static str,
    /// Default shown to users; empty when the variable has none.
    pub default: &'static str,
    /// What it does and what it accepts (the README table and `--help`).
    pub doc: &'static str,
    /// Secret values are never echoed, not even in error messages.
    pub secret: bool,
}

macro_rules! vars {
    ($( $(#[doc = $doc:literal])* $ident:ident = $name:literal, default $default:literal $(, $secret:ident)? ;)*) => {
        $(
            $(#[doc = $doc])*
            pub const $ident: &str = $name;
        )*
        /// All variables, in README order.
        pub const ALL: &[Var] = &[
            $( Var { name: $name, default: $default, doc: concat!($($doc),*), secret: vars!(@secret $($secret)?) }, )*
        ];
    };
    (@secret secret) => { true };
    (@secret) => { false };
}

vars! {
    /// Operation to run: `backup`, `restore`, `volume-backup`, `volume-restore`, `check`, `prune`, `copy`, `list`, `preflight`. A first CLI argument overrides it.
    MODE = "STOW_MODE", default "";
    /// Repository location: `s3://bucket/prefix` or `file:///absolute/path`. S3 credentials and endpoint come from the standard AWS chain (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, …).
    REPOSITORY = "STOW_REPOSITORY", default "";
    /// Repository password. Prefer `STOW_PASSWORD_FILE` with a mounted Secret.
    PASSWORD = "STOW_PASSWORD", default "", secret;
    /// File holding the repository password (trailing newline ignored).
    PASSWORD_FILE = "STOW_PASSWORD_FILE", default "";
    /// Create the repository on first backup if it does not exist: `true` or `false`.
    INIT = "STOW_INIT", default "false";
    /// zstd compression: `none`, `fast`, or a level `1`..`19`.
    COMPRESSION = "STOW_COMPRESSION", default "fast";
    /// Backup plan name; retention and `STOW_MIN_INTERVAL` are evaluated per plan.
    PLAN = "STOW_PLAN", default "default";
    /// Comma-separated tags recorded in the snapshot, e.g. `nightly,team=payments`.
    TAGS = "STOW_TAGS", default "";
    /// Comma-separated namespace globs to back up or restore, e.g. `shop-*,billing`.
    NAMESPACES = "STOW_NAMESPACES", default "*";
    /// Comma-separated namespace globs to leave out.
    EXCLUDE_NAMESPACES = "STOW_EXCLUDE_NAMESPACES", default "";
    /// Comma-separated resources to include (`deployments`, `deployments.apps`, `widgets.example.com`); empty means all.
    INCLUDE_RESOURCES = "STOW_INCLUDE_RESOURCES", default "";
    /// Comma-separated resources to leave out, same syntax as `STOW_INCLUDE_RESOURCES`.
    EXCLUDE_RESOURCES = "STOW_EXCLUDE_RESOURCES", default "";
    /// Kubernetes label selector applied to namespaced objects, e.g. `app=shop,tier!=cache`.
    LABEL_SELECTOR = "STOW_LABEL_SELECTOR", default "";
    /// Cluster-scoped resources: `auto` (those the selected objects use), `true` (all), `false` (none).
    INCLUDE_CLUSTER_RESOURCES = "STOW_INCLUDE_CLUSTER_RESOURCES", default "auto";
    /// Restore: RFC 3339 time; the newest complete snapshot at or before it is restored.
    RESTORE_POINT = "STOW_RESTORE_POINT", default "";
    /// Restore: snapshot id to restore (exclusive with `STOW_RESTORE_POINT`).
    SNAPSHOT = "STOW_SNAPSHOT", default "";
    /// Restore: only consider snapshots taken from this cluster id (the uid of its `kube-system` namespace).
    SOURCE_CLUSTER = "STOW_SOURCE_CLUSTER", default "";
    /// Restore: namespace mapping `old=new,other=renamed`.
    NAMESPACE_MAP = "STOW_NAMESPACE_MAP", default "";
    /// Restore: storage class mapping `old=new`.
    STORAGE_CLASS_MAP = "STOW_STORAGE_CLASS_MAP", default "";
    /// Restore: what to do with objects that already exist: `skip`, `update` or `recreate`.
    EXISTING = "STOW_EXISTING", default "skip";
    /// Restore: what to do with cluster-scoped objects other than Namespaces (ClusterRoles, StorageClasses, PersistentVolumes, CRDs, …) that already exist: `skip`, `update` or `recreate`. Separate from `STOW_EXISTING` so that restoring a namespace never changes what other namespaces share.
    EXISTING_CLUSTER_RESOURCES = "STOW_EXISTING_CLUSTER_RESOURCES", default "skip";
    /// Restore: print the plan and the conflicts, change nothing: `true` or `false`.
    DRY_RUN = "STOW_DRY_RUN", default "false";
    /// Restore: also restore volume data: `true` or `false`.
    RESTORE_VOLUMES = "STOW_RESTORE_VOLUMES", default "true";
    /// Restore: comma-separated names of PersistentVolumes backed by a `hostPath` or `local` volume that may be restored; any other such volume is skipped, since it gives access to a node's disk.
    ALLOW_HOST_VOLUMES = "STOW_ALLOW_HOST_VOLUMES", default "";
    /// `volume-backup`/`volume-restore`: directory to read or fill.
    VOLUME_PATH = "STOW_VOLUME_PATH", default "";
    /// `volume-backup`/`volume-restore`: name of the volume in the snapshot, e.g. `shop/data-db-0`; defaults to the path.
    VOLUME_NAME = "STOW_VOLUME_NAME", default "";
    /// How PVC data is read: `auto`, `snapshot`, `kubelet` or `skip`.
    VOLUME_SOURCE = "STOW_VOLUME_SOURCE", default "auto";
    /// Comma-separated globs of `namespace/pvc` whose data is not backed up.
    EXCLUDE_VOLUMES = "STOW_EXCLUDE_VOLUMES", default "";
    /// Image for mover Jobs; defaults to the image of the running pod.
    IMAGE = "STOW_IMAGE", default "";
    /// Mover Job resources, e.g. `requests.cpu=100m,limits.memory=512Mi`.
    MOVER_RESOURCES = "STOW_MOVER_RESOURCES", default "";
    /// Namespace where mover Jobs, their claims and snapshots run: kubestow's own; empty means this pod's namespace (`STOW_POD_NAMESPACE`). Nothing of kubestow's is ever created in a tenant namespace.
    MOVER_NAMESPACE = "STOW_MOVER_NAMESPACE", default "";
    /// Service account of mover Jobs, in the movers' namespace; empty means a temporary one per Job, without API access.
    MOVER_SERVICE_ACCOUNT = "STOW_MOVER_SERVICE_ACCOUNT", default "";
    /// How long a mover may stay unscheduled or unstarted (no node fits, image pull) before its volume fails, e.g. `10m`.
    MOVER_START_TIMEOUT = "STOW_MOVER_START_TIMEOUT", default "10m";
    /// `snapshot` source: how long to wait for a VolumeSnapshot to become ready to use, e.g. `10m`.
    SNAPSHOT_TIMEOUT = "STOW_SNAPSHOT_TIMEOUT", default "10m";
    /// `kubelet` source: the kubelet's root directory on the nodes (k0s: `/var/lib/k0s/kubelet`, MicroK8s: `/var/snap/microk8s/common/var/lib/kubelet`).
    KUBELET_DIR = "STOW_KUBELET_DIR", default "/var/lib/kubelet";
    /// For crash tests only: `restore` exits with code 1, as if killed, right after this step of a volume's hand-over: `filled` (filled at home, not handed over) or `rebound` (the restored claim is bound, the volume still `Retain`).
    TEST_EXIT_AFTER = "STOW_TEST_EXIT_AFTER", default "";
    /// Set by `backup` on its mover Jobs: `volume-backup` saves the volume as part of run `STOW_RUN_ID` instead of as a snapshot of its own: `true` or `false`.
    MOVER = "STOW_MOVER", default "false";
    /// Parallel channels, 1..255: upload streams in a pod, mover Jobs, API calls in flight.
    CHANNELS = "STOW_CHANNELS", default "1";
    /// Bandwidth limit per second: `50MiB`, or windows `mon-fri 09:00-18:00=10MiB,*=200MiB`.
    RATE_LIMIT = "STOW_RATE_LIMIT", default "";
    /// IANA time zone for rate-limit windows and `STOW_LAST_DAY_OF_MONTH`, e.g. `Europe/Berlin`.
    TIMEZONE = "STOW_TIMEZONE", default "UTC";
    /// How long network and server errors are retried before failing: 1 to 60 minutes (`5m`, `90s`, or plain minutes).
    RECONNECT_TIMEOUT = "STOW_RECONNECT_TIMEOUT", default "5m";
    /// Unsaved progress a crash may lose, e.g. `10MiB`.
    RESUME_BUFFER = "STOW_RESUME_BUFFER", default "10MiB";
    /// Run only if this holds, else end `skipped` (exit 0) having written nothing: a command (exit 0), `exec:<ns>/<selector>/<container>:<command>` (exit 0 in the first Running pod), or `resource:<kind>/<ns>/<name>` (exists and is Ready/Available). One per line, all must hold; see "Hooks and preconditions".
    PRECONDITION = "STOW_PRECONDITION", default "";
    /// Commands run in order before the run reads anything, one per line: `[timeout=60s] [on-error=fail|continue] [scope=run|volume] <command>`, where the command is local or `exec:<ns>/<selector>/<container>:<command>` (in each Running pod selected); or a JSON array. See "Hooks and preconditions".
    PRE_HOOKS = "STOW_PRE_HOOKS", default "";
    /// Commands run after the run once the pre hooks started, also when it failed or got SIGTERM; same syntax as `STOW_PRE_HOOKS`.
    POST_HOOKS = "STOW_POST_HOOKS", default "";
    /// `copy`: destination repository, same syntax as `STOW_REPOSITORY`.
    COPY_TO_REPOSITORY = "STOW_COPY_TO_REPOSITORY", default "";
    /// `copy`: destination repository password.
    COPY_TO_PASSWORD = "STOW_COPY_TO_PASSWORD", default "", secret;
    /// `copy`: file holding the destination repository password.
    COPY_TO_PASSWORD_FILE = "STOW_COPY_TO_PASSWORD_FILE", default "";
    /// `prune`: keep the newest N snapshots of each plan.
    KEEP_LAST = "STOW_KEEP_LAST", default "";
    /// `prune`: keep the newest snapshot of each of the last N hours.
    KEEP_HOURLY = "STOW_KEEP_HOURLY", default "";
    /// `prune`: keep the newest snapshot of each of the last N days.
    KEEP_DAILY = "STOW_KEEP_DAILY", default "";
    /// `prune`: keep the newest snapshot of each of the last N weeks.
    KEEP_WEEKLY = "STOW_KEEP_WEEKLY", default "";
    /// `prune`: keep the newest snapshot of each of the last N months.
    KEEP_MONTHLY = "STOW_KEEP_MONTHLY", default "";
    /// `prune`: keep the newest snapshot of each of the last N years.
    KEEP_YEARLY = "STOW_KEEP_YEARLY", default "";
    /// `prune`: how long packs marked for deletion stay before a later prune deletes them, so that restores and backups that may still use them finish first, e.g. `1h`, `30m`, or plain seconds.
    PRUNE_GRACE = "STOW_PRUNE_GRACE", default "1h";
    /// `check`: also read and verify pack data: `all` or a percentage such as `10%`.
    CHECK_READ_DATA = "STOW_CHECK_READ_DATA", default "";
    /// `preflight`: check for this mode's needs (permissions, volume sources): `backup` or `restore`.
    PREFLIGHT_MODE = "STOW_PREFLIGHT_MODE", default "backup";
    /// Push metrics to this Prometheus Pushgateway at the end of the run (`http://` or `https://`), under job `kubestow`, grouped by plan, mode and cluster.
    PUSHGATEWAY_URL = "STOW_PUSHGATEWAY_URL", default "";
    /// Name of this cluster in metrics (grouping label `cluster`).
    CLUSTER_NAME = "STOW_CLUSTER_NAME", default "default";
    /// Log format on stderr: `plain` or `json`. Levels come from `RUST_LOG`.
    LOG_FORMAT = "STOW_LOG_FORMAT", default "plain";
    /// Suspend the CronJob that started this run after it succeeds: `true` or `false`.
    ONCE = "STOW_ONCE", default "false";
    /// Skip the run if the plan's last complete snapshot is younger than this, e.g. `3d`.
    MIN_INTERVAL = "STOW_MIN_INTERVAL", default "";
    /// Skip the run unless today (in `STOW_TIMEZONE`) is the last day of the month; for cron `28-31` schedules: `true` or `false`.
    LAST_DAY_OF_MONTH = "STOW_LAST_DAY_OF_MONTH", default "false";
    /// Run id; stable across Job retries so a retry resumes. Defaults to the Job name, else a new id.
    RUN_ID = "STOW_RUN_ID", default "";
    /// Downward API: name of this pod.
    POD_NAME = "STOW_POD_NAME", default "";
    /// Downward API: namespace of this pod.
    POD_NAMESPACE = "STOW_POD_NAMESPACE", default "";
    /// Downward API: name of the Job running this pod (label `job-name`).
    JOB_NAME = "STOW_JOB_NAME", default "";
}

/// Looks a variable up by its full name.
pub fn find(name: &str) -> Option<&'static Var> {
    ALL.iter().find(|v| v.name == name)
}

/// The README table of variables, generated from [`ALL`].
pub fn markdown_table() -> String {
    let mut out = String::from("| Variable | Default | Meaning |\n|---|---|---|\n");
    for v in ALL {
        let default = if v.default.is_empty() {
            String::new()
        } else {
            format!("`{}`", v.default)
        };
        out.push_str(&format!(
            "| `{}` | {} | {} |\n",
            v.name,
            default,
            v.doc.trim().replace('|', "\\|")
        ));
    }
    out
}
