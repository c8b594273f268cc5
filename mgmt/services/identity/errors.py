"""The identity service's error codes (besides the SYS ones)."""

from __future__ import annotations

from typing import Final

from mgmt.core.quota import QUOTA_EXCEEDED

# Wrong password and unknown account alike: the answer must not tell which names exist.
AUTHENTICATION_FAILED: Final = "IDENTITY.AUTHENTICATION_FAILED"
# An account may not delete itself (nor could the last admin then be replaced).
CANNOT_DELETE_SELF: Final = "IDENTITY.CANNOT_DELETE_SELF"
LAST_ADMIN: Final = "IDENTITY.LAST_ADMIN"

__all__ = ["AUTHENTICATION_FAILED", "CANNOT_DELETE_SELF", "LAST_ADMIN", "QUOTA_EXCEEDED"]
