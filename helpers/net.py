"""Small network facts shared by the server, the load generator, the launcher and the tests."""

from __future__ import annotations

import ipaddress
import socket


def is_loopback_host(host: str) -> bool:
    """True when `host` (a URL, host:port or a bare name/address) names this machine:
    127.0.0.0/8, ::1 or localhost. Names are not resolved, so no DNS answer can turn a remote
    host local. A bare address is taken as an interface to bind, so `0.0.0.0` (every
    interface) is not loopback; as a client URL (`http://0.0.0.0:11434`) it means this machine."""
    import httpx

    from .settings import normalise_host

    if "://" in host or host.count(":") == 1:  # a URL, or host:port
        name = httpx.URL(normalise_host(host)).host
    else:  # a bare name or address: localhost, 127.0.0.1, ::1, [::1], 0.0.0.0
        name = host
    name = name.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def free_loopback_port() -> int:
    """A loopback TCP port with nothing listening on it (a connection there is refused at once,
    like a server that is down; or a place to start one)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api_answers(host: str, timeout_s: float = 2.0) -> str | None:
    """The version string when an Ollama API (Ollama or `slm-course serve`) answers at `host`,
    else None. Never waits longer than `timeout_s`."""
    import httpx

    try:
        r = httpx.get(f"{host.rstrip('/')}/api/version", timeout=timeout_s)
        r.raise_for_status()
        return str(r.json().get("version", "?"))
    except (httpx.HTTPError, ValueError, AttributeError):
        return None


def port_in_use(host: str, port: int) -> bool:
    """Whether something already answers on host:port (a wildcard host is probed on loopback).

    An address that cannot be probed counts as free: binding to it will report the real error.
    """
    import socket

    target = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host.strip("[]"), host.strip("[]"))
    try:
        addresses = socket.getaddrinfo(target, port, type=socket.SOCK_STREAM)
    except OSError:
        return False
    for family, kind, proto, _, address in addresses:
        try:
            with socket.socket(family, kind, proto) as s:
                s.settimeout(1.0)
                if s.connect_ex(address) == 0:
                    return True
        except OSError:
            continue
    return False
