//! `claimlink ca ra <verb>`: the CA system's API from the command line, one verb per
//! operation (the route table's names), JSON out. Tokens are read from a file
//! (`--token-file`, `$CLAIMLINK_CA_TOKEN_FILE`) and tokens the service hands out are written to
//! one (`--token-out`, mode 0600), never printed.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use claimlink_pki::{CertificateRequest, Signer as _, pem};
use serde_json::{Value, json};

use crate::files::{read_bounded, write_new};
use crate::iot_cmd::{Outcome, enc};

/// `ca ra` arguments.
#[derive(clap::Args)]
pub(crate) struct RaArgs {
    /// The CA system (default $CLAIMLINK_CA_URL, else http://127.0.0.1:8890).
    #[arg(long, global = true)]
    endpoint_url: Option<String>,
    /// File holding the bearer token: an administrator's (`cas_...`) or, for its own
    /// application, the applicant's (`app_...`). Default $CLAIMLINK_CA_TOKEN_FILE.
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
    #[command(subcommand)]
    verb: Verb,
}

#[derive(clap::Subcommand)]
#[command(rename_all = "kebab-case")]
enum Verb {
    /// Apply for a certificate; the download token goes to --token-out.
    Apply {
        /// device, claim-thing, server, dual-server or dual-client.
        #[arg(long)]
        profile: String,
        /// The PKCS#10 CSR (PEM or DER).
        #[arg(long)]
        csr: PathBuf,
        /// DNS name (server profiles; repeatable).
        #[arg(long)]
        dns: Vec<String>,
        /// IP address (server profiles; repeatable).
        #[arg(long)]
        ip: Vec<String>,
        /// Validity in days.
        #[arg(long)]
        days: Option<i64>,
        /// A renewal: the certificate being renewed...
        #[arg(long, requires = "renew_key")]
        renew_cert: Option<PathBuf>,
        /// ...and its private key (PEM), which signs the new CSR as the proof.
        #[arg(long, requires = "renew_cert")]
        renew_key: Option<PathBuf>,
        /// Where to write the download token (must not exist).
        #[arg(long)]
        token_out: PathBuf,
    },
    /// An application (administrators, or the applicant with its token).
    DescribeApplication {
        #[arg(long)]
        application_id: String,
    },
    /// Applications, newest first.
    ListApplications {
        /// PENDING_REVIEW, ISSUED or REJECTED.
        #[arg(long)]
        status: Option<String>,
    },
    /// Approve a pending application (business operators).
    ApproveApplication {
        #[arg(long)]
        application_id: String,
    },
    /// Reject a pending application (business operators).
    RejectApplication {
        #[arg(long)]
        application_id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Download what was issued (the applicant): cert.pem (with the issuing CA), and for dual
    /// certificates enc.pem and enc-key.env (the GM/T 0009 enveloped key).
    GetCertificate {
        #[arg(long)]
        application_id: String,
        /// Directory to write into (created; files must not exist).
        #[arg(long)]
        out: PathBuf,
    },
    /// The CAs of this system (root and issuing) and their status.
    ListCas,
    /// A certificate issued through the RA and its status.
    DescribeCertificate {
        #[arg(long)]
        serial: String,
    },
    /// Ask for a revocation (operators; the applicant for its own certificate).
    RequestRevocation {
        #[arg(long)]
        serial: String,
        /// RFC 5280 reason: keyCompromise, superseded, cessationOfOperation, ...
        #[arg(long)]
        reason: String,
    },
    /// Revocation requests, newest first.
    ListRevocationRequests {
        #[arg(long)]
        status: Option<String>,
    },
    /// Approve a revocation request (an operator other than the one who asked).
    ApproveRevocation {
        #[arg(long)]
        request_id: String,
    },
    /// Reject a revocation request.
    RejectRevocation {
        #[arg(long)]
        request_id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Appoint an administrator; its token goes to --token-out.
    CreateAdministrator {
        #[arg(long)]
        name: String,
        /// business-administrator, business-operator, audit-administrator or auditor.
        #[arg(long)]
        role: String,
        #[arg(long)]
        token_out: PathBuf,
    },
    /// Administrators and their roles.
    ListAdministrators,
    /// Disable an administrator.
    DisableAdministrator {
        #[arg(long)]
        name: String,
    },
    /// The review policy.
    GetReviewPolicy,
    /// Replace the review policy.
    SetReviewPolicy {
        /// Approve proven renewals without an operator (true or false).
        #[arg(long, action = clap::ArgAction::Set, default_value_t = true)]
        auto_approve_renewals: bool,
        /// A profile issued on application alone (repeatable).
        #[arg(long)]
        auto_approve_profile: Vec<String>,
    },
    /// Audit rows after a sequence number.
    GetAuditLog {
        #[arg(long, default_value_t = 0)]
        after: i64,
    },
    /// Recompute the audit log's hash chain.
    VerifyAuditLog,
}

fn query(status: &Option<String>) -> String {
    status.as_ref().map_or(String::new(), |s| format!("?status={}", enc(s)))
}

/// `claimlink ca ra`.
pub(crate) fn run(args: &RaArgs) -> Result<Outcome> {
    use Verb::*;
    let (method, path, body): (&str, String, Option<Value>) = match &args.verb {
        Apply { profile, csr, dns, ip, days, renew_cert, renew_key, token_out } => {
            if token_out.exists() {
                bail!("{} exists; refusing to overwrite it", token_out.display());
            }
            let csr_bytes = read_bounded(csr, 1 << 20)?;
            let parsed = CertificateRequest::from_pem_or_der(&csr_bytes)
                .with_context(|| format!("{}", csr.display()))?;
            let mut b = json!({ "profile": profile, "csr": parsed.to_pem(), "dns": dns, "ips": ip });
            if let Some(d) = days {
                b["days"] = json!(d);
            }
            if let (Some(cert), Some(key)) = (renew_cert, renew_key) {
                let key_pem = read_bounded(key, 1 << 20)?;
                let key = pem::private_key_from_pem(&key_pem, None)
                    .with_context(|| format!("{}", key.display()))?;
                let signature = key.sign(parsed.der())?;
                let cert_pem =
                    String::from_utf8(read_bounded(cert, 1 << 20)?).context("the certificate is not PEM")?;
                b["renewal"] = json!({ "certificate": cert_pem, "signature": hex::encode(signature) });
            }
            ("POST", "/applications".into(), Some(b))
        }
        DescribeApplication { application_id } => {
            ("GET", format!("/applications/{}", enc(application_id)), None)
        }
        ListApplications { status } => ("GET", format!("/applications{}", query(status)), None),
        ApproveApplication { application_id } => {
            ("POST", format!("/applications/{}/approve", enc(application_id)), Some(json!({})))
        }
        RejectApplication { application_id, reason } => (
            "POST",
            format!("/applications/{}/reject", enc(application_id)),
            Some(json!({ "reason": reason })),
        ),
        GetCertificate { application_id, .. } => {
            ("GET", format!("/applications/{}/certificate", enc(application_id)), None)
        }
        DescribeCertificate { serial } => ("GET", format!("/certificates/{}", enc(serial)), None),
        ListCas => ("GET", "/cas".into(), None),
        RequestRevocation { serial, reason } => {
            ("POST", "/revocation-requests".into(), Some(json!({ "serial": serial, "reason": reason })))
        }
        ListRevocationRequests { status } => ("GET", format!("/revocation-requests{}", query(status)), None),
        ApproveRevocation { request_id } => {
            ("POST", format!("/revocation-requests/{}/approve", enc(request_id)), Some(json!({})))
        }
        RejectRevocation { request_id, reason } => (
            "POST",
            format!("/revocation-requests/{}/reject", enc(request_id)),
            Some(json!({ "reason": reason })),
        ),
        CreateAdministrator { name, role, token_out } => {
            if token_out.exists() {
                bail!("{} exists; refusing to overwrite it", token_out.display());
            }
            ("POST", "/administrators".into(), Some(json!({ "name": name, "role": role })))
        }
        ListAdministrators => ("GET", "/administrators".into(), None),
        DisableAdministrator { name } => ("DELETE", format!("/administrators/{}", enc(name)), None),
        GetReviewPolicy => ("GET", "/review-policy".into(), None),
        SetReviewPolicy { auto_approve_renewals, auto_approve_profile } => (
            "PUT",
            "/review-policy".into(),
            Some(
                json!({ "autoApproveRenewals": auto_approve_renewals, "autoApproveProfiles": auto_approve_profile }),
            ),
        ),
        GetAuditLog { after } => ("GET", format!("/audit?after={after}"), None),
        VerifyAuditLog => ("GET", "/audit/verify".into(), None),
    };
    let base = args
        .endpoint_url
        .clone()
        .or_else(|| std::env::var("CLAIMLINK_CA_URL").ok())
        .unwrap_or_else(|| "http://127.0.0.1:8890".into());
    let token_file =
        args.token_file.clone().or_else(|| std::env::var_os("CLAIMLINK_CA_TOKEN_FILE").map(Into::into));
    let token = match &token_file {
        Some(f) => Some(
            String::from_utf8(read_bounded(f, 4096)?)
                .context("the token file is not text")?
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let auth = token.as_ref().map(|t| format!("Bearer {t}"));
    let response = match method {
        "GET" | "DELETE" => {
            let mut req = if method == "GET" { agent.get(&url) } else { agent.delete(&url) };
            if let Some(a) = &auth {
                req = req.header("Authorization", a);
            }
            req.call()
        }
        _ => {
            let mut req = if method == "POST" { agent.post(&url) } else { agent.put(&url) };
            if let Some(a) = &auth {
                req = req.header("Authorization", a);
            }
            req.header("Content-Type", "application/json")
                .send(body.unwrap_or_else(|| json!({})).to_string().as_bytes())
        }
    };
    let mut response =
        response.map_err(|e| anyhow::anyhow!("could not reach the CA system at {base}: {e}"))?;
    let status = response.status().as_u16();
    let text = response.body_mut().with_config().limit(16 << 20).read_to_string().unwrap_or_default();
    let mut value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if !(200..300).contains(&status) {
        eprintln!(
            "An error occurred ({}) when calling the CA system: {}",
            value["code"].as_str().unwrap_or("HTTP error"),
            value["message"].as_str().unwrap_or(&text)
        );
        return Ok(Outcome::Refused);
    }
    // Secrets the service hands out go to a file, not to the terminal.
    let secret = match &args.verb {
        Apply { token_out, .. } => Some((token_out, "downloadToken")),
        CreateAdministrator { token_out, .. } => Some((token_out, "token")),
        _ => None,
    };
    if let Some((path, field)) = secret
        && let Some(t) = value.get(field).and_then(Value::as_str)
    {
        write_new(path, format!("{t}\n").as_bytes(), 0o600)?;
        value[field] = json!(format!("(written to {})", path.display()));
    }
    if let GetCertificate { out, .. } = &args.verb {
        write_download(out, &value)?;
    }
    println!("{}", serde_json::to_string_pretty(&value)?);
    Ok(Outcome::Done)
}

fn write_download(out: &Path, value: &Value) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    if let Some(pem) = value["certificatePem"].as_str() {
        write_new(&out.join("cert.pem"), pem.as_bytes(), 0o644)?;
    }
    if let Some(pem) = value["encryptionCertificatePem"].as_str() {
        write_new(&out.join("enc.pem"), pem.as_bytes(), 0o644)?;
    }
    if let Some(env) = value["encryptionKeyEnvelope"].as_str() {
        write_new(
            &out.join("enc-key.env"),
            &hex::decode(env).context("the enveloped key is not hex")?,
            0o644,
        )?;
    }
    Ok(())
}
