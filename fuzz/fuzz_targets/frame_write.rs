//! `frame_write`: the frame writer (`packet::frame::write`) over arbitrary arguments, each
//! frame read back by `parse`. Input format: `FrameWriteInput` in `src/lib.rs`.
//!
//! * the result is exactly the documented one: `MixedFamilies` when the families differ after
//!   unmapping IPv4-mapped addresses, `TooLarge` when the payload exceeds what the length
//!   fields express (65507 octets over IPv4, 65527 over IPv6) or the buffer is shorter than
//!   `header_len + payload`, else `Ok(header_len + payload)`;
//! * octets of the buffer past the frame are untouched;
//! * the frame parses back, checksums verified, to the same L2, unmapped addresses (flow info
//!   and scope id 0), `ecn & 3` and payload, when the VLAN TPID is one `parse` knows; with an
//!   unknown TPID it is `NotIp` (unless the TPID is itself the IPv4/IPv6 EtherType);
//! * its truncations (every cut through the headers and the first 2 payload octets, the middle
//!   and the last 8 octets) are refused as `Truncated`, with and without verification.

#![no_main]

use std::net::{SocketAddr, SocketAddrV6};

use libfuzzer_sys::fuzz_target;
use xdp_quic::packet::frame::{self, BuildError, ParseError, UdpFrame};
use xdp_quic_fuzz::FrameWriteInput;

const SENTINEL: u8 = 0xa5;

fuzz_target!(|data: &[u8]| {
    let input = FrameWriteInput::decode(data);
    let (src, dst) = (canonical(input.src), canonical(input.dst));
    let v6 = src.is_ipv6();
    let need = frame::header_len(&input.l2, v6) + input.payload.len();
    let len = (need + input.long_by).saturating_sub(input.short_by);
    let mut buf = vec![SENTINEL; len + 64];
    let r = frame::write(
        &mut buf[..len],
        &input.l2,
        input.src,
        input.dst,
        input.ecn,
        &input.payload,
    );

    let max_payload = if v6 { 65_527 } else { 65_507 };
    let want = if src.is_ipv6() != dst.is_ipv6() {
        Err(BuildError::MixedFamilies)
    } else if input.payload.len() > max_payload || len < need {
        Err(BuildError::TooLarge)
    } else {
        Ok(need)
    };
    assert_eq!(r, want, "input {input:?}");
    assert!(
        buf[len..].iter().all(|&b| b == SENTINEL),
        "write went past the buffer it was given"
    );
    let Ok(n) = r else { return };
    assert!(
        buf[n..len].iter().all(|&b| b == SENTINEL),
        "octets past the frame touched"
    );
    let frame = &buf[..n];

    match input.l2.vlan {
        Some((tpid, _)) if tpid != 0x8100 && tpid != 0x88a8 => {
            if tpid != 0x0800 && tpid != 0x86dd {
                assert_eq!(frame::parse(frame, true), Err(ParseError::NotIp));
                assert_eq!(frame::parse(frame, false), Err(ParseError::NotIp));
            }
            // Else the tag is read as an IP header: anything may come out, but no panic.
            let _ = frame::parse(frame, true);
        }
        _ => {
            let expect = UdpFrame {
                l2: input.l2,
                src,
                dst,
                ecn: input.ecn & 3,
                payload: &input.payload,
            };
            assert_eq!(frame::parse(frame, true), Ok(expect));
            assert_eq!(frame::parse(frame, false), Ok(expect));
            // Every cut through the headers and the first payload octets, the middle and the
            // last 8 octets (all payload cuts are alike: the IP length says more).
            let head = frame::header_len(&input.l2, v6) + 2;
            let tail = n.saturating_sub(8).max(head);
            let cuts = (0..n.min(head)).chain([(head + n) / 2]).chain(tail..n);
            for cut in cuts.filter(|&c| c < n) {
                assert_eq!(
                    frame::parse(&frame[..cut], true),
                    Err(ParseError::Truncated)
                );
                assert_eq!(
                    frame::parse(&frame[..cut], false),
                    Err(ParseError::Truncated)
                );
            }
        }
    }
});

/// The address as `parse` reports it after `write`: unmapped, flow info and scope id 0.
fn canonical(a: SocketAddr) -> SocketAddr {
    match frame::unmap(a) {
        SocketAddr::V6(v6) => SocketAddr::V6(SocketAddrV6::new(*v6.ip(), v6.port(), 0, 0)),
        v4 => v4,
    }
}
