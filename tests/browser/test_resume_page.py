"""The sender is gone (killed): the page says so plainly while it tries to reconnect; the
sender runs the same command again and the page resumes from the verified chunks it kept
("Save into a folder", File System Access). A drop while the sender keeps running is
test_reconnect_page.py.

Headless chromium cannot show the folder picker, so the test hands the page the origin's
private folder (navigator.storage.getDirectory(), the same FileSystemDirectoryHandle API)
as the folder the user picked. The download mode cannot resume; its test checks the page
says so and that the re-run sends the whole file again.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from tests.conftest import Peer, Server, start_send

from .conftest import shot, wait_state

PICK_PRIVATE_FOLDER = "window.showDirectoryPicker = async () => navigator.storage.getDirectory();"

SHA_IN_PAGE = """async (path) => {
  let dir = await navigator.storage.getDirectory();
  const parts = path.split('/');
  for (const p of parts.slice(0, -1)) dir = await dir.getDirectoryHandle(p);
  const file = await (await dir.getFileHandle(parts[parts.length - 1])).getFile();
  const digest = await crypto.subtle.digest('SHA-256', await file.arrayBuffer());
  const names = [];
  for await (const name of (await navigator.storage.getDirectory()).keys()) names.push(name);
  return [Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, '0')).join(''),
          file.size, names];
}"""


def _kill_when(page: Any, sender: Peer, min_bytes: int) -> None:
    page.wait_for_selector("body[data-state=receiving]")
    for _ in range(600):
        if int(page.evaluate("Number(document.body.dataset.bytes || 0)")) >= min_bytes:
            break
        page.wait_for_timeout(50)
    sender.proc.kill()
    sender.proc.wait(10)


def test_folder_mode_resumes_after_a_drop(page_server: Server, phone: Any, tmp_path: Path) -> None:
    src = tmp_path / "series.raw"
    src.write_bytes(os.urandom(40_000_000))
    page = phone
    page.add_init_script(PICK_PRIVATE_FOLDER)
    sender, _code = start_send(page_server, [src])
    page.goto(sender.events[0]["url"])
    wait_state(page, "offer")
    assert page.is_visible("#save-folder")
    page.click("#save-folder")
    _kill_when(page, sender, 10_000_000)
    # the page tries to reconnect (protocol v2, up to 5 min) and says what it kept meanwhile
    wait_state(page, "reconnecting", 90)
    shot(page, "resume-folder", "1-dropped")
    assert "pick the same folder to resume" in (page.text_content("#progress-text") or "")

    again, _code = start_send(page_server, [src])  # the same command again: a new link
    page.goto("about:blank")
    page.goto(again.events[0]["url"])
    wait_state(page, "offer")
    page.click("#save-folder")
    wait_state(page, "done", 120)
    shot(page, "resume-folder", "2-resumed-verified")
    note = page.text_content("#progress-note") or ""
    assert note.startswith("Resumed:"), note
    assert again.finish() == 0, again.stderr
    sent = again.event("done")["sent_bytes"]
    assert sent <= src.stat().st_size - 10_000_000 + 65_472, sent  # verified chunks not resent
    digest, size, top = page.evaluate(SHA_IN_PAGE, "series.raw")
    assert size == src.stat().st_size
    assert digest == hashlib.sha256(src.read_bytes()).hexdigest()
    assert ".scanbeam-partial" not in top  # the staging folder is gone


def test_download_mode_says_it_restarts(page_server: Server, phone: Any, tmp_path: Path) -> None:
    src = tmp_path / "series.raw"
    src.write_bytes(os.urandom(30_000_000))
    sender, _code = start_send(page_server, [src])
    page = phone
    page.goto(sender.events[0]["url"])
    wait_state(page, "offer")
    with page.expect_download() as info:
        page.click("#accept")
    _kill_when(page, sender, 8_000_000)
    wait_state(page, "reconnecting", 90)
    shot(page, "resume-download", "dropped")
    text = page.text_content("#progress-text") or ""
    assert "If this page is closed or reloaded, the download starts from the beginning" in text
    again, _code = start_send(page_server, [src])
    page.goto("about:blank")
    assert info.value.failure() is not None  # never a completed download of a partial file
    page.goto(again.events[0]["url"])
    wait_state(page, "offer")
    with page.expect_download() as info2:
        page.click("#accept")
    wait_state(page, "done", 120)
    assert again.finish() == 0, again.stderr
    assert again.event("done")["sent_bytes"] == src.stat().st_size
    saved = Path(info2.value.path())
    assert (
        hashlib.sha256(saved.read_bytes()).hexdigest()
        == hashlib.sha256(src.read_bytes()).hexdigest()
    )
