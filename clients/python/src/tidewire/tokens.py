"""Connection tokens for the hub: HS256 JWTs with the claims of docs/protocol.md
("Tokens"), signed with the secret the hub holds (``--auth-hmac-secret``).

A backend issues one per user session and hands it to the client (browser or
:class:`tidewire.v1.Client`), which sends it in ``connect``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from datetime import datetime, timedelta
from typing import Any, Dict, Iterable, Optional, Union

from ._util import unix_seconds

__all__ = ["make_token"]

_UNSET: Any = object()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def make_token(
    secret: Union[str, bytes],
    user: str,
    *,
    ttl: Union[float, timedelta, None] = 3600,
    expires_at: Union[int, float, datetime, None] = None,
    channels: Optional[Iterable[str]] = None,
    info: Any = _UNSET,
    issued_at: Union[int, float, datetime, None] = None,
) -> str:
    """An HS256 token for ``user`` (the ``sub`` claim).

    :param secret: the hub's HMAC secret (at least 32 characters, as the hub requires).
    :param ttl: seconds (or a timedelta) until ``exp``; ignored when ``expires_at`` is
        given.
    :param channels: channels of private namespaces the token may use (exact names, or
        prefixes ending in ``*``): the ``channels`` claim.
    :param info: any JSON shown in presence as this user's ``info``.
    :param issued_at: the ``iat`` claim (default: now), which the server API's
        ``revoke_tokens`` compares.
    """
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    if not isinstance(key, (bytes, bytearray)) or len(key) < 32:
        raise ValueError("secret must be at least 32 characters (the hub refuses shorter HS256 secrets)")
    if not isinstance(user, str) or not user:
        raise ValueError("user must be a non-empty str")
    now = time.time()
    iat = unix_seconds(issued_at, "issued_at") if issued_at is not None else int(now)
    if expires_at is not None:
        exp = unix_seconds(expires_at, "expires_at")
    else:
        seconds = ttl.total_seconds() if isinstance(ttl, timedelta) else ttl
        if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or seconds <= 0:
            raise ValueError("ttl must be a positive number of seconds (or give expires_at)")
        exp = int(now + seconds)
    claims: Dict[str, Any] = {"sub": user, "exp": exp, "iat": iat}
    if channels is not None:
        chans = [channels] if isinstance(channels, str) else list(channels)
        if not all(isinstance(c, str) and c for c in chans):
            raise ValueError("channels must be non-empty strings")
        claims["channels"] = chans
    if info is not _UNSET:
        claims["info"] = info
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    try:
        payload = _b64(json.dumps(claims, separators=(",", ":"), allow_nan=False).encode())
    except (TypeError, ValueError) as e:
        raise TypeError(f"info is not JSON-serializable: {e}") from None
    signing_input = f"{header}.{payload}".encode("ascii")
    signature = _b64(hmac.new(bytes(key), signing_input, hashlib.sha256).digest())
    return f"{header}.{payload}.{signature}"
