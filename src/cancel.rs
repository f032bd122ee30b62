//! The run's cancellation, for the retry loops that sit below every mode
//! (the repository backend, the Kubernetes API client).
//!
//! Those loops may wait out a network loss for the whole reconnect window
//! (minutes); on SIGTERM they must stop waiting at once so the run drains
//! and exits. They are built far from any [`RunContext`](crate::run::RunContext),
//! so a mode links the run's token here once, and the loops wait on
//! [`run_token`]. One process performs one run, so one token is enough.

use std::sync::LazyLock;

use tokio_util::sync::CancellationToken;

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
