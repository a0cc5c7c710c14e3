"""`orderhook vtex hook show|register|delete|ensure --account A`: the store's VTEX hook, through
VTEX's `/api/orders/hook/config` (GET, POST, DELETE), with the source's API credentials.

`register` points the hook at this gateway (`[vtex] public_url` + `/hooks/vtex`) with the
source's auth header in `hook.headers`; VTEX pings it and saves it only if the gateway answers.
`ensure` registers it again when VTEX has removed it (VTEX deletes a hook after 3 days without
notifications): run it from cron.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from app.config import Settings, Source, load_settings, source_for
from app.errors import BadRequest, ConfigError
from app.events import check_account
from app.vtex.api import HOOK_CONFIG, Answer, VtexApi, VtexError, has_credentials

HOOK_PATH = "/" + "/".join(HOOK_CONFIG.segments)  # as messages name it
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
        return asyncio.run(_run(args, settings, source))
    except (HookError, ConfigError) as exc:
        print(f"orderhook: {exc}", file=sys.stderr)
        return 1


async def _run(args: argparse.Namespace, settings: Settings, source: Source) -> int:
    async with VtexApi.standalone(settings) as vtex:
        return await _act(args, settings, source, HookApi(vtex, args.account, source))


async def _act(args: argparse.Namespace, settings: Settings, source: Source, api: HookApi) -> int:
    if args.hook_action == "show":
        current = await api.get()
        print(_describe(current) if current else f"no hook on {args.account}")
    elif args.hook_action == "delete":
        await api.delete()
        print(f"deleted the hook of {args.account}")
    else:
        wanted = hook_config(settings, source, args.status, args.expression)
        current = await api.get()
        if args.hook_action == "ensure" and current and _url(current) == wanted["hook"]["url"]:
            print(f"the hook of {args.account} is in place: {_describe(current)}")
            return 0
        await api.post(wanted)
        print(f"registered the hook of {args.account}: {_describe(wanted)}")
    return 0


def credentials_for(settings: Settings, account: str) -> Source:
    try:
        check_account(account, "--account")
    except BadRequest as exc:
        raise HookError(exc.message) from None
    source = source_for(settings.sources, account)
    if source is None:
        raise HookError(f"no [[sources]] entry for account {account!r}")
    if not has_credentials(source):
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


class HookApi:
    """The account's hook configuration, through VtexApi (no redirect, answers capped)."""

    def __init__(self, api: VtexApi, account: str, source: Source) -> None:
        self.api, self.account, self.source = api, account, source

    async def get(self) -> dict[str, Any] | None:
        answer = await self._call("GET")
        if answer.status == 404 or not answer.body:
            return None
        try:
            config = answer.json()
        except ValueError:
            raise HookError(f"VTEX answered GET {HOOK_PATH} with invalid JSON") from None
        return config if isinstance(config, dict) else None

    async def post(self, config: dict[str, Any]) -> None:
        await self._call("POST", json=config)

    async def delete(self) -> None:
        await self._call("DELETE")

    async def _call(self, method: str, json: Any = None) -> Answer:
        try:
            answer = await self.api.request(
                HOOK_CONFIG, method, self.source, self.account, json=json
            )
        except VtexError as exc:
            raise HookError(str(exc)) from None
        if answer.status >= 400 and answer.status != 404:
            text = answer.body[:300].decode("utf-8", "replace")
            raise HookError(
                f"VTEX answered {method} {HOOK_PATH} with HTTP {answer.status}: {ascii(text)}"
            )
        return answer
