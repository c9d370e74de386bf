//! `claimlink up`: every role in one process with embedded defaults in `./claimlink-data`.
//!
//! First run: a P-256 manufacturer CA (device TLS needs P-256 until TLS with SM lands), an
//! endpoint CA with one server certificate for every loopback endpoint, three device bundles
//! with labels, the registry (SQLite) holding staging (the batch's manifest, a demo OEM with
//! its claim-thing certificate and endpoint) and the demo OEM's account (the manufacturer CA
//! registered SNI_ONLY with auto-registration, a JITP template and a policy). Later runs reuse
//! all of it. Then it serves staging (MQTT + HTTPS API), the account endpoint (MQTT + admin
//! API) and the registration portal, and prints what to do next.

use claimlink_staging::store::Records as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use claimlink_pki::profile::YEAR;
use claimlink_pki::{Certificate, Issuer, KeyAlgorithm, PrivateKey, Profile, Signer, issue, name, pem};
use claimlink_provision::registration::{self, CaApplication};
use claimlink_registry::{AccountId, CaMode, PolicyName, Store, TemplateKind, TemplateName};
use claimlink_server::{AccountServer, ServerIdentity};
use claimlink_staging::{StagingConfig, StagingServer};

use crate::PassphraseArg;
use crate::files::write_new;

/// `up` arguments.
#[derive(clap::Args)]
pub(crate) struct UpArgs {
    /// Data directory.
    #[arg(long, default_value = "claimlink-data")]
    data: PathBuf,
    /// Staging MQTT listener (devices from the factory connect here).
    #[arg(long, default_value = "127.0.0.1:8883")]
    staging_mqtt: SocketAddr,
    /// Staging HTTPS API (administrators; portals with their claim-thing certificate).
    #[arg(long, default_value = "127.0.0.1:8443")]
    staging_api: SocketAddr,
    /// The demo OEM's account endpoint (MQTT).
    #[arg(long, default_value = "127.0.0.1:8884")]
    account_mqtt: SocketAddr,
    /// The account admin API (plain HTTP on loopback, or HTTPS with --https).
    #[arg(long, default_value = "127.0.0.1:8081")]
    admin_api: SocketAddr,
    /// The registration portal (plain HTTP on loopback, or HTTPS with --https).
    #[arg(long, default_value = "127.0.0.1:8080")]
    portal: SocketAddr,
    /// The CA system of the SM2 module maker (RA, CRLs, OCSP; plain HTTP on loopback). Its
    /// revocations reach staging and the accounts at once. The URL is written into the
    /// certificates that CA issues when `up` first makes it.
    #[arg(long, default_value = "127.0.0.1:8890")]
    ca_system: SocketAddr,
    /// Serve the admin API and the portal over HTTPS with the endpoints' certificates (SM2 and
    /// P-256, TLS 1.3 with SM or the international suites), as the MQTT listeners and the
    /// staging API always are. Without it they are plain HTTP and must listen on loopback.
    #[arg(long)]
    https: bool,
    /// Devices in the demo batch.
    #[arg(long, default_value_t = 3)]
    devices: u64,
    /// Admit devices at the demo account as AWS IoT does: any device of the module maker's CA,
    /// claimed or not (by default the account requires staging's claim ticket).
    #[arg(long)]
    no_require_claim: bool,
    /// A configuration file whose `[limits]`, `[http]`, `[claims]` and `[portal]` bound the
    /// roles `up` runs (`claimlink config default` prints one).
    #[arg(long)]
    config: Option<PathBuf>,
}

const STAGING_HOST: &str = "staging.localhost";
const OEM_HOST: &str = "demo-oem.localhost";
const OEM_NAME: &str = "Demo OEM";
const ACCOUNT: &str = "demo-oem";
const TEMPLATE: &str = "demo-jitp";
const POLICY: &str = "DemoDevicePolicy";

/// The demo devices' policy: each device connects as its ThingName and uses topics under it.
const POLICY_DOC: &str = r#"{"Version":"2012-10-17","Statement":[
{"Effect":"Allow","Action":"iot:Connect","Resource":"arn:*:iot:*:*:client/${iot:Connection.Thing.ThingName}"},
{"Effect":"Allow","Action":["iot:Publish","iot:Receive"],"Resource":"arn:*:iot:*:*:topic/${iot:Connection.Thing.ThingName}/*"},
{"Effect":"Allow","Action":"iot:Subscribe","Resource":"arn:*:iot:*:*:topicfilter/${iot:Connection.Thing.ThingName}/*"}]}"#;

const TEMPLATE_BODY: &str = r#"{"Parameters":{"AWS::IoT::Certificate::CommonName":{"Type":"String"},
"AWS::IoT::Certificate::Id":{"Type":"String"}},
"Resources":{"thing":{"Type":"AWS::IoT::Thing","Properties":{"ThingName":{"Ref":"AWS::IoT::Certificate::CommonName"},
"AttributePayload":{"onboarded":"claim"}}},
"certificate":{"Type":"AWS::IoT::Certificate","Properties":{"CertificateId":{"Ref":"AWS::IoT::Certificate::Id"},"Status":"ACTIVE"}},
"policy":{"Type":"AWS::IoT::Policy","Properties":{"PolicyName":"DemoDevicePolicy"}}}}"#;

struct Paths {
    data: PathBuf,
}

impl Paths {
    fn p(&self, rel: &str) -> PathBuf {
        self.data.join(rel)
    }
}

/// Issues an end-entity certificate and key from a loaded CA.
fn leaf(ca: &crate::ca::LoadedCa, profile: &Profile, dn: &str) -> Result<(Certificate, PrivateKey)> {
    let mut rng = crate::ca::rng();
    let key = PrivateKey::generate(ca.algorithm, &mut rng)?;
    let subject = ca.subject(name::parse(dn)?, key.public_key(), YEAR * 5)?;
    let cert = issue(
        &Issuer { certificate: Some(&ca.issuing), signer: &ca.issuing_key },
        profile,
        &subject,
        &mut rng,
    )?;
    Ok((cert, key))
}

fn write_leaf(dir: &Path, stem: &str, cert: &Certificate, chain: &str, key: &PrivateKey) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    crate::files::write_atomic(
        &dir.join(format!("{stem}.pem")),
        format!("{}{chain}", cert.to_pem()).as_bytes(),
        0o644,
    )?;
    crate::files::write_atomic(
        &dir.join(format!("{stem}.key")),
        pem::private_key_to_pem(key)?.as_bytes(),
        0o600,
    )?;
    Ok(())
}

fn ensure_ca(
    dir: &Path,
    algorithm: KeyAlgorithm,
    subject: &str,
    passphrase: &PassphraseArg,
    public_url: Option<String>,
) -> Result<()> {
    if !dir.join("ca.toml").exists() {
        crate::ca::init(&crate::ca::InitArgs {
            algorithm,
            subject: subject.into(),
            out: dir.to_owned(),
            passphrase: passphrase.clone(),
            public_url,
        })?;
    }
    Ok(())
}

/// The endpoints' TLCP signing and encryption certificates from the SM2 endpoint CA and its KM,
/// written as `tlcp-sign.{pem,key}` and `tlcp-enc.{pem,key}` in `out`.
fn issue_tlcp_pair(
    ca_dir: &Path,
    ca: &crate::ca::LoadedCa,
    passphrase: &PassphraseArg,
    out: &Path,
) -> Result<()> {
    let mut rng = crate::ca::rng();
    let sign_key = PrivateKey::generate(KeyAlgorithm::Sm2, &mut rng)?;
    let subject = name::parse("CN=claimlink demo endpoints,O=claimlink demo")?;
    let csr = claimlink_pki::CertificateRequest::build(subject, &sign_key, &[])?;
    let km = crate::km::load_km_key(ca_dir, passphrase)?;
    let request = crate::km::DualRequest {
        csr: &csr,
        server: true,
        dns: &[STAGING_HOST.into(), OEM_HOST.into(), "localhost".into()],
        ips: &["127.0.0.1".parse()?],
        validity: YEAR * 5,
    };
    let dual = crate::km::issue_dual(ca_dir, ca, &km, &request)?;
    let PrivateKey::Sm2 { key: sign_sm2, .. } = &sign_key else {
        anyhow::bail!("the TLCP signing key is SM2")
    };
    let enc_key = PrivateKey::from_sm2(claimlink_gm::envelope::open(sign_sm2, &dual.envelope)?);
    write_leaf(out, "tlcp-sign", &dual.sign, &ca.issuing.to_pem(), &sign_key)?;
    write_leaf(out, "tlcp-enc", &dual.enc, "", &enc_key)?;
    Ok(())
}

/// Makes what is missing of the data directory (files only; the registry comes after).
fn prepare_files(args: &UpArgs, paths: &Paths) -> Result<PassphraseArg> {
    std::fs::create_dir_all(&paths.data)
        .with_context(|| format!("cannot create {}", paths.data.display()))?;
    // A data directory made by an older version may be readable by others: close it.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&paths.data, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict {}", paths.data.display()))?;
    let pass_file = paths.p("ca-passphrase");
    if !pass_file.exists() {
        let mut bytes = [0u8; 24];
        rand_core::Rng::fill_bytes(&mut crate::ca::rng(), &mut bytes);
        write_new(&pass_file, format!("{}\n", hex::encode(bytes)).as_bytes(), 0o600)?;
    }
    let passphrase = PassphraseArg { passphrase_file: Some(pass_file) };
    // Data made by an earlier claimlink: an SM2 demo CA in the P-256 place (before staging),
    // or a factory without the SM2 endpoint root (before TLS with SM).
    if let Ok(info) = std::fs::read_to_string(paths.p("manufacturer-ca/ca.toml"))
        && (info.contains("algorithm = \"sm2\"")
            || paths.p("factory").exists() && !paths.p("endpoint-ca-sm2/ca.toml").exists())
    {
        anyhow::bail!(
            "{} was made by an earlier claimlink (before staging, or before SM2 devices and \
                 TLS 1.3 with SM); move it away (or use --data DIR) and run `claimlink up` again",
            paths.data.display()
        );
    }
    // Two module makers (P-256 and SM2 birth certificates) and two endpoint roots: every
    // endpoint serves an SM2 certificate to clients offering sm2sig_sm3 (RFC 8998) and a P-256
    // one to the others.
    for (algorithm, dir, subject) in [
        (KeyAlgorithm::P256, "manufacturer-ca", "CN=claimlink Demo Module Maker,O=claimlink demo,C=CN"),
        (
            KeyAlgorithm::Sm2,
            "manufacturer-ca-sm2",
            "CN=claimlink Demo SM2 Module Maker,O=claimlink demo,C=CN",
        ),
        (KeyAlgorithm::P256, "endpoint-ca", "CN=claimlink Demo Endpoint Root,O=claimlink demo,C=CN"),
        (KeyAlgorithm::Sm2, "endpoint-ca-sm2", "CN=claimlink Demo SM2 Endpoint Root,O=claimlink demo,C=CN"),
    ] {
        // The SM2 module maker publishes through the CA system `up` runs.
        let public_url = (dir == "manufacturer-ca-sm2").then(|| format!("http://{}", args.ca_system));
        ensure_ca(&paths.p(dir), algorithm, subject, &passphrase, public_url)?;
    }
    let endpoint_ca = crate::ca::load(&paths.p("endpoint-ca"), &passphrase)?;
    let endpoint_ca_sm2 = crate::ca::load(&paths.p("endpoint-ca-sm2"), &passphrase)?;
    let tls = paths.p("tls");
    for (ca, stem) in [(&endpoint_ca, "server"), (&endpoint_ca_sm2, "server-sm2")] {
        if !tls.join(format!("{stem}.pem")).exists() {
            let profile = Profile::TlsServer {
                dns: vec![STAGING_HOST.into(), OEM_HOST.into(), "localhost".into()],
                ips: vec!["127.0.0.1".parse()?],
            };
            let (cert, key) = leaf(ca, &profile, "CN=claimlink demo endpoints,O=claimlink demo")?;
            write_leaf(&tls, stem, &cert, &ca.issuing.to_pem(), &key)?;
        }
    }
    // TLCP's dual certificates for every endpoint: our signing key's CSR to the SM2 endpoint
    // CA, whose KM makes the encryption key pair and delivers it sealed to the signing key
    // (the dual-server issuance of the CA system's RA, `km::issue_dual`).
    if !tls.join("tlcp-enc.key").exists() {
        issue_tlcp_pair(&paths.p("endpoint-ca-sm2"), &endpoint_ca_sm2, &passphrase, &tls)?;
    }
    let oem = paths.p("oem");
    if !oem.join("claim-thing.pem").exists() {
        let (cert, key) = leaf(&endpoint_ca, &Profile::ClaimThing, "CN=Demo OEM claim-thing,O=Demo OEM")?;
        write_leaf(&oem, "claim-thing", &cert, "", &key)?;
    }
    crate::files::write_atomic(
        &paths.p("endpoint-ca.pem"),
        format!("{}{}", endpoint_ca.root.to_pem(), endpoint_ca_sm2.root.to_pem()).as_bytes(),
        0o644,
    )?;
    // Staging's claim-ticket key: it signs the tickets and release notices the account trusts.
    let ticket_key = paths.p("staging/ticket.key");
    if !ticket_key.exists() {
        std::fs::create_dir_all(paths.p("staging"))?;
        let key = PrivateKey::generate(KeyAlgorithm::P256, &mut crate::ca::rng())?;
        write_new(&ticket_key, pem::private_key_to_pem(&key)?.as_bytes(), 0o600)?;
        crate::files::write_atomic(
            &paths.p("staging/ticket.pub.pem"),
            pem::public_key_to_pem(&key.public_key()).as_bytes(),
            0o644,
        )?;
    }
    for (ca, out) in [("manufacturer-ca", "factory"), ("manufacturer-ca-sm2", "factory-sm2")] {
        crate::issue::run(&crate::issue::IssueArgs {
            ca: paths.p(ca),
            passphrase: passphrase.clone(),
            count: args.devices,
            out: paths.p(out),
            staging_endpoint: format!("{STAGING_HOST}:{}", args.staging_mqtt.port()),
            no_claim_code: false,
            validity_years: 20,
            threads: None,
            endpoint_root_ca: Some(paths.p("endpoint-ca.pem")),
        })?;
    }
    Ok(passphrase)
}

/// The registry part of the demo, made once.
async fn prepare_registry(args: &UpArgs, paths: &Paths, store: &Store) -> Result<(String, AccountId)> {
    let oem_endpoint = format!("{OEM_HOST}:{}", args.account_mqtt.port());
    let mut tx = store.begin().await?;
    let oem = match tx.oem_by_name(OEM_NAME).await? {
        Some(o) => o,
        None => {
            let o = tx.create_oem(OEM_NAME, std::slice::from_ref(&oem_endpoint)).await?;
            let pem = std::fs::read_to_string(paths.p("oem/claim-thing.pem"))?;
            let cert = Certificate::from_pem(pem.as_bytes())?;
            tx.set_claim_certificate(&o.id, &cert.id().to_string(), &cert.to_pem()).await?;
            let token = tx.create_staging_admin_token("up").await?;
            write_new(&paths.p("staging-admin-token"), format!("{token}\n").as_bytes(), 0o600)?;
            o
        }
    };
    let account = match tx.account_by_name(ACCOUNT).await? {
        Some(a) => a,
        None => {
            let a = tx.create_account(ACCOUNT, OEM_HOST, "cn-north-1").await?;
            let token = tx.create_api_token(&a.id, "owner").await?;
            write_new(&paths.p("account-token"), format!("{token}\n").as_bytes(), 0o600)?;
            claimlink_provision::Template::parse(TEMPLATE_BODY).map_err(|e| anyhow::anyhow!("{e}"))?;
            registration::create_policy(&mut tx, &a.id, &PolicyName::new(POLICY)?, POLICY_DOC).await?;
            let template = TemplateName::new(TEMPLATE)?;
            tx.create_template(
                &a.id,
                &template,
                TemplateKind::Jitp,
                TEMPLATE_BODY,
                true,
                Some("claimlink up demo"),
            )
            .await?;
            for maker in ["manufacturer-ca", "manufacturer-ca-sm2"] {
                let ca_pem = std::fs::read_to_string(paths.p(&format!("{maker}/chain.pem")))?;
                let issuing = Certificate::chain_from_pem(ca_pem.as_bytes())?
                    .into_iter()
                    .next()
                    .context("no manufacturer issuing CA certificate")?;
                let pem = issuing.to_pem();
                let mut new = CaApplication::new(&pem, CaMode::SniOnly);
                new.auto_registration = true;
                new.template_name = Some(&template);
                registration::register_ca(&mut tx, &a, &new).await?;
            }
            a
        }
    };
    // Claim-bound admission: the account trusts staging's ticket key, and its module maker CA
    // admits only claimed devices (unless --no-require-claim). Set on every start, so that a
    // data directory from before it gets it too.
    let ticket_pub = std::fs::read_to_string(paths.p("staging/ticket.pub.pem"))?;
    tx.put_claim_issuer(&account.id, "staging", &ticket_pub).await?;
    for ca in tx.list_cas(&account.id).await? {
        tx.set_ca_require_claim(&account.id, &ca.id, !args.no_require_claim).await?;
    }
    tx.commit().await?;
    for factory in ["factory", "factory-sm2"] {
        let imported =
            crate::staging_cmd::import(store, &paths.p(&format!("{factory}/manifest.jsonl"))).await?;
        if imported.added > 0 {
            tracing::info!(added = imported.added, factory, "factory manifest imported into staging");
        }
    }
    Ok((oem.id, account.id))
}

/// `claimlink up`.
pub(crate) fn run(args: &UpArgs) -> Result<()> {
    // Bearer tokens, passwords and session cookies travel over these two: in the clear only
    // where nobody else can listen.
    for (addr, flag) in [(args.admin_api, "--admin-api"), (args.portal, "--portal")] {
        if !args.https && !addr.ip().is_loopback() {
            anyhow::bail!("{flag} {addr} is not a loopback address: add --https to serve it over TLS");
        }
    }
    let settings = match &args.config {
        Some(path) => crate::config::Config::load(path)?,
        None => crate::config::Config::default(),
    };
    let paths = Paths { data: args.data.clone() };
    let passphrase = prepare_files(args, &paths)?;
    let mut manufacturer_roots = Vec::new();
    for factory in ["factory", "factory-sm2"] {
        let path = format!("{factory}/root-ca.pem");
        manufacturer_roots.push(Certificate::from_pem(&std::fs::read(paths.p(&path)).context(path)?)?);
    }
    let mut identity = ServerIdentity::new(
        std::fs::read_to_string(paths.p("tls/server.pem"))?,
        std::fs::read_to_string(paths.p("tls/server.key"))?.into(),
    );
    identity.alternate = Some(Box::new(ServerIdentity::new(
        std::fs::read_to_string(paths.p("tls/server-sm2.pem"))?,
        std::fs::read_to_string(paths.p("tls/server-sm2.key"))?.into(),
    )));
    if paths.p("tls/tlcp-enc.key").exists() {
        let read = |f: &str| std::fs::read_to_string(paths.p(f)).with_context(|| f.to_owned());
        identity.tlcp = Some(claimlink_service::TlcpIdentity {
            sign_chain_pem: read("tls/tlcp-sign.pem")?,
            sign_key_pem: read("tls/tlcp-sign.key")?.into(),
            enc_cert_pem: read("tls/tlcp-enc.pem")?,
            enc_key_pem: read("tls/tlcp-enc.key")?.into(),
        });
    }
    let ticket_signer = pem::private_key_from_pem(&std::fs::read(paths.p("staging/ticket.key"))?, None)
        .context("staging/ticket.key")?;
    let db = paths.p("claimlink.db");
    let url = format!("sqlite://{}", db.display());
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let store = claimlink_staging::store::open(&url).await.context("cannot open the registry")?;
        let (oem_id, account_id) = prepare_registry(args, &paths, &store).await?;
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let (claim_limits, claim_policy) = settings.claims();
        let config = StagingConfig {
            manufacturer_cas: manufacturer_roots,
            claim_limits,
            claim_policy,
            limits: settings.broker_limits(),
            http: settings.http_limits(),
            ticket_signer: Some(std::sync::Arc::new(ticket_signer)),
        };
        let staging = StagingServer::new(store.clone(), &identity, config, shutdown.clone()).await?;
        let account =
            AccountServer::new(store.clone(), &identity, settings.broker_limits(), shutdown.clone()).await?;
        account.set_max_crl_sources(settings.revocation.max_crl_sources_per_account);
        crate::crl_fetch::spawn(account.clone(), settings.crl_fetch_limits());
        // One process: staging tells the account of every release at once (an account run
        // elsewhere gets the signed notice from the claim API's release answer instead).
        let to_account = account.clone();
        staging.on_release(std::sync::Arc::new(move |release| {
            let (account, ticket) = (to_account.clone(), release.ticket.clone());
            tokio::spawn(async move {
                if let Err(e) = account.claim_released(&ticket).await {
                    tracing::error!(error = %e, "applying a release at the account failed");
                }
            });
        }));
        // And of every manufacturer CRL staging applies: the accounts that registered that
        // manufacturer's CA end the sessions it revokes too (an account run elsewhere takes the
        // CRL through its admin API, `PUT /crls`).
        let to_account = account.clone();
        staging.on_crl(std::sync::Arc::new(move |body| {
            let account = to_account.clone();
            tokio::spawn(async move {
                for id in account.account_ids() {
                    match account.apply_crl(&id, &body, "staging").await {
                        Ok(a) => tracing::info!(account = %id, dropped = a.dropped, "manufacturer CRL applied at the account"),
                        // Not a CA this account registered: nothing to do.
                        Err(claimlink_server::CrlUploadError::Invalid(why)) => {
                            tracing::debug!(account = %id, %why, "manufacturer CRL not for this account")
                        }
                        Err(claimlink_server::CrlUploadError::Internal) => {
                            tracing::error!(account = %id, "applying a manufacturer CRL at the account failed")
                        }
                    }
                }
            });
        }));
        let bind = |addr: SocketAddr, flag: &'static str| async move {
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (choose another with {flag})"))
        };
        // The SM2 module maker's CA system: what it revokes is applied at staging at once (which
        // passes it on to the accounts).
        let to_staging = staging.clone();
        let handle = tokio::runtime::Handle::current();
        let on_crl: crate::ca_service::CrlHook = std::sync::Arc::new(move |body| {
            let staging = to_staging.clone();
            handle.spawn(async move {
                match staging.apply_crl(&body, "ca-system").await {
                    Ok(a) => tracing::info!(dropped = a.dropped, revoked = a.revoked, "CA system CRL applied at staging"),
                    Err(claimlink_staging::server::CrlUploadError::Invalid(why)) => {
                        tracing::debug!(%why, "CA system CRL not applied at staging")
                    }
                    Err(claimlink_staging::server::CrlUploadError::Internal) => {
                        tracing::error!("applying the CA system's CRL at staging failed")
                    }
                }
            });
        });
        let ca_listener = bind(args.ca_system, "--ca-system").await?;
        crate::ca_service::start(
            crate::ca_service::Setup {
                dir: paths.p("manufacturer-ca-sm2"),
                passphrase: passphrase.clone(),
                database_url: None,
                crl_validity: std::time::Duration::from_secs(24 * 3600),
                ocsp_validity: std::time::Duration::from_secs(3600),
                on_crl: Some(on_crl),
            },
            ca_listener,
            shutdown.clone(),
        )
        .await
        .context("the CA system")?;
        let staging_mqtt = bind(args.staging_mqtt, "--staging-mqtt").await?;
        let staging_api = bind(args.staging_api, "--staging-api").await?;
        let portal_listener = bind(args.portal, "--portal").await?;
        // One HTTPS configuration for the admin API and the portal.
        let https = if args.https { Some(identity.https_config()?) } else { None };
        let (mqtt, api) = account
            .start_with(args.account_mqtt, args.admin_api, settings.http_limits(), https.clone())
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {} or {} (choose others with --account-mqtt, --admin-api)",
                    args.account_mqtt, args.admin_api
                )
            })?;
        let s = staging.clone();
        claimlink_server::spawn_role("staging-mqtt", async move { s.serve_mqtt(staging_mqtt).await });
        claimlink_server::spawn_role(
            "staging-api",
            claimlink_staging::api::serve(staging.clone(), staging_api),
        );
        let portal = claimlink_staging::portal::Portal::new(
            staging.clone(),
            std::sync::Arc::new(PortalAccount { server: account.clone(), account_id }),
            claimlink_staging::portal::PortalConfig {
                oem_id,
                endpoint: format!("{OEM_HOST}:{}", args.account_mqtt.port()),
                staging_endpoint: format!("{STAGING_HOST}:{}", args.staging_mqtt.port()),
                title: OEM_NAME.into(),
                limits: settings.portal_limits(),
            },
        );
        claimlink_server::spawn_role("portal", portal.serve(portal_listener, https));
        print_next_steps(args, &paths, mqtt, api)?;
        tokio::signal::ctrl_c().await?;
        let _ = stop.send(true);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        Ok(())
    })
}

fn print_next_steps(args: &UpArgs, paths: &Paths, mqtt: SocketAddr, api: SocketAddr) -> Result<()> {
    use std::io::Write;
    let first_of = |factory: &str| -> Result<PathBuf> {
        let devices = paths.p(&format!("{factory}/devices"));
        let mut names: Vec<String> = std::fs::read_dir(&devices)?
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        names.sort();
        Ok(devices.join(names.first().cloned().unwrap_or_default()))
    };
    let (p256, sm2) = (first_of("factory")?, first_of("factory-sm2")?);
    let exe = std::env::args().next().unwrap_or_else(|| "claimlink".into());
    let exe = if exe.contains("target/") { "cargo run --release --".to_owned() } else { exe };
    let mut out = std::io::stdout();
    let _ = writeln!(
        out,
        "\nclaimlink is up (data in {data})\n\
         \n  registration portal   {scheme}://localhost:{pport}/\
         \n  staging MQTT          mqtts://{STAGING_HOST}:{sport} (listening on {smqtt})\
         \n  staging API           https://{STAGING_HOST}:{aport}/\
         \n  demo OEM endpoint     mqtts://{OEM_HOST}:{mport}\
         \n  account admin API     {scheme}://localhost:{apport}/  (token in {data}/account-token)\
         \n  CA system (SM2)       http://{ca}/  (RA, CRLs, OCSP; the super administrator's token is in {data}/manufacturer-ca-sm2/super-admin.token)\
         \n  device labels         {labels} (P-256), {labels_sm2} (SM2)\
         \n  TLS                   1.3 with SM (RFC 8998: TLS_SM4_GCM_SM3, SM2 certificates) or the international suites, on every port\
         \n  TLCP                  GB/T 38636 (ECC/ECDHE_SM4_GCM/CBC_SM3, dual certificates in {data}/tls/tlcp-*), on the same ports\
         \n  CA of every endpoint  {data}/endpoint-ca.pem\
         \n\nStart a simulated device (it connects to staging and waits to be claimed), P-256 or SM2:\
         \n\n  {exe} device --bundle {p256}\
         \n  {exe} device --bundle {sm2}\
         \n\nThen open the portal, sign up, and add the device with the ID and claim code on its label.\
         \nStop with Ctrl-C; running `up` again reuses everything.",
        data = paths.data.display(),
        pport = args.portal.port(),
        scheme = if args.https { "https" } else { "http" },
        apport = api.port(),
        ca = args.ca_system,
        sport = args.staging_mqtt.port(),
        smqtt = args.staging_mqtt,
        aport = args.staging_api.port(),
        mport = mqtt.port(),
        labels = paths.p("factory/labels.html").display(),
        labels_sm2 = paths.p("factory-sm2/labels.html").display(),
        p256 = p256.display(),
        sm2 = sm2.display(),
    );
    let _ = out.flush();
    Ok(())
}

/// The demo OEM's account, as its portal sees it.
struct PortalAccount {
    server: claimlink_server::AccountServer,
    account_id: AccountId,
}

impl claimlink_staging::portal::OemAccount for PortalAccount {
    fn online(&self, thing: &str) -> bool {
        self.server.online(&self.account_id, thing)
    }

    fn publish(&self, message: claimlink_mqtt::packet::Publish) {
        if let Some(broker) = self.server.broker(&self.account_id) {
            broker.publish(message);
        }
    }
}
