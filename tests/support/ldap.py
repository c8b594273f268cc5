"""A real OpenLDAP server (Debian's ``slapd``) for tests: its own config, database, TLS certificate
and ports under a temporary directory, run in the foreground as a child process on 127.0.0.1.

The directory (suffix ``dc=example,dc=test``)::

    ou=people       alice, bob, carol, twin     (employeeType: staff)
    ou=contractors  eve, twin                   (employeeType: contractor)
    ou=services     cn=ringstack                (the service account)

Every user's password is ``<uid>-pw``. Access: authenticated users read everything, anonymous
clients may only bind (no anonymous searches), and, as some real directories are configured,
slapd accepts *unauthenticated* binds (a DN with an empty password, ``allow bind_anon_dn``), which
is the trap an LDAP login must not fall into. TLS: a test CA signs a certificate for the IP address
127.0.0.1 only (so ``localhost`` does not match it); ``ldap://`` (StartTLS offered) and ``ldaps://``
listen on ports of their own.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

SUFFIX = "dc=example,dc=test"
SERVICE_DN = f"cn=ringstack,ou=services,{SUFFIX}"
SERVICE_PASSWORD = "service-pw-7Yq"
ROOT_DN = f"cn=admin,{SUFFIX}"
ROOT_PASSWORD = "root-pw-Kx2"
PEOPLE = ("alice", "bob", "carol", "twin")
CONTRACTORS = ("eve", "twin")
SCHEMAS = ("core", "cosine", "inetorgperson")


def password_of(uid: str) -> str:
    return f"{uid}-pw"


def user_dn(uid: str, ou: str = "people") -> str:
    return f"uid={uid},ou={ou},{SUFFIX}"


def _ssha(password: str) -> str:
    salt = os.urandom(8)
    digest = hashlib.sha1(password.encode() + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


def _entries() -> str:
    blocks = [
        f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\no: example\ndc: example",
        *(
            f"dn: ou={ou},{SUFFIX}\nobjectClass: organizationalUnit\nou: {ou}"
            for ou in ("people", "contractors", "services")
        ),
        f"dn: {SERVICE_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\n"
        f"cn: ringstack\nuserPassword: {_ssha(SERVICE_PASSWORD)}",
    ]
    for ou, uids, kind in (("people", PEOPLE, "staff"), ("contractors", CONTRACTORS, "contractor")):
        for uid in uids:
            blocks.append(
                f"dn: {user_dn(uid, ou)}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid.title()}\n"
                f"sn: {uid.title()}\nemployeeType: {kind}\nuserPassword: {_ssha(password_of(uid))}"
            )
    return "\n\n".join(blocks) + "\n"


@dataclass(frozen=True)
class Pki:
    ca_pem: str
    other_ca_pem: str  # a CA that signed nothing slapd has: verification against it must fail
    cert_file: Path
    key_file: Path


def _ca(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_pki(root: Path) -> Pki:
    ca_key, ca_cert = _ca("ringstack test CA")
    _, other_ca = _ca("some other CA")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_file, key_file = root / "server.crt", root / "server.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key_file.chmod(0o600)
    pem = serialization.Encoding.PEM
    return Pki(ca_cert.public_bytes(pem).decode(), other_ca.public_bytes(pem).decode(), cert_file, key_file)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _binary(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if found is None:
        raise AssertionError(f"{name} is missing: scripts/test installs slapd and ldap-utils")
    return found


class Slapd:
    """``start()`` once; then ``stop()``/``start()`` again (same ports, same data), ``pause()`` and
    ``resume()`` (SIGSTOP/SIGCONT: a server that accepts connections but never answers)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.pki = make_pki(root)
        self.port = 0
        self.tls_port = 0
        self.proc: subprocess.Popen[str] | None = None
        self.lines: deque[str] = deque(maxlen=400)  # level 8 logs every connection: keep the last ones
        self._loaded = False

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def tls_url(self) -> str:
        return f"ldaps://127.0.0.1:{self.tls_port}"

    def _config(self) -> Path:
        conf = self.root / "slapd.conf"
        includes = "".join(f"include /etc/ldap/schema/{name}.schema\n" for name in SCHEMAS)
        conf.write_text(
            f"{includes}"
            "modulepath /usr/lib/ldap\nmoduleload back_mdb\n"
            f"pidfile {self.root}/slapd.pid\nargsfile {self.root}/slapd.args\n"
            "allow bind_anon_dn\n"  # the unauthenticated-bind trap, armed
            f"TLSCACertificateFile {self.root}/ca.pem\n"
            f"TLSCertificateFile {self.pki.cert_file}\nTLSCertificateKeyFile {self.pki.key_file}\n"
            "database mdb\nmaxsize 16777216\n"
            f'suffix "{SUFFIX}"\nrootdn "{ROOT_DN}"\nrootpw {_ssha(ROOT_PASSWORD)}\n'
            f"directory {self.root}/db\n"
            "access to attrs=userPassword by self =xw by anonymous auth by * none\n"
            "access to * by users read by anonymous auth by * none\n"
        )
        (self.root / "ca.pem").write_text(self.pki.ca_pem)
        return conf

    def start(self, timeout: float = 20) -> None:
        assert self.proc is None or self.proc.poll() is not None, "slapd is running"
        conf = self._config()
        if not self._loaded:
            (self.root / "db").mkdir(exist_ok=True)
            (self.root / "data.ldif").write_text(_entries())
            subprocess.run(
                [_binary("slapadd"), "-q", "-f", str(conf), "-l", str(self.root / "data.ldif")],
                check=True,
                capture_output=True,
                text=True,
            )
            self._loaded = True
        for _attempt in range(5):
            if not self.port:  # a restart keeps its ports, so stored server URLs stay right
                self.port, self.tls_port = _free_port(), _free_port()
            if self._run(conf, timeout):
                return
            if not any("bind(" in line or "Address already in use" in line for line in self.lines):
                break
            self.port = self.tls_port = 0  # a port was taken meanwhile: pick others
        raise AssertionError("slapd did not start:\n" + "\n".join(list(self.lines)[-40:]))

    def _run(self, conf: Path, timeout: float) -> bool:
        self.lines = deque(maxlen=400)
        started = threading.Event()
        # -d: stay in the foreground, logging to stderr. Level 8 (connections) logs the event loop
        # waiting on its listeners ("daemon: epoll: listen=..."), which it does only once they all
        # listen; "slapd starting" comes earlier, before listen(), too early to connect.
        self.proc = subprocess.Popen(
            [_binary("slapd"), "-d", "8", "-f", str(conf), "-h", f"{self.url}/ {self.tls_url}/"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        proc = self.proc

        def read() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                self.lines.append(line.rstrip("\n"))
                if " listen=" in line and "daemon:" in line:
                    started.set()
            started.set()  # it exited: wake the waiter, which checks

        threading.Thread(target=read, daemon=True).start()
        if not started.wait(timeout):
            raise AssertionError(
                f"slapd did not start within {timeout} s:\n" + "\n".join(list(self.lines)[-40:])
            )
        if proc.poll() is not None:
            proc.wait()
            return False
        return True

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.resume()
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)

    def search_dns(self, dn: str, password: str, search_filter: str) -> list[str]:
        """The DNs ``search_filter`` finds under the suffix, as ``dn`` (``ldapsearch``, ldap-utils)."""
        # "1.1": no attributes, DNs only
        args = ["-x", "-LLL", "-H", self.url, "-D", dn, "-w", password, "-b", SUFFIX, search_filter, "1.1"]
        found = subprocess.run(
            [_binary("ldapsearch"), *args],
            check=True,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return [line[len("dn: ") :] for line in found.stdout.splitlines() if line.startswith("dn: ")]

    def whoami(self, dn: str, password: str) -> subprocess.CompletedProcess[str]:
        """``ldapwhoami`` (ldap-utils), a client that sends exactly the bind asked for."""
        return subprocess.run(
            [_binary("ldapwhoami"), "-x", "-H", self.url, "-D", dn, "-w", password],
            check=False,  # the caller looks at the outcome
            capture_output=True,
            text=True,
            timeout=10,
        )
