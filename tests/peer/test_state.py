from __future__ import annotations

import argparse
import os
import stat
from pathlib import Path

import pytest

from peer.cli import _duration
from peer.errors import LocalFileError
from peer.state import Disclosure, DropRecord, LocalState, digest_of, study_uids


def _entry(**kw: object) -> Disclosure:
    base: dict[str, object] = dict(
        time=1_700_000_000.0,
        how="relay",
        to="link abc",
        outcome="uploaded",
        files=3,
        bytes=100,
        study_uids=["1.2.3"],
        sha256_list_digest=digest_of(["aa", "bb"]),
        expires=1_700_600_000.0,
        server="http://h",
    )
    base.update(kw)
    return Disclosure(**base)  # type: ignore[arg-type]


def test_disclosure_log_appends_and_is_private(tmp_path: Path) -> None:
    state = LocalState(tmp_path / "home")
    state.record(_entry())
    state.record(_entry(how="direct", to="code 12", outcome="delivered"))
    rows = state.disclosures()
    assert [r["how"] for r in rows] == ["relay", "direct"]
    assert stat.S_IMODE(os.stat(state.log_path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "home").st_mode) == 0o700
    csv_text = state.as_csv(rows)
    assert csv_text.splitlines()[1].startswith(
        "2023-11-14T22:13:20Z,relay,link abc,uploaded,3,100,1.2.3,"
    )


def test_broken_lines_are_skipped(tmp_path: Path) -> None:
    state = LocalState(tmp_path)
    state.record(_entry())
    with open(state.log_path, "a") as fh:
        fh.write("{broken\n")
    state.record(_entry(outcome="x"))
    assert [r["outcome"] for r in state.disclosures()] == ["uploaded", "x"]


def test_digest_and_study_uids() -> None:
    assert digest_of(["a", "b"]) != digest_of(["b", "a"])
    assert study_uids({"studies": [{"study_uid": "1.2"}, {"x": 1}]}) == ["1.2"]
    assert study_uids({"studies": "nope"}) == []


def test_drop_records_round_trip_and_claims(tmp_path: Path) -> None:
    state = LocalState(tmp_path)
    rec = DropRecord(
        id="A" * 22,
        server="http://h",
        owner_token="t",
        link_secret="s",
        password=None,
        created=1.0,
        expires=2.0,
        max_downloads=1,
        files=1,
        bytes=2,
        sources=["/x"],
        manifest="00",
    )
    state.save_drop(rec)
    assert state.load_drop("A" * 22) == rec
    assert stat.S_IMODE(os.stat(tmp_path / "drops" / f"{'A' * 22}.json").st_mode) == 0o600
    assert rec.link() == f"http://h/d/{'A' * 22}#s"
    assert [d.id for d in state.drops()] == ["A" * 22]
    state.save_claim("A" * 22, "claim-token")
    assert state.load_claim("A" * 22) == "claim-token"
    state.forget_claim("A" * 22)
    assert state.load_claim("A" * 22) is None
    with pytest.raises(LocalFileError):
        state.load_drop("../../etc/passwd")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90.0), ("30s", 30.0), ("2m", 120.0), ("12h", 43200.0), ("7d", 604800.0)],
)
def test_durations(text: str, seconds: float) -> None:
    assert _duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "-1m", "0", "5y"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        _duration(text)
