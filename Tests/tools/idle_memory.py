#!/usr/bin/env python3
"""Resident memory of a gateway per idle keep-alive connection after each connection
uploaded a body. usage: idle_memory.py PID PORT CAFILE|- COUNT BODY_BYTES
Opens COUNT connections (TLS when CAFILE is given), POSTs BODY_BYTES to /sha256 on each,
reads the answer, keeps them all open and idle, and prints one JSON line:
{"connections": N, "baseline_kib": B, "held_kib": H, "kib_per_connection": (H - B) / N}."""
import asyncio, json, ssl, sys, time

pid, port, cafile, count, size = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
context = ssl.create_default_context(cafile=cafile) if cafile != "-" else None
body = b"x" * size


def rss_kib():
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))


async def exchange(payload):
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="localhost" if context else None), 20)
    writer.write(b"POST /sha256 HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n" % len(payload) + payload)
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
    if not head.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"unexpected answer: {head[:80]!r}")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
    await asyncio.wait_for(reader.readexactly(length), 20)
    return writer


async def main():
    (await exchange(body)).close()  # warm up every path once
    await asyncio.sleep(0.5)
    baseline = rss_kib()
    held, gate = [], asyncio.Semaphore(20)

    async def one():
        async with gate:
            held.append(await exchange(body))
    await asyncio.gather(*(one() for _ in range(count)))
    await asyncio.sleep(1.0)
    used = rss_kib()
    print(json.dumps({"connections": len(held), "baseline_kib": baseline, "held_kib": used,
                      "kib_per_connection": round((used - baseline) / max(len(held), 1), 1)}), flush=True)
    for writer in held:
        writer.close()

asyncio.run(main())
