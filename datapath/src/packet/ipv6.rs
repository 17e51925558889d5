//! IPv6 fixed headers (RFC 8200). Extension headers are not walked: the datapath only takes
//! UDP directly after the fixed header, and the caller treats any other next header as not
//! UDP.

use std::net::Ipv6Addr;

use super::frame::ParseError;

/// Length of the IPv6 fixed header.
pub const HEADER_LEN: usize = 40;
/// Hop limit written by [`write`](fn@write).
pub const HOP_LIMIT: u8 = 64;

/// The fields of a parsed IPv6 fixed header the datapath uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Header {
    /// Source address.
    pub src: Ipv6Addr,
    /// Destination address.
    pub dst: Ipv6Addr,
    /// ECN bits (the low two bits of the traffic class).
    pub ecn: u8,
    /// Next header (protocol of the payload, or an extension header).
    pub next_header: u8,
}

#[inline]
fn addr(b: &[u8; 16]) -> Ipv6Addr {
    Ipv6Addr::from(*b)
}

/// Parses the IPv6 packet at the start of `packet` and returns its fixed header and payload
/// (`payload length` octets; Ethernet padding after them is dropped).
///
/// Errors: [`ParseError::Truncated`] (shorter than 40 octets or than 40 + payload length),
/// [`ParseError::BadIpHeader`] (version not 6). Payload length 0 (a jumbogram or an empty
/// packet) yields an empty payload.
#[inline]
pub fn parse(packet: &[u8]) -> Result<(Ipv6Header, &[u8]), ParseError> {
    let (h, rest) = packet
        .split_first_chunk::<HEADER_LEN>()
        .ok_or(ParseError::Truncated)?;
    if h[0] >> 4 != 6 {
        return Err(ParseError::BadIpHeader);
    }
    let payload_len = usize::from(u16::from_be_bytes([h[4], h[5]]));
    let payload = rest.get(..payload_len).ok_or(ParseError::Truncated)?;
    let (src, dst) = h[8..]
        .split_first_chunk::<16>()
        .and_then(|(s, d)| Some((s, d.first_chunk::<16>()?)))
        .ok_or(ParseError::Truncated)?;
    let ip = Ipv6Header {
        src: addr(src),
        dst: addr(dst),
        // Traffic class spans the low nibble of octet 0 and the high nibble of octet 1.
        ecn: (h[1] >> 4) & 0b11,
        next_header: h[6],
    };
    Ok((ip, payload))
}

/// Writes an IPv6 fixed header into `h`: traffic class `ecn & 3` (DSCP 0), flow label 0,
/// payload length `payload_len`, `next_header`, hop limit [`HOP_LIMIT`].
///
/// Contract: `payload_len <= 65535` (the caller checks; larger values are truncated).
#[inline]
pub fn write(
    h: &mut [u8; HEADER_LEN],
    src: &Ipv6Addr,
    dst: &Ipv6Addr,
    ecn: u8,
    next_header: u8,
    payload_len: usize,
) {
    let [l0, l1] = (payload_len as u16).to_be_bytes();
    let (fixed, addrs) = h.split_at_mut(8);
    fixed.copy_from_slice(&[
        0x60,
        (ecn & 0b11) << 4,
        0,
        0,
        l0,
        l1,
        next_header,
        HOP_LIMIT,
    ]);
    let (s, d) = addrs.split_at_mut(16);
    s.copy_from_slice(&src.octets());
    d.copy_from_slice(&dst.octets());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let src: Ipv6Addr = "fe80::1".parse().unwrap();
        let dst: Ipv6Addr = "2001:db8::42".parse().unwrap();
        for ecn in 0..4u8 {
            let mut p = vec![0u8; HEADER_LEN + 10 + 3];
            write(p.first_chunk_mut().unwrap(), &src, &dst, ecn, 17, 10);
            let (h, payload) = parse(&p).unwrap();
            assert_eq!(
                h,
                Ipv6Header {
                    src,
                    dst,
                    ecn,
                    next_header: 17
                }
            );
            assert_eq!(payload.len(), 10, "padding dropped");
            for cut in 0..HEADER_LEN + 10 {
                assert_eq!(parse(&p[..cut]), Err(ParseError::Truncated));
            }
            p[0] = 0x40;
            assert_eq!(parse(&p), Err(ParseError::BadIpHeader));
        }
    }

    #[test]
    fn known_bytes() {
        let mut h = [0u8; HEADER_LEN];
        let a = Ipv6Addr::LOCALHOST;
        write(&mut h, &a, &a, 3, 17, 0x1234);
        assert_eq!(&h[..8], &[0x60, 0x30, 0, 0, 0x12, 0x34, 17, 64]);
    }
}
