//! Just enough of the QUIC invariants (RFC 8999) to route a datagram: the header form, the
//! long-header packet type, and the destination connection ID.

/// Version 1 (RFC 9000) and the IETF drafts quinn-proto still speaks share one type mapping.
const VERSION_1: u32 = 1;
const DRAFT_MASK: u32 = 0xff00_0000;

/// The packet types of a QUIC v1 long header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LongType {
    Initial,
    ZeroRtt,
    Handshake,
    Retry,
}

/// What the first packet of a datagram says about routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header<'a> {
    /// Short header: `dcid` is the first `cid_len` octets after the first byte.
    Short { dcid: &'a [u8] },
    /// Long header of QUIC v1 (or a draft quinn-proto speaks).
    Long { ty: LongType, dcid: &'a [u8] },
    /// A Version Negotiation packet (version 0): a server's answer to a connection this host
    /// opened, whose CID it echoes as `dcid`.
    VersionNegotiation { dcid: &'a [u8] },
    /// Long header of an unknown version (version negotiation is the endpoint's business).
    Other,
}

/// Reasons a datagram cannot be a QUIC packet addressed to us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderError {
    /// Empty datagram.
    Empty,
    /// Shorter than the header it announces.
    Truncated,
}

/// Reads the routing-relevant part of the first QUIC packet of `datagram`.
///
/// `cid_len` is the length of the CIDs this endpoint issues (short headers do not say it).
pub fn peek(datagram: &[u8], cid_len: usize) -> Result<Header<'_>, HeaderError> {
    let first = *datagram.first().ok_or(HeaderError::Empty)?;
    if first & 0x80 == 0 {
        let dcid = datagram.get(1..1 + cid_len).ok_or(HeaderError::Truncated)?;
        return Ok(Header::Short { dcid });
    }
    let version = datagram.get(1..5).ok_or(HeaderError::Truncated)?;
    let version = u32::from_be_bytes([version[0], version[1], version[2], version[3]]);
    let dcid_len = usize::from(*datagram.get(5).ok_or(HeaderError::Truncated)?);
    let dcid = datagram
        .get(6..6 + dcid_len)
        .ok_or(HeaderError::Truncated)?;
    if version == 0 {
        return Ok(Header::VersionNegotiation { dcid });
    }
    if version != VERSION_1 && version & DRAFT_MASK != DRAFT_MASK {
        return Ok(Header::Other);
    }
    let ty = match (first >> 4) & 0b11 {
        0b00 => LongType::Initial,
        0b01 => LongType::ZeroRtt,
        0b10 => LongType::Handshake,
        _ => LongType::Retry,
    };
    Ok(Header::Long { ty, dcid })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn long(first: u8, version: u32, dcid: &[u8]) -> Vec<u8> {
        let mut v = vec![first];
        v.extend_from_slice(&version.to_be_bytes());
        v.push(dcid.len() as u8);
        v.extend_from_slice(dcid);
        v.extend_from_slice(&[0; 20]);
        v
    }

    #[test]
    fn short_header() {
        let d = [0x40, 1, 2, 3, 4, 5, 6, 7, 8, 9];
        assert_eq!(peek(&d, 8), Ok(Header::Short { dcid: &d[1..9] }));
        assert_eq!(peek(&d[..5], 8), Err(HeaderError::Truncated));
        assert_eq!(peek(&[], 8), Err(HeaderError::Empty));
    }

    #[test]
    fn long_header_types() {
        let cid = [9u8; 8];
        let initial = long(0xc0, 1, &cid);
        let l = |ty| Ok(Header::Long { ty, dcid: &cid });
        assert_eq!(peek(&initial, 8), l(LongType::Initial));
        let zero_rtt = long(0xd0, 1, &cid);
        assert_eq!(peek(&zero_rtt, 8), l(LongType::ZeroRtt));
        let hs = long(0xe0, 1, &cid);
        assert_eq!(peek(&hs, 8), l(LongType::Handshake));
        let retry = long(0xf0, 1, &cid);
        assert_eq!(peek(&retry, 8), l(LongType::Retry));
        let draft = long(0xe0, 0xff00_001d, &cid);
        assert_eq!(peek(&draft, 8), l(LongType::Handshake));
        let unknown = long(0xe0, 0x6b33_43cf, &cid);
        assert_eq!(peek(&unknown, 8), Ok(Header::Other));
        let vn = long(0x80, 0, &cid);
        assert_eq!(peek(&vn, 8), Ok(Header::VersionNegotiation { dcid: &cid }));
    }

    #[test]
    fn truncated_long_headers() {
        let cid = [1u8; 8];
        let p = long(0xc0, 1, &cid);
        for n in 1..14 {
            assert_eq!(peek(&p[..n], 8), Err(HeaderError::Truncated), "len {n}");
        }
        assert!(peek(&p[..14], 8).is_ok());
    }
}
