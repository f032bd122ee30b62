//! What every mode and engine gets from the run besides its options: the
//! run id and the run's cancellation.
//!
//! The retry loops below every mode (the repository backend, the Kubernetes
//! API client) may wait out a network loss for the whole reconnect window
//! (minutes); on SIGTERM they must stop waiting at once so the run drains
//! and exits. They are built far from any [`RunContext`], so a mode links
//! the run's token here once ([`link`]), and the loops wait on
//! [`run_token`]. One process performs one run, so one token is enough.

use std::sync::LazyLock;

use tokio_util::sync::CancellationToken;

/// Everything a mode needs besides its options.
#[derive(Debug, Clone)]
pub struct RunContext {
    /// Stable across Job retries, so a retry resumes the same run.
    pub run_id: String,
    /// Cancelled on the first SIGTERM/SIGINT.
    pub cancel: CancellationToken,
}

impl RunContext {
    /// A context for `run_id` with a fresh token; [`link`](Self::link) it
    /// once inside the runtime so retry loops hear the signal.
    pub fn new(run_id: impl Into<String>) -> Self {
        Self {
            run_id: run_id.into(),
            cancel: CancellationToken::new(),
        }
    }

    /// Links this run's token to every [`run_token`]; see [`link`].
    pub fn link(&self) {
        link(&self.cancel);
    }
}

static RUN: LazyLock<CancellationToken> = LazyLock::new(CancellationToken::new);

/// Cancels every [`run_token`] when `token` is cancelled. Call it from
/// inside the runtime; linking again (another mode, the same token) is
/// harmless.
pub fn link(token: &CancellationToken) {
    if token.is_cancelled() {
        RUN.cancel();
        return;
    }
    let token = token.clone();
    tokio::spawn(async move {
        token.cancelled().await;
        RUN.cancel();
    });
}

/// A token that is cancelled when a linked run token is: the default for
/// retry loops that no run context reaches. Tests give their own.
pub fn run_token() -> CancellationToken {
    RUN.child_token()
}
