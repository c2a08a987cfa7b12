"""Who may talk to a studio server: ``Access`` says whether a request's host, origin and
token pass.

On 127.0.0.1 (the default) no token is needed, but the ``Host`` header must name the local
machine (so a web page that rebinds its own name to 127.0.0.1 gets nothing) and a socket's
``Origin`` must be the page's own. On any other address a random token
(``secrets.token_urlsafe``) is made, printed in the URL, and needed on every HTTP request
and socket: as ``?token=`` in the URL, the cookie the page sets, or an
``Authorization: Bearer`` header. Behind a proxy that rewrites Host and Origin (Colab's),
``check_origin=False``.
"""

from __future__ import annotations

import ipaddress
import secrets
from http.cookies import SimpleCookie
from typing import NamedTuple
from urllib.parse import parse_qs, urlsplit

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
COOKIE = "clipclop_studio_token"


class Access(NamedTuple):
    """The server's access rule: the token (None: none needed) and whether Host and Origin
    are checked."""

    token: str | None
    check_origin: bool = True


def is_local(host: str) -> bool:
    """Whether a bind address reaches only this machine (a loopback address)."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def access_for(host: str, *, token: str | None = None, check_origin: bool = True) -> Access:
    """The access rule of a server bound to ``host``: a token when it is not a loopback
    address (``token``, or a new random one).

    Raises:
      ValueError: a token shorter than 16 characters (guessable).
    """
    if token is not None and len(token) < 16:
        raise ValueError(
            "the studio token must have at least 16 characters: leave it out for a random one."
        )
    if token is None and not is_local(host):
        token = secrets.token_urlsafe(32)
    return Access(token, check_origin)


def allowed(access: Access, headers: dict[str, str], query: str) -> tuple[bool, str]:
    """Whether a request passes (``headers``: lower-case names), and why not."""
    host = headers.get("host", "")
    if access.check_origin and access.token is None and _hostname(host) not in LOCAL_HOSTS:
        return False, "the Host header must name this machine (127.0.0.1 or localhost)."
    origin = headers.get("origin")
    socket = headers.get("upgrade", "").lower() == "websocket"
    if (
        access.check_origin
        and socket
        and origin
        and urlsplit(origin).netloc.lower() != host.lower()
    ):
        return False, "a socket from another site's page."
    if access.token is None:
        return True, ""
    if secrets.compare_digest(request_token(headers, query).encode(), access.token.encode()):
        return True, ""
    return False, "a token is needed: open the URL the studio printed (it has ?token=...)."


def request_token(headers: dict[str, str], query: str) -> str:
    """The token a request carries (query, then bearer header, then cookie), or ''."""
    values = parse_qs(query).get("token")
    if values:
        return values[0]
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    cookie = SimpleCookie()
    try:
        cookie.load(headers.get("cookie", ""))
    except Exception:  # a malformed cookie header carries no token
        return ""
    return cookie[COOKIE].value if COOKIE in cookie else ""


def _hostname(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]")[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
