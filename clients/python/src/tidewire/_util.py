"""Checks of the arguments the package sends to the server."""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from typing import Any, Mapping, Optional, Union

from .protocol import MAX_CHANNEL_BYTES, MAX_IDEMPOTENCY_KEY_BYTES, StreamPosition


def check_channel(channel: Any, what: str = "channel") -> str:
    if not isinstance(channel, str):
        raise TypeError(f"{what} must be a str, got {type(channel).__name__}")
    n = len(channel.encode("utf-8"))
    if n == 0 or n > MAX_CHANNEL_BYTES:
        raise ValueError(f"{what} must be 1 to {MAX_CHANNEL_BYTES} bytes, got {n}: {channel!r:.80}")
    return channel


def check_idempotency_key(key: Any) -> Optional[str]:
    if key is None:
        return None
    if not isinstance(key, str):
        raise TypeError(f"idempotency_key must be a str, got {type(key).__name__}")
    n = len(key.encode("utf-8"))
    if n == 0 or n > MAX_IDEMPOTENCY_KEY_BYTES:
        raise ValueError(f"idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY_BYTES} bytes, got {n}")
    return key


def check_position(value: Any, what: str = "since") -> StreamPosition:
    if isinstance(value, StreamPosition):
        pos = value
    elif isinstance(value, Mapping):
        pos = StreamPosition.from_json(value, what)
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        pos = StreamPosition.from_json({"offset": value[0], "epoch": value[1]}, what)
    else:
        raise TypeError(f"{what} must be a StreamPosition (or {{'offset', 'epoch'}}), got {value!r}")
    if not isinstance(pos.offset, int) or isinstance(pos.offset, bool) or pos.offset < 0:
        raise ValueError(f"{what}.offset must be a non-negative int, got {pos.offset!r}")
    if not isinstance(pos.epoch, str):
        raise TypeError(f"{what}.epoch must be a str, got {pos.epoch!r}")
    return pos


def check_limit(limit: Any, maximum: int = 10_000) -> Optional[int]:
    if limit is None:
        return None
    if not isinstance(limit, int) or isinstance(limit, bool):
        raise TypeError(f"limit must be an int, got {type(limit).__name__}")
    if limit < 0 or limit > maximum:
        raise ValueError(f"limit must be 0 to {maximum}, got {limit}")
    return limit


def dumps(value: Any, what: str = "message") -> str:
    """Compact JSON; NaN and infinities (not JSON) and unknown types are refused."""
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{what} is not JSON-serializable: {e}") from None


def check_json(value: Any, what: str) -> Any:
    dumps(value, what)
    return value


def unix_seconds(value: Union[int, float, datetime, None], what: str) -> Optional[int]:
    """Seconds since the Unix epoch from an int, a float or a datetime (naive: UTC)."""
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        seconds = value.timestamp()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise TypeError(f"{what} must be seconds since the Unix epoch or a datetime, got {value!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{what} must be a time after 1970, got {value!r}")
    return int(seconds)
