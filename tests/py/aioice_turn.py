#!/usr/bin/env python3
"""Drive a TURN server with aioice (a client this project did not write).

Allocates a relayed address with long-term credentials, sends datagrams from
the relay to a UDP echo peer and waits for each echo, then deletes the
allocation.  Prints one line per step; exits 0 on success, 1 when the relay
did not carry the data, 2 when the allocation failed.
"""
import argparse
import asyncio
import ssl
import sys

from aioice import stun
from aioice.turn import create_turn_endpoint


def hostport(text):
    """HOST:PORT, with an IPv6 host in brackets: [::1]:3478."""
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


class Receiver(asyncio.DatagramProtocol):
    def __init__(self):
        self.queue = asyncio.Queue()
        self.lost = asyncio.get_running_loop().create_future()

    def datagram_received(self, data, addr):
        self.queue.put_nowait((data, addr))

    def error_received(self, exc):
        print(f"error_received: {exc!r}", flush=True)

    def connection_lost(self, exc):
        if not self.lost.done():
            self.lost.set_result(exc)


async def run(args):
    peer = hostport(args.peer)
    context = None
    if args.transport == "tls":
        # Verifies the server certificate against --ca (and its IP address SAN).
        context = ssl.create_default_context(cafile=args.ca)
    try:
        transport, receiver = await create_turn_endpoint(
            Receiver,
            server_addr=hostport(args.server),
            username=args.user,
            password=args.password,
            lifetime=args.lifetime,
            ssl=context,
            transport="udp" if args.transport == "udp" else "tcp",
        )
    except (stun.TransactionError, ConnectionError, OSError, ssl.SSLError) as exc:
        code = getattr(getattr(exc, "response", None), "error_code", None)
        print(f"ALLOCATE FAILED: {type(exc).__name__} error_code={code} {exc}", flush=True)
        return 2
    relayed = transport.get_extra_info("sockname")
    mapped = transport.get_extra_info("related_address")
    print(f"ALLOCATED relayed={relayed[0]}:{relayed[1]} mapped={mapped[0]}:{mapped[1]}", flush=True)

    echoed = 0
    for i in range(args.count):
        payload = f"aioice-{i}-".encode() + bytes(args.size)
        transport.sendto(payload, peer)
        try:
            data, addr = await asyncio.wait_for(receiver.queue.get(), args.timeout)
        except asyncio.TimeoutError:
            print(f"TIMEOUT waiting for echo {i}", flush=True)
            continue
        if data == payload and addr == peer:
            echoed += 1
        else:
            print(f"MISMATCH echo {i}: {len(data)} bytes from {addr}", flush=True)
    print(f"ECHOED {echoed}/{args.count}", flush=True)

    transport.close()
    try:
        await asyncio.wait_for(receiver.lost, args.timeout * 2)
        print("DELETED", flush=True)
    except asyncio.TimeoutError:
        print("DELETE TIMEOUT", flush=True)
        return 1
    return 0 if echoed == args.count else 1


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--server", required=True, help="HOST:PORT of the TURN server")
    p.add_argument("--peer", required=True, help="HOST:PORT of a UDP echo peer")
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--transport", choices=["udp", "tcp", "tls"], default="udp")
    p.add_argument("--ca", help="CA certificate (PEM) to verify a tls server with")
    p.add_argument("--count", type=int, default=5)
    p.add_argument("--size", type=int, default=100)
    p.add_argument("--lifetime", type=int, default=600)
    p.add_argument("--timeout", type=float, default=3.0, help="seconds per echo")
    sys.exit(asyncio.run(run(p.parse_args())))


if __name__ == "__main__":
    main()
