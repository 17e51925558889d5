#!/usr/bin/env python3
"""An hq-interop (HTTP/0.9 over QUIC) client on aioquic, for xdp-quic's interop tests.

Fetches PATHS from HOST:PORT and writes each into OUT; exits 0 when every file arrived.
--case selects the QUIC interop runner's test case:
  handshake, transfer, multiplexing  plain fetches on one connection
  retry                              same (the server asks for a Retry; checked by the server)
  chacha20                           offers only TLS_CHACHA20_POLY1305_SHA256
  keyupdate                          updates the 1-RTT keys once the first file has started
  resumption                         two connections; the second resumes the first's session
  zerortt                            two connections; the second sends its requests in 0-RTT
                                     (early_data_accepted: whether the server took them)
  rebind-port                        moves to a new UDP port after the first file
  rebind-addr                        moves to a socket bound to --rebind-ip (default
                                     127.0.0.2), a new local address, after the first file
  v2                                 offers QUIC v2 (0x6b3343cf) first, then v1: a server
                                     without v2 answers with Version Negotiation
Prints one line of facts (e.g. "resumed=True", "version=0x1") for the test to check; every
case adds cipher= (the TLS cipher suite) and key_updates= (1-RTT key updates of the last
connection, ours and the server's, in either direction) and local_key_updates= (those
this client started).
"""
import argparse
import asyncio
import os
import socket
import ssl
import sys

from aioquic.asyncio import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic import crypto
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import (
    ConnectionTerminated,
    HandshakeCompleted,
    StreamDataReceived,
    StreamReset,
)
from aioquic.quic.packet import QuicProtocolVersion
from aioquic.tls import CipherSuite, Epoch

# Count key updates per key pair (aioquic keeps no count of its own), and note the first
# packet number sent in each key phase: RFC 9001 section 6.1 lets an endpoint start a key
# update only once a packet of its current phase has been acknowledged, and aioquic does not
# check that itself. (A server that updated its keys first, as quinn does early in every
# connection, and a client that updates again before the server saw a packet of the new
# phase, leave the server decrypting with the wrong keys: the connection stalls.)
_update_key = crypto.CryptoPair._update_key
_encrypt_packet = crypto.CryptoPair.encrypt_packet


def _counting_update_key(self, trigger):
    self.key_updates = getattr(self, "key_updates", 0) + 1
    if trigger == "local_update":
        self.local_key_updates = getattr(self, "local_key_updates", 0) + 1
    self.phase_first_pn = None
    _update_key(self, trigger)


def _encrypt_noting_phase(self, plain_header, plain_payload, packet_number):
    out = _encrypt_packet(self, plain_header, plain_payload, packet_number)
    if getattr(self, "phase_first_pn", None) is None:
        self.phase_first_pn = packet_number
    return out


crypto.CryptoPair._update_key = _counting_update_key
crypto.CryptoPair.encrypt_packet = _encrypt_noting_phase


def may_update_keys(quic):
    """Whether RFC 9001 lets `quic` start a key update now: the handshake is confirmed and
    the peer acknowledged a packet sent with the current keys."""
    pair = quic._cryptos.get(Epoch.ONE_RTT)
    space = quic._spaces.get(Epoch.ONE_RTT)
    first = getattr(pair, "phase_first_pn", None)
    return (
        quic._handshake_confirmed
        and first is not None
        and space is not None
        and space.largest_acked_packet >= first
    )


async def update_keys(client):
    """Starts one key update of our own, as soon as the RFC allows one. A request the server's
    own update overtakes is absorbed by it (aioquic moves to the server's phase and forgets
    the request), so this asks again until one of ours went out."""
    pair = client._quic._cryptos[Epoch.ONE_RTT]
    while getattr(pair, "local_key_updates", 0) == 0:
        if may_update_keys(client._quic) and not pair._update_key_requested:
            client._quic.request_key_update()
            client._quic.send_ping(0)  # a packet to carry the new phase, whatever is left
            client.transmit()
        await asyncio.sleep(0.005)


class HqClient(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.waiters = {}
        self.early_data_accepted = None

    def request(self, path):
        sid = self._quic.get_next_available_stream_id()
        self._quic.send_stream_data(sid, f"GET {path}\r\n".encode(), end_stream=True)
        fut = self._loop.create_future()
        self.waiters[sid] = (fut, bytearray())
        self.transmit()
        return fut

    def quic_event_received(self, event):
        if isinstance(event, HandshakeCompleted):
            self.early_data_accepted = event.early_data_accepted
        if isinstance(event, StreamDataReceived) and event.stream_id in self.waiters:
            fut, buf = self.waiters[event.stream_id]
            buf += event.data
            if event.end_stream and not fut.done():
                fut.set_result(bytes(buf))
        elif isinstance(event, StreamReset) and event.stream_id in self.waiters:
            fut, _ = self.waiters[event.stream_id]
            if not fut.done():
                fut.set_exception(RuntimeError(f"stream reset with code {event.error_code}"))
        elif isinstance(event, ConnectionTerminated):
            # aioquic fails no request of its own when the connection ends.
            for sid, (fut, buf) in self.waiters.items():
                if not fut.done():
                    fut.set_exception(
                        RuntimeError(
                            f"connection closed (error {event.error_code:#x}, "
                            f"{event.reason_phrase!r}) with stream {sid} at {len(buf)} octets"
                        )
                    )


def configuration(args, ticket=None):
    c = QuicConfiguration(is_client=True, alpn_protocols=["hq-interop"])
    c.verify_mode = ssl.CERT_NONE
    c.server_name = "localhost"
    if args.case == "chacha20":
        c.cipher_suites = [CipherSuite.CHACHA20_POLY1305_SHA256]
    if args.case == "v2":
        c.supported_versions = [QuicProtocolVersion.VERSION_2, QuicProtocolVersion.VERSION_1]
    if ticket is not None:
        c.session_ticket = ticket
    return c


async def fetch(client, paths, out):
    if not paths:
        return
    bodies = await asyncio.gather(*(client.request(p) for p in paths))
    for p, body in zip(paths, bodies):
        with open(os.path.join(out, p.strip("/").replace("/", "_")), "wb") as f:
            f.write(body)


async def rebind(client, loop, ip=None):
    """Moves the connection to a new socket: a new port, and with `ip` a new local address.

    aioquic's sockets are dual-stack IPv6 ones that reach IPv4 peers at IPv4-mapped
    addresses, so an IPv4 `ip` is bound as ::ffff:a.b.c.d."""
    old = client._transport
    host = "::"
    if ip is not None:
        host = ip if ":" in ip else "::ffff:" + ip
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind((host, 0, 0, 0))
    transport, _ = await loop.create_datagram_endpoint(lambda: client, sock=sock)
    client._transport = transport
    old.close()
    return sock.getsockname()[0]


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--case", default="transfer")
    p.add_argument("--out", required=True)
    p.add_argument("--rebind-ip", default="127.0.0.2")
    p.add_argument("paths", nargs="+")
    args = p.parse_args()
    loop = asyncio.get_running_loop()
    tickets = []
    facts = {}
    async with connect(
        args.host, args.port, configuration=configuration(args), create_protocol=HqClient,
        session_ticket_handler=tickets.append,
    ) as client:
        if args.case == "keyupdate":
            # Update the keys while the first (large) file is on its way.
            first = client.request(args.paths[0])
            await update_keys(client)
            body = await first
            with open(os.path.join(args.out, args.paths[0].strip("/").replace("/", "_")), "wb") as f:
                f.write(body)
            await fetch(client, args.paths[1:], args.out)
            facts["key_updated"] = True
        elif args.case == "rebind-port":
            await fetch(client, args.paths[:1], args.out)
            await rebind(client, loop)
            await fetch(client, args.paths[1:], args.out)
            facts["rebound"] = True
        elif args.case == "rebind-addr":
            await fetch(client, args.paths[:1], args.out)
            after = await rebind(client, loop, args.rebind_ip)
            await fetch(client, args.paths[1:], args.out)
            facts["rebound"] = True
            facts["to"] = after
        elif args.case == "v2":
            await fetch(client, args.paths, args.out)
            facts["version"] = hex(client._quic._version)
            facts["after_vn"] = client._quic._version_negotiated_incompatible
        elif args.case in ("resumption", "zerortt"):
            await fetch(client, args.paths[:1], args.out)
            # The session ticket comes after the handshake: wait for it (the deadline of
            # the whole run is the hang guard).
            while not tickets:
                await asyncio.sleep(0.01)
        else:
            await fetch(client, args.paths, args.out)
    if args.case in ("resumption", "zerortt"):
        if not tickets:
            raise SystemExit("no session ticket received")
        early = args.case == "zerortt"
        async with connect(
            args.host, args.port, configuration=configuration(args, tickets[-1]),
            create_protocol=HqClient, wait_connected=not early,
        ) as client:
            await fetch(client, args.paths[1:], args.out)
            facts["resumed"] = client._quic.tls.session_resumed
            facts["zero_rtt"] = early
            if early:
                facts["early_data_accepted"] = client.early_data_accepted
    facts.update(connection_facts(client._quic))
    print(" ".join(f"{k}={v}" for k, v in facts.items()))


def connection_facts(quic):
    """The cipher suite and the key updates of a (closed) connection."""
    schedule = getattr(quic.tls, "key_schedule", None)
    one_rtt = quic._cryptos.get(Epoch.ONE_RTT)
    return {
        "cipher": CipherSuite(schedule.cipher_suite).name if schedule else None,
        "key_updates": getattr(one_rtt, "key_updates", 0),
        "local_key_updates": getattr(one_rtt, "local_key_updates", 0),
    }


# Every case ends well within this; a stalled connection fails the run instead of hanging.
DEADLINE_S = 120

if __name__ == "__main__":
    try:
        asyncio.run(asyncio.wait_for(main(), DEADLINE_S))
    except TimeoutError:
        sys.exit(f"aioquic client: not done within {DEADLINE_S} s (a stalled connection?)")
