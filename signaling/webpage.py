"""The browser receive page (README "Receiving in a browser"), served by ``scanbeam serve``.

The page and its assets are built by ``make deps-browser`` (npm + esbuild) into
``signaling/web/dist/`` (not committed). Routes, all GET:

* ``/r`` (QR links ``/r#<nameplate>.<secret>``) and ``/d/<id>`` (relay links): the page;
* ``/app/app.js``, ``/app/app.css``: its script and style;
* ``/sw.js``: the service worker that streams downloads to disk (scope ``/``).

Every answer carries a strict Content-Security-Policy (scripts and styles only from this
origin, no inline code; ``'wasm-unsafe-eval'`` lets libsodium's WebAssembly start), no
referrer, no framing by other sites. The fragment secret never reaches the server: browsers
do not send fragments, and the page sends only ciphertext and derived keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from aiohttp import web

from signaling.server import HttpResponse, Route

__all__ = ["CSP", "DIST", "SECURITY_HEADERS", "routes"]

DIST: Final = Path(__file__).resolve().parent / "web" / "dist"

CSP: Final = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self' 'wasm-unsafe-eval'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "connect-src 'self'",
        "worker-src 'self'",
        "frame-src 'self'",
        "manifest-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)

SECURITY_HEADERS: Final = (
    ("Content-Security-Policy", CSP),
    ("Referrer-Policy", "no-referrer"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
    ("Permissions-Policy", "camera=(), microphone=(), geolocation=(), screen-wake-lock=(self)"),
)

_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}

_NOT_BUILT: Final = (
    b"The ScanBeam browser page is not built on this server. Run `make deps-browser` "
    b"(needs node and npm), then restart `scanbeam serve`.\n"
)


def _file(dist: Path, name: str, extra: tuple[tuple[str, str], ...] = ()) -> Route:
    path = dist / name
    content_type = _TYPES[path.suffix]

    def handler(request: web.Request) -> HttpResponse:
        try:
            body = path.read_bytes()  # small (the script is ~600 kB); read per request
        except OSError:
            return HttpResponse(503, _NOT_BUILT, headers=SECURITY_HEADERS)
        return HttpResponse(200, body, content_type, SECURITY_HEADERS + extra)

    return handler


def routes(dist: Path = DIST) -> dict[str, Route]:
    """The page's GET routes for :func:`signaling.server.start_server`."""
    page = _file(dist, "index.html")
    return {
        "/r": page,
        "/d/*": page,
        "/app/app.js": _file(dist, "app/app.js"),
        "/app/app.css": _file(dist, "app/app.css"),
        "/sw.js": _file(dist, "sw.js", (("Service-Worker-Allowed", "/"),)),
    }
