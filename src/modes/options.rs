//! Each engine's options, built once from the validated `Config` by the
//! mode: engines sit below `Config`'s whole shape and see only what they
//! use.

use crate::config::Config;
use crate::hooks::HookOptions;
use crate::mover::MoverOptions;

/// What mover Jobs need: image, resources, timeouts, the streams and
/// bandwidth they share, and the volume selection.
pub fn mover(config: &Config) -> MoverOptions {
    let v = &config.volume;
    MoverOptions {
        image: v.image.clone(),
        home: v
            .mover_namespace
            .clone()
            .or_else(|| config.identity.pod_namespace.clone()),
        pod_namespace: config.identity.pod_namespace.clone(),
        pod_name: config.identity.pod_name.clone(),
        job_name: config.identity.job_name.clone(),
        service_account: v.mover_service_account.clone(),
        resources: v.mover_resources.clone(),
        start_timeout: v.mover_start_timeout,
        snapshot_timeout: v.snapshot_timeout,
        kubelet_dir: v.kubelet_dir.clone(),
        password: config.password.clone(),
        channels: config.channels,
        rate_limit: config.rate_limit.clone(),
        source: v.source,
        exclude: v.exclude.clone(),
        exit_after: v
            .test_exit_after
            .as_deref()
            .and_then(crate::mover::handover::Step::parse),
    }
}

/// What hooks need: the mode, the preconditions and the hooks themselves.
pub fn hooks(config: &Config) -> HookOptions {
    HookOptions {
        mode: config.mode,
        mover: config.volume.mover,
        reconnect_timeout: config.reconnect_timeout,
        channels: config.channels,
        precondition: config.precondition.clone(),
        pre_hooks: config.pre_hooks.clone(),
        post_hooks: config.post_hooks.clone(),
    }
}
