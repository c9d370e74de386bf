//! Why a registry operation failed.

/// Why an operation failed. [`RegistryError::code`] is stable (AWS IoT's exception names), and
/// messages never hold secrets.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// Something named does not exist.
    #[error("{kind} {name:?} does not exist")]
    NotFound {
        /// What kind of thing.
        kind: &'static str,
        /// Its name or id.
        name: String,
    },
    /// It exists already.
    #[error("{kind} {name:?} already exists")]
    AlreadyExists {
        /// What kind of thing.
        kind: &'static str,
        /// Its name or id.
        name: String,
    },
    /// A value breaks a rule.
    #[error("{0}")]
    Invalid(String),
    /// A registry limit would be exceeded.
    #[error("{0}")]
    LimitExceeded(String),
    /// The certificate's state does not allow this (a revoked certificate, an inactive CA...).
    #[error("{0}")]
    State(String),
    /// Still used by something else (a template a CA runs): delete or change that first.
    #[error("{kind} {name:?} is in use by {user}")]
    InUse {
        /// What kind of thing.
        kind: &'static str,
        /// Its name.
        name: String,
        /// What uses it.
        user: String,
    },
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The operating system's random generator failed: no identifier or token is made.
    #[error("the random generator failed")]
    Randomness,
}

impl RegistryError {
    /// A value that breaks a rule.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid(message.into())
    }

    /// A limit that would be exceeded.
    pub fn limit(message: impl Into<String>) -> Self {
        Self::LimitExceeded(message.into())
    }

    /// Nothing of `kind` is called `name`.
    pub fn not_found(kind: &'static str, name: &str) -> Self {
        Self::NotFound { kind, name: name.to_owned() }
    }

    /// The stable error code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound { .. } => "ResourceNotFoundException",
            Self::AlreadyExists { .. } => "ResourceAlreadyExistsException",
            Self::Invalid(_) => "InvalidRequestException",
            Self::LimitExceeded(_) => "LimitExceededException",
            Self::State(_) => "CertificateStateException",
            Self::InUse { .. } => "DeleteConflictException",
            Self::Database(_) | Self::Randomness => "InternalFailureException",
        }
    }

    /// Whether a unique constraint refused the write (a concurrent creation of the same row).
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::AlreadyExists { .. })
            || matches!(self, Self::Database(sqlx::Error::Database(e)) if e.is_unique_violation())
    }
}

/// Result of registry operations.
pub type Result<T, E = RegistryError> = std::result::Result<T, E>;
