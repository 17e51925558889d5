//! The internet checksum (RFC 1071): the 16-bit one's complement of the one's complement sum
//! of 16-bit big-endian words.
//!
//! [`Sum`] accumulates slices in 32-bit native-endian words into a 64-bit accumulator and folds
//! once at the end. Byte order does not matter to a one's complement sum (RFC 1071 §2(B)) as
//! long as every word is read the same way, so the native-endian result is byte-swapped into
//! network order only when folded.

use std::net::{Ipv4Addr, Ipv6Addr};

/// IP protocol number of UDP (IPv4 `protocol`, IPv6 `next header`).
pub const PROTO_UDP: u8 = 17;

/// A running one's complement sum, not yet folded.
///
/// Contract: every slice passed to [`Sum::add_bytes`] is summed as if it started at an even offset
/// of the checksummed data; only the last slice may have an odd length (its last byte is
/// padded with a zero octet, as RFC 1071 prescribes). The accumulator cannot overflow below
/// 16 GiB of data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sum(u64);

impl Sum {
    /// An empty sum.
    #[inline]
    pub const fn new() -> Self {
        Sum(0)
    }

    /// Adds `data` to the sum (see the type's contract about odd lengths).
    #[inline]
    pub fn add_bytes(self, data: &[u8]) -> Self {
        let mut acc = self.0;
        let (blocks, rest) = data.as_chunks::<32>();
        for block in blocks {
            let (words, _) = block.as_chunks::<4>();
            for w in words {
                acc += u64::from(u32::from_ne_bytes(*w));
            }
        }
        let (words, rest) = rest.as_chunks::<4>();
        for w in words {
            acc += u64::from(u32::from_ne_bytes(*w));
        }
        let (halves, rest) = rest.as_chunks::<2>();
        for h in halves {
            acc += u64::from(u16::from_ne_bytes(*h));
        }
        if let [last] = rest {
            acc += u64::from(u16::from_ne_bytes([*last, 0]));
        }
        Sum(acc)
    }

    /// Adds one 16-bit word given by its numeric (big-endian on the wire) value.
    #[inline]
    pub fn add_u16(self, word: u16) -> Self {
        Sum(self.0 + u64::from(u16::from_ne_bytes(word.to_be_bytes())))
    }

    /// The folded 16-bit one's complement sum, as a numeric value (write it big-endian).
    #[inline]
    pub fn fold(self) -> u16 {
        let mut s = (self.0 & 0xffff_ffff) + (self.0 >> 32);
        s = (s & 0xffff_ffff) + (s >> 32);
        s = (s & 0xffff) + (s >> 16);
        s = (s & 0xffff) + (s >> 16);
        // `s` fits in 16 bits now: two folds of a 33-bit value leave no carry.
        let native = s as u16;
        u16::from_be_bytes(native.to_ne_bytes())
    }

    /// The checksum: the complement of [`Sum::fold`]. Over data that contains a correct
    /// checksum field this is 0.
    #[inline]
    pub fn checksum(self) -> u16 {
        !self.fold()
    }
}

/// Checksum of an IPv4 header. With the checksum field zeroed, the value to store there;
/// over a header carrying a correct checksum, 0.
#[inline]
pub fn ipv4_header(header: &[u8]) -> u16 {
    Sum::new().add_bytes(header).checksum()
}

/// Sum of the IPv4 pseudo-header (RFC 768): addresses, protocol and upper-layer length.
#[inline]
pub fn pseudo_v4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, len: u16) -> Sum {
    Sum::new()
        .add_bytes(&src.octets())
        .add_bytes(&dst.octets())
        .add_u16(u16::from(protocol))
        .add_u16(len)
}

/// Sum of the IPv6 pseudo-header (RFC 8200 §8.1): addresses, upper-layer length and next
/// header.
#[inline]
pub fn pseudo_v6(src: &Ipv6Addr, dst: &Ipv6Addr, next_header: u8, len: u32) -> Sum {
    Sum::new()
        .add_bytes(&src.octets())
        .add_bytes(&dst.octets())
        .add_u16((len >> 16) as u16)
        .add_u16(len as u16)
        .add_u16(u16::from(next_header))
}

/// UDP checksum over IPv4: pseudo-header plus `segment` (UDP header and payload, the checksum
/// field as it is), using `segment.len()` as the UDP length (contract: at most 65535).
/// With the checksum field zeroed, the value to store (map 0 to 0xffff when sending);
/// over a segment carrying a correct checksum, 0.
#[inline]
pub fn udp_v4(src: Ipv4Addr, dst: Ipv4Addr, segment: &[u8]) -> u16 {
    pseudo_v4(src, dst, PROTO_UDP, segment.len() as u16)
        .add_bytes(segment)
        .checksum()
}

/// UDP checksum over IPv6: as [`udp_v4`] with the IPv6 pseudo-header.
#[inline]
pub fn udp_v6(src: &Ipv6Addr, dst: &Ipv6Addr, segment: &[u8]) -> u16 {
    pseudo_v6(src, dst, PROTO_UDP, segment.len() as u32)
        .add_bytes(segment)
        .checksum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    /// Byte-at-a-time big-endian reference straight out of RFC 1071.
    fn reference(data: &[u8]) -> u16 {
        let mut s: u64 = 0;
        for pair in data.chunks(2) {
            let hi = u64::from(pair[0]) << 8;
            let lo = pair.get(1).map_or(0, |&b| u64::from(b));
            s += hi | lo;
        }
        while s >> 16 != 0 {
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: the sum of 0001 f203 f4f5 f6f7 is ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(Sum::new().add_bytes(&data).fold(), 0xddf2);
        assert_eq!(Sum::new().add_bytes(&data).checksum(), !0xddf2);
    }

    #[test]
    fn ipv4_header_vector() {
        // The classic 192.168.0.1 -> 192.168.0.199 header; checksum 0xb861 (checked in Python).
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(ipv4_header(&h), 0xb861);
        h[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert_eq!(ipv4_header(&h), 0);
    }

    fn udp_segment() -> Vec<u8> {
        // 1234 -> 4433, length 21, checksum 0, "hello, quic!?" (odd length on purpose).
        let mut s = vec![0x04, 0xd2, 0x11, 0x51, 0x00, 0x15, 0x00, 0x00];
        s.extend_from_slice(b"hello, quic!?");
        s
    }

    #[test]
    fn udp_vectors() {
        // Expected values computed once with a Python reference implementation.
        let seg = udp_segment();
        let (s4, d4) = (Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(198, 51, 100, 7));
        assert_eq!(udp_v4(s4, d4, &seg), 0x816a);
        let s6: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let d6: Ipv6Addr = "2001:db8:ffff::2".parse().unwrap();
        assert_eq!(udp_v6(&s6, &d6, &seg), 0x1232);
        let mut seg = seg;
        seg[6..8].copy_from_slice(&0x1232u16.to_be_bytes());
        assert_eq!(udp_v6(&s6, &d6, &seg), 0);
    }

    #[test]
    fn matches_reference_on_random_data() {
        let mut rng = StdRng::seed_from_u64(0x1071);
        for _ in 0..2000 {
            let len = rng.gen_range(0..3000);
            let data: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            assert_eq!(
                Sum::new().add_bytes(&data).fold(),
                reference(&data),
                "len {len}"
            );
            // Splitting at an even offset does not change the sum.
            let cut = rng.gen_range(0..=len) & !1;
            let split = Sum::new().add_bytes(&data[..cut]).add_bytes(&data[cut..]);
            assert_eq!(split.fold(), reference(&data));
        }
    }

    #[test]
    fn all_ones_and_zeros() {
        assert_eq!(Sum::new().fold(), 0);
        assert_eq!(Sum::new().add_bytes(&[0xff; 4096]).fold(), 0xffff);
        assert_eq!(Sum::new().add_u16(0x1234).fold(), 0x1234);
    }
}
