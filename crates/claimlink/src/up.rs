//! `claimlink up`: the platform with embedded defaults in `./claimlink-data`.
//!
//! What exists today is the factory side: on first run it creates an SM2 manufacturer CA and a
//! first batch of three device identities with labels; later runs reuse them. The network roles
//! (staging, account endpoint, API, portal) are not built yet and `up` says so rather than
//! pretending.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use claimlink_pki::KeyAlgorithm;

use crate::PassphraseArg;
use crate::files::write_new;

/// `up` arguments.
#[derive(clap::Args)]
pub(crate) struct UpArgs {
    /// Data directory.
    #[arg(long, default_value = "claimlink-data")]
    data: PathBuf,
}

/// `claimlink up`.
pub(crate) fn run(args: &UpArgs) -> Result<()> {
    let data = &args.data;
    std::fs::create_dir_all(data).with_context(|| format!("cannot create {}", data.display()))?;
    let pass_file = data.join("ca-passphrase");
    if !pass_file.exists() {
        let mut bytes = [0u8; 24];
        rand_core::Rng::fill_bytes(&mut crate::ca::rng(), &mut bytes);
        write_new(&pass_file, format!("{}\n", hex::encode(bytes)).as_bytes(), 0o600)?;
    }
    let passphrase = PassphraseArg { passphrase_file: Some(pass_file.clone()) };
    let ca_dir = data.join("manufacturer-ca");
    if !ca_dir.join("ca.toml").exists() {
        crate::ca::init(&crate::ca::InitArgs {
            algorithm: KeyAlgorithm::Sm2,
            subject: "CN=claimlink Demo Module Maker,O=claimlink demo,C=CN".into(),
            out: ca_dir.clone(),
            passphrase: passphrase.clone(),
        })?;
    }
    let batch = data.join("factory");
    crate::issue::run(&crate::issue::IssueArgs {
        ca: ca_dir,
        passphrase,
        count: 3,
        out: batch.clone(),
        staging_endpoint: "localhost:8883".into(),
        no_claim_code: false,
        validity_years: 20,
        threads: None,
    })?;
    print_next_steps(data, &batch)
}

fn print_next_steps(data: &Path, batch: &Path) -> Result<()> {
    println!();
    println!("claimlink data: {}", data.display());
    println!("  manufacturer CA   {}", data.join("manufacturer-ca").display());
    println!("  device bundles    {}", batch.join("devices").display());
    println!("  printable labels  {}", batch.join("labels.html").display());
    println!();
    println!("Not built yet: the staging and account MQTT endpoints, the admin API and the");
    println!("registration portal. Until they land, `up` prepares the factory side only.");
    Ok(())
}
