//! Configuration errors: one [`ConfigError`] per problem, all of them
//! collected into [`ConfigErrors`] so that one run reports every mistake.

use std::fmt;

use super::vars as v;

/// One problem with one variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The value does not parse or is out of range.
    #[error("{var}={value} is invalid: {reason}")]
    Invalid {
        /// The variable, e.g. `STOW_CHANNELS`.
        var: &'static str,
        /// Already quoted, or `<redacted>` for secrets.
        value: String,
        /// Why, in words; the typed parser errors render into this.
        reason: String,
    },
    /// The mode needs a variable that is not set.
    #[error("{var} is required {why}")]
    Missing {
        /// The variable that is missing.
        var: &'static str,
        /// Which mode needs it, and why.
        why: String,
    },
    /// Two variables that exclude each other are both set.
    #[error("{a} and {b} cannot both be set; {hint}")]
    Conflict {
        /// The first variable (the one [`ConfigError::var`] names).
        a: &'static str,
        /// The other variable.
        b: &'static str,
        /// What to do instead.
        hint: &'static str,
    },
    /// A `STOW_*` variable that kubestow does not know: likely a typo.
    #[error("unknown variable {var}{}", suggestion.map(|s| format!("; did you mean {s}?")).unwrap_or_default())]
    Unknown {
        /// The variable as set.
        var: String,
        /// The closest known variable, if one is close.
        suggestion: Option<&'static str>,
    },
    /// A file a variable names (a password file) cannot be used.
    #[error("{var}: cannot read {path}: {reason}")]
    File {
        /// The variable naming the file.
        var: &'static str,
        /// The path as given.
        path: String,
        /// The I/O error kind, or why the content is unusable.
        reason: String,
    },
}

impl ConfigError {
    /// An [`ConfigError::Invalid`] that never echoes a secret variable's value.
    pub(super) fn invalid(var: &'static str, value: &str, reason: impl fmt::Display) -> Self {
        let secret = v::find(var).is_some_and(|d| d.secret);
        ConfigError::Invalid {
            var,
            value: if secret {
                "<redacted>".into()
            } else {
                // A URL may carry credentials (`s3://key:secret@...`).
                format!("{:?}", super::redact_urls(value))
            },
            reason: reason.to_string(),
        }
    }

    /// The variable the error is about.
    pub fn var(&self) -> &str {
        match self {
            ConfigError::Invalid { var, .. }
            | ConfigError::Missing { var, .. }
            | ConfigError::File { var, .. } => var,
            ConfigError::Conflict { a, .. } => a,
            ConfigError::Unknown { var, .. } => var,
        }
    }
}

/// Every problem found, so one run reports them all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Collects errors while parsing fields, so validation reports all of them.
#[derive(Debug, Default)]
pub(super) struct Check(pub(super) Vec<ConfigError>);

impl Check {
    /// The value, or `None` after recording the error.
    pub(super) fn take<T>(&mut self, r: Result<T, ConfigError>) -> Option<T> {
        r.map_err(|e| self.0.push(e)).ok()
    }

    /// Records a problem found by a check that is not a parse.
    pub(super) fn push(&mut self, e: ConfigError) {
        self.0.push(e);
    }
}
