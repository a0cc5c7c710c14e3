"""Secrets sealed under ORDERHOOK_SECRET_KEY: they open with the key that sealed them only."""

from __future__ import annotations

import base64
import subprocess

import pytest

from app.errors import ConfigError, SecretsUnavailable, SecretUnreadable
from app.sealing import Sealer, new_key
from tests.test_cli import plain

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
HOW_TO = "make one with `orderhook secret key`"


def sealer(*keys: str) -> Sealer:
    return Sealer.from_env({"ORDERHOOK_SECRET_KEY": ",".join(keys)})


def test_a_sealed_secret_opens_to_itself_and_does_not_show_it() -> None:
    seal = sealer(new_key())
    sealed = seal.seal(SECRET)
    assert SECRET not in sealed and seal.open(sealed) == SECRET
    assert seal.seal(SECRET) != sealed  # a fresh IV each time: equal secrets look different
    assert seal.open(seal.seal("é ✓")) == "é ✓"


def test_another_key_does_not_open_it() -> None:
    sealed = sealer(new_key()).seal(SECRET)
    with pytest.raises(SecretUnreadable) as refused:
        sealer(new_key()).open(sealed)
    assert "ORDERHOOK_SECRET_KEY" in str(refused.value)
    assert SECRET not in str(refused.value) and sealed not in str(refused.value)


def test_without_a_key_a_sealed_secret_does_not_open() -> None:
    sealed = sealer(new_key()).seal(SECRET)
    with pytest.raises(SecretUnreadable, match="ORDERHOOK_SECRET_KEY is not set"):
        Sealer.from_env({}).open(sealed)


def tampered(sealed: str, at: int) -> str:
    raw = bytearray(base64.urlsafe_b64decode(sealed))
    raw[at] ^= 1
    return base64.urlsafe_b64encode(bytes(raw)).decode()


@pytest.mark.parametrize("at", [0, 9, 30, -1])  # version, timestamp, ciphertext, HMAC
def test_an_altered_sealed_secret_does_not_open(at: int) -> None:
    seal = sealer(new_key())
    sealed = seal.seal(SECRET)
    with pytest.raises(SecretUnreadable, match="altered") as refused:
        seal.open(tampered(sealed, at))
    assert SECRET not in str(refused.value)


@pytest.mark.parametrize("garbage", ["", "not a token", "é", "gAAAAA"])
def test_garbage_does_not_open(garbage: str) -> None:
    with pytest.raises(SecretUnreadable):
        sealer(new_key()).open(garbage)


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ("nope", "ORDERHOOK_SECRET_KEY is not a valid key"),
        (base64.urlsafe_b64encode(b"x" * 16).decode(), "ORDERHOOK_SECRET_KEY is not a valid key"),
        ("é" * 44, "ORDERHOOK_SECRET_KEY is not a valid key"),
        pytest.param(
            f"{new_key()}, {new_key()},short",
            "ORDERHOOK_SECRET_KEY's key 3 of 3 is not a valid",
            id="the-third-of-three-short",  # fresh keys: an id every collection agrees on
        ),
    ],
)
def test_a_malformed_key_is_refused_in_one_line_saying_how_to_make_one(
    value: str, named: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        Sealer.from_env({"ORDERHOOK_SECRET_KEY": value})
    message = str(refused.value)
    assert message.startswith(named) and message.endswith(HOW_TO) and "\n" not in message
    assert value.split(",")[-1].strip() not in message


@pytest.mark.parametrize("env", [{}, {"ORDERHOOK_SECRET_KEY": ""}, {"ORDERHOOK_SECRET_KEY": " "}])
def test_without_a_key_nothing_is_sealed_and_the_answer_says_how_to_set_one(
    env: dict[str, str],
) -> None:
    seal = Sealer.from_env(env)
    assert not seal.available
    with pytest.raises(SecretsUnavailable) as refused:
        seal.seal(SECRET)
    assert refused.value.status == 409
    assert refused.value.message == (
        "set ORDERHOOK_SECRET_KEY to store secrets through the API; "
        "make one with `orderhook secret key`"
    )
    with pytest.raises(SecretsUnavailable):
        seal.fingerprint(SECRET)


def test_a_fingerprint_is_stable_tells_secrets_apart_and_depends_on_the_key() -> None:
    key = new_key()
    seal = sealer(key)
    print_ = seal.fingerprint(SECRET)
    assert len(print_) == 16 and int(print_, 16) >= 0
    assert sealer(key).fingerprint(SECRET) == print_  # another process, the same key
    assert seal.fingerprint(SECRET + "x") != print_
    assert sealer(new_key()).fingerprint(SECRET) != print_


def test_the_newest_key_seals_and_every_key_opens() -> None:
    old, new = new_key(), new_key()
    sealed_before = sealer(old).seal(SECRET)
    rotated = sealer(new, old)
    assert rotated.available and rotated.open(sealed_before) == SECRET
    resealed = rotated.reseal(sealed_before)
    assert sealer(new).open(resealed) == SECRET
    with pytest.raises(SecretUnreadable):
        sealer(old).open(resealed)
    assert rotated.fingerprint(SECRET) == sealer(new).fingerprint(SECRET)


def test_orderhook_secret_key_prints_a_fresh_key_the_gateway_takes() -> None:
    made = [
        subprocess.run(plain("secret", "key"), capture_output=True, text=True, timeout=30)
        for _ in range(2)
    ]
    assert all(m.returncode == 0 and m.stderr == "" for m in made)
    keys = [m.stdout.removesuffix("\n") for m in made]
    assert keys[0] != keys[1] and "\n" not in keys[0]
    seal = Sealer.from_env({"ORDERHOOK_SECRET_KEY": keys[0]})
    assert seal.available and seal.open(seal.seal(SECRET)) == SECRET
