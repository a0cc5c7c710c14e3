"""`orderhook vtex hook show|register|delete|ensure --account A`: the store's VTEX hook, through
VTEX's `/api/orders/hook/config` (GET, POST, DELETE), with the source's API credentials.

`register` points the hook at this gateway (`[vtex] public_url` + `/hooks/vtex`) with the
source's auth header in `hook.headers`; VTEX pings it and saves it only if the gateway answers.
`ensure` registers it again when VTEX has removed it (VTEX deletes a hook after 3 days without
notifications): run it from cron.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import httpx

from app.config import Settings, Source, load_settings, source_for
from app.errors import ConfigError

HOOK_PATH = "/api/orders/hook/config"
TIMEOUT = httpx.Timeout(15.0)
DEFAULT_STATUSES = (
    "order-created",
    "payment-pending",
    "payment-approved",
    "ready-for-handling",
    "start-handling",
    "handling",
    "invoice",
    "invoiced",
    "cancellation-requested",
    "cancel",
    "canceled",
    "window-to-cancel",
    "waiting-for-seller-decision",
    "approve-payment",
)


class HookError(Exception):
    """Printed as `orderhook: <message>`, exit status 1."""


def add_commands(commands: Any) -> None:
    vtex = commands.add_parser("vtex", help="the store's VTEX configuration")
    vtex_commands = vtex.add_subparsers(dest="vtex_command", required=True)
    hook = vtex_commands.add_parser("hook", help="the VTEX order hook that points here")
    actions = hook.add_subparsers(dest="hook_action", required=True)
    for name, text in [
        ("show", "print the hook VTEX has"),
        ("delete", "delete it"),
        ("register", "point it at this gateway"),
        ("ensure", "register it again if VTEX removed it (for cron)"),
    ]:
        action = actions.add_parser(name, help=text)
        action.add_argument("--account", required=True)
        action.add_argument("--config", help="TOML config file (default: $ORDERHOOK_CONFIG)")
        if name in ("register", "ensure"):
            action.add_argument("--status", action="append", help="FromWorkflow status (repeat)")
            action.add_argument("--expression", help="a FromOrders JSONata filter instead")


def run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config)
        source = credentials_for(settings, args.account)
        with VtexApi(settings.vtex_base_url, args.account, source) as api:
            return _act(args, settings, source, api)
    except (HookError, ConfigError) as exc:
        print(f"orderhook: {exc}", file=sys.stderr)
        return 1


def _act(args: argparse.Namespace, settings: Settings, source: Source, api: VtexApi) -> int:
    if args.hook_action == "show":
        current = api.get()
        print(_describe(current) if current else f"no hook on {args.account}")
    elif args.hook_action == "delete":
        api.delete()
        print(f"deleted the hook of {args.account}")
    else:
        wanted = hook_config(settings, source, args.status, args.expression)
        current = api.get()
        if args.hook_action == "ensure" and current and _url(current) == wanted["hook"]["url"]:
            print(f"the hook of {args.account} is in place: {_describe(current)}")
            return 0
        api.post(wanted)
        print(f"registered the hook of {args.account}: {_describe(wanted)}")
    return 0


def credentials_for(settings: Settings, account: str) -> Source:
    source = source_for(settings.sources, account)
    if source is None:
        raise HookError(f"no [[sources]] entry for account {account!r}")
    if source.app_key is None or source.app_token is None:
        raise HookError(f"the source of {account!r} needs app_key_env and app_token_env")
    return source


def hook_config(
    settings: Settings, source: Source, statuses: list[str] | None, expression: str | None
) -> dict[str, Any]:
    if not settings.public_url:
        raise HookError("set [vtex] public_url: the URL at which VTEX reaches this gateway")
    if expression:
        flt: dict[str, Any] = {
            "type": "FromOrders",
            "expression": expression,
            "disableSingleFire": False,
        }
    else:
        flt = {"type": "FromWorkflow", "status": list(statuses or DEFAULT_STATUSES)}
    url = settings.public_url.rstrip("/") + "/hooks/vtex"
    return {
        "filter": flt,
        "hook": {"url": url, "headers": {source.auth_header: str(source.auth_token)}},
    }


def _url(config: dict[str, Any]) -> Any:
    return (config.get("hook") or {}).get("url")


def _describe(config: dict[str, Any]) -> str:
    flt = config.get("filter") or {}
    what = flt.get("status") or flt.get("expression") or "every status"
    return f"{_url(config)} ({flt.get('type', 'no filter')}: {what})"


class VtexApi:
    def __init__(self, base_url: str, account: str, source: Source) -> None:
        self.base = base_url.format(account=account).rstrip("/")
        headers = {
            "X-VTEX-API-AppKey": str(source.app_key),
            "X-VTEX-API-AppToken": str(source.app_token),
            "Accept": "application/json",
        }
        self.http = httpx.Client(base_url=self.base, headers=headers, timeout=TIMEOUT)

    def __enter__(self) -> VtexApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def get(self) -> dict[str, Any] | None:
        response = self._call("GET")
        return None if response.status_code == 404 or not response.content else response.json()

    def post(self, config: dict[str, Any]) -> None:
        self._call("POST", json=config)

    def delete(self) -> None:
        self._call("DELETE")

    def _call(self, method: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, HOOK_PATH, **kwargs)
        except httpx.TransportError as exc:
            raise HookError(f"cannot reach VTEX at {self.base}: {exc}") from None
        if response.status_code >= 400 and response.status_code != 404:
            raise HookError(
                f"VTEX answered {method} {HOOK_PATH} with HTTP "
                f"{response.status_code}: {response.text[:300]}"
            )
        return response
