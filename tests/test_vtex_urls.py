"""Every VTEX API URL from parts: an account name, whole path segments, an encoded query."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from app.config import load_settings
from app.errors import ConfigError
from app.vtex.urls import (
    FEED_PATH,
    ORDER_PATH,
    VtexRefused,
    base_url_problem,
    vtex_url,
)

VTEX = "https://{account}.vtexcommercestable.com.br"
FAKE = "http://127.0.0.1:9000/{account}"


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        (VTEX, "https://mystore.vtexcommercestable.com.br/api/oms/pvt/orders/v5-01"),
        (FAKE, "http://127.0.0.1:9000/mystore/api/oms/pvt/orders/v5-01"),
        (FAKE + "/", "http://127.0.0.1:9000/mystore/api/oms/pvt/orders/v5-01"),
    ],
)
def test_get_order_url(base: str, expected: str) -> None:
    assert vtex_url(base, "mystore", (*ORDER_PATH, "v5-01")) == expected


@pytest.mark.parametrize(
    "account",
    [
        "evil.example/x#",  # the issue's: the credentials went to evil.example
        "127.0.0.1:9001/x#",
        "evil.example?",
        "user@evil.example",
        "mystore.evil.example",
        "",
        "-mystore",
        "my store",
        "a" * 64,
    ],
)
def test_url_builder_refuses_account_that_is_not_a_name(account: str) -> None:
    for base in (VTEX, FAKE):
        with pytest.raises(VtexRefused, match="refused to call VTEX"):
            vtex_url(base, account, (*ORDER_PATH, "v5-01"))


@pytest.mark.parametrize(
    "order_id",
    [
        "../../../../api/dataentities/CL/search?_where=email=x",  # the issue's
        "a/b",
        "..%2F..%2Fx",
        "a?b=c",
        "a#b",
        "a\\b",
        "...",
        "pedido-ção",
    ],
)
def test_order_id_is_one_path_segment(order_id: str) -> None:
    for base, prefix in ((VTEX, []), (FAKE, ["mystore"])):
        url = urlsplit(vtex_url(base, "mystore", (*ORDER_PATH, order_id)))
        *path, last = url.path.split("/")[1:]
        assert path == [*prefix, *ORDER_PATH]
        assert unquote(last) == order_id
        assert (url.query, url.fragment) == ("", "")
        assert url.netloc == urlsplit(base.format(account="mystore")).netloc


@pytest.mark.parametrize("segment", ["", ".", ".."])
def test_dot_segments_are_refused(segment: str) -> None:
    with pytest.raises(VtexRefused, match="path segment"):
        vtex_url(VTEX, "mystore", (*ORDER_PATH, segment))


def test_query_is_encoded() -> None:
    url = vtex_url(VTEX, "mystore", FEED_PATH, {"maxlot": "10", "x": "1&y=2#z"})
    assert url.endswith("/api/orders/feed?maxlot=10&x=1%26y%3D2%23z")


@pytest.mark.parametrize(
    ("base", "problem"),
    [
        (VTEX, None),
        (FAKE, None),
        ("http://127.0.0.1:9000/vtex/{account}/", None),
        ("ftp://{account}.example", "must be an http or https URL"),
        ("{account}.vtexcommercestable.com.br", "must be an http or https URL"),
        ("https://vtexcommercestable.com.br", "must hold {account}"),
        ("https://u:p@{account}.example", "no user info"),
        ("https://{account}.example/?a=1", "no user info, query or fragment"),
        ("https://{account}.example/#", "no user info, query or fragment"),
        ("https://{account}.example/{region}", "no placeholder but {account}"),
    ],
)
def test_base_url_template_is_checked(base: str, problem: str | None) -> None:
    found = base_url_problem(base)
    assert (found is None) if problem is None else (found is not None and problem in found)


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        (
            'account = "evil.example/x#"',
            '`sources[0].account` must be "*" or a VTEX account name (letters, digits and '
            "inner hyphens, at most 63), got 'evil.example/x#'",
        ),
        (
            'account = "a"\n[vtex]\nbase_url = "https://vtex.example/api"',
            "`vtex.base_url` must hold {account} in its host or path",
        ),
    ],
)
def test_config_refuses_what_no_vtex_url_is_built_from(
    tmp_path: Path, toml: str, expected: str
) -> None:
    path = tmp_path / "orderhook.toml"
    path.write_text('[[sources]]\nauth_header = "h"\nauth_token = "t"\n' + toml + "\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, {})
    assert str(info.value) == f"config {path}: {expected}"
