//! The one way to open or create a repository.

use std::sync::Arc;

use super::backend::Backend;
use super::crypto;
use super::{ChunkerParams, KeyParams, RepoError, Repository};
use crate::config::{Compression, Secret};

/// How to open (or create) a repository: a backend, a password, and
/// settings that default to what a run needs.
///
/// ```no_run
/// # async fn f(backend: std::sync::Arc<dyn kubestow::repo::backend::Backend>, pw: kubestow::config::Secret)
/// # -> Result<(), kubestow::repo::RepoError> {
/// use kubestow::repo::OpenOptions;
/// let repo = OpenOptions::new(backend, &pw).create_if_missing(true).open().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct OpenOptions {
    backend: Arc<dyn Backend>,
    password: Secret,
    compression: Compression,
    key_params: KeyParams,
    create_if_missing: bool,
    resume_buffer: Option<u64>,
}

impl std::fmt::Debug for OpenOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenOptions")
            .field("location", &self.backend.location())
            .field("compression", &self.compression)
            .field("create_if_missing", &self.create_if_missing)
            .finish_non_exhaustive()
    }
}

impl OpenOptions {
    /// Options to open the repository in `backend` with `password`, with
    /// default compression and key parameters, not creating it if missing.
    pub fn new(backend: Arc<dyn Backend>, password: &Secret) -> Self {
        Self {
            backend,
            password: password.clone(),
            compression: Compression::default(),
            key_params: KeyParams::default(),
            create_if_missing: false,
            resume_buffer: None,
        }
    }

    /// How blobs written through this handle are compressed.
    pub fn compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }

    /// Key derivation for keys created through this handle (tests use
    /// cheap parameters).
    pub fn key_params(mut self, params: KeyParams) -> Self {
        self.key_params = params;
        self
    }

    /// [`open`](Self::open) creates the repository where there is none
    /// (`STOW_INIT`); without it, a missing repository is
    /// [`RepoError::NotInitialised`].
    pub fn create_if_missing(mut self, yes: bool) -> Self {
        self.create_if_missing = yes;
        self
    }

    /// Writers index their packs at least every `bytes`
    /// ([`Repository::set_resume_buffer`]).
    pub fn resume_buffer(mut self, bytes: u64) -> Self {
        self.resume_buffer = Some(bytes);
        self
    }

    /// Unlocks a key with the password, reads `config`, and loads every
    /// index object.
    pub async fn open(self) -> Result<Repository, RepoError> {
        let create = self.create_if_missing;
        let repo = match self.open_inner(false).await {
            Err(RepoError::NotInitialised { .. }) if create => self.create().await?,
            other => other?.0,
        };
        Ok(repo)
    }

    /// Opens like [`open`](Self::open), but an index object that cannot be
    /// read is skipped instead of failing the open; its error is returned
    /// alongside. For `check`, which must report every damaged object.
    pub async fn open_lenient(self) -> Result<(Repository, Vec<RepoError>), RepoError> {
        self.open_inner(true).await
    }

    /// Creates a repository: a key object for the password, then `config`.
    /// Refuses if `config` exists. Two creations racing on one empty
    /// location are not detected (the backends have no create-if-absent);
    /// `STOW_INIT` is meant for the first run only.
    pub async fn create(&self) -> Result<Repository, RepoError> {
        let material = crypto::random::<{ crypto::MASTER_LEN }>();
        self.create_from(material, ChunkerParams::default()).await
    }

    /// Creates a repository whose blob ids equal `source`'s: it shares the
    /// id key and the chunker parameters (so the same content has the same
    /// blob id and trees copy unchanged), but has its own data key and
    /// password. The destination of `copy`.
    pub async fn create_sharing_ids(&self, source: &Repository) -> Result<Repository, RepoError> {
        let mut material = crypto::random::<{ crypto::MASTER_LEN }>();
        material[32..].copy_from_slice(&source.master_material()[32..]);
        self.create_from(material, source.chunker_params()).await
    }

    async fn create_from(
        &self,
        material: [u8; crypto::MASTER_LEN],
        chunker: ChunkerParams,
    ) -> Result<Repository, RepoError> {
        let repo = Repository::init_from(
            self.backend.clone(),
            &self.password,
            self.compression,
            self.key_params,
            material,
            chunker,
        )
        .await?;
        self.apply(&repo);
        Ok(repo)
    }

    async fn open_inner(&self, lenient: bool) -> Result<(Repository, Vec<RepoError>), RepoError> {
        let (repo, errors) = Repository::open_inner(
            self.backend.clone(),
            &self.password,
            self.compression,
            self.key_params,
            lenient,
        )
        .await?;
        self.apply(&repo);
        Ok((repo, errors))
    }

    fn apply(&self, repo: &Repository) {
        if let Some(bytes) = self.resume_buffer {
            repo.set_resume_buffer(bytes);
        }
    }
}
