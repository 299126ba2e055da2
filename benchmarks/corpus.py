"""Benchmark records and the framings real clients send them in.

Records (seeded with ``random.Random(seed)``, deterministic):

- :func:`realistic`: Signal (Segment-spec) analytics events of about 1 KB as JSON, shaped like what
  analytics.js sends: mostly ``track`` calls of the Default preset's events, some ``page`` calls;
  messageId, anonymousId and for a third a userId, ISO 8601 timestamp and sentAt, a ``context``
  (ip, userAgent, library, page, locale, timezone, screen) and 4-8 properties, some nested (a ``products`` array).
- :func:`slim`: the small Order Completed records of ``benchmarks/node.py``'s ``chunk()`` (~200
  bytes), kept so that figures can be compared with the older rows.

Framings, each one request as bytes from ``(records, tag, chunk_id)``:

- :func:`fluentbit_forward`: Fluent Bit 5.x out_forward, Forward mode:
  ``[tag, [[[EventTime, {}], record], ...], {"size", "chunk", "fluent_signal"}]``, strings as str.
- :func:`fluentbit_gzip`: Fluent Bit's CompressedPackedForward (``compress gzip``):
  ``[tag, bin(gzip(entries)), {..., "compressed": "gzip"}]``.
- :func:`fluentd_packed`: Fluentd out_forward's PackedForward: ``[tag, str32(entries), {"size",
  "compressed": "text", "chunk"}]`` (Fluentd always writes a str32 header, whatever the length).
- :func:`message`: Message mode as fluent-logger (``fluent.sender``) packs it, one record per
  request, no option (so no ack): what ``FluentSender(..., nanosecond_precision=True).emit`` sends.
- :func:`slim_packed`: node.py's ``chunk()`` framing (PackedForward, entries as str).
"""

from __future__ import annotations

import base64
import random
import struct
from datetime import UTC, datetime

import msgpack

from fluent_ld.forward.codec import encode_event_time

# 2026-12-05T10:00:00Z: the corpus's "now". Event times are the seconds around it.
T0_S = int(datetime(2026, 12, 5, 10, 0, 0, tzinfo=UTC).timestamp())
T0 = T0_S * 10**9

USER_AGENTS = [
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8 Pro) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.6778.81 Mobile Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
]
PAGES = [
    ("/", "Home"),
    ("/collections/winter", "Winter Collection"),
    ("/products/merino-wool-scarf", "Merino Wool Scarf"),
    ("/products/leather-gloves", "Leather Gloves"),
    ("/products/waterproof-rain-jacket", "Waterproof Rain Jacket"),
    ("/cart", "Your Cart"),
    ("/checkout", "Checkout"),
    ("/checkout/confirmation", "Order Confirmation"),
    ("/account/signup", "Create an Account"),
    ("/search", "Search Results"),
]
REFERRERS = ["https://www.google.com/", "https://www.bing.com/", "https://duckduckgo.com/", "https://www.instagram.com/", "", "https://shop.example.com/"]
SEARCHES = ["", "?utm_source=newsletter&utm_medium=email&utm_campaign=winter_sale", "?utm_source=google&utm_medium=cpc&gclid=Cj0KCQiA", "?q=wool+scarf"]
TIMEZONES = ["Europe/London", "America/New_York", "Europe/Berlin", "Europe/Paris", "America/Los_Angeles"]
SCREENS = [{"width": 1920, "height": 1080, "density": 1}, {"width": 1512, "height": 982, "density": 2}, {"width": 393, "height": 852, "density": 3}]
LOCALES = ["en-GB", "en-US", "de-DE", "fr-FR", "es-ES", "nl-NL"]
PRODUCTS = [
    ("Merino Wool Scarf", "Accessories", 39.0),
    ("Leather Gloves", "Accessories", 54.5),
    ("Waterproof Rain Jacket", "Outerwear", 149.0),
    ("Cashmere Beanie", "Accessories", 29.99),
    ("Down Puffer Vest", "Outerwear", 119.0),
    ("Wool Hiking Socks", "Footwear", 18.0),
]
# (share, event name); None is a page call. Track calls are most of the traffic.
MIX = [(0.36, "Product Viewed"), (0.18, "Product Added"), (0.10, "Checkout Started"), (0.08, "Order Completed"), (0.06, "Signed Up"), (0.22, None)]
METRIC = {"Order Completed": "revenue", "Product Viewed": "value", "Product Added": "value", "Checkout Started": "value"}


def _uuid(rng: random.Random) -> str:
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[rng.randrange(4)]}{h[17:20]}-{h[20:]}"


def _iso(seconds: int, ms: int) -> str:
    """ISO 8601 with milliseconds and Z, as analytics.js writes it."""
    seconds, ms = seconds + ms // 1000, ms % 1000
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{ms:03d}Z"


def _product(rng: random.Random) -> dict:
    name, category, price = rng.choice(PRODUCTS)
    return {
        "product_id": f"{rng.randrange(10**9, 10**10)}",
        "sku": f"{category[:3].upper()}-{rng.randrange(10**5):05d}",
        "name": name,
        "price": price,
        "quantity": rng.randrange(1, 4),
    }


def _event(rng: random.Random) -> str | None:
    x = rng.random()
    for share, name in MIX:
        if x < share:
            return name
        x -= share
    return MIX[-1][1]


def record(rng: random.Random, i: int) -> dict:
    """One Signal event as analytics.js sends it (about 1 KB as JSON)."""
    name = _event(rng)
    path, title = rng.choice(PAGES)
    search = rng.choice(SEARCHES)
    stamp = T0_S - rng.randrange(3600)
    page = {
        "path": path,
        "referrer": rng.choice(REFERRERS),
        "search": search,
        "title": f"{title} | Northwind Outfitters",
        "url": f"https://shop.example.com{path}{search}",
    }
    event: dict = {"type": "page" if name is None else "track"}
    if name is None:
        event["name"] = title
    else:
        event["event"] = name
    event["messageId"] = f"ajs-next-{rng.getrandbits(128):032x}"
    event["anonymousId"] = _uuid(rng)
    if i % 3 == 0:
        event["userId"] = f"usr_{rng.getrandbits(64):016x}"
    ms = rng.randrange(1000)
    event["timestamp"] = _iso(stamp, ms)
    event["sentAt"] = _iso(stamp, ms + rng.randrange(5, 400))
    event["context"] = {
        "ip": f"{rng.choice([81, 86, 92, 176, 203])}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}",
        "userAgent": rng.choice(USER_AGENTS),
        "library": {"name": "analytics.js", "version": "npm:next-1.76.0"},
        "page": page,
        "locale": rng.choice(LOCALES),
        "timezone": rng.choice(TIMEZONES),
        "screen": rng.choice(SCREENS),
    }
    if name is None:
        properties = dict(page)
        properties["category"] = rng.choice(["Landing", "Product", "Checkout", "Account"])
    elif name == "Signed Up":
        properties = {
            "method": rng.choice(["email", "google", "apple"]),
            "plan": rng.choice(["free", "plus"]),
            "newsletter": rng.random() < 0.5,
            "source": rng.choice(["header", "checkout", "popup"]),
        }
        if rng.random() < 0.5:
            properties["referral_code"] = f"REF-{rng.randrange(10**6):06d}"
    elif name == "Product Viewed":
        product = _product(rng)
        properties = {**product, "category": rng.choice(["Accessories", "Outerwear", "Footwear"]), "currency": "GBP", "value": product["price"]}
        if rng.random() < 0.4:
            properties["position"] = rng.randrange(1, 24)
    else:
        products = [_product(rng) for _ in range(rng.randrange(1, 4))]
        total = round(sum(p["price"] * p["quantity"] for p in products), 2)
        properties = {"currency": "GBP", "products": products}
        if name == "Order Completed":
            properties.update(order_id=f"NW-{rng.randrange(10**7):07d}", revenue=total, shipping=4.95, tax=round(total / 6, 2))
            if rng.random() < 0.3:
                properties["coupon"] = "WINTER10"
        else:
            properties["value"] = total
            properties["cart_id"] = _uuid(rng)
            if name == "Checkout Started":
                properties["step"] = 1
    event["properties"] = properties
    return event


def realistic(n: int, seed: int = 13) -> list[dict]:
    rng = random.Random(seed)
    return [record(rng, i) for i in range(n)]


def slim(first: int, n: int) -> list[dict]:
    """benchmarks/node.py's ``chunk()`` records."""
    return [
        {
            "type": "track",
            "event": "Order Completed",
            "user_id": f"user-{i}",
            "anonymous_id": "a1b2c3d4",
            "properties": {"order_id": f"O-{i}", "revenue": 89.99, "currency": "GBP"},
        }
        for i in range(first, first + n)
    ]


def chunk_id(rng: random.Random) -> str:
    """A chunk id as Fluent Bit and Fluentd send it: base64 of 16 random bytes."""
    return base64.b64encode(rng.getrandbits(128).to_bytes(16, "big")).decode()


# -- framings ---------------------------------------------------------------------------------------


def _times(n: int) -> list:
    return [encode_event_time(T0 + i * 1_000) for i in range(n)]


def entries(records: list[dict], v15: bool = True) -> bytes:
    """Concatenated msgpack entries: ``[[EventTime, {}], record]`` (v1.5, Fluent Bit) or
    ``[EventTime, record]`` (Fluentd)."""
    pack = msgpack.Packer(use_bin_type=True).pack
    return b"".join(pack([[t, {}] if v15 else t, r]) for t, r in zip(_times(len(records)), records))


def fluentbit_forward(records: list[dict], tag: str, chunk: str) -> bytes:
    items = [[[t, {}], r] for t, r in zip(_times(len(records)), records)]
    return msgpack.packb([tag, items, {"size": len(records), "chunk": chunk, "fluent_signal": 0}], use_bin_type=True)


def fluentbit_gzip(records: list[dict], tag: str, chunk: str) -> bytes:
    import gzip

    payload = gzip.compress(entries(records, True), 6, mtime=0)
    option = {"size": len(records), "chunk": chunk, "fluent_signal": 0, "compressed": "gzip"}
    return msgpack.packb([tag, payload, option], use_bin_type=True)


def fluentd_packed(records: list[dict], tag: str, chunk: str) -> bytes:
    payload = entries(records, False)
    option = {"size": len(records), "compressed": "text", "chunk": chunk}
    # Fluentd writes the array header, the tag, a str32 header and the chunk's bytes as they are.
    return b"\x93" + msgpack.packb(tag) + b"\xdb" + struct.pack(">I", len(payload)) + payload + msgpack.packb(option)


def message(records: list[dict], tag: str, chunk: str | None = None) -> bytes:
    """Message mode requests, one per record, as fluent-logger packs them: ``(tag, EventTime,
    record)`` with msgpack's defaults and no option (fluent-logger asks for no acks)."""
    return b"".join(msgpack.packb((tag, t, r)) for t, r in zip(_times(len(records)), records))


def slim_packed(records: list[dict], tag: str, chunk: str) -> bytes:
    """benchmarks/node.py's ``chunk()`` framing: PackedForward, entries as str (use_bin_type=False)."""
    return msgpack.packb([tag, entries(records, False), {"chunk": chunk, "size": len(records)}], use_bin_type=False)


FRAMINGS = {
    "fluentbit_forward": fluentbit_forward,
    "fluentbit_gzip": fluentbit_gzip,
    "fluentd_packed": fluentd_packed,
    "message": message,
    "slim_packed": slim_packed,
}


def requests(framing: str, records: list[dict], per: int, count: int, tag: str = "signal.web", seed: int = 1) -> list[bytes]:
    """``count`` requests of ``per`` records each, taken in turn from ``records``, with distinct
    chunk ids."""
    make = FRAMINGS[framing]
    rng = random.Random(seed)
    out = []
    span = len(records) - per + 1
    for i in range(count):
        first = (i * per) % span
        out.append(make(records[first : first + per], tag, chunk_id(rng)))
    return out


if __name__ == "__main__":  # a look at the corpus: sizes and what the Default preset makes of it
    import json
    import statistics
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from fluent_ld.launchdarkly.mapping import Mapper
    from fluent_ld.launchdarkly.preset.loader import load_preset

    mapper = Mapper(load_preset("default"))
    recs = realistic(10_000)
    sizes = [len(json.dumps(r, separators=(",", ":"))) for r in recs]
    mapped = [mapper.map_encoded(r, T0) for r in recs]
    print(f"mean JSON size {statistics.mean(sizes):.0f} bytes ({min(sizes)}..{max(sizes)}), accepted {sum(type(m) is bytes for m in mapped) / len(recs):.2%}")
    print(json.dumps(recs[0], indent=2))
    print(mapped[0])
