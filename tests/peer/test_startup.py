"""Start-up: the CLI shows a code without importing the heavy libraries, `peer.warm` imports
them in the background, and the ``scanbeam`` command's fast exit keeps its output and its
exit code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from peer.proto.wordlist import EVEN, ODD

ROOT = Path(__file__).resolve().parents[2]


def _python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_cli_imports_no_heavy_library() -> None:
    out = _python(
        "import sys, peer.cli, peer.session, peer.lanes, peer.rtc, relay.client\n"
        "print(sorted(m for m in ('aiortc', 'aiohttp', 'pydicom', 'numpy', 'av') "
        "if m in sys.modules))"
    )
    assert out == "[]"


def test_a_receive_without_a_pacs_imports_no_dicom_library_before_pairing() -> None:
    out = _python(
        "import argparse, sys\n"
        "from peer import pacs_cli\n"
        "none = pacs_cli.target_of(argparse.Namespace(to_pacs=None))\n"
        "heavy = ('pydicom', 'pynetdicom', 'peer.dicom.pacs')\n"
        "before = sorted(m for m in heavy if m in sys.modules)\n"
        "t = pacs_cli.target_of(argparse.Namespace(to_pacs='127.0.0.1:104:PACS'))\n"
        "print(none, before, t is not None, 'peer.dicom.pacs' in sys.modules)"
    )
    assert out == "None [] True True"


def test_the_offer_is_shown_without_pydicom_and_the_re_exports_load_it_when_used() -> None:
    out = _python(
        "import sys, peer.session as s\n"
        "summary = {'bytes': 1, 'other_files': 0, 'dicom_files': 0, 'studies': [{'series': "
        "[{'images': 1, 'bytes': 1, 'transfer_syntaxes': ['1.2.840.10008.1.2.4.90']}]}]}\n"
        "lines = s.format_summary(summary)\n"
        "print('pydicom' in sys.modules, callable(s.summarize), "
        "callable(s.format_completeness), lines[-2])"
    )
    assert out == (
        "False True True   Series: 1 image, 1 B, JPEG 2000 Image Compression (Lossless Only)"
    )


def test_pydicom_is_imported_only_for_a_file_with_the_dicom_marker(tmp_path: Path) -> None:
    from peer.dicom.synth import write_study

    write_study(tmp_path / "ct", target_bytes=200_000, series=1, report=True)
    other = tmp_path / "ct" / "report.pdf"
    dcm = next((tmp_path / "ct").rglob("*.dcm"))
    fake = tmp_path / "fake.dcm"  # DICM too early: no 128-byte preamble
    fake.write_bytes(b"DICM" + bytes(300))
    out = _python(
        "import sys\n"
        "from pathlib import Path\n"
        "from peer import warm\n"
        "from peer.dicom.summary import summarize\n"
        "from peer.dicom.complete import check_study\n"
        "warm.start(('aiohttp',), hold=True)\n"
        f"files = [('a.pdf', Path({str(other)!r})), ('b.dcm', Path({str(fake)!r}))]\n"
        "s = summarize(files)\n"
        f"c = check_study(s, Path({str(tmp_path)!r}), ['fake.dcm'])\n"
        "before = 'pydicom' in sys.modules\n"
        f"d = summarize([('c.dcm', Path({str(dcm)!r}))])\n"
        "print(s['other_files'], c.status, before, d['dicom_files'], 'pydicom' in sys.modules)"
    )
    # the DICOM file's need() imported pydicom although the start is held
    assert out == "2 not-dicom False 1 True"


def test_a_held_start_imports_only_what_is_needed_until_go() -> None:
    out = _python(
        "import sys\n"
        "from peer import warm\n"
        "warm.start(('aiortc', 'pydicom', 'aiohttp'), hold=True)\n"
        "warm.need('aiohttp')\n"
        "held = [m for m in ('aiortc', 'pydicom') if m in sys.modules]\n"
        "warm.go()\n"
        "warm.need('aiortc')\n"
        "warm.need('pydicom')\n"
        "print(held, 'aiohttp' in sys.modules, 'aiortc' in sys.modules, 'pydicom' in sys.modules)"
    )
    assert out == "[] True True True"


def test_a_dropped_import_is_skipped_and_a_later_need_imports_it() -> None:
    out = _python(
        "import sys, time\n"
        "from peer import warm\n"
        "warm.start(('aiohttp', 'pydicom'), hold=True)\n"
        "warm.drop('pydicom')\n"
        "warm.go()\n"
        "warm.need('aiohttp')\n"
        "warm.need('aiortc')\n"
        "skipped = 'pydicom' not in sys.modules\n"
        "warm.need('pydicom')\n"
        "print(skipped, 'pydicom' in sys.modules, 'aiortc' in sys.modules)"
    )
    assert out == "True True True"


def test_warm_imports_in_the_background_and_need_waits_for_it() -> None:
    out = _python(
        "import asyncio, sys, threading\n"
        "from peer import warm\n"
        "warm.start(('aiohttp',))\n"
        "warm.need('aiohttp')\n"
        "a = 'aiohttp' in sys.modules\n"
        "asyncio.run(warm.ready('pydicom'))\n"
        "warm.start()  # idempotent: no second thread\n"
        "names = [t.name for t in threading.enumerate()]\n"
        "print(a, 'pydicom' in sys.modules, names.count('scanbeam-imports') <= 1)"
    )
    assert out == "True True True"


def test_ready_without_start_imports_in_a_worker_thread() -> None:
    out = _python(
        "import asyncio, sys\n"
        "from peer import warm\n"
        "asyncio.run(warm.ready('aiohttp'))\n"
        "print('aiohttp' in sys.modules)"
    )
    assert out == "True"


def test_the_scanbeam_command_exits_fast_with_its_output_and_code(tmp_path: Path) -> None:
    scanbeam = Path(sys.executable).with_name("scanbeam")
    code = f"7-{EVEN[0]}-{ODD[0]}"
    done = subprocess.run(
        [str(scanbeam), "receive", code, "--server", "http://127.0.0.1:1", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"SCANBEAM_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    lines = [json.loads(x) for x in done.stdout.splitlines()]
    assert [x["event"] for x in lines] == ["start", "error"]
    assert lines[-1]["code"] == "unreachable"
    assert done.returncode == lines[-1]["exit"] == 4
    assert "Traceback" not in done.stderr
