"""The SSRF guard: outbound requests reach globally reachable addresses only, unless
`allow_networks` says.

It checks the addresses a host name resolves to before any connection is opened (so a public
name that resolves to a private address is caught), IP literals included. An address is
refused unless it is globally reachable per IANA's special-purpose address registries: CGNAT
100.64.0.0/10 (100.100.100.200 is a cloud metadata address), 192.0.0.0/24, loopback, private,
link-local (169.254.169.254), documentation, benchmarking, reserved, unique-local... Multicast
is refused too: it is no webhook's address.

Python's `ipaddress.is_global` carries those registries; `NOT_GLOBAL` adds the entries that
Python 3.11's copy lacks (newer Pythons have most of them: there they change nothing). An IPv6
address that carries an IPv4 one — IPv4-mapped, IPv4-compatible, 6to4, Teredo, NAT64 — is
refused when that IPv4 address is; 6to4 and Teredo (IANA: "N/A") are refused whatever they carry.

`allow_networks` (tests allow 127.0.0.0/8) is matched against the address as resolved: it does
not allow an IPv6 form of an allowed IPv4 address (2002:7f00:1::, ::ffff:127.0.0.1); list the
IPv6 network itself to allow one.

`foresee` asks the same connector, before any traffic (`orderhook check` and start-up), what it
would do with each subscription URL now: resolve it, then refuse it or not, by the one rule.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import yarl

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

RESOLVE_TIMEOUT_S = 3.0  # `foresee`: a name that takes longer counts as not resolving now

IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # ::a.b.c.d, deprecated (RFC 4291 2.5.5.1)
NAT64 = ipaddress.ip_network("64:ff9b::/96")  # the well-known prefix (RFC 6052): global

# Not globally reachable, from the IANA IPv4 and IPv6 Special-Purpose Address Registries
# (https://www.iana.org/assignments/iana-ipv4-special-registry/,
#  https://www.iana.org/assignments/iana-ipv6-special-registry/) as of 2025, where Python
# 3.11's `is_global` says otherwise; plus two deprecated IPv6 ranges no registry lists.
NOT_GLOBAL: tuple[Network, ...] = (IPV4_COMPATIBLE,) + tuple(
    ipaddress.ip_network(cidr)
    for cidr in (
        "192.0.0.0/24",  # IETF Protocol Assignments (RFC 6890); 3.11 has only .0/29, .170/31
        "64:ff9b:1::/48",  # IPv4/IPv6 translation, local use (RFC 8215)
        "100:0:0:1::/64",  # Dummy IPv6 prefix (RFC 9780)
        "2002::/16",  # 6to4 (RFC 3056): "N/A"; Python 3.13 counts it as not global
        "3fff::/20",  # Documentation (RFC 9637)
        "5f00::/16",  # Segment Routing SIDs (RFC 9602)
        "fec0::/10",  # site-local, deprecated (RFC 3879)
    )
)
GLOBAL_EXCEPTIONS: tuple[Network, ...] = (
    ipaddress.ip_network("192.0.0.9/32"),  # Port Control Protocol anycast (RFC 7723)
    ipaddress.ip_network("192.0.0.10/32"),  # TURN anycast (RFC 8155)
)


class Refused(aiohttp.ClientConnectionError):
    """A connection the guard refused: never retried, the delivery is dead-lettered."""


def embedded_ipv4(address: Address) -> Iterator[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries, in each form that reaches IPv4."""
    if isinstance(address, ipaddress.IPv4Address):
        return
    if address.ipv4_mapped is not None:
        yield address.ipv4_mapped
    if address.sixtofour is not None:
        yield address.sixtofour
    if address.teredo is not None:
        yield from address.teredo  # the server, and the client (stored obfuscated)
    if address in NAT64 or (address in IPV4_COMPATIBLE and int(address) > 1):  # not :: nor ::1
        yield ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)


def globally_reachable(address: Address) -> bool:
    """Per the IANA registries (Python's copy, and `NOT_GLOBAL`); multicast is not."""
    listed = any(address in network for network in NOT_GLOBAL) and not any(
        address in network for network in GLOBAL_EXCEPTIONS
    )
    return address.is_global and not address.is_multicast and not listed


def refusal(address: Address) -> str | None:
    """Why the guard refuses `address` (before `allow_networks`), or None."""
    carried = dict.fromkeys(str(v4) for v4 in embedded_ipv4(address) if not globally_reachable(v4))
    if carried:
        return f"{address} (carrying {', '.join(carried)})"
    return None if globally_reachable(address) else str(address)


def why_refused(address: str, allow: Sequence[Network]) -> str | None:
    """Why the guard refuses a resolved `address` (a zone index `%eth0` ignored), or None."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    return None if any(ip in network for network in allow) else refusal(ip)


def permitted(address: str, allow: Sequence[Network]) -> bool:
    return why_refused(address, allow) is None


class GuardedConnector(aiohttp.TCPConnector):
    """A TCPConnector that drops every resolved address the guard does not permit: it refuses
    before connecting (IP literals in URLs come through `_resolve_host` too)."""

    def __init__(self, allow: Sequence[Network], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.allow = tuple(allow)

    async def _resolve_host(self, host: str, port: int, traces: Any = None) -> Any:
        resolved = await super()._resolve_host(host, port, traces=traces)
        kept = [r for r in resolved if permitted(r["host"], self.allow)]
        if not kept:
            reasons = sorted({why_refused(r["host"], self.allow) or r["host"] for r in resolved})
            raise Refused(
                f"refused by the SSRF guard: {host} is {', '.join(reasons)}, not a globally "
                "reachable address (allow it with allow_networks)"
            )
        return kept


@dataclass(frozen=True)
class Foreseen:
    """What a delivery to a URL would meet now: `refused`, why the guard refuses every
    address it resolves to; `unresolved`, why it does not resolve (yet); both None: it may go.
    """

    refused: str | None = None
    unresolved: str | None = None


async def foresee(
    urls: Sequence[str], allow: Sequence[Network], timeout_s: float = RESOLVE_TIMEOUT_S
) -> list[Foreseen]:
    """For each URL, what the delivery's connector would do with it now (all at once)."""
    connector = GuardedConnector(allow)
    try:
        return list(await asyncio.gather(*(_foresee(connector, url, timeout_s) for url in urls)))
    finally:
        await connector.close()


async def _foresee(connector: GuardedConnector, url: str, timeout_s: float) -> Foreseen:
    target = yarl.URL(url)  # as aiohttp reads it: the host IDNA-encoded, the scheme's port
    try:
        async with asyncio.timeout(timeout_s):
            await connector._resolve_host(target.raw_host or "", target.port or 0)
    except (Refused, aiohttp.InvalidURL) as exc:  # a non-canonical IPv4 (127.1) is refused too
        return Foreseen(refused=str(exc) if isinstance(exc, Refused) else f"invalid host: {exc}")
    except TimeoutError:
        return Foreseen(unresolved=f"no DNS answer within {timeout_s:g} s")
    except OSError as exc:
        return Foreseen(unresolved=f"DNS: {exc.strerror or exc}")
    except ValueError as exc:  # a label over 63 characters: socket's IDNA codec refuses it
        return Foreseen(unresolved=f"not a host name DNS can look up: {exc}")
    return Foreseen()
