//! Who receives what: a topic trie of subscriptions, the connected clients' delivery queues,
//! and retained messages.
//!
//! Delivery never waits: each client has a bounded queue, and a message for a full queue is
//! dropped for that client only (and counted), so a slow consumer cannot stall anyone else.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use claimlink_mqtt::packet::{Publish, SubscriptionOptions};
use claimlink_mqtt::{QoS, TopicFilter, TopicName};
use tokio::sync::mpsc;

/// What a connection task receives from the router.
#[derive(Debug)]
pub enum Delivery {
    /// A message to send, shared by all its subscribers, and the QoS for this one (the lower
    /// of the published QoS and the subscription's maximum).
    Message(Arc<Publish>, QoS),
    /// Another connection took over this client identifier.
    TakenOver,
}

struct Online {
    connection: u64,
    tx: mpsc::Sender<Delivery>,
}

/// A client's session: its subscriptions live in the trie under its id; while it is offline,
/// QoS 1 and 2 messages wait in a bounded queue until it returns or the session expires.
struct Client<C> {
    online: Option<Online>,
    /// How long the session outlives its connection (zero: it ends with it).
    expiry: Duration,
    /// When the last connection ended.
    offline_since: Option<Instant>,
    queue: VecDeque<(Arc<Publish>, QoS)>,
    /// The context of the last connection, for receive authorisation while offline.
    context: Arc<C>,
}

/// The members of one shared subscription group (`$share/{group}/{filter}`) on one filter;
/// each message goes to one of them, in turn.
#[derive(Default)]
struct Group {
    members: Vec<(String, SubscriptionOptions)>,
    cursor: usize,
}

#[derive(Default)]
struct Node {
    subscribers: HashMap<String, SubscriptionOptions>,
    groups: HashMap<String, Group>,
    children: HashMap<String, Node>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.subscribers.is_empty() && self.groups.is_empty() && self.children.is_empty()
    }

    fn insert(
        &mut self,
        levels: &[&str],
        client: &str,
        group: Option<&str>,
        options: SubscriptionOptions,
    ) -> bool {
        let Some((level, rest)) = levels.split_first() else {
            let Some(group) = group else {
                return self.subscribers.insert(client.to_owned(), options).is_none();
            };
            let members = &mut self.groups.entry(group.to_owned()).or_default().members;
            return match members.iter_mut().find(|(c, _)| c == client) {
                Some(member) => {
                    member.1 = options;
                    false
                }
                None => {
                    members.push((client.to_owned(), options));
                    true
                }
            };
        };
        self.children.entry((*level).to_owned()).or_default().insert(rest, client, group, options)
    }

    fn remove(&mut self, levels: &[&str], client: &str, group: Option<&str>) -> bool {
        let Some((level, rest)) = levels.split_first() else {
            let Some(group) = group else { return self.subscribers.remove(client).is_some() };
            let Some(g) = self.groups.get_mut(group) else { return false };
            let before = g.members.len();
            g.members.retain(|(c, _)| c != client);
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
            g.members.retain(|(c, _)| c != client);
            !g.members.is_empty()
        });
        self.children.retain(|_, c| {
            c.remove_client(client);
            !c.is_empty()
        });
    }

    /// Collects subscribers whose filters match `levels` (one member per shared group); `first`
    /// applies the `$` rule.
    fn collect(&mut self, levels: &[&str], first: bool, out: &mut HashMap<String, QoS>) {
        let dollar = first && levels.first().is_some_and(|l| l.starts_with('$'));
        if !dollar {
            if let Some(hash) = self.children.get_mut("#") {
                hash.take(out);
            }
        }
        let Some((level, rest)) = levels.split_first() else {
            self.take(out);
            return;
        };
        if let Some(child) = self.children.get_mut(*level) {
            child.collect(rest, false, out);
        }
        if !dollar {
            if let Some(plus) = self.children.get_mut("+") {
                plus.collect(rest, false, out);
            }
        }
    }

    /// Adds this node's subscribers, and the next member of each group. A client's highest
    /// matching QoS wins when several of its filters match (section 3.3.4).
    fn take(&mut self, out: &mut HashMap<String, QoS>) {
        let mut add = |client: &String, qos: QoS| {
            let q = out.entry(client.clone()).or_insert(qos);
            *q = (*q).max(qos);
        };
        for (client, options) in &self.subscribers {
            add(client, options.qos);
        }
        for group in self.groups.values_mut() {
            group.cursor = (group.cursor + 1) % group.members.len().max(1);
            if let Some((client, options)) = group.members.get(group.cursor) {
                add(client, options.qos);
            }
        }
    }
}

/// A connection as the router needs it.
pub struct Registration<C> {
    /// The broker's id of the connection (to tell a stale unregister from a current one).
    pub connection: u64,
    /// Where deliveries go.
    pub tx: mpsc::Sender<Delivery>,
    /// The role's context for authorising deliveries.
    pub context: Arc<C>,
    /// How long the session outlives the connection.
    pub expiry: Duration,
}

impl<C> Client<C> {
    fn is_expired(&self, now: Instant) -> bool {
        self.online.is_none()
            && self.offline_since.is_some_and(|t| now.saturating_duration_since(t) >= self.expiry)
    }
}

/// Router state shared by all connections.
pub struct Router<C> {
    clients: HashMap<String, Client<C>>,
    trie: Node,
    retained: BTreeMap<String, Publish>,
    dropped: AtomicU64,
    /// Messages kept per offline session.
    max_offline: usize,
}

impl<C> Default for Router<C> {
    fn default() -> Self {
        Self {
            clients: HashMap::new(),
            trie: Node::default(),
            retained: BTreeMap::new(),
            dropped: AtomicU64::new(0),
            max_offline: 1000,
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
    /// new connection. Returns whether a session was present (CONNACK "session present").
    pub fn register(
        &mut self,
        client_id: &str,
        online: Registration<C>,
        clean_start: bool,
        now: Instant,
    ) -> bool {
        let Registration { connection, tx, context, expiry } = online;
        let expired = self.clients.get(client_id).is_some_and(|c| c.is_expired(now));
        let fresh = clean_start || expired || !self.clients.contains_key(client_id);
        if fresh {
            self.trie.remove_client(client_id);
        }
        let entry = self.clients.entry(client_id.to_owned()).or_insert_with(|| Client {
            online: None,
            expiry,
            offline_since: None,
            queue: VecDeque::new(),
            context: context.clone(),
        });
        if let Some(old) = entry.online.take() {
            let _ = old.tx.try_send(Delivery::TakenOver);
        }
        if fresh {
            entry.queue.clear();
        }
        for (message, qos) in entry.queue.drain(..) {
            if tx.try_send(Delivery::Message(message, qos)).is_err() {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        entry.expiry = expiry;
        entry.offline_since = None;
        entry.context = context;
        entry.online = Some(Online { connection, tx });
        !fresh
    }

    /// Ends a connection, unless a newer one already took its client id. A session with an
    /// expiry stays, with `unacknowledged` messages queued first for its next connection.
    pub fn unregister(
        &mut self,
        client_id: &str,
        connection: u64,
        unacknowledged: Vec<Publish>,
        now: Instant,
    ) {
        let Some(client) = self.clients.get_mut(client_id) else { return };
        if client.online.as_ref().is_none_or(|o| o.connection != connection) {
            return;
        }
        client.online = None;
        if client.expiry.is_zero() {
            self.clients.remove(client_id);
            self.trie.remove_client(client_id);
            return;
        }
        client.offline_since = Some(now);
        for m in unacknowledged.into_iter().rev() {
            let qos = m.qos;
            client.queue.push_front((Arc::new(m), qos));
        }
        client.queue.truncate(self.max_offline);
    }

    /// Removes offline sessions whose expiry has passed. Returns how many.
    pub fn sweep(&mut self, now: Instant) -> usize {
        let expired: Vec<String> =
            self.clients.iter().filter(|(_, c)| c.is_expired(now)).map(|(id, _)| id.clone()).collect();
        for id in &expired {
            self.clients.remove(id);
            self.trie.remove_client(id);
        }
        expired.len()
    }

    /// Adds a subscription (replacing one on the same filter). Returns whether it is new.
    pub fn subscribe(&mut self, client_id: &str, filter: &TopicFilter, options: SubscriptionOptions) -> bool {
        let levels: Vec<&str> = filter.pattern().split('/').collect();
        self.trie.insert(&levels, client_id, filter.shared().map(|(g, _)| g), options)
    }

    /// Removes a subscription. Returns whether it existed.
    pub fn unsubscribe(&mut self, client_id: &str, filter: &TopicFilter) -> bool {
        let levels: Vec<&str> = filter.pattern().split('/').collect();
        self.trie.remove(&levels, client_id, filter.shared().map(|(g, _)| g))
    }

    /// Stores or clears (empty payload) the retained message of a topic.
    pub fn retain(&mut self, message: &Publish) {
        if message.payload.is_empty() {
            self.retained.remove(&message.topic);
        } else {
            let mut kept = message.clone();
            kept.dup = false;
            kept.packet_id = None;
            kept.properties.topic_alias = None;
            self.retained.insert(message.topic.clone(), kept);
        }
    }

    /// Retained messages matching `filter`.
    pub fn retained_for(&self, filter: &TopicFilter) -> Vec<Publish> {
        self.retained
            .values()
            .filter(|m| TopicName::new(m.topic.as_str()).is_ok_and(|t| filter.matches(&t)))
            .cloned()
            .collect()
    }

    /// Delivers `message` to every matching subscriber that `may_receive` allows. Returns how
    /// many queues took it.
    pub fn publish(
        &mut self,
        topic: &TopicName,
        message: &Publish,
        may_receive: impl Fn(&C) -> bool,
    ) -> usize {
        let levels: Vec<&str> = topic.levels().collect();
        let mut targets = HashMap::new();
        self.trie.collect(&levels, true, &mut targets);
        let mut shared = message.clone();
        shared.retain = false;
        shared.dup = false;
        shared.packet_id = None;
        shared.properties.topic_alias = None;
        let shared = Arc::new(shared);
        let mut delivered = 0;
        for (client_id, qos) in targets {
            let Some(client) = self.clients.get_mut(&client_id) else { continue };
            if !may_receive(&client.context) {
                continue;
            }
            let qos = shared.qos.min(qos);
            match &client.online {
                Some(online) => match online.tx.try_send(Delivery::Message(shared.clone(), qos)) {
                    Ok(()) => delivered += 1,
                    Err(_) => {
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                },
                // Offline with a session: QoS 1 and 2 wait (section 4.1); QoS 0 may be dropped.
                None if qos != QoS::AtMostOnce && client.queue.len() < self.max_offline => {
                    client.queue.push_back((shared.clone(), qos));
                    delivered += 1;
                }
                None => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        delivered
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

    fn client(r: &mut Router<()>, id: &str, conn: u64) -> mpsc::Receiver<Delivery> {
        connect(r, id, conn, true, Duration::ZERO).1
    }

    fn connect(
        r: &mut Router<()>,
        id: &str,
        conn: u64,
        clean: bool,
        expiry: Duration,
    ) -> (bool, mpsc::Receiver<Delivery>) {
        let (tx, rx) = mpsc::channel(2);
        let present = r.register(
            id,
            Registration { connection: conn, tx, context: Arc::new(()), expiry },
            clean,
            Instant::now(),
        );
        (present, rx)
    }

    #[test]
    fn the_trie_matches_like_the_filter_definition() {
        let mut r = Router::default();
        let cases = ["a/b", "a/+", "a/#", "#", "+/b", "$SYS/#", "+/+"];
        let mut receivers = Vec::new();
        for (i, f) in cases.iter().enumerate() {
            receivers.push(client(&mut r, &format!("c{i}"), i as u64));
            r.subscribe(
                &format!("c{i}"),
                &TopicFilter::new(*f).unwrap(),
                SubscriptionOptions::qos(QoS::AtLeastOnce),
            );
        }
        for topic in ["a/b", "a", "x/b", "$SYS/x", "a/b/c"] {
            let name = TopicName::new(topic).unwrap();
            let levels: Vec<&str> = name.levels().collect();
            let mut got = HashMap::new();
            r.trie.collect(&levels, true, &mut got);
            for (i, f) in cases.iter().enumerate() {
                let expected = TopicFilter::new(*f).unwrap().matches(&name);
                assert_eq!(got.contains_key(&format!("c{i}")), expected, "{f} vs {topic}");
            }
        }
    }

    #[test]
    fn takeover_unsubscribes_the_old_connection_and_tells_it() {
        let mut r = Router::default();
        let mut old = client(&mut r, "dev", 1);
        r.subscribe("dev", &TopicFilter::new("t").unwrap(), SubscriptionOptions::qos(QoS::AtMostOnce));
        let _new = client(&mut r, "dev", 2);
        assert!(matches!(old.try_recv(), Ok(Delivery::TakenOver)));
        assert_eq!(
            r.publish(&TopicName::new("t").unwrap(), &msg("t"), |_| true),
            0,
            "subscriptions did not survive takeover"
        );
        r.unregister("dev", 1, Vec::new(), Instant::now());
        assert_eq!(r.clients(), 1, "the old connection's exit leaves the new one registered");
    }

    #[test]
    fn a_full_queue_drops_for_that_client_only_and_qos_is_capped() {
        let mut r = Router::default();
        let mut slow = client(&mut r, "slow", 1);
        let mut fast = client(&mut r, "fast", 2);
        for c in ["slow", "fast"] {
            r.subscribe(c, &TopicFilter::new("t").unwrap(), SubscriptionOptions::qos(QoS::AtMostOnce));
        }
        let t = TopicName::new("t").unwrap();
        for _ in 0..2 {
            assert_eq!(r.publish(&t, &msg("t"), |_| true), 2);
        }
        // Drain only the fast one; the slow queue (capacity 2) is full.
        while let Ok(Delivery::Message(m, qos)) = fast.try_recv() {
            assert_eq!(qos, QoS::AtMostOnce, "capped at the subscription QoS");
            assert!(!m.retain && m.packet_id.is_none());
        }
        assert_eq!(r.publish(&t, &msg("t"), |_| true), 1);
        assert_eq!(r.dropped(), 1);
        assert!(slow.try_recv().is_ok());
    }

    #[test]
    fn a_persistent_session_keeps_subscriptions_and_queues_while_offline() {
        let mut r = Router::default();
        let hour = Duration::from_secs(3600);
        let (present, _rx) = connect(&mut r, "dev", 1, false, hour);
        assert!(!present);
        r.subscribe("dev", &TopicFilter::new("cmd/#").unwrap(), SubscriptionOptions::qos(QoS::AtLeastOnce));
        let now = Instant::now();
        let unacked = msg("cmd/unacked");
        r.unregister("dev", 1, vec![unacked], now);
        assert_eq!((r.clients(), r.sessions()), (0, 1));
        let t = TopicName::new("cmd/go").unwrap();
        assert_eq!(r.publish(&t, &msg("cmd/go"), |_| true), 1, "queued for the offline session");
        let mut qos0 = msg("cmd/go");
        qos0.qos = QoS::AtMostOnce;
        assert_eq!(r.publish(&t, &qos0, |_| true), 0, "QoS 0 is not kept");
        let (present, mut rx) = connect(&mut r, "dev", 2, false, hour);
        assert!(present);
        let topics: Vec<String> = std::iter::from_fn(|| match rx.try_recv() {
            Ok(Delivery::Message(m, _)) => Some(m.topic.clone()),
            _ => None,
        })
        .collect();
        assert_eq!(topics, ["cmd/unacked", "cmd/go"], "unacknowledged first, then what came while away");
        // Subscriptions survived: a new message is delivered live.
        assert_eq!(r.publish(&t, &msg("cmd/go"), |_| true), 1);
        // A clean start throws the session away.
        r.unregister("dev", 2, Vec::new(), now);
        let (present, _rx) = connect(&mut r, "dev", 3, true, hour);
        assert!(!present);
        assert_eq!(r.publish(&t, &msg("cmd/go"), |_| true), 0, "subscriptions are gone");
    }

    #[test]
    fn sessions_expire() {
        let mut r = Router::default();
        let (_, _rx) = connect(&mut r, "dev", 1, false, Duration::from_secs(10));
        let start = Instant::now();
        r.unregister("dev", 1, Vec::new(), start);
        assert_eq!(r.sweep(start + Duration::from_secs(9)), 0);
        assert_eq!(r.sweep(start + Duration::from_secs(10)), 1);
        assert_eq!(r.sessions(), 0);
        // Expiry zero: the session ends with the connection.
        let (_, _rx) = connect(&mut r, "eph", 2, false, Duration::ZERO);
        r.unregister("eph", 2, Vec::new(), start);
        assert_eq!(r.sessions(), 0);
    }

    #[test]
    fn a_shared_group_gets_each_message_once_in_turn() {
        let mut r = Router::default();
        let mut a = client(&mut r, "a", 1);
        let mut b = client(&mut r, "b", 2);
        let mut plain = client(&mut r, "p", 3);
        let shared = TopicFilter::new("$share/workers/jobs/+").unwrap();
        r.subscribe("a", &shared, SubscriptionOptions::qos(QoS::AtLeastOnce));
        r.subscribe("b", &shared, SubscriptionOptions::qos(QoS::AtLeastOnce));
        r.subscribe("p", &TopicFilter::new("jobs/#").unwrap(), SubscriptionOptions::qos(QoS::AtLeastOnce));
        let t = TopicName::new("jobs/1").unwrap();
        let count = |rx: &mut mpsc::Receiver<Delivery>| std::iter::from_fn(|| rx.try_recv().ok()).count();
        for _ in 0..2 {
            assert_eq!(
                r.publish(&t, &msg("jobs/1"), |_| true),
                2,
                "one group member and the plain subscriber"
            );
        }
        assert_eq!((count(&mut a), count(&mut b), count(&mut plain)), (1, 1, 2));
        // A member that leaves no longer gets a turn.
        r.unsubscribe("a", &shared);
        r.publish(&t, &msg("jobs/1"), |_| true);
        r.publish(&t, &msg("jobs/1"), |_| true);
        assert_eq!((count(&mut a), count(&mut b)), (0, 2));
    }

    #[test]
    fn retained_messages_are_stored_cleared_and_matched() {
        let mut r: Router<()> = Router::default();
        r.retain(&msg("a/b"));
        r.retain(&msg("a/c"));
        assert_eq!(r.retained_for(&TopicFilter::new("a/+").unwrap()).len(), 2);
        let mut clear = msg("a/b");
        clear.payload = Bytes::new();
        r.retain(&clear);
        let left = r.retained_for(&TopicFilter::new("#").unwrap());
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].packet_id, None);
    }
}
