//! kubestow: backup and restore for Kubernetes.
//!
//! One run, one mode, then exit (`docs/design.md`). The modules form floors,
//! and each imports only from the floors below it (`docs/architecture.md`):
//!
//! 1. [`run`]: the frame around a run (configuration, signals, schedule
//!    guards, hooks, summary, metrics, exit code);
//! 2. [`modes`]: one per `STOW_MODE`;
//! 3. engines: [`resources`] (rules for Kubernetes objects), [`volume`]
//!    (directory trees), [`mover`] (mover Jobs), [`hooks`], [`preflight`];
//! 4. [`repo`] (the repository and its operations) and [`cluster`] (the API
//!    server);
//! 5. [`config`], [`context`], [`summary`], [`progress`], [`error`].
//!
//! Beside the floors, the hidden `fuzzing` module holds the harnesses of the
//! fuzz targets (`fuzz/`); nothing in the crate imports it.
//!
//! The crate has no `unsafe` code but one reviewed libc call
//! (`run::alloc`); the `unsafe_code` lint denies it everywhere else.

pub mod cluster;
pub mod config;
pub mod context;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod hooks;
pub mod modes;
pub mod mover;
pub mod preflight;
pub mod progress;
pub mod repo;
pub mod resources;
pub mod run;
pub mod summary;
#[cfg(test)]
mod testutil;
pub mod volume;
