"""Authentication as a strategy, so identity backends (accounts, LDAP) plug in without core changes.

Until the identity service lands, ``TrustingAuth`` treats every caller as the system admin.
"""

from __future__ import annotations

from typing import Protocol

from mgmt.core.service import SYSTEM_ACCOUNT, Account


class AuthStrategy(Protocol):
    async def authenticate(self, session: str | None, message_name: str) -> Account:
        """The account behind ``session``, or raise ``SYS.AUTH_REQUIRED``."""
        ...


class TrustingAuth:
    """A stand-in that authenticates everyone as admin; replaced by the identity service."""

    async def authenticate(self, session: str | None, message_name: str) -> Account:
        return SYSTEM_ACCOUNT
