//! One connection's task: reads bytes into the protocol state machine, answers its events with
//! the hooks and the router, and writes what it produces.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use claimlink_mqtt::packet::{
    Connect, Publish, RetainHandling, Subscribe, SubscriptionOptions, Unsubscribe, Will,
};
use claimlink_mqtt::server::{Event, ServerConfig, ServerConnection};
use claimlink_mqtt::{Properties, ProtocolVersion, QoS, ReasonCode, TopicName};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::hooks::{ConnectRequest, Hooks, Inbound, Origin, PeerIdentity, Verdict};
use crate::listener::Shared;
use crate::router::{Kick, Message, Registration, Routed};

struct Session<C> {
    client_id: String,
    context: Arc<C>,
    subscriptions: usize,
}

/// How long the session outlives this connection: MQTT 5 asks with the Session Expiry
/// Interval, MQTT 3.1.1 with clean session = 0; both are capped by the broker's limit.
fn session_expiry(c: &Connect, max: std::time::Duration) -> std::time::Duration {
    let asked = match c.version {
        ProtocolVersion::V5 => {
            std::time::Duration::from_secs(u64::from(c.properties.session_expiry.unwrap_or(0)))
        }
        ProtocolVersion::V311 if !c.clean_start => max,
        ProtocolVersion::V311 => std::time::Duration::ZERO,
    };
    asked.min(max)
}

struct Task<H: Hooks> {
    shared: Arc<Shared<H>>,
    conn: ServerConnection,
    id: u64,
    peer: PeerIdentity,
    tx: mpsc::Sender<Routed>,
    kick: Arc<Kick>,
    session: Option<Session<H::Context>>,
    /// The will to publish, with its delay, once the connection is over.
    will: Option<(Publish, Duration)>,
    /// The session expiry the client set at DISCONNECT (MQTT 5), capped by the limit.
    expiry_at_close: Option<Duration>,
    /// A message from this client just met a subscriber queue that was nearly or completely full.
    congested: bool,
}

pub(crate) async fn serve<H: Hooks, S>(
    shared: Arc<Shared<H>>,
    stream: S,
    peer: PeerIdentity,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let limits = &shared.limits;
    let config = ServerConfig {
        max_packet_size: limits.max_packet_size,
        receive_maximum: limits.receive_maximum,
        topic_alias_maximum: limits.topic_alias_maximum,
        connect_timeout: limits.connect_timeout,
        max_queued: limits.max_queued,
    };
    let (tx, mut rx) = mpsc::channel(limits.max_queued.max(1));
    let id = shared.next_connection.fetch_add(1, Ordering::Relaxed);
    let conn = ServerConnection::new(config, Instant::now().into_std());
    let kick = Arc::new(Kick::default());
    let mut task = Task {
        shared,
        conn,
        id,
        peer,
        tx,
        kick: kick.clone(),
        session: None,
        will: None,
        expiry_at_close: None,
        congested: false,
    };
    let (mut reader, mut writer) = tokio::io::split(stream);
    // Small while quiet, so that an idle connection costs little (the state machine keeps
    // partial packets); grown while reads fill it, so that a busy publisher is read in fewer,
    // larger turns.
    let mut buf = vec![0u8; READ_BUFFER_MIN];
    loop {
        let deadline = task.conn.poll_timeout().map(Instant::from_std);
        tokio::select! {
            read = reader.read(&mut buf) => match read {
                Ok(0) | Err(_) => task.conn.handle_transport_closed(),
                Ok(n) => {
                    task.conn.handle_input(Instant::now().into_std(), &buf[..n]);
                    if n == buf.len() && buf.len() < READ_BUFFER_MAX {
                        buf.resize(buf.len() * 4, 0);
                    } else if n < READ_BUFFER_MIN / 2 && buf.len() > READ_BUFFER_MIN {
                        buf = vec![0u8; READ_BUFFER_MIN];
                    }
                }
            },
            Some(delivery) = rx.recv() => {
                // Take what else is waiting too, so that one write carries many messages.
                let now = Instant::now().into_std();
                task.deliver(&delivery, now);
                for _ in 0..DELIVERY_BATCH {
                    match rx.try_recv() {
                        Ok(more) => task.deliver(&more, now),
                        Err(_) => break,
                    }
                }
            }
            reason = kick.kicked() => task.conn.disconnect(reason),
            () = sleep_until(deadline) => task.conn.handle_timeout(Instant::now().into_std()),
            _ = shutdown.changed() => task.conn.disconnect(ReasonCode::ServerShuttingDown),
        }
        while let Some(event) = task.conn.poll_event() {
            match event {
                Event::Connect(c) => task.on_connect(&c).await,
                other => task.handle(other),
            }
        }
        let out = task.conn.take_output();
        if !out.is_empty() && writer.write_all(&out).await.is_err() {
            task.conn.handle_transport_closed();
            while let Some(event) = task.conn.poll_event() {
                task.handle(event);
            }
        }
        if task.conn.is_closed() {
            let _ = writer.shutdown().await;
            break;
        }
        if std::mem::take(&mut task.congested) {
            // This client publishes faster than some subscriber takes: let the delivering tasks
            // run before reading more from it. It still gets its turn, so nobody is stalled,
            // but CPU goes to delivering rather than to decrypting messages that would be
            // dropped. (A subscriber that never reads only costs its publishers this yield.)
            tokio::task::yield_now().await;
        }
    }
    task.finish();
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

const READ_BUFFER_MIN: usize = 256;
const READ_BUFFER_MAX: usize = 64 * 1024;

/// Deliveries taken from the queue per write.
const DELIVERY_BATCH: usize = 1023;

impl<H: Hooks> Task<H> {
    fn deliver(&mut self, routed: &Routed, now: std::time::Instant) {
        if let Some(p) = routed.to_publish(now) {
            let _ = self.conn.publish(p);
        }
    }

    fn v5(&self) -> bool {
        self.conn.version() == ProtocolVersion::V5
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Connect(_) => {} // answered in the loop, which can wait for the hook
            Event::Publish(p) => self.on_publish(p),
            Event::Subscribe(s) => self.on_subscribe(s),
            Event::Unsubscribe(u) => self.on_unsubscribe(u),
            Event::Delivered(_, topic) => {
                if let Some(session) = &self.session
                    && self.shared.hooks.track_acknowledgement(&session.context, &topic)
                {
                    self.shared.hooks.acknowledged(&session.context, &topic);
                }
            }
            Event::Closed { will, session_expiry, .. } => {
                self.will = will.and_then(|w| self.authorize_will(w));
                let max = self.shared.limits.max_session_expiry;
                self.expiry_at_close = session_expiry.map(|s| Duration::from_secs(u64::from(s)).min(max));
            }
        }
    }

    async fn on_connect(&mut self, c: &Connect) {
        let mut props = Properties::default();
        let client_id = if c.client_id.is_empty() {
            if !self.v5() && !c.clean_start {
                return self.conn.reject(ReasonCode::ClientIdentifierNotValid);
            }
            let assigned = format!("auto-{}", self.id);
            props.assigned_client_id = self.v5().then(|| assigned.clone());
            assigned
        } else {
            c.client_id.clone()
        };
        if client_id.len() > self.shared.limits.max_client_id_len {
            return self.conn.reject(ReasonCode::ClientIdentifierNotValid);
        }
        let request = ConnectRequest {
            client_id: &client_id,
            username: c.username.as_deref(),
            password: c.password.as_deref(),
            peer: &self.peer,
        };
        let decided = self.shared.hooks.on_connect(&request).await;
        // The admission served its purpose: a live connection does not keep it (nor the
        // certificate chain) for its whole life.
        self.peer.admission = None;
        self.peer.certificates = Vec::new();
        let context = match decided {
            Ok(ctx) => Arc::new(ctx),
            Err(reason) => return self.conn.reject(reason),
        };
        if let Some(will) = &c.will {
            // A will the role would refuse later is refused now, with the connection.
            if let Err(reason) = self.admit_will(&context, will) {
                tracing::debug!(client_id = %client_id, "will refused");
                return self.conn.reject(reason);
            }
        }
        let expiry = session_expiry(c, self.shared.limits.max_session_expiry);
        let registration = Registration {
            connection: self.id,
            tx: self.tx.clone(),
            kick: self.kick.clone(),
            context: context.clone(),
            expiry,
        };
        let resumed =
            self.shared.router().register(&client_id, registration, c.clean_start, Instant::now().into_std());
        if self.v5() {
            props.shared_subscription_available = Some(true);
            props.maximum_qos = None;
            props.retain_available = Some(true);
        }
        let mut subscriptions = resumed.subscriptions;
        let initial = self.shared.hooks.initial_subscriptions(&context);
        if !initial.is_empty() {
            let mut router = self.shared.router();
            for filter in &initial {
                let options = SubscriptionOptions::qos(QoS::AtLeastOnce);
                subscriptions += usize::from(router.subscribe(&client_id, filter, options, None));
            }
        }
        self.conn.accept(Instant::now().into_std(), resumed.session_present, props);
        self.shared.hooks.connected(&context, &client_id);
        tracing::debug!(client_id = %client_id, addr = %self.peer.addr, "connected");
        self.session = Some(Session { client_id, context, subscriptions });
    }

    fn on_publish(&mut self, p: Publish) {
        let Some(session) = &self.session else { return };
        let topic = match TopicName::new(p.topic.as_str()) {
            Ok(t) if self.shared.limits.fits_topic(&p.topic) && !p.topic.starts_with('$') => t,
            _ => return self.refuse_publish(&p, ReasonCode::TopicNameInvalid),
        };
        let inbound =
            Inbound { origin: Origin::Packet, topic: &topic, retain: p.retain, payload: &p.payload };
        let (qos, packet_id) = (p.qos, p.packet_id);
        match self.shared.hooks.admit_publish(&session.context, &inbound) {
            Verdict::Route => {}
            Verdict::Refuse => return self.refuse_publish(&p, ReasonCode::NotAuthorized),
            Verdict::Take => {
                match (qos, packet_id) {
                    (QoS::AtLeastOnce, Some(id)) => self.conn.puback(id, ReasonCode::Success),
                    (QoS::ExactlyOnce, Some(id)) => self.conn.pubrec(id, ReasonCode::Success),
                    _ => {}
                }
                return;
            }
        }
        let message = Arc::new(Message::new(p, Instant::now().into_std()));
        let delivered = {
            let mut router = self.shared.router();
            if message.publish.retain {
                router.retain(&message);
            }
            let hooks = &self.shared.hooks;
            let pressure = router.pressure();
            let n = router.publish(&topic, &message, Some(&session.client_id), |ctx| {
                hooks.authorize_receive(ctx, &topic)
            });
            // Exact: the counter only moves under the router lock held here.
            self.congested |= router.pressure() > pressure;
            n
        };
        let reason =
            if delivered == 0 && self.v5() { ReasonCode::NoMatchingSubscribers } else { ReasonCode::Success };
        match (qos, packet_id) {
            (QoS::AtLeastOnce, Some(id)) => self.conn.puback(id, reason),
            (QoS::ExactlyOnce, Some(id)) => self.conn.pubrec(id, reason),
            _ => {}
        }
    }

    /// MQTT 5 clients get the reason in the acknowledgement of a QoS 1/2 message; otherwise the
    /// connection is closed, as AWS IoT Core does for unauthorised publishes.
    fn refuse_publish(&mut self, p: &Publish, reason: ReasonCode) {
        match (self.v5(), p.qos, p.packet_id) {
            (true, QoS::AtLeastOnce, Some(id)) => self.conn.puback(id, reason),
            (true, QoS::ExactlyOnce, Some(id)) => self.conn.pubrec(id, reason),
            _ => self.conn.disconnect(reason),
        }
    }

    fn on_subscribe(&mut self, s: Subscribe) {
        let Some(session) = &mut self.session else { return };
        // No Local on a shared subscription is a protocol error (section 3.8.3.1).
        if s.filters.iter().any(|(f, o)| o.no_local && f.shared().is_some()) {
            return self.conn.disconnect(ReasonCode::ProtocolError);
        }
        let now = Instant::now().into_std();
        let id = s.properties.subscription_ids.first().copied();
        let mut reasons = Vec::with_capacity(s.filters.len());
        let mut retained = Vec::new();
        for (filter, options) in &s.filters {
            let reason = if !self.shared.limits.fits_topic(filter.as_str()) {
                ReasonCode::TopicFilterInvalid
            } else if session.subscriptions >= self.shared.limits.max_subscriptions {
                ReasonCode::QuotaExceeded
            } else if !self.shared.hooks.authorize_subscribe(&session.context, filter) {
                ReasonCode::NotAuthorized
            } else {
                let mut router = self.shared.router();
                let new = router.subscribe(&session.client_id, filter, *options, id);
                session.subscriptions += usize::from(new);
                // Shared subscriptions get no retained messages (section 4.8.2).
                let send = filter.shared().is_none()
                    && match options.retain_handling {
                        RetainHandling::SendAtSubscribe => true,
                        RetainHandling::SendIfNew => new,
                        RetainHandling::DoNotSend => false,
                    };
                if send {
                    for mut m in router.retained_for(filter, now) {
                        m.qos = m.qos.min(options.qos);
                        m.subscription_ids.extend(id);
                        retained.push(m);
                    }
                }
                match options.qos {
                    QoS::AtMostOnce => ReasonCode::Success,
                    QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
                    QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
                }
            };
            reasons.push(reason);
        }
        self.conn.suback(s.packet_id, reasons);
        for m in retained {
            let allowed = TopicName::new(m.message.publish.topic.as_str())
                .is_ok_and(|t| self.shared.hooks.authorize_receive(&session.context, &t));
            if let Some(p) = m.to_publish(now).filter(|_| allowed) {
                let _ = self.conn.publish(p); // retained messages keep retain = 1 on subscribe
            }
        }
    }

    fn on_unsubscribe(&mut self, u: Unsubscribe) {
        let Some(session) = &mut self.session else { return };
        let mut reasons = Vec::with_capacity(u.filters.len());
        let mut router = self.shared.router();
        for filter in &u.filters {
            let existed = router.unsubscribe(&session.client_id, filter);
            session.subscriptions -= usize::from(existed);
            reasons.push(if existed { ReasonCode::Success } else { ReasonCode::NoSubscriptionExisted });
        }
        drop(router);
        self.conn.unsuback(u.packet_id, if self.v5() { reasons } else { Vec::new() });
    }

    /// Whether the role lets this client leave `will`: the same gate as its publishes.
    fn admit_will(&self, context: &H::Context, will: &Will) -> Result<(), ReasonCode> {
        let topic = match TopicName::new(will.topic.as_str()) {
            Ok(t) if self.shared.limits.fits_topic(&will.topic) && !will.topic.starts_with('$') => t,
            _ => return Err(ReasonCode::TopicNameInvalid),
        };
        let inbound =
            Inbound { origin: Origin::Will, topic: &topic, retain: will.retain, payload: &will.payload };
        match self.shared.hooks.admit_publish(context, &inbound) {
            Verdict::Route => Ok(()),
            Verdict::Take | Verdict::Refuse => Err(ReasonCode::NotAuthorized),
        }
    }

    /// The will as a message with its delay, if the role (asked again: rights may have
    /// changed since CONNECT) lets this client publish it.
    fn authorize_will(&self, will: Will) -> Option<(Publish, Duration)> {
        let session = self.session.as_ref()?;
        self.admit_will(&session.context, &will).ok()?;
        let mut properties = will.properties;
        let delay = Duration::from_secs(u64::from(properties.will_delay.take().unwrap_or(0)));
        let message = Publish {
            dup: false,
            qos: will.qos,
            retain: will.retain,
            topic: will.topic,
            packet_id: None,
            properties,
            payload: will.payload,
        };
        Some((message, delay))
    }

    fn finish(mut self) {
        let Some(session) = self.session.take() else { return };
        let unacknowledged = self.conn.take_unacknowledged();
        let now = Instant::now().into_std();
        let will = self.will.take();
        {
            let mut router = self.shared.router();
            if let Some(expiry) = self.expiry_at_close {
                router.set_session_expiry(&session.client_id, self.id, expiry);
            }
            if let Some(will) = router.unregister(&session.client_id, self.id, unacknowledged, will, now) {
                publish_from(&self.shared, &mut router, will, Some(&session.client_id), now);
            }
        }
        self.shared.hooks.disconnected(&session.context, &session.client_id);
        tracing::debug!(client_id = %session.client_id, "disconnected");
    }
}

/// Publishes a message the broker originates or holds (a will, a role's event) to everyone
/// the role lets receive it.
pub(crate) fn publish_from<H: Hooks>(
    shared: &Shared<H>,
    router: &mut crate::router::Router<H::Context>,
    message: Publish,
    publisher: Option<&str>,
    now: std::time::Instant,
) -> usize {
    let Ok(topic) = TopicName::new(message.topic.as_str()) else { return 0 };
    let message = Arc::new(Message::new(message, now));
    if message.publish.retain {
        router.retain(&message);
    }
    router.publish(&topic, &message, publisher, |ctx| shared.hooks.authorize_receive(ctx, &topic))
}
