"""End to end: `scanbeam serve`, `send` and `receive` as real processes on this machine,
a real WebRTC data channel between them, a synthetic multi-series CT study."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from peer.dicom.synth import write_study

from ..conftest import Server, cli_env, receive, sha_tree, spawn, start_send


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("src")
    write_study(root / "CT_STUDY", target_bytes=12_000_000, series=3, seed=7)
    return root / "CT_STUDY"


def test_study_arrives_byte_identical_and_verified(
    server: Server, study: Path, tmp_path: Path
) -> None:
    sender, code = start_send(server, [study])
    assert code.split("-")[0].isdigit() and len(code.split("-")) == 3
    url = sender.events[0]["url"]
    assert url.startswith(server.url + "/r#")
    out = tmp_path / "out"
    rcv = receive(server, code, out, "--yes")
    assert rcv.finish() == 0, rcv.stderr
    assert sender.finish() == 0, sender.stderr
    assert sha_tree(out / "CT_STUDY") == sha_tree(study)
    offer = rcv.event("offer")
    assert offer["files"] == len(sha_tree(study))
    (st,) = offer["summary"]["studies"]
    assert st["patient_name"] == "DOE, JANE"
    assert st["modalities"] == ["CT"]
    assert st["series_count"] == 3
    assert all("sop_uids" not in se for se in st["series"])  # kept out of the offer line
    assert st["image_count"] == offer["summary"]["dicom_files"]
    assert offer["summary"]["other"] == ["CT_STUDY/report.pdf"]
    # one thumbnail per series travelled in the manifest; the JSON line names them only
    series_uids = {se["series_uid"] for se in st["series"]}
    assert {p["series"] for p in offer["previews"]} == series_uids
    assert all(
        0 < p["w"] <= 128 and 0 < p["h"] <= 128 and p["bytes"] > 0 for p in offer["previews"]
    )
    assert all("data" not in p for p in offer["previews"])
    for peer in (sender, rcv):
        done = peer.event("done")
        assert done["via"] == "direct"
        assert done["files"] == offer["files"] and done["bytes"] == offer["bytes"]
        assert peer.event("progress")["bytes"] == offer["bytes"]
    assert rcv.event("done")["completeness"]["status"] == "complete"
    # nothing is left behind in the staging area
    assert not (out / ".scanbeam-partial").exists()


def test_no_previews_offers_none(server: Server, study: Path, tmp_path: Path) -> None:
    sender, code = start_send(server, [study], "--no-previews")
    rcv = receive(server, code, tmp_path / "out", "--yes")
    assert rcv.finish() == 0, rcv.stderr
    assert sender.finish() == 0, sender.stderr
    assert rcv.event("offer")["previews"] == []
    assert rcv.event("offer")["summary"]["studies"][0]["series_count"] == 3


def test_human_offer_mentions_the_previews(server: Server, study: Path, tmp_path: Path) -> None:
    sender, code = start_send(server, [study])
    rcv = spawn(["receive", code, "--server", server.url, "-o", str(tmp_path / "o"), "--yes"])
    assert rcv.finish() == 0, rcv.stderr
    assert sender.finish() == 0, sender.stderr
    assert "  Previews: 3 series thumbnails (shown by scanbeam tui)" in rcv.stdout.splitlines()


def test_qr_link_pairs_like_a_code(server: Server, tmp_path: Path) -> None:
    src = tmp_path / "one.bin"
    src.write_bytes(os.urandom(300_000))
    sender, _code = start_send(server, [src])
    url = sender.events[0]["url"]
    rcv = receive(server, url, tmp_path / "out", "--yes")
    assert rcv.finish() == 0, rcv.stderr
    assert sender.finish() == 0
    assert rcv.event("paired")["mode"] == "link"
    assert (tmp_path / "out" / "one.bin").read_bytes() == src.read_bytes()


def test_many_small_files_and_empty_ones(server: Server, tmp_path: Path) -> None:
    src = tmp_path / "many"
    for i in range(300):
        d = src / f"d{i % 7}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}.txt").write_bytes(os.urandom(i * 13))
    sender, code = start_send(server, [src])
    rcv = receive(server, code, tmp_path / "out", "--yes")
    assert rcv.finish() == 0, rcv.stderr
    assert sender.finish() == 0
    assert sha_tree(tmp_path / "out" / "many") == sha_tree(src)


def test_human_output_without_json(server: Server, tmp_path: Path) -> None:
    src = tmp_path / "a.txt"
    src.write_text("hello")
    sender = spawn(["send", str(src), "--server", server.url])
    assert sender.proc.stdout is not None
    lines: list[str] = []
    while not any(line.startswith("Code: ") for line in lines):
        line = sender.proc.stdout.readline()
        assert line, lines
        lines.append(line)
    code = next(ln for ln in lines if ln.startswith("Code: ")).split()[1]
    assert any("█" in ln or "▀" in ln or "▄" in ln for ln in lines), "no QR code drawn"
    rcv = spawn(["receive", code, "--server", server.url, "-o", str(tmp_path / "o"), "--yes"])
    assert rcv.finish() == 0, rcv.stderr
    assert sender.finish() == 0
    assert "Offered: 1 files, 5 B" in rcv.stdout
    assert "every file verified" in rcv.stdout.splitlines()[-1]
    assert "confirmed every file's SHA-256" in sender.stdout.splitlines()[-1]
    assert (tmp_path / "o" / "a.txt").read_text() == "hello"


def test_disclosure_log_records_direct_sends(server: Server, tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = cli_env(SCANBEAM_HOME=str(home))
    study = tmp_path / "S"
    write_study(study, target_bytes=1_000_000, series=2, seed=3, rows=64, cols=64)
    sender = spawn(["send", str(study), "--server", server.url, "--json"], env)
    code = sender.next_event("code")["code"]
    rcv = receive(server, code, tmp_path / "o", "--yes")
    assert rcv.finish() == 0 and sender.finish() == 0
    log = spawn(["log", "--json"], env)
    assert log.finish() == 0
    (entry,) = log.events
    assert entry["how"] == "direct" and entry["outcome"] == "delivered"
    assert entry["to"] == f"code {code.split('-')[0]}"
    assert entry["files"] == len(sha_tree(study))
    assert len(entry["study_uids"]) == 1 and entry["study_uids"][0].startswith("1.2.")
    assert len(entry["sha256_list_digest"]) == 64
    csv_out = spawn(["log", "--csv"], env)
    assert csv_out.finish() == 0
    assert csv_out.stdout.splitlines()[0].startswith("time,how,to,outcome")
    assert code.split("-")[0] in csv_out.stdout
