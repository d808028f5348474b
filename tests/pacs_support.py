"""Real DICOM peers for the PACS bridge tests: dcmtk's storescp and an Orthanc server, each
started on loopback with free ports and a temporary folder. Installed by `make deps-pacs`;
a missing tool fails the test loudly (never a skip)."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .conftest import timeout

__all__ = [
    "Orthanc",
    "StoreScp",
    "dataset_bytes",
    "free_port",
    "need",
    "orthanc",
    "storescp",
    "wait_port",
]


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise AssertionError(f"{tool} is not installed: run `make deps-pacs` (dcmtk, orthanc)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(port: int, proc: subprocess.Popen[bytes], limit: float = 30.0) -> None:
    deadline = time.monotonic() + timeout(limit)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on port {port} after {limit} s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout(15))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def dataset_bytes(path: Path) -> bytes:
    """The bytes of a Part 10 file after its file meta (the dataset as encoded)."""
    data = path.read_bytes()
    assert data[128:132] == b"DICM", path
    assert data[132:136] == b"\x02\x00\x00\x00", f"{path}: no (0002,0000) group length"
    group_len = int.from_bytes(data[140:144], "little")
    return data[144 + group_len :]


@dataclass
class StoreScp:
    port: int
    aet: str
    out: Path
    proc: subprocess.Popen[bytes]


@contextlib.contextmanager
def storescp(tmp: Path, *options: str, aet: str = "DCMSCP") -> Iterator[StoreScp]:
    """dcmtk storescp on loopback; without options it accepts uncompressed syntaxes only."""
    exe = need("storescp")
    out = tmp / f"storescp-{aet}"
    out.mkdir()
    port = free_port()
    log = open(tmp / f"storescp-{aet}.log", "wb")
    proc = subprocess.Popen(
        [exe, "-aet", aet, "-od", str(out), *options, str(port)], stdout=log, stderr=log
    )
    try:
        wait_port(port, proc)
        yield StoreScp(port, aet, out, proc)
    finally:
        _stop(proc)
        log.close()


@dataclass
class Orthanc:
    aet: str
    dicom_port: int
    http_port: int
    proc: subprocess.Popen[bytes]
    root: Path

    def get(self, path: str) -> Any:
        url = f"http://127.0.0.1:{self.http_port}{path}"
        with urllib.request.urlopen(url, timeout=timeout(30)) as rsp:
            return json.loads(rsp.read())

    def post(self, path: str, body: Any) -> Any:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}",
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=timeout(30)) as rsp:
            return json.loads(rsp.read())

    def file(self, instance_id: str) -> bytes:
        url = f"http://127.0.0.1:{self.http_port}/instances/{instance_id}/file"
        with urllib.request.urlopen(url, timeout=timeout(30)) as rsp:
            data: bytes = rsp.read()
            return data

    def counts(self) -> tuple[int, int, int]:
        s = self.get("/statistics")
        return s["CountStudies"], s["CountSeries"], s["CountInstances"]

    def instances(self) -> dict[str, str]:
        """SOPInstanceUID -> Orthanc instance id."""
        found = self.post("/tools/find", {"Level": "Instance", "Query": {}, "Expand": True})
        return {i["MainDicomTags"]["SOPInstanceUID"]: i["ID"] for i in found}

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.dicom_port}:{self.aet}"


@contextlib.contextmanager
def orthanc(tmp: Path, aet: str = "ORTHANCTEST", **extra: Any) -> Iterator[Orthanc]:
    """Orthanc (Debian package) with a temporary configuration: loopback HTTP without
    authentication, no plugins, strict called AE title, any calling AE title may store."""
    exe = need("Orthanc")
    root = tmp / f"orthanc-{aet}"
    (root / "storage").mkdir(parents=True)
    (root / "index").mkdir()
    dicom_port, http_port = free_port(), free_port()
    config = {
        "Name": "scanbeam-test",
        "StorageDirectory": str(root / "storage"),
        "IndexDirectory": str(root / "index"),
        "Plugins": [],
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomServerEnabled": True,
        "DicomAet": aet,
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": True,
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": True,
        "DicomModalities": {},
        "StorageCompression": False,
        "HttpsVerifyPeers": False,
        **extra,
    }
    cfg = root / "orthanc.json"
    cfg.write_text(json.dumps(config, indent=2))
    log = open(root / "orthanc.log", "wb")
    proc = subprocess.Popen([exe, str(cfg)], stdout=log, stderr=log, cwd=root)
    server = Orthanc(aet, dicom_port, http_port, proc, root)
    try:
        wait_port(http_port, proc)
        wait_port(dicom_port, proc)
        deadline = time.monotonic() + timeout(30)
        while True:
            try:
                assert server.get("/system")["DicomAet"] == aet
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield server
    finally:
        _stop(proc)
        log.close()
