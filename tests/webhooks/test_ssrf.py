"""The SSRF guard: which addresses a webhook URL may reach, by literal and through DNS."""

from __future__ import annotations

import pytest

from infra.ssrf import AddressRefused, Guard


def resolver(answers: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    async def resolve(host: str) -> list[str]:
        if host not in answers:
            raise OSError("NXDOMAIN")
        return answers[host]
    return resolve


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/hook", "http://127.1.2.3:8080/x", "http://[::1]/x", "http://localhost/x",
    "http://10.1.2.3/x", "http://172.16.0.5/x", "http://192.168.1.1/x", "http://[fd00::1]/x",
    "http://169.254.169.254/latest/meta-data/", "http://[fe80::1]/x", "http://100.100.100.200/x",
    "http://0.0.0.0/x", "http://[::ffff:127.0.0.1]/x", "http://[::ffff:169.254.169.254]/x",
    "http://metadata.internal/x", "http://224.0.0.1/x",
])
async def test_non_public_addresses_are_refused(url: str) -> None:
    guard = Guard([], resolver({"localhost": ["127.0.0.1", "::1"], "metadata.internal": ["169.254.169.254"]}))
    with pytest.raises(AddressRefused):
        await guard.check(url)


@pytest.mark.parametrize("url, reason", [
    ("ftp://93.184.216.34/x", "only http and https"), ("file:///etc/passwd", "only http and https"),
    ("http://user:pw@93.184.216.34/x", "credentials"), ("http:///x", "no host"),
    ("http://nowhere.invalid/x", "does not resolve"), ("http://93.184.216.34:99999/x", "not a URL"),
])
async def test_malformed_urls_are_refused_with_a_reason(url: str, reason: str) -> None:
    with pytest.raises(AddressRefused, match=reason):
        await Guard([], resolver({})).check(url)


async def test_one_private_answer_among_public_ones_is_refused() -> None:
    guard = Guard([], resolver({"mixed.example": ["93.184.216.34", "10.0.0.7"]}))
    with pytest.raises(AddressRefused, match="10.0.0.7"):
        await guard.check("https://mixed.example/hook")


async def test_public_address_is_allowed_and_the_checked_ip_is_what_is_connected_to() -> None:
    guard = Guard([], resolver({"hooks.example.org": ["93.184.216.34"]}))
    target = await guard.check("https://hooks.example.org/in?x=1")
    assert (target.ip, target.host, target.port) == ("93.184.216.34", "hooks.example.org", 443)
    assert target.connect_url() == "https://93.184.216.34:443/in?x=1"
    assert target.host_header() == "hooks.example.org"


async def test_allow_list_admits_an_internal_receiver_and_nothing_else() -> None:
    guard = Guard(["127.0.0.1/32", "10.20.0.0/16"], resolver({"internal.example": ["10.20.3.4"]}))
    assert (await guard.check("http://127.0.0.1:9000/h")).ip == "127.0.0.1"
    assert (await guard.check("http://internal.example/h")).ip == "10.20.3.4"
    for url in ("http://127.0.0.2/h", "http://10.21.0.1/h", "http://169.254.169.254/"):
        with pytest.raises(AddressRefused):
            await guard.check(url)
