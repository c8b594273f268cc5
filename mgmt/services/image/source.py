"""Opening an image's source URL for streaming (blocking; runs in a worker thread).

``file://`` reads a regular file on the management node; ``http(s)://`` uses ``http.client``
with a timeout, following up to five redirects, to http(s) only. Failures become
``ImportFailure`` with ``IMAGE.SOURCE_UNREACHABLE`` and a message saying what went wrong.

A source can be interrupted from another thread (``Source.interrupt``): for HTTP that shuts the
socket down, so a read blocked on a stalled server returns at once when the import is cancelled.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import ssl
import stat
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO

from mgmt.services.image.errors import ImageError

HTTP_TIMEOUT = 30.0
MAX_REDIRECTS = 5


class ImportFailure(Exception):
    """Why an import failed: a stable code and a message, recorded as the image's statusReason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    @property
    def reason(self) -> str:
        return f"{self.code}: {self.message}"


def _nothing() -> None:
    pass


@dataclass
class Source:
    stream: IO[bytes]
    length: int | None  # declared length, when known in advance
    interrupt: Callable[[], None] = field(default=_nothing)

    def close(self) -> None:
        self.stream.close()


def _unreachable(url: str, why: str) -> ImportFailure:
    return ImportFailure(ImageError.SOURCE_UNREACHABLE, f"cannot read {url}: {why}")


def open_source(url: str) -> Source:
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme == "file":
        return _open_file(url)
    if scheme in ("http", "https"):
        return _open_http(url)
    raise _unreachable(url, f"unsupported scheme {scheme!r}")


def _open_file(url: str) -> Source:
    parts = urllib.parse.urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise _unreachable(url, "file:// URLs must name a local path (file:///path)")
    path = urllib.parse.unquote(parts.path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise _unreachable(url, exc.strerror or str(exc)) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):  # no devices, FIFOs or directories
        os.close(fd)
        raise _unreachable(url, "not a regular file")
    return Source(os.fdopen(fd, "rb"), st.st_size)


def _connect(parts: urllib.parse.SplitResult) -> http.client.HTTPConnection:
    host = parts.hostname or ""
    if parts.scheme.lower() == "https":
        return http.client.HTTPSConnection(
            host, parts.port, timeout=HTTP_TIMEOUT, context=ssl.create_default_context()
        )
    return http.client.HTTPConnection(host, parts.port, timeout=HTTP_TIMEOUT)


def _open_http(url: str) -> Source:
    current = url
    for _ in range(MAX_REDIRECTS + 1):
        parts = urllib.parse.urlsplit(current)
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise _unreachable(url, f"redirected to {current!r}, which is not an http(s) URL")
        conn = _connect(parts)
        target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
        try:
            conn.request("GET", target, headers={"User-Agent": "ringstack-image-import"})
            # Held here: the connection forgets its socket once a response says it will close.
            sock = conn.sock
            response = conn.getresponse()
        except (OSError, http.client.HTTPException, ValueError) as exc:
            conn.close()
            raise _unreachable(url, str(exc) or type(exc).__name__) from None
        if response.status in (301, 302, 303, 307, 308) and response.getheader("Location"):
            current = urllib.parse.urljoin(current, response.getheader("Location", ""))
            conn.close()
            continue
        if response.status != 200:
            conn.close()
            raise _unreachable(url, f"HTTP {response.status} {response.reason}")
        declared = response.getheader("Content-Length")
        length = int(declared) if declared and declared.isdigit() else None
        return Source(response, length, _shutdown(sock))
    raise _unreachable(url, f"more than {MAX_REDIRECTS} redirects")


def _shutdown(sock: socket.socket | None) -> Callable[[], None]:
    def interrupt() -> None:
        if sock is not None:
            with contextlib.suppress(OSError):  # already closed
                sock.shutdown(socket.SHUT_RDWR)

    return interrupt
