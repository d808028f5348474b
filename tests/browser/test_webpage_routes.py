"""The page's routes without a browser: which paths serve what, and a clear 503 when the page
was never built (instead of a traceback or an empty page)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from signaling.server import HttpResponse
from signaling.webpage import CSP, routes


def _get(table: dict[str, Any], path: str) -> HttpResponse:
    result = table[path](None)
    assert isinstance(result, HttpResponse)
    return result


def test_unbuilt_page_answers_503_with_the_fix(tmp_path: Path) -> None:
    reply = _get(routes(tmp_path / "dist"), "/r")
    assert reply.status == 503
    assert b"make deps-browser" in reply.body
    assert ("Content-Security-Policy", CSP) in reply.headers


def test_routes_serve_the_built_files(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    (dist / "app").mkdir(parents=True)
    (dist / "index.html").write_text("<!doctype html>page")
    (dist / "app" / "app.js").write_text("js")
    (dist / "app" / "app.css").write_text("css")
    (dist / "sw.js").write_text("sw")
    table = routes(dist)
    assert set(table) == {"/r", "/d/*", "/app/app.js", "/app/app.css", "/sw.js"}
    page = _get(table, "/d/*")
    assert page.status == 200 and page.body.endswith(b"page")
    assert page.content_type.startswith("text/html")
    assert dict(page.headers)["Referrer-Policy"] == "no-referrer"
    assert _get(table, "/app/app.js").content_type.startswith("text/javascript")
    assert _get(table, "/app/app.css").content_type.startswith("text/css")
    sw = _get(table, "/sw.js")
    assert dict(sw.headers)["Service-Worker-Allowed"] == "/"
