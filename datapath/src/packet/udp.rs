//! UDP headers (RFC 768). Checksums are computed by the caller, which knows the IP
//! pseudo-header (see [`super::checksum`]).

use super::frame::ParseError;

/// Length of the UDP header.
pub const HEADER_LEN: usize = 8;

/// A parsed UDP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpHeader {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// The length field: header plus payload, in octets.
    pub len: u16,
    /// The checksum field as received (0: none, allowed over IPv4 only).
    pub checksum: u16,
}

/// Parses the UDP datagram at the start of `segment` (the IP payload). Returns the header, the
/// datagram (`len` octets: header and payload, as checksummed) and the payload. Octets of the
/// IP payload after the UDP length are ignored, as Linux does.
///
/// Errors: [`ParseError::Truncated`] (shorter than 8 octets), [`ParseError::BadLength`]
/// (length field < 8 or greater than `segment.len()`).
#[inline]
pub fn parse(segment: &[u8]) -> Result<(UdpHeader, &[u8], &[u8]), ParseError> {
    let h = segment
        .first_chunk::<HEADER_LEN>()
        .ok_or(ParseError::Truncated)?;
    let udp = UdpHeader {
        src_port: u16::from_be_bytes([h[0], h[1]]),
        dst_port: u16::from_be_bytes([h[2], h[3]]),
        len: u16::from_be_bytes([h[4], h[5]]),
        checksum: u16::from_be_bytes([h[6], h[7]]),
    };
    let len = usize::from(udp.len);
    if len < HEADER_LEN {
        return Err(ParseError::BadLength);
    }
    let datagram = segment.get(..len).ok_or(ParseError::BadLength)?;
    let payload = datagram.get(HEADER_LEN..).ok_or(ParseError::BadLength)?;
    Ok((udp, datagram, payload))
}

/// Writes a UDP header into `h` with length `8 + payload_len` and the given checksum field.
///
/// Contract: `payload_len <= 65535 - 8` (the caller checks; larger values are truncated).
#[inline]
pub fn write(
    h: &mut [u8; HEADER_LEN],
    src_port: u16,
    dst_port: u16,
    payload_len: usize,
    checksum: u16,
) {
    let [s0, s1] = src_port.to_be_bytes();
    let [d0, d1] = dst_port.to_be_bytes();
    let [l0, l1] = ((HEADER_LEN + payload_len) as u16).to_be_bytes();
    let [c0, c1] = checksum.to_be_bytes();
    *h = [s0, s1, d0, d1, l0, l1, c0, c1];
}

/// Sets the checksum field of a UDP header written by [`write`](fn@write), mapping a computed 0 to
/// 0xffff (RFC 768: 0 means "no checksum").
#[inline]
pub fn set_checksum(h: &mut [u8; HEADER_LEN], checksum: u16) {
    let c = if checksum == 0 { 0xffff } else { checksum };
    [h[6], h[7]] = c.to_be_bytes();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_lengths() {
        let mut seg = [0u8; 8 + 5 + 2];
        let h = seg.first_chunk_mut().unwrap();
        write(h, 1234, 4433, 5, 0);
        set_checksum(h, 0);
        assert_eq!(&seg[..8], &[0x04, 0xd2, 0x11, 0x51, 0, 13, 0xff, 0xff]);
        let (udp, datagram, payload) = parse(&seg).unwrap();
        assert_eq!(
            (udp.src_port, udp.dst_port, udp.len, udp.checksum),
            (1234, 4433, 13, 0xffff)
        );
        assert_eq!((datagram.len(), payload.len()), (13, 5));
        assert_eq!(parse(&seg[..12]).unwrap_err(), ParseError::BadLength);
        for cut in 0..8 {
            assert_eq!(parse(&seg[..cut]).unwrap_err(), ParseError::Truncated);
        }
        for bad in [0u16, 7] {
            seg[4..6].copy_from_slice(&bad.to_be_bytes());
            assert_eq!(parse(&seg).unwrap_err(), ParseError::BadLength);
        }
    }
}
