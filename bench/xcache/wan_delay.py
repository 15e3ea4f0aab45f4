"""A delay line for TCP: forwards connections from LISTEN to TARGET, holding every chunk of data
for DELAY milliseconds in each direction, without limiting throughput (chunks in flight overlap,
as on a long link). The benchmark runs it in the origin's network namespace when the kernel has
no netem qdisc; the bandwidth cap stays in the kernel (tc tbf on the link).

usage: python wan_delay.py LISTEN_HOST:PORT TARGET_HOST:PORT DELAY_MS

Prints "ready" once it listens.
"""

from __future__ import annotations

import asyncio
import sys
import time

CHUNK = 256 * 1024
# Bytes held per direction at most; the sender waits beyond that (TCP pushes back).
HELD = 64


async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    line: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(maxsize=HELD)

    async def receive() -> None:
        while data := await reader.read(CHUNK):
            await line.put((time.monotonic() + delay, data))
        await line.put((time.monotonic() + delay, b""))

    async def send() -> None:
        while True:
            due, data = await line.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)  # the link's propagation delay, not synchronisation
            if not data:
                break
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    try:
        await asyncio.gather(receive(), send())
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def main(listen: str, target: str, delay_ms: float) -> None:
    delay = delay_ms / 1000
    target_host, target_port = target.rsplit(":", 1)

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(target_host, int(target_port))
        except OSError:
            writer.close()
            return
        await asyncio.gather(pump(reader, up_writer, delay), pump(up_reader, writer, delay))

    host, port = listen.rsplit(":", 1)
    server = await asyncio.start_server(connection, host, int(port))
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
