"""Talking to an LDAP directory with ldap3: checking a server's settings, finding a user's entry,
proving a password. Blocking calls; ``LdapDirectory`` runs them on a small thread pool of its own,
so a slow or hung directory never holds the event loop nor the threads other work needs.

Safety rules kept here, in one place:

- a user-supplied uid is escaped before it goes into a filter (RFC 4515: ``*()\\`` and NUL) or a
  DN (RFC 4514), so ``*)(uid=*`` is a uid like any other, which matches nothing;
- an empty password never reaches a bind: a simple bind with a DN and no password is an
  "unauthenticated bind", which a server may answer with success without checking anything;
- referrals are not followed (a directory cannot send a password to another server), every
  connection is read-only, and every connect and answer has a deadline;
- TLS verifies the server's certificate and name, against the server's CA certificate when one
  is configured, else against the system's trust store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from bus.errors import RingstackError, invalid_argument
from schema.api.ldap import USERNAME_PLACEHOLDER
from schema.db.ldap import LdapServer

# ldap3 2.9.1 (its latest release) imports names pyasn1 >= 0.6 has deprecated: silence that one
# import's warnings, not the process's.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import ldap3
    from ldap3.core import exceptions as ldap_errors
    from ldap3.core.results import (
        RESULT_INSUFFICIENT_ACCESS_RIGHTS,
        RESULT_INVALID_DN_SYNTAX,
        RESULT_NO_SUCH_OBJECT,
        RESULT_SIZE_LIMIT_EXCEEDED,
        RESULT_SUCCESS,
    )
    from ldap3.operation.search import parse_filter
    from ldap3.utils.conv import escape_filter_chars
    from ldap3.utils.dn import escape_rdn, parse_dn

log = logging.getLogger(__name__)
T = TypeVar("T")

# The directory cannot be reached, or did not answer in time.
UNREACHABLE: Final = "LDAP.UNREACHABLE"
# The TLS handshake failed (an untrusted certificate, a name that does not match, StartTLS refused).
TLS_FAILED: Final = "LDAP.TLS_FAILED"
# The directory refused the service account's credentials.
SERVICE_BIND_FAILED: Final = "LDAP.SERVICE_BIND_FAILED"
# The search base does not exist (or the service account may not read it).
BASE_NOT_FOUND: Final = "LDAP.BASE_NOT_FOUND"
# A search the directory refused, for a reason other than the above.
SEARCH_FAILED: Final = "LDAP.SEARCH_FAILED"
# CreateLdapBinding: no entry has that uid; or more than one has.
ENTRY_NOT_FOUND: Final = "LDAP.ENTRY_NOT_FOUND"
AMBIGUOUS_UID: Final = "LDAP.AMBIGUOUS_UID"

_TIMEOUT_ERRORS = (ldap_errors.LDAPResponseTimeoutError, ldap_errors.LDAPSocketReceiveError)
_TLS_ERRORS = (
    ldap_errors.LDAPStartTLSError,
    ldap_errors.LDAPCertificateError,
    ldap_errors.LDAPSSLConfigurationError,
    ssl.SSLError,
)


@dataclass(frozen=True, slots=True)
class DirectorySettings:
    """One server's settings, as stored (``schema.db.ldap.LdapServer`` and its secret)."""

    uuid: str
    name: str
    url: str
    base: str
    username: str | None
    password: str | None = field(repr=False)
    encryption: str
    username_property: str
    filter: str | None
    user_dn_template: str | None
    timeout: int  # seconds
    ca_certificate: str | None

    @classmethod
    def of(cls, row: LdapServer, password: str | None) -> DirectorySettings:
        return cls(
            uuid=row.uuid,
            name=row.name,
            url=row.url,
            base=row.base,
            username=row.username,
            password=password,
            encryption=row.encryption,
            username_property=row.username_property,
            filter=row.filter,
            user_dn_template=row.user_dn_template,
            timeout=row.timeout,
            ca_certificate=row.ca_certificate,
        )

    @property
    def label(self) -> str:
        return f"LDAP server {self.name!r} ({self.uuid})"


def check_filter(text: str, field_name: str = "filter") -> None:
    """``SYS.INVALID_ARGUMENT`` unless ``text`` is one well-formed LDAP filter."""
    try:
        parse_filter(text, None, True, True, None, False)
    except ldap_errors.LDAPException as exc:
        raise invalid_argument(f"{field_name}: not a valid LDAP filter ({exc})", field=field_name) from None


def user_filter(settings: DirectorySettings, uid: str) -> str:
    """The filter finding ``uid``'s entry; the uid is escaped, so it can only ever be a value."""
    match = f"({settings.username_property}={escape_filter_chars(uid)})"
    return f"(&{settings.filter}{match})" if settings.filter else match


def template_dn(template: str, uid: str) -> str:
    return template.replace(USERNAME_PLACEHOLDER, escape_rdn(uid))


def dn_key(dn: str) -> str:
    """A DN in one spelling (lower case, no blanks around separators), for comparing two DNs."""
    try:
        parts = parse_dn(dn, escape=False, strip=True)
    except ldap_errors.LDAPException:
        return dn.strip().lower()
    return "".join(f"{attr.lower()}={value.lower()}{sep}" for attr, value, sep in parts)


# ---------------------------------------------------------------- blocking calls (worker threads)


class _VerifyingTls(ldap3.Tls):
    """TLS as ``ssl.create_default_context`` does it: the certificate must chain to the server's CA
    (or the system's) and name the host, both checked by OpenSSL during the handshake. (ldap3's own
    name check calls ``ssl.match_hostname``, deprecated, and gone from Python 3.12.)"""

    def __init__(self, ca_pem: str | None) -> None:
        super().__init__(validate=ssl.CERT_REQUIRED, ca_certs_data=ca_pem)
        self.context = ssl.create_default_context(cadata=ca_pem)  # cadata=None: the system's CAs

    def wrap_socket(self, connection: Any, do_handshake: bool = False) -> None:
        connection.socket = self.context.wrap_socket(
            connection.socket, server_hostname=connection.server.host, do_handshake_on_connect=do_handshake
        )


class _Connection:
    """An open, possibly TLS-upgraded, not yet bound connection; errors become RingstackErrors."""

    def __init__(self, settings: DirectorySettings) -> None:
        self.settings = settings
        tls = None
        if settings.encryption != "None":
            tls = _VerifyingTls(settings.ca_certificate)
        server = ldap3.Server(
            settings.url,
            use_ssl=settings.encryption == "TLS",
            tls=tls,
            connect_timeout=settings.timeout,
            get_info=ldap3.NONE,  # no schema or root DSE reads: one bind, one search, no more
        )
        self.conn = ldap3.Connection(
            server,
            receive_timeout=settings.timeout,
            auto_referrals=False,
            read_only=True,
            raise_exceptions=False,
            client_strategy=ldap3.SYNC,
        )
        try:
            self._guarded(self.conn.open)
            if settings.encryption == "StartTLS":
                self._guarded(self.conn.start_tls)
        except BaseException:
            self.close()  # a socket may be open (TLS refused after connecting)
            raise

    def bind(self, dn: str | None, password: str | None) -> bool:
        """A simple bind as ``dn``, or an anonymous one when ``dn`` is None. False when refused."""
        if dn is None:
            self.conn.authentication = ldap3.ANONYMOUS
            self.conn.user, self.conn.password = None, None
        else:
            if not password:  # never an unauthenticated bind (see the module's docstring)
                return False
            self.conn.authentication = ldap3.SIMPLE
            self.conn.user, self.conn.password = dn, password
        ok = bool(self._guarded(self.conn.bind))
        # The password is not kept on the connection object longer than the bind needs it.
        self.conn.password = None
        return ok

    def search(self, base: str, search_filter: str, scope: str, size_limit: int) -> tuple[int, list[str]]:
        """(LDAP result code, DNs found); no attributes are read."""
        self._guarded(
            self.conn.search,
            base,
            search_filter,
            search_scope=scope,
            attributes=ldap3.NO_ATTRIBUTES,
            size_limit=size_limit,
            time_limit=self.settings.timeout,
        )
        result = int(self.conn.result.get("result", -1)) if self.conn.result else -1
        dns = [r["dn"] for r in self.conn.response or () if r.get("type") == "searchResEntry"]
        return result, dns

    @property
    def result_text(self) -> str:
        result = self.conn.result or {}
        text = str(result.get("description") or "no result")
        if result.get("message"):
            text += f": {result['message']}"
        return text

    def close(self) -> None:
        with contextlib.suppress(ldap_errors.LDAPException, OSError):  # a broken one: nothing left to do
            self.conn.unbind()

    def _guarded(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except RingstackError:
            raise
        except _TLS_ERRORS as exc:
            raise self._error(TLS_FAILED, _tls_reason(exc), exc) from None
        except _TIMEOUT_ERRORS as exc:
            raise self._error(UNREACHABLE, f"no answer within {self.settings.timeout} s", exc) from None
        except ldap_errors.LDAPSocketOpenError as exc:
            if _is_tls_failure(exc):
                raise self._error(TLS_FAILED, _tls_reason(exc), exc) from None
            reason = "no answer in time" if _is_timeout(exc) else _socket_reason(exc)
            raise self._error(UNREACHABLE, reason, exc) from None
        except (ldap_errors.LDAPCommunicationError, OSError) as exc:
            raise self._error(UNREACHABLE, "the connection failed", exc) from None
        except ldap_errors.LDAPException as exc:
            raise self._error(SEARCH_FAILED, "the directory refused the request", exc) from None

    def _error(self, code: str, reason: str, exc: BaseException) -> RingstackError:
        # The full exception (addresses, certificate details) goes to the log only: the login API
        # is public, so its errors say what failed, not how the directory is set up.
        log.warning("%s: %s: %s", self.settings.label, reason, exc)
        hint = "; try again later or ask an administrator" if code == UNREACHABLE else ""
        return RingstackError(
            code,
            f"{self.settings.label} cannot be used: {reason}{hint}",
            details={"ldapServerUuid": self.settings.uuid},
        )

    def __enter__(self) -> _Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it wraps: ldap3 nests each address's error in its args, Python chains."""
    found: list[BaseException] = []
    pending = [exc]
    while pending and len(found) < 32:
        current = pending.pop()
        if any(current is seen for seen in found):
            continue
        found.append(current)
        for arg in current.args:
            if isinstance(arg, list):
                pending.extend(
                    item[0]
                    for item in arg
                    if isinstance(item, tuple) and item and isinstance(item[0], BaseException)
                )
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    return found


def _is_tls_failure(exc: BaseException) -> bool:
    return any(
        isinstance(e, ssl.SSLError | ldap_errors.LDAPCertificateError) or "ssl" in str(e).lower()
        for e in _causes(exc)
    )


def _tls_reason(exc: BaseException) -> str:
    text = " ".join(str(e) for e in _causes(exc))
    if "doesn't match" in text or "mismatch" in text.lower():
        return "TLS: the server's certificate is not issued for the address in its url"
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return "TLS: the server's certificate is not trusted (is caCertificate its CA's?)"
    return "the TLS handshake failed"


def _is_timeout(exc: BaseException) -> bool:
    return any(isinstance(e, TimeoutError) or "timed out" in str(e).lower() for e in _causes(exc))


def _socket_reason(exc: BaseException) -> str:
    text = " ".join(str(e) for e in _causes(exc)).lower()
    if "refused" in text:
        return "connection refused"
    if "name or service not known" in text or "no address" in text or "name resolution" in text:
        return "the host name does not resolve"
    if "unreachable" in text:
        return "the network is unreachable"
    return "the connection failed"


def _service_bind(conn: _Connection) -> None:
    s = conn.settings
    if not conn.bind(s.username, s.password):
        who = "the service account" if s.username else "an anonymous bind"
        raise RingstackError(
            SERVICE_BIND_FAILED,
            f"{s.label} refused {who} ({conn.result_text}); check the server's username and password",
            details={"ldapServerUuid": s.uuid},
        )


def check_settings(settings: DirectorySettings) -> None:
    """Connect (with TLS as configured), bind as the service account and read the search base:
    what ``AddLdapServer`` and ``UpdateLdapServer`` do before storing settings. A server in
    template mode without a service account is only connected to (and its TLS checked)."""
    with _Connection(settings) as conn:
        if settings.user_dn_template and not settings.username:
            return
        _service_bind(conn)
        result, dns = conn.search(settings.base, "(objectClass=*)", ldap3.BASE, 1)
        if result == RESULT_NO_SUCH_OBJECT or (result == RESULT_SUCCESS and not dns):
            raise RingstackError(
                BASE_NOT_FOUND,
                f"{settings.label}: the base {settings.base!r} does not exist or cannot be read",
                details={"ldapServerUuid": settings.uuid, "base": settings.base},
            )
        if result != RESULT_SUCCESS:
            hint = ""
            if result == RESULT_INSUFFICIENT_ACCESS_RIGHTS:
                hint = "; give a service account (username, password) that may search it"
            raise RingstackError(
                SEARCH_FAILED,
                f"{settings.label}: reading the base {settings.base!r} failed ({conn.result_text}){hint}",
                details={"ldapServerUuid": settings.uuid},
            )


def _entries(conn: _Connection, uid: str) -> list[str]:
    """The DNs of ``uid``'s entries (at most 2: two already make it ambiguous)."""
    s = conn.settings
    if s.user_dn_template:
        dn = template_dn(s.user_dn_template, uid)
        result, dns = conn.search(dn, "(objectClass=*)", ldap3.BASE, 1)
        if result in (RESULT_NO_SUCH_OBJECT, RESULT_INSUFFICIENT_ACCESS_RIGHTS, RESULT_INVALID_DN_SYNTAX):
            return []
    else:
        result, dns = conn.search(s.base, user_filter(s, uid), ldap3.SUBTREE, 2)
    if result not in (RESULT_SUCCESS, RESULT_SIZE_LIMIT_EXCEEDED):
        raise RingstackError(
            SEARCH_FAILED,
            f"{s.label}: searching for the user failed ({conn.result_text})",
            details={"ldapServerUuid": s.uuid},
        )
    return dns


def find_entry(settings: DirectorySettings, uid: str) -> str:
    """The DN of ``uid``'s entry, looked up as the service account (``CreateLdapBinding``). A
    server in template mode without a service account is not asked: the template gives the DN,
    unchecked (directories commonly let nobody read entries anonymously)."""
    if settings.user_dn_template and not settings.username:
        return template_dn(settings.user_dn_template, uid)
    with _Connection(settings) as conn:
        _service_bind(conn)
        dns = _entries(conn, uid)
    if not dns:
        raise RingstackError(
            ENTRY_NOT_FOUND,
            f"{settings.label} has no entry for uid {uid!r}"
            + (" readable by the service account" if settings.user_dn_template else ""),
            details={"ldapServerUuid": settings.uuid, "ldapUid": uid},
        )
    if len(dns) > 1:
        raise RingstackError(
            AMBIGUOUS_UID,
            f"{settings.label} has several entries for uid {uid!r}; narrow the server's filter",
            details={"ldapServerUuid": settings.uuid, "ldapUid": uid},
        )
    return dns[0]


def authenticate(settings: DirectorySettings, uid: str, password: str) -> str | None:
    """The DN that ``uid`` and ``password`` prove, or None when they prove nothing (unknown uid,
    several entries, wrong password). Raises only when the directory cannot be used."""
    if not password or not uid:
        return None
    if settings.user_dn_template:
        dn = template_dn(settings.user_dn_template, uid)
    else:
        with _Connection(settings) as conn:
            _service_bind(conn)
            dns = _entries(conn, uid)
        if len(dns) != 1:
            if dns:
                log.warning("%s: uid %r matches several entries; refusing the login", settings.label, uid)
            return None
        dn = dns[0]
    with _Connection(settings) as conn:
        if not conn.bind(dn, password):
            return None
    return dn


# ---------------------------------------------------------------- the async face


class LdapDirectory:
    """Runs the blocking calls above on a bounded pool of threads of its own."""

    def __init__(self, max_workers: int = 8) -> None:
        self._max_workers = max_workers
        self._pool: ThreadPoolExecutor | None = None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self._max_workers, thread_name_prefix="ldap")
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def check(self, settings: DirectorySettings) -> None:
        await self._run(check_settings, settings)

    async def find_entry(self, settings: DirectorySettings, uid: str) -> str:
        return await self._run(find_entry, settings, uid)

    async def authenticate(self, settings: DirectorySettings, uid: str, password: str) -> str | None:
        if not password:
            return None
        return await self._run(authenticate, settings, uid, password)

    def close(self) -> None:
        if self._pool is not None:
            # Calls in flight end by their own deadlines (every connect and answer has one).
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
