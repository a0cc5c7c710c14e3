"""deploy/: the Prometheus alerting rules (checked and unit-tested by promtool) and the Grafana
dashboard name only metrics and labels the gateway exports; /metrics answers without Redis,
with the hook's answers counted across `serve --workers N`."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from app.store.schema import Keys
from tests.conftest import AUTH, notification
from tests.relaying import Gateway, hook, subscription, until
from tests.subscribers import Reply, Sink
from tests.test_edges import TestRedis, gateway_on
from tests.test_metrics import OPS, promtool, scrape

ROOT = Path(__file__).resolve().parent.parent
RULES_DIR = ROOT / "deploy" / "prometheus"
RULES = RULES_DIR / "orderhook-rules.yml"
RULE_TESTS = RULES_DIR / "orderhook-rules.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "orderhook.json"

# ── PromQL: the metric names and label matchers an expression names ────────────────────────────

STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
SELECTOR = re.compile(r"(?<![\w:.$])([a-zA-Z_:][\w:]*)\s*\{([^}]*)\}")
EQUALS = re.compile(r'([a-zA-Z_]\w*)\s*=\s*"([^"$]*)"')
MATCHER = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
IDENTIFIER = re.compile(r"(?<![\w:.$])([a-zA-Z_:][\w:]*)(?![\w:]|\s*\()")
KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"}
KEYWORDS |= {"group_left", "group_right", "inf", "nan", "atan2"}


def _blank_strings(expr: str) -> str:
    """`expr` with each string literal's content blanked (its quotes kept): a `{` or a name in
    a label value or a template is no selector. The length is kept: positions still match."""
    return STRING.sub(lambda m: m.group(0)[0] + " " * (len(m.group(0)) - 2) + m.group(0)[0], expr)


def label_matchers(expr: str) -> list[tuple[str, str]]:
    """(metric, label) of every matcher on a named metric: `m{a="x", b=~"y"}`."""
    plain = _blank_strings(expr)
    return [
        (metric, label)
        for metric, inside in SELECTOR.findall(plain)
        for label in MATCHER.findall(inside)
    ]


def equal_matchers(expr: str) -> list[tuple[str, str, str]]:
    """(metric, label, value) of every `label="value"` matcher on a named metric."""
    return [
        (found.group(1), label, value)
        for found in SELECTOR.finditer(_blank_strings(expr))
        for label, value in EQUALS.findall(expr[found.start(2) : found.end(2)])
    ]


def metric_names(expr: str) -> set[str]:
    """The metrics `expr` names: identifiers not called as functions or aggregations, outside
    label matchers, ranges, `by (…)` lists and strings, and not keywords."""
    plain = _blank_strings(expr)
    plain = re.sub(r"\{[^}]*\}", " ", plain)
    plain = re.sub(r"\[[^\]]*\]", " ", plain)
    plain = GROUPING.sub(" ", plain)
    plain = re.sub(r"\$\{?\w+\}?", " ", plain)  # Grafana variables
    return {name for name in IDENTIFIER.findall(plain) if name.lower() not in KEYWORDS}


@pytest.mark.parametrize(
    ("expr", "names", "matchers"),
    [
        ("up", {"up"}, []),
        (
            'a_total{code=~"5..", x!="y{z}"} / b',
            {"a_total", "b"},
            [("a_total", "code"), ("a_total", "x")],
        ),
        (
            'max without (instance, state) (m{state="closed"}) == 0',
            {"m"},
            [("m", "state")],
        ),
        (
            "histogram_quantile(0.99, sum by (le) (rate(h_bucket[5m] offset 1h)))",
            {"h_bucket"},
            [],
        ),
        ("sum(rate(x[5m])) by (job) > 1e3 and on(job) y == bool 1", {"x", "y"}, []),
        (
            '1 - max(m{subscription=~"$subscription"}) unless absent(n)',
            {"m", "n"},
            [("m", "subscription")],
        ),
        ("label_replace(m, 'dst', '$1', 'src', '(.*)') or vector(0)", {"m"}, []),
    ],
)
def test_the_extractor_finds_names_and_matchers(
    expr: str, names: set[str], matchers: list[tuple[str, str]]
) -> None:
    assert metric_names(expr) == names
    assert label_matchers(expr) == matchers


def test_the_extractor_finds_the_values_matched_exactly() -> None:
    expr = 'a{x="1", y=~"2", z!="3", s="$sub"} + b{code="5}x"}'
    assert equal_matchers(expr) == [("a", "x", "1"), ("b", "code", "5}x")]


# ── The files ───────────────────────────────────────────────────────────────────────────────


def rules() -> list[dict[str, object]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard_queries() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel["targets"]]


def variable_queries() -> list[tuple[str, str]]:
    """(metric, label) of each `label_values(metric, label)` template variable."""
    variables = json.loads(DASHBOARD.read_text())["templating"]["list"]
    found = [
        re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", v.get("definition", "")) for v in variables
    ]
    return [(m.group(1), m.group(2)) for m in found if m]


def every_query() -> list[str]:
    return [str(rule["expr"]) for rule in rules()] + dashboard_queries()


def test_promtool_checks_the_rules_and_their_unit_tests_pass() -> None:
    tool = promtool()
    checked = subprocess.run(
        [tool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(
        [tool, "test", "rules", RULE_TESTS.name],
        cwd=RULES_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


def test_every_rule_has_a_wait_a_severity_and_says_what_to_do() -> None:
    names = {str(rule["alert"]) for rule in rules()}
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    tested = {case["alertname"] for test in tests for case in test["alert_rule_test"]}
    fired = {
        case["alertname"]
        for test in tests
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    quiet = {
        case["alertname"]
        for test in tests
        for case in test["alert_rule_test"]
        if not case["exp_alerts"]
    }
    assert names == tested == fired == quiet  # each fires somewhere, and stays quiet somewhere
    for rule in rules():
        assert rule["for"] and rule["labels"]["severity"] in {"warning", "critical"}  # type: ignore[index]
        annotations = rule["annotations"]
        assert {"summary", "description", "dashboard"} <= set(annotations)  # type: ignore[arg-type]
        assert "README" in annotations["description"]  # type: ignore[index]


def test_the_dashboard_is_importable_with_a_datasource_input_and_a_subscription_variable() -> None:
    doc = json.loads(DASHBOARD.read_text())
    assert [i["name"] for i in doc["__inputs"]] == ["DS_PROMETHEUS"]
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["subscription"]["includeAll"] and variables["subscription"]["multi"]
    for panel in doc["panels"]:
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}"
    ids = [panel["id"] for panel in doc["panels"]]
    assert len(ids) == len(set(ids))
    assert any("histogram_quantile" in q for q in dashboard_queries())


# ── Against a real gateway ──────────────────────────────────────────────────────────────────


def exported(text: str) -> dict[str, set[str]]:
    """Each sample name /metrics shows (with its _total, _bucket... suffix), and the labels
    its samples carry."""
    found: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, set()).update(sample.labels)
    return found


@pytest.mark.anyio
async def test_every_metric_and_label_the_rules_and_dashboard_name_is_exported(
    gateway: Gateway, sink: Sink
) -> None:
    sink.script("/down", Reply(500), Reply(500), Reply(500))
    subs = subscription(sink, "up") + subscription(sink, "down", breaker_threshold=3)
    async with gateway(subs) as client:
        before = answers(await scrape(client))  # the counters are the process's: other tests'
        await hook(client)
        await client.post("/hooks/vtex", json={}, headers={"X-Orderhook-Token": "x"})  # 401
        await until(
            lambda: client.get("/ops/stats", headers=OPS),
            lambda r: [s["deadLetters"] for s in r.json()["subscriptions"]] == [0, 1],
            timeout=20,  # three failed attempts, on a loaded machine
        )
        text = await scrape(client)
    metrics = exported(text)
    named = {name for query in every_query() for name in metric_names(query)}
    named |= {metric for metric, _ in variable_queries()}
    assert len(named) >= 12
    assert sorted(named - set(metrics)) == []
    matched = [pair for query in every_query() for pair in label_matchers(query)]
    matched += variable_queries()
    assert [(m, label) for m, label in matched if label not in metrics[m]] == []
    values = {
        (s.name, k, v)
        for f in text_string_to_metric_families(text)
        for s in f.samples
        for k, v in s.labels.items()
    }
    exact = [found for query in every_query() for found in equal_matchers(query)]
    assert exact and [found for found in exact if found not in values] == []  # no typo'd value
    after = answers(text)
    moved = {code: after[code] - before.get(code, 0) for code in ("200", "401", "503")}
    assert moved == {"200": 1, "401": 1, "503": 0}
    assert 'orderhook_breaker_state{state="open",subscription="down"} 1.0' in text
    assert "orderhook_store_up 1.0" in text and "orderhook_ready 1.0" in text


def answers(text: str) -> dict[str, float]:
    """The hook's answers by status code, as one scrape counts them."""
    return {
        s.labels["code"]: s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "orderhook_hook_responses_total"
    }


@pytest.fixture
def own_redis() -> Iterator[TestRedis]:
    server = TestRedis()
    yield server
    server.stop()


def figures(text: str) -> dict[str, float]:
    wanted = {"orderhook_store_up", "orderhook_ready", "orderhook_hook_responses_total"}
    return {
        (s.name + s.labels.get("code", "")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name in wanted
    }


def test_metrics_answers_while_redis_hangs_with_every_workers_hook_answers(
    own_redis: TestRedis, tmp_path: Path
) -> None:
    """/metrics read everything from Redis: a hung Redis made it fail (no scrape, so no alert);
    and with `--workers 2` each process's counts would differ from one scrape to the next."""
    gateway = gateway_on(own_redis, tmp_path, Keys("monitoring").prefix)
    gateway.env = {**gateway.env, "ORDERHOOK_OPS_TOKEN": "ops-token"}
    gateway.env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    gateway.args = ["--workers", "2"]
    gateway.start()
    try:
        with httpx.Client(base_url=gateway.url, timeout=10) as http:
            for i in range(20):
                r = http.post("/hooks/vtex", json=notification(OrderId=f"m-{i}"), headers=AUTH)
                assert r.status_code == 200
            own_redis.signal(signal.SIGSTOP)
            down = [http.post("/hooks/vtex", json=notification(), headers=AUTH) for _ in range(3)]
            started = time.monotonic()
            hung = [http.get("/metrics", headers=OPS) for _ in range(4)]
            took = (time.monotonic() - started) / len(hung)
            guess = http.get("/metrics", headers={"Authorization": "Bearer a-guess"})
            own_redis.signal(signal.SIGCONT)
            back = [http.get("/metrics", headers=OPS) for _ in range(4)]
    finally:
        status = gateway.stop()
    assert status == 0
    assert [r.status_code for r in down] == [503] * 3
    assert [r.status_code for r in hung + back] == [200] * 8
    # a failed guess cannot be counted now: refused like every guess while Redis is down, so
    # scrapes do not open a way round the sign-in throttle
    assert guess.status_code == 503 and "unavailable" in guess.json()["error"]
    assert took < 7  # two Redis deadlines (2 s: the sign-in throttle's, the read's), within
    # Prometheus' default scrape timeout (10 s)
    for r in hung:  # whichever process answered: every process's counts
        assert figures(r.text) == {
            "orderhook_store_up": 0,
            "orderhook_ready": 0,
            "orderhook_hook_responses_total200": 20,
            "orderhook_hook_responses_total500": 0,
            "orderhook_hook_responses_total503": 3,
        }
        assert "orderhook_queue_depth" not in r.text  # read from Redis: not shown, not 0
    for r in back:
        assert (
            figures(r.text)["orderhook_store_up"] == 1 and figures(r.text)["orderhook_ready"] == 1
        )
        assert figures(r.text)["orderhook_hook_responses_total503"] == 3
        assert "orderhook_ingest_events_total" in r.text
    assert not os.environ.get("PROMETHEUS_MULTIPROC_DIR")  # set for the workers only


def test_a_multiprocess_folder_the_environment_brought_is_not_the_gateways(
    own_redis: TestRedis, tmp_path: Path
) -> None:
    """PROMETHEUS_MULTIPROC_DIR left set by another program (here: a folder that is gone) does
    not stop a gateway, nor make it count into that folder: its counts are its own."""
    gateway = gateway_on(own_redis, tmp_path, Keys("monitoring").prefix)
    gone = tmp_path / "gone"
    gateway.env = {**gateway.env, "ORDERHOOK_OPS_TOKEN": "ops-token"}
    gateway.env["PROMETHEUS_MULTIPROC_DIR"] = str(gone)
    gateway.start()
    try:
        with httpx.Client(base_url=gateway.url, timeout=10) as http:
            assert http.post("/hooks/vtex", json=notification(), headers=AUTH).status_code == 200
            scraped = http.get("/metrics", headers=OPS)
    finally:
        assert gateway.stop() == 0
    assert figures(scraped.text)["orderhook_hook_responses_total200"] == 1
    assert not gone.exists()
