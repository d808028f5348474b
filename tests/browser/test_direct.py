"""Direct receive in the browser page: the real CLI sender, the real signaling server, a real
WebRTC data channel into Debian's chromium; the saved bytes are compared with the source."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import pytest

from peer.dicom.synth import write_study
from tests.conftest import Server, sha_tree, start_send, timeout

from .conftest import shot, wait_state


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _random_file(path: Path, size: int) -> Path:
    with open(path, "wb") as fh:
        left = size
        while left:
            n = min(left, 1 << 20)
            fh.write(os.urandom(n))
            left -= n
    return path


def receive_in_page(page: Any, url: str, test: str, limit: float = 240) -> tuple[Any, Any]:
    """Open ``url``, accept the offer, return (the download, the sender-agnostic page)."""
    page.goto(url)
    wait_state(page, "offer")
    shot(page, test, "1-offer")
    with page.expect_download(timeout=timeout(limit) * 1000) as dl_info:
        page.click("#accept")
    download = dl_info.value
    wait_state(page, "receiving", 30, later=("done",))  # a small file may be done already
    shot(page, test, "2-receiving")
    wait_state(page, "done", limit)
    shot(page, test, "3-verified")
    return download, page


def _watch_traffic(page: Any) -> list[str]:
    """Everything the page sends: request URLs, headers, bodies and WebSocket frames."""
    seen: list[str] = []

    def on_request(req: Any) -> None:
        seen.append(req.url)
        seen.extend(f"{k}: {v}" for k, v in req.headers.items())
        seen.append(req.post_data or "")

    def on_ws(ws: Any) -> None:
        seen.append(ws.url)
        ws.on("framesent", lambda payload: seen.append(str(payload)))

    page.on("request", on_request)
    page.on("websocket", on_ws)
    return seen


def test_single_large_file(page_server: Server, phone: Any, tmp_path: Path) -> None:
    src = _random_file(tmp_path / "scan-volume.raw", 48 * 1024 * 1024 + 12345)
    sender, _code = start_send(page_server, [src])
    url = sender.events[0]["url"]
    assert url.startswith(page_server.url + "/r#")
    traffic = _watch_traffic(phone)
    download, page = receive_in_page(phone, url, "direct-single")
    assert download.suggested_filename == "scan-volume.raw"
    saved = tmp_path / "saved.raw"
    download.save_as(saved)
    assert download.failure() is None
    assert saved.stat().st_size == src.stat().st_size
    assert _sha(saved) == _sha(src)
    assert sender.finish() == 0, sender.stderr
    done = sender.event("done")
    assert done["via"] == "direct" and done["bytes"] == src.stat().st_size
    assert "scan-volume.raw" in page.text_content("#done-files")
    assert page.text_content("#status").startswith("Verified")
    # the fragment secret never left the page, in any encoding
    frag = url.split("#", 1)[1]
    secret = base64.urlsafe_b64decode(frag.split(".", 1)[1] + "=")
    assert any('"type":"join"' in t for t in traffic)  # the watch did see the signaling
    for form in (frag.split(".", 1)[1], secret.hex(), base64.b64encode(secret).decode()):
        assert not any(form in t for t in traffic), form


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("src")
    write_study(root / "CT_STUDY", target_bytes=12_000_000, series=3, seed=11)
    return root / "CT_STUDY"


def test_multi_series_study_as_one_zip(
    page_server: Server, phone: Any, study: Path, tmp_path: Path
) -> None:
    sender, _code = start_send(page_server, [study])
    download, page = receive_in_page(phone, sender.events[0]["url"], "direct-study")
    assert download.suggested_filename.endswith(".zip")
    saved = tmp_path / "study.zip"
    download.save_as(saved)
    assert sender.finish() == 0, sender.stderr
    want = sha_tree(study)
    with zipfile.ZipFile(saved) as zf:
        infos = zf.infolist()
        assert {i.filename for i in infos} == {f"CT_STUDY/{p}" for p in want}
        assert all(i.compress_type == zipfile.ZIP_STORED for i in infos)  # not recompressed
        assert zf.testzip() is None  # every CRC matches
        for info in infos:
            with zf.open(info) as fh:
                got = hashlib.sha256(fh.read()).hexdigest()
            assert got == want[info.filename.removeprefix("CT_STUDY/")]
    text = page.text_content("#completeness")
    assert text.startswith("Completeness: complete — 3 series,"), text
    assert page.locator("#done-files li").count() == len(want)


def test_ice_servers_from_the_joined_frame(page_server: Server, phone: Any, tmp_path: Path) -> None:
    """INTERFACES.md 2: the page uses the `ice` list of the `joined` frame. The frame is
    rewritten on its way to the page (this server hands out none); the STUN server named
    there does not answer, and the transfer still goes through on host candidates."""
    host = page_server.url.split("//")[1].split(":")[0]
    ice = [
        {"urls": [f"stun:{host}:3478"]},
        {"urls": [f"turn:{host}:3478?transport=udp"], "username": "1:x", "credential": "c2VjcmV0"},
        {"urls": "turn:bad", "username": 5},  # no usable credentials: dropped
        "junk",
    ]

    def relay_frames(ws: Any) -> None:
        server = ws.connect_to_server()

        def to_page(message: str | bytes) -> None:
            if isinstance(message, str) and '"joined"' in message:
                frame = json.loads(message)
                frame["ice"] = ice
                message = json.dumps(frame)
            ws.send(message)

        server.on_message(to_page)
        ws.on_message(lambda message: server.send(message))

    phone.route_web_socket("**/v1/signal", relay_frames)
    src = _random_file(tmp_path / "small.bin", 300_000)
    sender, _code = start_send(page_server, [src])
    download, page = receive_in_page(phone, sender.events[0]["url"], "direct-ice")
    assert page.evaluate("document.body.dataset.iceServers") == "2"
    saved = tmp_path / "saved.bin"
    download.save_as(saved)
    assert _sha(saved) == _sha(src)
    assert sender.finish() == 0, sender.stderr
