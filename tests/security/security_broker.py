"""``python tests/security/security_broker.py USERS_FILE DELAY``: an in-memory broker on a free
loopback port that requires the users of ``USERS_FILE`` and answers a failed login after
``DELAY`` seconds (the CLI's delay is a fixed second: too long for a test of a thousand
guesses). Prints ``listening on 127.0.0.1:PORT``; SIGTERM stops it."""

from __future__ import annotations

import asyncio
import signal
import sys

from conveyor.broker import Broker


async def serve(users: str, delay: float) -> None:
    broker = Broker(host="127.0.0.1", port=0, users=users, auth_failure_delay=delay)
    await broker.start()
    print(f"listening on 127.0.0.1:{broker.port}", flush=True)
    serving = asyncio.ensure_future(broker.serve_forever())
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, serving.cancel)
    try:
        await serving
    except asyncio.CancelledError:
        pass
    finally:
        await broker.close()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], float(sys.argv[2])))
