//! Ethernet II headers with at most one 802.1Q / 802.1ad VLAN tag.
//!
//! The frame check sequence is not part of what AF_XDP hands over, so it is neither read nor
//! written. A second tag (QinQ) is not parsed: its TPID is then the EtherType the caller sees.

use super::frame::ParseError;

/// Length of an untagged Ethernet II header: two MACs and the EtherType.
pub const HEADER_LEN: usize = 14;
/// Length of one VLAN tag (TPID + TCI).
pub const VLAN_TAG_LEN: usize = 4;
/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType of IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
/// TPID of an 802.1Q (customer) VLAN tag.
pub const TPID_8021Q: u16 = 0x8100;
/// TPID of an 802.1ad (service) VLAN tag.
pub const TPID_8021AD: u16 = 0x88a8;

/// A parsed Ethernet header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthHeader {
    /// Destination MAC.
    pub dst: [u8; 6],
    /// Source MAC.
    pub src: [u8; 6],
    /// The VLAN tag, if any: (TPID, TCI).
    pub vlan: Option<(u16, u16)>,
    /// EtherType of the payload (after the tag, if any).
    pub ethertype: u16,
}

/// Whether `tpid` announces a VLAN tag this module understands.
#[inline]
pub fn is_vlan_tpid(tpid: u16) -> bool {
    tpid == TPID_8021Q || tpid == TPID_8021AD
}

/// Header length with or without one VLAN tag.
#[inline]
pub fn header_len(vlan: bool) -> usize {
    if vlan {
        HEADER_LEN + VLAN_TAG_LEN
    } else {
        HEADER_LEN
    }
}

/// Parses the Ethernet header of `frame` and returns it with the rest of the frame.
///
/// Errors: [`ParseError::Truncated`] when the frame is shorter than its header. Any EtherType
/// is accepted; the caller decides what it carries.
#[inline]
pub fn parse(frame: &[u8]) -> Result<(EthHeader, &[u8]), ParseError> {
    let (h, rest) = frame
        .split_first_chunk::<HEADER_LEN>()
        .ok_or(ParseError::Truncated)?;
    let dst = [h[0], h[1], h[2], h[3], h[4], h[5]];
    let src = [h[6], h[7], h[8], h[9], h[10], h[11]];
    let ethertype = u16::from_be_bytes([h[12], h[13]]);
    if !is_vlan_tpid(ethertype) {
        let eth = EthHeader {
            dst,
            src,
            vlan: None,
            ethertype,
        };
        return Ok((eth, rest));
    }
    let (tag, rest) = rest
        .split_first_chunk::<VLAN_TAG_LEN>()
        .ok_or(ParseError::Truncated)?;
    let tci = u16::from_be_bytes([tag[0], tag[1]]);
    let inner = u16::from_be_bytes([tag[2], tag[3]]);
    let eth = EthHeader {
        dst,
        src,
        vlan: Some((ethertype, tci)),
        ethertype: inner,
    };
    Ok((eth, rest))
}

/// Writes an Ethernet header (with `vlan` = (TPID, TCI) when given) at the start of `buf`;
/// returns its length, or `None` when `buf` is shorter than [`header_len`].
#[inline]
pub fn write(
    buf: &mut [u8],
    dst: &[u8; 6],
    src: &[u8; 6],
    vlan: Option<(u16, u16)>,
    ethertype: u16,
) -> Option<usize> {
    let (macs, rest) = buf.split_first_chunk_mut::<12>()?;
    macs[..6].copy_from_slice(dst);
    macs[6..].copy_from_slice(src);
    match vlan {
        None => {
            let t = rest.first_chunk_mut::<2>()?;
            *t = ethertype.to_be_bytes();
            Some(HEADER_LEN)
        }
        Some((tpid, tci)) => {
            let t = rest.first_chunk_mut::<6>()?;
            let [a, b] = tpid.to_be_bytes();
            let [c, d] = tci.to_be_bytes();
            let [e, f] = ethertype.to_be_bytes();
            *t = [a, b, c, d, e, f];
            Some(HEADER_LEN + VLAN_TAG_LEN)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DST: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
    const SRC: [u8; 6] = [0x02, 0, 0, 0, 0, 2];

    #[test]
    fn round_trip_untagged_and_tagged() {
        for vlan in [None, Some((TPID_8021Q, 0x2064)), Some((TPID_8021AD, 7))] {
            let mut buf = [0xaau8; 32];
            let n = write(&mut buf, &DST, &SRC, vlan, ETHERTYPE_IPV6).unwrap();
            assert_eq!(n, header_len(vlan.is_some()));
            let (eth, rest) = parse(&buf).unwrap();
            assert_eq!(
                eth,
                EthHeader {
                    dst: DST,
                    src: SRC,
                    vlan,
                    ethertype: ETHERTYPE_IPV6
                }
            );
            assert_eq!(rest.len(), 32 - n);
            for cut in 0..n {
                assert_eq!(parse(&buf[..cut]), Err(ParseError::Truncated));
                assert_eq!(write(&mut buf[..cut], &DST, &SRC, vlan, 1), None);
            }
        }
    }

    #[test]
    fn second_tag_is_left_as_ethertype() {
        let mut buf = [0u8; 22];
        write(&mut buf, &DST, &SRC, Some((TPID_8021AD, 1)), TPID_8021Q).unwrap();
        let (eth, _) = parse(&buf).unwrap();
        assert_eq!(eth.vlan, Some((TPID_8021AD, 1)));
        assert_eq!(eth.ethertype, TPID_8021Q);
    }

    #[test]
    fn known_bytes() {
        let mut buf = [0u8; 18];
        write(
            &mut buf,
            &DST,
            &SRC,
            Some((TPID_8021Q, 0xe00a)),
            ETHERTYPE_IPV4,
        )
        .unwrap();
        assert_eq!(&buf[12..], &[0x81, 0x00, 0xe0, 0x0a, 0x08, 0x00]);
    }
}
