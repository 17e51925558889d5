#!/usr/bin/env python3
"""HTTP/3 on aioquic, for the tests of `xdp-quic serve --app h3` and `client --app h3`.

client  --host H --port P [--method GET] [--out DIR] PATH...
    One connection; requests every PATH at once (the method for all). Prints, per response
    as its headers arrive, "headers PATH STATUS", and once it is complete, "done PATH
    STATUS OCTETS content-length=L content-type=T"; a successful body is saved into OUT
    under the path's last name. Exits 0 once every response is complete (whatever its
    status), non-zero if a stream was reset or the connection ended first.

server  --host H --port P --cert PEM --key PEM --root DIR
    Serves GET of the files beneath ROOT (404 otherwise). Prints "ready port=P".
"""
import argparse
import asyncio
import os
import sys

from aioquic.asyncio import connect, serve
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, StreamReset


# aioquic checks a response's content-length against its body even for HEAD, whose
# content-length is the size GET would have (RFC 9110 §9.3.2): not for HEAD streams here.
_check_content_length = H3Connection._check_content_length


def _check_unless_head(self, stream):
    if stream.stream_id not in getattr(self, "head_streams", ()):
        _check_content_length(self, stream)


H3Connection._check_content_length = _check_unless_head


class H3Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.requests = {}

    def request(self, method, authority, path):
        sid = self._quic.get_next_available_stream_id()
        if method == "HEAD":
            self.h3.head_streams = getattr(self.h3, "head_streams", set()) | {sid}
        self.h3.send_headers(
            sid,
            [
                (b":method", method.encode()),
                (b":scheme", b"https"),
                (b":authority", authority.encode()),
                (b":path", path.encode()),
            ],
            end_stream=True,
        )
        fut = self._loop.create_future()
        self.requests[sid] = {"path": path, "fut": fut, "body": bytearray(), "headers": {}}
        self.transmit()
        return fut

    def quic_event_received(self, event):
        if isinstance(event, StreamReset) and event.stream_id in self.requests:
            r = self.requests[event.stream_id]
            if not r["fut"].done():
                r["fut"].set_exception(ConnectionError(f"{r['path']}: reset {event.error_code}"))
            return
        if isinstance(event, ConnectionTerminated):
            for r in self.requests.values():
                if not r["fut"].done():
                    r["fut"].set_exception(ConnectionError(f"connection ended: {event}"))
            return
        for e in self.h3.handle_event(event):
            r = self.requests.get(e.stream_id)
            if r is None:
                continue
            if isinstance(e, HeadersReceived):
                r["headers"].update({k.decode(): v.decode() for k, v in e.headers})
                print(f"headers {r['path']} {r['headers'].get(':status')}", flush=True)
            elif isinstance(e, DataReceived):
                r["body"] += e.data
            if getattr(e, "stream_ended", False) and not r["fut"].done():
                r["fut"].set_result(r)


# Every test's fetch ends well within this.
CLIENT_DEADLINE_S = 120


async def run_client(args):
    c = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name="localhost")
    c.verify_mode = False  # the test servers' certificates are self-signed
    host = f"[{args.host}]" if ":" in args.host else args.host
    authority = f"{host}:{args.port}"
    async with connect(args.host, args.port, configuration=c, create_protocol=H3Client) as client:
        results = await asyncio.gather(
            *(client.request(args.method, authority, p) for p in args.paths)
        )
        for r in results:
            h = r["headers"]
            status = h.get(":status")
            print(
                f"done {r['path']} {status} {len(r['body'])} "
                f"content-length={h.get('content-length')} content-type={h.get('content-type')}",
                flush=True,
            )
            if args.out and status == "200":
                name = os.path.basename(r["path"]) or "index.html"
                with open(os.path.join(args.out, name), "wb") as f:
                    f.write(r["body"])
        client.close(error_code=0x100)


class H3Server(QuicConnectionProtocol):
    root = "."

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.h3 = None

    def quic_event_received(self, event):
        if self.h3 is None:
            self.h3 = H3Connection(self._quic)
        for e in self.h3.handle_event(event):
            if not isinstance(e, HeadersReceived):
                continue
            headers = dict(e.headers)
            path = headers.get(b":path", b"/").decode()
            full = os.path.realpath(os.path.join(self.root, path.lstrip("/")))
            ok = (
                headers.get(b":method") == b"GET"
                and full.startswith(os.path.realpath(self.root) + os.sep)
                and os.path.isfile(full)
            )
            if ok:
                with open(full, "rb") as f:
                    body = f.read()
                self.h3.send_headers(
                    e.stream_id,
                    [(b":status", b"200"), (b"content-length", str(len(body)).encode())],
                )
                self.h3.send_data(e.stream_id, body, end_stream=True)
            else:
                self.h3.send_headers(
                    e.stream_id, [(b":status", b"404"), (b"content-length", b"0")], end_stream=True
                )
        self.transmit()


async def run_server(args):
    H3Server.root = args.root
    c = QuicConfiguration(is_client=False, alpn_protocols=H3_ALPN)
    c.load_cert_chain(args.cert, args.key)
    server = await serve(args.host, args.port, configuration=c, create_protocol=H3Server)
    port = server._transport.get_extra_info("sockname")[1]
    print(f"ready port={port}", flush=True)
    await asyncio.Event().wait()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("role", choices=["client", "server"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--method", default="GET")
    p.add_argument("--out")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--root")
    p.add_argument("paths", nargs="*")
    args = p.parse_intermixed_args()
    try:
        if args.role == "server":
            asyncio.run(run_server(args))
        else:
            # A stalled connection fails the client instead of hanging its test.
            asyncio.run(asyncio.wait_for(run_client(args), CLIENT_DEADLINE_S))
    except TimeoutError:
        sys.exit(f"aioquic h3 client: not done within {CLIENT_DEADLINE_S} s (a stalled connection?)")
    except ConnectionError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
