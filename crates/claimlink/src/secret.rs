//! Reading secrets (CA passphrases) from files or the environment - never from argv.

use std::path::Path;

use anyhow::{Context, Result, bail};
use zeroize::Zeroizing;

/// The environment variable that may hold the CA passphrase.
pub(crate) const PASSPHRASE_ENV: &str = "CLAIMLINK_CA_PASSPHRASE";

/// Shortest passphrase accepted for a new CA (GM/T product rule: >= 8 characters).
pub(crate) const MIN_PASSPHRASE_LEN: usize = 8;

/// Reads the passphrase from `file` (its first line), else from `CLAIMLINK_CA_PASSPHRASE`.
pub(crate) fn passphrase(file: Option<&Path>) -> Result<Zeroizing<String>> {
    let text = match file {
        Some(path) => Zeroizing::new(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read passphrase file {}", path.display()))?,
        ),
        None => match std::env::var(PASSPHRASE_ENV) {
            Ok(v) => Zeroizing::new(v),
            Err(_) => bail!("no CA passphrase: give --passphrase-file FILE or set {PASSPHRASE_ENV}"),
        },
    };
    let first = Zeroizing::new(text.lines().next().unwrap_or("").to_owned());
    if first.is_empty() {
        bail!("the CA passphrase is empty");
    }
    Ok(first)
}
