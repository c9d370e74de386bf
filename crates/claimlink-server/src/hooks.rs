//! The broker hooks of one account: who may connect (certificate status, JITP, JITR,
//! `iot:Connect`), and the account's policies on every packet.

use std::sync::OnceLock;

use bytes::Bytes;
use claimlink_broker::{ConnectRequest, Hooks, Inbound, Verdict, WeakBroker};

/// The MQTT user name that says the password is a claim ticket (as the agent sends it).
pub(crate) const TICKET_USERNAME: &str = "claimlink-claim-ticket";
use claimlink_mqtt::packet::Publish;
use claimlink_mqtt::{Properties, QoS, ReasonCode, TopicFilter, TopicName};
use claimlink_pki::Certificate;
use claimlink_policy::{Action, Bound, Variables};
use claimlink_registry::{Account, CertificateId, CertificateStatus, ThingName};

use crate::AccountServer;

/// One accepted connection, as the hooks see it afterwards.
#[derive(Debug)]
pub struct Connection {
    /// The certificate it authenticated with (registry id).
    pub certificate_id: CertificateId,
    /// The thing named by the client id and attached to the certificate, if any.
    pub thing_name: Option<ThingName>,
    /// Its policies, bound to its variables.
    bound: Bound,
    /// What the rights were bound from (certificate, CA, thing, policy names).
    live: crate::LiveSession,
}

/// The hooks of one account's broker.
pub struct AccountHooks {
    server: AccountServer,
    account: Account,
    broker: OnceLock<WeakBroker<AccountHooks>>,
}

impl std::fmt::Debug for AccountHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountHooks").field("account", &self.account.id).finish_non_exhaustive()
    }
}

impl AccountHooks {
    pub(crate) fn new(server: AccountServer, account: Account) -> Self {
        Self { server, account, broker: OnceLock::new() }
    }

    pub(crate) fn set_broker(&self, broker: WeakBroker<AccountHooks>) {
        let _ = self.broker.set(broker);
    }

    /// Publishes an event of the platform (presence, certificate registration) in the account.
    fn event(&self, topic: String, body: serde_json::Value) {
        let Some(broker) = self.broker.get().and_then(WeakBroker::upgrade) else { return };
        broker.publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic,
            packet_id: None,
            properties: Properties::default(),
            payload: Bytes::from(body.to_string()),
        });
    }

    async fn admit(&self, request: &ConnectRequest<'_>) -> Result<Connection, ReasonCode> {
        let client_id = request.client_id;
        if client_id.starts_with('$') || client_id.len() > 128 {
            return Err(ReasonCode::ClientIdentifierNotValid);
        }
        // The listener verified the chain once, after the handshake, and says what it found.
        let admitted = request.peer.admitted::<crate::Admitted>().ok_or(ReasonCode::NotAuthorized)?;
        if admitted.account_id != self.account.id {
            return Err(ReasonCode::NotAuthorized);
        }
        let (leaf, ca_id) = (&admitted.certificate, admitted.ca_id.clone());
        let certificate_id = CertificateId::of(leaf);
        let store = &self.server.shared.store;
        let unavailable = |e: claimlink_registry::RegistryError| {
            tracing::warn!(error = %e, "registry unavailable during CONNECT");
            ReasonCode::ServerUnavailable
        };
        // A CA that requires a claim admits its devices only with staging's ticket, before
        // anything is provisioned for them.
        if let Some(ca) = &ca_id {
            let entry = self.server.entry(&self.account.id).ok_or(ReasonCode::ServerUnavailable)?;
            if entry.cas.iter().any(|c| c.id == *ca && c.require_claim) {
                self.check_claim(request, &entry, &certificate_id).await?;
            }
        }
        let mut tx = store.read().await.map_err(unavailable)?;
        let record = tx.certificate(&self.account.id, &certificate_id).await.map_err(unavailable)?;
        match record {
            Some(r) if r.status == CertificateStatus::Active => {}
            Some(r) => {
                tracing::info!(certificate = %certificate_id, status = %r.status, "certificate not ACTIVE");
                return Err(ReasonCode::NotAuthorized);
            }
            None => {
                // Unknown: read what registering it needs in this same transaction.
                let ca_id = ca_id.clone().ok_or(ReasonCode::NotAuthorized)?;
                let ca =
                    tx.describe_ca(&self.account.id, &ca_id).await.map_err(|_| ReasonCode::NotAuthorized)?;
                let template = match (&ca.template_name, ca.auto_registration) {
                    (Some(t), true) => Some(tx.template(&self.account.id, t).await.map_err(unavailable)?),
                    _ => None,
                };
                drop(tx);
                self.register(leaf, &ca, template.as_ref(), &certificate_id).await?;
                tx = store.read().await.map_err(unavailable)?;
            }
        }
        // The thing: the one named by the client id, if it is attached to this certificate (a
        // client id that is no thing name names no thing).
        let thing = match ThingName::new(client_id) {
            Ok(name) => {
                tx.attached_thing(&self.account.id, &certificate_id, &name).await.map_err(unavailable)?
            }
            Err(_) => None,
        };
        let records = tx
            .effective_policies(&self.account.id, &certificate_id, thing.as_ref().map(|t| &t.name))
            .await
            .map_err(unavailable)?;
        drop(tx);
        let mut policies = Vec::with_capacity(records.len());
        for p in &records {
            match self.server.policy(&self.account.id, &p.name, p.default_version, &p.document) {
                Ok(policy) => policies.push(policy),
                Err(e) => {
                    // Fail closed: without this policy (a Deny, perhaps) the rights are unknown.
                    tracing::error!(policy = %p.name, version = p.default_version, error = %e,
                        "a stored policy does not parse; connection refused");
                    return Err(ReasonCode::NotAuthorized);
                }
            }
        }
        let vars = Variables {
            client_id: client_id.to_owned(),
            thing_name: thing.as_ref().map(|t| t.name.to_string()),
            thing_type_name: thing.as_ref().and_then(|t| t.thing_type.as_ref().map(|t| t.to_string())),
            thing_attributes: thing.as_ref().map(|t| t.attributes.clone()).unwrap_or_default(),
            subject: claimlink_provision::subject_fields(leaf),
            issuer: claimlink_provision::name_fields(leaf.issuer()),
            certificate_serial: Some(leaf.serial_hex()),
        };
        let bound = Bound::bind(policies.iter().map(|p| &**p), &self.account.region, &self.account.id, &vars);
        if !bound.allows(Action::Connect, client_id) {
            tracing::info!(client_id, certificate = %certificate_id, "iot:Connect denied");
            return Err(ReasonCode::NotAuthorized);
        }
        let thing_name = thing.map(|t| t.name);
        let live = crate::LiveSession {
            serial: self.server.next_serial(),
            certificate_id: certificate_id.clone(),
            ca_id: ca_id.clone(),
            thing_name: thing_name.clone(),
            policies: records.iter().map(|p| p.name.clone()).collect(),
            links: admitted.links.clone(),
        };
        Ok(Connection { certificate_id, thing_name, bound, live })
    }

    /// The claim ticket in the CONNECT's password (user name [`TICKET_USERNAME`]): signed by a
    /// claim issuer this account trusts, for this endpoint, this certificate and the ThingName
    /// the device connects as. A ticket admits its certificate the first time only before it
    /// expires; afterwards its claim stands until a release notice ends it or a newer claim
    /// replaces it.
    async fn check_claim(
        &self,
        request: &ConnectRequest<'_>,
        entry: &crate::AccountEntry,
        certificate_id: &CertificateId,
    ) -> Result<(), ReasonCode> {
        use claimlink_claim::ticket;
        let refuse = |why: &dyn std::fmt::Display| {
            tracing::info!(client_id = request.client_id, certificate = %certificate_id, reason = %why,
                "no valid claim for this device; refused");
            ReasonCode::NotAuthorized
        };
        let token = request
            .password
            .filter(|_| request.username == Some(TICKET_USERNAME))
            .and_then(|p| std::str::from_utf8(p).ok())
            .ok_or_else(|| refuse(&"no claim ticket"))?;
        let claim = ticket::read(token, &entry.claim_issuers).map_err(|e| refuse(&e))?;
        claim
            .admits(&ticket::audience(&self.account.endpoint), certificate_id, request.client_id)
            .map_err(|e| refuse(&e))?;
        let store = &self.server.shared.store;
        let unavailable = |_| ReasonCode::ServerUnavailable;
        let admission = store
            .read()
            .await
            .map_err(unavailable)?
            .claim_admission(&self.account.id, certificate_id)
            .await
            .map_err(unavailable)?;
        match admission {
            Some((admitted, released)) if admitted == claim.claim => match released {
                Some(_) => Err(refuse(&"its claim was released")),
                None => Ok(()),
            },
            Some((admitted, _)) if admitted > claim.claim => {
                Err(refuse(&"a newer claim replaced this ticket"))
            }
            _ => {
                if claimlink_registry::now() >= claim.exp {
                    return Err(refuse(&ticket::TicketError::Expired));
                }
                let mut tx = store.begin().await.map_err(unavailable)?;
                tx.admit_claim(&self.account.id, certificate_id, claim.claim).await.map_err(unavailable)?;
                tx.commit().await.map_err(unavailable)?;
                Ok(())
            }
        }
    }

    /// A certificate seen for the first time: JITP with the CA's template (the connection then
    /// goes on), or JITR (it is refused until someone activates the certificate).
    async fn register(
        &self,
        leaf: &Certificate,
        ca: &claimlink_registry::CaCertificate,
        template: Option<&claimlink_registry::Template>,
        certificate_id: &CertificateId,
    ) -> Result<(), ReasonCode> {
        let store = &self.server.shared.store;
        if !ca.auto_registration {
            return Err(ReasonCode::NotAuthorized);
        }
        let Some(template) = template else {
            match claimlink_provision::jitr(store, &self.account, &ca.id, leaf).await {
                Ok((_, event)) => self.event(format!("$aws/events/certificates/registered/{}", ca.id), event),
                Err(e) => tracing::info!(error = %e, "JITR failed"),
            }
            return Err(ReasonCode::NotAuthorized);
        };
        let provisioned = match self.server.compiled_template(&self.account.id, template) {
            Some(compiled) => {
                claimlink_provision::jitp_compiled(store, &self.account, &ca.id, template, &compiled, leaf)
                    .await
            }
            // It no longer compiles: provisioning fails and records why.
            None => claimlink_provision::jitp_with(store, &self.account, &ca.id, template, leaf).await,
        };
        match provisioned {
            Ok(_) => Ok(()),
            Err(e) if e.is_transient() => {
                // Another connection of the same device provisioned it a moment ago.
                let mut tx = store.read().await.map_err(|_| ReasonCode::ServerUnavailable)?;
                match tx.certificate(&self.account.id, certificate_id).await {
                    Ok(Some(r)) if r.status == CertificateStatus::Active => Ok(()),
                    _ => Err(ReasonCode::ServerUnavailable),
                }
            }
            Err(_) => Err(ReasonCode::NotAuthorized),
        }
    }
}

impl Hooks for AccountHooks {
    type Context = Connection;

    async fn on_connect(&self, request: &ConnectRequest<'_>) -> Result<Connection, ReasonCode> {
        self.admit(request).await
    }

    fn admit_publish(&self, ctx: &Connection, message: &Inbound<'_>) -> Verdict {
        let topic = message.topic.as_str();
        let allowed = ctx.bound.allows(Action::Publish, topic)
            && (!message.retain || ctx.bound.allows(Action::RetainPublish, topic));
        if allowed { Verdict::Route } else { Verdict::Refuse }
    }

    fn authorize_subscribe(&self, ctx: &Connection, filter: &TopicFilter) -> bool {
        ctx.bound.allows(Action::Subscribe, filter.as_str())
    }

    fn authorize_receive(&self, ctx: &Connection, topic: &TopicName) -> bool {
        ctx.bound.allows(Action::Receive, topic.as_str())
    }

    fn connected(&self, ctx: &Connection, client_id: &str) {
        self.server.track(&self.account.id, client_id, ctx.live.clone(), true);
        self.event(
            format!("$aws/events/presence/connected/{client_id}"),
            presence(client_id, "connected", ctx),
        );
    }

    fn disconnected(&self, ctx: &Connection, client_id: &str) {
        self.server.track(&self.account.id, client_id, ctx.live.clone(), false);
        self.event(
            format!("$aws/events/presence/disconnected/{client_id}"),
            presence(client_id, "disconnected", ctx),
        );
    }
}

fn presence(client_id: &str, event: &str, ctx: &Connection) -> serde_json::Value {
    serde_json::json!({
        "clientId": client_id,
        "timestamp": claimlink_registry::now(),
        "eventType": event,
        "sessionIdentifier": format!("{:016x}", ctx.live.serial),
        "principalIdentifier": ctx.certificate_id,
        "versionNumber": 0,
    })
}
