//! Why a registry operation failed, and the one vocabulary of error codes.

use std::fmt;

/// An error with a stable code from the one vocabulary every API of ours answers in (README,
/// "API errors"): AWS IoT's exception names where AWS has the case. The HTTP status of each code
/// is decided in one place (`claimlink_service::api`), never by the type that fails.
pub trait Coded: std::error::Error {
    /// The stable code.
    fn code(&self) -> &'static str;
}

/// A value that breaks a rule: what it is, the value as shown (at most 64 characters, never a
/// secret), and the rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// What the value is ("thing name", "endpoint", ...).
    pub what: &'static str,
    /// The value, cut to 64 characters; empty when it must not be shown.
    pub shown: String,
    /// The rule it breaks.
    pub rule: &'static str,
}

impl Invalid {
    /// `value` (shown cut to 64 characters) breaks `rule`.
    pub fn new(what: &'static str, value: &str, rule: &'static str) -> Self {
        Self { what, shown: value.chars().take(64).collect(), rule }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?} is invalid: {}", self.what, self.shown, self.rule)
    }
}

impl std::error::Error for Invalid {}

impl Coded for Invalid {
    fn code(&self) -> &'static str {
        "InvalidRequestException"
    }
}

/// Why a storage operation failed. Domain rules (certificate contents, proofs of possession,
/// policy documents, status transitions) are not decided here but by the crates that own them,
/// each with its own error per operation.
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
    /// A value breaks a rule of the registry (a name's characters, an attribute's length).
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// A registry limit would be exceeded.
    #[error("{what} is at most {limit}")]
    LimitExceeded {
        /// What is counted ("attributes per thing", "bytes of a template body", ...).
        what: &'static str,
        /// The limit.
        limit: usize,
    },
    /// Still used by something else (a template a CA runs, a thing with certificates): change
    /// that first.
    #[error("{kind} {name:?} is in use by {user}")]
    InUse {
        /// What kind of thing.
        kind: &'static str,
        /// Its name.
        name: String,
        /// What uses it.
        user: String,
    },
    /// A row changed under this transaction although it was locked (cannot happen under the
    /// registry's locks; if it does, nothing of the operation is kept).
    #[error("{kind} {name:?} changed during the operation; nothing was kept")]
    Changed {
        /// What kind of thing.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// The database URL is not one the registry can open.
    #[error("the database URL must be sqlite://PATH or postgres://...")]
    DatabaseUrl,
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The operating system's random generator failed: no identifier or token is made.
    #[error("the random generator failed")]
    Randomness,
}

impl RegistryError {
    /// Nothing of `kind` is called `name`.
    pub fn not_found(kind: &'static str, name: &str) -> Self {
        Self::NotFound { kind, name: name.to_owned() }
    }

    /// `value` breaks `rule`.
    pub fn invalid(what: &'static str, value: &str, rule: &'static str) -> Self {
        Self::Invalid(Invalid::new(what, value, rule))
    }

    /// More than `limit` of `what`.
    pub fn limit(what: &'static str, limit: usize) -> Self {
        Self::LimitExceeded { what, limit }
    }

    /// Whether a unique constraint refused the write (a concurrent creation of the same row).
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::AlreadyExists { .. })
            || matches!(self, Self::Database(sqlx::Error::Database(e)) if e.is_unique_violation())
    }

    /// Whether the failure is ours (the database, the random generator), not the caller's.
    pub fn is_internal(&self) -> bool {
        matches!(self, Self::Database(_) | Self::Randomness)
    }
}

impl Coded for RegistryError {
    fn code(&self) -> &'static str {
        match self {
            Self::NotFound { .. } => "ResourceNotFoundException",
            Self::AlreadyExists { .. } => "ResourceAlreadyExistsException",
            Self::Invalid(e) => e.code(),
            Self::LimitExceeded { .. } => "LimitExceededException",
            Self::InUse { .. } => "DeleteConflictException",
            Self::Changed { .. } => "ConflictingResourceUpdateException",
            Self::DatabaseUrl => "InvalidRequestException",
            Self::Database(_) | Self::Randomness => "InternalFailureException",
        }
    }
}

/// Result of registry operations.
pub type Result<T, E = RegistryError> = std::result::Result<T, E>;
