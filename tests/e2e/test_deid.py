"""End to end: `scanbeam send --deidentify` to `scanbeam receive` over the real CLI, a real
server and a real WebRTC channel; `scanbeam deidentify SRC DST`; the disclosure log."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pydicom import dcmread

from tests.peer.deid_study import planted_in, write_planted_study

from ..conftest import Server, cli_env, receive, sha_tree, spawn, start_send


def _phi_in(root: Path) -> list[tuple[str, str]]:
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            found += [(path.name, v) for v in planted_in(data)]
    return found


def test_send_deidentify_delivers_no_planted_value(server: Server, tmp_path: Path) -> None:
    study = write_planted_study(tmp_path / "ZEBRAFISH_QUENTIN")
    (study.root / "report.pdf").write_bytes(b"%PDF-1.4 ZEBRAFISH QUENTIN\n%%EOF\n")
    before = sha_tree(study.root)
    sender, code = start_send(server, [study.root], "--deidentify", "--no-relay")
    out = tmp_path / "out"
    rcv = receive(server, code, out, "--yes")
    assert rcv.finish() == 0, rcv.stderr
    assert sender.finish() == 0, sender.stderr
    assert sha_tree(study.root) == before  # the originals were not touched
    received = sorted(p for p in out.rglob("*") if p.is_file())
    assert len(received) == len(study.files)  # the PDF was left out
    assert _phi_in(out) == []
    offer = rcv.event("offer")
    assert planted_in(json.dumps(offer)) == []
    (st,) = offer["summary"]["studies"]
    assert st["patient_name"] == "" and st["image_count"] == len(study.files)
    assert rcv.event("done")["completeness"]["status"] == "complete"
    for p in received:
        ds = dcmread(p)
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.PixelData in study.pixels.values()
    profile = sender.event("deid-profile")
    assert profile["profile"] == "default"
    assert sender.event("deid-excluded")["files"] == 1
    report = sender.event("deid-report")
    assert report["changed_elements"] > 0 and report["table"].endswith("2026c Table E.1-1")
    # the disclosure log says the send was de-identified, and with which profile
    log = subprocess.run(
        [sys.executable, "-m", "peer.cli", "log", "--json"],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=60,
        check=True,
    )
    (entry,) = [json.loads(line) for line in log.stdout.splitlines()]
    assert entry["deidentified"].startswith("default (DICOM PS3.15 2026c")
    assert entry["outcome"] == "delivered"


def test_send_deidentify_through_the_relay(server: Server, tmp_path: Path) -> None:
    """The relay upload streams the same transform: no planted value reaches the receiver."""
    study = write_planted_study(tmp_path / "ZEBRAFISH_QUENTIN", per_series=2)
    sender = spawn(
        [
            "send",
            str(study.root),
            "--server",
            server.url,
            "--json",
            "--relay",
            "--deidentify",
            "--profile",
            "research",
        ]
    )
    assert sender.finish() == 0, sender.stderr
    link = str(sender.event("link")["url"])
    out = tmp_path / "out"
    rcv = receive(server, link, out, "--yes")
    assert rcv.finish() == 0, rcv.stderr
    assert len([p for p in out.rglob("*") if p.is_file()]) == len(study.files)
    assert _phi_in(out) == []
    ds = dcmread(next(out.rglob("*.dcm")))
    assert "ScanBeam profile research" in ds.DeidentificationMethod
    assert rcv.event("done")["completeness"]["status"] == "complete"


def test_risky_files_need_accept_risk(server: Server, tmp_path: Path) -> None:
    study = write_planted_study(tmp_path / "s", per_series=1)
    ds = dcmread(study.files[0])
    ds.BurnedInAnnotation = "YES"
    ds.save_as(study.files[0])
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "peer.cli",
            "send",
            str(study.root),
            "--deidentify",
            "--server",
            server.url,
            "--no-relay",
        ],
        capture_output=True,
        text=True,
        env=cli_env(),
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert proc.returncode == 6
    assert "BurnedInAnnotation is not NO" in proc.stdout
    assert proc.stderr.strip().endswith("add --accept-risk to go on.")
    assert "Traceback" not in proc.stderr
    accepted = subprocess.run(
        [
            sys.executable,
            "-m",
            "peer.cli",
            "deidentify",
            str(study.root),
            str(tmp_path / "d"),
            "--accept-risk",
        ],
        capture_output=True,
        text=True,
        env=cli_env(),
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert accepted.returncode == 0, accepted.stderr
    assert "Going on (--accept-risk)." in accepted.stdout
    assert _phi_in(tmp_path / "d") == []


def test_deidentify_command_writes_copies_and_report(tmp_path: Path) -> None:
    study = write_planted_study(tmp_path / "ZEBRAFISH_QUENTIN")
    dst = tmp_path / "dst"

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "peer.cli", "deidentify", str(study.root), str(dst), *extra],
            capture_output=True,
            text=True,
            env=cli_env(),
            stdin=subprocess.DEVNULL,
            timeout=120,
        )

    proc = run("--profile", "basic")
    assert proc.returncode == 0, proc.stderr
    assert "De-identification profile: basic (Basic Profile; DICOM PS3.15 2026c" in proc.stdout
    assert _phi_in(dst) == []
    report = json.loads((dst / "DEIDENTIFICATION-REPORT.json").read_text())
    assert report["profile"] == "basic" and report["instances"] == len(study.files)
    again = run()
    assert again.returncode == 7 and "nothing was overwritten" in again.stderr
    bad = run("--profile", "nope")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
