"""Message ids that carry their send time: UUIDv7 (RFC 9562), minted for every Taskyard send.

A job's record lives in the `jobs` partition of the day its id was minted
(`services.partitions`): the id is the record's key and its partition key at
once, so every statement that finds a record by its id reads one partition,
and a day of records is dropped whole once it has expired.  The first 48
bits of a UUIDv7 are the Unix time in milliseconds, so its text form sorts
by time ("C" collation), which is what the partitions' bounds compare.
Ids minted elsewhere (Dramatiq's uuid4, anything a crafted message carries)
are kept too, in the default partition (see `services.partitions`).
"""

from __future__ import annotations

import datetime as dt
import os
import time

# The text length of a UUID: the longest id the `jobs` table keeps.
UUID_TEXT_LENGTH = 36


def new_message_id(now_ms: int | None = None) -> str:
    """A new UUIDv7: 48 bits of milliseconds, version 7, 74 random bits, variant 10."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    if not 0 <= ms < 1 << 48:
        raise ValueError(f"a UUIDv7 holds milliseconds from 0 to 2**48, not {ms}")
    rand = int.from_bytes(os.urandom(10), "big")
    rand_a = rand >> 68  # 12 bits
    rand_b = rand & ((1 << 62) - 1)  # 62 bits
    value = (ms << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def id_floor(moment: dt.datetime) -> str:
    """The lowest id text minted at `moment` (to the millisecond): a partition's bound."""
    if moment.tzinfo is None:
        raise ValueError("id_floor needs an aware datetime")
    ms = int(moment.timestamp() * 1000)
    text = f"{ms:012x}"
    return f"{text[:8]}-{text[8:]}"


def minted_at(message_id: str) -> dt.datetime | None:
    """When a UUIDv7 id was minted; None for any other id (a uuid4, a crafted string)."""
    text = message_id.replace("-", "")
    if (
        len(message_id) != UUID_TEXT_LENGTH
        or len(text) != 32
        or text[12] != "7"
        or not all(c in "0123456789abcdef" for c in text)
    ):
        return None
    return dt.datetime.fromtimestamp(int(text[:12], 16) / 1000, dt.UTC)
