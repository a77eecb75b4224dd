#!/usr/bin/env python3
"""Refresh and stale-nonce recovery with aioice (a client this project did not write).

Allocates with long-term credentials, relays datagrams to a UDP echo peer over a
channel, waits until the server's nonce has expired, refreshes the allocation (the
server must answer 438 Stale Nonce with a new nonce, and aioice retries with it),
relays again on the same channel, then deletes the allocation.  Prints one line per
step; exits 0 on success, 1 when a step did not go as expected, 2 when the
allocation failed.
"""
import argparse
import asyncio
import sys

from aioice import stun
from aioice.turn import create_turn_endpoint


def hostport(text):
    host, _, port = text.rpartition(":")
    return host, int(port)


class Receiver(asyncio.DatagramProtocol):
    def __init__(self):
        self.queue = asyncio.Queue()
        self.lost = asyncio.get_running_loop().create_future()

    def datagram_received(self, data, addr):
        self.queue.put_nowait((data, addr))

    def connection_lost(self, exc):
        if not self.lost.done():
            self.lost.set_result(exc)


async def echo_round(transport, receiver, peer, label, count, timeout):
    echoed = 0
    for i in range(count):
        payload = f"{label}-{i}".encode()
        transport.sendto(payload, peer)
        try:
            data, addr = await asyncio.wait_for(receiver.queue.get(), timeout)
        except asyncio.TimeoutError:
            continue
        if data == payload and addr == peer:
            echoed += 1
    return echoed


async def run(args):
    peer = hostport(args.peer)
    try:
        transport, receiver = await create_turn_endpoint(
            Receiver,
            server_addr=hostport(args.server),
            username=args.user,
            password=args.password,
            transport=args.transport,
        )
    except (stun.TransactionError, ConnectionError, OSError) as exc:
        print(f"ALLOCATE FAILED: {type(exc).__name__} {exc}", flush=True)
        return 2
    # aioice keeps its TURN client protocol private; the test needs it to refresh now
    # rather than at 5/6 of the lifetime, and to see the error codes it recovered from.
    client = transport._TurnTransport__inner_protocol
    errors = []
    plain_request = client.request

    async def recording_request(request):
        try:
            return await plain_request(request)
        except stun.TransactionFailed as exc:
            errors.append(exc.response.error_code)
            raise

    client.request = recording_request
    print(f"ALLOCATED relayed={transport.get_extra_info('sockname')}", flush=True)

    ok = True
    before = await echo_round(transport, receiver, peer, "before", args.count, args.timeout)
    print(f"ECHOED BEFORE {before}/{args.count}", flush=True)
    ok &= before == args.count

    nonce = client.nonce
    await asyncio.sleep(args.stale_after)
    request = stun.Message(message_method=stun.Method.REFRESH, message_class=stun.Class.REQUEST)
    request.attributes["LIFETIME"] = args.lifetime
    try:
        response, _ = await client.request_with_retry(request)
        lifetime = response.attributes.get("LIFETIME")
        print(f"REFRESHED lifetime={lifetime} errors={errors} new_nonce={client.nonce != nonce}", flush=True)
        ok &= lifetime == args.lifetime
    except (stun.TransactionError, ConnectionError) as exc:
        print(f"REFRESH FAILED: {type(exc).__name__} {exc} errors={errors}", flush=True)
        ok = False

    after = await echo_round(transport, receiver, peer, "after", args.count, args.timeout)
    print(f"ECHOED AFTER {after}/{args.count}", flush=True)
    ok &= after == args.count

    transport.close()
    try:
        await asyncio.wait_for(receiver.lost, args.timeout * 2)
        print(f"DELETED errors={errors}", flush=True)
    except asyncio.TimeoutError:
        print("DELETE TIMEOUT", flush=True)
        ok = False
    return 0 if ok else 1


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--server", required=True, help="HOST:PORT of the TURN server")
    p.add_argument("--peer", required=True, help="HOST:PORT of a UDP echo peer")
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--transport", choices=["udp", "tcp"], default="udp")
    p.add_argument("--count", type=int, default=3)
    p.add_argument("--lifetime", type=int, default=300, help="LIFETIME asked in the refresh")
    p.add_argument("--stale-after", type=float, default=11.0, help="seconds to wait for the nonce to expire")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds per echo")
    sys.exit(asyncio.run(run(p.parse_args())))


if __name__ == "__main__":
    main()
