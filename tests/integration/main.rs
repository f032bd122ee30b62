//! Integration tests against real servers (see `env`). One test binary, so the
//! servers start once for all modules.

mod api;
mod backend;
mod binary;
mod cli;
mod env;
mod environment;
mod helm;
mod metrics;
mod movers;
mod preflight;
mod repo;
mod resources;
mod standin;
mod volume;
