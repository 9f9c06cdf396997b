#!/usr/bin/env python3
"""A field integrator's publisher: paho-mqtt (the Eclipse Python client) sending JSON
readings at QoS 1 through a broker, the way a site's own script would feed the gateway.

    paho_publisher.py --port 1883 --readings 1000000 [--per-message 100] [--points 10000]

Publishes `readings` readings in messages of `per-message`, cycling over `points` points
(`p0`, `p1`, ...) with device timestamps, on topic `field/dev`; keeps up to `--inflight`
messages unacknowledged (paho's max_inflight_messages), and prints one JSON line when the
broker has acknowledged every message: {"messages", "seconds"}. The ingest bench runs it
beside its own Rust publisher (cargo bench -p gridgate --bench ingest).
"""

import argparse
import json
import sys
import threading
import time

import paho.mqtt.client as mqtt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--readings", type=int, default=1_000_000)
    ap.add_argument("--per-message", type=int, default=100)
    ap.add_argument("--points", type=int, default=10_000)
    ap.add_argument("--inflight", type=int, default=100)
    ap.add_argument("--topic", default="field/dev")
    args = ap.parse_args()

    base = 1_795_000_000_000
    messages = args.readings // args.per_message
    payloads = []
    for m in range(messages):
        items = []
        for k in range(args.per_message):
            i = m * args.per_message + k
            items.append(
                '{"point":"p%d","value":%s,"ts_ms":%d}'
                % (i % args.points, json.dumps(i * 0.25), base + i // args.points)
            )
        payloads.append(("[" + ",".join(items) + "]").encode())

    acked = 0
    done = threading.Event()
    connected = threading.Event()

    def on_connect(client, userdata, flags, reason_code, properties):
        connected.set()

    def on_publish(client, userdata, mid, reason_code, properties):
        nonlocal acked
        acked += 1
        if acked >= messages:
            done.set()

    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id="paho-field-publisher",
        protocol=mqtt.MQTTv311,
    )
    client.max_inflight_messages_set(args.inflight)
    client.max_queued_messages_set(0)
    client.on_connect = on_connect
    client.on_publish = on_publish
    client.connect(args.host, args.port, keepalive=30)
    client.loop_start()
    if not connected.wait(10):
        print("could not connect", file=sys.stderr)
        return 1
    # The payloads are built and the connection is up: the bench starts its clock here.
    print("ready", flush=True)
    started = time.monotonic()
    for p in payloads:
        client.publish(args.topic, p, qos=1)
    if not done.wait(600):
        print(f"only {acked} of {messages} acknowledged", file=sys.stderr)
        return 1
    seconds = time.monotonic() - started
    client.loop_stop()
    client.disconnect()
    print(json.dumps({"messages": messages, "seconds": seconds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
