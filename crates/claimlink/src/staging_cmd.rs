//! `claimlink staging ...`: the module maker's operator tasks on staging (direct registry
//! access): load a factory manifest, make an administrator token for the staging API.

use claimlink_staging::store::Records as _;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use claimlink_registry::Store;

use crate::issue::ManifestEntry;

/// `staging import-manifest` arguments.
#[derive(clap::Args)]
pub(crate) struct ImportArgs {
    /// `manifest.jsonl` of a batch made by `claimlink ca issue-devices`.
    file: PathBuf,
    /// Registry: `sqlite://PATH` or `postgres://...` (else $DATABASE_URL).
    #[arg(long)]
    database: Option<String>,
}

/// `staging create-admin-token` arguments.
#[derive(clap::Args)]
pub(crate) struct TokenArgs {
    /// A name for the token (who holds it).
    #[arg(long)]
    name: String,
    /// Registry: `sqlite://PATH` or `postgres://...` (else $DATABASE_URL).
    #[arg(long)]
    database: Option<String>,
}

/// Counts of an import.
#[derive(Debug, Default)]
pub(crate) struct Imported {
    pub(crate) added: u64,
    pub(crate) updated: u64,
}

/// Most manifest lines written in one transaction.
const CHUNK: usize = 2000;

/// Loads a manifest: every line is checked first (a malformed file changes nothing), then
/// written in transactions of [`CHUNK`] devices (a rerun after a crash redoes what is missing;
/// importing is idempotent).
pub(crate) async fn import(store: &Store, path: &Path) -> Result<Imported> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut entries = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("cannot read {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let e: ManifestEntry = serde_json::from_str(&line)
            .with_context(|| format!("{}:{}: not a manifest line", path.display(), n + 1))?;
        claimlink_registry::ThingName::new(&e.thing_name)
            .with_context(|| format!("{}:{}", path.display(), n + 1))?;
        if e.certificate_id.len() != 64 || !e.certificate_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("{}:{}: certificate_id is not a SHA-256 in hex", path.display(), n + 1);
        }
        if let Some(v) = &e.claim_code_verifier
            && (!v.starts_with("hmac-sm3$") || v.split('$').count() != 3)
        {
            bail!("{}:{}: claim_code_verifier is not hmac-sm3$salt$mac", path.display(), n + 1);
        }
        entries.push(e);
    }
    let mut counts = Imported::default();
    for chunk in entries.chunks(CHUNK) {
        let mut tx = store.begin().await?;
        for e in chunk {
            let new = tx
                .import_device(&e.thing_name, Some(&e.certificate_id), e.claim_code_verifier.as_deref())
                .await?;
            if new {
                counts.added += 1;
            } else {
                counts.updated += 1;
            }
        }
        tx.commit().await?;
    }
    Ok(counts)
}

/// `claimlink staging import-manifest`.
pub(crate) fn import_manifest(args: &ImportArgs) -> Result<()> {
    let url = crate::server_cmd::database_url(args.database.as_deref())?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let store = claimlink_staging::store::open(&url).await.context("cannot open the registry")?;
        let n = import(&store, &args.file).await?;
        println!("imported {}: {} new devices, {} updated", args.file.display(), n.added, n.updated);
        Ok(())
    })
}

/// `claimlink staging create-admin-token`: prints a staging administrator token (shown once).
pub(crate) fn create_admin_token(args: &TokenArgs) -> Result<()> {
    let url = crate::server_cmd::database_url(args.database.as_deref())?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let store = claimlink_staging::store::open(&url).await.context("cannot open the registry")?;
        let mut tx = store.begin().await?;
        let token = tx.create_staging_admin_token(&args.name).await?;
        tx.commit().await?;
        println!("{token}");
        Ok(())
    })
}
