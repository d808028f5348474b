"""End to end, PACS bridge: real DICOM peers on loopback.

* dcmtk storescu -> `scanbeam listen` (bytes and UIDs compared), echoscu against it;
* `scanbeam push` -> dcmtk storescp (datasets compared), with and without the compressed
  syntaxes accepted (decompression only on refusal), and more than 128 contexts;
* `scanbeam push` -> Orthanc (REST statistics, SOP Instance UIDs, stored bytes);
* modality (storescu) -> listen -> send -> receive --to-pacs -> Orthanc;
* one-line errors: wrong called AE title, nothing listening, a peer that never answers.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from peer.dicom.synth import write_study

from ..conftest import Peer, Server, receive, spawn, start_send, timeout
from ..pacs_support import dataset_bytes, free_port, need, orthanc, storescp


def _dicom_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.dcm"))


def _sop(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pacs-src") / "CT_STUDY"
    write_study(root, target_bytes=300_000, series=2, rows=64, cols=64, seed=11)
    return root


@pytest.fixture(scope="module")
def compressed(study: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same instances, the axial series in JPEG-LS lossless, the scout in RLE (dcmtk)."""
    root = tmp_path_factory.mktemp("pacs-comp") / "CT_COMPRESSED"
    for src in _dicom_files(study):
        rel = src.relative_to(study)
        dst = root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        tool = "dcmcjpls" if rel.parts[0].startswith("SE001") else "dcmcrle"
        subprocess.run([need(tool), str(src), str(dst)], check=True, timeout=timeout(60))
    return root


def _run(args: list[str], limit: float = 120.0) -> Peer:
    peer = spawn(args)
    peer.finish(limit)
    return peer


def _one_line_error(peer: Peer, starts: str) -> None:
    assert "Traceback" not in peer.stderr and "Traceback" not in peer.stdout
    lines = [ln for ln in peer.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, peer.stderr
    assert lines[0].startswith("scanbeam: error: " + starts), lines[0]


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[Peer, int, Path]]:
    out = tmp_path / "incoming"
    peer = spawn(["listen", "--port", "0", "--aet", "SCANBEAM", "-o", str(out), "--json"])
    ready = peer.next_event("listening")
    assert ready["host"] == "127.0.0.1" and ready["aet"] == "SCANBEAM"
    yield peer, int(ready["port"]), out
    if peer.proc.poll() is None:
        peer.proc.send_signal(signal.SIGINT)
        peer.finish(30)


def _storescu(port: int, *paths: Path, options: tuple[str, ...] = ()) -> None:
    r = subprocess.run(
        [
            need("storescu"),
            *("-aet", "MODALITY", "-aec", "SCANBEAM", "+sd", "+r", "+sp", "*.dcm"),
            *options,
            *("127.0.0.1", str(port)),
            *map(str, paths),
        ],
        capture_output=True,
        text=True,
        timeout=timeout(120),
    )
    assert r.returncode == 0, r.stderr


# --------------------------------------------------------------------------- listen


def test_storescu_to_listen_groups_the_study_bit_exact(
    listener: tuple[Peer, int, Path], study: Path, compressed: Path
) -> None:
    peer, port, out = listener
    _storescu(port, study)
    ev = peer.next_event("association")
    originals = _dicom_files(study)
    assert ev["calling_aet"] == "MODALITY" and ev["end"] == "released"
    assert ev["instances"] == len(originals) and ev["failed"] == 0
    uid = str(dcmread(originals[0], stop_before_pixels=True).StudyInstanceUID)
    (st,) = ev["studies"]
    assert Path(st["dir"]) == out.resolve() / uid
    assert st["instances"] == len(originals)
    for src in originals:
        ds = dcmread(src, stop_before_pixels=True)
        got = out / uid / str(ds.SeriesInstanceUID) / f"{ds.SOPInstanceUID}.dcm"
        assert dataset_bytes(got) == dataset_bytes(src), src
        meta = dcmread(got, stop_before_pixels=True).file_meta
        assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert meta.TransferSyntaxUID == ExplicitVRLittleEndian
    # compressed instances are accepted in their own syntax and stored as they came
    # (storescu proposes JPEG-LS with -xt, RLE with -xr, each with the uncompressed ones)
    jls = [p for p in _dicom_files(compressed) if p.parent.name.startswith("SE001")]
    _storescu(port, compressed / jls[0].parent.name, options=("-xt",))
    _storescu(port, compressed / "SE002_Scout", options=("-xr",))
    assert peer.next_event("association")["instances"] == len(jls)
    ev = peer.next_event("association")
    assert ev["instances"] == len(originals) - len(jls)
    assert ev["conflicts"] == ev["instances"]  # same UIDs, other bytes: kept beside
    for src in _dicom_files(compressed):
        ds = dcmread(src, stop_before_pixels=True)
        got = out / uid / str(ds.SeriesInstanceUID) / f"{ds.SOPInstanceUID}~2.dcm"
        assert dataset_bytes(got) == dataset_bytes(src), src
        assert dcmread(got).file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
    # C-ECHO: ours answers, a wrong called AE title is rejected
    echo = [need("echoscu"), "-aet", "MODALITY", "127.0.0.1", str(port)]
    assert subprocess.run([*echo, "-aec", "SCANBEAM"], capture_output=True).returncode == 0
    assert peer.next_event("association")["instances"] == 0
    assert subprocess.run([*echo, "-aec", "OTHER"], capture_output=True).returncode != 0
    rejected = peer.next_event("rejected")
    assert rejected["calling_aet"] == "MODALITY" and rejected["called_aet"] == "OTHER"
    # Ctrl-C: a clean stop
    peer.proc.send_signal(signal.SIGINT)
    assert peer.finish(30) == 0
    assert peer.event("stopped")
    assert "Traceback" not in peer.stderr
    assert list((out / ".scanbeam-incoming").iterdir()) == []


def test_listen_never_uses_peer_uids_as_paths(listener: tuple[Peer, int, Path]) -> None:
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

    peer, port, out = listener
    ds = Dataset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the invalid UIDs are the point
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID = "../../../escaped"
        ds.SeriesInstanceUID = "/tmp/abs"
        ds.PatientName = "EVIL^PEER"
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ae = AE(ae_title="EVIL")
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", port, ae_title="SCANBEAM")
        assert assoc.is_established
        status = assoc.send_c_store(ds)
        assoc.release()
    assert status.Status == 0x0000
    ev = peer.next_event("association")
    assert ev["instances"] == 1
    (placed,) = [p for p in out.rglob("*.dcm")]
    assert placed.resolve().is_relative_to(out.resolve())
    assert placed.parent.parent.parent == out
    assert placed.parent.parent.name.startswith("x") and placed.parent.name.startswith("x")
    assert not (out.parent / "escaped").exists()


# --------------------------------------------------------------------------- push


def test_push_to_storescp_sends_the_original_datasets(study: Path, tmp_path: Path) -> None:
    with storescp(tmp_path) as scp:
        peer = _run(["push", str(study), "--to-pacs", f"127.0.0.1:{scp.port}:{scp.aet}", "--json"])
    assert peer.proc.returncode == 0, peer.stderr
    done = peer.event("pacs-done")
    originals = _dicom_files(study)
    assert done["stored"] == len(originals) and done["failed"] == 0
    assert done["skipped"] == 1 and done["decompressed"] == 0 and done["associations"] == 1
    results = [e for e in peer.events if e["event"] == "pacs-instance"]
    assert {r["mode"] for r in results} == {"as-is"}
    assert {r["status"] for r in results} == {"0x0000"}
    for src in originals:
        got = scp.out / f"CT.{_sop(src)}"
        assert dataset_bytes(got) == dataset_bytes(src), src


def test_push_decompresses_only_what_the_pacs_refuses(
    study: Path, compressed: Path, tmp_path: Path
) -> None:
    originals = {_sop(p): p for p in _dicom_files(study)}
    # storescp without options accepts uncompressed syntaxes only
    with storescp(tmp_path, aet="PLAINSCP") as scp:
        peer = _run(["push", str(compressed), "--to-pacs", f"127.0.0.1:{scp.port}:PLAINSCP"])
        peer_json = _run(
            ["push", str(compressed), "--to-pacs", f"127.0.0.1:{scp.port}:PLAINSCP", "--json"]
        )
    assert peer.proc.returncode == 0, peer.stderr
    assert "[decompressed]" in peer.stdout
    assert (
        f"stored {len(originals)} of {len(originals)} instances ({len(originals)} decompressed "
        "to Explicit VR Little Endian because the PACS refused their transfer syntax)"
    ) in peer.stdout
    modes = {e["mode"] for e in peer_json.events if e["event"] == "pacs-instance"}
    assert modes == {"decompressed"}
    for sop, src in originals.items():
        got = dcmread(scp.out / f"CT.{sop}")
        assert got.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert got.PixelData == dcmread(src).PixelData  # lossless: the very same pixels
    # storescp +xa accepts the compressed syntaxes: the files go as they are
    with storescp(tmp_path, "+xa", aet="ALLSCP") as scp:
        peer = _run(
            ["push", str(compressed), "--to-pacs", f"127.0.0.1:{scp.port}:ALLSCP", "--json"]
        )
    assert peer.proc.returncode == 0, peer.stderr
    assert {e["mode"] for e in peer.events if e["event"] == "pacs-instance"} == {"as-is"}
    for src in _dicom_files(compressed):
        assert dataset_bytes(scp.out / f"CT.{_sop(src)}") == dataset_bytes(src)


def test_push_without_a_permissive_decoder_fails_that_instance(study: Path, tmp_path: Path) -> None:
    src = _dicom_files(study)[0]
    jpeg = tmp_path / "in" / "extended.dcm"
    jpeg.parent.mkdir()
    # 12-bit JPEG Extended: only the GPL libjpeg plugin decodes it (gdcm and Pillow refuse)
    subprocess.run([need("dcmcjpeg"), "+ee", str(src), str(jpeg)], check=True)
    shutil.copy(_dicom_files(study)[1], tmp_path / "in" / "plain.dcm")
    with storescp(tmp_path) as scp:
        peer = _run(["push", str(tmp_path / "in"), "--to-pacs", f"127.0.0.1:{scp.port}:DCMSCP"])
    assert peer.proc.returncode == 10
    assert "FAILED " in peer.stdout and "could not be decompressed" in peer.stdout
    assert "stored 1 of 2 instances; 1 FAILED" in peer.stdout
    _one_line_error(peer, "1 of 2 instances were not stored in the PACS")
    assert (scp.out / f"CT.{_sop(_dicom_files(study)[1])}").exists()


def test_push_more_than_128_contexts_uses_several_associations(tmp_path: Path) -> None:
    from pynetdicom import AllStoragePresentationContexts

    classes = [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts][:70]
    src = tmp_path / "many"
    src.mkdir()
    for i, sop_class in enumerate(classes):
        ds = Dataset()
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
        ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.8.498.1.{i}"
        ds.PatientID = "P1"
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.save_as(src / f"{i:03d}.dcm", enforce_file_format=True)
    with storescp(tmp_path, "-pm") as scp:
        peer = _run(["push", str(src), "--to-pacs", f"127.0.0.1:{scp.port}:DCMSCP", "--json"])
    assert peer.proc.returncode == 0, peer.stderr
    done = peer.event("pacs-done")
    assert done["stored"] == 70 and done["associations"] == 2  # 140 contexts > 128
    assert len(list(scp.out.iterdir())) == 70


def test_push_to_orthanc_same_instances_and_bytes(study: Path, tmp_path: Path) -> None:
    with orthanc(tmp_path) as pacs:
        peer = _run(["push", str(study), "--to-pacs", pacs.target, "--json"])
        assert peer.proc.returncode == 0, peer.stderr
        originals = {_sop(p): p for p in _dicom_files(study)}
        assert pacs.counts() == (1, 2, len(originals))
        stored = pacs.instances()
        assert set(stored) == set(originals)
        for sop, oid in stored.items():
            got = tmp_path / "got.dcm"
            got.write_bytes(pacs.file(oid))
            assert dataset_bytes(got) == dataset_bytes(originals[sop])


def test_modality_to_scanbeam_to_scanbeam_to_orthanc(
    server: Server, listener: tuple[Peer, int, Path], study: Path, tmp_path: Path
) -> None:
    lpeer, port, _incoming = listener
    _storescu(port, study)
    ev = lpeer.next_event("association")
    study_dir = Path(ev["studies"][0]["dir"])
    with orthanc(tmp_path) as pacs:
        sender, code = start_send(server, [study_dir])
        rcv = receive(server, code, tmp_path / "out", "--yes", "--to-pacs", pacs.target)
        assert rcv.finish() == 0, rcv.stderr
        assert sender.finish() == 0, sender.stderr
        assert rcv.event("done")["completeness"]["status"] == "complete"
        originals = {_sop(p): p for p in _dicom_files(study)}
        done = rcv.event("pacs-done")
        assert done["stored"] == len(originals) and done["failed"] == 0
        assert pacs.counts() == (1, 2, len(originals))
        stored = pacs.instances()
        assert set(stored) == set(originals)
        for sop, oid in stored.items():
            got = tmp_path / "got.dcm"
            got.write_bytes(pacs.file(oid))
            assert dataset_bytes(got) == dataset_bytes(originals[sop])


# --------------------------------------------------------------------------- errors


def test_wrong_called_aet_is_one_line(study: Path, tmp_path: Path) -> None:
    with orthanc(tmp_path) as pacs:
        peer = _run(["push", str(study), "--to-pacs", f"127.0.0.1:{pacs.dicom_port}:NOTORTHANC"])
        assert pacs.counts() == (0, 0, 0)
    assert peer.proc.returncode == 10
    _one_line_error(
        peer,
        f"The PACS at 127.0.0.1:{pacs.dicom_port} (NOTORTHANC) rejected the association "
        "(Called AE title not recognised): check the called AE title",
    )


def test_nothing_listening_is_one_line(study: Path) -> None:
    port = free_port()
    peer = _run(["push", str(study), "--to-pacs", f"127.0.0.1:{port}"])
    assert peer.proc.returncode == 4
    _one_line_error(peer, f"Nothing is listening at 127.0.0.1:{port} (connection refused)")
    # receive --to-pacs checks the PACS before it pairs (no server is even needed)
    peer = _run(["receive", "7-aardvark-adroitness", "--yes", "--to-pacs", f"127.0.0.1:{port}:X"])
    assert peer.proc.returncode == 4
    _one_line_error(peer, f"Nothing is listening at 127.0.0.1:{port}")


def test_peer_that_never_answers_times_out(study: Path) -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        silent.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(silent.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept)
    t.start()
    try:
        port = silent.getsockname()[1]
        peer = _run(["push", str(study), "--to-pacs", f"127.0.0.1:{port}", "--pacs-timeout", "1"])
    finally:
        stop.set()
        t.join()
        for s in accepted:
            s.close()
        silent.close()
    assert peer.proc.returncode == 4
    _one_line_error(peer, f"The PACS at 127.0.0.1:{port} (ANY-SCP) did not complete")


@contextlib.contextmanager
def _pynetdicom_scp(on_store: Callable[[Any], int], syntaxes: list[str]) -> Iterator[int]:
    """A real pynetdicom storage SCP in the test process (only ``syntaxes`` accepted)."""
    from pynetdicom import AE, AllStoragePresentationContexts, evt

    ae = AE(ae_title="PYSCP")
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(str(cx.abstract_syntax), syntaxes)
    server = ae.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    assert server is not None
    try:
        yield int(server.server_address[1])
    finally:
        ae.shutdown()


def test_push_reports_warning_and_failure_statuses(compressed: Path) -> None:
    """The SCP accepts Explicit VR Little Endian only, answers 0xB000 (coercion) to the first
    instance, 0xA700 (out of resources) with a comment to the second, success otherwise."""
    seen: list[tuple[str, str]] = []

    def on_store(event: Any) -> Any:
        ds = event.dataset
        seen.append((str(ds.SOPInstanceUID), str(event.context.transfer_syntax)))
        if len(seen) == 1:
            return 0xB000
        if len(seen) == 2:
            status = Dataset()
            status.Status = 0xA700
            status.ErrorComment = "disk\nfull"
            return status
        return 0x0000

    files = _dicom_files(compressed)
    with _pynetdicom_scp(on_store, [ExplicitVRLittleEndian]) as port:
        peer = _run(["push", str(compressed), "--to-pacs", f"127.0.0.1:{port}:PYSCP", "--json"])
    assert peer.proc.returncode == 10
    results = [e for e in peer.events if e["event"] == "pacs-instance"]
    assert [r["outcome"] for r in results[:3]] == ["warning", "failed", "stored"]
    assert results[0]["status"] == "0xB000" and "Coercion" in results[0]["detail"]
    assert results[1]["status"] == "0xA700" and results[1]["detail"].endswith("disk full")
    assert {r["mode"] for r in results} == {"decompressed"}
    assert {ts for _, ts in seen} == {ExplicitVRLittleEndian}
    assert sorted(uid for uid, _ in seen) == sorted(_sop(p) for p in files)  # same UIDs
    done = peer.event("pacs-done")
    assert (done["stored"], done["warnings"], done["failed"]) == (len(files) - 2, 1, 1)
    assert peer.event("error")["code"] == "pacs"


def test_push_when_the_pacs_stops_answering(study: Path) -> None:
    release = threading.Event()

    def on_store(event: Any) -> int:
        release.wait(timeout(20))  # never answers within --pacs-timeout
        return 0x0000

    with _pynetdicom_scp(on_store, [ExplicitVRLittleEndian]) as port:
        try:
            target = f"127.0.0.1:{port}:PYSCP"
            peer = _run(["push", str(study), "--to-pacs", target, "--pacs-timeout", "1", "--json"])
        finally:
            release.set()
    assert peer.proc.returncode == 10
    results = [e for e in peer.events if e["event"] == "pacs-instance"]
    assert results[0]["outcome"] == "failed"
    assert results[0]["detail"] == "no answer from the PACS (timeout or connection lost)"
    assert {r["detail"] for r in results[1:]} == {"association lost"}
    assert len(results) == len(_dicom_files(study))
