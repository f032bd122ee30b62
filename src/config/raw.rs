//! Stage one: the environment as strings, and the loader that rejects
//! unknown `STOW_*` variables (suggesting the closest known one).

use serde::Deserialize;

use super::error::{ConfigError, ConfigErrors};
use super::vars as v;
use super::{Config, Secret};

/// The environment as strings. Field names are the variable names without
/// the `STOW_` prefix, in lower case (envy's convention). Every value is a
/// string so that errors can name the variable and the value.
#[derive(Debug, Default, Deserialize)]
pub struct RawConfig {
    pub(super) mode: Option<String>,
    pub(super) repository: Option<String>,
    pub(super) password: Option<Secret>,
    pub(super) password_file: Option<String>,
    pub(super) init: Option<String>,
    pub(super) compression: Option<String>,
    pub(super) plan: Option<String>,
    pub(super) tags: Option<String>,
    pub(super) namespaces: Option<String>,
    pub(super) exclude_namespaces: Option<String>,
    pub(super) include_resources: Option<String>,
    pub(super) exclude_resources: Option<String>,
    pub(super) label_selector: Option<String>,
    pub(super) include_cluster_resources: Option<String>,
    pub(super) restore_point: Option<String>,
    pub(super) snapshot: Option<String>,
    pub(super) source_cluster: Option<String>,
    pub(super) namespace_map: Option<String>,
    pub(super) storage_class_map: Option<String>,
    pub(super) existing: Option<String>,
    pub(super) existing_cluster_resources: Option<String>,
    pub(super) dry_run: Option<String>,
    pub(super) restore_volumes: Option<String>,
    pub(super) allow_host_volumes: Option<String>,
    pub(super) volume_path: Option<String>,
    pub(super) volume_name: Option<String>,
    pub(super) volume_source: Option<String>,
    pub(super) exclude_volumes: Option<String>,
    pub(super) image: Option<String>,
    pub(super) mover_resources: Option<String>,
    pub(super) mover_namespace: Option<String>,
    pub(super) mover_service_account: Option<String>,
    pub(super) mover_start_timeout: Option<String>,
    pub(super) snapshot_timeout: Option<String>,
    pub(super) kubelet_dir: Option<String>,
    pub(super) test_exit_after: Option<String>,
    pub(super) mover: Option<String>,
    pub(super) channels: Option<String>,
    pub(super) rate_limit: Option<String>,
    pub(super) timezone: Option<String>,
    pub(super) reconnect_timeout: Option<String>,
    pub(super) resume_buffer: Option<String>,
    pub(super) precondition: Option<String>,
    pub(super) pre_hooks: Option<String>,
    pub(super) post_hooks: Option<String>,
    pub(super) copy_to_repository: Option<String>,
    pub(super) copy_to_password: Option<Secret>,
    pub(super) copy_to_password_file: Option<String>,
    pub(super) keep_last: Option<String>,
    pub(super) keep_hourly: Option<String>,
    pub(super) keep_daily: Option<String>,
    pub(super) keep_weekly: Option<String>,
    pub(super) keep_monthly: Option<String>,
    pub(super) keep_yearly: Option<String>,
    pub(super) prune_grace: Option<String>,
    pub(super) check_read_data: Option<String>,
    pub(super) pushgateway_url: Option<String>,
    pub(super) cluster_name: Option<String>,
    pub(super) preflight_mode: Option<String>,
    pub(super) log_format: Option<String>,
    pub(super) once: Option<String>,
    pub(super) min_interval: Option<String>,
    pub(super) last_day_of_month: Option<String>,
    pub(super) run_id: Option<String>,
    pub(super) pod_name: Option<String>,
    pub(super) pod_namespace: Option<String>,
    pub(super) job_name: Option<String>,
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret::new)
    }
}

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
        errors.extend(super::trust::check(&vars));
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

/// The known variable most like `name`, if one is close enough to be the
/// intended spelling.
fn closest(name: &str) -> Option<&'static str> {
    v::ALL
        .iter()
        .map(|var| (strsim::jaro_winkler(name, var.name), var.name))
        .filter(|(score, _)| *score > 0.85)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, n)| n)
}
