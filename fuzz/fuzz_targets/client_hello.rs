//! `client_hello`: the ClientHello peek of the accept hook (`packet::client_hello::peek` and
//! `peek_with`), which decrypts and parses a client's unauthenticated Initial. Input format:
//! `ClientHelloInput` in `src/lib.rs` (header fields, then either the frames in clear or a
//! description of a ClientHello and of its CRYPTO frames); the target seals the packet with
//! the client Initial keys of its DCID (`client_hello::testing::Initial::seal`).
//!
//! For every datagram peeked (the raw input, the sealed packet, its variants):
//! * `peek` returns (no panic), and `peek_with` over a scratch reused from earlier runs gives
//!   the same answer;
//! * a server name is 1..=4096 octets of printable ASCII; every ALPN name is 1..=255 octets,
//!   the list within the 4096-octet reassembly buffer.
//!
//! The raw input as a datagram: the header errors are the ones its first octets call for
//! (`Truncated`, `NotInitial` for a short header or another long type, `UnsupportedVersion`,
//! `Malformed` for a clear fixed bit).
//!
//! The sealed packet:
//! * its length is the header's, the packet number's, the payload's and the tag's;
//! * over `MAX_PACKET_LEN` it is `TooLarge`; with reserved bits set, `Malformed`; otherwise
//!   `Initial::open` gives back exactly the fields and payload sealed;
//! * octets after it (a coalesced packet) change nothing;
//! * one changed octet never goes through: a changed CID, token, packet number, payload or
//!   tag octet, or protected first-octet bit, is `Decrypt`; a changed version octet is
//!   `UnsupportedVersion`; a changed length octet some error;
//! * frames in clear: compared with a plain reassembly of the CRYPTO stream (`ref_crypto_stream`):
//!   frames it refuses are `Malformed`; a stream whose first 4 octets are missing is
//!   `Incomplete`, one that starts with another message `NotClientHello`; an accepted server
//!   name lies in the stream as a `host_name` entry (type 0, 16-bit length, the name), an
//!   accepted ALPN list as a `ProtocolNameList` (16-bit length, the names), every octet of
//!   them received, inside the ClientHello;
//! * a ClientHello built from a description (any server name, 0..=4 ALPN names, extension
//!   order, an unknown extension, cut into CRYPTO frames sent in any order, duplicated, with
//!   PING and ACK frames between, or only a prefix of it): exactly the server name and ALPN
//!   list it was built with, or `Incomplete` when the prefix sent ends before the parse has
//!   read both (or, one of them absent, every extension header).

#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use xdp_quic::packet::client_hello::testing::Initial;
use xdp_quic::packet::client_hello::{
    canonical_server_name, peek, peek_with, ClientHelloInfo, PeekError, Scratch,
    MAX_CLIENT_HELLO_LEN, MAX_PACKET_LEN,
};
use xdp_quic_fuzz::{ref_crypto_stream, ClientHelloInput, HelloPayload, RefStream, TRAILER};

thread_local! {
    /// One scratch for every run: what an earlier peek left in it must not matter.
    static SCRATCH: RefCell<Box<Scratch>> = RefCell::new(Box::new(Scratch::new()));
}

fuzz_target!(|data: &[u8]| {
    arbitrary_datagram(data);
    sealed_packet(&ClientHelloInput::decode(data));
});

/// `peek`, checked against `peek_with` and for the invariants of any answer.
fn peek_checked(datagram: &[u8]) -> Result<ClientHelloInfo, PeekError> {
    let owned = peek(datagram);
    let borrowed = SCRATCH.with(|s| {
        peek_with(datagram, &mut s.borrow_mut()).map(|hello| {
            assert_eq!(hello.alpn.is_empty(), hello.alpn.iter().next().is_none());
            for name in hello.alpn {
                assert!(hello.alpn.contains(name));
            }
            hello.to_info()
        })
    });
    assert_eq!(owned, borrowed, "peek and peek_with disagree");
    match &owned {
        Ok(info) => {
            if let Some(name) = &info.server_name {
                assert!((1..=MAX_CLIENT_HELLO_LEN).contains(&name.len()));
                assert!(name.bytes().all(|b| b.is_ascii_graphic()), "{name:?}");
            }
            let mut list = 0;
            for name in &info.alpn {
                assert!(
                    (1..=255).contains(&name.len()),
                    "ALPN name of {}",
                    name.len()
                );
                list += 1 + name.len();
            }
            assert!(list <= MAX_CLIENT_HELLO_LEN);
        }
        Err(e) => drop(e.to_string()),
    }
    owned
}

fn arbitrary_datagram(d: &[u8]) {
    let r = peek_checked(d);
    let Some(&first) = d.first() else {
        assert_eq!(r, Err(PeekError::Truncated));
        return;
    };
    if first & 0x80 == 0 {
        assert_eq!(r, Err(PeekError::NotInitial));
        return;
    }
    let Some(version) = d.get(1..5) else {
        assert_eq!(r, Err(PeekError::Truncated));
        return;
    };
    let version = u32::from_be_bytes(version.try_into().unwrap());
    if version != 1 {
        assert_eq!(r, Err(PeekError::UnsupportedVersion(version)));
    } else if first & 0x30 != 0 {
        assert_eq!(r, Err(PeekError::NotInitial));
    } else {
        assert!(!matches!(
            r,
            Err(PeekError::NotInitial | PeekError::UnsupportedVersion(_))
        ));
    }
}

fn sealed_packet(input: &ClientHelloInput<'_>) {
    let initial = input.initial();
    let packet = initial.seal();
    let len = packet.len();
    let pn_offset = input.pn_offset();
    let payload_len = initial.payload.len().max(4 - input.pn_len);
    assert_eq!(len, pn_offset + input.pn_len + payload_len + 16);
    let too_large = len > MAX_PACKET_LEN;

    let mut datagram = packet.clone();
    if input.trailer {
        datagram.extend_from_slice(&TRAILER);
    }

    if let Some(at) = input.flip {
        let i = usize::from(at) % len;
        datagram[i] ^= 1;
        let r = peek_checked(&datagram);
        let (dcid, scid, token) = (input.dcid.len(), input.scid.len(), input.token.len());
        let length_octets = [5, 6 + dcid, 7 + dcid + scid, pn_offset - 2, pn_offset - 1];
        if (1..5).contains(&i) {
            let v = u32::from_be_bytes(datagram[1..5].try_into().unwrap());
            assert_eq!(r, Err(PeekError::UnsupportedVersion(v)));
        } else if length_octets.contains(&i) {
            assert!(r.is_err(), "octet {i} changed: {r:?}");
        } else {
            // The protected low bits of the first octet, a CID, the token, the packet number,
            // the payload, the tag: all authenticated.
            assert!(i == 0 || (6..8 + dcid + scid + token).contains(&i) || i >= pn_offset);
            let want = if too_large {
                PeekError::TooLarge
            } else {
                PeekError::Decrypt
            };
            assert_eq!(r, Err(want), "octet {i} changed");
        }
        return;
    }

    let r = peek_checked(&datagram);
    if input.trailer {
        assert_eq!(
            r,
            peek_checked(&packet),
            "a coalesced packet changed the answer"
        );
    }
    if too_large {
        assert_eq!(r, Err(PeekError::TooLarge));
        return;
    }
    if input.reserved != 0 {
        assert_eq!(r, Err(PeekError::Malformed));
        return;
    }

    // Opened back to what was sealed (the packet number truncated to its length, the payload
    // padded for the header-protection sample).
    let opened = Initial::open(&datagram).expect("a sealed Initial opens");
    let mut want = initial.clone();
    want.pn &= u32::MAX >> (32 - 8 * input.pn_len);
    want.payload.resize(payload_len, 0);
    assert_eq!(opened, want);

    let stream = ref_crypto_stream(&opened.payload);
    match &input.payload {
        HelloPayload::Built(spec) => {
            let built = spec.build();
            let s = stream.expect("built frames are well formed");
            assert_eq!(s.get(0, built.sent), Some(&built.message[..built.sent]));
            assert_eq!(r, built.expected, "{spec:?}, sent {}", built.sent);
        }
        HelloPayload::Frames(_) => against_stream(&r, stream.as_ref()),
    }
}

/// The answer on arbitrary frames, checked against the plain reassembly of their stream.
fn against_stream(r: &Result<ClientHelloInfo, PeekError>, stream: Option<&RefStream>) {
    let Some(s) = stream else {
        assert_eq!(*r, Err(PeekError::Malformed));
        return;
    };
    let Some(head) = s.get(0, 4) else {
        assert_eq!(*r, Err(PeekError::Incomplete));
        return;
    };
    if head[0] != 1 {
        assert_eq!(*r, Err(PeekError::NotClientHello));
        return;
    }
    let info = match r {
        Ok(info) => info,
        Err(e) => {
            assert!(
                matches!(e, PeekError::Malformed | PeekError::Incomplete),
                "{e:?}"
            );
            return;
        }
    };
    let hello_len = u32::from_be_bytes([0, head[1], head[2], head[3]]) as usize;
    let end = (4 + hello_len).min(MAX_CLIENT_HELLO_LEN);
    // Received octets of the ClientHello, after its header, that spell `needle`.
    let within = |needle: &[u8]| {
        s.data[..end]
            .windows(needle.len())
            .enumerate()
            .any(|(at, w)| at >= 4 && w == needle && s.get(at, needle.len()).is_some())
    };
    if let Some(name) = &info.server_name {
        // A received host_name entry (type 0, length, name) that the name is the canonical
        // form of (lower case, one trailing dot dropped).
        let found = (4..end).any(|at| {
            let Some(head) = s.get(at, 3) else {
                return false;
            };
            let len = usize::from(u16::from_be_bytes([head[1], head[2]]));
            head[0] == 0
                && at + 3 + len <= end
                && s.get(at + 3, len)
                    .and_then(|raw| std::str::from_utf8(raw).ok())
                    .and_then(canonical_server_name)
                    .is_some_and(|c| c == *name)
        });
        assert!(found, "server name {name:?} not in the ClientHello");
    }
    if !info.alpn.is_empty() {
        let list = xdp_quic_fuzz::alpn_list(&info.alpn);
        assert!(within(&list), "ALPN {:?} not in the ClientHello", info.alpn);
    }
}
