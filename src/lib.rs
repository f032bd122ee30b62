//! kubestow: backup and restore for Kubernetes.
//!
//! One run, one mode, then exit (see `DESIGN.md`). Modules are named after
//! concepts: [`config`] reads the environment, [`run`] is the frame around a
//! mode, [`cluster`] talks to Kubernetes, [`repo`] stores data.

pub mod cluster;
pub mod config;
pub mod error;
pub mod logging;
pub mod preflight;
pub mod repo;
pub mod run;
pub mod summary;
