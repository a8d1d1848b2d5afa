"""How many idle `eventAvailability` subscriptions one worker holds, what each costs in
memory, and how fast a change reaches all of them.

    .venv/bin/python -m bench.idle_subscriptions [--connections 10000]

Starts `bookmyevent serve` with one worker (PostgreSQL + Redis, like bench.flash_sale),
opens N websockets in batches (graphql-transport-ws: connection_init, subscribe, snapshot),
reads the worker's resident memory before and after, then makes one reserve and times its
arrival at every subscriber. Every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import websockets

from bench.harness import Client, Server, free_port, recreate_database, run_cli, server_env
from bench.stats import percentile

SUBSCRIBE = ("subscription($id: ID!) { eventAvailability(eventId: $id) "
             "{ availableSeats version snapshot } }")
RESERVE = ('mutation($id: ID!) { reserveSeats(input: {eventId: $id, quantity: 1}) '
           '{ booking { id } errors { code } } }')
REGISTER = ('mutation($e: String!) { register(input: {email: $e, password: "bench password", name: "B"}) '
            '{ accessToken errors { code } } }')
EVENT_ID = "2"  # seed-demo's general-admission event with 250 places


def resident_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def subscribe(ws_url: str) -> Any:
    socket = await websockets.connect(ws_url, subprotocols=["graphql-transport-ws"], compression=None,
                                      open_timeout=30, max_queue=4)
    await socket.send(json.dumps({"type": "connection_init", "payload": {}}))
    assert json.loads(await socket.recv())["type"] == "connection_ack"
    await socket.send(json.dumps({"id": "1", "type": "subscribe",
                                  "payload": {"query": SUBSCRIBE, "variables": {"id": EVENT_ID}}}))
    snapshot = json.loads(await socket.recv())
    assert snapshot["payload"]["data"]["eventAvailability"]["snapshot"] is True
    return socket


async def main(connections: int, batch: int) -> None:
    port = free_port()
    env = server_env(port, workers=1)
    await recreate_database()
    run_cli(["migrate"], env)
    run_cli(["seed-demo"], env)
    server = Server(env)
    server.start()
    sockets: list[Any] = []
    try:
        await server.wait_ready()
        async with Client(server.base_url, 4) as client:
            registered = await client.raw(json.dumps({"query": REGISTER, "variables": {
                "e": f"idle-{port}@example.com"}}).encode(), {"Content-Type": "application/json"})
            token = registered[1]["data"]["register"]["accessToken"]
            await asyncio.sleep(1)
            before = resident_kib(server.pid)
            started = time.monotonic()
            ws_url = f"ws://127.0.0.1:{port}/graphql"
            while len(sockets) < connections:
                size = min(batch, connections - len(sockets))
                sockets += await asyncio.wait_for(
                    asyncio.gather(*(subscribe(ws_url) for _ in range(size))), timeout=120)
            connect_seconds = time.monotonic() - started
            await asyncio.sleep(2)  # let the worker settle
            after = resident_kib(server.pid)

            async def receipt(socket: Any) -> float:
                await asyncio.wait_for(socket.recv(), timeout=60)
                return time.perf_counter()

            waiting = [asyncio.create_task(receipt(socket)) for socket in sockets]
            sent = time.perf_counter()
            status, body = await client.raw(json.dumps({"query": RESERVE, "variables": {"id": EVENT_ID}}).encode(),
                                            {"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
            assert status == 200 and body["data"]["reserveSeats"]["errors"] == [], body
            latencies = sorted((moment - sent) * 1000 for moment in await asyncio.gather(*waiting))
    finally:
        await asyncio.gather(*(socket.close() for socket in sockets), return_exceptions=True)
        server.stop()
    per_connection = (after - before) / connections
    print(f"idle subscriptions held by one worker: {connections} (connected in {connect_seconds:.1f} s)")
    print(f"worker resident memory: {before / 1024:.0f} MiB before, {after / 1024:.0f} MiB after: "
          f"{per_connection:.1f} KiB per subscribed connection")
    print(f"one reserve reaching all {connections}: p50 {percentile(latencies, 50):.0f} ms, "
          f"p99 {percentile(latencies, 99):.0f} ms, max {latencies[-1]:.0f} ms (from just before the reserve was sent)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=250)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.connections, arguments.batch))
