"""`/openapi.json` describes every endpoint, and the live gateway answers as it says.

schemathesis generates requests (valid and invalid) for every operation from the description and
sends them to a real gateway process on a real Redis, with subscriptions and a dead letter in
place; no answer may be a 500, and every answer must match its documented status, content type,
headers and schema.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import CHECKS as ALL_CHECKS
from schemathesis.checks import is_check_class, load_all_checks
from schemathesis.specs.openapi.checks import positive_data_acceptance
from starlette.routing import Route

from app.config import load_settings
from app.errors import BadRequest
from app.events import MAX_CLOCK_AHEAD_S, TICKS_PER_S, iso_ticks, parse_body
from app.openapi import SCHEMAS, document
from app.sealing import new_key
from app.server import create_app
from app.vtex.jsonata import PATH as JSONATA_PATH
from tests import strategies
from tests.conftest import AUTH, HEADER, TOKEN, Gateway, gateway_config, notification
from tests.relaying import SECRET
from tests.subscribers import Reply, Sink

load_all_checks()
CHECKS = [check for check in ALL_CHECKS.get_all() if not is_check_class(check)]
FEED_TOKEN = "feed-token"
ADMIN_TOKEN = "admin-token"
HOOK_HEADER = HEADER.lower()  # as the config keeps it, and so the document

SUBSCRIPTIONS = f"""
[[subscriptions]]
id = "push"
url = "{{sink}}"
secret = "{SECRET}"
retry_schedule = []

[[subscriptions]]
id = "pull"
mode = "pull"
token = "{FEED_TOKEN}"

[ops]  # schemathesis's sign-in attempts fail by the hundred: not throttled, so it sees the rest
sign_in_failures_per_client = 1000000
sign_in_failures_total = 1000000
"""


@pytest.fixture(scope="module")
def api(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway with a push and a pull subscription, one dead letter and one pending item."""
    tmp = tmp_path_factory.mktemp("openapi")
    prefix = f"test-openapi-{os.getpid()}"
    config = gateway_config(tmp, prefix)
    with Sink() as sink:
        sink.script("/push", Reply(status=500))
        config.write_text(config.read_text() + SUBSCRIPTIONS.replace("{sink}", sink.url("/push")))
        env = {
            **os.environ,
            "REDIS_URL": redis_url,
            "ORDERHOOK_ADMIN_TOKEN": ADMIN_TOKEN,
            "ORDERHOOK_SECRET_KEY": new_key(),  # subscriptions with secrets can be created
        }
        process = Gateway(config, env, tmp / "gateway.log").start()
        try:
            r = httpx.post(process.url + "/hooks/vtex", json=notification(), headers=AUTH)
            assert r.status_code == 200, r.text
            yield process
        finally:
            process.stop()
            import redis

            client = redis.Redis.from_url(redis_url)
            for key in client.scan_iter(match=f"{{{prefix}}}*", count=1000):
                client.delete(key)
            client.close()


# Every phase that generates single requests: `coverage` (deterministic: each boundary, each
# missing or mistyped field, a missing body, each undocumented method) and `fuzzing` (random, both
# valid and invalid data). `examples` has nothing to draw from; `stateful` needs links we do not
# describe. Seeded (deterministic) so CI runs the same requests every time.
PHASES = ["coverage", "fuzzing"]
MAX_EXAMPLES = 100


@pytest.fixture(scope="module")
def api_schema(api: Gateway) -> Any:
    schema = schemathesis.openapi.from_url(api.url + "/openapi.json")
    schema.config.phases.update(phases=PHASES)
    schema.config.generation.update(
        modes=list(GenerationMode), max_examples=MAX_EXAMPLES, deterministic=True, database="none"
    )

    @schema.auth()
    class Credentials:
        """The right token for each route; schemathesis leaves it out where it negates auth."""

        def get(self, case: Any, context: Any) -> str:
            return "unused"

        def set(self, case: Any, data: str, context: Any) -> None:
            case.headers = {**(case.headers or {}), **credentials(case.operation.path)}

    return schema


def credentials(path: str) -> dict[str, str]:
    """Named as the document names them (schemathesis drops a header by that name to probe)."""
    if path.startswith("/feed/"):
        return {"Authorization": f"Bearer {FEED_TOKEN}"}
    if path == "/hooks/vtex":
        return {HOOK_HEADER: TOKEN}
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


lazy_schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture
def node_id(request: pytest.FixtureRequest) -> None:
    """schemathesis's lazy schema (4.32) reads `_nodeid`, which pytest 9 no longer keeps."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


def test_every_check_runs() -> None:
    names = {check.__name__ for check in CHECKS}
    assert {"positive_data_acceptance", "negative_data_rejection", "not_a_server_error"} <= names


@pytest.mark.usefixtures("node_id")
@lazy_schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_error_and_every_answer_as_documented(case: Any) -> None:
    in_the_past(case)
    a_range_to_replay(case)
    response = case.call(timeout=10)
    checks = CHECKS
    if refused_as_jsonata(case, response) or refused_as_a_spec(case, response):
        checks = [check for check in CHECKS if check is not positive_data_acceptance]
    case.validate_response(response, checks=checks)


def in_the_past(case: Any) -> None:
    """A change time further ahead of the clock than ingest allows moved back to 2000: the
    document gives the form of a time, not this rule of the clock (a generated year is any)."""
    if case.operation.path != "/hooks/vtex" or not isinstance(case.body, dict):
        return
    latest = (time.time() + MAX_CLOCK_AHEAD_S - 60) * TICKS_PER_S
    for name in ("LastChange", "CurrentChange"):
        ticks = iso_ticks(case.body.get(name))
        if ticks is not None and ticks > latest:
            case.body[name] = "2000" + case.body[name][4:]


def a_range_to_replay(case: Any) -> None:
    """A replay's range (two date-times) that a rule of time refuses (`since` not before
    `until`, longer than the retention, a form iso_ticks refuses) made the last hour: the
    document gives the form of each time, not these rules between them and the clock."""
    body, meta = case.body, case.meta
    if not case.operation.path.endswith("/replay") or not isinstance(body, dict):
        return
    if meta is None or not meta.generation.mode.is_positive:  # a negative case stays one
        return
    times = [body.get(name) for name in ("since", "until")]
    if not all(isinstance(t, str) or t is None for t in times) or times[0] is None:
        return
    now = time.time() * 1000
    since, until = (iso_ticks(t) if t is not None else now * 10_000 for t in times)
    if since is None or until is None or not 0 < until - since <= 3600 * TICKS_PER_S:
        body["since"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now / 1000 - 3600))
        body.pop("until", None)


def refused_as_jsonata(case: Any, response: Any) -> bool:
    """The JSONata endpoint's 400 and 422 for an expression that does not compile, fails or
    hits a limit, or a Document that is not JSON: the document says both are strings; JSONata's
    and JSON's grammars are beyond what a schema can say."""
    if case.operation.path != JSONATA_PATH or response.status_code not in (400, 422):
        return False
    message = response.json()["error"]
    return message.startswith(("expression ", "evaluation failed", "`Document` is not valid JSON"))


# What the subscription endpoints refuse in a body of the documented form: a spec the config
# loader refuses (a field's value out of its range, a JSONata compile error, a URL that is not
# http(s) or that the SSRF guard refuses) names the field in backticks; a subscription's mode or
# id cannot change; a pull subscription has no secret to rotate. Beyond what a schema can say.
SPEC_PATHS = ("/admin/subscriptions", "/admin/subscriptions/{id}")
SPEC_REFUSALS = ("`", "a secret cannot be removed", "rotate-secret is for push")


def refused_as_a_spec(case: Any, response: Any) -> bool:
    path = case.operation.path
    if response.status_code != 400 or not (path in SPEC_PATHS or path.endswith("rotate-secret")):
        return False
    return bool(response.json()["error"].startswith(SPEC_REFUSALS))


def test_every_route_is_described_and_nothing_else(tmp_path: Path) -> None:
    app = create_app(load_settings(gateway_config(tmp_path, "unused"), {}))
    served = {
        (route.path, method.lower())
        for route in app.routes
        if isinstance(route, Route)
        for method in route.methods or ()
        if method != "HEAD"
    }
    described = {
        (path, method)
        for path, item in document(app.state.settings)["paths"].items()
        for method in item
    }
    assert served == described


def test_the_hook_header_is_the_configured_one(api: Gateway) -> None:
    doc = httpx.get(api.url + "/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    assert doc["components"]["securitySchemes"]["hookAuth"]["name"].lower() == HEADER.lower()


def test_replay_refuses_a_field_it_does_not_know(api: Gateway) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    r = httpx.post(api.url + "/admin/dlq/replay", json={"ids": [], "id": "x"}, headers=admin)
    assert r.status_code == 400 and "unknown field 'id'" in r.json()["error"]


@pytest.mark.parametrize(
    ("form", "status"), [({}, 400), ({"subscription": ""}, 400), ({"subscription": "nope"}, 404)]
)
def test_dashboard_replay_without_a_known_subscription_is_refused(
    api: Gateway, form: dict[str, str], status: int
) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    r = httpx.post(api.url + "/ops/replay", data=form, headers=admin)
    assert r.status_code == status and r.json()["error"]


def _pattern(name: str, *path: str) -> re.Pattern[str]:
    schema = SCHEMAS[name]
    for key in path:
        schema = schema["properties"][key]
    return re.compile(schema["pattern"])


def _ingest_takes(field: str, value: str) -> bool:
    doc = notification(**{field: value}) if field != "Account" else notification()
    if field == "Account":
        doc["Origin"] = {"Account": value}
    try:
        parse_body(orjson.dumps(doc))
    except BadRequest:
        return False
    return True


@settings(max_examples=300, deadline=None)
@given(value=st.text(max_size=12) | st.sampled_from([".", "..", "a\n", "x" * 129]))
def test_the_documents_order_id_and_account_are_what_ingest_takes(value: str) -> None:
    order_id = _pattern("Notification", "OrderId")
    account = _pattern("Notification", "Origin", "Account")
    assert bool(order_id.search(value) and len(value) <= 128 and "\n" not in value) == (
        _ingest_takes("OrderId", value)
    )
    assert bool(account.search(value) and "\n" not in value) == _ingest_takes("Account", value)


@settings(max_examples=300, deadline=None)
@given(
    value=strategies.change_times
    | st.text(max_size=30)
    | st.from_regex(_pattern("Notification", "LastChange").pattern, fullmatch=True)
)
def test_the_documents_change_time_is_what_ingest_takes(value: str) -> None:
    documented = bool(_pattern("Notification", "LastChange").search(value)) and "\n" not in value
    if documented and (iso_ticks(value) or 0) > time.time() * TICKS_PER_S:
        return  # ahead of the clock: a rule of time the pattern does not hold
    assert documented == _ingest_takes("LastChange", value)
