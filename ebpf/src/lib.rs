//! The xdp-quic XDP steering program: its committed object and the Rust mirror of the
//! contract in `ebpf/xdp_quic.h` (map names, counter indices, config layout).
//!
//! The program (`ebpf/xdp_quic.c`) is built by `ebpf/build.sh` with clang and the object
//! is committed, so building this crate needs no clang. Every constant here equals its
//! `XQ_*` twin in the header; a unit test parses the header and fails on any mismatch.

#![deny(unsafe_code)]

/// The compiled XDP program (ELF, BPF target), 8-byte aligned as an ELF parser expects.
pub fn object() -> &'static [u8] {
    &OBJECT.0
}

#[repr(C, align(8))]
struct Aligned<B: ?Sized>(B);

static OBJECT: &Aligned<[u8]> = &Aligned(*include_bytes!("../xdp_quic.o"));

/// Name of the XDP program in the object (`XQ_PROG_NAME`).
pub const PROG_NAME: &str = "xdp_quic";

/// Map names in the object; they are also the pin names under `/sys/fs/bpf/xdp-quic/<iface>/`.
pub mod maps {
    /// XSKMAP: rx queue index (`u32`) → AF_XDP socket. Registering a socket here steers
    /// the service packets of that queue to it.
    pub const XSKS: &str = "xsks";
    /// HASH: UDP destination port in host byte order (`u16`) → `1u8`.
    pub const PORTS: &str = "ports";
    /// HASH: IPv4 destination address as its 4 network-order bytes (`[u8; 4]`) → `1u8`.
    pub const ADDRS4: &str = "addrs4";
    /// HASH: IPv6 destination address (`[u8; 16]`) → `1u8`.
    pub const ADDRS6: &str = "addrs6";
    /// ARRAY of one [`crate::Config`].
    pub const CONFIG: &str = "config";
    /// PERCPU_ARRAY of `u64`, indexed by [`crate::Counter`].
    pub const COUNTERS: &str = "counters";
    /// ARRAY: rx queue index (`u32`) → [`crate::XskOwner`]: who registered the socket
    /// of that queue (the kernel cannot list an XSKMAP's sockets to user space).
    pub const XSK_OWNERS: &str = "xsk_owners";
    /// ARRAY of one [`crate::Shield`]: the QUIC rules (all zero: off).
    pub const SHIELD: &str = "shield";
    /// ARRAY: rx queue index (`u32`) → `u32`, nonzero while the worker that drains that
    /// queue is under pressure (the control plane's pressure monitor writes it).
    pub const PRESSURE: &str = "pressure";
    /// LRU_HASH: [`crate::BucketKey`] → [`crate::Bucket`], the token buckets of source
    /// prefixes; written by the program only.
    pub const BUCKETS: &str = "buckets";
    /// Every map, in a fixed order.
    pub const ALL: [&str; 10] = [
        XSKS, PORTS, ADDRS4, ADDRS6, CONFIG, COUNTERS, XSK_OWNERS, SHIELD, PRESSURE, BUCKETS,
    ];
}

/// Capacity of the `xsks` map: queues 0..MAX_QUEUES can get a socket.
pub const MAX_QUEUES: u32 = 256;
/// Capacity of the `ports` map.
pub const MAX_PORTS: u32 = 64;
/// Capacity of each of `addrs4` and `addrs6`.
pub const MAX_ADDRS: u32 = 64;
/// Capacity of the `buckets` map (source prefixes with a token bucket).
pub const MAX_BUCKETS: u32 = 32768;
/// A steered UDP payload shorter than this is dropped as malformed.
pub const MIN_QUIC_PAYLOAD: u32 = 21;

/// [`Shield::flags`] bit: the shield is on: Initials of a spoken version in datagrams
/// shorter than [`MIN_INITIAL_DATAGRAM`] are dropped, long headers of other versions too
/// when shorter than that, and rate limited per source prefix when not; version
/// negotiation packets (version 0) are dropped unless their DCID is in the layout.
pub const SHIELD_ON: u32 = 0x1;
/// [`Shield::flags`] bit: also drop short headers, and Handshake and Retry long headers of
/// a spoken version, whose DCID is not in the layout.
pub const SHIELD_CID: u32 = 0x2;
/// [`Shield::flags`] bit: also admit tokenless Initials per source prefix while their rx
/// queue is under pressure (the `pressure` map).
pub const SHIELD_ADMIT: u32 = 0x4;
/// [`Shield::flags`] bit, not read by the program: the shield was turned on by a server for
/// its life (`serve --xdp-shield`, `ShieldGuard`), not by `xdp-quic attach --shield`. Found
/// set while no server runs, it is what a server that did not stop cleanly left behind.
pub const SHIELD_SERVER: u32 = 0x8;
/// The smallest UDP payload of a datagram with an Initial a server accepts (RFC 9000 §14.1),
/// and of one with a version it does not speak that it answers (§5.2.2).
pub const MIN_INITIAL_DATAGRAM: u32 = 1200;
/// Slots of [`Shield::versions`].
pub const MAX_VERSIONS: usize = 8;
/// Longest server id a CID layout can hold.
pub const MAX_SERVER_ID: usize = 14;
/// Longest CID of QUIC v1.
pub const MAX_CID_LEN: u32 = 20;
/// [`BucketKey::kind`]: Initials without a token, under pressure.
pub const BUCKET_INITIAL: u8 = 1;
/// [`BucketKey::kind`]: long headers of a version not spoken, 1,200 octets or more.
pub const BUCKET_VERSION: u8 = 2;

/// [`Config::flags`] bit: steer only packets to an address in `addrs4` / `addrs6`.
pub const CFG_FILTER_ADDRS: u32 = 0x1;
/// [`Config::mode`]: unknown (never attached by the control plane).
pub const MODE_UNKNOWN: u32 = 0;
/// [`Config::mode`]: native (driver) XDP.
pub const MODE_NATIVE: u32 = 1;
/// [`Config::mode`]: generic (skb) XDP.
pub const MODE_SKB: u32 = 2;

/// The single entry of the `config` map (`struct xq_config`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// `CFG_*` bits, read by the program.
    pub flags: u32,
    /// `MODE_*`: how the control plane attached; the program ignores it.
    pub mode: u32,
    /// Interface index the program is attached to; the program ignores it.
    pub ifindex: u32,
    /// Id of the `xsk_owners` map, which the program does not use (so the kernel does not
    /// list it among the program's maps): the control plane finds it from here. The
    /// program ignores it.
    pub reserved: u32,
    /// Inode of the network namespace of the interface; the program ignores it.
    pub netns_ino: u64,
}

#[cfg(feature = "aya")]
#[allow(unsafe_code)]
// SAFETY: `Config` is `repr(C)`, has no padding (4 × u32 then a u64 at offset 16) and
// every bit pattern is a valid value, as `aya::Pod` requires.
unsafe impl aya::Pod for Config {}

/// A token bucket's parameters (`struct xq_rate`): `burst` tokens, refilled at `per_sec`
/// tokens a second (0: never refilled).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rate {
    /// Tokens added per second.
    pub per_sec: u32,
    /// Most tokens a bucket holds (and holds when it is made).
    pub burst: u32,
}

/// The single entry of the `shield` map (`struct xq_shield`); all zero: off.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Shield {
    /// `SHIELD_*` bits.
    pub flags: u32,
    /// Octet 0 of the server's CIDs: config rotation << 5 | (length - 1).
    pub cid_first: u8,
    /// Octets of the server id, at most [`MAX_SERVER_ID`].
    pub sid_len: u8,
    /// The worker octet of a CID is below this (1..=256).
    pub workers: u16,
    /// The server id (its first `sid_len` octets).
    pub server_id: [u8; 16],
    /// Source prefix of a bucket, IPv4 (bits, 0..=32).
    pub prefix4: u8,
    /// Source prefix of a bucket, IPv6 (bits, 0..=128).
    pub prefix6: u8,
    /// Not read by the program (`reserved` in the C struct): how many servers engaged the
    /// shield together ([`SHIELD_SERVER`]'s bookkeeping, user space's alone).
    pub engaged: u16,
    /// Versions the server speaks, with v1's long packet types; 0: an empty slot.
    pub versions: [u32; MAX_VERSIONS],
    /// Per prefix: Initials without a token, while their queue is under pressure.
    pub initial: Rate,
    /// Per prefix: long headers of a version not spoken, 1,200 octets or more.
    pub version: Rate,
}

#[cfg(feature = "aya")]
#[allow(unsafe_code)]
// SAFETY: `Shield` is `repr(C)` without padding (u32, u8, u8, u16, 16 × u8, u8, u8, u16,
// 8 × u32, 4 × u32: every field at its natural alignment, 76 octets) and every bit pattern
// is a valid value, as `aya::Pod` requires.
unsafe impl aya::Pod for Shield {}

/// A key of the `buckets` map (`struct xq_bucket_key`): one source prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BucketKey {
    /// `BUCKET_*`.
    pub kind: u8,
    /// 4 or 6.
    pub family: u8,
    /// Prefix length in bits.
    pub prefix: u8,
    /// Zero.
    pub reserved: u8,
    /// The source address masked to the prefix (IPv4: the first 4 octets).
    pub addr: [u8; 16],
}

#[cfg(feature = "aya")]
#[allow(unsafe_code)]
// SAFETY: `BucketKey` is `repr(C)` of 20 octets without padding; any bits are valid.
unsafe impl aya::Pod for BucketKey {}

/// A value of the `buckets` map (`struct xq_bucket`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    /// `bpf_ktime_get_ns()` the tokens count up to.
    pub stamp_ns: u64,
    /// Tokens left.
    pub tokens: u32,
    /// Zero.
    pub reserved: u32,
}

#[cfg(feature = "aya")]
#[allow(unsafe_code)]
// SAFETY: `Bucket` is `repr(C)`, a u64 then two u32, no padding; any bits are valid.
unsafe impl aya::Pod for Bucket {}

/// An entry of the `xsk_owners` map (`struct xq_xsk_owner`); all zero: nobody.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XskOwner {
    /// Process that registered the socket, as its PID namespace numbers it.
    pub pid: u32,
    /// Inode of that PID namespace (`/proc/<pid>/ns/pid`; nsfs inodes fit 32 bits); 0: not
    /// recorded (an older registration).
    pub pidns: u32,
    /// Inode of the socket (`socket:[ino]` in `/proc/<pid>/fd`).
    pub sock_ino: u64,
}

#[cfg(feature = "aya")]
#[allow(unsafe_code)]
// SAFETY: `XskOwner` is `repr(C)` without padding (two u32 then a u64) and every bit
// pattern is a valid value, as `aya::Pod` requires.
unsafe impl aya::Pod for XskOwner {}

/// First index of the IPv4 counter block (`XQ_CNT_V4`).
pub const CNT_V4: u32 = 3;
/// First index of the IPv6 counter block (`XQ_CNT_V6`).
pub const CNT_V6: u32 = 16;
/// Number of counters in the `counters` map (`XQ_CNT_COUNT`).
pub const CNT_COUNT: u32 = 32;

/// Offsets in a per-family counter block (`XQ_FAM_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum FamilyCounter {
    /// Packets of the family that got one of the outcomes below.
    Seen = 0,
    /// Steered to the AF_XDP socket of their rx queue.
    Redirect = 1,
    /// Passed: not UDP (IPv6: any extension header).
    NotUdp = 2,
    /// Passed: UDP to a port that is not a service port.
    OtherPort = 3,
    /// Passed: service port, but not a configured address.
    OtherAddr = 4,
    /// Passed: an IP fragment.
    Fragment = 5,
    /// Passed: service packet but no socket registered on its rx queue.
    NoSocket = 6,
    /// Dropped: service packet whose UDP length runs past the end or is too short for QUIC.
    Malformed = 7,
    /// Dropped by the shield: an Initial of a spoken version in a datagram shorter than
    /// [`MIN_INITIAL_DATAGRAM`].
    ShortInitial = 8,
    /// Dropped by the shield: a long header of a version not spoken in a datagram shorter
    /// than [`MIN_INITIAL_DATAGRAM`] (too small for version negotiation), or a version
    /// negotiation packet (version 0) whose DCID is not in the layout (only servers send
    /// them: it can only answer a connection of ours).
    UnknownVersion = 9,
    /// Dropped by the shield: a long header of a version not spoken, its source prefix over
    /// the version-negotiation rate.
    VersionRate = 10,
    /// Dropped by the shield: a short header, or a Handshake or Retry long header of a spoken
    /// version, whose DCID is not in the server's layout.
    ForeignCid = 11,
    /// Dropped by the shield: an Initial without a token while its queue was under
    /// pressure, its source prefix over the admission rate.
    InitialRate = 12,
}

impl FamilyCounter {
    /// Every offset, in index order.
    pub const ALL: [FamilyCounter; 13] = [
        Self::Seen,
        Self::Redirect,
        Self::NotUdp,
        Self::OtherPort,
        Self::OtherAddr,
        Self::Fragment,
        Self::NoSocket,
        Self::Malformed,
        Self::ShortInitial,
        Self::UnknownVersion,
        Self::VersionRate,
        Self::ForeignCid,
        Self::InitialRate,
    ];

    /// Stable snake_case name (used in `xdp-quic stats` output).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Seen => "seen",
            Self::Redirect => "redirected",
            Self::NotUdp => "passed_not_udp",
            Self::OtherPort => "passed_other_port",
            Self::OtherAddr => "passed_other_addr",
            Self::Fragment => "passed_fragment",
            Self::NoSocket => "passed_no_socket",
            Self::Malformed => "dropped_malformed",
            Self::ShortInitial => "dropped_short_initial",
            Self::UnknownVersion => "dropped_unknown_version",
            Self::VersionRate => "dropped_version_rate",
            Self::ForeignCid => "dropped_foreign_cid",
            Self::InitialRate => "dropped_initial_rate",
        }
    }
}

/// IP family of a counter block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// Base index of the family's block.
    pub const fn base(self) -> u32 {
        match self {
            Self::V4 => CNT_V4,
            Self::V6 => CNT_V6,
        }
    }
}

/// An index into the `counters` map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Counter {
    /// Every packet the program saw (`XQ_CNT_PACKETS`).
    Packets,
    /// Passed: not IPv4/IPv6 (`XQ_CNT_PASS_NOT_IP`).
    PassNotIp,
    /// Passed: header truncated or invalid before the port (`XQ_CNT_PASS_BAD_HEADER`).
    PassBadHeader,
    /// A per-family counter.
    Family(Family, FamilyCounter),
    /// Not an outcome: Initials without a token admitted under pressure, within their
    /// prefix's rate (`XQ_CNT_ADMITTED`).
    Admitted,
    /// Not an outcome: Initials with a token under pressure, which pass unlimited
    /// (`XQ_CNT_WITH_TOKEN`).
    WithToken,
    /// Not an outcome: long headers of a version not spoken, 1,200 octets or more, within
    /// their prefix's rate (`XQ_CNT_VERSION_PASSED`).
    VersionPassed,
}

impl Counter {
    /// Index in the `counters` map.
    pub const fn index(self) -> u32 {
        match self {
            Self::Packets => 0,
            Self::PassNotIp => 1,
            Self::PassBadHeader => 2,
            Self::Family(f, c) => f.base() + c as u32,
            Self::Admitted => 29,
            Self::WithToken => 30,
            Self::VersionPassed => 31,
        }
    }

    /// Every counter, in index order (`CNT_COUNT` of them).
    pub fn all() -> impl Iterator<Item = Counter> {
        [Self::Packets, Self::PassNotIp, Self::PassBadHeader]
            .into_iter()
            .chain(
                FamilyCounter::ALL
                    .into_iter()
                    .map(|c| Self::Family(Family::V4, c)),
            )
            .chain(
                FamilyCounter::ALL
                    .into_iter()
                    .map(|c| Self::Family(Family::V6, c)),
            )
            .chain([Self::Admitted, Self::WithToken, Self::VersionPassed])
    }

    /// Stable name, e.g. `packets`, `v4.redirected`.
    pub fn name(self) -> String {
        match self {
            Self::Packets => "packets".into(),
            Self::PassNotIp => "passed_not_ip".into(),
            Self::PassBadHeader => "passed_bad_header".into(),
            Self::Family(Family::V4, c) => format!("v4.{}", c.name()),
            Self::Family(Family::V6, c) => format!("v6.{}", c.name()),
            Self::Admitted => "shield_admitted".into(),
            Self::WithToken => "shield_with_token".into(),
            Self::VersionPassed => "shield_version_passed".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// `#define XQ_NAME value` lines of the shared header, value as written.
    fn header_defines() -> HashMap<String, String> {
        include_str!("../xdp_quic.h")
            .lines()
            .filter_map(|l| l.trim().strip_prefix("#define "))
            .filter_map(|rest| {
                let mut it = rest.split_whitespace();
                let name = it.next()?.to_string();
                let value = it
                    .next()?
                    .trim_end_matches('u')
                    .trim_matches('"')
                    .to_string();
                Some((name, value))
            })
            .collect()
    }

    fn num(d: &HashMap<String, String>, name: &str) -> u32 {
        let v = d
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing from xdp_quic.h"));
        match v.strip_prefix("0x") {
            Some(hex) => u32::from_str_radix(hex, 16).unwrap(),
            None => v.parse().unwrap(),
        }
    }

    #[test]
    fn mirror_matches_header() {
        let d = header_defines();
        assert_eq!(d["XQ_PROG_NAME"], PROG_NAME);
        assert_eq!(d["XQ_MAP_XSKS"], maps::XSKS);
        assert_eq!(d["XQ_MAP_PORTS"], maps::PORTS);
        assert_eq!(d["XQ_MAP_ADDRS4"], maps::ADDRS4);
        assert_eq!(d["XQ_MAP_ADDRS6"], maps::ADDRS6);
        assert_eq!(d["XQ_MAP_CONFIG"], maps::CONFIG);
        assert_eq!(d["XQ_MAP_COUNTERS"], maps::COUNTERS);
        assert_eq!(d["XQ_MAP_XSK_OWNERS"], maps::XSK_OWNERS);
        assert_eq!(d["XQ_MAP_SHIELD"], maps::SHIELD);
        assert_eq!(d["XQ_MAP_PRESSURE"], maps::PRESSURE);
        assert_eq!(d["XQ_MAP_BUCKETS"], maps::BUCKETS);
        assert_eq!(num(&d, "XQ_MAX_BUCKETS"), MAX_BUCKETS);
        assert_eq!(num(&d, "XQ_SHIELD_ON"), SHIELD_ON);
        assert_eq!(num(&d, "XQ_SHIELD_CID"), SHIELD_CID);
        assert_eq!(num(&d, "XQ_SHIELD_ADMIT"), SHIELD_ADMIT);
        assert_eq!(num(&d, "XQ_SHIELD_SERVER"), SHIELD_SERVER);
        assert_eq!(num(&d, "XQ_MIN_INITIAL_DATAGRAM"), MIN_INITIAL_DATAGRAM);
        assert_eq!(num(&d, "XQ_MAX_VERSIONS") as usize, MAX_VERSIONS);
        assert_eq!(num(&d, "XQ_MAX_SERVER_ID") as usize, MAX_SERVER_ID);
        assert_eq!(num(&d, "XQ_MAX_CID_LEN"), MAX_CID_LEN);
        assert_eq!(num(&d, "XQ_BUCKET_INITIAL"), u32::from(BUCKET_INITIAL));
        assert_eq!(num(&d, "XQ_BUCKET_VERSION"), u32::from(BUCKET_VERSION));
        assert_eq!(num(&d, "XQ_CNT_ADMITTED"), Counter::Admitted.index());
        assert_eq!(num(&d, "XQ_CNT_WITH_TOKEN"), Counter::WithToken.index());
        assert_eq!(
            num(&d, "XQ_CNT_VERSION_PASSED"),
            Counter::VersionPassed.index()
        );
        assert_eq!(num(&d, "XQ_MAX_QUEUES"), MAX_QUEUES);
        assert_eq!(num(&d, "XQ_MAX_PORTS"), MAX_PORTS);
        assert_eq!(num(&d, "XQ_MAX_ADDRS"), MAX_ADDRS);
        assert_eq!(num(&d, "XQ_MIN_QUIC_PAYLOAD"), MIN_QUIC_PAYLOAD);
        assert_eq!(num(&d, "XQ_CFG_FILTER_ADDRS"), CFG_FILTER_ADDRS);
        assert_eq!(num(&d, "XQ_MODE_UNKNOWN"), MODE_UNKNOWN);
        assert_eq!(num(&d, "XQ_MODE_NATIVE"), MODE_NATIVE);
        assert_eq!(num(&d, "XQ_MODE_SKB"), MODE_SKB);
        assert_eq!(num(&d, "XQ_CNT_PACKETS"), Counter::Packets.index());
        assert_eq!(num(&d, "XQ_CNT_PASS_NOT_IP"), Counter::PassNotIp.index());
        assert_eq!(
            num(&d, "XQ_CNT_PASS_BAD_HEADER"),
            Counter::PassBadHeader.index()
        );
        assert_eq!(num(&d, "XQ_CNT_V4"), CNT_V4);
        assert_eq!(num(&d, "XQ_CNT_V6"), CNT_V6);
        assert_eq!(num(&d, "XQ_CNT_COUNT"), CNT_COUNT);
        assert_eq!(num(&d, "XQ_FAM_COUNT") as usize, FamilyCounter::ALL.len());
        let fam = [
            ("XQ_FAM_SEEN", FamilyCounter::Seen),
            ("XQ_FAM_REDIRECT", FamilyCounter::Redirect),
            ("XQ_FAM_NOT_UDP", FamilyCounter::NotUdp),
            ("XQ_FAM_OTHER_PORT", FamilyCounter::OtherPort),
            ("XQ_FAM_OTHER_ADDR", FamilyCounter::OtherAddr),
            ("XQ_FAM_FRAGMENT", FamilyCounter::Fragment),
            ("XQ_FAM_NO_SOCKET", FamilyCounter::NoSocket),
            ("XQ_FAM_MALFORMED", FamilyCounter::Malformed),
            ("XQ_FAM_SHORT_INITIAL", FamilyCounter::ShortInitial),
            ("XQ_FAM_UNKNOWN_VERSION", FamilyCounter::UnknownVersion),
            ("XQ_FAM_VERSION_RATE", FamilyCounter::VersionRate),
            ("XQ_FAM_FOREIGN_CID", FamilyCounter::ForeignCid),
            ("XQ_FAM_INITIAL_RATE", FamilyCounter::InitialRate),
        ];
        for (name, c) in fam {
            assert_eq!(num(&d, name), c as u32, "{name}");
        }
    }

    #[test]
    fn counters_are_dense_and_named_uniquely() {
        let all: Vec<Counter> = Counter::all().collect();
        assert_eq!(all.len() as u32, CNT_COUNT);
        for (i, c) in all.iter().enumerate() {
            assert_eq!(c.index(), i as u32, "{c:?}");
        }
        let names: std::collections::HashSet<String> = all.iter().map(|c| c.name()).collect();
        assert_eq!(names.len(), all.len());
        assert_eq!(CNT_V6, CNT_V4 + FamilyCounter::ALL.len() as u32);
    }

    #[test]
    fn config_layout_matches_c() {
        assert_eq!(std::mem::size_of::<Config>(), 24);
        assert_eq!(std::mem::align_of::<Config>(), 8);
        assert_eq!(std::mem::size_of::<XskOwner>(), 16);
        assert_eq!(std::mem::size_of::<Shield>(), 76);
        assert_eq!(std::mem::align_of::<Shield>(), 4);
        assert_eq!(std::mem::size_of::<BucketKey>(), 20);
        assert_eq!(std::mem::size_of::<Bucket>(), 16);
    }

    /// Field offsets of `struct xq_shield` as C lays it out (natural alignment, no padding).
    #[test]
    fn shield_offsets_match_c() {
        use std::mem::offset_of;
        assert_eq!(offset_of!(Shield, cid_first), 4);
        assert_eq!(offset_of!(Shield, sid_len), 5);
        assert_eq!(offset_of!(Shield, workers), 6);
        assert_eq!(offset_of!(Shield, server_id), 8);
        assert_eq!(offset_of!(Shield, prefix4), 24);
        assert_eq!(offset_of!(Shield, prefix6), 25);
        assert_eq!(offset_of!(Shield, versions), 28);
        assert_eq!(offset_of!(Shield, initial), 60);
        assert_eq!(offset_of!(Shield, version), 68);
        assert_eq!(offset_of!(BucketKey, addr), 4);
        assert_eq!(offset_of!(Bucket, tokens), 8);
    }

    #[test]
    fn object_is_an_aligned_bpf_elf() {
        let o = object();
        assert_eq!(o.as_ptr() as usize % 8, 0);
        assert_eq!(&o[..4], b"\x7fELF");
        assert_eq!(o[4], 2, "ELFCLASS64");
        // e_machine (little endian) = EM_BPF (247)
        assert_eq!(u16::from_le_bytes([o[18], o[19]]), 247);
    }
}
