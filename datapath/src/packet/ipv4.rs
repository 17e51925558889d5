//! IPv4 headers (RFC 791): parsing with any IHL (options are skipped, not interpreted) and
//! writing of option-less headers.

use std::net::Ipv4Addr;

use super::checksum;
use super::frame::ParseError;

/// Length of an IPv4 header without options.
pub const HEADER_LEN: usize = 20;
/// TTL written by [`write`](fn@write).
pub const TTL: u8 = 64;
/// Flags/fragment-offset word with only Don't Fragment set.
const FLAG_DF: u16 = 0x4000;
/// More Fragments flag and fragment offset.
const FRAGMENT_MASK: u16 = 0x3fff;

/// The fields of a parsed IPv4 header the datapath uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Header {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// ECN bits (the low two bits of the TOS octet).
    pub ecn: u8,
    /// Protocol number of the payload.
    pub protocol: u8,
    /// Header length in octets (IHL × 4).
    pub header_len: usize,
}

/// Parses the IPv4 packet at the start of `packet` and returns its header and payload. Bytes
/// after the total length (Ethernet padding) are dropped from the payload.
///
/// Errors: [`ParseError::Truncated`] (shorter than 20 octets, than the IHL, or than the total
/// length), [`ParseError::BadIpHeader`] (version not 4, IHL < 5, or total length < IHL × 4),
/// then — only when `verify_checksum` — [`ParseError::BadChecksum`] (wrong header checksum),
/// then [`ParseError::Fragment`] (MF set or nonzero offset). The protocol is not checked.
#[inline]
pub fn parse(packet: &[u8], verify_checksum: bool) -> Result<(Ipv4Header, &[u8]), ParseError> {
    let h = packet
        .first_chunk::<HEADER_LEN>()
        .ok_or(ParseError::Truncated)?;
    if h[0] >> 4 != 4 {
        return Err(ParseError::BadIpHeader);
    }
    let header_len = usize::from(h[0] & 0x0f) * 4;
    if header_len < HEADER_LEN {
        return Err(ParseError::BadIpHeader);
    }
    let total_len = usize::from(u16::from_be_bytes([h[2], h[3]]));
    if total_len < header_len {
        return Err(ParseError::BadIpHeader);
    }
    let packet = packet.get(..total_len).ok_or(ParseError::Truncated)?;
    let (header, payload) = packet
        .split_at_checked(header_len)
        .ok_or(ParseError::Truncated)?;
    if verify_checksum && checksum::ipv4_header(header) != 0 {
        return Err(ParseError::BadChecksum);
    }
    if u16::from_be_bytes([h[6], h[7]]) & FRAGMENT_MASK != 0 {
        return Err(ParseError::Fragment);
    }
    let ip = Ipv4Header {
        src: Ipv4Addr::new(h[12], h[13], h[14], h[15]),
        dst: Ipv4Addr::new(h[16], h[17], h[18], h[19]),
        ecn: h[1] & 0b11,
        protocol: h[9],
        header_len,
    };
    Ok((ip, payload))
}

/// Writes an option-less IPv4 header into `h`: DSCP 0, `ecn & 3`, total length
/// `20 + payload_len`, id 0, DF, TTL [`TTL`], `protocol`, and the header checksum.
///
/// Contract: `payload_len <= 65535 - 20` (the caller checks; larger values are truncated).
#[inline]
pub fn write(
    h: &mut [u8; HEADER_LEN],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ecn: u8,
    protocol: u8,
    payload_len: usize,
) {
    let [l0, l1] = ((HEADER_LEN + payload_len) as u16).to_be_bytes();
    let [f0, f1] = FLAG_DF.to_be_bytes();
    let [s0, s1, s2, s3] = src.octets();
    let [d0, d1, d2, d3] = dst.octets();
    *h = [
        0x45,
        ecn & 0b11,
        l0,
        l1,
        0,
        0,
        f0,
        f1,
        TTL,
        protocol,
        0,
        0,
        s0,
        s1,
        s2,
        s3,
        d0,
        d1,
        d2,
        d3,
    ];
    let [c0, c1] = checksum::ipv4_header(h).to_be_bytes();
    h[10] = c0;
    h[11] = c1;
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const DST: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    fn packet(payload_len: usize) -> Vec<u8> {
        let mut p = vec![0u8; HEADER_LEN + payload_len];
        let h = p.first_chunk_mut::<HEADER_LEN>().unwrap();
        write(h, SRC, DST, 2, 17, payload_len);
        p
    }

    #[test]
    fn round_trip() {
        let p = packet(12);
        assert_eq!(checksum::ipv4_header(&p[..20]), 0);
        let (h, payload) = parse(&p, true).unwrap();
        assert_eq!(
            (h.src, h.dst, h.ecn, h.protocol, h.header_len),
            (SRC, DST, 2, 17, 20)
        );
        assert_eq!(payload.len(), 12);
        assert_eq!(&p[6..9], &[0x40, 0, 64]);
    }

    #[test]
    fn options_are_skipped() {
        let mut p = packet(12);
        // Grow IHL to 6 with one NOP-padded option word; fix lengths and checksum.
        p.splice(20..20, [1u8, 1, 1, 0]);
        p[0] = 0x46;
        p[2..4].copy_from_slice(&36u16.to_be_bytes());
        p[10..12].fill(0);
        let c = checksum::ipv4_header(&p[..24]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        let (h, payload) = parse(&p, true).unwrap();
        assert_eq!(h.header_len, 24);
        assert_eq!(payload.len(), 12);
    }

    #[test]
    fn header_errors() {
        let p = packet(8);
        let mut bad = p.clone();
        bad[0] = 0x65;
        assert_eq!(parse(&bad, false), Err(ParseError::BadIpHeader));
        bad[0] = 0x44;
        assert_eq!(parse(&bad, false), Err(ParseError::BadIpHeader));
        let mut bad = p.clone();
        bad[2..4].copy_from_slice(&19u16.to_be_bytes());
        assert_eq!(parse(&bad, false), Err(ParseError::BadIpHeader));
        let mut bad = p.clone();
        bad[2..4].copy_from_slice(&29u16.to_be_bytes());
        assert_eq!(parse(&bad, false), Err(ParseError::Truncated));
        let mut bad = p.clone();
        bad[8] = 63; // TTL changed, checksum not
        assert_eq!(parse(&bad, true), Err(ParseError::BadChecksum));
        assert!(parse(&bad, false).is_ok());
    }

    #[test]
    fn fragments() {
        for flags in [0x2000u16, 0x0001, 0x1fff, 0x6000 | 0x0010] {
            let mut p = packet(8);
            p[6..8].copy_from_slice(&flags.to_be_bytes());
            assert_eq!(parse(&p, false), Err(ParseError::Fragment), "{flags:#x}");
        }
    }
}
