"""The SSRF guard: outbound requests reach public addresses only, unless `allow_networks` says.

It checks the addresses a host name resolves to, at connect time (so a public name that
resolves to a private address is caught), as well as IP literals: loopback, private,
link-local (cloud metadata at 169.254.169.254 among them), multicast, reserved and unspecified
addresses are refused unless a configured CIDR contains them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

import aiohttp

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class Refused(aiohttp.ClientConnectionError):
    """A connection the guard refused: never retried, the delivery is dead-lettered."""


def forbidden(address: Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


def permitted(address: str, allow: Sequence[Network]) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    return any(ip in network for network in allow) or not forbidden(ip)


class GuardedConnector(aiohttp.TCPConnector):
    """A TCPConnector that drops every resolved address the guard does not permit."""

    def __init__(self, allow: Sequence[Network], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.allow = tuple(allow)

    async def _resolve_host(self, host: str, port: int, traces: Any = None) -> Any:
        resolved = await super()._resolve_host(host, port, traces=traces)
        kept = [r for r in resolved if permitted(r["host"], self.allow)]
        if not kept:
            addresses = ", ".join(sorted({r["host"] for r in resolved}))
            raise Refused(
                f"refused by the SSRF guard: {host} is {addresses}, not a public address "
                "(allow it with allow_networks)"
            )
        return kept
