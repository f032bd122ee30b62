//! Stage two: [`RawConfig`] to [`Config`]. One function per section, each
//! reading its variables and recording every problem in the shared [`Check`],
//! so that one run reports all mistakes. Sections run in a fixed order, which
//! is the order errors are reported in.

mod sections;

use sections::{
    Hooks, Repository, copy_target, hooks, operations, reporting, repository, restore, retention,
    schedule_guards, selection, volume,
};

use super::error::{Check, ConfigError, ConfigErrors};
use super::hooks::Scope;
use super::parse::{list, opt, parse_bool};
use super::raw::RawConfig;
use super::vars as v;
use super::{Config, Mode, Retention, RunIdentity, VolumeOptions};

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
            && let Some(h) = list.iter().find(|h| h.scope == Scope::Volume)
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
