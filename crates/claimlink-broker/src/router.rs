//! Who receives what: a topic trie of subscriptions, the connected clients' delivery queues,
//! retained messages and wills waiting for their delay.
//!
//! Delivery never waits: each client has a bounded queue, and a message for a full queue is
//! dropped for that client only (and counted), so a slow consumer cannot stall anyone else.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use claimlink_mqtt::packet::{Publish, SubscriptionOptions};
use claimlink_mqtt::{QoS, ReasonCode, TopicFilter, TopicName};
use tokio::sync::mpsc;

/// An application message as the broker keeps it: what was published and when it arrived
/// (for the Message Expiry Interval).
#[derive(Debug)]
pub struct Message {
    /// The message as published (no packet id, no topic alias, dup cleared).
    pub publish: Publish,
    /// When the broker received it.
    pub received: Instant,
}

impl Message {
    /// Wraps a received message, clearing what belongs to the publisher's connection only.
    pub fn new(mut publish: Publish, received: Instant) -> Self {
        publish.dup = false;
        publish.packet_id = None;
        publish.properties.topic_alias = None;
        publish.properties.subscription_ids.clear();
        Self { publish, received }
    }

    /// Whether its Message Expiry Interval has passed at `now`.
    pub fn is_expired(&self, now: Instant) -> bool {
        self.remaining(now) == Some(0)
    }

    /// Seconds left of its expiry interval (`None`: it does not expire).
    fn remaining(&self, now: Instant) -> Option<u32> {
        let interval = self.publish.properties.message_expiry?;
        let waited = now.saturating_duration_since(self.received).as_secs();
        Some(u32::try_from(u64::from(interval).saturating_sub(waited)).unwrap_or(0))
    }
}

/// One message for one subscriber.
#[derive(Debug, Clone)]
pub struct Routed {
    /// The message, shared by all its subscribers.
    pub message: Arc<Message>,
    /// The lower of the published QoS and the subscription's maximum.
    pub qos: QoS,
    /// The retain flag to send (kept only for Retain As Published subscriptions, and for
    /// retained messages sent on subscribe).
    pub retain: bool,
    /// Identifiers of the matching subscriptions (MQTT 5).
    pub subscription_ids: Vec<u32>,
}

impl Routed {
    /// The PUBLISH to send at `now`, with the expiry interval reduced by the time the message
    /// waited (section 3.3.2.3.3); `None` when it has expired and must not be sent.
    pub fn to_publish(&self, now: Instant) -> Option<Publish> {
        let remaining = self.message.remaining(now);
        if remaining == Some(0) {
            return None;
        }
        let mut p = self.message.publish.clone();
        p.qos = self.qos;
        p.retain = self.retain;
        p.properties.message_expiry = remaining;
        p.properties.subscription_ids.clone_from(&self.subscription_ids);
        Some(p)
    }
}

/// An order to end a connection, kept apart from the delivery queue so that a full queue
/// cannot delay it: a session taken over by a newer connection with the same client id, or
/// closed by the role (for example because its certificate was revoked).
#[derive(Debug, Default)]
pub struct Kick {
    reason: std::sync::Mutex<Option<ReasonCode>>,
    notify: tokio::sync::Notify,
}

impl Kick {
    /// Orders the connection to end with `reason` (the first order wins).
    pub fn kick(&self, reason: ReasonCode) {
        if let Ok(mut r) = self.reason.lock() {
            r.get_or_insert(reason);
        }
        self.notify.notify_one();
    }

    /// Waits for an order.
    pub async fn kicked(&self) -> ReasonCode {
        loop {
            self.notify.notified().await;
            if let Some(reason) = self.reason.lock().ok().and_then(|mut r| r.take()) {
                return reason;
            }
        }
    }
}

/// Hash maps of the router: foldhash is several times faster than SipHash on short keys and
/// still seeded per process, so crafted topic levels or client ids cannot force collisions.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

fn map<K, V>() -> Map<K, V> {
    HashMap::with_hasher(foldhash::fast::RandomState::default())
}

/// A client identifier shared by the session and every subscription of the client.
type ClientKey = Arc<str>;

struct Online {
    connection: u64,
    tx: mpsc::Sender<Routed>,
    kick: Arc<Kick>,
}

/// A client's session: its subscriptions live in the trie under its id; while it is offline,
/// QoS 1 and 2 messages wait in a bounded queue until it returns or the session expires.
struct Client<C> {
    /// The client id, shared with the trie.
    key: ClientKey,
    online: Option<Online>,
    /// How long the session outlives its connection (zero: it ends with it).
    expiry: Duration,
    /// When the last connection ended.
    offline_since: Option<Instant>,
    queue: VecDeque<Routed>,
    /// The context of the last connection, for receive authorisation while offline.
    context: Arc<C>,
    /// Subscriptions the session holds.
    subscriptions: usize,
}

/// A subscription as stored in the trie.
#[derive(Debug, Clone, Copy)]
struct Sub {
    options: SubscriptionOptions,
    id: Option<u32>,
}

/// What matched for one client: the highest QoS, whether any matching subscription keeps the
/// retain flag, and all subscription identifiers.
#[derive(Debug, Default)]
struct Target {
    qos: Option<QoS>,
    retain_as_published: bool,
    ids: Vec<u32>,
}

/// The members of one shared subscription group (`$share/{group}/{filter}`) on one filter;
/// each message goes to one of them, in turn.
#[derive(Default)]
struct Group {
    members: Vec<(ClientKey, Sub)>,
    cursor: usize,
}

struct Node {
    subscribers: Map<ClientKey, Sub>,
    groups: Map<String, Group>,
    children: Map<String, Node>,
}

impl Default for Node {
    fn default() -> Self {
        Self { subscribers: map(), groups: map(), children: map() }
    }
}

impl Node {
    fn is_empty(&self) -> bool {
        self.subscribers.is_empty() && self.groups.is_empty() && self.children.is_empty()
    }

    fn insert(&mut self, levels: &[&str], client: &ClientKey, group: Option<&str>, sub: Sub) -> bool {
        let Some((level, rest)) = levels.split_first() else {
            let Some(group) = group else {
                return self.subscribers.insert(client.clone(), sub).is_none();
            };
            let members = &mut self.groups.entry(group.to_owned()).or_default().members;
            return match members.iter_mut().find(|(c, _)| c == client) {
                Some(member) => {
                    member.1 = sub;
                    false
                }
                None => {
                    members.push((client.clone(), sub));
                    true
                }
            };
        };
        self.children.entry((*level).to_owned()).or_default().insert(rest, client, group, sub)
    }

    fn remove(&mut self, levels: &[&str], client: &str, group: Option<&str>) -> bool {
        let Some((level, rest)) = levels.split_first() else {
            let Some(group) = group else { return self.subscribers.remove(client).is_some() };
            let Some(g) = self.groups.get_mut(group) else { return false };
            let before = g.members.len();
            g.members.retain(|(c, _)| &**c != client);
            let removed = g.members.len() < before;
            if g.members.is_empty() {
                self.groups.remove(group);
            }
            return removed;
        };
        let Some(child) = self.children.get_mut(*level) else { return false };
        let removed = child.remove(rest, client, group);
        if child.is_empty() {
            self.children.remove(*level);
        }
        removed
    }

    fn remove_client(&mut self, client: &str) {
        self.subscribers.remove(client);
        self.groups.retain(|_, g| {
            g.members.retain(|(c, _)| &**c != client);
            !g.members.is_empty()
        });
        self.children.retain(|_, c| {
            c.remove_client(client);
            !c.is_empty()
        });
    }

    /// Collects subscribers whose filters match `levels` (one member per shared group); `first`
    /// applies the `$` rule; `publisher` is skipped where its own subscription says No Local.
    fn collect(&mut self, levels: &[&str], first: bool, publisher: Option<&str>, out: &mut Targets) {
        let dollar = first && levels.first().is_some_and(|l| l.starts_with('$'));
        if !dollar && let Some(hash) = self.children.get_mut("#") {
            hash.take(publisher, out);
        }
        let Some((level, rest)) = levels.split_first() else {
            self.take(publisher, out);
            return;
        };
        if let Some(child) = self.children.get_mut(*level) {
            child.collect(rest, false, publisher, out);
        }
        if !dollar && let Some(plus) = self.children.get_mut("+") {
            plus.collect(rest, false, publisher, out);
        }
    }

    /// Adds this node's subscribers, and the next member of each group. When several of a
    /// client's filters match, it gets one message with the highest QoS and every subscription
    /// identifier (section 3.3.4).
    fn take(&mut self, publisher: Option<&str>, out: &mut Targets) {
        let mut add = |client: &ClientKey, sub: &Sub| {
            let t = out.entry(client.clone()).or_default();
            t.qos = Some(t.qos.map_or(sub.options.qos, |q| q.max(sub.options.qos)));
            t.retain_as_published |= sub.options.retain_as_published;
            t.ids.extend(sub.id);
        };
        for (client, sub) in &self.subscribers {
            if !(sub.options.no_local && publisher == Some(&**client)) {
                add(client, sub);
            }
        }
        for group in self.groups.values_mut() {
            group.cursor = (group.cursor + 1) % group.members.len().max(1);
            if let Some((client, sub)) = group.members.get(group.cursor) {
                add(client, sub);
            }
        }
    }
}

type Targets = Map<ClientKey, Target>;

/// A connection as the router needs it.
pub struct Registration<C> {
    /// The broker's id of the connection (to tell a stale unregister from a current one).
    pub connection: u64,
    /// Where deliveries go.
    pub tx: mpsc::Sender<Routed>,
    /// Where orders to end the connection go.
    pub kick: Arc<Kick>,
    /// The role's context for authorising deliveries.
    pub context: Arc<C>,
    /// How long the session outlives the connection.
    pub expiry: Duration,
}

/// What `register` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resumed {
    /// Whether a session was present (CONNACK "session present").
    pub session_present: bool,
    /// Subscriptions the resumed session holds (0 for a new one).
    pub subscriptions: usize,
}

impl<C> Client<C> {
    fn is_expired(&self, now: Instant) -> bool {
        self.online.is_none()
            && self.offline_since.is_some_and(|t| now.saturating_duration_since(t) >= self.expiry)
    }
}

/// A will waiting for its delay, published unless the client returns first.
struct PendingWill {
    due: Instant,
    message: Publish,
}

/// Router state shared by all connections.
pub struct Router<C> {
    clients: Map<ClientKey, Client<C>>,
    trie: Node,
    retained: BTreeMap<String, Arc<Message>>,
    wills: Map<String, PendingWill>,
    dropped: AtomicU64,
    /// Messages kept per offline session.
    max_offline: usize,
    hasher: foldhash::fast::RandomState,
    pressure: u64,
}

impl<C> Default for Router<C> {
    fn default() -> Self {
        Self {
            clients: map(),
            trie: Node::default(),
            retained: BTreeMap::new(),
            wills: map(),
            dropped: AtomicU64::new(0),
            max_offline: 1000,
            hasher: foldhash::fast::RandomState::default(),
            pressure: 0,
        }
    }
}

impl<C> Router<C> {
    /// A router that keeps at most `max_offline` messages per offline session.
    pub fn with_offline_limit(max_offline: usize) -> Self {
        Self { max_offline, ..Self::default() }
    }

    /// Registers a connection for `client_id`. An older connection with the same id is told it
    /// was taken over. With `clean_start`, or when the old session has expired, the session
    /// starts empty; otherwise its subscriptions stay and its queued messages are handed to the
    /// new connection. A will waiting for its delay is cancelled (section 3.1.3.2).
    pub fn register(
        &mut self,
        client_id: &str,
        online: Registration<C>,
        clean_start: bool,
        now: Instant,
    ) -> Resumed {
        let Registration { connection, tx, kick, context, expiry } = online;
        self.wills.remove(client_id);
        let expired = self.clients.get(client_id).is_some_and(|c| c.is_expired(now));
        let fresh = clean_start || expired || !self.clients.contains_key(client_id);
        if fresh {
            self.trie.remove_client(client_id);
        }
        let key: ClientKey = Arc::from(client_id);
        let entry = self.clients.entry(key.clone()).or_insert_with(|| Client {
            key,
            online: None,
            expiry,
            offline_since: None,
            queue: VecDeque::new(),
            context: context.clone(),
            subscriptions: 0,
        });
        if let Some(old) = entry.online.take() {
            old.kick.kick(ReasonCode::SessionTakenOver);
        }
        if fresh {
            entry.queue.clear();
            entry.subscriptions = 0;
        }
        for routed in entry.queue.drain(..) {
            if routed.message.is_expired(now) {
                continue;
            }
            if tx.try_send(routed).is_err() {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        entry.expiry = expiry;
        entry.offline_since = None;
        entry.context = context;
        entry.online = Some(Online { connection, tx, kick });
        Resumed { session_present: !fresh, subscriptions: entry.subscriptions }
    }

    /// Ends a connection, unless a newer one already took its client id. A session with an
    /// expiry stays, with `unacknowledged` messages queued first for its next connection.
    ///
    /// `will` is the connection's will with its delay, already authorised. It is returned when
    /// it must be published now: no delay, or the session ends with the connection. With a
    /// delay it waits (at most until the session would expire) and [`Router::due_wills`] hands
    /// it out later, unless the client reconnects first. A connection that was taken over has
    /// its delayed will cancelled by the newer one.
    pub fn unregister(
        &mut self,
        client_id: &str,
        connection: u64,
        unacknowledged: Vec<Publish>,
        will: Option<(Publish, Duration)>,
        now: Instant,
    ) -> Option<Publish> {
        let current = self
            .clients
            .get(client_id)
            .is_some_and(|c| c.online.as_ref().is_some_and(|o| o.connection == connection));
        let Some(client) = self.clients.get_mut(client_id).filter(|_| current) else {
            return will.and_then(|(w, delay)| delay.is_zero().then_some(w));
        };
        client.online = None;
        if client.expiry.is_zero() {
            self.clients.remove(client_id);
            self.trie.remove_client(client_id);
            return will.map(|(w, _)| w);
        }
        client.offline_since = Some(now);
        for m in unacknowledged.into_iter().rev() {
            let qos = m.qos;
            let message = Arc::new(Message::new(m, now));
            client.queue.push_front(Routed { message, qos, retain: false, subscription_ids: Vec::new() });
        }
        client.queue.truncate(self.max_offline);
        match will {
            Some((w, delay)) if !delay.is_zero() => {
                let due = now + delay.min(client.expiry);
                self.wills.insert(client_id.to_owned(), PendingWill { due, message: w });
                None
            }
            other => other.map(|(w, _)| w),
        }
    }

    /// Replaces the session expiry of `client_id`'s connection `connection` (a DISCONNECT that
    /// set it, MQTT 5 section 3.14.2.2.2), unless a newer connection took the client id.
    pub fn set_session_expiry(&mut self, client_id: &str, connection: u64, expiry: Duration) {
        if let Some(client) = self.clients.get_mut(client_id)
            && client.online.as_ref().is_some_and(|o| o.connection == connection)
        {
            client.expiry = expiry;
        }
    }

    /// Removes offline sessions whose expiry has passed. Returns how many.
    pub fn sweep(&mut self, now: Instant) -> usize {
        let expired: Vec<ClientKey> =
            self.clients.iter().filter(|(_, c)| c.is_expired(now)).map(|(id, _)| id.clone()).collect();
        for id in &expired {
            self.clients.remove(id);
            self.trie.remove_client(id);
        }
        self.retained.retain(|_, m| !m.is_expired(now));
        expired.len()
    }

    /// Wills whose delay has passed at `now`, to publish, with the client ids they belong to.
    pub fn due_wills(&mut self, now: Instant) -> Vec<(String, Publish)> {
        let due: Vec<String> =
            self.wills.iter().filter(|(_, w)| w.due <= now).map(|(id, _)| id.clone()).collect();
        due.into_iter().filter_map(|id| self.wills.remove(&id).map(|w| (id, w.message))).collect()
    }

    /// The context of a client's session, connected or not.
    pub fn context(&self, client_id: &str) -> Option<Arc<C>> {
        self.clients.get(client_id).map(|c| c.context.clone())
    }

    /// Adds a subscription (replacing one on the same filter). Returns whether it is new.
    pub fn subscribe(
        &mut self,
        client_id: &str,
        filter: &TopicFilter,
        options: SubscriptionOptions,
        id: Option<u32>,
    ) -> bool {
        let levels: Vec<&str> = filter.pattern().split('/').collect();
        let key = self.clients.get(client_id).map_or_else(|| Arc::from(client_id), |c| c.key.clone());
        let new = self.trie.insert(&levels, &key, filter.shared().map(|(g, _)| g), Sub { options, id });
        if let Some(c) = self.clients.get_mut(client_id) {
            c.subscriptions += usize::from(new);
        }
        new
    }

    /// Removes a subscription. Returns whether it existed.
    pub fn unsubscribe(&mut self, client_id: &str, filter: &TopicFilter) -> bool {
        let levels: Vec<&str> = filter.pattern().split('/').collect();
        let existed = self.trie.remove(&levels, client_id, filter.shared().map(|(g, _)| g));
        if let Some(c) = self.clients.get_mut(client_id) {
            c.subscriptions -= usize::from(existed);
        }
        existed
    }

    /// Stores or clears (empty payload) the retained message of a topic.
    pub fn retain(&mut self, message: &Arc<Message>) {
        if message.publish.payload.is_empty() {
            self.retained.remove(&message.publish.topic);
        } else {
            self.retained.insert(message.publish.topic.clone(), message.clone());
        }
    }

    /// Unexpired retained messages matching `filter`, with the retain flag set.
    pub fn retained_for(&self, filter: &TopicFilter, now: Instant) -> Vec<Routed> {
        self.retained
            .values()
            .filter(|m| !m.is_expired(now))
            .filter(|m| TopicName::new(m.publish.topic.as_str()).is_ok_and(|t| filter.matches(&t)))
            .map(|m| Routed {
                message: m.clone(),
                qos: m.publish.qos,
                retain: true,
                subscription_ids: Vec::new(),
            })
            .collect()
    }

    /// Delivers `message` to every matching subscriber that `may_receive` allows (`publisher`
    /// is the sending client, for No Local). Returns how many queues took it.
    pub fn publish(
        &mut self,
        topic: &TopicName,
        message: &Arc<Message>,
        publisher: Option<&str>,
        may_receive: impl Fn(&C) -> bool,
    ) -> usize {
        let levels: Vec<&str> = topic.levels().collect();
        let mut targets = Map::with_hasher(self.hasher.clone());
        self.trie.collect(&levels, true, publisher, &mut targets);
        let mut delivered = 0;
        for (client_id, target) in targets {
            let Some(client) = self.clients.get_mut(&client_id) else { continue };
            if !may_receive(&client.context) {
                continue;
            }
            let qos = message.publish.qos.min(target.qos.unwrap_or(QoS::AtMostOnce));
            let routed = Routed {
                message: message.clone(),
                qos,
                retain: message.publish.retain && target.retain_as_published,
                subscription_ids: target.ids,
            };
            match &client.online {
                Some(online) => match online.tx.try_send(routed) {
                    Ok(()) => {
                        delivered += 1;
                        // A queue three quarters full: the publisher should ease off before
                        // messages are dropped (see `pressure`).
                        if online.tx.capacity() < online.tx.max_capacity() / 4 {
                            self.pressure += 1;
                        }
                    }
                    Err(_) => {
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                        self.pressure += 1;
                    }
                },
                // Offline with a session: QoS 1 and 2 wait (section 4.1); QoS 0 may be dropped.
                None if qos != QoS::AtMostOnce && client.queue.len() < self.max_offline => {
                    client.queue.push_back(routed);
                    delivered += 1;
                }
                None => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        delivered
    }

    /// Tells the connection of `client_id` to end with `reason`. Returns whether it was online.
    pub fn disconnect(&mut self, client_id: &str, reason: ReasonCode) -> bool {
        let Some(online) = self.clients.get(client_id).and_then(|c| c.online.as_ref()) else { return false };
        online.kick.kick(reason);
        true
    }

    /// Deliveries so far that found a subscriber's queue nearly or completely full: a
    /// publisher whose message raised it should yield before reading more.
    pub fn pressure(&self) -> u64 {
        self.pressure
    }

    /// Messages dropped because a subscriber's queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Connected clients.
    pub fn clients(&self) -> usize {
        self.clients.values().filter(|c| c.online.is_some()).count()
    }

    /// Sessions kept, connected or not.
    pub fn sessions(&self) -> usize {
        self.clients.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use claimlink_mqtt::Properties;

    fn msg(topic: &str) -> Publish {
        Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: topic.into(),
            packet_id: Some(3),
            properties: Properties::default(),
            payload: Bytes::from_static(b"x"),
        }
    }

    fn client(r: &mut Router<()>, id: &str, conn: u64) -> mpsc::Receiver<Routed> {
        connect(r, id, conn, true, Duration::ZERO).1
    }

    fn arc(p: Publish) -> Arc<Message> {
        Arc::new(Message::new(p, Instant::now()))
    }

    fn publish(r: &mut Router<()>, topic: &str, p: Publish) -> usize {
        r.publish(&TopicName::new(topic).unwrap(), &arc(p), None, |_| true)
    }

    fn sub(r: &mut Router<()>, client: &str, filter: &str, options: SubscriptionOptions) -> bool {
        r.subscribe(client, &TopicFilter::new(filter).unwrap(), options, None)
    }

    fn connect(
        r: &mut Router<()>,
        id: &str,
        conn: u64,
        clean: bool,
        expiry: Duration,
    ) -> (bool, mpsc::Receiver<Routed>) {
        let (present, rx, _) = connect_kick(r, id, conn, clean, expiry);
        (present, rx)
    }

    fn connect_kick(
        r: &mut Router<()>,
        id: &str,
        conn: u64,
        clean: bool,
        expiry: Duration,
    ) -> (bool, mpsc::Receiver<Routed>, Arc<Kick>) {
        let (tx, rx) = mpsc::channel(2);
        let kick = Arc::new(Kick::default());
        let resumed = r.register(
            id,
            Registration { connection: conn, tx, kick: kick.clone(), context: Arc::new(()), expiry },
            clean,
            Instant::now(),
        );
        (resumed.session_present, rx, kick)
    }

    #[test]
    fn the_trie_matches_like_the_filter_definition() {
        let mut r = Router::default();
        let cases = ["a/b", "a/+", "a/#", "#", "+/b", "$SYS/#", "+/+"];
        let mut receivers = Vec::new();
        for (i, f) in cases.iter().enumerate() {
            receivers.push(client(&mut r, &format!("c{i}"), i as u64));
            sub(&mut r, &format!("c{i}"), f, SubscriptionOptions::qos(QoS::AtLeastOnce));
        }
        for topic in ["a/b", "a", "x/b", "$SYS/x", "a/b/c"] {
            let name = TopicName::new(topic).unwrap();
            let levels: Vec<&str> = name.levels().collect();
            let mut got = super::map();
            r.trie.collect(&levels, true, None, &mut got);
            for (i, f) in cases.iter().enumerate() {
                let expected = TopicFilter::new(*f).unwrap().matches(&name);
                assert_eq!(got.contains_key(format!("c{i}").as_str()), expected, "{f} vs {topic}");
            }
        }
    }

    #[test]
    fn takeover_unsubscribes_the_old_connection_and_tells_it() {
        let mut r = Router::default();
        let (_, _old, kick) = connect_kick(&mut r, "dev", 1, true, Duration::ZERO);
        sub(&mut r, "dev", "t", SubscriptionOptions::qos(QoS::AtMostOnce));
        let _new = client(&mut r, "dev", 2);
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let reason = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), kick.kicked()).await.expect("no kick")
        });
        assert_eq!(reason, ReasonCode::SessionTakenOver);
        assert_eq!(publish(&mut r, "t", msg("t")), 0, "subscriptions did not survive takeover");
        r.unregister("dev", 1, Vec::new(), None, Instant::now());
        assert_eq!(r.clients(), 1, "the old connection's exit leaves the new one registered");
    }

    #[test]
    fn a_full_queue_drops_for_that_client_only_and_qos_is_capped() {
        let mut r = Router::default();
        let mut slow = client(&mut r, "slow", 1);
        let mut fast = client(&mut r, "fast", 2);
        for c in ["slow", "fast"] {
            sub(&mut r, c, "t", SubscriptionOptions::qos(QoS::AtMostOnce));
        }
        for _ in 0..2 {
            assert_eq!(publish(&mut r, "t", msg("t")), 2);
        }
        // Drain only the fast one; the slow queue (capacity 2) is full.
        while let Ok(routed) = fast.try_recv() {
            let m = routed.to_publish(Instant::now()).unwrap();
            assert_eq!(m.qos, QoS::AtMostOnce, "capped at the subscription QoS");
            assert!(!m.retain && m.packet_id.is_none(), "retain cleared without Retain As Published");
        }
        assert_eq!(publish(&mut r, "t", msg("t")), 1);
        assert_eq!(r.dropped(), 1);
        assert!(slow.try_recv().is_ok());
    }

    #[test]
    fn a_persistent_session_keeps_subscriptions_and_queues_while_offline() {
        let mut r = Router::default();
        let hour = Duration::from_secs(3600);
        let (present, _rx) = connect(&mut r, "dev", 1, false, hour);
        assert!(!present);
        sub(&mut r, "dev", "cmd/#", SubscriptionOptions::qos(QoS::AtLeastOnce));
        sub(&mut r, "dev", "other", SubscriptionOptions::qos(QoS::AtLeastOnce));
        let now = Instant::now();
        let unacked = msg("cmd/unacked");
        r.unregister("dev", 1, vec![unacked], None, now);
        assert_eq!((r.clients(), r.sessions()), (0, 1));
        assert_eq!(publish(&mut r, "cmd/go", msg("cmd/go")), 1, "queued for the offline session");
        let mut qos0 = msg("cmd/go");
        qos0.qos = QoS::AtMostOnce;
        assert_eq!(publish(&mut r, "cmd/go", qos0), 0, "QoS 0 is not kept");
        let (tx, mut rx) = mpsc::channel(8);
        let registration =
            Registration { connection: 2, tx, kick: Arc::default(), context: Arc::new(()), expiry: hour };
        let resumed = r.register("dev", registration, false, Instant::now());
        assert_eq!(resumed, Resumed { session_present: true, subscriptions: 2 });
        let topics: Vec<String> =
            std::iter::from_fn(|| rx.try_recv().ok().map(|m| m.message.publish.topic.clone())).collect();
        assert_eq!(topics, ["cmd/unacked", "cmd/go"], "unacknowledged first, then what came while away");
        // Subscriptions survived: a new message is delivered live.
        assert_eq!(publish(&mut r, "cmd/go", msg("cmd/go")), 1);
        // A clean start throws the session away.
        r.unregister("dev", 2, Vec::new(), None, now);
        let (present, _rx) = connect(&mut r, "dev", 3, true, hour);
        assert!(!present);
        assert_eq!(publish(&mut r, "cmd/go", msg("cmd/go")), 0, "subscriptions are gone");
    }

    #[test]
    fn sessions_expire() {
        let mut r = Router::default();
        let (_, _rx) = connect(&mut r, "dev", 1, false, Duration::from_secs(10));
        let start = Instant::now();
        r.unregister("dev", 1, Vec::new(), None, start);
        assert_eq!(r.sweep(start + Duration::from_secs(9)), 0);
        assert_eq!(r.sweep(start + Duration::from_secs(10)), 1);
        assert_eq!(r.sessions(), 0);
        // Expiry zero: the session ends with the connection.
        let (_, _rx) = connect(&mut r, "eph", 2, false, Duration::ZERO);
        r.unregister("eph", 2, Vec::new(), None, start);
        assert_eq!(r.sessions(), 0);
    }

    #[test]
    fn a_shared_group_gets_each_message_once_in_turn() {
        let mut r = Router::default();
        let mut a = client(&mut r, "a", 1);
        let mut b = client(&mut r, "b", 2);
        let mut plain = client(&mut r, "p", 3);
        let shared = TopicFilter::new("$share/workers/jobs/+").unwrap();
        sub(&mut r, "a", "$share/workers/jobs/+", SubscriptionOptions::qos(QoS::AtLeastOnce));
        sub(&mut r, "b", "$share/workers/jobs/+", SubscriptionOptions::qos(QoS::AtLeastOnce));
        sub(&mut r, "p", "jobs/#", SubscriptionOptions::qos(QoS::AtLeastOnce));
        let count = |rx: &mut mpsc::Receiver<Routed>| std::iter::from_fn(|| rx.try_recv().ok()).count();
        for _ in 0..2 {
            assert_eq!(
                publish(&mut r, "jobs/1", msg("jobs/1")),
                2,
                "one group member and the plain subscriber"
            );
        }
        assert_eq!((count(&mut a), count(&mut b), count(&mut plain)), (1, 1, 2));
        // A member that leaves no longer gets a turn.
        r.unsubscribe("a", &shared);
        publish(&mut r, "jobs/1", msg("jobs/1"));
        publish(&mut r, "jobs/1", msg("jobs/1"));
        assert_eq!((count(&mut a), count(&mut b)), (0, 2));
    }

    #[test]
    fn retained_messages_are_stored_cleared_and_matched() {
        let mut r: Router<()> = Router::default();
        let now = Instant::now();
        r.retain(&arc(msg("a/b")));
        r.retain(&arc(msg("a/c")));
        assert_eq!(r.retained_for(&TopicFilter::new("a/+").unwrap(), now).len(), 2);
        let mut clear = msg("a/b");
        clear.payload = Bytes::new();
        r.retain(&arc(clear));
        let left = r.retained_for(&TopicFilter::new("#").unwrap(), now);
        assert_eq!(left.len(), 1);
        let p = left[0].to_publish(now).unwrap();
        assert_eq!((p.packet_id, p.retain), (None, true));
    }

    #[test]
    fn no_local_retain_as_published_and_subscription_ids() {
        let mut r = Router::default();
        let (tx, mut me) = mpsc::channel(8);
        let registration = Registration {
            connection: 1,
            tx,
            kick: Arc::default(),
            context: Arc::new(()),
            expiry: Duration::ZERO,
        };
        r.register("me", registration, true, Instant::now());
        let mut other = client(&mut r, "other", 2);
        let mut no_local = SubscriptionOptions::qos(QoS::AtLeastOnce);
        no_local.no_local = true;
        r.subscribe("me", &TopicFilter::new("chat/+").unwrap(), no_local, Some(7));
        r.subscribe(
            "me",
            &TopicFilter::new("chat/#").unwrap(),
            SubscriptionOptions::qos(QoS::AtMostOnce),
            Some(9),
        );
        let mut rap = SubscriptionOptions::qos(QoS::AtLeastOnce);
        rap.retain_as_published = true;
        r.subscribe("other", &TopicFilter::new("chat/#").unwrap(), rap, None);
        let topic = TopicName::new("chat/room").unwrap();
        let m = arc(msg("chat/room")); // retain = 1, QoS 1
        assert_eq!(r.publish(&topic, &m, Some("me"), |_| true), 2);
        let mine = me.try_recv().unwrap().to_publish(Instant::now()).unwrap();
        assert_eq!(mine.properties.subscription_ids, [9], "only the filter without No Local matched");
        assert_eq!(mine.qos, QoS::AtMostOnce);
        assert!(!mine.retain);
        let theirs = other.try_recv().unwrap().to_publish(Instant::now()).unwrap();
        assert!(theirs.retain, "Retain As Published keeps the flag");
        // From someone else, both of my filters match: one message, highest QoS, both ids.
        assert_eq!(r.publish(&topic, &m, Some("other"), |_| true), 2);
        let mut ids = me.try_recv().unwrap().subscription_ids;
        ids.sort_unstable();
        assert_eq!(ids, [7, 9]);
    }

    #[test]
    fn expired_messages_are_not_delivered_and_the_interval_counts_down() {
        let start = Instant::now();
        let mut p = msg("t");
        p.properties.message_expiry = Some(10);
        let m = Arc::new(Message::new(p, start));
        let routed =
            Routed { message: m.clone(), qos: QoS::AtLeastOnce, retain: false, subscription_ids: vec![] };
        assert_eq!(
            routed.to_publish(start + Duration::from_secs(4)).unwrap().properties.message_expiry,
            Some(6)
        );
        assert!(routed.to_publish(start + Duration::from_secs(10)).is_none());
        // Retained and queued copies expire too.
        let mut r: Router<()> = Router::default();
        r.retain(&m);
        let all = TopicFilter::new("#").unwrap();
        assert_eq!(r.retained_for(&all, start + Duration::from_secs(9)).len(), 1);
        assert_eq!(r.retained_for(&all, start + Duration::from_secs(11)).len(), 0);
        r.sweep(start + Duration::from_secs(11));
        assert!(r.retained.is_empty(), "the sweep forgets expired retained messages");
    }

    #[test]
    fn a_delayed_will_waits_and_a_return_cancels_it() {
        let mut r: Router<()> = Router::default();
        let hour = Duration::from_secs(3600);
        let start = Instant::now();
        let will = || Some((msg("status/dev"), Duration::from_secs(30)));
        let (_, _rx) = connect(&mut r, "dev", 1, false, hour);
        assert!(r.unregister("dev", 1, Vec::new(), will(), start).is_none(), "delayed");
        assert!(r.due_wills(start + Duration::from_secs(29)).is_empty());
        let due = r.due_wills(start + Duration::from_secs(30));
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].0, "dev");
        // The client returns within the delay: no will.
        let (_, _rx) = connect(&mut r, "dev", 2, false, hour);
        r.unregister("dev", 2, Vec::new(), will(), start);
        let (_, _rx) = connect(&mut r, "dev", 3, false, hour);
        assert!(r.due_wills(start + hour).is_empty(), "cancelled by the new connection");
        // The delay is capped by the session expiry; a session that ends now publishes now.
        let (_, _rx) = connect(&mut r, "short", 4, false, Duration::from_secs(5));
        r.unregister("short", 4, Vec::new(), will(), start);
        assert_eq!(r.due_wills(start + Duration::from_secs(5)).len(), 1);
        let (_, _rx) = connect(&mut r, "eph", 5, true, Duration::ZERO);
        assert!(r.unregister("eph", 5, Vec::new(), will(), start).is_some());
        // A connection taken over loses its delayed will but not an immediate one.
        let (_, _rx) = connect(&mut r, "tk", 6, false, hour);
        let (_, _rx2) = connect(&mut r, "tk", 7, false, hour);
        assert!(r.unregister("tk", 6, Vec::new(), will(), start).is_none());
        assert!(r.unregister("tk", 6, Vec::new(), Some((msg("x"), Duration::ZERO)), start).is_some());
    }
}
