"""Try one TURN allocation with given credentials (aioice, the TURN client aiortc uses).

    python turnprobe.py HOST PORT USERNAME CREDENTIAL_FILE

Prints {"ok": true, "relayed": [host, port]} or {"ok": false, "error": "..."}; the credential is
read from a file so it never appears in a process list.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from aioice.turn import create_turn_endpoint


async def probe(host: str, port: int, username: str, password: str) -> dict[str, object]:
    try:
        async with asyncio.timeout(10):
            transport, _ = await create_turn_endpoint(
                asyncio.DatagramProtocol, (host, port), username, password
            )
    except Exception as exc:  # report any failure as data
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    relayed = transport.get_extra_info("sockname")
    transport.close()
    await asyncio.sleep(0.2)
    return {"ok": True, "relayed": list(relayed)}


def main() -> int:
    host, port, username, cred_file = sys.argv[1:5]
    password = Path(cred_file).read_text().strip()
    print(json.dumps(asyncio.run(probe(host, int(port), username, password))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
