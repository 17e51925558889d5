#!/usr/bin/env python3
"""Echo (ALPN "echo") on aioquic, for the tests of xdp-quic's async API (examples/tests/async_interop.rs).

server  --host H --port P --cert PEM --key PEM
    Echoes every bidirectional stream as it arrives and every datagram. A stream that
    reads exactly "close N" is not echoed: the server closes the connection with
    application error code N and reason "bye". Prints "ready port=P" once listening and,
    for each ended connection, "closed code=C reason=R" (what the peer or itself closed
    with).

client  --host H --port P --ca PEM [--bulk OCTETS] [--streams N] [--datagrams N] [--ask-close]
    One connection: echoes BULK octets on one stream byte-exact (written and read at
    once), then N concurrent streams of 1 KiB each (each checked), then sends N datagrams
    and counts the echoes, then closes with code 7 and reason "done". With --ask-close, a
    second connection asks the server to close with code 42 ("close 42") and reports what
    it was closed with. Prints one line of facts: "bulk=ok streams=N datagrams=K" (and
    "server_close=42:bye"); exits non-zero if an echo differed.
"""
import argparse
import asyncio
import hashlib
import random
import sys

from aioquic.asyncio import connect, serve
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import (
    ConnectionTerminated,
    DatagramFrameReceived,
    StreamDataReceived,
)

ALPN = ["echo"]
DATAGRAM_FRAME_SIZE = 65536


class EchoServer(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.heads = {}
        self.reported = False

    def quic_event_received(self, event):
        if isinstance(event, StreamDataReceived):
            head = self.heads.get(event.stream_id)
            if head is None or len(head) < 16:
                head = (head or b"") + event.data
                self.heads[event.stream_id] = head
            if event.end_stream and head.startswith(b"close "):
                self._quic.close(error_code=int(head[6:]), reason_phrase="bye")
            else:
                self._quic.send_stream_data(event.stream_id, event.data, event.end_stream)
            self.transmit()
        elif isinstance(event, DatagramFrameReceived):
            self._quic.send_datagram_frame(event.data)
            self.transmit()
        elif isinstance(event, ConnectionTerminated) and not self.reported:
            self.reported = True
            print(f"closed code={event.error_code} reason={event.reason_phrase}", flush=True)


class EchoClient(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.streams = {}
        self.datagrams = 0
        self.terminated = asyncio.get_event_loop().create_future()

    def echo(self, data):
        sid = self._quic.get_next_available_stream_id()
        fut = asyncio.get_event_loop().create_future()
        self.streams[sid] = (fut, bytearray())
        self._quic.send_stream_data(sid, data, end_stream=True)
        self.transmit()
        return fut

    def quic_event_received(self, event):
        if isinstance(event, StreamDataReceived):
            fut, buf = self.streams[event.stream_id]
            buf += event.data
            if event.end_stream and not fut.done():
                fut.set_result(bytes(buf))
        elif isinstance(event, DatagramFrameReceived):
            self.datagrams += 1
        elif isinstance(event, ConnectionTerminated):
            if not self.terminated.done():
                self.terminated.set_result((event.error_code, event.reason_phrase))
            for fut, _ in self.streams.values():
                if not fut.done():
                    fut.set_exception(ConnectionError(f"connection ended: {event}"))


def configuration(args):
    c = QuicConfiguration(
        is_client=True,
        alpn_protocols=ALPN,
        server_name="localhost",
        max_datagram_frame_size=DATAGRAM_FRAME_SIZE,
    )
    c.load_verify_locations(args.ca)
    return c


def fail(what):
    print(f"echo differs: {what}", file=sys.stderr, flush=True)
    sys.exit(1)


async def run_client(args):
    rng = random.Random(15)
    async with connect(
        args.host, args.port, configuration=configuration(args), create_protocol=EchoClient
    ) as client:
        bulk = rng.randbytes(args.bulk)
        back = await client.echo(bulk)
        if hashlib.sha256(back).digest() != hashlib.sha256(bulk).digest():
            fail(f"bulk: {len(back)} octets back of {len(bulk)}")
        payloads = [rng.randbytes(1024) for _ in range(args.streams)]
        backs = await asyncio.gather(*(client.echo(p) for p in payloads))
        for i, (p, b) in enumerate(zip(payloads, backs)):
            if p != b:
                fail(f"stream {i}")
        # Datagrams are unreliable: sent again every 100 ms until at least one echo came
        # (the deadline of the whole run is the hang guard), then a little longer for the
        # rest; the count is what came.
        rounds = 0
        while client.datagrams == 0 or (client.datagrams < args.datagrams and rounds < 20):
            if rounds % 10 == 0:
                for i in range(args.datagrams):
                    client._quic.send_datagram_frame(i.to_bytes(4, "big") * 25)
                client.transmit()
            rounds += 1
            await asyncio.sleep(0.01)
        client.close(error_code=7, reason_phrase="done")
        await client.wait_closed()
    facts = f"bulk=ok streams={args.streams} datagrams={client.datagrams}"
    if args.ask_close:
        async with connect(
            args.host, args.port, configuration=configuration(args), create_protocol=EchoClient
        ) as asked:
            asked.echo(b"close 42")
            code, reason = await asyncio.wait_for(asked.terminated, 30)
        facts += f" server_close={code}:{reason}"
    print(facts, flush=True)


async def run_server(args):
    c = QuicConfiguration(
        is_client=False, alpn_protocols=ALPN, max_datagram_frame_size=DATAGRAM_FRAME_SIZE
    )
    c.load_cert_chain(args.cert, args.key)
    server = await serve(args.host, args.port, configuration=c, create_protocol=EchoServer)
    port = server._transport.get_extra_info("sockname")[1]
    print(f"ready port={port}", flush=True)
    await asyncio.Event().wait()


# The client's hang guard: it waits on conditions (echoes, datagrams, the close), never
# on fixed times, so a run that stalls ends here.
CLIENT_DEADLINE_S = 120


def main():
    p = argparse.ArgumentParser()
    p.add_argument("role", choices=["server", "client"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--ca")
    p.add_argument("--bulk", type=int, default=10_000_000)
    p.add_argument("--streams", type=int, default=1000)
    p.add_argument("--datagrams", type=int, default=20)
    p.add_argument("--ask-close", action="store_true")
    args = p.parse_args()
    if args.role == "server":
        asyncio.run(run_server(args))
        return
    try:
        asyncio.run(asyncio.wait_for(run_client(args), CLIENT_DEADLINE_S))
    except asyncio.TimeoutError:
        sys.exit(f"aioquic echo client: not done within {CLIENT_DEADLINE_S} s (hang guard)")


if __name__ == "__main__":
    main()
