"""The credentials `scanbeam serve` mints work with a real coturn, and only while valid."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from signaling.ice import IceConfig, mint
from tests.netlab.lab import PUB_IP, Lab

PROBE = "tests/netlab/turnprobe.py"


def _allocate(lab: Lab, username: str, credential: str) -> dict[str, object]:
    cred = lab.tmp / f"cred-{time.monotonic_ns()}"
    cred.write_text(credential)
    out = lab.sh("a", sys.executable, PROBE, PUB_IP, "3478", username, str(cred), timeout=30)
    result: dict[str, object] = json.loads(out)
    return result


def test_coturn_accepts_fresh_credentials_and_refuses_expired_or_forged(tmp_path: Path) -> None:
    with Lab(nat_a="eim", nat_b="eim") as lab:
        secret = lab.start_coturn().read_text().strip().encode()
        config = IceConfig(turn_urls=(f"turn:{PUB_IP}:3478?transport=udp",), secret=secret)
        (fresh,) = mint(config, time.time(), "fresh")
        assert fresh.username is not None and fresh.credential is not None
        ok = _allocate(lab, fresh.username, fresh.credential)
        assert ok["ok"] is True, ok
        # a credential minted an hour and a bit ago (expiry in the past) is refused
        (expired,) = mint(config, time.time() - 3700, "old")
        assert expired.username is not None and expired.credential is not None
        old = _allocate(lab, expired.username, expired.credential)
        assert old["ok"] is False and "401" in str(old["error"]), old
        # the right format with another secret is refused
        (forged,) = mint(IceConfig(turn_urls=config.turn_urls, secret=b"guess"), time.time(), "x")
        assert forged.username is not None and forged.credential is not None
        bad = _allocate(lab, forged.username, forged.credential)
        assert bad["ok"] is False and "401" in str(bad["error"]), bad
