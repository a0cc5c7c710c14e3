"""Every VTEX API URL, built from parts in one place. Pure functions, no I/O.

The base URL is a template, `https://{account}.vtexcommercestable.com.br` (or a fake VTEX's,
`http://127.0.0.1:9000/{account}`, with the account in the path). An account name and every
path segment come from outside (a hook, VTEX's feed, the command line), so none is formatted in
as text: the account must be a VTEX account name (a host name label), each segment is
percent-encoded whole (`/`, `?`, `#` and `%` included, so it stays one segment), a segment that
is empty, `.` or `..` is refused, and the query is encoded. The URL built must name the
account's own host, or it is refused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

from app.errors import BadRequest, OrderhookError
from app.events import check_account

ACCOUNT_FIELD = "{account}"
ORDER_PATH = ("api", "oms", "pvt", "orders")  # + the order id: Get Order
FEED_PATH = ("api", "orders", "feed")  # Feed v3: GET takes items, POST commits handles
HOOK_CONFIG_PATH = ("api", "orders", "hook", "config")  # the account's order hook


class VtexError(OrderhookError):
    """A VTEX call that gave no usable answer; the message names the call, never a secret.
    The whole tree is drawn in app/vtex/api.py."""


class VtexRefused(VtexError):
    """The gateway will not call VTEX with this account or path: not one a URL is safely
    built from. Never retried."""


def vtex_url(
    base_url: str,
    account: str,
    segments: Sequence[str],
    query: Mapping[str, str] | None = None,
) -> str:
    """The URL of `segments` (each one path segment) in `account`'s VTEX API."""
    try:
        check_account(account, "the account")
    except BadRequest as exc:
        raise VtexRefused(f"refused to call VTEX: {exc.message}") from None
    base = urlsplit(base_url)
    host = base.netloc.replace(ACCOUNT_FIELD, account)
    prefix = base.path.rstrip("/").replace(ACCOUNT_FIELD, quote(account, safe=""))
    path = prefix + "".join("/" + _segment(s) for s in segments)
    url = urlunsplit((base.scheme, host, path, urlencode(query or {}), ""))
    if urlsplit(url).netloc != host or base.scheme not in ("http", "https"):
        raise VtexRefused(f"refused to call VTEX: the URL built is not on {account}'s host")
    return url


def _segment(segment: str) -> str:
    if segment in ("", ".", ".."):
        raise VtexRefused(f"refused to call VTEX with the path segment {segment!a}")
    return quote(segment, safe="")


def base_url_problem(base_url: str) -> str | None:
    """What is wrong with a `[vtex] base_url` template, or None: it must be an http(s) URL
    whose host or path holds `{account}`, with no user info, query or fragment."""
    parts = urlsplit(base_url)
    host_template = parts.netloc.replace(ACCOUNT_FIELD, "a")
    if parts.scheme not in ("http", "https") or not urlsplit(f"//{host_template}").hostname:
        return "must be an http or https URL"
    if "@" in parts.netloc or parts.query or parts.fragment or "#" in base_url:
        return "must have no user info, query or fragment"
    if ACCOUNT_FIELD not in parts.netloc + parts.path:
        return f"must hold {ACCOUNT_FIELD} in its host or path"
    if "{" in base_url.replace(ACCOUNT_FIELD, "") or "}" in base_url.replace(ACCOUNT_FIELD, ""):
        return f"may hold no placeholder but {ACCOUNT_FIELD}"
    return None
