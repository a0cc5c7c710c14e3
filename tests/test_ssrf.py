"""The SSRF guard: which addresses it refuses (pure), and that it refuses before connecting."""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from app.ssrf import embedded_ipv4, refusal, why_refused
from tests.relaying import ADMIN, SECRET, Gateway, hook, until

# Globally reachable per the IANA special-purpose registries: allowed.
PUBLIC = [
    "8.8.8.8",
    "1.1.1.1",
    "192.0.0.9",  # PCP anycast: the registry's exception in 192.0.0.0/24
    "192.0.0.10",  # TURN anycast: likewise
    "2606:4700::1111",
    "2001:4860:4860::8888",
    "64:ff9b::808:808",  # NAT64 (well-known prefix) to 8.8.8.8
    "::ffff:8.8.8.8",  # IPv4-mapped 8.8.8.8: the same host
]

# Not globally reachable, or an IPv6 form of such an IPv4 address: refused.
REFUSED = [
    "100.64.0.1",  # CGNAT, shared address space (RFC 6598)
    "100.100.100.200",  # CGNAT: a cloud metadata address
    "100.127.255.254",
    "192.0.0.1",  # IETF protocol assignments
    "192.0.0.8",  # IPv4 dummy address (RFC 7600): Python 3.11 calls it global
    "192.0.0.100",  # Python 3.11 calls it global
    "192.0.0.171",  # NAT64/DNS64 discovery
    "127.0.0.1",
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",  # link-local: cloud metadata
    "0.0.0.0",
    "192.0.2.1",  # documentation
    "198.18.0.1",  # benchmarking
    "240.0.0.1",  # reserved
    "255.255.255.255",
    "224.0.0.1",  # multicast: Python calls it global, but it is no webhook's address
    "::1",
    "::",
    "fe80::1",
    "fc00::1",
    "fec0::1",  # site-local, deprecated (RFC 3879): Python calls it global
    "ff02::1",
    "2001:db8::1",
    "3fff::1",  # documentation (RFC 9637): Python 3.11 calls it global
    "5f00::1",  # SRv6 SIDs (RFC 9602): Python 3.11 calls it global
    "100::1",  # discard-only
    "2002:7f00:1::",  # 6to4 carrying 127.0.0.1: Python 3.11 calls it global
    "2002:a9fe:a9fe::1",  # 6to4 carrying 169.254.169.254
    "2002:808:808::",  # 6to4 carrying a public address: IANA "N/A", refused anyway
    "64:ff9b::7f00:1",  # NAT64 carrying 127.0.0.1
    "64:ff9b::6464:64c8",  # NAT64 carrying 100.100.100.200
    "64:ff9b::a00:1",  # NAT64 carrying 10.0.0.1
    "64:ff9b:1::808:808",  # NAT64 local-use prefix (RFC 8215)
    "::ffff:127.0.0.1",  # IPv4-mapped loopback
    "::ffff:100.100.100.200",
    "::127.0.0.1",  # IPv4-compatible, deprecated: Python 3.11 calls it global
    "::8.8.8.8",
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo (its client is 192.0.2.45)
    "2001:0:4136:e378:8000:63bf:ffff:fffe",  # Teredo whose client is 0.0.0.1
]


@pytest.mark.parametrize("address", PUBLIC)
def test_ssrf_guard_allows_globally_reachable_addresses(address: str) -> None:
    assert why_refused(address, []) is None


@pytest.mark.parametrize("address", REFUSED)
def test_ssrf_guard_refuses_what_is_not_globally_reachable(address: str) -> None:
    assert why_refused(address, []) is not None


@pytest.mark.parametrize(
    ("address", "carried"),
    [
        ("2002:7f00:1::", "127.0.0.1"),
        ("64:ff9b::7f00:1", "127.0.0.1"),
        ("::ffff:7f00:1", "127.0.0.1"),
        ("::a00:1", "10.0.0.1"),
        ("2001:0:4136:e378:8000:63bf:ffff:fffe", "0.0.0.1"),  # Teredo's client, de-obfuscated
    ],
)
def test_an_ipv6_address_carrying_an_ipv4_one_names_it(address: str, carried: str) -> None:
    ip = ipaddress.ip_address(address)
    assert ipaddress.IPv4Address(carried) in list(embedded_ipv4(ip))
    assert f"carrying {carried}" in (refusal(ip) or "")


def test_allow_networks_allows_the_address_itself_not_its_ipv6_forms() -> None:
    loopback = [ipaddress.ip_network("127.0.0.0/8")]
    assert why_refused("127.0.0.1", loopback) is None
    assert why_refused("2002:7f00:1::", loopback) is not None  # 6to4 of 127.0.0.1
    assert why_refused("::ffff:127.0.0.1", loopback) is not None
    assert why_refused("64:ff9b::7f00:1", loopback) is not None
    assert why_refused("100.100.100.200", [ipaddress.ip_network("100.64.0.0/10")]) is None
    assert why_refused("fe80::1%eth0", [ipaddress.ip_network("fe80::/10")]) is None


connects: list[Any] = []
_watching = False


def _audit(event: str, args: tuple[Any, ...]) -> None:
    """Every socket connect while a test watches: one to anywhere but loopback is recorded
    and stopped (so not even a SYN leaves this machine, whatever the code under test does)."""
    if _watching and event == "socket.connect" and isinstance(args[1], tuple):  # not AF_UNIX
        host = str(args[1][0])
        if not (host.startswith("127.") or host == "::1"):
            connects.append(args[1])
            raise PermissionError(f"test: no connection to {host} may leave loopback")


sys.addaudithook(_audit)


@pytest.fixture
def loopback_only() -> Iterator[list[Any]]:
    global _watching
    connects.clear()
    _watching = True
    try:
        yield connects
    finally:
        _watching = False


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("host", "shown"),
    [
        ("100.100.100.200", "100.100.100.200"),
        ("[2002:7f00:1::]", "2002:7f00:1:: (carrying 127.0.0.1)"),
        ("[64:ff9b::6464:64c8]", "64:ff9b::6464:64c8 (carrying 100.100.100.200)"),
    ],
)
async def test_ssrf_guard_refuses_cgnat_and_ipv4_in_ipv6_before_connecting(
    gateway: Gateway, loopback_only: list[Any], host: str, shown: str
) -> None:
    toml = (
        f'\n[[subscriptions]]\nid = "meta"\nurl = "http://{host}/latest/meta-data"\n'
        f'secret = "{SECRET}"\nretry_schedule = [0.05, 0.05]\ntimeout = 2\n'
    )  # the test config allows 127.0.0.0/8: not 127.0.0.1 inside an IPv6 address
    async with gateway(toml) as client:
        await hook(client)
        dlq = await until(
            lambda: client.get("/admin/dlq", headers=ADMIN), lambda r: r.json()["total"] == 1
        )
    [entry] = dlq.json()["items"]
    assert entry["attempts"] == 1  # dead at once: retrying cannot help
    assert entry["lastError"].startswith(f"refused by the SSRF guard: {host.strip('[]')} is")
    assert shown in entry["lastError"] and "not a globally reachable address" in entry["lastError"]
    assert loopback_only == []  # no connection was even attempted
