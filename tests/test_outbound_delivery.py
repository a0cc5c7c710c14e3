"""A subscription's outbound auth end to end: the config file's `headers` and `auth` (values
from the environment), carried by every delivery to a real loopback receiver, the OAuth2 token
from a real loopback token endpoint, asked again once after a 401; and the spec's rules."""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path

import pytest

from app.config import load_settings
from app.errors import ConfigError
from app.subscriptions.secrets import stored_from_api
from app.subscriptions.spec import SpecError, SubscriptionSpec
from tests.relaying import Gateway, hook, subscription
from tests.subscribers import Reply, Sink
from tests.test_outbound import TokenEndpoint

pytestmark = pytest.mark.anyio

ENV = {"ERP_KEY": "key-123", "ERP_CLIENT_SECRET": "client-s3cret", "ERP_PASSWORD": "pw"}


async def test_deliveries_carry_the_static_headers_and_an_oauth2_token_fetched_once(
    gateway: Gateway, sink: Sink
) -> None:
    with TokenEndpoint(expires_in=3600) as tokens:
        auth = (
            f'{{type = "oauth2", token_url = "{tokens.token_url}", client_id = "erp", '
            'client_secret_env = "ERP_CLIENT_SECRET", scope = "orders"}'
        )
        toml = subscription(sink, "erp", headers='{"X-Api-Key" = {env = "ERP_KEY"}}', auth=auth)
        async with gateway(toml, **ENV) as client:
            for n in range(3):
                await hook(client, OrderId=f"o-{n}")
            await arrived(sink, 3)
        assert len(tokens.asked) == 1 and tokens.asked[0].form["scope"] == "orders"
        assert tokens.asked[0].client == ("erp", "client-s3cret")
    for received in sink.at("/erp"):
        assert received.headers["X-Api-Key"] == "key-123"
        assert received.headers["Authorization"] == "Bearer tok-1"
        assert received.headers["Content-Type"] == "application/cloudevents+json"


async def test_a_401_makes_the_retry_ask_for_a_new_token(gateway: Gateway, sink: Sink) -> None:
    sink.script("/erp", Reply(status=401))
    with TokenEndpoint(expires_in=3600) as tokens:
        auth = (
            f'{{type = "oauth2", token_url = "{tokens.token_url}", client_id = "erp", '
            'client_secret_env = "ERP_CLIENT_SECRET"}'
        )
        async with gateway(subscription(sink, "erp", auth=auth), **ENV) as client:
            await hook(client)
            await arrived(sink, 2)
    first, retry = sink.at("/erp")
    assert (first.status, first.headers["Authorization"]) == (401, "Bearer tok-1")
    assert (retry.status, retry.headers["Authorization"]) == (200, "Bearer tok-2")


async def test_basic_auth_from_the_environment(gateway: Gateway, sink: Sink) -> None:
    auth = '{type = "basic", username = "orderhook", password_env = "ERP_PASSWORD"}'
    async with gateway(subscription(sink, "erp", auth=auth), **ENV) as client:
        await hook(client)
        await arrived(sink, 1)
    expected = "Basic " + base64.b64encode(b"orderhook:pw").decode()
    assert sink.at("/erp")[0].headers["Authorization"] == expected


async def arrived(sink: Sink, count: int, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while len(sink.at("/erp")) < count:
        assert time.monotonic() < deadline, f"{len(sink.at('/erp'))} of {count} deliveries"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize(
    ("lines", "env", "message"),
    [
        (
            ['headers = {"X-Api-Key" = {env = "MISSING"}}'],
            {},
            "`subscriptions[0].headers.X-Api-Key` names MISSING",
        ),
        (['auth = {type = "bearer"}'], {}, "`subscriptions[0].auth.token` is required"),
        (
            [
                'auth = {type = "oauth2", token_url = "ftp://x", client_id = "c", '
                'client_secret = "s"}'
            ],
            {},
            "`subscriptions[0].auth.token_url` must be an http or https URL",
        ),
        (
            ['headers = {"Authorization" = "x"}', 'auth = {type = "bearer", token = "t"}'],
            {},
            "`subscriptions[0].headers` header 'Authorization' is `auth`'s",
        ),
        (['auth = {type = "digest"}'], {}, "auth"),
    ],
)
def test_the_config_loader_names_what_is_wrong_with_outbound_auth(
    tmp_path: Path, lines: list[str], env: dict[str, str], message: str
) -> None:
    path = tmp_path / "orderhook.toml"
    body = "\n".join(lines)
    path.write_text(
        f'[[subscriptions]]\nid = "erp"\nurl = "https://erp.example/hook"\n'
        f'secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"\n{body}\n'
    )
    with pytest.raises(ConfigError) as raised:
        load_settings(path, env)
    assert message in str(raised.value)
    assert "key-123" not in str(raised.value)


def test_the_api_takes_values_never_the_gateways_environment() -> None:
    """An API caller naming an environment variable could have the gateway send its own
    secrets (the admin token) to a URL of the caller's choice."""
    for spec in (
        SubscriptionSpec(
            id="erp", url="https://erp.example/", headers={"X": _env("ORDERHOOK_ADMIN_TOKEN")}
        ),
        SubscriptionSpec(id="erp", url="https://erp.example/", secret_env="ORDERHOOK_ADMIN_TOKEN"),
    ):
        with pytest.raises(SpecError) as raised:
            stored_from_api(spec, _NoKey())
        assert "is for the config file" in str(raised.value)


def _env(name: str) -> object:
    from app.subscriptions.auth import EnvValue

    return EnvValue(name)


class _NoKey:
    available = False

    def seal(self, value: str) -> str:
        raise AssertionError("nothing may be sealed before the spec is checked")

    def open(self, sealed: str) -> str:
        raise AssertionError

    def fingerprint(self, value: str) -> str:
        raise AssertionError
