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
    /// Every map, in a fixed order.
    pub const ALL: [&str; 7] = [XSKS, PORTS, ADDRS4, ADDRS6, CONFIG, COUNTERS, XSK_OWNERS];
}

/// Capacity of the `xsks` map: queues 0..MAX_QUEUES can get a socket.
pub const MAX_QUEUES: u32 = 256;
/// Capacity of the `ports` map.
pub const MAX_PORTS: u32 = 64;
/// Capacity of each of `addrs4` and `addrs6`.
pub const MAX_ADDRS: u32 = 64;
/// A steered UDP payload shorter than this is dropped as malformed.
pub const MIN_QUIC_PAYLOAD: u32 = 21;

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

/// An entry of the `xsk_owners` map (`struct xq_xsk_owner`); all zero: nobody.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XskOwner {
    /// Process that registered the socket.
    pub pid: u32,
    /// Zero.
    pub reserved: u32,
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
pub const CNT_V6: u32 = 11;
/// Number of counters in the `counters` map (`XQ_CNT_COUNT`).
pub const CNT_COUNT: u32 = 19;

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
}

impl FamilyCounter {
    /// Every offset, in index order.
    pub const ALL: [FamilyCounter; 8] = [
        Self::Seen,
        Self::Redirect,
        Self::NotUdp,
        Self::OtherPort,
        Self::OtherAddr,
        Self::Fragment,
        Self::NoSocket,
        Self::Malformed,
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
}

impl Counter {
    /// Index in the `counters` map.
    pub const fn index(self) -> u32 {
        match self {
            Self::Packets => 0,
            Self::PassNotIp => 1,
            Self::PassBadHeader => 2,
            Self::Family(f, c) => f.base() + c as u32,
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
    }

    /// Stable name, e.g. `packets`, `v4.redirected`.
    pub fn name(self) -> String {
        match self {
            Self::Packets => "packets".into(),
            Self::PassNotIp => "passed_not_ip".into(),
            Self::PassBadHeader => "passed_bad_header".into(),
            Self::Family(Family::V4, c) => format!("v4.{}", c.name()),
            Self::Family(Family::V6, c) => format!("v6.{}", c.name()),
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
