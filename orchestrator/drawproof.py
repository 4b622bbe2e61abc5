"""The draws' proof: a commitment before the live, winners anyone can recompute after it.

Standard library only, and short on purpose: docs/draws.md carries the same computations as a
standalone script, and tests check that both agree.

- seed: 32 random bytes (hex), secret until the event closes.
- rules hash: SHA-256 of the draw rules as canonical JSON (sorted keys, no spaces, UTF-8).
- commitment: SHA-256 of "orch-draw-v1\\n<seed>\\n<rules hash>", published before the live with
  the 公示 notice; revealing the seed later proves neither was changed.
- entrant hash: SHA-256 of the entrant ids, sorted, one per line (UTF-8).
- randomness of a draw: HMAC-SHA256(seed, "<draw id>\\n<entrant hash>\\n<beacon>\\n<counter>"),
  read as 64-bit big-endian numbers; indexes are drawn by rejection sampling (unbiased), winners
  without replacement (a partial Fisher-Yates shuffle of the sorted entrants).
- freeze moment of a screenshot draw: milliseconds into the hour's first minute, from
  HMAC-SHA256(seed, "<draw id>\\nfreeze"): nobody without the seed can time their comment.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Iterator, Sequence
from typing import Any

VERSION = "orch-draw-v1"
FREEZE_WINDOW_MS = 60_000


def new_seed() -> str:
    return secrets.token_hex(32)


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def rules_hash(rules: Any) -> str:
    return hashlib.sha256(canonical(rules)).hexdigest()


def commitment(seed: str, rules_digest: str) -> str:
    return hashlib.sha256(f"{VERSION}\n{seed}\n{rules_digest}".encode()).hexdigest()


def entrant_hash(entrants: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(sorted(entrants)).encode()).hexdigest()


def _numbers(seed: str, draw_id: str, digest: str, beacon: str) -> Iterator[int]:
    counter = 0
    while True:
        block = hmac.new(seed.encode(), f"{draw_id}\n{digest}\n{beacon}\n{counter}".encode(), hashlib.sha256).digest()
        for i in range(0, 32, 8):
            yield int.from_bytes(block[i:i + 8], "big")
        counter += 1


def winners(seed: str, draw_id: str, entrants: Sequence[str], k: int, beacon: str = "") -> list[str]:
    """`k` distinct winners among `entrants` (all of them, in draw order, when there are fewer)."""
    pool = sorted(set(entrants))
    digest = entrant_hash(pool)
    numbers = _numbers(seed, draw_id, digest, beacon)
    out: list[str] = []
    for i in range(min(k, len(pool))):
        n = len(pool) - i
        limit = (1 << 64) - (1 << 64) % n  # numbers at or above `limit` would favour small indexes: drawn again
        r = next(numbers)
        while r >= limit:
            r = next(numbers)
        j = i + r % n
        pool[i], pool[j] = pool[j], pool[i]
        out.append(pool[i])
    return out


def freeze_offset_ms(seed: str, draw_id: str) -> int:
    block = hmac.new(seed.encode(), f"{draw_id}\nfreeze".encode(), hashlib.sha256).digest()
    return int.from_bytes(block[:8], "big") % FREEZE_WINDOW_MS


# --- verification of an audit bundle -------------------------------------------------------------


def verify(bundle: dict[str, Any]) -> list[str]:
    """Every disagreement between the bundle and a recomputation, each naming where; [] when all match."""
    problems: list[str] = []
    seed = bundle.get("seed")
    if not isinstance(seed, str) or not seed:
        return ["seed: missing (the seed is revealed only when the event has closed)"]
    digest = rules_hash(bundle.get("rules"))
    if digest != bundle.get("rules_hash"):
        problems.append(f"rules_hash: the rules hash to {digest}, the bundle says {bundle.get('rules_hash')}")
    if commitment(seed, digest) != bundle.get("commitment"):
        problems.append(f"commitment: seed and rules give {commitment(seed, digest)}, the published commitment is {bundle.get('commitment')}")
    for i, d in enumerate(bundle.get("draws", [])):
        where = f"draws[{i}] ({d.get('id')})"
        entrants = d.get("entrants", [])
        if entrant_hash(entrants) != d.get("entrant_hash"):
            problems.append(f"{where}.entrant_hash: the entrants hash to {entrant_hash(entrants)}, the bundle says {d.get('entrant_hash')}")
        if d.get("state") == "void":
            if d.get("winners"):
                problems.append(f"{where}.winners: a void draw has no winners")
            continue
        expected = winners(seed, d.get("id", ""), entrants, int(d.get("k", 0)), d.get("beacon") or "")
        if expected != d.get("winners"):
            problems.append(f"{where}.winners: recomputed {expected}, the bundle says {d.get('winners')}")
        if d.get("freeze_offset_ms") is not None and freeze_offset_ms(seed, d.get("id", "")) != d["freeze_offset_ms"]:
            problems.append(f"{where}.freeze_offset_ms: recomputed {freeze_offset_ms(seed, d.get('id', ''))}, the bundle says {d['freeze_offset_ms']}")
    return problems
