//! `claimlink`: one binary for every role of the platform. This file parses the command line,
//! installs the tracing subscriber and dispatches; the work lives in the library crates and in
//! the command modules beside this file.

#![forbid(unsafe_code)]

mod bench_cmd;
mod broker_cmd;
mod ca;
mod ca_service;
mod config;
mod crl_fetch;
mod device_cmd;
mod files;
mod fleet;
mod iot_cmd;
mod issue;
mod jitp_bench;
mod km;
mod label;
mod ocsp_cmd;
mod revoke;
mod secret;
mod server_cmd;
mod staging_cmd;
mod up;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc rather than the system allocator: the broker allocates a message on one thread
/// and frees it on another, and glibc's arena locks were a tenth of the broker's time under
/// load (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Self-hosted onboarding-by-claim for IoT fleets, with a GM/T (SM2/SM3/SM4) and NIST PKI.
#[derive(Parser)]
#[command(name = "claimlink", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the platform with embedded defaults in ./claimlink-data.
    Up(up::UpArgs),
    /// Run a plain MQTT broker (TCP and TLS listeners) from a TOML configuration.
    Broker(broker_cmd::BrokerArgs),
    /// The configuration file every role reads: print a commented default, check one.
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// Manufacturer CA: create it, issue device identities, sign CSRs, verify chains.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Run the OEM account endpoint (MQTT per account by SNI, JITP, policies, admin API), and
    /// staging when the configuration has a [staging] section.
    Server(server_cmd::ServerArgs),
    /// Operator tasks on accounts (direct registry access).
    #[command(subcommand)]
    Account(AccountCommand),
    /// The account's admin API with the AWS CLI's `aws iot` verbs and flags.
    Iot(iot_cmd::IotArgs),
    /// Staging operator tasks (direct registry access).
    #[command(subcommand)]
    Staging(StagingCommand),
    /// A simulated device running the agent (autonomous, or AT commands on stdio or a pty).
    Device(device_cmd::DeviceArgs),
    /// Simulate N devices in one process: staging, claim, move, JITP, first publish.
    Fleet(fleet::FleetArgs),
    /// Load generators for benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand)]
enum StagingCommand {
    /// Load a factory manifest (ThingNames, certificate ids, claim code verifiers).
    ImportManifest(staging_cmd::ImportArgs),
    /// Make a token for the staging administrators' API (shown once).
    CreateAdminToken(staging_cmd::TokenArgs),
}

#[derive(Subcommand)]
enum AccountCommand {
    /// Create an account and print its first API token (shown once).
    Create(server_cmd::AccountCreateArgs),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Drive any MQTT broker (ours or another) with the same load.
    Mqtt(bench_cmd::BenchMqttArgs),
    /// Drive any OCSP responder (ours or `openssl ocsp -port`) with the same requests.
    Ocsp(bench_cmd::BenchOcspArgs),
    /// Onboarding rate of the account endpoint: N never-seen devices provisioned in their first
    /// CONNECT, then the same devices reconnecting.
    Jitp(jitp_bench::JitpArgs),
}

#[derive(Subcommand)]
enum CaCommand {
    /// Create a root CA and an issuing CA (keys encrypted at rest) in a new directory.
    Init(ca::InitArgs),
    /// Issue N device identities (key, birth certificate, claim code, label) in parallel.
    IssueDevices(issue::IssueArgs),
    /// Sign a PKCS#10 CSR as a TLS server or claim-thing certificate.
    SignCsr(ca::SignCsrArgs),
    /// Validate a certificate against a chain file (anchors are its self-signed certificates).
    Verify(ca::VerifyArgs),
    /// Revoke a certificate this CA issued (recorded; published by `ca crl`).
    Revoke(revoke::RevokeArgs),
    /// Sign and write a full or delta CRL of the issuing CA (or the root).
    Crl(revoke::CrlArgs),
    /// Dual certificates: sign an SM2 CSR and have the KM make, archive and envelope the
    /// encryption key pair and its certificate.
    SignDual(km::SignDualArgs),
    /// Serve OCSP (RFC 6960, HTTP POST) for the issuing CA (or the root) from its revocations.
    OcspResponder(ocsp_cmd::OcspArgs),
    /// The key management centre: operators, approvals, recovery of archived keys.
    #[command(subcommand)]
    Km(km::KmCommand),
    /// Serve the CA system (RA, CA, KM, CRLs, OCSP) of a CA directory over an HTTP API.
    Serve(ca_service::ServeArgs),
    /// The CA system's API: apply, review, download, revoke, administrators, audit.
    Ra(ca_service::client::RaArgs),
    /// Print what each role of the CA system may do (the table `ca serve` enforces).
    Roles,
}

/// Where the passphrase of CA keys comes from: a file, else `CLAIMLINK_CA_PASSPHRASE`.
#[derive(clap::Args, Clone)]
struct PassphraseArg {
    /// File holding the CA key passphrase (first line). Else $CLAIMLINK_CA_PASSPHRASE is used.
    #[arg(long, value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
}

fn main() -> ExitCode {
    // Everything this process creates is its user's alone: the registry (claim-code verifiers,
    // token hashes) and its WAL, manifests, labels with claim codes, keys. Files come out 0600
    // and directories 0700 whatever mode a call asks for.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CLAIMLINK_LOG")
                // rustls warns about every client that sends an IP address as SNI (mosquitto does).
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,rustls=error")),
        )
        .with_writer(std::io::stderr)
        // Colours for a terminal only: a log file or a collector gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Up(args) => up::run(&args),
        Command::Broker(args) => broker_cmd::run(&args),
        Command::Config(c) => config::run(&c),
        Command::Server(args) => server_cmd::run(&args),
        Command::Account(AccountCommand::Create(args)) => server_cmd::account_create(&args),
        Command::Staging(StagingCommand::ImportManifest(args)) => staging_cmd::import_manifest(&args),
        Command::Staging(StagingCommand::CreateAdminToken(args)) => staging_cmd::create_admin_token(&args),
        Command::Device(args) => device_cmd::run(&args),
        Command::Fleet(args) => fleet::run(&args),
        Command::Iot(args) => match iot_cmd::run(&args) {
            Ok(iot_cmd::Outcome::Done) => Ok(()),
            Ok(iot_cmd::Outcome::Refused) => return ExitCode::from(254),
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::from(255);
            }
        },
        Command::Bench(BenchCommand::Mqtt(args)) => bench_cmd::run(&args),
        Command::Bench(BenchCommand::Ocsp(args)) => bench_cmd::ocsp(&args),
        Command::Bench(BenchCommand::Jitp(args)) => jitp_bench::run(&args),
        Command::Ca(CaCommand::Init(args)) => ca::init(&args),
        Command::Ca(CaCommand::IssueDevices(args)) => issue::run(&args),
        Command::Ca(CaCommand::SignCsr(args)) => ca::sign_csr(&args),
        Command::Ca(CaCommand::Verify(args)) => ca::verify(&args),
        Command::Ca(CaCommand::Revoke(args)) => revoke::revoke(&args),
        Command::Ca(CaCommand::Crl(args)) => revoke::crl(&args),
        Command::Ca(CaCommand::SignDual(args)) => km::sign_dual(&args),
        Command::Ca(CaCommand::Km(cmd)) => km::run(&cmd),
        Command::Ca(CaCommand::OcspResponder(args)) => ocsp_cmd::run(&args),
        Command::Ca(CaCommand::Serve(args)) => ca_service::run(&args),
        Command::Ca(CaCommand::Roles) => {
            print!("{}", ca_service::roles::markdown());
            Ok(())
        }
        Command::Ca(CaCommand::Ra(args)) => match ca_service::client::run(&args) {
            Ok(iot_cmd::Outcome::Done) => Ok(()),
            Ok(iot_cmd::Outcome::Refused) => return ExitCode::from(254),
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
