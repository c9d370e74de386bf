"""MQTT 3.1.1 and 5 scenarios against a broker on 127.0.0.1:PORT with paho-mqtt (an independent
client implementation). Usage: scenarios.py PORT. Prints one line per scenario, "ok NAME" or
"FAIL NAME: why", and exits non-zero if any failed."""

import sys
import threading
import time
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

PORT = int(sys.argv[1])
TIMEOUT = 5.0


def client(version, cid=None, **kw):
    cid = cid or "paho-" + uuid.uuid4().hex[:8]
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=version, **kw)
    c.inbox = []
    c.got = threading.Event()
    c.on_message = lambda cl, ud, msg: (c.inbox.append((msg.topic, msg.payload, msg.retain)), c.got.set())
    return c


def connect(c, version, clean=True, props=None):
    if version == mqtt.MQTTv5:
        rc = c.connect("127.0.0.1", PORT, keepalive=30, clean_start=clean, properties=props)
    else:
        rc = c.connect("127.0.0.1", PORT, keepalive=30)
    c.loop_start()
    return rc


def wait_for(c, n):
    deadline = time.time() + TIMEOUT
    while len(c.inbox) < n and time.time() < deadline:
        time.sleep(0.02)
    return len(c.inbox) >= n


def subscribe(c, topic, qos=1):
    done = threading.Event()
    c.on_subscribe = lambda *a: done.set()
    c.subscribe(topic, qos)
    assert done.wait(TIMEOUT), "no SUBACK"


def stop(*clients):
    for c in clients:
        c.disconnect()
        c.loop_stop()


def pubsub(version):
    sub, pub = client(version), client(version)
    connect(sub, version), connect(pub, version)
    subscribe(sub, "paho/pubsub/#")
    for q in (0, 1, 2):
        pub.publish("paho/pubsub/%d" % q, b"q%d" % q, qos=q).wait_for_publish(TIMEOUT)
    assert wait_for(sub, 3), sub.inbox
    assert sorted(p for _, p, _ in sub.inbox) == [b"q0", b"q1", b"q2"], sub.inbox
    stop(sub, pub)


def session_resume(version):
    cid = "paho-resume-" + uuid.uuid4().hex[:6]
    props = None
    if version == mqtt.MQTTv5:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 60
    kw = {} if version == mqtt.MQTTv5 else {"clean_session": False}
    a = client(version, cid, **kw)
    connect(a, version, clean=False, props=props)
    subscribe(a, "paho/resume/+")
    stop(a)
    pub = client(version)
    connect(pub, version)
    pub.publish("paho/resume/x", b"while-away", qos=1).wait_for_publish(TIMEOUT)
    stop(pub)
    b = client(version, cid, **kw)
    present = threading.Event()
    b.on_connect = lambda cl, ud, flags, rc, pr=None: present.set() if flags.session_present else None
    connect(b, version, clean=False, props=props)
    assert wait_for(b, 1), "queued message not delivered on resume"
    assert present.wait(TIMEOUT), "CONNACK session present not set"
    assert b.inbox[0][1] == b"while-away"
    stop(b)


def will_delay_zero(version):
    # The will of a client that vanishes reaches a watcher (delay 0: at once).
    watcher = client(version)
    connect(watcher, version)
    subscribe(watcher, "paho/will/+")
    doomed = client(version)
    doomed.will_set("paho/will/gone", b"bye", qos=1)
    connect(doomed, version)
    time.sleep(0.3)
    vanish(doomed)
    assert wait_for(watcher, 1), "no will"
    stop(watcher)


def vanish(c):
    c._sock.close()  # no DISCONNECT
    c.loop_stop()


def will_delay():
    # MQTT 5 Will Delay Interval: the will waits; a return within the delay cancels it.
    watcher = client(mqtt.MQTTv5)
    connect(watcher, mqtt.MQTTv5)
    subscribe(watcher, "paho/willdelay/+")
    session = Properties(PacketTypes.CONNECT)
    session.SessionExpiryInterval = 60
    delayed = Properties(PacketTypes.WILLMESSAGE)
    delayed.WillDelayInterval = 2
    cid = "paho-wd-" + uuid.uuid4().hex[:6]
    doomed = client(mqtt.MQTTv5, cid)
    doomed.will_set("paho/willdelay/late", b"late", qos=1, properties=delayed)
    connect(doomed, mqtt.MQTTv5, clean=False, props=session)
    time.sleep(0.3)
    t0 = time.time()
    vanish(doomed)
    time.sleep(1.2)
    assert not watcher.inbox, "will published before its delay"
    assert wait_for(watcher, 1), "no will after the delay"
    assert time.time() - t0 >= 1.9, "too early"
    # Returning within the delay cancels the will.
    cid = "paho-wd-" + uuid.uuid4().hex[:6]
    back = client(mqtt.MQTTv5, cid)
    back.will_set("paho/willdelay/cancelled", b"no", qos=1, properties=delayed)
    connect(back, mqtt.MQTTv5, clean=False, props=session)
    time.sleep(0.3)
    vanish(back)
    time.sleep(0.3)
    again = client(mqtt.MQTTv5, cid)
    connect(again, mqtt.MQTTv5, clean=False, props=session)
    time.sleep(3.5)
    assert [t for t, _, _ in watcher.inbox] == ["paho/willdelay/late"], watcher.inbox
    stop(watcher, again)


def message_expiry():
    pub = client(mqtt.MQTTv5)
    connect(pub, mqtt.MQTTv5)
    short = Properties(PacketTypes.PUBLISH)
    short.MessageExpiryInterval = 1
    pub.publish("paho/expiry/short", b"gone", qos=1, retain=True, properties=short).wait_for_publish(TIMEOUT)
    long = Properties(PacketTypes.PUBLISH)
    long.MessageExpiryInterval = 60
    pub.publish("paho/expiry/long", b"kept", qos=1, retain=True, properties=long).wait_for_publish(TIMEOUT)
    time.sleep(2.2)
    sub = client(mqtt.MQTTv5)
    got = []
    sub.on_message = lambda cl, ud, m: got.append((m.topic, getattr(m.properties, "MessageExpiryInterval", None)))
    connect(sub, mqtt.MQTTv5)
    subscribe(sub, "paho/expiry/+")
    time.sleep(0.5)
    assert len(got) == 1 and got[0][0] == "paho/expiry/long", got
    assert got[0][1] is not None and 55 <= got[0][1] <= 58, "expiry not counted down: %r" % got
    for t in ("paho/expiry/short", "paho/expiry/long"):
        pub.publish(t, b"", qos=1, retain=True).wait_for_publish(TIMEOUT)
    stop(pub, sub)


def no_local_and_subscription_ids():
    from paho.mqtt.subscribeoptions import SubscribeOptions

    me, other = client(mqtt.MQTTv5), client(mqtt.MQTTv5)
    ids = []
    me.on_message = lambda cl, ud, m: (
        me.inbox.append((m.topic, m.payload, m.retain)),
        ids.append(getattr(m.properties, "SubscriptionIdentifier", None)),
    )
    connect(me, mqtt.MQTTv5), connect(other, mqtt.MQTTv5)
    done = threading.Event()
    me.on_subscribe = lambda *a: done.set()
    props = Properties(PacketTypes.SUBSCRIBE)
    props.SubscriptionIdentifier = 42
    me.subscribe("paho/nolocal", options=SubscribeOptions(qos=1, noLocal=True), properties=props)
    assert done.wait(TIMEOUT), "no SUBACK"
    me.publish("paho/nolocal", b"mine", qos=1).wait_for_publish(TIMEOUT)
    other.publish("paho/nolocal", b"theirs", qos=1).wait_for_publish(TIMEOUT)
    assert wait_for(me, 1)
    time.sleep(0.3)
    assert [p for _, p, _ in me.inbox] == [b"theirs"], me.inbox
    assert ids == [[42]], ids
    stop(me, other)


def outgoing_topic_alias():
    # The subscriber allows 1 alias. paho-mqtt does not resolve incoming aliases itself, so this
    # checks the wire: the first topic carries alias 1 once, repeats are sent as the alias only,
    # and a second topic (no alias left) is sent in full. (mosquitto_sub, which does resolve
    # them, is checked in broker_interop.rs.)
    props = Properties(PacketTypes.CONNECT)
    props.TopicAliasMaximum = 1
    sub, pub = client(mqtt.MQTTv5), client(mqtt.MQTTv5)
    seen = []
    sub.on_message = lambda cl, ud, m: (
        sub.inbox.append((m.topic, m.payload, m.retain)),
        seen.append((m.topic, getattr(m.properties, "TopicAlias", None))),
    )
    connect(sub, mqtt.MQTTv5, props=props), connect(pub, mqtt.MQTTv5)
    subscribe(sub, "paho/outalias/#")
    for t in ("paho/outalias/a", "paho/outalias/b", "paho/outalias/a", "paho/outalias/a"):
        pub.publish(t, b"x", qos=1).wait_for_publish(TIMEOUT)
    assert wait_for(sub, 4), sub.inbox
    assert seen == [("paho/outalias/a", 1), ("paho/outalias/b", None), ("", 1), ("", 1)], seen
    stop(sub, pub)


def request_response():
    # Response Topic, Correlation Data, content type and user properties reach the subscriber
    # unchanged (MQTT 5 request/response).
    responder, requester = client(mqtt.MQTTv5), client(mqtt.MQTTv5)
    got = []
    responder.on_message = lambda cl, ud, m: got.append(m.properties)
    connect(responder, mqtt.MQTTv5), connect(requester, mqtt.MQTTv5)
    subscribe(responder, "paho/rpc/request")
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = "paho/rpc/reply/42"
    props.CorrelationData = b"\x00\x01corr"
    props.ContentType = "application/json"
    props.UserProperty = [("k", "v"), ("k", "w")]
    requester.publish("paho/rpc/request", b"{}", qos=1, properties=props).wait_for_publish(TIMEOUT)
    deadline = time.time() + TIMEOUT
    while not got and time.time() < deadline:
        time.sleep(0.02)
    assert got, "no request"
    p = got[0]
    assert p.ResponseTopic == "paho/rpc/reply/42", p
    assert p.CorrelationData == b"\x00\x01corr", p
    assert p.ContentType == "application/json", p
    assert p.UserProperty == [("k", "v"), ("k", "w")], p
    stop(responder, requester)


def topic_alias():
    sub, pub = client(mqtt.MQTTv5), client(mqtt.MQTTv5)
    connect(sub, mqtt.MQTTv5), connect(pub, mqtt.MQTTv5)
    subscribe(sub, "paho/alias/long/topic/name")
    first = Properties(PacketTypes.PUBLISH)
    first.TopicAlias = 1
    pub.publish("paho/alias/long/topic/name", b"one", qos=1, properties=first).wait_for_publish(TIMEOUT)
    again = Properties(PacketTypes.PUBLISH)
    again.TopicAlias = 1
    pub.publish("", b"two", qos=1, properties=again).wait_for_publish(TIMEOUT)
    assert wait_for(sub, 2), sub.inbox
    assert [t for t, _, _ in sub.inbox] == ["paho/alias/long/topic/name"] * 2, sub.inbox
    stop(sub, pub)


def shared_subscription():
    members = [client(mqtt.MQTTv5) for _ in range(2)]
    for m in members:
        connect(m, mqtt.MQTTv5)
        subscribe(m, "$share/g/paho/shared/#")
    pub = client(mqtt.MQTTv5)
    connect(pub, mqtt.MQTTv5)
    for i in range(6):
        pub.publish("paho/shared/%d" % i, b"x", qos=1).wait_for_publish(TIMEOUT)
    time.sleep(0.5)
    counts = [len(m.inbox) for m in members]
    assert counts == [3, 3], counts
    stop(pub, *members)


def flow_control():
    # The client announces Receive Maximum 2; 20 QoS 1 messages must all arrive anyway.
    props = Properties(PacketTypes.CONNECT)
    props.ReceiveMaximum = 2
    sub, pub = client(mqtt.MQTTv5), client(mqtt.MQTTv5)
    connect(sub, mqtt.MQTTv5, props=props), connect(pub, mqtt.MQTTv5)
    subscribe(sub, "paho/flow")
    for i in range(20):
        pub.publish("paho/flow", b"%d" % i, qos=1)
    assert wait_for(sub, 20), len(sub.inbox)
    assert [int(p) for _, p, _ in sub.inbox] == list(range(20)), "order or loss"
    stop(sub, pub)


SCENARIOS = [
    ("pubsub 3.1.1", lambda: pubsub(mqtt.MQTTv311)),
    ("pubsub 5", lambda: pubsub(mqtt.MQTTv5)),
    ("session resume 3.1.1", lambda: session_resume(mqtt.MQTTv311)),
    ("session resume 5", lambda: session_resume(mqtt.MQTTv5)),
    ("will 3.1.1", lambda: will_delay_zero(mqtt.MQTTv311)),
    ("will 5", lambda: will_delay_zero(mqtt.MQTTv5)),
    ("will delay 5", will_delay),
    ("message expiry 5", message_expiry),
    ("no local and subscription ids 5", no_local_and_subscription_ids),
    ("request/response 5", request_response),
    ("topic alias 5", topic_alias),
    ("outgoing topic alias 5", outgoing_topic_alias),
    ("shared subscription 5", shared_subscription),
    ("flow control 5", flow_control),
]

failed = 0
for name, run in SCENARIOS:
    try:
        run()
        print("ok", name, flush=True)
    except Exception as e:  # report every scenario, then fail
        failed += 1
        print("FAIL %s: %r" % (name, e), flush=True)
sys.exit(1 if failed else 0)
