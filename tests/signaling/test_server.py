"""The signaling server on loopback, driven by raw websockets clients and raw HTTP."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from signaling.server import HttpResponse, Route, Server, run, start_server
from signaling.settings import ServerSettings

ROOT = Path(__file__).resolve().parents[2]
WAIT = 5.0  # generous bound for anything that should happen "now"


def settings(**kwargs: Any) -> ServerSettings:
    return ServerSettings(port=0, **kwargs)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    async with await start_server(settings()) as srv:
        yield srv


def ws_url(srv: Server) -> str:
    return srv.url.replace("http://", "ws://") + "/v1/signal"


async def send(ws: ClientConnection, kind: str, **fields: Any) -> None:
    await ws.send(json.dumps({"v": 1, "type": kind, **fields}))


async def recv(ws: ClientConnection) -> dict[str, Any]:
    data = await asyncio.wait_for(ws.recv(), WAIT)
    assert isinstance(data, str)
    result: dict[str, Any] = json.loads(data)
    return result


async def closed(ws: ClientConnection) -> int | None:
    """Wait for the server to close ``ws``; return the close code."""
    await asyncio.wait_for(ws.wait_closed(), WAIT)
    return ws.close_code


async def http_get(
    srv: Server, path: str, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    raw = await asyncio.wait_for(reader.read(), WAIT)
    writer.close()
    await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    return int(status_line.split()[1]), headers, body


async def paired(srv: Server) -> tuple[ClientConnection, ClientConnection, str]:
    a = await connect(ws_url(srv))
    b = await connect(ws_url(srv))
    await send(a, "allocate")
    allocated = await recv(a)
    nameplate = allocated["nameplate"]
    await send(b, "join", nameplate=nameplate)
    assert await recv(b) == {"v": 1, "type": "joined"}
    assert await recv(a) == {"v": 1, "type": "peer-joined"}
    return a, b, nameplate


# -- HTTP --------------------------------------------------------------------------------------


async def test_health(server: Server) -> None:
    status, headers, body = await http_get(server, "/v1/health")
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {"ok": True, "service": "scanbeam", "protocol": [1]}
    status, _, _ = await http_get(server, "/v1/health?probe=1")
    assert status == 200


@pytest.mark.parametrize("path", ["/", "/v1", "/v1/health/x", "/v2/signal", "/v1/signal/x"])
async def test_other_paths_are_404_plain_text(server: Server, path: str) -> None:
    status, headers, body = await http_get(server, path)
    assert (status, body) == (404, b"Not found.\n")
    assert headers["content-type"] == "text/plain; charset=utf-8"


async def test_non_get_is_405(server: Server) -> None:
    status, _, _ = await http_get(server, "/v1/health", method="POST")
    assert status == 405


async def test_websocket_on_another_path_is_refused(server: Server) -> None:
    with pytest.raises(InvalidStatus) as info:
        await connect(server.url.replace("http://", "ws://") + "/v1/other")
    assert info.value.response.status_code == 404


async def test_extra_routes_exact_prefix_sync_and_async() -> None:
    async def page(request: web.Request) -> HttpResponse:
        return HttpResponse(200, b"<html>", "text/html", (("Cache-Control", "max-age=60"),))

    def static(request: web.Request) -> HttpResponse:
        return HttpResponse(200, request.path_qs.encode())

    routes: dict[str, Route] = {
        "/": page,
        "/static/*": static,
        "/static/deep/*": page,
        "/v1/health": static,
    }
    async with await start_server(settings(), routes=routes) as srv:
        status, headers, body = await http_get(srv, "/")
        assert (status, body, headers["content-type"]) == (200, b"<html>", "text/html")
        assert headers["cache-control"] == "max-age=60"
        assert (await http_get(srv, "/static/app.js?v=2"))[2] == b"/static/app.js?v=2"
        assert (await http_get(srv, "/static"))[0] == 404
        assert (await http_get(srv, "/static/deep/x"))[2] == b"<html>"  # longest prefix
        assert (await http_get(srv, "/nothing"))[0] == 404
        _, _, body = await http_get(srv, "/v1/health")  # built-in routes cannot be overridden
        assert json.loads(body)["service"] == "scanbeam"


async def test_mounts_add_routes_and_hooks_before_the_fallback_routes() -> None:
    events: list[str] = []

    async def drops(request: web.Request) -> web.Response:
        response = web.json_response({"method": request.method})
        response.force_close()  # http_get reads to the end of the connection
        return response

    def sync_mount(app: web.Application) -> None:
        app.router.add_route("*", "/v1/thing", drops)
        app.router.add_get("/v1/health", drops)  # too late: the built-in route comes first

    async def async_mount(app: web.Application) -> None:
        async def cleanup(app: web.Application) -> None:
            events.append("cleanup")

        app.on_cleanup.append(cleanup)
        events.append("mounted")

    routes: dict[str, Route] = {"/v1/thing": lambda r: HttpResponse(200, b"route")}
    srv = await start_server(settings(), routes=routes, mounts=[sync_mount, async_mount])
    async with srv:
        assert events == ["mounted"]
        status, _, body = await http_get(srv, "/v1/thing", method="PUT")
        assert (status, json.loads(body)) == (200, {"method": "PUT"})
        _, _, body = await http_get(srv, "/v1/health")
        assert json.loads(body)["service"] == "scanbeam"
    assert events == ["mounted", "cleanup"]


async def test_a_failing_mount_startup_closes_everything() -> None:
    async def startup(app: web.Application) -> None:
        raise RuntimeError("no storage")

    def mount(app: web.Application) -> None:
        app.on_startup.append(startup)

    with pytest.raises(RuntimeError, match="no storage"):
        await start_server(settings(), mounts=[mount])


# -- the room protocol -------------------------------------------------------------------------


async def test_allocate_join_and_messages_both_ways(server: Server) -> None:
    a = await connect(ws_url(server))
    await send(a, "allocate")
    allocated = await recv(a)
    assert allocated == {
        "v": 1,
        "type": "allocated",
        "nameplate": allocated["nameplate"],
        "expires_in": 600,
    }
    assert allocated["nameplate"].isdigit() and len(allocated["nameplate"]) <= 3
    b = await connect(ws_url(server))
    await send(b, "join", nameplate=allocated["nameplate"])
    assert await recv(b) == {"v": 1, "type": "joined"}
    assert await recv(a) == {"v": 1, "type": "peer-joined"}
    await send(a, "msg", body="offer \u00e9 \U0001f600")
    assert await recv(b) == {"v": 1, "type": "msg", "body": "offer \u00e9 \U0001f600"}
    await send(b, "msg", body="answer", ignored=True)
    assert await recv(a) == {"v": 1, "type": "msg", "body": "answer"}
    await send(a, "ping")
    assert await recv(a) == {"v": 1, "type": "pong"}
    await a.close()
    await b.close()


async def test_logs_never_hold_bodies_and_nameplates_only_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with await start_server(settings()) as srv:
        a, b, nameplate = await paired(srv)
        await send(a, "msg", body="SECRET-SDP-BODY")
        assert (await recv(b))["body"] == "SECRET-SDP-BODY"
        await send(b, "close", mood="happy")
        await closed(a)
    # The test's own raw clients log on "websockets.client"; only the server's logs count.
    ours = [r for r in caplog.records if r.name.startswith("scanbeam")]
    assert not any("SECRET-SDP-BODY" in r.getMessage() for r in ours)
    assert "room closed by a member (mood=happy, rooms=0)" in [r.getMessage() for r in ours]
    at_debug = [r for r in ours if nameplate in r.getMessage().split()]
    assert at_debug and all(r.levelno == logging.DEBUG for r in at_debug)


async def test_peer_gone_when_the_other_side_drops(server: Server) -> None:
    a, b, nameplate = await paired(server)
    b.transport.abort()  # no close message, no closing handshake
    assert await recv(a) == {"v": 1, "type": "peer-gone"}
    assert await closed(a) == 1000
    c = await connect(ws_url(server))
    await send(c, "join", nameplate=nameplate)
    assert (await recv(c))["code"] == "unknown-nameplate"
    await c.close()


async def test_peer_closed_with_mood(server: Server) -> None:
    a, b, _ = await paired(server)
    await send(b, "close", mood="declined")
    assert await recv(a) == {"v": 1, "type": "peer-closed", "mood": "declined"}
    assert await closed(b) == 1000
    assert await closed(a) == 1000


async def test_third_claimant_is_crowded(server: Server) -> None:
    a, b, nameplate = await paired(server)
    c = await connect(ws_url(server))
    await send(c, "join", nameplate=nameplate)
    assert await recv(c) == {
        "v": 1,
        "type": "error",
        "code": "crowded",
        "detail": "This room already has two members.",
    }
    await send(c, "ping")  # still open
    assert await recv(c) == {"v": 1, "type": "pong"}
    await send(a, "msg", body="unaffected")
    assert (await recv(b))["body"] == "unaffected"
    for ws in (a, b, c):
        await ws.close()


async def test_unknown_nameplate(server: Server) -> None:
    ws = await connect(ws_url(server))
    await send(ws, "join", nameplate="12345678")
    assert await recv(ws) == {
        "v": 1,
        "type": "error",
        "code": "unknown-nameplate",
        "detail": "This code is unknown, expired or already used.",
    }
    await ws.close()


@pytest.mark.parametrize(
    ("data", "detail"),
    [
        ("{not json", "The frame is not valid JSON."),
        ('{"v":1,"type":"join","nameplate":7}', "'nameplate' must be a string."),
        (b"\x00\x01", "Binary frames are not accepted; send JSON text."),
    ],
)
async def test_malformed_frame_gets_an_error_and_1008(
    server: Server, data: str | bytes, detail: str
) -> None:
    ws = await connect(ws_url(server))
    await ws.send(data)
    assert await recv(ws) == {"v": 1, "type": "error", "code": "malformed", "detail": detail}
    assert await closed(ws) == 1008


async def test_oversized_frame_closes_with_1009(server: Server) -> None:
    ws = await connect(ws_url(server))
    await ws.send(json.dumps({"v": 1, "type": "msg", "body": "x" * (64 * 1024)}))
    assert await closed(ws) == 1009


async def test_body_over_48k_in_a_small_enough_frame_is_malformed(server: Server) -> None:
    a, b, _ = await paired(server)
    await send(a, "msg", body="x" * (48 * 1024 + 1))
    assert (await recv(a))["detail"] == "'body' is larger than 49152 bytes."
    assert await closed(a) == 1008
    assert await recv(b) == {"v": 1, "type": "peer-gone"}
    await b.close()


async def test_unknown_type_keeps_the_connection_open(server: Server) -> None:
    ws = await connect(ws_url(server))
    await send(ws, "hello", versions=[2, 1])
    assert await recv(ws) == {
        "v": 1,
        "type": "error",
        "code": "unknown-type",
        "detail": "Unknown message type.",
    }
    await send(ws, "ping")
    assert await recv(ws) == {"v": 1, "type": "pong"}
    await ws.close()


async def test_unjoined_nameplate_expires() -> None:
    async with await start_server(settings(nameplate_ttl=0.3, prune_interval=0.05)) as srv:
        ws = await connect(ws_url(srv))
        await send(ws, "allocate")
        allocated = await recv(ws)
        assert allocated["expires_in"] == 1  # whole seconds, rounded up
        started = asyncio.get_running_loop().time()
        assert await recv(ws) == {"v": 1, "type": "expired"}
        assert 0.25 <= asyncio.get_running_loop().time() - started < 2.0
        assert await closed(ws) == 1000
        assert srv.hub.stats.rooms == 0
        late = await connect(ws_url(srv))
        await send(late, "join", nameplate=allocated["nameplate"])
        assert (await recv(late))["code"] == "unknown-nameplate"
        await late.close()


async def test_paired_room_expires_after_room_ttl() -> None:
    cfg = settings(nameplate_ttl=5.0, room_ttl=0.3, prune_interval=0.05)
    async with await start_server(cfg) as srv:
        a, b, _ = await paired(srv)
        assert await recv(a) == {"v": 1, "type": "expired"}
        assert await recv(b) == {"v": 1, "type": "expired"}
        assert (await closed(a), await closed(b)) == (1000, 1000)


async def test_message_cap() -> None:
    async with await start_server(settings(max_msgs_per_room=2)) as srv:
        a, b, _ = await paired(srv)
        for body in ("1", "2"):
            await send(a, "msg", body=body)
            assert (await recv(b))["body"] == body
        await send(a, "msg", body="3")
        for ws in (a, b):
            assert (await recv(ws))["code"] == "too-many-messages"
            assert await closed(ws) == 1008


async def test_failed_joins_are_rate_limited() -> None:
    async with await start_server(settings(join_failures_per_minute=2)) as srv:
        ws = await connect(ws_url(srv))
        for _ in range(2):
            await send(ws, "join", nameplate="999999")
            assert (await recv(ws))["code"] == "unknown-nameplate"
        await send(ws, "join", nameplate="999999")
        assert (await recv(ws))["code"] == "rate-limited"
        assert await closed(ws) == 1008
        again = await connect(ws_url(srv))  # same IP, new connection: still limited
        await send(again, "join", nameplate="1")
        assert (await recv(again))["code"] == "rate-limited"


async def test_room_cap_gives_busy() -> None:
    async with await start_server(settings(max_rooms=1)) as srv:
        a, b = await connect(ws_url(srv)), await connect(ws_url(srv))
        await send(a, "allocate")
        assert (await recv(a))["type"] == "allocated"
        await send(b, "allocate")
        assert await recv(b) == {
            "v": 1,
            "type": "error",
            "code": "busy",
            "detail": "The server is busy; try again later.",
        }
        await a.close()
        await asyncio.wait_for(_until(lambda: srv.hub.stats.rooms == 0), WAIT)
        await send(b, "allocate")
        assert (await recv(b))["type"] == "allocated"
        await b.close()


async def test_a_peer_that_does_not_read_slows_only_its_own_room() -> None:
    body = "x" * (48 * 1024)
    count = 400  # ~19 MiB: more than loopback socket buffers hold
    async with await start_server(settings(max_msgs_per_room=1000)) as srv:
        a, b, _ = await paired(srv)

        async def flood() -> None:
            for _ in range(count):
                await send(a, "msg", body=body)

        flooding = asyncio.create_task(flood())
        await asyncio.sleep(0.3)
        # The server does not soak up a's flood in memory: a is pushed back until b reads.
        assert not flooding.done()
        # Meanwhile another room works normally.
        c, d, _ = await paired(srv)
        await send(c, "msg", body="hi")
        assert (await recv(d))["body"] == "hi"
        # Now b reads: everything arrives, in order, nothing dropped.
        for _ in range(count):
            assert (await recv(b))["body"] == body
        await asyncio.wait_for(flooding, WAIT)
        for ws in (a, b, c, d):
            await ws.close()


async def test_close_closes_clients_and_is_idempotent() -> None:
    srv = await start_server(settings())
    a, _, _ = await paired(srv)
    await srv.close()
    assert await closed(a) == 1001
    await srv.close()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", srv.port)


async def test_run_until_closed_and_until_cancelled() -> None:
    ready: asyncio.Queue[Server] = asyncio.Queue()
    task = asyncio.create_task(run(settings(), on_ready=ready.put_nowait))
    srv = await asyncio.wait_for(ready.get(), WAIT)
    assert (await http_get(srv, "/v1/health"))[0] == 200
    await srv.close()
    await asyncio.wait_for(task, WAIT)

    task = asyncio.create_task(run(settings(), on_ready=ready.put_nowait))
    srv = await asyncio.wait_for(ready.get(), WAIT)
    ws = await connect(ws_url(srv))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), WAIT)


async def _until(condition: Any) -> None:
    while not condition():  # noqa: ASYNC110 - polling server state the test cannot await
        await asyncio.sleep(0.01)


# -- settings ----------------------------------------------------------------------------------


def test_settings_defaults_env_and_overrides(tmp_path: Path) -> None:
    assert ServerSettings.load({}, {}) == ServerSettings()
    env = {
        "SCANBEAM_HOST": "0.0.0.0",
        "SCANBEAM_PORT": "9000",
        "SCANBEAM_DATA_DIR": str(tmp_path),
        "SCANBEAM_NAMEPLATE_TTL": "30",
        "SCANBEAM_MAX_ROOMS": " 5 ",
        "SCANBEAM_ROOM_TTL": "",  # empty: ignored
        "OTHER": "x",
    }
    loaded = ServerSettings.load(env, {"port": 9001, "room_ttl": None, "prune_interval": "1.5"})
    assert loaded == ServerSettings(
        host="0.0.0.0",
        port=9001,
        data_dir=tmp_path,
        nameplate_ttl=30.0,
        max_rooms=5,
        prune_interval=1.5,
    )


@pytest.mark.parametrize(
    ("env", "overrides", "message"),
    [
        ({"SCANBEAM_PORT": "http"}, {}, "SCANBEAM_PORT: expected an integer, got 'http'"),
        ({}, {"port": True}, "port: expected an integer, got True"),
        ({}, {"port": 70000}, "port must be between 0 and 65535, not 70000"),
        ({}, {"colour": "red"}, "unknown server setting(s): colour"),
        ({"SCANBEAM_ROOM_TTL": "nan"}, {}, "room_ttl must be a positive, finite number"),
        ({}, {"max_rooms": 0}, "max_rooms must be at least 1"),
        ({}, {"prune_interval": 700.0}, "prune_interval must be smaller than nameplate_ttl"),
    ],
)
def test_settings_errors(env: dict[str, str], overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as info:
        ServerSettings.load(env, overrides)
    assert str(info.value).startswith(message)


def test_servers_never_import_peer() -> None:
    code = (
        "import sys, signaling.server, signaling.client\n"
        "bad = [m for m in sys.modules if m == 'peer' or m.startswith('peer.')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=30)
