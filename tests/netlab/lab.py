"""The ScanBeam test network: hosts in network namespaces, NAT routers, a userspace WAN.

Topology (docs/netlab.md has the diagram and the limits)::

    a (10.1.0.2) ── nat_a ──┐                       ┌── pub (203.0.113.10): scanbeam serve, coturn
                            ├── wan (router + wanemu)┤
    b (10.2.0.2) ── nat_b ──┘                       (every packet between segments passes wanemu)

Use it as a context manager (cleanup also on failure, and at interpreter exit)::

    with Lab(nat_a="eim", nat_b="symmetric", wan=Wan(rtt_ms=40, rate_mbit=100)) as lab:
        lab.start_coturn()
        server_url = lab.start_serve(turn=True)
        proc = lab.popen("a", [lab.scanbeam, "send", ...])

Needs root, ``ip``, ``nft`` and the compiled ``tests/netlab/build/wanemu`` (``make deps-net``);
anything missing raises :class:`LabError` at once (no silent skip).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

__all__ = ["HOSTS", "PREFIX", "WANEMU", "Lab", "LabError", "Wan", "sweep_stale"]

ROOT = Path(__file__).resolve().parents[2]
WANEMU = Path(__file__).resolve().parent / "build" / "wanemu"
PREFIX = "sbnl-"
"""Every namespace this module creates is named ``sbnl-<pid>-<n>-<host>``."""

Nat = Literal["eim", "symmetric", "none"]
HOSTS = ("a", "b", "pub", "nat_a", "nat_b", "wan")

# addresses: public side of each segment, and the two private LANs
PUB_NET, PUB_GW, PUB_IP = "203.0.113", "203.0.113.1", "203.0.113.10"
NAT_A_OUT, NAT_B_OUT = "198.51.100", "198.18.0"
LAN_A, LAN_B = "10.1.0", "10.2.0"


class LabError(RuntimeError):
    """The test network cannot be built or a command in it failed."""


@dataclass(frozen=True, slots=True)
class Wan:
    """Link conditions applied by wanemu to every packet crossing between segments.

    ``rtt_ms``: round-trip time added between any two segments (each direction gets half).
    ``jitter_ms``: uniform ± jitter on each one-way delay (FIFO: never reorders).
    ``loss``: probability (0..1) that a packet is dropped, applied to each packet in each
    direction. ``rate_mbit``: egress rate into each segment (None = unlimited).
    ``queue_bytes``: backlog bound per egress (tail drop); None = one bandwidth-delay product,
    at least 64 KiB.
    """

    rtt_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0
    rate_mbit: float | None = None
    queue_bytes: int | None = None

    def params_line(self) -> str:
        rate = 0 if self.rate_mbit is None else int(self.rate_mbit * 1_000_000)
        if self.queue_bytes is not None:
            queue = self.queue_bytes
        elif rate:
            queue = max(64 * 1024, int(rate / 8 * max(self.rtt_ms, 1.0) / 1000))
        else:
            queue = 0
        return (
            f"{int(self.rtt_ms * 500)} {int(self.jitter_ms * 1000)} "
            f"{round(self.loss * 1_000_000)} {rate} {queue}\n"
        )


_LIVE: list[Lab] = []
_COUNTER = iter(range(1, 1 << 30))


def _run(argv: Sequence[str], *, check: bool = True, timeout: float = 30.0) -> str:
    try:
        done = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError as exc:
        raise LabError(f"{argv[0]} is not installed (run `make deps-net`)") from exc
    if check and done.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def sweep_stale() -> list[str]:
    """Delete namespaces (and temporary folders) of runs whose creating process is gone."""
    removed = []
    for line in _run(["ip", "netns", "list"]).splitlines():
        name = line.split()[0] if line.strip() else ""
        if not name.startswith(PREFIX):
            continue
        try:
            pid = int(name[len(PREFIX) :].split("-", 1)[0])
        except ValueError:
            continue
        if pid != os.getpid() and not Path(f"/proc/{pid}").exists():
            _kill_ns_processes(name)
            _run(["ip", "netns", "del", name], check=False)
            removed.append(name)
    for folder in Path(tempfile.gettempdir()).glob(f"{PREFIX}*"):
        pid_text = folder.name[len(PREFIX) :].split("-", 1)[0]
        if pid_text.isdigit() and not Path(f"/proc/{pid_text}").exists():
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(str(folder))
    return removed


def _kill_ns_processes(ns: str) -> None:
    for pid in _run(["ip", "netns", "pids", ns], check=False).split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def check_requirements() -> None:
    """Raise LabError naming what is missing."""
    if os.geteuid() != 0:
        raise LabError("the test network needs root (network namespaces)")
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            raise LabError(f"{tool} is not installed (run `make deps-net`)")
    if not os.access(WANEMU, os.X_OK):
        raise LabError(f"{WANEMU} is not built (run `make deps-net`)")
    if not Path("/dev/net/tun").exists():
        raise LabError("/dev/net/tun is missing: no TUN support")


@dataclass
class Lab:
    """One test network. Build with ``with Lab(...) as lab``; everything is removed on exit."""

    nat_a: Nat = "eim"
    nat_b: Nat = "eim"
    wan: Wan = field(default_factory=Wan)
    seed: int = 1
    ns: dict[str, str] = field(default_factory=dict, init=False)
    tmp: Path = field(default_factory=Path, init=False)
    _procs: list[subprocess.Popen[str]] = field(default_factory=list, init=False)
    _emu: subprocess.Popen[str] | None = field(default=None, init=False)
    _closed: bool = field(default=False, init=False)

    # -- life ------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.build()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def build(self) -> None:
        check_requirements()
        sweep_stale()
        run_id = f"{PREFIX}{os.getpid()}-{next(_COUNTER)}"
        self.ns = {h: f"{run_id}-{h}" for h in HOSTS}
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{run_id}-"))
        _LIVE.append(self)
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop every process started here, delete the namespaces. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for proc in [*self._procs, *([self._emu] if self._emu else [])]:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for proc in [*self._procs, *([self._emu] if self._emu else [])]:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        for proc in [*self._procs, *([self._emu] if self._emu else [])]:
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()
        for name in self.ns.values():
            _kill_ns_processes(name)
            _run(["ip", "netns", "del", name], check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)
        with contextlib.suppress(ValueError):
            _LIVE.remove(self)

    # -- building ---------------------------------------------------------------------------

    def sh(self, host: str, *argv: str, check: bool = True, timeout: float = 30.0) -> str:
        """Run a command inside ``host``'s namespace; its stdout."""
        return _run(["ip", "netns", "exec", self.ns[host], *argv], check=check, timeout=timeout)

    def _veth(self, h1: str, if1: str, a1: str, h2: str, if2: str, a2: str) -> None:
        n1, n2 = self.ns[h1], self.ns[h2]
        _run(["ip", "-n", n1, "link", "add", if1, "type", "veth", "peer", "name", if2, "netns", n2])
        for ns, ifname, addr in ((n1, if1, a1), (n2, if2, a2)):
            _run(["ip", "-n", ns, "addr", "add", addr, "dev", ifname])
            _run(["ip", "-n", ns, "link", "set", ifname, "up"])

    def _build(self) -> None:
        for name in self.ns.values():
            _run(["ip", "netns", "add", name])
            _run(["ip", "-n", name, "link", "set", "lo", "up"])
        for router in ("wan", "nat_a", "nat_b"):
            self.sh(router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            self.sh(router, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0")
            self.sh(router, "sysctl", "-qw", "net.ipv4.conf.default.rp_filter=0")
        self._veth("wan", "to_a", f"{NAT_A_OUT}.1/24", "nat_a", "wan0", f"{NAT_A_OUT}.2/24")
        self._veth("wan", "to_b", f"{NAT_B_OUT}.1/24", "nat_b", "wan0", f"{NAT_B_OUT}.2/24")
        self._veth("wan", "to_pub", f"{PUB_GW}/24", "pub", "eth0", f"{PUB_IP}/24")
        self._veth("nat_a", "lan0", f"{LAN_A}.1/24", "a", "eth0", f"{LAN_A}.2/24")
        self._veth("nat_b", "lan0", f"{LAN_B}.1/24", "b", "eth0", f"{LAN_B}.2/24")
        _run(["ip", "-n", self.ns["pub"], "route", "add", "default", "via", PUB_GW])
        for side, out, lan in (("a", NAT_A_OUT, LAN_A), ("b", NAT_B_OUT, LAN_B)):
            _run(["ip", "-n", self.ns[side], "route", "add", "default", "via", f"{lan}.1"])
            _run(["ip", "-n", self.ns[f"nat_{side}"], "route", "add", "default", "via", f"{out}.1"])
            kind: Nat = self.nat_a if side == "a" else self.nat_b
            if kind == "none":  # a plain router: the LAN is routed (its hosts are reachable)
                _run(["ip", "-n", self.ns["wan"], "route", "add", f"{lan}.0/24", "via", f"{out}.2"])
            else:
                self._nat(f"nat_{side}", kind)
        # the WAN: every forwarded packet goes through the TUN device "emu" and wanemu
        wan = self.ns["wan"]
        _run(["ip", "-n", wan, "tuntap", "add", "dev", "emu", "mode", "tun"])
        _run(["ip", "-n", wan, "link", "set", "emu", "up"])
        self.sh("wan", "sysctl", "-qw", "net.ipv4.conf.emu.rp_filter=0")
        _run(["ip", "-n", wan, "route", "add", "default", "dev", "emu", "table", "100"])
        _run(["ip", "-n", wan, "rule", "add", "pref", "100", "iif", "emu", "lookup", "main"])
        _run(["ip", "-n", wan, "rule", "add", "pref", "200", "lookup", "100"])
        self._start_emu()

    def _nat(self, router: str, kind: Nat) -> None:
        how = "masquerade" if kind == "eim" else "masquerade random,fully-random"
        rules = f"""
table ip nat {{
  chain out {{ type nat hook postrouting priority srcnat; oifname "wan0" {how}; }}
}}
table inet filter {{
  chain guard {{
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    iifname "lan0" oifname "wan0" accept
  }}
  chain in {{
    # like most NATs: unsolicited packets from outside vanish (no ICMP port unreachable)
    type filter hook input priority filter; policy accept;
    iifname "wan0" ct state new meta l4proto != icmp drop
  }}
}}
"""
        path = self.tmp / f"{router}.nft"
        path.write_text(rules)
        self.sh(router, "nft", "-f", str(path))

    def _start_emu(self) -> None:
        params = self.tmp / "wan.params"
        params.write_text(self.wan.params_line())
        ready = self.tmp / "wanemu.ready"
        argv = [
            "ip", "netns", "exec", self.ns["wan"], str(WANEMU), "--tun", "emu",
            "--params", str(params), "--seed", str(self.seed), "--ready", str(ready),
        ]  # fmt: skip
        self._emu = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        deadline = time.monotonic() + 10
        while not ready.exists():
            if self._emu.poll() is not None or time.monotonic() > deadline:
                err = self._emu.stderr.read() if self._emu.stderr else ""
                raise LabError(f"wanemu did not start: {err.strip()}")
            time.sleep(0.02)

    # -- using ------------------------------------------------------------------------------

    @property
    def scanbeam(self) -> str:
        """The ``scanbeam`` command of the running interpreter's environment."""
        return str(Path(sys.executable).parent / "scanbeam")

    def addr(self, host: str) -> str:
        """The address of ``host`` inside its own segment (a NATed host: its private one)."""
        return {
            "a": f"{LAN_A}.2",
            "b": f"{LAN_B}.2",
            "pub": PUB_IP,
            "nat_a": f"{NAT_A_OUT}.2",
            "nat_b": f"{NAT_B_OUT}.2",
            "wan": PUB_GW,
        }[host]

    def popen(
        self,
        host: str,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        stdout: int | None = subprocess.PIPE,
        stderr: int | None = subprocess.PIPE,
        stdin: int | None = subprocess.DEVNULL,
        cwd: Path | None = None,
    ) -> subprocess.Popen[str]:
        """Start ``argv`` inside ``host``'s namespace (own process group; killed by close)."""
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns[host], *argv],
            stdout=stdout,
            stderr=stderr,
            stdin=stdin,
            text=True,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        self._procs.append(proc)
        return proc

    def set_wan(self, wan: Wan) -> None:
        """Change the link conditions now (wanemu re-reads its parameters on SIGHUP)."""
        assert self._emu is not None
        (self.tmp / "wan.params").write_text(wan.params_line())
        self.wan = wan
        os.kill(self._emu.pid, signal.SIGHUP)  # ip netns exec execs wanemu in place

    def emu_stats(self) -> str:
        """Stop wanemu and return its JSON counters (ends inter-segment traffic)."""
        assert self._emu is not None
        os.kill(self._emu.pid, signal.SIGTERM)
        out, _ = self._emu.communicate(timeout=5)
        return out.strip()

    def block_udp(self, side: Literal["a", "b"]) -> None:
        """Drop every UDP packet forwarded by ``side``'s router (both directions)."""
        self.sh(
            f"nat_{side}",
            "nft",
            "insert rule inet filter guard meta l4proto udp drop",
        )

    def link(self, host: str, up: bool) -> None:
        """Take ``host``'s interface down or up (an outage, for resilience tests)."""
        self.sh(host, "ip", "link", "set", "eth0", "up" if up else "down")
        if up and host in ("a", "b"):
            lan = LAN_A if host == "a" else LAN_B
            self.sh(host, "ip", "route", "replace", "default", "via", f"{lan}.1")
        elif up and host == "pub":
            self.sh(host, "ip", "route", "replace", "default", "via", PUB_GW)

    # -- services on the public segment -----------------------------------------------------

    def start_coturn(self, port: int = 3478) -> Path:
        """Start coturn on pub with a fresh REST-API secret; returns the secret file."""
        if shutil.which("turnserver") is None:
            raise LabError("coturn is not installed (run `make deps-net`)")
        secret = secrets.token_urlsafe(32)
        secret_file = self.tmp / "turn.secret"
        secret_file.write_text(secret + "\n")
        secret_file.chmod(0o600)
        conf = self.tmp / "turnserver.conf"
        conf.write_text(
            "\n".join(
                [
                    f"listening-ip={PUB_IP}",
                    f"relay-ip={PUB_IP}",
                    f"listening-port={port}",
                    "min-port=49152",
                    "max-port=65535",
                    "use-auth-secret",
                    f"static-auth-secret={secret}",
                    "realm=scanbeam.test",
                    "fingerprint",
                    "no-cli",
                    "no-tls",
                    "no-dtls",
                    "no-tcp-relay",
                    "no-multicast-peers",
                    "denied-peer-ip=127.0.0.0-127.255.255.255",
                    f"pidfile={self.tmp / 'turnserver.pid'}",
                    "log-file=stdout",
                    "simple-log",
                    "",
                ]
            )
        )
        conf.chmod(0o600)
        self.popen("pub", ["turnserver", "-c", str(conf)], stdout=subprocess.DEVNULL)
        self._wait_port("pub", port, udp=True)
        return secret_file

    def start_serve(
        self,
        *,
        turn: bool = False,
        turn_secret: Path | None = None,
        port: int = 8000,
        extra: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> str:
        """Start ``scanbeam serve`` on pub; returns its URL. ``turn``: hand out coturn."""
        data = self.tmp / "serve-data"
        argv = [self.scanbeam, "serve", "--host", PUB_IP, "--port", str(port), "--data", str(data)]
        if turn:
            assert turn_secret is not None
            argv += [
                "--stun-url",
                f"stun:{PUB_IP}:3478",
                "--turn-url",
                f"turn:{PUB_IP}:3478?transport=udp",
                "--turn-secret-file",
                str(turn_secret),
            ]
        proc = self.popen("pub", [*argv, *extra], env=env)
        url = f"http://{PUB_IP}:{port}"
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read() if proc.stderr else ""
                raise LabError(f"scanbeam serve exited: {err.strip()}")
            with contextlib.suppress(OSError):
                out = self.sh("pub", sys.executable, "-c", _HEALTH.format(url=url), check=False)
                if "ok" in out:
                    return url
            if time.monotonic() > deadline:
                raise LabError("scanbeam serve did not answer /v1/health")
            time.sleep(0.2)

    def _wait_port(self, host: str, port: int, *, udp: bool) -> None:
        deadline = time.monotonic() + 15
        flag = "-uln" if udp else "-tln"
        while f":{port} " not in self.sh(host, "ss", flag, check=False):
            if time.monotonic() > deadline:
                raise LabError(f"nothing listens on port {port} in {host}")
            time.sleep(0.1)

    def procs(self) -> Iterator[subprocess.Popen[str]]:
        yield from self._procs


_HEALTH = (
    "import urllib.request;"
    "print('ok' if b'scanbeam' in urllib.request.urlopen('{url}/v1/health', timeout=2).read()"
    " else 'no')"
)


@atexit.register
def _close_all() -> None:
    for lab in list(_LIVE):
        with contextlib.suppress(Exception):
            lab.close()


if __name__ == "__main__":  # python -m tests.netlab.lab: remove namespaces of dead runs
    print("\n".join(sweep_stale()) or "nothing stale")
