//! The run frame: configuration, logging, signals, schedule guards, hooks
//! around the mode, summary, metrics, exit.

mod alloc;
mod events;
mod logging;
mod metrics;
mod schedule;

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::context::RunContext;
use crate::summary::{ItemError, Report, Status, Summary};

/// Where Kubernetes reads a container's termination message.
pub const TERMINATION_LOG: &str = "/dev/termination-log";

/// The binary's whole life. `args` excludes the program name.
pub fn main(args: &[String]) -> ExitCode {
    if args
        .first()
        .is_some_and(|a| a == "--help" || a == "-h" || a == "help")
    {
        print!("{}", usage());
        return ExitCode::SUCCESS;
    }
    alloc::limit_retention();
    // Both ring and aws-lc-rs are linked (kube, aws-sdk); rustls needs one chosen.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let started = Instant::now();
    let started_at = jiff::Timestamp::now();
    let mode_arg = args.first().map(String::as_str);

    let config = match Config::from_env(mode_arg) {
        Ok(c) => c,
        Err(errors) => {
            logging::init(logging::format_hint());
            for e in &errors.0 {
                error!(variable = e.var(), "{e}");
            }
            let report = Report {
                errors: errors
                    .0
                    .iter()
                    .map(|e| ItemError {
                        item: e.var().to_string(),
                        message: e.to_string(),
                    })
                    .collect(),
                reason: Some("invalid configuration; nothing was touched".into()),
                ..Report::default()
            };
            let summary = Summary {
                run_id: String::new(),
                mode: mode_arg
                    .map(String::from)
                    .or_else(|| std::env::var(crate::config::vars::MODE).ok())
                    .unwrap_or_default(),
                status: Status::ConfigError,
                started_at: started_at.to_string(),
                duration_seconds: started.elapsed().as_secs_f64(),
                report,
            };
            summary.emit(Path::new(TERMINATION_LOG));
            return ExitCode::from(Status::ConfigError.exit_code());
        }
    };

    logging::init(config.log_format);
    let run_id = run_id(&config, started_at);
    info!(run_id = %run_id, mode = %config.mode, config = ?config, "effective configuration");

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the async runtime");
            return ExitCode::from(Status::Failed.exit_code());
        }
    };
    let ctx = RunContext::new(run_id.clone());
    let recorder = runtime.block_on(events::Recorder::for_run(&config));
    let result = runtime.block_on(async {
        spawn_signal_handler(ctx.cancel.clone());
        if let Some(r) = &recorder {
            r.started(&config, &run_id).await;
        }
        // STOW_LAST_DAY_OF_MONTH / STOW_MIN_INTERVAL may skip the run;
        // STOW_ONCE suspends the CronJob after a success (see `schedule`).
        // STOW_PRECONDITION may skip it too; hooks wrap the mode (`hooks`).
        let manual = schedule::is_manual(&config).await;
        let mut result = match schedule::before(&config, manual).await {
            Ok(Some(skipped)) => Ok(skipped),
            Ok(None) => {
                crate::hooks::around(
                    &crate::modes::options::hooks(&config),
                    &ctx,
                    crate::modes::dispatch(&config, &ctx),
                )
                .await
            }
            Err(e) => Err(e),
        };
        if let Ok(report) = &mut result {
            schedule::after(&config, manual, report.status(), report).await;
        }
        result
    });

    let (status, report) = match result {
        Ok(report) => (report.status(), report),
        Err(e) => {
            let status = e.status();
            if status == Status::Cancelled {
                warn!(error = %e, "run cancelled");
            } else {
                error!(error = %e, retriable = e.is_retriable(), "run failed");
            }
            let report = Report {
                reason: Some(e.to_string()),
                errors: vec![ItemError {
                    item: config.mode.to_string(),
                    message: e.to_string(),
                }],
                ..Report::default()
            };
            (status, report)
        }
    };
    let summary = Summary {
        run_id,
        mode: config.mode.to_string(),
        status,
        started_at: started_at.to_string(),
        duration_seconds: started.elapsed().as_secs_f64(),
        report,
    };
    info!(status = ?status, seconds = summary.duration_seconds, "run finished");
    summary.emit(Path::new(TERMINATION_LOG));
    if let Some(r) = &recorder {
        runtime.block_on(r.finished(&summary));
    }
    if let Some(url) = &config.pushgateway_url {
        let group = metrics::Group {
            plan: config.plan.clone(),
            mode: config.mode.to_string(),
            cluster: config.cluster_name.clone(),
        };
        // A failed push is logged; the summary above is the record.
        let _ = runtime.block_on(metrics::push(url.expose(), &group, &summary));
    }
    // Stragglers (e.g. a hung connection) must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    ExitCode::from(status.exit_code())
}

/// Stable across Job retries (so a retry resumes the same run): explicit id,
/// else the Job name, else a fresh time-based id.
fn run_id(config: &Config, now: jiff::Timestamp) -> String {
    if let Some(id) = config
        .identity
        .run_id
        .clone()
        .or_else(|| config.identity.job_name.clone())
    {
        return id;
    }
    let mut rnd = [0u8; 3];
    // An all-zero suffix on RNG failure is harmless: the timestamp still differs.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut rnd);
    format!(
        "{}-{}-{:02x}{:02x}{:02x}",
        config.mode,
        now.strftime("%Y%m%dt%H%M%S"),
        rnd[0],
        rnd[1],
        rnd[2]
    )
}

/// First SIGTERM/SIGINT cancels the token so work drains; a second aborts.
fn spawn_signal_handler(cancel: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            warn!("cannot install signal handlers; SIGTERM will kill the run without draining");
            return;
        };
        let mut seen = 0;
        loop {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            seen += 1;
            if seen == 1 {
                warn!(
                    signal = name,
                    "stopping: draining in-flight work; send again to abort"
                );
                cancel.cancel();
            } else {
                error!(signal = name, "aborting without draining");
                std::process::exit(i32::from(Status::Failed.exit_code()));
            }
        }
    });
}

fn usage() -> String {
    let mut s = String::from(
        "kubestow: backup and restore for Kubernetes.\n\n\
         Usage: kubestow [MODE]\n\n\
         All options come from the environment; MODE overrides STOW_MODE.\n\n",
    );
    for v in crate::config::vars::ALL {
        s.push_str(&format!("  {:<32} {}\n", v.name, v.doc.trim()));
    }
    s
}
