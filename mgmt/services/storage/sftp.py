"""SSH/SFTP connections to backup storage servers, with paramiko (blocking: call from a thread).

Host keys are trusted on first use: the key seen when the storage is added is stored, and every
later connection must present the same one (a changed key is refused, not silently accepted).
Error messages never carry the password or key.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import paramiko

from bus.errors import RingstackError
from mgmt.services.storage.errors import StorageError

CONNECT_TIMEOUT = 10.0


@dataclass(frozen=True)
class SshTarget:
    hostname: str
    port: int
    username: str
    password: str | None = None
    private_key: str | None = None
    host_key: str | None = None  # "<type> <base64>", None until the first connection

    def __repr__(self) -> str:  # never show the secrets
        return f"SshTarget({self.username}@{self.hostname}:{self.port})"


def load_private_key(text: str) -> paramiko.PKey:
    """A private key from its PEM/OpenSSH text (Ed25519, ECDSA or RSA)."""
    for cls in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return cls.from_private_key(io.StringIO(text))
        except (paramiko.SSHException, ValueError, IndexError, TypeError):
            continue
    raise RingstackError(
        StorageError.BACKUP_STORAGE_UNREACHABLE, "sshKey is not a readable, unencrypted private key"
    )


class _TrustOnFirstUse(paramiko.MissingHostKeyPolicy):
    def __init__(self, target: SshTarget) -> None:
        self.target = target
        self.seen: str | None = None

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        seen = f"{key.get_name()} {key.get_base64()}"
        if self.target.host_key is not None and seen != self.target.host_key:
            raise RingstackError(
                StorageError.HOST_KEY_MISMATCH,
                f"{self.target.hostname}:{self.target.port} presented another host key than at the first"
                f" connection ({key.get_name()}); refusing to connect",
                details={"hostname": self.target.hostname},
            )
        self.seen = seen


def connect(target: SshTarget, timeout: float = CONNECT_TIMEOUT) -> tuple[paramiko.SSHClient, str]:
    """A logged-in SSH client and the host key it saw."""
    pkey = load_private_key(target.private_key) if target.private_key else None
    client = paramiko.SSHClient()
    policy = _TrustOnFirstUse(target)
    client.set_missing_host_key_policy(policy)
    try:
        client.connect(
            target.hostname,
            port=target.port,
            username=target.username,
            password=target.password,
            pkey=pkey,
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
            look_for_keys=False,
            allow_agent=False,
        )
    except RingstackError:
        client.close()
        raise
    except paramiko.AuthenticationException:
        client.close()
        raise unreachable(target, "authentication failed") from None
    except (TimeoutError, paramiko.SSHException, OSError, EOFError) as exc:
        client.close()
        raise unreachable(target, str(exc) or type(exc).__name__) from None
    assert policy.seen is not None  # no known_hosts are loaded, so the policy always runs
    return client, policy.seen


def unreachable(target: SshTarget, why: str) -> RingstackError:
    return RingstackError(
        StorageError.BACKUP_STORAGE_UNREACHABLE,
        f"cannot use {target.username}@{target.hostname}:{target.port}: {why}",
        details={"hostname": target.hostname, "port": target.port},
    )
