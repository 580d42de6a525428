"""Compression: what zstd (level 3, tiercache's ZstdCompressor) buys and costs per value size,
and which ``compress_threshold`` keeps most of the Redis memory saving for the least CPU.

Payloads are JSON-like API responses (a page of records: ids, uuids, names, e-mails,
prices, timestamps, tags, free text, nested objects) built deterministically with
``random.Random(seed)``, 512 B to 256 KiB of msgpack. For each size: msgpack and zstd sizes,
Redis ``MEMORY USAGE`` of both, compress and decompress time (with tiercache's bounded
decompression), CPU per byte saved, and SET+GET through the real redis-server of the raw
msgpack vs compress -> SET -> GET -> decompress (msgpack itself is left out: same on both).

The threshold rule, fixed before measuring: the smallest size whose CPU per byte saved is
within 1.5x of the cheapest size's; below it every byte saved costs disproportionately more.
"Savings kept" is shown for two mixes of value sizes: equal total bytes in each size class
(many small values, few large: count ~ 1/size) and equal counts per size class.
"""

from __future__ import annotations

import random
from typing import Any

import msgpack

from benchmarks._timing import Variant, compare, fmt_bytes, fmt_ns, print_table
from tests.redis_server import RedisServer
from tiercache.codec import ZstdCompressor
from tiercache.options import DEFAULT_COMPRESS_THRESHOLD

TITLE = "zstd level 3 by value size: memory saved vs CPU, and compress_threshold"
SIZES = tuple(512 * 2**i for i in range(10))  # 512 B .. 256 KiB
KNEE = 1.5  # a size "pays" when its CPU per byte saved is within this factor of the best
SEED = 20240501
CAP = 32 * 1024 * 1024

_WORD_TEXT = (
    "account active add address after again all also amount and annual api app archive "
    "available back balance basic battery before best billing black blue board book box "
    "brand build bundle business buy cable camera card cart case category change charge "
    "check city classic clean client close cloud code color comfort compact complete "
    "contact cotton count cover custom daily data date day deal default delivery design "
    "digital discount display double easy edition electric email energy express extra fast "
    "feature file filter fit free fresh full garden gift gold green group guide heavy help "
    "high home hour image indoor item kit kitchen large leather light limited line list "
    "local long low main manual market medium metal mini mobile model modern month multi "
    "natural new next night office one open order organic original outdoor pack page paper "
    "part pay personal phone plan plus point portable power premium price pro product "
    "profile quality quick rate ready red refund region regular report return round safe "
    "sale season secure service set shipping short silver simple size slim small smart soft "
    "sport standard steel stock store strong style support system table team tech time "
    "tool total travel type ultra unit update user value version view water white wide "
    "wireless wood work year"
)
_WORDS = tuple(_WORD_TEXT.split())
_FIRST = ("anna", "ben", "carla", "david", "elena", "felix", "greta", "hugo", "ines", "jonas")
_LAST = ("meyer", "schmidt", "rossi", "garcia", "novak", "dubois", "jensen", "silva", "berg")
_CITIES = ("Berlin", "Lisbon", "Madrid", "Paris", "Vienna", "Prague", "Oslo", "Milan", "Porto")
_STATUS = ("active", "pending", "shipped", "cancelled", "returned")
_DOMAINS = ("example.com", "mail.example.org", "shop.example.net")


def _text(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(low, high)))


def _record(rng: random.Random, i: int) -> dict[str, Any]:
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    return {
        "id": 100_000 + i * 7 + rng.randrange(7),
        "uuid": f"{rng.getrandbits(128):032x}",
        "name": _text(rng, 2, 4).title(),
        "customer": {
            "name": f"{first.title()} {last.title()}",
            "email": f"{first}.{last}{rng.randrange(100)}@{rng.choice(_DOMAINS)}",
            "city": rng.choice(_CITIES),
            "zip": f"{rng.randrange(10_000, 99_999)}",
        },
        "status": rng.choice(_STATUS),
        "price": round(rng.uniform(1, 500), 2),
        "quantity": rng.randint(1, 20),
        "discount": rng.choice((0, 0, 0, 5, 10, 15)),
        "tags": [rng.choice(_WORDS) for _ in range(rng.randint(1, 4))],
        "created_at": f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T"
        f"{rng.randrange(24):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d}Z",
        "description": _text(rng, 6, 30),
        "in_stock": rng.random() < 0.8,
    }


def make_payload(size: int, seed: int = SEED) -> dict[str, Any]:
    """A JSON-like API response whose msgpack encoding is at least ``size`` bytes (by less
    than one record), built deterministically from ``seed``: a threshold of ``size``
    compresses it."""
    rng = random.Random(seed + size)
    records: list[dict[str, Any]] = []
    page: dict[str, Any] = {
        "data": records,
        "meta": {"page": 1, "per_page": 0, "total": 0, "generated_at": "2024-05-01T12:00:00Z"},
        "links": {"self": "/api/v2/orders?page=1", "next": "/api/v2/orders?page=2"},
    }
    overhead = len(msgpack.packb(page))
    budget = overhead
    while budget < size:
        record = _record(rng, len(records))
        records.append(record)
        budget += len(msgpack.packb(record))
    page["meta"]["per_page"] = page["meta"]["total"] = len(records)
    return page


def _threshold_rows(
    per_size: list[dict[str, float]], marks: dict[int, str]
) -> tuple[list[list[str]], dict[int, tuple[float, float, float]]]:
    """For each candidate threshold (a size class): the share of the savings kept under both
    size mixes and the CPU per byte saved over the values it compresses (equal-bytes mix)."""
    total_eq_bytes = sum(s["saved"] / s["size"] for s in per_size)  # fraction saved per class
    total_eq_count = sum(s["saved"] for s in per_size)
    rows, info = [], {}
    for i, s in enumerate(per_size):
        above = per_size[i:]
        eq_bytes_saved = sum(x["saved"] / x["size"] for x in above)
        eq_bytes_cpu = sum(x["cpu_ns"] / x["size"] for x in above)
        kept_bytes = eq_bytes_saved / total_eq_bytes
        kept_count = sum(x["saved"] for x in above) / total_eq_count
        cpu_per_saved = eq_bytes_cpu / eq_bytes_saved
        nominal = int(s["nominal"])
        info[nominal] = (kept_bytes, kept_count, cpu_per_saved)
        rows.append(
            [
                fmt_bytes(nominal),
                f"{kept_bytes:.0%}",
                f"{kept_count:.1%}",
                f"{cpu_per_saved:.1f} ns",
                f"{s['cpu_ns'] / s['saved']:.1f} ns",
                marks.get(nominal, ""),
            ]
        )
    return rows, info


def run(quick: bool = False) -> None:
    rounds, target_ms = (5, 3.0) if quick else (25, 10.0)
    comp = ZstdCompressor(level=3)
    payloads = {size: msgpack.packb(make_payload(size)) for size in SIZES}
    zipped = {size: comp.compress(blob) for size, blob in payloads.items()}
    for size in SIZES:
        assert comp.decompress(zipped[size], CAP) == payloads[size]

    with RedisServer() as server:
        client = server.client(socket_timeout=5)
        try:
            mem: dict[int, tuple[int, int]] = {}
            for size in SIZES:
                client.set(f"mem:raw:{size}", payloads[size])
                client.set(f"mem:zst:{size}", zipped[size])
                mem[size] = (
                    int(client.memory_usage(f"mem:raw:{size}", samples=0)),
                    int(client.memory_usage(f"mem:zst:{size}", samples=0)),
                )
            variants = []
            s, g, c, d = client.set, client.get, comp.compress, comp.decompress
            for size in SIZES:
                blob, z = payloads[size], zipped[size]
                kr, kz = f"rt:raw:{size}", f"rt:zst:{size}"
                variants += [
                    Variant(f"c{size}", "c(b)", {"c": c, "b": blob}),
                    Variant(f"d{size}", "d(z, cap)", {"d": d, "z": z, "cap": CAP}),
                    Variant(f"r{size}", "s(k, b); g(k)", {"s": s, "g": g, "k": kr, "b": blob}),
                    Variant(
                        f"z{size}",
                        "s(k, c(b)); d(g(k), cap)",
                        {"s": s, "g": g, "c": c, "d": d, "k": kz, "b": blob, "cap": CAP},
                    ),
                ]
            samples = compare(variants, repeat=rounds, target_ms=target_ms)
        finally:
            client.close()

    med = {name: sample.median for name, sample in samples.items()}
    per_size: list[dict[str, float]] = []
    rows = []
    for size in SIZES:
        raw_n, z_n = len(payloads[size]), len(zipped[size])
        saved = raw_n - z_n
        cpu = med[f"c{size}"] + med[f"d{size}"]
        per_size.append({"nominal": size, "size": raw_n, "saved": saved, "cpu_ns": cpu})
        rt_raw, rt_z = med[f"r{size}"], med[f"z{size}"]
        rows.append(
            [
                fmt_bytes(size),
                f"{raw_n:,}",
                f"{z_n:,}",
                f"{raw_n / z_n:.2f}",
                f"{mem[size][0]:,} / {mem[size][1]:,}",
                fmt_ns(med[f"c{size}"]),
                fmt_ns(med[f"d{size}"]),
                f"{cpu / saved:.1f} ns",
                fmt_ns(rt_raw),
                fmt_ns(rt_z),
                f"{rt_z / rt_raw:.2f}x",
            ]
        )
    print_table(
        f"Per value size (medians of {rounds} interleaved repeats; RT = SET+GET on loopback)",
        [
            "class",
            "msgpack B",
            "zstd-3 B",
            "ratio",
            "Redis MEMORY USAGE raw / zstd",
            "compress",
            "decompress",
            "CPU/byte saved",
            "RT raw",
            "RT zstd",
            "zstd/raw",
        ],
        rows,
    )

    # Loopback cost of moving one more byte through SET+GET, from the largest and smallest.
    lo, hi = SIZES[0], SIZES[-1]
    move_ns = (med[f"r{hi}"] - med[f"r{lo}"]) / (len(payloads[hi]) - len(payloads[lo]))
    cheapest = min(x["cpu_ns"] / x["saved"] for x in per_size)
    knee = int(next(x for x in per_size if x["cpu_ns"] / x["saved"] <= KNEE * cheapest)["nominal"])
    default = DEFAULT_COMPRESS_THRESHOLD
    marks = {knee: "<- rule"}
    marks[default] = (marks.get(default, "") + " <- current default").strip()
    t_rows, info = _threshold_rows(per_size, marks)
    print_table(
        "compress_threshold = each class: share of all savings kept, CPU per byte saved",
        ["threshold", "kept (equal bytes/class)", "kept (equal count)", "CPU/B saved, all >=",
         "CPU/B saved, class", ""],
        t_rows,
    )  # fmt: skip
    print(
        f"Loopback SET+GET moves one more byte in {move_ns:.2f} ns; zstd spends at best "
        f"{cheapest:.1f} ns per byte saved: on loopback compression buys memory, not time."
    )
    kb, kc, cpb = info[knee]
    verdict = "keep it" if knee == default else f"consider {knee // 1024} KiB"
    if default in info:
        dkb, dkc, dcpb = info[default]
        current = (
            f"the current default {fmt_bytes(default)} keeps {dkb:.0%} ({dkc:.0%}) at {dcpb:.1f} ns"
        )
    else:
        current = f"the current default {default} B is not a measured class"
    print(
        f"Conclusion: compress_threshold = {fmt_bytes(knee)} (the smallest class whose CPU per "
        f"byte saved is within {KNEE}x of the best, {cheapest:.1f} ns) keeps {kb:.0%} of the "
        f"savings ({kc:.0%} with equal counts) at {cpb:.1f} ns CPU per byte saved; "
        f"{current} -> {verdict}."
    )


if __name__ == "__main__":
    from benchmarks.__main__ import main

    main(["compression"])
