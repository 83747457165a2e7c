"""The baseline: a bare paho subscriber that only counts what it receives.

Same paho version, MQTT 3.1.1, persistent session, QoS 1 subscription made in `on_connect` as the
listener does; paho acknowledges each message itself right after `on_message`. Nothing is written.

    python -m bench.bare_paho --port P --client-id ID --register     # create the session, exit
    python -m bench.bare_paho --port P --client-id ID --count N      # drain N, print JSON, exit
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--topic", default="city/#")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--register", action="store_true", help="subscribe once, then disconnect")
    mode.add_argument("--count", type=int, help="exit after receiving this many messages")
    args = parser.parse_args(argv)

    state = {"received": 0, "first": None, "last": None}
    target = args.count

    def on_connect(client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            print(f"connection refused: {reason_code}", file=sys.stderr)
            client.disconnect()
            return
        client.subscribe(args.topic, qos=1)

    def on_subscribe(client, userdata, mid, reason_codes, properties):
        if args.register:
            client.disconnect()

    def on_message(client, userdata, message):
        state["received"] += 1
        if state["received"] == 1:
            state["first"] = time.time()
        if state["received"] == target:
            state["last"] = time.time()
            client.disconnect()

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=args.client_id,
        clean_session=False,
        protocol=mqtt.MQTTv311,
    )
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect(args.host, args.port, keepalive=30)
    client.loop_forever()
    print(json.dumps(state))
    return 0


if __name__ == "__main__":
    sys.exit(main())
