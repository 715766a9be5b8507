"""Which URLs may be read: nothing on this machine unless a recipe says so.

A ``[[files]]`` URL is the one input whose content nobody vouches for before it
is locked: a recipe (which arrives in a pull request like any code) could name
``file:///etc/shadow``, ``file:///proc/self/environ``, a service on loopback or
the cloud metadata address, and a ``run`` step would copy what it got into
the image. So ``file:`` URLs and hosts on loopback, link-local or unspecified
addresses are refused unless the entry opts in with ``local = true``, and
every redirect is held to the same rule (``net.Policy`` applies this module's
judgement to each hop the one HTTP client follows). Debian mirrors and CRAN-like
repositories are not restricted here: apt checks every index it reads against
Debian's keyring, and a repository must serve a parseable index before any
file of it is named, so neither can be pointed at an arbitrary host file.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")


def local_reason(url: str, resolve: bool = False) -> str | None:
    """Why ``url`` reads from this machine (or its link), or None when it does not.

    Without ``resolve`` only the URL's text is judged (a literal address or a
    local name); with it, a host name is resolved and every address checked.
    """
    parts = urlsplit(url)
    if parts.scheme == "file":
        return "it is a file: URL (a file of the machine that runs buildsys)"
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        return None
    if host in LOCAL_NAMES or host.endswith(".localhost"):
        return f"its host '{host}' is this machine"
    reason = _address_reason(host)
    if reason or not resolve:
        return reason
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return None  # the download itself will say that the name does not resolve
    for info in infos:
        if reason := _address_reason(str(info[4][0])):
            return f"its host '{host}' resolves to {info[4][0]}: {reason.split(': ', 1)[-1]}"
    return None


def _address_reason(host: str) -> str | None:
    try:
        addr = ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if addr.is_loopback:
        return f"{host}: a loopback address (this machine)"
    if addr.is_link_local:
        return f"{host}: a link-local address (such as a cloud metadata service)"
    if addr.is_unspecified:
        return f"{host}: the unspecified address (this machine)"
    return None
