"""NATS Server with JetStream as Civicflow's MQTT broker, run from the example in deploy/nats/.

Each server here is rendered from deploy/nats/ by `deploy_nats_config` (test addresses and
store directory, no TLS, ack_wait shortened), with deploy/nats/accounts.conf as it is and a
secrets.conf of made-up passwords for the users of secrets.conf.example. The gateway simulator and
`civicflow listen` run unchanged against it: readings published at QoS 1 land with none lost
across a SIGKILL of the listener and a SIGKILL and restart of nats-server, both mid-stream; the
users' permissions hold, the feedback grants included (only civicflow-feedback writes a
council's retained summaries, only that council's gateways read them, at QoS 0); NATS does not
honour shared subscriptions, so councils are sharded across listeners instead
(CIVICFLOW_MQTT__COUNCILS); and the three-node example replicates every MQTT stream and consumer
three times and keeps landing with a node down.

One single-node server serves the module; the tests that kill it restart it before they end.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from brokers import Collector, deploy_nats_config, free_port
from listeners import ListenerProcess, landed_payloads, wait_for
from natsbroker import (
    CHIRPSTACK_UPLINK,
    DEPLOY_NATS,
    HOST,
    NATS_SERVER,
    TEST_ACK_WAIT,
    USERS,
    Gateway,
    NatsServer,
    install_accounts,
    single_node,
)
from paho.mqtt.enums import CallbackAPIVersion

from civicflow.ingest.feedback import FeedbackTarget, encode_summary
from civicflow.ingest.feedback import publish_summaries as publish_feedback
from civicflow.ingest.gateway import publish_messages
from civicflow.ingest.listener import BrokerAddress
from civicflow.ingest.probe import probe_broker
from civicflow.warehouse.segments import list_closed_segments, read_segment

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def nats(tmp_path_factory) -> Iterator[NatsServer]:
    server = single_node(tmp_path_factory.mktemp("nats")).start()
    try:
        yield server
    finally:
        server.stop()


# -- Gateways and listeners -------------------------------------------------------------------


def readings(council: str, start: int, stop: int) -> Iterator[tuple[str, bytes]]:
    for i in range(start, stop):
        yield f"city/{council}/parking/p{i % 7}", b'{"council":"%s","seq":%d}' % (council.encode(), i)


def held(first: Iterable, gate: threading.Event, then: Iterable) -> Iterator:
    """`first`, then `then` once `gate` is set: the gateway stays connected between the two, so a
    kill between them falls in the middle of its stream."""
    yield from first
    if not gate.wait(timeout=120):
        raise TimeoutError("the second stretch of readings was never released")
    yield from then


def listener(
    tmp_path: Path, server: NatsServer, user: str, *, client_id: str | None = None, **env: str
) -> ListenerProcess:
    return ListenerProcess(
        tmp_path / "data",
        server.mqtt_port,
        tmp_path / f"{client_id or user}.log",
        client_id=client_id or user,
        CIVICFLOW_MQTT__USERNAME=user,
        CIVICFLOW_MQTT__PASSWORD=USERS[user],
        # Closed sooner than ListenerProcess's 1 s: the tests wait for closed segments.
        CIVICFLOW_LANDING__SEGMENT_MAX_AGE_S="0.25",
        **env,
    )


def seqs_by_council(payloads: list[bytes]) -> dict[str, set[int]]:
    found: dict[str, set[int]] = {}
    for payload in payloads:
        doc = json.loads(payload)
        found.setdefault(doc["council"], set()).add(doc["seq"])
    return found


def landed_all(root: Path, expected: dict[str, set[int]], client_id: str | None = None):
    """A predicate: the closed segments under the raw zone `root` (only those of `client_id`, if
    given) hold exactly the expected readings."""
    if client_id is None:
        return lambda: seqs_by_council(landed_payloads(root)) == expected
    return lambda: seqs_by_council(payloads_of(root, client_id)) == expected


def payloads_of(root: Path, client_id: str) -> list[bytes]:
    return [
        r.payload for p in list_closed_segments(root) if p.parent.name == client_id for r in read_segment(p)
    ]


def forget_session(server: NatsServer, user: str, client_id: str) -> None:
    """Connect once with a clean session, so the module's server keeps no consumer of this test."""
    done = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    client.username_pw_set(user, USERS[user])
    client.on_connect = lambda *args: done.set()
    client.connect(HOST, server.mqtt_port)
    client.loop_start()
    try:
        assert done.wait(10), f"no CONNACK for {client_id}"
    finally:
        client.disconnect()
        client.loop_stop()


# -- Tests --------------------------------------------------------------------------------------


def test_listener_killed_mid_stream_loses_no_reading(nats, tmp_path):
    """SIGKILL of the listener while a gateway publishes: JetStream keeps what came meanwhile and
    sends again what the killed process had not acknowledged; the restart lands all of it."""
    n = 3_000
    gate = threading.Event()
    lp = listener(tmp_path, nats, "civicflow-listener-1").start()
    try:
        lp.wait_subscribed()
        gateway = Gateway(
            nats.mqtt_port,
            "gw-birmingham-1",
            held(readings("birmingham", 0, n // 2), gate, readings("birmingham", n // 2, n)),
        )
        lp.wait_for(lambda: lp.status().get("acked", 0) >= 1_000, 60, "landing")
        lp.kill()
        acked_before_kill = lp.status()["acked"]
        gate.set()  # the second half arrives while no listener is connected
        lp.start()
        gateway.finish()
        lp.wait_subscribed()
        lp.wait_for(landed_all(tmp_path / "data" / "raw", {"birmingham": set(range(n))}), 120, "landing all")
        # Every reading acknowledged to JetStream: its interest-retained stream is empty again.
        lp.wait_for(lambda: nats.account_streams()["$MQTT_msgs"]["state"]["messages"] == 0, 60, "acking")
        after = lp.own_status()
        assert lp.terminate() == 0
    finally:
        lp.ensure_stopped()
    forget_session(nats, "civicflow-listener-1", lp.client_id)
    assert 1_000 <= acked_before_kill < n
    assert (after["protocol"], after["sessions_lost"]) == ("3.1.1", 0)
    assert len(landed_payloads(tmp_path / "data" / "raw")) >= n  # duplicates allowed, none missing


def test_nats_server_killed_and_restarted_mid_stream_loses_no_reading(nats, tmp_path):
    """SIGKILL of nats-server while the listener lands a gateway's readings, the gateway publishing
    on into the outage, then a restart on the same store: the gateway's unacknowledged readings are
    sent again, JetStream still has what it acknowledged and the listener's session, and the
    listener lands everything."""
    n = 3_000
    gate = threading.Event()
    lp = listener(tmp_path, nats, "civicflow-listener-1", client_id="civicflow-listener-1-restart").start()
    try:
        lp.wait_subscribed()
        gateway = Gateway(
            nats.mqtt_port,
            "gw-leeds-1",
            held(readings("leeds", 0, n // 2), gate, readings("leeds", n // 2, n)),
        )
        lp.wait_for(lambda: lp.status().get("acked", 0) >= 1_000, 60, "landing")
        nats.kill()
        gate.set()  # the gateway goes on publishing into the outage
        nats.start()
        gateway.finish()
        lp.wait_for(landed_all(tmp_path / "data" / "raw", {"leeds": set(range(n))}), 120, "landing all")
        after = lp.own_status()
        assert lp.terminate() == 0
    finally:
        lp.ensure_stopped()
        if nats.proc is None or nats.proc.poll() is not None:
            nats.start()  # the next test needs the module's server
    forget_session(nats, "civicflow-listener-1", lp.client_id)
    assert after["connects"] >= 2
    assert after["sessions_lost"] == 0  # the session survived the crash, on disk
    assert len(landed_payloads(tmp_path / "data" / "raw")) >= n


def test_users_get_only_what_accounts_conf_grants(nats, tmp_path):
    """Anonymous and wrong passwords are refused; a gateway's reading outside its council and
    anything a listener publishes is not delivered, and NATS logs why; no user of accounts.conf
    may speak the NATS protocol (JetStream's API); `civicflow status` probes the broker."""
    refused = []
    for user, password in [(None, None), ("gw-leeds-1", "wrong"), ("nobody", "x")]:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"probe-{len(refused)}")
        if user:
            client.username_pw_set(user, password)
        codes: list = []
        client.on_connect = lambda c, u, f, rc, p, codes=codes: codes.append(rc)
        client.connect(HOST, nats.mqtt_port)
        wait_for(lambda client=client, codes=codes: client.loop(timeout=0.05) != 0 or codes, 10, "CONNACK")
        refused.append(codes[0].is_failure if codes else True)
        client.disconnect()
    assert refused == [True, True, True]

    reader = Collector(
        HOST,
        nats.mqtt_port,
        "city/#",
        client_id="collector-grants",
        clean_session=True,
        username="civicflow-listener-2",
        password=USERS["civicflow-listener-2"],
    )
    assert reader.start() == [1]
    try:
        sent = [
            ("gw-birmingham-1", [("city/leeds/parking/forged", b"forged")]),
            ("civicflow-listener-1", [("city/birmingham/parking/echo", b"from-a-listener")]),
            ("gw-birmingham-1", [("city/birmingham/parking/p1", b"granted")]),
        ]
        for user, messages in sent:
            stats = publish_messages(
                HOST,
                nats.mqtt_port,
                messages,
                client_id=f"{user}-grants",
                username=user,
                password=USERS[user],
            )
            assert stats.messages == 1  # MQTT 3.1.1 cannot refuse: a PUBACK either way
        # One consumer, one stream: had the earlier two been stored, they would come first.
        assert reader.wait_for(1, 30) == 1
    finally:
        reader.stop()
    assert reader.payloads == [b"granted"]
    log = nats.log_text()
    assert 'Publish Violation - User "gw-birmingham-1", Subject "city.leeds.parking.forged"' in log
    assert 'Publish Violation - User "civicflow-listener-1", Subject "city.birmingham.parking.echo"' in log

    with socket.create_connection((HOST, nats_client_port(nats)), timeout=5) as sock:
        sock.recv(4096)  # INFO
        connect = {"user": "gw-birmingham-1", "pass": USERS["gw-birmingham-1"], "verbose": False}
        sock.sendall(b"CONNECT " + json.dumps(connect).encode() + b"\r\nPING\r\n")
        assert b"Authorization Violation" in sock.recv(4096)

    address = BrokerAddress(HOST, nats.mqtt_port, "civicflow-listener-1", USERS["civicflow-listener-1"])
    assert probe_broker(address).accepted


def nats_client_port(server: NatsServer) -> int:
    match = re.search(r"^listen: 127\.0\.0\.1:(\d+)$", server.config_path.read_text(), re.M)
    assert match, "the rendered configuration has no NATS protocol listener"
    return int(match.group(1))


def test_shared_subscriptions_are_plain_topics_to_nats_and_the_example_refuses_them(nats, tmp_path):
    """NATS takes `$share/<group>/city/#` for an ordinary filter on a topic beginning `$share`: a
    listener with CIVICFLOW_MQTT__SHARED_GROUP would land nothing. accounts.conf does not grant it,
    so such a listener is refused and says so instead."""
    lp = listener(tmp_path, nats, "civicflow-listener-2", CIVICFLOW_MQTT__SHARED_GROUP="civicflow").start()
    try:
        status = lp.wait_for(
            lambda: (doc := lp.own_status()).get("state") == "subscription_refused" and doc, 60, "refusal"
        )
    finally:
        lp.ensure_stopped()
    assert status["last_error"].startswith("subscription refused for $share/civicflow/city/#")

    # On a server without permissions, the subscription is granted and gets only the literal topic.
    open_server = tmp_path / "open"
    open_server.mkdir()
    mqtt_port, http_port = free_port(), free_port()
    config = (
        f"server_name: open\nlisten: {HOST}:{free_port()}\nhttp: {HOST}:{http_port}\n"
        f'jetstream {{ store_dir: "{open_server}/js" }}\nmqtt {{ listen: {HOST}:{mqtt_port} }}\n'
    )
    server = NatsServer(open_server, config, mqtt_port=mqtt_port, http_port=http_port, name="open").start()
    shared = Collector(HOST, mqtt_port, "$share/civicflow/city/#", client_id="shared", clean_session=True)
    plain = Collector(HOST, mqtt_port, "city/#", client_id="plain", clean_session=True)
    try:
        assert shared.start() == [1] and plain.start() == [1]
        marker = [("$share/civicflow/city/marker", b"literal")]
        publish_messages(HOST, mqtt_port, [*readings("leeds", 0, 10), *marker], client_id="gw")
        assert shared.wait_for(1, 30) == 1 and plain.wait_for(10, 30) == 10
    finally:
        shared.stop()
        plain.stop()
        server.stop()
    assert shared.payloads == [b"literal"]  # none of the ten readings, which came first
    assert sorted(json.loads(p)["seq"] for p in plain.payloads) == list(range(10))


def test_councils_sharded_across_two_listeners_each_land_their_own(nats, tmp_path):
    """Scaling out without shared subscriptions: each listener subscribes to its councils
    (CIVICFLOW_MQTT__COUNCILS), one of them to the LoRaWAN uplinks too; together they land every
    reading, each council's in its own listener's directory."""
    n = 500
    a = listener(
        tmp_path, nats, "civicflow-listener-1", client_id="shard-a", CIVICFLOW_MQTT__COUNCILS="birmingham"
    )
    b = listener(
        tmp_path,
        nats,
        "civicflow-listener-2",
        client_id="shard-b",
        CIVICFLOW_MQTT__COUNCILS="leeds",
        CIVICFLOW_MQTT__LORAWAN_TOPICS="false",
    )
    uplink = b'{"council":"lorawan","seq":0}'
    try:
        a.start()
        b.start()
        filters = [a.wait_subscribed()["state"], b.wait_subscribed()["state"]]
        gateways = [
            Gateway(nats.mqtt_port, "gw-birmingham-1", readings("birmingham", 0, n)),
            Gateway(nats.mqtt_port, "gw-leeds-1", readings("leeds", 0, n)),
            Gateway(nats.mqtt_port, "lns-chirpstack", [(CHIRPSTACK_UPLINK, uplink)]),
        ]
        for gateway in gateways:
            gateway.finish()
        everything = set(range(n))
        raw = tmp_path / "data" / "raw"
        a.wait_for(landed_all(raw, {"birmingham": everything, "lorawan": {0}}, "shard-a"), 120, "landing")
        b.wait_for(landed_all(raw, {"leeds": everything}, "shard-b"), 120, "landing")
        assert a.terminate() == 0 and b.terminate() == 0
    finally:
        a.ensure_stopped()
        b.ensure_stopped()
    forget_session(nats, "civicflow-listener-1", "shard-a")
    forget_session(nats, "civicflow-listener-2", "shard-b")
    assert filters == ["subscribed", "subscribed"]
    assert "subscribing to city/birmingham/#, v3/+/devices/+/up" in (tmp_path / "shard-a.log").read_text()
    assert "subscribing to city/leeds/# [" in (tmp_path / "shard-b.log").read_text()


# -- The three-node example -----------------------------------------------------------------------


def test_three_node_cluster_replicates_each_mqtt_stream_and_consumer_and_lands_with_a_node_down(tmp_path):
    """deploy/nats/cluster-node-<n>.conf on one machine: the MQTT streams and the listener's
    consumers have three replicas; a gateway on node 2 reaches a listener on node 1; and with
    node 3 killed mid-stream the other two go on storing and delivering every reading."""
    nodes = [f"nats-{i}.civicflow.internal:6222" for i in (1, 2, 3)]
    routes = {node: f"{HOST}:{free_port()}" for node in nodes}
    servers = []
    for i, node in enumerate(nodes, 1):
        workdir = tmp_path / f"node-{i}"
        install_accounts(workdir)
        mqtt_port, http_port = free_port(), free_port()
        shared = deploy_nats_config(
            DEPLOY_NATS / "cluster.conf",
            addresses={
                "127.0.0.1:4222": f"{HOST}:{free_port()}",
                "127.0.0.1:8222": f"{HOST}:{http_port}",
                "0.0.0.0:8883": f"{HOST}:{mqtt_port}",
                "0.0.0.0:6222": routes[node],
                **routes,
            },
            store_dir=workdir / "jetstream",
            settings={"ack_wait": TEST_ACK_WAIT},
        )
        (workdir / "cluster.conf").write_text(shared)
        node_config = (DEPLOY_NATS / f"cluster-node-{i}.conf").read_text()
        servers.append(
            NatsServer(
                workdir, node_config, mqtt_port=mqtt_port, http_port=http_port, name=f"cluster-node-{i}"
            )
        )
    n = 600
    gate = threading.Event()
    lp = listener(tmp_path, servers[0], "civicflow-listener-1")
    try:
        for server in servers:
            server.launch()
        for server in servers:
            server.wait_ready(120)
        lp.start().wait_subscribed()
        gateway = Gateway(
            servers[1].mqtt_port,
            "gw-leeds-1",
            held(readings("leeds", 0, n // 2), gate, readings("leeds", n // 2, n)),
        )
        lp.wait_for(lambda: lp.status().get("acked", 0) >= 100, 60, "landing")
        # A device's feedback summary, retained through node 1 while all three nodes are up.
        feedback = FeedbackTarget(
            BrokerAddress(HOST, servers[0].mqtt_port, "civicflow-feedback", USERS["civicflow-feedback"]),
            prefix="city",
        )
        summary = feedback_summary("leeds", "fb-cluster")
        assert publish_feedback(feedback, [summary]) == [summary]
        streams = servers[0].account_streams()
        servers[2].kill()
        gate.set()
        gateway.finish()
        lp.wait_for(landed_all(tmp_path / "data" / "raw", {"leeds": set(range(n))}), 120, "landing all")
        after = lp.own_status()
        assert lp.terminate() == 0
        # With node 3 down, a gateway that connects to node 2 afterwards gets the retained summary.
        reader = Collector(
            HOST,
            servers[1].mqtt_port,
            "city/leeds/+/+/feedback",
            client_id="gw-leeds-1-feedback",
            qos=0,
            clean_session=True,
            username="gw-leeds-1",
            password=USERS["gw-leeds-1"],
        )
        try:
            assert reader.start() == [0]
            assert reader.wait_for(1, 30) == 1
        finally:
            reader.stop()
        assert (reader.topics, reader.payloads, reader.retained) == (
            ["city/leeds/parking/fb-cluster/feedback"],
            [encode_summary(summary)],
            [True],
        )
    finally:
        lp.ensure_stopped()
        for server in servers:
            server.kill()
    assert sorted(streams) == ["$MQTT_msgs", "$MQTT_rmsgs", "$MQTT_sess"]
    assert {name: s["config"]["num_replicas"] for name, s in streams.items()} == dict.fromkeys(streams, 3)
    consumers = streams["$MQTT_msgs"]["consumer_detail"]
    # city/# is two consumers (city and city.>), each LoRaWAN filter one.
    assert len(consumers) == 4
    assert [c["config"].get("num_replicas") for c in consumers] == [3] * 4
    assert {(c["config"]["max_ack_pending"], c["config"]["ack_wait"]) for c in consumers} == {
        (1000, 2 * 10**9)
    }
    assert all(len(c["cluster"]["replicas"]) == 2 for c in consumers)  # a leader and two followers
    assert after["sessions_lost"] == 0


def test_councils_setting_subscribes_per_council_and_refuses_what_is_not_a_council(monkeypatch):
    from pydantic import ValidationError

    from civicflow.settings import Settings

    monkeypatch.setenv("CIVICFLOW_MQTT__COUNCILS", "birmingham, leeds")
    monkeypatch.setenv("CIVICFLOW_MQTT__LORAWAN_TOPICS", "false")
    assert Settings().mqtt.topic_filters() == ["city/birmingham/#", "city/leeds/#"]
    monkeypatch.setenv("CIVICFLOW_MQTT__SHARED_GROUP", "g")
    assert Settings().mqtt.topic_filters() == ["$share/g/city/birmingham/#", "$share/g/city/leeds/#"]
    monkeypatch.delenv("CIVICFLOW_MQTT__SHARED_GROUP")
    monkeypatch.setenv("CIVICFLOW_MQTT__COUNCILS", "")
    assert Settings().mqtt.topic_filters() == ["city/#"]
    for bad, says in [("Leeds", "'Leeds' is not a council name"), ("leeds,leeds", "names a council twice")]:
        monkeypatch.setenv("CIVICFLOW_MQTT__COUNCILS", bad)
        with pytest.raises(ValidationError, match=says):
            Settings()


# -- Feedback ---------------------------------------------------------------------------------


def publish_retained(server: NatsServer, user: str, topic: str, payload: bytes) -> None:
    """One retained QoS 1 publish under `user`, as ingest/feedback.py publishes; waits for the PUBACK."""
    acked = threading.Event()
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"{user}-retained", clean_session=True, protocol=mqtt.MQTTv311
    )
    client.username_pw_set(user, USERS[user])
    client.on_publish = lambda *args: acked.set()
    client.connect(HOST, server.mqtt_port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1, retain=True)
        assert acked.wait(10), f"no PUBACK for {user}'s publish on {topic}"
    finally:
        client.disconnect()
        client.loop_stop()


def feedback_summary(council: str, device_id: str) -> dict:
    return {"council": council, "domain": "parking", "device_id": device_id, "rejected": 1}


def test_only_civicflow_feedback_writes_feedback_and_only_the_councils_gateways_read_it(request):
    """A retained summary published by ingest/feedback.py as civicflow-feedback reaches a gateway of
    its council subscribed at QoS 0 (the only QoS accounts.conf lets a gateway have), never another
    council's gateway; a gateway's own retained publish on a feedback topic is not stored."""
    if not NATS_SERVER.exists():
        pytest.skip(f"{NATS_SERVER} not found: install nats-server or set CIVICFLOW_TEST_NATS_SERVER")
    nats = request.getfixturevalue("nats")
    feedback = FeedbackTarget(
        BrokerAddress(HOST, nats.mqtt_port, "civicflow-feedback", USERS["civicflow-feedback"]), prefix="city"
    )
    genuine = feedback_summary("birmingham", "fb-1")
    assert publish_feedback(feedback, [genuine]) == [genuine]
    # A gateway forging a summary of its own council's device: acknowledged (MQTT 3.1.1), not stored.
    publish_retained(nats, "gw-birmingham-2", "city/birmingham/parking/fb-2/feedback", b"forged")

    def gateway(user: str, topic_filter: str, client_id: str) -> Collector:
        return Collector(
            HOST,
            nats.mqtt_port,
            topic_filter,
            client_id=client_id,
            qos=0,
            clean_session=True,
            username=user,
            password=USERS[user],
        )

    birmingham = gateway("gw-birmingham-1", "city/birmingham/+/+/feedback", "gw-birmingham-1")
    leeds_own = gateway("gw-leeds-1", "city/leeds/+/+/feedback", "gw-leeds-1")
    leeds_other = gateway("gw-leeds-1", "city/birmingham/+/+/feedback", "gw-leeds-1-other")
    try:
        assert birmingham.start() == [0]
        assert leeds_own.start() == [0]
        assert leeds_other.start() == [128]  # SUBACK failure: outside gw-leeds-1's grant
        assert birmingham.wait_for(1, 10) == 1  # the retained summary, at once
        # Then a live one for each council: each gateway's next message must be its own council's.
        later = [feedback_summary("birmingham", "fb-3"), feedback_summary("leeds", "fb-4")]
        assert publish_feedback(feedback, later) == later
        assert birmingham.wait_for(2, 10) == 2
        assert leeds_own.wait_for(1, 10) == 1
    finally:
        for c in (birmingham, leeds_own, leeds_other):
            c.stop()
    assert birmingham.topics == [
        "city/birmingham/parking/fb-1/feedback",
        "city/birmingham/parking/fb-3/feedback",
    ]
    assert birmingham.payloads == [encode_summary(genuine), encode_summary(later[0])]
    assert birmingham.retained == [True, False]
    assert leeds_own.topics == ["city/leeds/parking/fb-4/feedback"]
    assert leeds_other.payloads == []
    assert (
        'Publish Violation - User "gw-birmingham-2", Subject "city.birmingham.parking.fb-2.feedback"'
        in nats.log_text()
    )
    # An empty retained message clears a topic's (MQTT 3.1.1): NATS deletes it from its stream of
    # retained messages, so the module's other subscribers to city/# get none of these.
    assert nats.account_streams()["$MQTT_rmsgs"]["state"]["messages"] == 3
    for device in ("fb-1", "fb-3"):
        publish_retained(nats, "civicflow-feedback", f"city/birmingham/parking/{device}/feedback", b"")
    publish_retained(nats, "civicflow-feedback", "city/leeds/parking/fb-4/feedback", b"")
    assert nats.account_streams()["$MQTT_rmsgs"]["state"]["messages"] == 0
