//! Shared pieces of the fuzz targets: a byte cursor that never runs out, an `RngCore` fed by
//! fuzz bytes, and the input formats of the `cid`, `route`, `frame_write` and `client_hello`
//! targets (decoder for the targets, encoder for the seed generator in `seeds.rs`, so that
//! seeds and targets cannot drift apart); reference implementations the targets compare with.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

use xdp_quic::cid::CidLayout;

#[cfg(test)]
mod seeds;
#[cfg(test)]
mod stats;

/// The body of an ALPN extension (RFC 7301): a 16-bit length, then each protocol name with
/// an 8-bit length.
pub fn alpn_list(names: &[Vec<u8>]) -> Vec<u8> {
    let list: Vec<u8> = names
        .iter()
        .flat_map(|n| std::iter::once(n.len() as u8).chain(n.iter().copied()))
        .collect();
    let mut b = (list.len() as u16).to_be_bytes().to_vec();
    b.extend(list);
    b
}

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
            let hello = ClientHelloInput::decode(&data);
            assert!(hello.initial().seal().len() > hello.pn_offset());
            let built = HelloSpec::decode(&data).build();
            assert!(built.sent <= built.message.len() && built.need <= built.message.len());
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

// ---------------------------------------------------------------------------------------------
// `client_hello` target input
// ---------------------------------------------------------------------------------------------

use xdp_quic::packet::client_hello::testing::{crypto_frame, Initial};
use xdp_quic::packet::client_hello::{ClientHelloInfo, PeekError, MAX_CLIENT_HELLO_LEN};

/// Longest frames body the `client_hello` target seals (the sealer takes less than 16 KiB; a
/// packet over `MAX_PACKET_LEN`, 4096 octets, is refused as `TooLarge` before decryption).
pub const MAX_FRAMES_LEN: usize = 8000;

/// Octets after the packet when the input asks for a coalesced datagram: a short header and
/// some junk, which the peek must ignore.
pub const TRAILER: [u8; 24] = [
    0x40, 0xde, 0xad, 0xbe, 0xef, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18,
];

/// What the payload of the sealed Initial is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HelloPayload<'a> {
    /// The frames in clear, as given (at most [`MAX_FRAMES_LEN`] octets).
    Frames(&'a [u8]),
    /// A well-formed ClientHello built from a description, cut into CRYPTO frames.
    Built(HelloSpec),
}

/// Input of the `client_hello` target: a client Initial packet of QUIC v1 in clear, which the
/// target seals with the client Initial keys of its DCID (`Initial::seal`, the datapath's
/// test kit) and hands to `peek`.
///
/// ```text
/// flags:u8  dcid_len:u8  dcid[dcid_len % 21]  scid_len:u8  scid[scid_len % 21]
/// token_len:u8  token[token_len % 64]  pn:u32be  at:u16be  body[..]
/// ```
/// flags: bits 0-1 packet number length - 1, bits 2-3 the reserved bits (0 in a valid
/// packet), bit 4 [`TRAILER`] after the packet (a coalesced datagram), bit 5 the octet at
/// `at % len` of the sealed packet XORed with 1, bit 6 PADDING frames up to a 1200-octet
/// packet (as clients send), bit 7 `body` is a [`HelloSpec`] instead of the frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHelloInput<'a> {
    pub dcid: &'a [u8],
    pub scid: &'a [u8],
    pub token: &'a [u8],
    pub pn: u32,
    /// 1..=4.
    pub pn_len: usize,
    /// 0..=3.
    pub reserved: u8,
    pub trailer: bool,
    /// The changed octet: `at % len` of the sealed packet.
    pub flip: Option<u16>,
    pub pad: bool,
    pub payload: HelloPayload<'a>,
}

impl<'a> ClientHelloInput<'a> {
    pub fn decode(data: &'a [u8]) -> Self {
        let mut c = Cursor::new(data);
        let flags = c.u8();
        let n = usize::from(c.u8() % 21);
        let dcid = c.take(n);
        let n = usize::from(c.u8() % 21);
        let scid = c.take(n);
        let n = usize::from(c.u8() % 64);
        let token = c.take(n);
        let pn = u32::from_be_bytes(c.array());
        let at = c.u16();
        let body = c.rest();
        let payload = if flags & 0x80 != 0 {
            HelloPayload::Built(HelloSpec::decode(body))
        } else {
            HelloPayload::Frames(&body[..body.len().min(MAX_FRAMES_LEN)])
        };
        Self {
            dcid,
            scid,
            token,
            pn,
            pn_len: usize::from(flags & 3) + 1,
            reserved: (flags >> 2) & 3,
            trailer: flags & 0x10 != 0,
            flip: (flags & 0x20 != 0).then_some(at),
            pad: flags & 0x40 != 0,
            payload,
        }
    }

    /// The bytes that [`Self::decode`] turns back into `self` (for seeds).
    pub fn encode(&self) -> Vec<u8> {
        assert!(self.dcid.len() <= 20 && self.scid.len() <= 20 && self.token.len() < 64);
        assert!((1..=4).contains(&self.pn_len) && self.reserved < 4);
        let mut flags = (self.pn_len - 1) as u8 | self.reserved << 2;
        flags |= u8::from(self.trailer) << 4 | u8::from(self.flip.is_some()) << 5;
        flags |= u8::from(self.pad) << 6;
        let body = match &self.payload {
            HelloPayload::Frames(f) => {
                assert!(f.len() <= MAX_FRAMES_LEN);
                f.to_vec()
            }
            HelloPayload::Built(spec) => {
                flags |= 0x80;
                spec.encode()
            }
        };
        let mut v = vec![flags, self.dcid.len() as u8];
        v.extend_from_slice(self.dcid);
        v.push(self.scid.len() as u8);
        v.extend_from_slice(self.scid);
        v.push(self.token.len() as u8);
        v.extend_from_slice(self.token);
        v.extend_from_slice(&self.pn.to_be_bytes());
        v.extend_from_slice(&self.flip.unwrap_or(0).to_be_bytes());
        v.extend(body);
        v
    }

    /// The frames of the payload in clear (built from the description in that mode), padded
    /// to a 1200-octet packet when asked.
    pub fn frames(&self) -> Vec<u8> {
        let mut frames = match &self.payload {
            HelloPayload::Frames(f) => f.to_vec(),
            HelloPayload::Built(spec) => spec.build().frames,
        };
        if self.pad {
            let overhead = 1
                + 4
                + 1
                + self.dcid.len()
                + 1
                + self.scid.len()
                + 1
                + self.token.len()
                + 2
                + self.pn_len
                + 16;
            frames.resize(frames.len().max(1200usize.saturating_sub(overhead)), 0);
        }
        frames
    }

    /// The Initial in clear that the target seals.
    pub fn initial(&self) -> Initial {
        Initial {
            dcid: self.dcid.to_vec(),
            scid: self.scid.to_vec(),
            token: self.token.to_vec(),
            pn: self.pn,
            pn_len: self.pn_len,
            reserved: self.reserved,
            payload: self.frames(),
        }
    }

    /// Where the packet number starts in the sealed packet (the token length takes one octet,
    /// the Length field two).
    pub fn pn_offset(&self) -> usize {
        1 + 4 + 1 + self.dcid.len() + 1 + self.scid.len() + 1 + self.token.len() + 2
    }
}

/// A ClientHello described by the `client_hello` input in its built mode, and how it is cut
/// into CRYPTO frames.
///
/// ```text
/// sni_len:u8  sni[sni_len % 64]  alpn_n:u8  (len:u8  name[len % 32 + 1]) × (alpn_n % 5)
/// grease:u16be  order:u8  cuts:u16be×3  keep:u8
/// ```
/// The server name octets are mapped onto printable ASCII (`'!' + b % 94`); an empty one is
/// no `server_name` extension, no names no ALPN extension. `grease % 1024`: the body length
/// of an extension of unknown type. `order`: bit 0 ALPN before the server name, bit 1 the
/// unknown extension last (else first), bit 2 the CRYPTO frames in reverse order, bits 3-4 a
/// rotation of that order, bit 5 PING and ACK frames between them, bit 6 the first part sent
/// twice, bit 7 no legacy session id. The message is cut at the `cuts` (modulo its length + 1);
/// `keep`: only that many parts from the front are sent when it is 1.. below their number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloSpec {
    pub server_name: Option<String>,
    pub alpn: Vec<Vec<u8>>,
    pub grease: usize,
    pub order: u8,
    pub cuts: [u16; 3],
    pub keep: u8,
}

/// A built ClientHello: the frames carrying it and what `peek` must answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltHello {
    /// The handshake message.
    pub message: Vec<u8>,
    pub frames: Vec<u8>,
    /// The stream octets `0..sent` are in the frames.
    pub sent: usize,
    /// The stream octets the parse must read to answer (server name and ALPN read in full,
    /// or, when one is absent, every extension header).
    pub need: usize,
    pub expected: Result<ClientHelloInfo, PeekError>,
}

const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const EXT_SUPPORTED_VERSIONS: u16 = 43;
const EXT_GREASE: u16 = 0x0a0a;

impl HelloSpec {
    pub fn decode(data: &[u8]) -> Self {
        let mut c = Cursor::new(data);
        let n = usize::from(c.u8() % 64);
        let sni = c.take(n);
        let server_name =
            (!sni.is_empty()).then(|| sni.iter().map(|b| char::from(b'!' + b % 94)).collect());
        let count = c.u8() % 5;
        let alpn = (0..count)
            .map(|_| {
                let n = usize::from(c.u8() % 32) + 1;
                let mut name = c.take(n).to_vec();
                name.resize(n, b'x');
                name
            })
            .collect();
        let grease = usize::from(c.u16() % 1024);
        let order = c.u8();
        let cuts = [c.u16(), c.u16(), c.u16()];
        let keep = c.u8();
        Self {
            server_name,
            alpn,
            grease,
            order,
            cuts,
            keep,
        }
    }

    /// The bytes that [`Self::decode`] turns back into `self` (for seeds).
    pub fn encode(&self) -> Vec<u8> {
        let sni = self.server_name.as_deref().unwrap_or("");
        assert!(sni.len() < 64 && sni.bytes().all(|b| b.is_ascii_graphic()));
        assert!(self.alpn.len() < 5 && self.grease < 1024);
        let mut v = vec![sni.len() as u8];
        v.extend(sni.bytes().map(|b| b - b'!'));
        v.push(self.alpn.len() as u8);
        for name in &self.alpn {
            assert!((1..=32).contains(&name.len()));
            v.push(name.len() as u8 - 1);
            v.extend_from_slice(name);
        }
        v.extend_from_slice(&(self.grease as u16).to_be_bytes());
        v.push(self.order);
        for cut in self.cuts {
            v.extend_from_slice(&cut.to_be_bytes());
        }
        v.push(self.keep);
        v
    }

    /// The ClientHello, its frames and the answer they call for.
    pub fn build(&self) -> BuiltHello {
        let (message, need) = self.message();
        // The parts, by cut points strictly inside the message.
        let mut points: Vec<usize> = self
            .cuts
            .iter()
            .map(|&c| usize::from(c) % (message.len() + 1))
            .filter(|&c| c > 0 && c < message.len())
            .collect();
        points.sort_unstable();
        points.dedup();
        let mut bounds = vec![0];
        bounds.extend(points);
        bounds.push(message.len());
        let parts: Vec<(usize, usize)> = bounds.windows(2).map(|w| (w[0], w[1])).collect();
        let kept = match usize::from(self.keep) {
            k @ 1.. if k < parts.len() => k,
            _ => parts.len(),
        };
        let sent = parts[kept - 1].1;
        let mut order: Vec<usize> = (0..kept).collect();
        if self.order & 4 != 0 {
            order.reverse();
        }
        order.rotate_left(usize::from(self.order >> 3 & 3) % kept);
        if self.order & 0x40 != 0 {
            order.push(0);
        }
        let mut frames = Vec::new();
        for (i, &p) in order.iter().enumerate() {
            let (start, end) = parts[p];
            if self.order & 0x20 != 0 {
                frames.push(0x01); // PING
                frames.extend_from_slice(&[0x02, i as u8, 0, 0, 0]); // ACK, no range
            }
            frames.extend(crypto_frame(start as u64, &message[start..end]));
        }
        if self.order & 0x20 != 0 {
            // ACK with ECN counts and one more range.
            frames.extend_from_slice(&[0x03, 9, 0, 1, 0, 1, 2, 0, 0, 0]);
        }
        let expected = if sent >= need {
            Ok(ClientHelloInfo {
                server_name: self
                    .server_name
                    .as_deref()
                    .and_then(xdp_quic::packet::client_hello::canonical_server_name),
                alpn: self.alpn.clone(),
            })
        } else {
            Err(PeekError::Incomplete)
        };
        BuiltHello {
            message,
            frames,
            sent,
            need,
            expected,
        }
    }

    /// The handshake message, and the length of its prefix the parse must read.
    fn message(&self) -> (Vec<u8>, usize) {
        // Offsets are of the message, whose 4-octet header comes first.
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[0xaa; 32]); // random
        let mut reads = vec![4 + body.len() + 1]; // session id length
        let sid = if self.order & 0x80 != 0 { 0 } else { 32 };
        body.push(sid as u8);
        body.extend(std::iter::repeat_n(0xbb, sid));
        reads.push(4 + body.len() + 2); // cipher suites length
        body.extend_from_slice(&[0, 6, 0x13, 0x01, 0x13, 0x02, 0x13, 0x03]);
        reads.push(4 + body.len() + 1); // compression methods length
        body.extend_from_slice(&[1, 0]);
        reads.push(4 + body.len() + 2); // extensions length

        let ext = |ty: u16, body: &[u8]| {
            let mut e = ty.to_be_bytes().to_vec();
            e.extend_from_slice(&(body.len() as u16).to_be_bytes());
            e.extend_from_slice(body);
            (ty, e)
        };
        let mut sni = None;
        if let Some(name) = &self.server_name {
            let mut list = vec![0];
            list.extend_from_slice(&(name.len() as u16).to_be_bytes());
            list.extend_from_slice(name.as_bytes());
            let mut b = (list.len() as u16).to_be_bytes().to_vec();
            b.extend(list);
            sni = Some(ext(EXT_SERVER_NAME, &b));
        }
        let mut alpn = None;
        if !self.alpn.is_empty() {
            alpn = Some(ext(EXT_ALPN, &alpn_list(&self.alpn)));
        }
        let grease = ext(EXT_GREASE, &vec![0x5a; self.grease]);
        let mut exts = vec![ext(EXT_SUPPORTED_VERSIONS, &[2, 0x03, 0x04])];
        if self.order & 2 == 0 {
            exts.push(grease.clone());
        }
        if self.order & 1 != 0 {
            exts.extend(alpn.clone());
            exts.extend(sni.clone());
        } else {
            exts.extend(sni.clone());
            exts.extend(alpn.clone());
        }
        if self.order & 2 != 0 {
            exts.push(grease);
        }

        let all: Vec<u8> = exts.iter().flat_map(|(_, e)| e.clone()).collect();
        body.extend_from_slice(&(all.len() as u16).to_be_bytes());
        let mut at = 4 + body.len();
        let mut both_read = None;
        let (mut sni_read, mut alpn_read) = (false, false);
        for (ty, e) in &exts {
            reads.push(at + 4); // type and length
            if *ty == EXT_SERVER_NAME || *ty == EXT_ALPN {
                reads.push(at + e.len()); // the body, read in full
                sni_read |= *ty == EXT_SERVER_NAME;
                alpn_read |= *ty == EXT_ALPN;
                if sni_read && alpn_read {
                    both_read = Some(at + e.len());
                }
            }
            at += e.len();
        }
        body.extend(all);
        // Both extensions read: nothing after them matters. Else every read must succeed.
        let need = both_read.unwrap_or_else(|| reads.iter().copied().max().unwrap_or(0));

        let mut message = vec![1];
        message.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        message.extend(body);
        assert!(message.len() <= MAX_CLIENT_HELLO_LEN);
        (message, need)
    }
}

/// The CRYPTO stream of an Initial payload reassembled the plain way: a frame walk after
/// RFC 9000 §19 over the frames an Initial may carry (PADDING, PING, ACK, CRYPTO,
/// CONNECTION_CLOSE of the transport), the stream octets below `MAX_CLIENT_HELLO_LEN` kept by
/// offset, a later copy of an octet checked against the first.
#[derive(Debug, Clone)]
pub struct RefStream {
    pub data: Vec<u8>,
    pub received: Vec<bool>,
}

impl RefStream {
    /// Octets `start..start + len`, if all were received.
    pub fn get(&self, start: usize, len: usize) -> Option<&[u8]> {
        let end = start.checked_add(len)?;
        self.received
            .get(start..end)?
            .iter()
            .all(|&r| r)
            .then(|| &self.data[start..end])
    }
}

/// `None` where the payload breaks the frame rules (an unknown or disallowed frame type, a
/// frame cut short, a CRYPTO frame ending past 2^62 - 1, CRYPTO frames disagreeing).
pub fn ref_crypto_stream(payload: &[u8]) -> Option<RefStream> {
    fn varint(p: &[u8], at: &mut usize) -> Option<u64> {
        let first = *p.get(*at)?;
        let n = 1usize << (first >> 6);
        let bytes = p.get(*at..*at + n)?;
        *at += n;
        Some(
            bytes[1..]
                .iter()
                .fold(u64::from(first & 0x3f), |v, &b| v << 8 | u64::from(b)),
        )
    }
    fn bytes<'p>(p: &'p [u8], at: &mut usize, len: u64) -> Option<&'p [u8]> {
        let end = at.checked_add(usize::try_from(len).ok()?)?;
        let b = p.get(*at..end)?;
        *at = end;
        Some(b)
    }
    let mut s = RefStream {
        data: vec![0; MAX_CLIENT_HELLO_LEN],
        received: vec![false; MAX_CLIENT_HELLO_LEN],
    };
    let mut at = 0;
    while at < payload.len() {
        match varint(payload, &mut at)? {
            0x00 | 0x01 => {}
            ty @ (0x02 | 0x03) => {
                varint(payload, &mut at)?; // largest acknowledged
                varint(payload, &mut at)?; // ACK delay
                let ranges = varint(payload, &mut at)?;
                varint(payload, &mut at)?; // first range
                                           // Each range reads at least two octets: a huge count fails at the payload's end.
                for _ in 0..ranges {
                    varint(payload, &mut at)?; // gap
                    varint(payload, &mut at)?; // range length
                }
                if ty == 0x03 {
                    for _ in 0..3 {
                        varint(payload, &mut at)?; // ECT(0), ECT(1), ECN-CE counts
                    }
                }
            }
            0x06 => {
                let offset = varint(payload, &mut at)?;
                let len = varint(payload, &mut at)?;
                let data = bytes(payload, &mut at, len)?;
                if offset.checked_add(len)? > (1 << 62) - 1 {
                    return None;
                }
                for (i, &b) in data.iter().enumerate() {
                    let Some(pos) = usize::try_from(offset)
                        .ok()
                        .and_then(|o| o.checked_add(i))
                        .filter(|&p| p < MAX_CLIENT_HELLO_LEN)
                    else {
                        break;
                    };
                    if s.received[pos] && s.data[pos] != b {
                        return None;
                    }
                    s.data[pos] = b;
                    s.received[pos] = true;
                }
            }
            0x1c => {
                varint(payload, &mut at)?; // error code
                varint(payload, &mut at)?; // frame type
                let reason = varint(payload, &mut at)?;
                bytes(payload, &mut at, reason)?;
            }
            _ => return None,
        }
    }
    Some(s)
}
