//! kubestow: backup and restore for Kubernetes.
//!
//! One run, one mode, then exit (see `DESIGN.md`). Modules are named after
//! concepts: [`config`] reads the environment, [`run`] is the frame around a
//! mode, [`cluster`] talks to Kubernetes, [`repo`] stores data.

pub mod cancel;
pub mod check;
pub mod cluster;
pub mod config;
pub mod copy;
pub mod error;
pub mod hooks;
pub mod list;
pub mod logging;
pub mod metrics;
pub mod mover;
pub mod preflight;
pub mod progress;
pub mod prune;
pub mod repo;
pub mod resources;
pub mod run;
pub mod schedule;
pub mod summary;
#[cfg(test)]
mod testutil;
pub mod volume;
