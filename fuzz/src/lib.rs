//! Shared pieces of the fuzz targets: a byte cursor that never runs out, an `RngCore` fed by
//! fuzz bytes, and the input formats of the `cid`, `route` and `frame_write` targets (decoder
//! for the targets, encoder for the seed generator in `seeds.rs`, so that seeds and targets
//! cannot drift apart).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

use xdp_quic::cid::CidLayout;

#[cfg(test)]
mod seeds;
#[cfg(test)]
mod stats;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_checksum_rfc1071_example() {
        // RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(ref_sum(&data, 0), 0xddf2);
        assert_eq!(ref_checksum(&data), !0xddf2);
        // Odd length: the last octet is the high half of a zero-padded word.
        assert_eq!(ref_sum(&[0x12, 0x34, 0x56], 0), 0x1234 + 0x5600);
    }

    #[test]
    fn short_inputs_decode() {
        for n in 0..64 {
            let data: Vec<u8> = (0..n as u8).collect();
            CidInput::decode(&data);
            RouteInput::decode(&data);
            FrameWriteInput::decode(&data);
        }
    }
}

/// Reads fixed-size fields from the front of a fuzz input; past its end every read yields
/// zeros, so any input (the empty one included) decodes to something.
pub struct Cursor<'a> {
    data: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    pub fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        for b in &mut a {
            *b = self.u8();
        }
        a
    }

    /// Up to `n` octets (fewer when the input ends).
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// Everything not read yet.
    pub fn rest(self) -> &'a [u8] {
        self.data
    }
}

/// An `RngCore` (rand_core 0.6, the one `CidLayout::write` takes) whose output is fuzz bytes,
/// cycled; all zeros when given none. Makes the random nonce of a CID fuzzer-controlled.
pub struct ByteRng<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> ByteRng<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, at: 0 }
    }
}

impl rand_core::RngCore for ByteRng<'_> {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }

    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for d in dest {
            *d = if self.bytes.is_empty() {
                0
            } else {
                let b = self.bytes[self.at % self.bytes.len()];
                self.at = self.at.wrapping_add(1);
                b
            };
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// `cid` target input
// ---------------------------------------------------------------------------------------------

/// Input of the `cid` target. Layout parameters are *raw*: invalid ones are reachable (and
/// checked to be refused with the right error).
///
/// ```text
/// len:u8  cr:u8  sid_len:u8  sid[sid_len % 24]  workers:u16be  pick:u8  mask:u8
/// nonce_len:u8  nonce[nonce_len % 32]  candidate[..]
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidInput<'a> {
    /// CID length as passed to `CidLayout::new` (0..=23 reachable).
    pub len: usize,
    /// Config rotation as passed (0..=7 often, any u8 when the high bit is set).
    pub config_rotation: u8,
    pub server_id: &'a [u8],
    /// Worker count as passed (0..=299: 0 and > 256 are invalid).
    pub workers: usize,
    /// Picks the worker whose CID is written: `pick % workers`.
    pub pick: u8,
    /// Nonzero XOR mask for the single-octet mutations (0 is replaced by 1).
    pub mask: u8,
    /// Bytes the nonce RNG cycles through.
    pub nonce: &'a [u8],
    /// Arbitrary octets handed to `decode` and `validate`.
    pub candidate: &'a [u8],
}

impl<'a> CidInput<'a> {
    pub fn decode(data: &'a [u8]) -> Self {
        let mut c = Cursor::new(data);
        let len = usize::from(c.u8() % 24);
        let cr = c.u8();
        let config_rotation = if cr & 0x80 != 0 { cr } else { cr % 8 };
        let sid_len = usize::from(c.u8() % 24);
        let server_id = c.take(sid_len);
        let workers = usize::from(c.u16() % 300);
        let pick = c.u8();
        let mask = c.u8().max(1);
        let nonce_len = usize::from(c.u8() % 32);
        let nonce = c.take(nonce_len);
        let candidate = c.rest();
        Self {
            len,
            config_rotation,
            server_id,
            workers,
            pick,
            mask,
            nonce,
            candidate,
        }
    }

    /// The bytes that [`Self::decode`] turns back into `self` (for seeds).
    pub fn encode(&self) -> Vec<u8> {
        assert!(self.len < 24 && self.server_id.len() < 24 && self.workers < 300);
        assert!(self.config_rotation < 8 && self.nonce.len() < 32 && self.mask != 0);
        let mut v = vec![
            self.len as u8,
            self.config_rotation,
            self.server_id.len() as u8,
        ];
        v.extend_from_slice(self.server_id);
        v.extend_from_slice(&(self.workers as u16).to_be_bytes());
        v.extend_from_slice(&[self.pick, self.mask, self.nonce.len() as u8]);
        v.extend_from_slice(self.nonce);
        v.extend_from_slice(self.candidate);
        v
    }
}

// ---------------------------------------------------------------------------------------------
// `route` target input
// ---------------------------------------------------------------------------------------------

/// The packet the `route` target builds around a CID of the layout, besides routing the raw
/// datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Built {
    /// Short header, first octet `0x40 | (bits & 0x3f)`.
    Short,
    /// Long header of version 1 with this packet type (0 Initial, 1 0-RTT, 2 Handshake, 3 Retry).
    V1(u8),
    /// Long header of a draft version (0xff00_00xx) with this packet type.
    Draft(u8),
    /// Long header of a version neither 1 nor a draft.
    Unknown,
    /// Long header (v1, type from the input) whose DCID has another length than ours (a
    /// client-chosen Initial DCID, or garbage).
    ForeignLen,
}

/// Input of the `route` target. The layout parameters are always valid (the target unwraps
/// `CidLayout::new`); invalid layouts are the `cid` target's business.
///
/// ```text
/// len:u8  cr:u8  sid_len:u8  sid[..]  workers:u8  me:u8  flags:u8  owner:u8  kind:u8
/// bits:u8  version:u8  nonce[nonce octets of the layout]  datagram[..]
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteInput<'a> {
    pub layout: CidLayout,
    /// The deciding worker (< workers).
    pub me: usize,
    /// Read from the input and kept in its format; routing no longer depends on it.
    pub serves: bool,
    /// Owner of the CID in the built packet (< workers).
    pub owner: usize,
    pub built: Built,
    /// Low bits of the built first octet and the foreign DCID length.
    pub bits: u8,
    /// Low octet of a draft/unknown version.
    pub version: u8,
    pub nonce: &'a [u8],
    /// Routed as is; also the tail of the built packet.
    pub datagram: &'a [u8],
}

impl<'a> RouteInput<'a> {
    pub fn decode(data: &'a [u8]) -> Self {
        let mut c = Cursor::new(data);
        let len = 6 + usize::from(c.u8() % 15); // 6..=20
        let config_rotation = c.u8() % 7;
        let sid_len = usize::from(c.u8()) % (len - 6 + 1);
        // A short input leaves the server id short: pad with zeros to keep the layout valid.
        let mut server_id = c.take(sid_len).to_vec();
        server_id.resize(sid_len, 0);
        let workers = usize::from(c.u8()) + 1; // 1..=256
        let layout = CidLayout::new(len, config_rotation, &server_id, workers)
            .expect("the route input always describes a valid layout");
        let me = usize::from(c.u8()) % workers;
        let serves = c.u8() & 1 == 1;
        let owner = usize::from(c.u8()) % workers;
        let kind = c.u8();
        let built = match kind % 14 {
            0..=3 => Built::Short,
            k @ 4..=7 => Built::V1(k - 4),
            k @ 8..=11 => Built::Draft(k - 8),
            12 => Built::Unknown,
            _ => Built::ForeignLen,
        };
        let bits = c.u8();
        let version = c.u8();
        let nonce = c.take(len - layout.worker_offset() - 1);
        let datagram = c.rest();
        Self {
            layout,
            me,
            serves,
            owner,
            built,
            bits,
            version,
            nonce,
            datagram,
        }
    }

    /// The bytes that [`Self::decode`] turns back into `self` (for seeds).
    pub fn encode(&self) -> Vec<u8> {
        let l = &self.layout;
        let cr = l.first_octet() >> 5;
        let mut v = vec![(l.len() - 6) as u8, cr, l.server_id().len() as u8];
        v.extend_from_slice(l.server_id());
        let kind = match self.built {
            Built::Short => 0,
            Built::V1(t) => 4 + t,
            Built::Draft(t) => 8 + t,
            Built::Unknown => 12,
            Built::ForeignLen => 13,
        };
        v.extend_from_slice(&[
            (l.workers() - 1) as u8,
            self.me as u8,
            u8::from(self.serves),
            self.owner as u8,
            kind,
            self.bits,
            self.version,
        ]);
        let mut nonce = self.nonce.to_vec();
        nonce.resize(l.len() - l.worker_offset() - 1, 0);
        v.extend_from_slice(&nonce);
        v.extend_from_slice(self.datagram);
        v
    }
}

// ---------------------------------------------------------------------------------------------
// `frame_write` target input
// ---------------------------------------------------------------------------------------------

/// Input of the `frame_write` target: everything `frame::write` takes, plus the buffer size.
///
/// ```text
/// flags:u8  dst_mac[6]  src_mac[6]  tpid:u16be  tci:u16be  src[16]  dst[16]  ports:u16be×2
/// flowinfo:u16be  ecn:u8  slack:u8  big:u16be  payload[..]
/// ```
/// flags: bit 0 VLAN tag, bit 1 IPv6, bits 2-3 address mapping (0 none, 1 src mapped,
/// 2 dst mapped, 3 both), bit 4 mixed families (src of the other family), bit 5 buffer short
/// by `slack` octets instead of long by it, bit 6 with `big >= 0xf000`: a payload of
/// 65400 + big % 200 octets (the payload bytes repeated; around the IPv4 and IPv6 limits of
/// 65507 and 65527) instead of the payload bytes, bit 7 TPID as given instead of
/// 0x8100/0x88a8 (chosen by its low bit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameWriteInput {
    pub l2: xdp_quic::packet::frame::L2,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub ecn: u8,
    /// Buffer length = needed ± slack.
    pub short_by: usize,
    pub long_by: usize,
    pub payload: Vec<u8>,
}

fn mapped(b: [u8; 16]) -> Ipv6Addr {
    Ipv4Addr::new(b[12], b[13], b[14], b[15]).to_ipv6_mapped()
}

impl FrameWriteInput {
    pub fn decode(data: &[u8]) -> Self {
        let mut c = Cursor::new(data);
        let flags = c.u8();
        let dst_mac = c.array::<6>();
        let src_mac = c.array::<6>();
        let tpid = c.u16();
        let tci = c.u16();
        let src_b = c.array::<16>();
        let dst_b = c.array::<16>();
        let (sport, dport) = (c.u16(), c.u16());
        let flowinfo = u32::from(c.u16());
        let ecn = c.u8();
        let slack = usize::from(c.u8());
        let big = usize::from(c.u16());
        let rest = c.rest();

        let vlan = (flags & 1 != 0).then(|| {
            let tpid = if flags & 0x80 != 0 {
                tpid
            } else if tpid & 1 == 0 {
                0x8100
            } else {
                0x88a8
            };
            (tpid, tci)
        });
        let v6 = flags & 2 != 0;
        let map = (flags >> 2) & 3;
        let addr = |b: [u8; 16], port: u16, mapped_here: bool, v6: bool| -> SocketAddr {
            if mapped_here {
                SocketAddr::V6(SocketAddrV6::new(mapped(b), port, flowinfo, 0))
            } else if v6 {
                // flow info / scope id are not written: parse gives them back as 0.
                SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(b), port, flowinfo, 0))
            } else {
                SocketAddr::new(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])), port)
            }
        };
        let mixed = flags & 0x10 != 0;
        let src = addr(src_b, sport, map & 1 != 0, v6 ^ mixed);
        let dst = addr(dst_b, dport, map & 2 != 0, v6);
        let payload = if flags & 0x40 != 0 && big >= 0xf000 {
            let n = 65_400 + big % 200;
            if rest.is_empty() {
                vec![0; n]
            } else {
                rest.iter().copied().cycle().take(n).collect()
            }
        } else {
            rest.to_vec()
        };
        let (short_by, long_by) = if flags & 0x20 != 0 {
            (slack, 0)
        } else {
            (0, slack)
        };
        Self {
            l2: xdp_quic::packet::frame::L2 {
                src_mac,
                dst_mac,
                vlan,
            },
            src,
            dst,
            ecn,
            short_by,
            long_by,
            payload,
        }
    }
}

/// Encodes a `frame_write` input (for seeds): plain addresses of one family, no mapping;
/// `big`: a payload of that many octets (65400..65600) repeating `payload`.
pub fn encode_frame_write(
    l2: &xdp_quic::packet::frame::L2,
    src: SocketAddr,
    dst: SocketAddr,
    ecn: u8,
    long_by: u8,
    payload: &[u8],
    big: Option<usize>,
) -> Vec<u8> {
    let v6 = src.is_ipv6();
    let mut flags = 0u8;
    let (mut tpid, tci) = l2.vlan.unwrap_or((0x8100, 0));
    if l2.vlan.is_some() {
        flags |= 1;
        match tpid {
            0x8100 => tpid = 0,
            0x88a8 => tpid = 1,
            _ => flags |= 0x80,
        }
    }
    if v6 {
        flags |= 2;
    }
    let octets = |a: SocketAddr| -> [u8; 16] {
        match a.ip() {
            IpAddr::V4(ip) => {
                let mut b = [0u8; 16];
                b[..4].copy_from_slice(&ip.octets());
                b
            }
            IpAddr::V6(ip) => ip.octets(),
        }
    };
    let mut v = vec![flags];
    v.extend_from_slice(&l2.dst_mac);
    v.extend_from_slice(&l2.src_mac);
    v.extend_from_slice(&tpid.to_be_bytes());
    v.extend_from_slice(&tci.to_be_bytes());
    v.extend_from_slice(&octets(src));
    v.extend_from_slice(&octets(dst));
    v.extend_from_slice(&src.port().to_be_bytes());
    v.extend_from_slice(&dst.port().to_be_bytes());
    let big = match big {
        Some(n) => {
            assert!((65_400..65_600).contains(&n));
            flags |= 0x40;
            0xf000 + (n - 65_400 + 200 - 0xf000 % 200) % 200
        }
        None => 0,
    };
    v[0] = flags;
    v.extend_from_slice(&[0, 0, ecn, long_by]);
    v.extend_from_slice(&(big as u16).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

// ---------------------------------------------------------------------------------------------
// Reference internet checksum (RFC 1071), written the textbook way: big-endian 16-bit words,
// an odd last octet padded with zero, end-around carry, complement. The datapath's `checksum`
// module sums native-endian 32-bit words instead; the `frame` target compares the two.
// ---------------------------------------------------------------------------------------------

/// One's complement sum (folded, not complemented) of `data` as big-endian 16-bit words.
pub fn ref_sum(data: &[u8], mut acc: u32) -> u32 {
    for pair in data.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        acc += u32::from(word);
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc
}

/// RFC 1071 checksum of `data`.
pub fn ref_checksum(data: &[u8]) -> u16 {
    !(ref_sum(data, 0) as u16)
}

/// RFC 768 / RFC 8200 UDP checksum of `segment` under the pseudo-header of `src`/`dst`
/// (both of one family), the checksum field as it is in `segment`.
pub fn ref_udp_checksum(src: IpAddr, dst: IpAddr, segment: &[u8]) -> u16 {
    let mut pseudo = Vec::with_capacity(40);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&[0, 17]);
            pseudo.extend_from_slice(&(segment.len() as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&(segment.len() as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, 17]);
        }
        _ => panic!("mixed address families"),
    }
    !(ref_sum(segment, ref_sum(&pseudo, 0)) as u16)
}
