"""Where the server may POST notifications: the SSRF rule (docs/design.md §8, Notifications).

A webhook URL is chosen by a user key, and the server sends to it from inside the operator's network, so a URL is
an attack on whatever that network holds: the cloud metadata service (169.254.169.254), the database, the server's
own admin ports. By default only public addresses are allowed; loopback, private, link-local, shared (CGNAT),
multicast, reserved and unspecified addresses are refused, and so are schemes other than http and https. An
operator permits internal receivers with ``ServerSettings.notify_allow_hosts`` (IPs, CIDRs, or exact host names).

The rule is checked twice: when a rule is added (:func:`check_url`, syntax and literal addresses, no DNS: a 422 at
once) and at every send (:func:`resolve`), on the addresses the name resolves to *then*, and the connection is made
to the checked address (:func:`pinned_request`), so a name that resolved to a public address when the rule was
added and resolves to 127.0.0.1 now (DNS rebinding) is refused, and no second lookup can differ from the checked one.

Usage::

    check_url(url, allow)                   # raises UnsafeWebhook (422 at the API)
    address = resolve(url, allow)           # at send time; raises UnsafeWebhook
    request = pinned_request(client, url, address, body, headers)
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from baton.server.models.errors import InvalidRequest

if TYPE_CHECKING:
    import httpx

MAX_URL_LENGTH = 2048
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class UnsafeWebhook(InvalidRequest):
    """A webhook URL the server will not send to (422 when a rule is added; a recorded error at send time)."""


class UnresolvedWebhook(UnsafeWebhook):
    """The webhook's host name does not resolve now: maybe a passing DNS failure, so a delivery retries it."""


@dataclass(frozen=True)
class AllowList:
    """What the operator permits beyond public addresses (``notify_allow_hosts``)."""

    networks: tuple[IPNetwork, ...] = ()
    hosts: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, entries: list[str]) -> AllowList:
        networks: list[IPNetwork] = []
        hosts: set[str] = set()
        for entry in entries:
            try:
                networks.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError:
                hosts.add(entry.strip().lower().rstrip("."))
        return cls(tuple(networks), frozenset(hosts))

    def permits_host(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.hosts

    def permits_address(self, address: IPAddress) -> bool:
        return any(address in network for network in self.networks if network.version == address.version)


def _unmapped(address: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address (``::ffff:10.0.0.1``) is the IPv4 address it maps: judge that one."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _why_refused(address: IPAddress) -> str | None:
    """Why ``address`` is not a public one, or None when it is."""
    checks = (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local (where cloud metadata services live)", address.is_link_local),
        ("multicast", address.is_multicast),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
        ("not globally routable", not address.is_global),
    )
    return next((reason for reason, refused in checks if refused), None)


def _check_address(address: IPAddress, allow: AllowList, shown: str) -> None:
    address = _unmapped(address)
    reason = _why_refused(address)
    if reason is not None and not allow.permits_address(address):
        raise UnsafeWebhook(
            f"webhook host {shown} ({address}) is refused: {reason} addresses are not allowed unless the "
            "operator permits them with BATON__SERVER__NOTIFY_ALLOW_HOSTS"
        )


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def parse(url: str) -> httpx.URL:
    """``url`` parsed, with the checks that need no network: length, scheme, a host.

    Raises:
        UnsafeWebhook: not an absolute http(s) URL of at most :data:`MAX_URL_LENGTH` characters.
    """
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeWebhook(f"webhook URL longer than {MAX_URL_LENGTH} characters")
    import httpx  # at the first rule or delivery, not at every server's start

    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError) as exc:
        raise UnsafeWebhook(f"invalid webhook URL: {exc}") from None
    if parsed.scheme not in ("http", "https"):
        raise UnsafeWebhook(f"webhook URL scheme must be http or https, not {parsed.scheme or 'none'!r}")
    if not parsed.host:
        raise UnsafeWebhook("webhook URL has no host")
    return parsed


def check_url(url: str, allow: AllowList) -> None:
    """The checks made when a rule is added: :func:`parse`, and the host if it is an address or localhost.

    Names are resolved only when sending (this machine's DNS now says nothing about later).

    Raises:
        UnsafeWebhook: refused (422), with the reason.
    """
    parsed = parse(url)
    host = parsed.host.lower().rstrip(".")
    if allow.permits_host(host):
        return
    address = _literal(host)
    if address is not None:
        _check_address(address, allow, host)
    elif host == "localhost" or host.endswith(".localhost"):
        _check_address(ipaddress.ip_address("127.0.0.1"), allow, host)


def resolve(url: str, allow: AllowList) -> IPAddress:
    """The address to send ``url``'s request to: every address its host resolves to must be allowed.

    All of them, not just the first: a name whose answers mix a public and a private address would otherwise be
    a coin toss. ``.invalid`` names (RFC 6761) resolve to nothing without asking DNS.

    Raises:
        UnsafeWebhook: refused, or the name does not resolve (the message is the recorded error).
    """
    parsed = parse(url)
    host = parsed.host.lower().rstrip(".")
    literal = _literal(host)
    if literal is not None:
        addresses = [literal]
    else:
        if host == "invalid" or host.endswith(".invalid"):
            raise UnresolvedWebhook(f"host {host} does not resolve (.invalid names never do)")
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise UnresolvedWebhook(f"host {host} does not resolve: {exc}") from None
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
        if not addresses:
            raise UnresolvedWebhook(f"host {host} does not resolve")
    if not allow.permits_host(host):
        for address in addresses:
            _check_address(address, allow, host)
    return addresses[0]


def pinned_request(
    client: httpx.Client, url: str, address: IPAddress, body: bytes, headers: dict[str, str]
) -> httpx.Request:
    """A POST of ``body`` to ``url`` that connects to ``address`` (checked by :func:`resolve`), not to a second
    lookup of the name: the Host header and the TLS server name (certificate check included) stay the URL's."""
    parsed = parse(url)
    target = parsed.copy_with(host=str(address))
    extensions: dict[str, Any] = {}
    if parsed.scheme == "https":
        extensions["sni_hostname"] = parsed.host
    host_header = parsed.host if parsed.port is None else f"{parsed.host}:{parsed.port}"
    return client.build_request(
        "POST", target, content=body, headers={**headers, "Host": host_header}, extensions=extensions
    )


def redact(url: str) -> str:
    """What answers show of a webhook URL: ``scheme://host[:port]/…``. The path and query of a webhook URL are
    often its secret (a Slack webhook URL is a credential), so no principal is ever shown them again."""
    import httpx

    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError):
        return "(invalid URL)"
    port = f":{parsed.port}" if parsed.port is not None else ""
    rest = "/…" if (parsed.path not in ("", "/") or parsed.query) else "/"
    return f"{parsed.scheme}://{parsed.host}{port}{rest}"
