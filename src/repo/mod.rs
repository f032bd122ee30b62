//! The repository: content-addressed, immutable objects on a [`backend::Backend`].

pub mod backend;
