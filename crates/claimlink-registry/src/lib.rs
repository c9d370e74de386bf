//! The registry of claimlink's OEM accounts: accounts and their API tokens, things, thing types
//! and groups, device and CA certificates, policies and their attachments, provisioning
//! templates, provisioning failures and an audit trail.
//!
//! One [`Store`] serves SQLite (the embedded default: WAL, one writer connection and several
//! read-only ones) and PostgreSQL (a pool), through sqlx's `Any` driver: the SQL is written once
//! in the dialect both accept, and only the DDL differs (the auto-increment key). Every
//! operation runs in a [`Tx`], so that several of them (a just-in-time provisioning) commit or
//! vanish together. Values are checked against the registry's limits before any SQL runs; names
//! and ids are typed ([`ThingName`], [`CertificateId`], ...) and checked when they are made.
//!
//! The registry stores; it does not judge. Whether a PEM is a certificate, a CA proved
//! possession, a policy document is valid or a status may change is decided above it
//! (`claimlink-provision`'s `registration`), which then asks the registry to store the result.

#![forbid(unsafe_code)]

/// The arguments of a statement, bound to `$1`, `$2`, ... in order (for [`Tx::run`] and the
/// other statement methods; a `?` inside turns an encoding failure into the caller's error).
#[macro_export]
macro_rules! args {
    ($($value:expr),* $(,)?) => {{
        #[allow(unused_mut)]
        let mut args = $crate::sqlx::any::AnyArguments::default();
        $($crate::sqlx::Arguments::add(&mut args, $value).map_err($crate::sqlx::Error::Encode)?;)*
        args
    }};
}

/// Maps a row to a record whose fields are the columns of the same names (`FromRow`).
#[macro_export]
macro_rules! columns {
    ($record:ident { $($field:ident),+ $(,)? }) => {
        impl<'r> $crate::sqlx::FromRow<'r, $crate::sqlx::any::AnyRow> for $record {
            fn from_row(r: &'r $crate::sqlx::any::AnyRow) -> $crate::sqlx::Result<Self> {
                use $crate::sqlx::Row;
                Ok(Self { $($field: r.try_get(stringify!($field))?),+ })
            }
        }
    };
}

#[doc(hidden)]
pub use sqlx;

mod accounts;
mod audit;
mod cas;
mod certificates;
mod claim_issuers;
mod db;
mod error;
mod ids;
pub mod model;
mod policies;
mod provisioning;
mod templates;
mod things;

pub use cas::NewCa;
pub use db::{Backend, Migration, Store, Tx, created, random_bytes, random_hex, token_hash};
pub use error::{Coded, Invalid, RegistryError, Result};
pub use ids::{
    AccountId, CaId, CertificateId, PolicyName, TemplateName, ThingGroupName, ThingName, ThingTypeName,
};
pub use model::*;
pub use policies::PolicyTarget;

/// The current time in Unix milliseconds (the registry's clock).
pub fn now() -> i64 {
    db::now_ms()
}
