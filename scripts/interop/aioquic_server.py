#!/usr/bin/env python3
"""An hq-interop (HTTP/0.9 over QUIC) file server on aioquic, for xdp-quic's interop tests.

Serves ROOT on HOST:PORT with CERT/KEY; --retry makes every client validate its address
first. Prints "ready" once listening; runs until killed.
"""
import argparse
import asyncio
import os

from aioquic.asyncio import serve
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import StreamDataReceived


class HqServer(QuicConnectionProtocol):
    root = "."

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.requests = {}

    def quic_event_received(self, event):
        if not isinstance(event, StreamDataReceived):
            return
        buf = self.requests.setdefault(event.stream_id, bytearray())
        buf += event.data
        if not (event.end_stream or b"\n" in buf):
            return
        line = bytes(buf).split(b"\r\n")[0].split(b"\n")[0].decode(errors="replace")
        path = line[4:] if line.startswith("GET /") else None
        full = os.path.realpath(os.path.join(self.root, path.lstrip("/"))) if path else None
        if full and full.startswith(os.path.realpath(self.root) + os.sep) and os.path.isfile(full):
            with open(full, "rb") as f:
                self._quic.send_stream_data(event.stream_id, f.read(), end_stream=True)
        else:
            self._quic.reset_stream(event.stream_id, 0x10)
        self.transmit()


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--retry", action="store_true")
    args = p.parse_args()
    HqServer.root = args.root
    c = QuicConfiguration(is_client=False, alpn_protocols=["hq-interop"])
    c.load_cert_chain(args.cert, args.key)
    await serve(args.host, args.port, configuration=c, create_protocol=HqServer, retry=args.retry)
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
