//! The five roles of the CA system (GM/T 0034's separation of powers) and what each may do.
//!
//! One table, [`TABLE`], decides every request of `claimlink ca serve` and is printed into the
//! README (a test keeps the two the same). No role can do everything: the super administrator
//! appoints administrators but reviews nothing; business roles run the CA but cannot touch
//! the audit log; the audit roles read and verify the log and change nothing.

use std::fmt;

/// A role of an administrator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// Appoints the business and audit administrators and the auditors.
    SuperAdministrator,
    /// Sets the review policy and appoints business operators.
    BusinessAdministrator,
    /// Reviews certificate applications and revocation requests.
    BusinessOperator,
    /// Reads and verifies the whole audit log, the audit roles' own reads included.
    AuditAdministrator,
    /// Reads and verifies the audit log of the CA's business.
    Auditor,
}

impl Role {
    pub(crate) const ALL: [Role; 5] = [
        Role::SuperAdministrator,
        Role::BusinessAdministrator,
        Role::BusinessOperator,
        Role::AuditAdministrator,
        Role::Auditor,
    ];

    /// The role's name in the API (`super-administrator`, ...).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Role::SuperAdministrator => "super-administrator",
            Role::BusinessAdministrator => "business-administrator",
            Role::BusinessOperator => "business-operator",
            Role::AuditAdministrator => "audit-administrator",
            Role::Auditor => "auditor",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    fn index(self) -> usize {
        Role::ALL.iter().position(|r| *r == self).unwrap_or_default()
    }

    /// The roles whose administrators this role appoints and disables.
    pub(crate) fn appoints(self) -> &'static [Role] {
        match self {
            Role::SuperAdministrator => {
                &[Role::BusinessAdministrator, Role::AuditAdministrator, Role::Auditor]
            }
            Role::BusinessAdministrator => &[Role::BusinessOperator],
            _ => &[],
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Appoint or disable an administrator (of a role [`Role::appoints`] allows).
    Appoint,
    /// List the administrators and their roles.
    ListAdministrators,
    /// Replace the review policy.
    SetReviewPolicy,
    /// Read certificate applications, revocation requests and issued certificates.
    ReadApplications,
    /// Approve or reject a certificate application.
    ReviewApplication,
    /// Ask for a certificate to be revoked.
    RequestRevocation,
    /// Approve or reject a revocation request (never one's own).
    ReviewRevocation,
    /// Read the audit rows of the CA's business (applications, issuance, revocation, policy).
    ReadBusinessAudit,
    /// Read every audit row: appointments and the audit roles' own reads too.
    ReadFullAudit,
    /// Recompute the audit log's hash chain.
    VerifyAudit,
}

/// Every action, what it means, and which roles (in [`Role::ALL`]'s order) may do it.
pub(crate) const TABLE: &[(Action, &str, [bool; 5])] = &[
    (
        Action::Appoint,
        "appoint or disable administrators (of the roles below it)",
        [true, true, false, false, false],
    ),
    (Action::ListAdministrators, "list administrators and roles", [true, true, false, true, false]),
    (Action::SetReviewPolicy, "set the review policy", [false, true, false, false, false]),
    (
        Action::ReadApplications,
        "read applications, revocation requests, issued certificates",
        [false, true, true, false, false],
    ),
    (
        Action::ReviewApplication,
        "approve or reject a certificate application",
        [false, false, true, false, false],
    ),
    (Action::RequestRevocation, "request a revocation", [false, false, true, false, false]),
    (
        Action::ReviewRevocation,
        "approve or reject a revocation request (not one's own)",
        [false, false, true, false, false],
    ),
    (Action::ReadBusinessAudit, "read the audit log of the CA's business", [false, false, false, true, true]),
    (
        Action::ReadFullAudit,
        "read the whole audit log (appointments, audit reads)",
        [false, false, false, true, false],
    ),
    (Action::VerifyAudit, "verify the audit log's hash chain", [false, false, false, true, true]),
];

/// Whether `role` may do `action`.
pub(crate) fn may(role: Role, action: Action) -> bool {
    TABLE.iter().any(|(a, _, allowed)| *a == action && allowed[role.index()])
}

/// [`TABLE`] as the README prints it (a Markdown table).
pub(crate) fn markdown() -> String {
    let mut out = String::from(
        "| may | super administrator | business administrator | business operator | audit administrator | auditor |\n|---|:-:|:-:|:-:|:-:|:-:|\n",
    );
    for (_, what, allowed) in TABLE {
        out.push_str(&format!("| {what} |"));
        for a in allowed {
            out.push_str(if *a { " yes |" } else { " - |" });
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_role_both_runs_the_ca_and_touches_the_audit_log() {
        for role in Role::ALL {
            let business = [Action::SetReviewPolicy, Action::ReviewApplication, Action::ReviewRevocation]
                .iter()
                .any(|a| may(role, *a));
            let audit = may(role, Action::ReadBusinessAudit);
            assert!(!(business && audit), "{role} both runs the CA and reads its audit");
        }
        assert!(!may(Role::SuperAdministrator, Action::ReviewApplication));
        assert!(Role::Auditor.appoints().is_empty() && Role::AuditAdministrator.appoints().is_empty());
        assert!(!Role::SuperAdministrator.appoints().contains(&Role::SuperAdministrator));
    }

    #[test]
    fn the_readme_prints_the_table_the_service_enforces() {
        let readme = include_str!("../../../../README.md");
        assert!(
            readme.contains(&markdown()),
            "README.md must contain the roles table exactly as roles::markdown() prints it:\n{}",
            markdown()
        );
    }

    #[test]
    fn role_names_round_trip() {
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        assert_eq!(Role::parse("root"), None);
    }
}
