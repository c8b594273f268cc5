"""Pure parts of the job runner."""

from __future__ import annotations

from typing import ClassVar

from pydantic import SecretStr

from mgmt.cluster.jobs import account_from_wire, account_to_wire, scrub_secrets
from mgmt.core.service import Account
from schema.api.base import ApiMessage


class UnitTestWithSecret(ApiMessage):
    service: ClassVar[str] = "unit"

    name: str
    password: SecretStr
    ssh_key: SecretStr | None = None


def test_finished_jobs_keep_no_secrets():
    body = {"name": "h1", "password": "hunter2", "sshKey": "-----BEGIN KEY-----"}
    scrubbed = scrub_secrets(UnitTestWithSecret, body)
    assert scrubbed == {"name": "h1", "password": "******", "sshKey": "******"}
    assert body["password"] == "hunter2"  # the original is untouched


class UnitTestPlainPassword(ApiMessage):
    service: ClassVar[str] = "unit"

    account_name: str
    new_password: str


def test_password_fields_are_secret_even_as_plain_strings():
    assert scrub_secrets(UnitTestPlainPassword, {"accountName": "a", "newPassword": "p"}) == {
        "accountName": "a",
        "newPassword": "******",
    }


def test_a_body_without_secrets_is_left_alone():
    assert scrub_secrets(UnitTestWithSecret, {"name": "h1"}) is None


def test_account_round_trip():
    account = Account(uuid="a" * 32, name="bob", is_admin=False)
    assert account_from_wire(account_to_wire(account)) == account
