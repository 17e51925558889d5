#!/usr/bin/env python3
"""An hq-interop (HTTP/0.9 over QUIC) file server on aioquic, for xdp-quic's interop tests.

Serves ROOT on HOST:PORT with CERT/KEY; --retry makes every client validate its address
first. It issues session tickets and keeps them, so clients can resume and send 0-RTT data.
PORT 0 picks a free port. Prints "ready port=P" once listening (P: the port it listens on),
then one line of facts per connection when it ends:
  conn version=0x1 cipher=AES_128_GCM_SHA256 n=1 handshake=True resumed=False
       early_data=False key_updates=0 served=3
(on one line; n: the connection's number; handshake: it completed; key_updates: 1-RTT key
updates, the client's and its own, in either direction). Runs until killed.
"""
import argparse
import asyncio
import os

from aioquic.asyncio import serve
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic import crypto
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, HandshakeCompleted, StreamDataReceived
from aioquic.tls import CipherSuite, Epoch

# Count key updates per key pair (aioquic keeps no count of its own).
_update_key = crypto.CryptoPair._update_key


def _counting_update_key(self, trigger):
    self.key_updates = getattr(self, "key_updates", 0) + 1
    _update_key(self, trigger)


crypto.CryptoPair._update_key = _counting_update_key


class HqServer(QuicConnectionProtocol):
    root = "."
    connections = 0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Requests still arriving, by stream; a stream leaves once answered, and later data
        # or end-of-stream on it is ignored (it is answered once, and counted once).
        self.requests = {}
        self.answered = set()
        HqServer.connections += 1
        self.facts = {"n": HqServer.connections, "handshake": False}
        self.served = 0
        self.reported = False

    def quic_event_received(self, event):
        if isinstance(event, HandshakeCompleted):
            self.facts["handshake"] = True
        elif isinstance(event, ConnectionTerminated):
            self.report()
        if not isinstance(event, StreamDataReceived) or event.stream_id in self.answered:
            return
        buf = self.requests.setdefault(event.stream_id, bytearray())
        buf += event.data
        if not (event.end_stream or b"\n" in buf):
            return
        del self.requests[event.stream_id]
        self.answered.add(event.stream_id)
        line = bytes(buf).split(b"\r\n")[0].split(b"\n")[0].decode(errors="replace")
        path = line[4:] if line.startswith("GET /") else None
        full = os.path.realpath(os.path.join(self.root, path.lstrip("/"))) if path else None
        if full and full.startswith(os.path.realpath(self.root) + os.sep) and os.path.isfile(full):
            with open(full, "rb") as f:
                self._quic.send_stream_data(event.stream_id, f.read(), end_stream=True)
            self.served += 1
        else:
            self._quic.reset_stream(event.stream_id, 0x10)
        self.transmit()

    def report(self):
        if self.reported:
            return
        self.reported = True
        quic = self._quic
        one_rtt = quic._cryptos.get(Epoch.ONE_RTT)
        schedule = getattr(quic.tls, "key_schedule", None)
        cipher = CipherSuite(schedule.cipher_suite).name if schedule else None
        facts = {
            "version": hex(quic._version),
            "cipher": cipher,
            **self.facts,
            # Decided by the ClientHello, known even if the client's Finished never came.
            "resumed": quic.tls.session_resumed,
            "early_data": quic.tls.early_data_accepted,
            "key_updates": getattr(one_rtt, "key_updates", 0),
            "served": self.served,
        }
        print("conn " + " ".join(f"{k}={v}" for k, v in facts.items()), flush=True)


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
    tickets = {}
    server = await serve(
        args.host, args.port, configuration=c, create_protocol=HqServer, retry=args.retry,
        session_ticket_handler=lambda t: tickets.__setitem__(t.ticket, t),
        session_ticket_fetcher=lambda label: tickets.pop(label, None),
    )
    port = server._transport.get_extra_info("sockname")[1]
    print(f"ready port={port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
