"""Password hashing (scrypt): salted, self-describing, constant-time checked, upgradable."""

from __future__ import annotations

import pytest

from mgmt.services.identity import passwords
from mgmt.services.identity.passwords import ScryptParams, hash_password, needs_rehash, verify_password

# Cheap parameters where the cost does not matter to what is tested.
FAST = ScryptParams(log2_n=4, r=1, p=1)


def test_hash_is_not_the_password_and_verifies():
    stored = hash_password("correct horse")
    assert "correct horse" not in stored
    assert stored.startswith("scrypt$ln=14,r=8,p=1$")
    assert verify_password("correct horse", stored)
    assert not verify_password("correct horsE", stored)
    assert not verify_password("", stored)


def test_every_hash_has_its_own_salt():
    first, second = hash_password("same", FAST), hash_password("same", FAST)
    assert first != second
    assert first.split("$")[2] != second.split("$")[2]
    assert verify_password("same", first) and verify_password("same", second)


def test_parameters_travel_with_the_hash():
    stored = hash_password("pw", FAST)
    assert stored.split("$")[1] == "ln=4,r=1,p=1"
    assert verify_password("pw", stored)  # verified with its own parameters, not the defaults
    assert needs_rehash(stored)  # weaker than the defaults
    assert not needs_rehash(hash_password("pw"))
    assert not needs_rehash(stored, FAST)


def test_unicode_passwords():
    stored = hash_password("pässwörd-密码", FAST)
    assert verify_password("pässwörd-密码", stored)
    assert not verify_password("passwort-密码", stored)


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "plain-text-password",
        "bcrypt$ln=4,r=1,p=1$c2FsdA$a2V5a2V5a2V5a2V5a2V5a2V5",
        "scrypt$ln=4,r=1$c2FsdA$a2V5a2V5a2V5a2V5a2V5a2V5",  # p missing
        "scrypt$ln=4,r=1,p=1$$a2V5a2V5a2V5a2V5a2V5a2V5",  # no salt
        "scrypt$ln=4,r=1,p=1$c2FsdA$a2V5",  # key too short
        "scrypt$ln=4,r=1,p=1$!!!$a2V5a2V5a2V5a2V5a2V5a2V5",  # not base64
        "scrypt$ln=40,r=1,p=1$c2FsdA$a2V5a2V5a2V5a2V5a2V5a2V5",  # asks for 2**40 rounds: refused
        "scrypt$ln=4,r=1000,p=1$c2FsdA$a2V5a2V5a2V5a2V5a2V5a2V5",
        "scrypt$ln=x,r=1,p=1$c2FsdA$a2V5a2V5a2V5a2V5a2V5a2V5",
    ],
)
def test_malformed_or_hostile_stored_values_match_nothing(stored):
    assert not verify_password("anything", stored)
    assert needs_rehash(stored)


def test_a_tampered_key_does_not_verify():
    stored = hash_password("pw", FAST)
    head, key = stored.rsplit("$", 1)
    flipped = ("A" if key[0] != "A" else "B") + key[1:]
    assert not verify_password("pw", f"{head}${flipped}")


def test_unknown_accounts_cost_a_verification_too(monkeypatch):
    calls = []
    real = passwords.verify_password
    monkeypatch.setattr(
        passwords, "verify_password", lambda pw, stored: calls.append(stored) or real(pw, stored)
    )
    passwords.burn_verification_time("guess")
    assert len(calls) == 1 and calls[0].startswith("scrypt$ln=14,")
