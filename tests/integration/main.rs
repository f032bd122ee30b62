//! Integration tests against real servers (see `env`). One test binary, so the
//! servers start once for all modules.

mod api;
mod backend;
mod binary;
mod cli;
mod compat;
mod env;
mod environment;
mod helm;
mod hooks;
mod kubeapi;
mod metrics;
mod node;
mod node_movers;
mod preflight;
mod rate;
mod repo;
mod resources;
mod resume;
mod schedule;
mod tls;
mod volume;
