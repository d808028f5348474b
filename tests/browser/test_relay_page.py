"""Relay links `<server>/d/<id>#<secret>` in the browser page: password prompt (Argon2id in
the page), streamed ranged download, decrypt, verify, save, the completion call; then the
used-up link shows the right message."""

from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

from peer.dicom.synth import write_study
from tests.conftest import Server, sha_tree, spawn, timeout

from .conftest import shot, wait_state


def _drop_state(server: Server, link: str) -> tuple[int, dict[str, Any]]:
    drop_id = link.split("/d/")[1].split("#")[0]
    try:
        with urllib.request.urlopen(f"{server.url}/v1/drops/{drop_id}", timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_relay_link_with_password(page_server: Server, phone: Any, tmp_path: Path) -> None:
    study = tmp_path / "STUDY"
    write_study(study, target_bytes=4_000_000, series=2, seed=5, rows=128, cols=128)
    pw = tmp_path / "pw"
    pw.write_text("correct horse ☃\n")
    sender = spawn(
        [
            *("send", str(study), "--server", page_server.url, "--json", "--relay"),
            *("--password-file", str(pw)),
        ]
    )
    assert sender.finish() == 0, sender.stderr
    link = sender.event("link")["url"]
    assert link.startswith(page_server.url + "/d/")

    page = phone
    sent: list[str] = []
    page.on(
        "request",
        lambda req: sent.extend([req.url, *req.headers.values(), req.post_data or ""]),
    )
    page.goto(link)
    wait_state(page, "password")
    shot(page, "relay-password", "1-password")
    page.fill("#password-input", "wrong horse")
    page.click("#password-ok")
    page.wait_for_selector("#password-error:has-text('wrong')", timeout=timeout(60) * 1000)
    shot(page, "relay-password", "2-wrong-password")
    page.fill("#password-input", "correct horse ☃")
    page.click("#password-ok")
    wait_state(page, "offer")
    shot(page, "relay-password", "3-offer")
    assert "2 series" in page.text_content("#offer-summary")
    with page.expect_download(timeout=timeout(120) * 1000) as info:
        page.click("#accept")
    wait_state(page, "done", 120)
    shot(page, "relay-password", "4-verified")
    saved = tmp_path / "relay.zip"
    info.value.save_as(saved)
    want = sha_tree(study)
    with zipfile.ZipFile(saved) as zf:
        assert zf.testzip() is None
        got = {
            i.filename.removeprefix("STUDY/"): hashlib.sha256(zf.read(i)).hexdigest()
            for i in zf.infolist()
        }
    assert got == want
    assert page.text_content("#completeness").startswith("Completeness: complete — 2 series")
    # the link secret and the password never left the page; the derived auth key did
    frag = link.split("#", 1)[1]
    assert any(t.startswith("Bearer ") for t in sent)
    assert not any(frag in t or "correct horse" in t for t in sent)
    # the completion call counted the download: the one allowed download is used up
    status, body = _drop_state(page_server, link)
    assert (status, body["code"]) == (410, "used-up")
    # and the page says so plainly when the link is opened again
    page.goto("about:blank")
    page.goto(link)
    wait_state(page, "error")
    shot(page, "relay-password", "5-used-up")
    assert "already used" in page.text_content("#error-text")
    assert page.evaluate("document.body.dataset.error") == "used-up"


def test_relay_download_resumes_with_range_after_a_cut(
    page_server: Server, phone: Any, tmp_path: Path
) -> None:
    src = tmp_path / "volume.raw"
    src.write_bytes(os.urandom(6 * 1024 * 1024 + 777))
    sender = spawn(["send", str(src), "--server", page_server.url, "--json", "--relay"])
    assert sender.finish() == 0, sender.stderr
    link = sender.event("link")["url"]
    ranges: list[str] = []
    cut = {"done": False}

    def cut_once(route: Any) -> None:
        rng = route.request.headers.get("range", "")
        ranges.append(rng)
        start, _, end = rng.removeprefix("bytes=").partition("-")
        if not cut["done"] and end and int(end) - int(start) > 2_000_000:
            cut["done"] = True  # the first big range: deliver 2.5 MB of it, then end
            resp = route.fetch()
            body = resp.body()[:2_500_000]
            headers = {k: v for k, v in resp.headers.items() if k.lower() != "content-length"}
            route.fulfill(status=206, headers=headers, body=body)
        else:
            route.continue_()

    phone.route("**/v1/drops/*/blob", cut_once)
    phone.goto(link)
    wait_state(phone, "offer")
    with phone.expect_download() as info:
        phone.click("#accept")
    wait_state(phone, "done", 120)
    assert cut["done"], ranges
    starts = [int(r.removeprefix("bytes=").split("-")[0]) for r in ranges if "=-" not in r]
    assert any(s > 2_000_000 for s in starts), ranges  # a second request resumed mid-blob
    saved = Path(info.value.path())
    assert hashlib.sha256(saved.read_bytes()).digest() == hashlib.sha256(src.read_bytes()).digest()
