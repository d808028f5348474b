"""ICE servers handed out by the signaling server: TURN REST credentials (INTERFACES.md 2).

The credential format is checked against an independent HMAC computation here; that coturn
accepts it is checked for real in tests/net (TURN across a symmetric NAT).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from signaling import messages
from signaling.client import SignalingClient
from signaling.ice import IceConfig, IceServer, mint, parse_ice
from signaling.messages import Allocated, Joined, MalformedFrame, PeerJoined, encode, parse_server
from signaling.rooms import Hub, SendFrame
from signaling.server import ice_config, start_server
from signaling.settings import ServerSettings

ROOT = Path(__file__).resolve().parents[2]
SECRET = b"s3cret-shared-with-coturn"


def config(**kwargs: Any) -> IceConfig:
    base: dict[str, Any] = {
        "stun_urls": ("stun:203.0.113.10:3478",),
        "turn_urls": ("turn:203.0.113.10:3478?transport=udp",),
        "secret": SECRET,
        "ttl": 3600,
    }
    return IceConfig(**{**base, **kwargs})


def test_mint_follows_the_turn_rest_api() -> None:
    (server,) = mint(config(), 1_700_000_000.7, "tok123")
    assert server.urls == ("stun:203.0.113.10:3478", "turn:203.0.113.10:3478?transport=udp")
    assert server.username == "1700003600:tok123"
    expected = hmac.new(SECRET, b"1700003600:tok123", hashlib.sha1).digest()
    assert server.credential is not None
    assert base64.b64decode(server.credential) == expected
    # another secret, another credential; another token, another username
    (other,) = mint(config(secret=b"x"), 1_700_000_000, "tok123")
    assert other.credential != server.credential


def test_mint_without_turn_hands_out_stun_only_and_nothing_when_unconfigured() -> None:
    assert mint(config(turn_urls=(), secret=b""), 0, "t") == (
        IceServer(("stun:203.0.113.10:3478",)),
    )
    assert mint(IceConfig(), 0, "t") == ()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"secret": b""}, "secret"),
        ({"turn_urls": ("http://x",)}, "not a STUN/TURN URL"),
        ({"stun_urls": ("stun:",)}, "without a host"),
        ({"ttl": 10}, "lifetime"),
    ],
)
def test_bad_config_is_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        config(**kwargs)


def test_config_repr_hides_the_secret() -> None:
    assert SECRET.decode() not in repr(config())


def test_frames_carry_ice_and_omit_the_key_when_empty() -> None:
    servers = mint(config(), 1000.0, "abc")
    text = encode(Allocated("12", 600, servers))
    obj = json.loads(text)
    assert obj["ice"] == [
        {"urls": list(servers[0].urls), "username": "4600:abc", "credential": servers[0].credential}
    ]
    assert parse_server(text) == Allocated("12", 600, servers)
    assert parse_server(encode(Joined(servers))) == Joined(servers)
    assert "ice" not in json.loads(encode(Allocated("12", 600)))
    assert encode(Joined()) == '{"v":1,"type":"joined"}'


@pytest.mark.parametrize(
    "ice",
    [
        "stun:x",
        [1],
        [{"urls": []}],
        [{"urls": ["http://x"]}],
        [{"urls": ["turn:x"], "username": 5}],
        [{"urls": ["stun:x"]}] * 9,
    ],
)
def test_malformed_ice_is_a_malformed_frame(ice: object) -> None:
    frame = json.dumps({"v": 1, "type": "joined", "ice": ice})
    with pytest.raises(MalformedFrame):
        parse_server(frame)


def test_parse_ice_accepts_a_single_url_string() -> None:
    assert parse_ice([{"urls": "stun:h:1"}]) == (IceServer(("stun:h:1",)),)


def test_hub_mints_once_per_room_and_gives_both_members_the_same() -> None:
    calls: list[int] = []

    def minter() -> tuple[IceServer, ...]:
        calls.append(1)
        return mint(config(), 1000.0 + len(calls), f"t{len(calls)}")

    hub = Hub(randbelow=lambda n: 7 % n, ice=minter)
    a, b = hub.connect("10.0.0.1"), hub.connect("10.0.0.2")
    (allocated,) = hub.receive(a, messages.encode(messages.Allocate()), 0.0)
    assert isinstance(allocated, SendFrame) and isinstance(allocated.message, Allocated)
    handed = allocated.message.ice
    assert handed and handed[0].username == "4601:t1"
    join = hub.receive(b, messages.encode(messages.Join(allocated.message.nameplate)), 1.0)
    assert join == [SendFrame(b, Joined(handed)), SendFrame(a, PeerJoined())]
    assert len(calls) == 1
    # another room, another credential
    c = hub.connect("10.0.0.3")
    (again,) = hub.receive(c, messages.encode(messages.Allocate()), 2.0)
    assert isinstance(again, SendFrame) and isinstance(again.message, Allocated)
    assert again.message.ice[0].username == "4602:t2"


def test_server_settings_need_a_readable_nonempty_secret(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="turn_secret_file"):
        ServerSettings(turn_url=("turn:h:3478",))
    missing = ServerSettings(turn_url=("turn:h:3478",), turn_secret_file=tmp_path / "nope")
    with pytest.raises(ValueError, match="cannot read"):
        ice_config(missing)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        ice_config(ServerSettings(turn_url=("turn:h:3478",), turn_secret_file=empty))
    env = {"SCANBEAM_TURN_URL": "turn:h:3478,turn:h:3479", "SCANBEAM_TURN_SECRET_FILE": "/x"}
    loaded = ServerSettings.load(env, {})
    assert loaded.turn_url == ("turn:h:3478", "turn:h:3479")
    assert loaded.turn_secret_file == Path("/x")


async def test_clients_receive_the_minted_servers(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("topsecret\n")
    settings = ServerSettings(
        port=0,
        stun_url=("stun:127.0.0.1:3478",),
        turn_url=("turn:127.0.0.1:3478?transport=udp",),
        turn_secret_file=secret,
    )
    async with await start_server(settings) as srv:
        a = await SignalingClient.connect(srv.url)
        b = await SignalingClient.connect(srv.url)
        try:
            nameplate = await a.allocate()
            await b.join(nameplate)
            assert a.ice_servers == b.ice_servers
            (server,) = a.ice_servers
            assert server.username is not None and server.credential is not None
            expiry = int(server.username.split(":")[0])
            # valid for the nameplate wait (600 s) plus the TTL (3600 s), not longer
            assert time.time() + 4100 < expiry <= time.time() + 4201
            digest = hmac.new(b"topsecret", server.username.encode(), hashlib.sha1).digest()
            assert hmac.compare_digest(base64.b64decode(server.credential), digest)
        finally:
            await a.close()
            await b.close()
    async with await start_server(ServerSettings(port=0)) as plain:
        c = await SignalingClient.connect(plain.url)
        try:
            await c.allocate()
            assert c.ice_servers == ()
        finally:
            await c.close()


def test_serve_refuses_an_unreadable_secret_with_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            *(sys.executable, "-m", "peer.cli", "serve", "--port", "0", "--data", str(tmp_path)),
            *("--turn-url", "turn:127.0.0.1:3478", "--turn-secret-file", str(tmp_path / "no")),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot read the TURN secret file" in lines[0], done.stderr
    assert "Traceback" not in done.stderr
