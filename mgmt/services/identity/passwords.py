"""Password hashing with scrypt (hashlib, stdlib): slow and memory-hard, one random salt per password.

Stored form: ``scrypt$ln=<log2 N>,r=<r>,p=<p>$<salt>$<key>`` (salt and key base64, unpadded). The
parameters travel with each hash, so they can be raised later: ``needs_rehash`` tells the login
path to re-hash a password that still uses weaker ones.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass
from functools import cache

SCHEME = "scrypt"


@dataclass(frozen=True, slots=True)
class ScryptParams:
    # N = 2**14, r = 8: 16 MiB and a few tens of milliseconds per hash (OWASP's scrypt minimum is
    # N=2**17 with r=8 at p=1, or equivalent work; 2**14 keeps logins fast on small machines and
    # can be raised without invalidating stored hashes).
    log2_n: int = 14
    r: int = 8
    p: int = 1
    salt_bytes: int = 16
    key_bytes: int = 32

    @property
    def maxmem(self) -> int:
        # scrypt needs 128 * r * N bytes; OpenSSL refuses anything above maxmem (default 32 MiB).
        return 128 * self.r * (1 << self.log2_n) + (1 << 20)


DEFAULT_PARAMS = ScryptParams()
# A stored string comes from the database; bound what it may ask for (2**20 * 8 * 128 = 1 GiB).
_MAX_LOG2_N, _MAX_R, _MAX_P = 20, 32, 16


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _derive(password: str, salt: bytes, params: ScryptParams, key_bytes: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=1 << params.log2_n,
        r=params.r,
        p=params.p,
        maxmem=params.maxmem,
        dklen=key_bytes,
    )


def hash_password(password: str, params: ScryptParams = DEFAULT_PARAMS) -> str:
    salt = os.urandom(params.salt_bytes)
    key = _derive(password, salt, params, params.key_bytes)
    return f"{SCHEME}$ln={params.log2_n},r={params.r},p={params.p}${_b64(salt)}${_b64(key)}"


def _parse(stored: str) -> tuple[ScryptParams, bytes, bytes]:
    """The parameters, salt and key of a stored hash; ValueError when it is not one of ours."""
    scheme, settings, salt_text, key_text = stored.split("$")
    if scheme != SCHEME:
        raise ValueError(f"unknown password scheme {scheme!r}")
    values = dict(item.split("=", 1) for item in settings.split(","))
    params = ScryptParams(log2_n=int(values["ln"]), r=int(values["r"]), p=int(values["p"]))
    if not (1 <= params.log2_n <= _MAX_LOG2_N and 1 <= params.r <= _MAX_R and 1 <= params.p <= _MAX_P):
        raise ValueError("scrypt parameters out of range")
    salt, key = _unb64(salt_text), _unb64(key_text)
    if not salt or len(key) < 16:
        raise ValueError("salt or key too short")
    return params, salt, key


def verify_password(password: str, stored: str) -> bool:
    """True when ``password`` matches ``stored``; a malformed ``stored`` matches nothing."""
    try:
        params, salt, key = _parse(stored)
    except (ValueError, KeyError):
        return False
    candidate = _derive(password, salt, params, len(key))
    return hmac.compare_digest(candidate, key)  # constant time: no early exit on the first difference


def needs_rehash(stored: str, params: ScryptParams = DEFAULT_PARAMS) -> bool:
    """True when ``stored`` uses weaker parameters than ``params`` (or is not readable)."""
    try:
        current, salt, key = _parse(stored)
    except (ValueError, KeyError):
        return True
    return (
        current.log2_n < params.log2_n
        or current.r < params.r
        or current.p < params.p
        or len(salt) < params.salt_bytes
        or len(key) < params.key_bytes
    )


@cache
def _dummy_hash() -> str:
    return hash_password(os.urandom(16).hex())


def burn_verification_time(password: str) -> None:
    """Spend as long as a real verification: a login for an unknown account must not answer
    faster than one with a wrong password, or the timing would tell which names exist."""
    verify_password(password, _dummy_hash())
