"""Drives paho-mqtt clients (an independent MQTT 5 implementation) for claimlink's end-to-end
tests, one JSON command per stdin line, one JSON result per stdout line.

Commands ({"op": ...}):
  connect     name, cid, port, [sni], [ca], [cert], [key], [clean], [v311],
              [will_topic, will_payload, will_retain], [session_expiry], [username, password]
              -> {"rc": reason code value[, "session_present": true]} or {"error": "..."}
                 (TLS handshake refused, ...)
  subscribe   name, topic, [qos]          -> {"codes": [reason code values]}
  publish     name, topic, payload, [qos], [retain]
              -> {"rc": PUBACK reason code value} (QoS 1) or {"rc": 0} (QoS 0)
  expect      name, count, [timeout]      -> {"messages": [[topic, payload], ...]}
  disconnected name, [timeout]            -> {"rc": reason value or null if still connected}
                                             (a client found gone does not reconnect)
  disconnect  name, [session_expiry]      -> {}   (MQTT 5: the interval set in DISCONNECT)
  drop        name                        -> {}   (closes the socket without DISCONNECT)
Connections go to 127.0.0.1:port; the TLS server name (SNI, and the name the server
certificate is checked against) is `sni`, or none when absent.
"""

import json
import ssl
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

TIMEOUT = 10.0


class Loopback(mqtt.Client):
    """A client whose TCP connection always goes to 127.0.0.1, whatever host name it uses for
    SNI and certificate checks."""

    def _create_socket_connection(self):
        import socket

        return socket.create_connection(("127.0.0.1", self._port), timeout=self._connect_timeout)


clients = {}


def value(rc):
    return rc.value if hasattr(rc, "value") else int(rc)


def connect(cmd):
    v5 = not cmd.get("v311")
    c = Loopback(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=cmd["cid"],
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
    )
    state = {"connected": threading.Event(), "rc": None, "messages": [], "acks": {}, "subs": {},
             "gone": threading.Event(), "gone_rc": None, "lock": threading.Lock()}
    c.state = state

    def on_connect(cl, ud, flags, rc, props=None):
        state["rc"] = value(rc)
        state["session_present"] = bool(getattr(flags, "session_present", False))
        state["connected"].set()

    def on_disconnect(cl, ud, flags, rc, props=None):
        state["gone_rc"] = value(rc)
        state["gone"].set()
        state["connected"].set()

    def on_message(cl, ud, msg):
        with state["lock"]:
            state["messages"].append([msg.topic, msg.payload.decode("utf-8", "replace")])

    def on_publish(cl, ud, mid, rc, props=None):
        state["acks"][mid] = value(rc)

    def on_subscribe(cl, ud, mid, codes, props=None):
        state["subs"][mid] = [value(x) for x in codes]

    c.on_connect, c.on_disconnect, c.on_message = on_connect, on_disconnect, on_message
    c.on_publish, c.on_subscribe = on_publish, on_subscribe
    if cmd.get("cert"):
        ctx = ssl.create_default_context(cafile=cmd["ca"])
        ctx.load_cert_chain(cmd["cert"], cmd["key"])
        if not cmd.get("sni"):
            ctx.check_hostname = False
        c.tls_set_context(ctx)
    if cmd.get("username") is not None:
        c.username_pw_set(cmd["username"], cmd.get("password"))
    if cmd.get("will_topic"):
        c.will_set(cmd["will_topic"], cmd.get("will_payload", "").encode(), qos=1,
                   retain=cmd.get("will_retain", False))
    host = cmd.get("sni") or "127.0.0.1"
    try:
        if v5:
            props = None
            if "session_expiry" in cmd:
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = cmd["session_expiry"]
            c.connect(host, cmd["port"], keepalive=30, clean_start=cmd.get("clean", True), properties=props)
        else:
            c.connect(host, cmd["port"], keepalive=30)
    except Exception as e:  # the TLS handshake was refused, or the socket closed
        return {"error": type(e).__name__ + ": " + str(e)}
    c.loop_start()
    if not state["connected"].wait(TIMEOUT):
        return {"error": "no CONNACK"}
    clients[cmd["name"]] = c
    if state["rc"] is None:
        return {"error": "closed before CONNACK", "disconnect_rc": state["gone_rc"]}
    if state["rc"] != 0:
        # A refused CONNECT: no automatic reconnection behind the test's back.
        c.loop_stop()
        try:
            c.disconnect()
        except Exception:
            pass
    result = {"rc": state["rc"]}
    if state.get("session_present"):
        result["session_present"] = True
    return result


def wait_for(pred, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


def run(cmd):
    op = cmd["op"]
    if op == "connect":
        return connect(cmd)
    c = clients[cmd["name"]]
    s = c.state
    if op == "subscribe":
        rc, mid = c.subscribe(cmd["topic"], cmd.get("qos", 1))
        if not wait_for(lambda: mid in s["subs"], TIMEOUT):
            return {"error": "no SUBACK", "disconnect_rc": s["gone_rc"]}
        return {"codes": s["subs"][mid]}
    if op == "publish":
        qos = cmd.get("qos", 1)
        info = c.publish(cmd["topic"], cmd["payload"].encode(), qos=qos, retain=cmd.get("retain", False))
        if qos == 0:
            return {"rc": 0}
        if not wait_for(lambda: info.mid in s["acks"] or s["gone"].is_set(), TIMEOUT):
            return {"error": "no PUBACK"}
        if info.mid not in s["acks"]:
            return {"error": "disconnected", "disconnect_rc": s["gone_rc"]}
        return {"rc": s["acks"][info.mid]}
    if op == "expect":
        wait_for(lambda: len(s["messages"]) >= cmd["count"], cmd.get("timeout", TIMEOUT))
        with s["lock"]:
            got, s["messages"] = s["messages"], []
        return {"messages": got}
    if op == "disconnected":
        s["gone"].wait(cmd.get("timeout", TIMEOUT))
        if not s["gone"].is_set():
            return {"rc": None}
        c.loop_stop()  # the test decides whether it comes back, not paho's reconnection
        return {"rc": s["gone_rc"]}
    if op == "disconnect":
        props = None
        if "session_expiry" in cmd:
            props = Properties(PacketTypes.DISCONNECT)
            props.SessionExpiryInterval = cmd["session_expiry"]
        c.disconnect(properties=props)
        s["gone"].wait(TIMEOUT)
        c.loop_stop()
        return {"rc": s["gone_rc"]}
    if op == "drop":
        c.loop_stop()
        c.socket().close()
        return {}
    return {"error": "unknown op " + op}


for line in sys.stdin:
    line = line.strip()
    if not line:
        continue
    try:
        result = run(json.loads(line))
    except Exception as e:
        result = {"error": "driver: " + type(e).__name__ + ": " + str(e)}
    print(json.dumps(result), flush=True)
