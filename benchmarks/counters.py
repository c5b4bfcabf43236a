"""Messages through NATS during a scenario (``/varz`` in_msgs + out_msgs: publishes, deliveries, acks, pull
requests and JetStream API traffic), counted by the server itself: per request they say where a change in CPU comes
from, independent of the host's speed. (PostgreSQL's own counters are not used: backends report them lazily, up to
ten seconds after a burst.)"""

from __future__ import annotations

import json
import urllib.request


def nats_messages(monitor_url: str | None) -> int | None:
    if not monitor_url:
        return None
    with urllib.request.urlopen(f"{monitor_url}/varz", timeout=5) as resp:
        varz = json.load(resp)
    return int(varz["in_msgs"]) + int(varz["out_msgs"])
