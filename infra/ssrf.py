"""Server-side request forgery guard for URLs set through the API (webhook subscriptions).

A URL is allowed only when every address its host resolves to is public, or inside a network of the operator's
allow-list (Settings.webhook_allow_networks). The check runs when a subscription is created or changed and again
before each send; the sender then connects to the address that was checked (not to a second resolution of the
name), so a DNS answer that changes between check and connect (rebinding) cannot reach an internal address.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# host -> addresses (strings); replaceable in tests to play a rebinding DNS server.
Resolver = Callable[[str], Awaitable[list[str]]]


class AddressRefused(Exception):
    """The URL is not allowed: bad scheme or host, unresolvable, or it resolves to a non-public address."""


async def system_resolver(host: str) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def why_refused(ip: IPAddress) -> str | None:
    """None for a public address, else the kind of address it is."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local (cloud metadata)"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_multicast:
        return "multicast"
    if ip.is_private:
        return "private"
    if ip.is_reserved or not ip.is_global:
        return "not public"
    return None


@dataclass(frozen=True)
class Target:
    """A checked URL: connect to `ip` and speak to `host` (Host header, TLS server name)."""

    url: str
    scheme: str
    host: str
    port: int
    ip: str

    def connect_url(self) -> str:
        """The URL with the checked address in place of the name."""
        parts = urlsplit(self.url)
        literal = f"[{self.ip}]" if ":" in self.ip else self.ip
        path = parts.path or "/"
        return f"{self.scheme}://{literal}:{self.port}{path}" + (f"?{parts.query}" if parts.query else "")

    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        name = f"[{self.host}]" if ":" in self.host else self.host
        return name if self.port == default else f"{name}:{self.port}"


class Guard:
    """Checks URLs against the allow-list; `resolver` answers host -> addresses (the system's by default)."""

    def __init__(self, allow_networks: Iterable[str] = (), resolver: Resolver | None = None) -> None:
        self.allow: list[IPNetwork] = [ipaddress.ip_network(n, strict=False) for n in allow_networks]
        self.resolver = resolver or system_resolver

    def allowed(self, ip: IPAddress) -> bool:
        return any(ip in net for net in self.allow if net.version == ip.version)

    @staticmethod
    def parse(url: str) -> tuple[str, str, int]:
        """(scheme, host, port), or AddressRefused for a URL that is not plain http(s) to a host."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise AddressRefused(f"not a URL: {exc}") from None
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise AddressRefused("only http and https URLs are allowed")
        if parts.username is not None or parts.password is not None:
            raise AddressRefused("credentials in the URL are not allowed (the request is signed instead)")
        host = (parts.hostname or "").rstrip(".")
        if not host:
            raise AddressRefused("the URL names no host")
        return scheme, host, port or (443 if scheme == "https" else 80)

    async def addresses(self, host: str) -> list[IPAddress]:
        """The host's addresses: itself when it is an IP literal, else what the resolver answers."""
        try:
            return [ipaddress.ip_address(host)]
        except ValueError:
            pass
        try:
            answers = await self.resolver(host)
        except (OSError, UnicodeError) as exc:
            raise AddressRefused(f"{host} does not resolve ({type(exc).__name__})") from None
        out: list[IPAddress] = []
        for a in answers:
            with contextlib.suppress(ValueError):
                out.append(ipaddress.ip_address(a.split("%", 1)[0]))
        if not out:
            raise AddressRefused(f"{host} does not resolve")
        return out

    async def check(self, url: str) -> Target:
        """Resolve and check every address of the URL's host; the Target to connect to, or AddressRefused."""
        scheme, host, port = self.parse(url)
        addresses = await self.addresses(host)
        for ip in addresses:
            reason = why_refused(ip)
            if reason is not None and not self.allowed(ip):
                raise AddressRefused(f"{host} resolves to {ip}, a {reason} address, which is not in the"
                                     " allow-list (LIFELINE_WEBHOOK_ALLOW_NETWORKS)")
        return Target(url, scheme, host, port, str(addresses[0]))
