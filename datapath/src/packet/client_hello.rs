//! A server-side peek at the TLS ClientHello inside a client's first QUIC v1 Initial packet:
//! the server name (SNI) and the ALPN protocols it offers, known before quinn-proto creates any
//! state for the connection, so that an application can accept, refuse or Retry on them
//! (quinn-proto's `Incoming` does not expose either).
//!
//! # Contract
//!
//! Call [`peek`] (or [`peek_with`]) with the datagram quinn-proto reported as a new connection
//! (`DatagramEvent::NewConnection`). It costs one key derivation and one AEAD decryption of
//! the packet: about what quinn-proto spends on the same packet again when it accepts. It keeps
//! no state, and looks at the first QUIC packet of the datagram only.
//!
//! What it reports is a claim of an unauthenticated peer: Initial keys derive from the
//! connection ID the client chose (they are public), so the AEAD only shows that the packet
//! was sealed by someone who saw or chose that ID, not who they are, and the source address is
//! not validated. It is good for choosing what to do (refuse an unknown name, Retry first);
//! the authenticated handshake still decides.
//!
//! # Steps and their RFC sections
//!
//! 1. Long header of an Initial packet, version 1: RFC 9000 §17.2 and §17.2.2 (DCID, SCID,
//!    token length, token, length; variable-length integers, §16).
//! 2. Client Initial keys from the destination connection ID: RFC 9001 §5.2 (HKDF-Extract
//!    with the version 1 salt, `client in`, then `quic key`, `quic iv`, `quic hp` with
//!    HKDF-Expand-Label of RFC 8446 §7.1), AEAD_AES_128_GCM.
//! 3. Header protection removed: RFC 9001 §5.4.1 and §5.4.2 (sample of 16 bytes at the
//!    packet number offset + 4; AES-ECB mask).
//! 4. Payload decrypted: RFC 9001 §5.3 (nonce = IV xor packet number, AAD = the unprotected
//!    header). The reserved bits must then be zero (RFC 9000 §17.2).
//! 5. Frames walked: PADDING, PING, ACK, CRYPTO, CONNECTION_CLOSE, the only frames an Initial
//!    may carry (RFC 9000 §12.4, §19). CRYPTO data is reassembled by offset in a bounded
//!    buffer ([`MAX_CLIENT_HELLO_LEN`]): frames in any order, overlaps allowed when they agree
//!    (a disagreement is [`PeekError::Malformed`]).
//! 6. The ClientHello parsed: RFC 8446 §4.1.2 (handshake type 1, legacy version, random,
//!    session id, cipher suites, compression methods, extensions), `server_name` (type 0,
//!    RFC 6066 §3, `host_name` entries) and `application_layer_protocol_negotiation`
//!    (type 16, RFC 7301 §3.1).
//!
//! # Versions
//!
//! QUIC version 1 only. quinn-proto's default `EndpointConfig` also accepts the drafts 29 to
//! 34 (versions `0xff00001d..=0xff000022`), whose Initial keys derive from other salts: the
//! peek answers [`PeekError::UnsupportedVersion`] for them, which an accept hook sees as
//! [`crate::Incoming::client_hello`]'s error (a policy on names refuses it).
//!
//! # A ClientHello over more than one Initial
//!
//! Large key shares (post-quantum hybrids) spread a ClientHello over two Initial packets, in
//! two datagrams. The parse reads only the start of the CRYPTO stream that this packet
//! carries without a gap (offsets 0 up to the first byte it lacks): bytes past a gap are not
//! what the TLS stack will read if another packet (coalesced in the same datagram, or in a
//! later one) fills the gap, since quinn-proto hands the stream over in order and drops the
//! later copy of a byte received twice. When it needs a byte past that start, it answers
//! [`PeekError::Incomplete`], unless both the `server_name` and the ALPN extensions were
//! already read in full: then it returns them (extensions do not repeat, so nothing later can
//! change them). An absent extension is only known once every extension header was read.
//!
//! # For a policy
//!
//! An error ([`PeekError`]) says the name and protocols are not known, not that there are
//! none: an application that refuses by name (a deny-list) must decide what an error means
//! (refuse: a client whose ClientHello spans two datagrams, as post-quantum key shares make
//! it, is then refused too). [`ClientHelloInfo::server_name`] is the name made canonical
//! for such a comparison: in lower case as rustls takes it, `None` for an IP address (which
//! rustls takes as no name), and without a trailing dot, which rustls keeps (its certificate
//! resolver and `Conn::server_name` see `example.com.` where the hook sees `example.com`).
//!
//! # Allocation
//!
//! Decryption and reassembly use the fixed buffers of a [`Scratch`]: [`peek`] keeps one on
//! the stack (about 8.5 KiB), [`peek_with`] takes one the caller reuses and returns a
//! [`ClientHello`] borrowing it, with no heap allocation at all. [`peek`] allocates its owned
//! result ([`ClientHelloInfo`]) only.

use std::fmt;
use std::ops::Range;

use ring::aead::{self, quic as header_protection, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;

/// QUIC version 1 (RFC 9000).
const VERSION_1: u32 = 1;

/// The initial salt of QUIC version 1 (RFC 9001 §5.2).
const INITIAL_SALT_V1: [u8; 20] = [
    0x38, 0x76, 0x2c, 0xf7, 0xf5, 0x59, 0x34, 0xb3, 0x4d, 0x17, 0x9a, 0xe6, 0xa4, 0xc8, 0x0c, 0xad,
    0xcc, 0xbb, 0x7f, 0x0a,
];

/// Longest connection ID of QUIC version 1 (RFC 9000 §17.2).
const MAX_CID_LEN: usize = 20;
/// AEAD_AES_128_GCM tag.
#[cfg(any(test, feature = "testing"))]
const TAG_LEN: usize = 16;
/// Header protection sample (RFC 9001 §5.4.2).
const SAMPLE_LEN: usize = 16;
/// The sample starts this far after the packet number offset (RFC 9001 §5.4.2).
const SAMPLE_OFFSET: usize = 4;
/// Largest value of a variable-length integer; a CRYPTO frame ends below it (RFC 9000 §19.6).
const VARINT_MAX: u64 = (1 << 62) - 1;

/// The largest Initial packet (header included) [`peek`] decrypts: room for an Ethernet MTU
/// datagram and for the largest AF_XDP frame of this datapath. A larger one is
/// [`PeekError::TooLarge`].
pub const MAX_PACKET_LEN: usize = 4096;

/// How much of the CRYPTO stream is reassembled: offsets from 0 to this bound. A ClientHello
/// larger than this is parsed as far as the bound (see the module docs on incomplete ones).
pub const MAX_CLIENT_HELLO_LEN: usize = 4096;

const TLS_CLIENT_HELLO: u8 = 1;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const SNI_HOST_NAME: u8 = 0;

/// Why no ClientHello could be read from a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PeekError {
    /// The first packet is not a long-header Initial packet (a short header, 0-RTT,
    /// Handshake or Retry).
    #[error("not an Initial packet")]
    NotInitial,
    /// A long header of another version than QUIC version 1 (0 is version negotiation).
    #[error("QUIC version {0:#x} is not version 1")]
    UnsupportedVersion(u32),
    /// The datagram ends before the packet its header announces.
    #[error("truncated Initial packet")]
    Truncated,
    /// The packet or its content breaks the encoding rules: a connection ID over 20 bytes,
    /// the fixed bit clear, reserved bits set, a frame an Initial may not carry or one cut
    /// short, CRYPTO frames disagreeing on a byte, a ClientHello badly encoded, an extension
    /// repeated, a `host_name` that is not printable ASCII, an empty ALPN name.
    #[error("malformed Initial packet or ClientHello")]
    Malformed,
    /// The Initial packet is larger than [`MAX_PACKET_LEN`].
    #[error("Initial packet larger than {MAX_PACKET_LEN} bytes")]
    TooLarge,
    /// The AEAD refused the payload: a forged or corrupted packet, or a packet not sealed with
    /// the client Initial keys of its destination connection ID.
    #[error("Initial packet does not decrypt")]
    Decrypt,
    /// The ClientHello goes on past what this packet carries, and the server name and ALPN
    /// were not both read yet: the caller decides without them (the rest comes in the
    /// client's next Initial, which only quinn-proto's connection state reassembles).
    #[error("ClientHello continues past this packet")]
    Incomplete,
    /// The CRYPTO stream starts with another handshake message than a ClientHello.
    #[error("the CRYPTO stream does not start with a ClientHello")]
    NotClientHello,
}

/// The server name and ALPN protocols a ClientHello offers, owned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientHelloInfo {
    /// The `host_name` of the `server_name` extension, made canonical: in lower case, one
    /// trailing dot removed (rustls keeps it). `None` when the extension is absent, as when
    /// the client connects to an IP address, or when the name is an IP address (rustls takes
    /// both as no name).
    pub server_name: Option<String>,
    /// The ALPN protocol names in the client's order of preference; empty when the
    /// extension is absent.
    pub alpn: Vec<Vec<u8>>,
}

/// The server name and ALPN protocols a ClientHello offers, borrowed from a [`Scratch`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientHello<'a> {
    /// The `host_name` of the `server_name` extension as sent (printable ASCII, in any
    /// case); [`ClientHello::to_info`] makes it canonical.
    pub server_name: Option<&'a str>,
    /// As [`ClientHelloInfo::alpn`].
    pub alpn: Alpn<'a>,
}

impl ClientHello<'_> {
    /// The owned copy, its server name made canonical ([`ClientHelloInfo::server_name`]).
    pub fn to_info(&self) -> ClientHelloInfo {
        ClientHelloInfo {
            server_name: self.server_name.and_then(canonical_server_name),
            alpn: self.alpn.iter().map(<[u8]>::to_vec).collect(),
        }
    }
}

/// The ALPN protocol names of a ClientHello (a validated `ProtocolNameList`, RFC 7301).
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct Alpn<'a> {
    /// The list without its length: entries of a length byte (at least 1) and a name.
    list: &'a [u8],
}

impl<'a> Alpn<'a> {
    /// The protocol names in order.
    pub fn iter(&self) -> AlpnIter<'a> {
        AlpnIter { rest: self.list }
    }

    /// Whether the client offers no protocol (or no ALPN extension at all).
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Whether the client offers `protocol`.
    pub fn contains(&self, protocol: &[u8]) -> bool {
        self.iter().any(|p| p == protocol)
    }
}

impl fmt::Debug for Alpn<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.iter().map(String::from_utf8_lossy))
            .finish()
    }
}

impl<'a> IntoIterator for Alpn<'a> {
    type Item = &'a [u8];
    type IntoIter = AlpnIter<'a>;
    fn into_iter(self) -> AlpnIter<'a> {
        self.iter()
    }
}

/// Iterator over the protocol names of an [`Alpn`].
#[derive(Debug, Clone)]
pub struct AlpnIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for AlpnIter<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        let (&len, tail) = self.rest.split_first()?;
        let (name, rest) = tail.split_at_checked(usize::from(len))?;
        self.rest = rest;
        Some(name)
    }
}

/// The fixed buffers of a peek: the decrypted packet and the reassembled CRYPTO stream, with
/// a bitmap of the stream bytes received. About 8.5 KiB; reuse one (e.g. per worker, boxed)
/// with [`peek_with`] to keep the peek free of heap allocation and of zeroing.
pub struct Scratch {
    packet: [u8; MAX_PACKET_LEN],
    stream: [u8; MAX_CLIENT_HELLO_LEN],
    received: [u64; MAX_CLIENT_HELLO_LEN / 64],
}

impl Scratch {
    /// Zeroed buffers.
    pub const fn new() -> Self {
        Self {
            packet: [0; MAX_PACKET_LEN],
            stream: [0; MAX_CLIENT_HELLO_LEN],
            received: [0; MAX_CLIENT_HELLO_LEN / 64],
        }
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Scratch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scratch").finish_non_exhaustive()
    }
}

/// Reads the server name and ALPN protocols of the ClientHello in the first packet of
/// `datagram`, a client's Initial packet of QUIC version 1. See the module docs for the
/// contract and for a ClientHello that spans packets.
///
/// Never panics. Uses a [`Scratch`] on the stack; allocates the result only.
pub fn peek(datagram: &[u8]) -> Result<ClientHelloInfo, PeekError> {
    let mut scratch = Scratch::new();
    peek_with(datagram, &mut scratch).map(|hello| hello.to_info())
}

/// [`peek`] with the caller's buffers, returning a view into them: no heap allocation.
pub fn peek_with<'s>(
    datagram: &[u8],
    scratch: &'s mut Scratch,
) -> Result<ClientHello<'s>, PeekError> {
    let Scratch {
        packet,
        stream,
        received,
    } = scratch;
    let payload = open(datagram, packet)?.payload;
    *received = [0; MAX_CLIENT_HELLO_LEN / 64];
    let mut crypto = CryptoStream {
        data: stream,
        received,
    };
    collect_crypto(payload, &mut crypto)?;
    let crypto = Received {
        prefix: contiguous_prefix(crypto.received),
        data: crypto.data,
    };
    parse_client_hello(crypto)
}

// ---------------------------------------------------------------------------------------
// Packet protection

/// Where the fields of an Initial packet lie in the datagram.
#[derive(Debug, Clone)]
struct Layout {
    dcid: Range<usize>,
    #[cfg_attr(not(any(test, feature = "testing")), allow(dead_code))]
    scid: Range<usize>,
    #[cfg_attr(not(any(test, feature = "testing")), allow(dead_code))]
    token: Range<usize>,
    /// Where the packet number starts (the end of the Length field).
    pn_offset: usize,
    /// Where the packet ends (the datagram may hold more packets after it).
    end: usize,
}

/// Reads the long header of the first packet of `datagram` (RFC 9000 §17.2.2).
fn layout(datagram: &[u8]) -> Result<Layout, PeekError> {
    let mut r = Reader::new(datagram);
    let first = r.u8().ok_or(PeekError::Truncated)?;
    if first & 0x80 == 0 {
        return Err(PeekError::NotInitial);
    }
    let version = r.u32().ok_or(PeekError::Truncated)?;
    if version != VERSION_1 {
        return Err(PeekError::UnsupportedVersion(version));
    }
    // The fixed bit (0x40) is not checked: quinn-proto takes an Initial without it (RFC
    // 9287's greasing), and a peek that refused one would let its ClientHello through
    // unread.
    if (first >> 4) & 0b11 != 0 {
        return Err(PeekError::NotInitial);
    }
    let dcid = r.cid()?;
    let scid = r.cid()?;
    let token_len = r.varint().ok_or(PeekError::Truncated)?;
    let token = r.range(token_len).ok_or(PeekError::Truncated)?;
    let length = r.varint().ok_or(PeekError::Truncated)?;
    let pn_offset = r.pos;
    let end = usize::try_from(length)
        .ok()
        .and_then(|len| pn_offset.checked_add(len))
        .filter(|&end| end <= datagram.len())
        .ok_or(PeekError::Truncated)?;
    if length < (SAMPLE_OFFSET + SAMPLE_LEN) as u64 {
        // Too short to carry a header-protection sample (RFC 9001 §5.4.2).
        return Err(PeekError::Malformed);
    }
    Ok(Layout {
        dcid,
        scid,
        token,
        pn_offset,
        end,
    })
}

/// The client Initial keys of a destination connection ID (RFC 9001 §5.2).
struct InitialKeys {
    key: [u8; 16],
    iv: [u8; 12],
    hp: [u8; 16],
}

impl InitialKeys {
    fn client(dcid: &[u8]) -> Self {
        let initial = hkdf::Salt::new(hkdf::HKDF_SHA256, &INITIAL_SALT_V1).extract(dcid);
        let mut secret = [0; 32];
        expand_label(&initial, b"client in", &mut secret);
        let secret = hkdf::Prk::new_less_safe(hkdf::HKDF_SHA256, &secret);
        let mut keys = Self {
            key: [0; 16],
            iv: [0; 12],
            hp: [0; 16],
        };
        expand_label(&secret, b"quic key", &mut keys.key);
        expand_label(&secret, b"quic iv", &mut keys.iv);
        expand_label(&secret, b"quic hp", &mut keys.hp);
        keys
    }

    fn packet_key(&self) -> LessSafeKey {
        // A 16-byte key is what AES-128-GCM takes: `new` cannot fail here.
        let key = UnboundKey::new(&aead::AES_128_GCM, &self.key);
        LessSafeKey::new(key.unwrap_or_else(|_| unreachable!("AES-128 key of 16 bytes")))
    }

    fn header_key(&self) -> header_protection::HeaderProtectionKey {
        header_protection::HeaderProtectionKey::new(&header_protection::AES_128, &self.hp)
            .unwrap_or_else(|_| unreachable!("AES-128 key of 16 bytes"))
    }

    fn nonce(&self, pn: u64) -> Nonce {
        let mut nonce = self.iv;
        for (n, p) in nonce[4..].iter_mut().zip(pn.to_be_bytes()) {
            *n ^= p;
        }
        Nonce::assume_unique_for_key(nonce)
    }
}

/// HKDF-Expand-Label with an empty context (RFC 8446 §7.1), filling `out` (at most 255
/// bytes).
fn expand_label(secret: &hkdf::Prk, label: &[u8], out: &mut [u8]) {
    /// An output length for ring's HKDF.
    struct Len(usize);
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    const PREFIX: &[u8] = b"tls13 ";
    let out_len = (out.len() as u16).to_be_bytes();
    let label_len = [(PREFIX.len() + label.len()) as u8];
    let info: [&[u8]; 5] = [&out_len, &label_len, PREFIX, label, &[0]];
    // The lengths are constants of this module, far below HKDF-SHA256's limit.
    secret
        .expand(&info, Len(out.len()))
        .and_then(|okm| okm.fill(out))
        .unwrap_or_else(|_| unreachable!("HKDF output of {} bytes", out.len()));
}

/// An Initial packet with its protection removed, in a [`Scratch`] buffer.
struct Opened<'p> {
    /// The header as sent before protection: first byte and packet number in clear.
    #[cfg_attr(not(any(test, feature = "testing")), allow(dead_code))]
    header: &'p [u8],
    payload: &'p [u8],
    #[cfg_attr(not(any(test, feature = "testing")), allow(dead_code))]
    layout: Layout,
}

/// Removes header protection from the first packet of `datagram` and decrypts it into
/// `buf` (RFC 9001 §5.3, §5.4).
fn open<'p>(datagram: &[u8], buf: &'p mut [u8; MAX_PACKET_LEN]) -> Result<Opened<'p>, PeekError> {
    let layout = layout(datagram)?;
    let packet = buf.get_mut(..layout.end).ok_or(PeekError::TooLarge)?;
    let sent = datagram.get(..layout.end).ok_or(PeekError::Truncated)?;
    packet.copy_from_slice(sent);
    let dcid = datagram
        .get(layout.dcid.clone())
        .ok_or(PeekError::Truncated)?;
    let keys = InitialKeys::client(dcid);

    let sample_at = layout.pn_offset + SAMPLE_OFFSET;
    let sample = packet
        .get(sample_at..sample_at + SAMPLE_LEN)
        .ok_or(PeekError::Malformed)?;
    let mask = keys
        .header_key()
        .new_mask(sample)
        .map_err(|_| PeekError::Malformed)?;
    let first = packet.first_mut().ok_or(PeekError::Truncated)?;
    *first ^= mask[0] & 0x0f;
    let pn_len = usize::from(*first & 0x03) + 1;
    let pn_bytes = packet
        .get_mut(layout.pn_offset..layout.pn_offset + pn_len)
        .ok_or(PeekError::Malformed)?;
    let mut pn = 0u64;
    for (b, m) in pn_bytes.iter_mut().zip(&mask[1..]) {
        *b ^= m;
        pn = pn << 8 | u64::from(*b);
    }
    // The client's first packets: the packet number is the truncated one (RFC 9000 §A.3
    // with no packet received before).
    let (header, sealed) = packet
        .split_at_mut_checked(layout.pn_offset + pn_len)
        .ok_or(PeekError::Malformed)?;
    let payload = keys
        .packet_key()
        .open_in_place(keys.nonce(pn), Aad::from(&*header), sealed)
        .map_err(|_| PeekError::Decrypt)?;
    if header.first().is_some_and(|b| b & 0x0c != 0) {
        return Err(PeekError::Malformed);
    }
    Ok(Opened {
        header,
        payload,
        layout,
    })
}

// ---------------------------------------------------------------------------------------
// Frames and the CRYPTO stream

/// The CRYPTO stream being reassembled: bytes by offset and a bitmap of those received.
struct CryptoStream<'a> {
    data: &'a mut [u8; MAX_CLIENT_HELLO_LEN],
    received: &'a mut [u64; MAX_CLIENT_HELLO_LEN / 64],
}

impl CryptoStream<'_> {
    /// Stores `bytes` at stream offset `offset`, as far as the buffer goes. A byte received
    /// twice must have the same value.
    fn insert(&mut self, offset: u64, bytes: &[u8]) -> Result<(), PeekError> {
        let Ok(start) = usize::try_from(offset) else {
            return Ok(());
        };
        for (i, &b) in (start..MAX_CLIENT_HELLO_LEN).zip(bytes) {
            let (word, bit) = (i / 64, 1u64 << (i % 64));
            if self.received[word] & bit != 0 {
                if self.data[i] != b {
                    return Err(PeekError::Malformed);
                }
            } else {
                self.data[i] = b;
                self.received[word] |= bit;
            }
        }
        Ok(())
    }
}

/// Walks the frames of a decrypted Initial payload, collecting CRYPTO data (RFC 9000 §19).
fn collect_crypto(payload: &[u8], crypto: &mut CryptoStream<'_>) -> Result<(), PeekError> {
    let mut r = Reader::new(payload);
    let m = PeekError::Malformed;
    while !r.is_empty() {
        match r.varint().ok_or(m)? {
            // PADDING, PING
            0x00 | 0x01 => {}
            // ACK, ACK with ECN counts
            ty @ (0x02 | 0x03) => {
                let _largest = r.varint().ok_or(m)?;
                let _delay = r.varint().ok_or(m)?;
                let ranges = r.varint().ok_or(m)?;
                let _first_range = r.varint().ok_or(m)?;
                // Each range takes two bytes at least: a count beyond the payload fails on
                // the first read past its end.
                for _ in 0..ranges {
                    r.varint().ok_or(m)?; // gap
                    r.varint().ok_or(m)?; // range length
                }
                if ty == 0x03 {
                    for _ in 0..3 {
                        r.varint().ok_or(m)?; // ECT(0), ECT(1), ECN-CE counts
                    }
                }
            }
            // CRYPTO
            0x06 => {
                let offset = r.varint().ok_or(m)?;
                let len = r.varint().ok_or(m)?;
                let data = r.bytes(len).ok_or(m)?;
                if offset.checked_add(len).is_none_or(|end| end > VARINT_MAX) {
                    return Err(m);
                }
                crypto.insert(offset, data)?;
            }
            // CONNECTION_CLOSE (transport)
            0x1c => {
                let _code = r.varint().ok_or(m)?;
                let _frame_type = r.varint().ok_or(m)?;
                let reason_len = r.varint().ok_or(m)?;
                r.bytes(reason_len).ok_or(m)?;
            }
            // Anything else is not allowed in an Initial packet (RFC 9000 §12.4).
            _ => return Err(m),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The ClientHello

/// The reassembled CRYPTO stream, read-only.
#[derive(Clone, Copy)]
struct Received<'a> {
    data: &'a [u8; MAX_CLIENT_HELLO_LEN],
    /// Bytes `0..prefix` were all received: only these are read (see the module docs).
    prefix: usize,
}

impl<'a> Received<'a> {
    /// Bytes `start..start + len`, if they lie in the received start of the stream.
    fn get(&self, start: usize, len: usize) -> Option<&'a [u8]> {
        let end = start.checked_add(len)?;
        if end > self.prefix {
            return None;
        }
        self.data.get(start..end)
    }
}

/// How many bytes from offset 0 were received without a gap.
fn contiguous_prefix(received: &[u64; MAX_CLIENT_HELLO_LEN / 64]) -> usize {
    let mut n = 0;
    for word in received {
        n += word.trailing_ones() as usize;
        if *word != u64::MAX {
            break;
        }
    }
    n
}

/// A `host_name` made canonical ([`ClientHelloInfo::server_name`]): `None` for an IP
/// address (rustls takes it as no name), else in lower case (as rustls takes it) without one
/// trailing dot (which rustls keeps; a lone `.` stays: rustls refuses it as no DNS name).
pub fn canonical_server_name(name: &str) -> Option<String> {
    if let Ok(rustls::pki_types::ServerName::IpAddress(_)) =
        rustls::pki_types::ServerName::try_from(name)
    {
        return None;
    }
    let name = name
        .strip_suffix('.')
        .filter(|n| !n.is_empty())
        .unwrap_or(name);
    Some(name.to_ascii_lowercase())
}

/// A position in the ClientHello, bounded by its end. Reading a byte that lies within the
/// message but past the received start of the stream is [`PeekError::Incomplete`]; reading past the end of the
/// message is [`PeekError::Malformed`]. Skipping needs no byte.
struct Cursor<'a> {
    stream: Received<'a>,
    pos: usize,
    end: usize,
}

impl<'a> Cursor<'a> {
    fn advance(&mut self, n: usize) -> Result<usize, PeekError> {
        let start = self.pos;
        self.pos = start
            .checked_add(n)
            .filter(|&e| e <= self.end)
            .ok_or(PeekError::Malformed)?;
        Ok(start)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], PeekError> {
        let start = self.advance(n)?;
        self.stream.get(start, n).ok_or(PeekError::Incomplete)
    }

    fn skip(&mut self, n: usize) -> Result<(), PeekError> {
        self.advance(n).map(drop)
    }

    fn u8(&mut self) -> Result<u8, PeekError> {
        Ok(Reader::new(self.take(1)?).u8().unwrap_or_default())
    }

    fn u16(&mut self) -> Result<u16, PeekError> {
        Ok(Reader::new(self.take(2)?).u16().unwrap_or_default())
    }
}

/// What the extension walk found so far.
#[derive(Default)]
struct Found<'a> {
    hello: ClientHello<'a>,
    server_name_seen: bool,
    alpn_seen: bool,
}

/// Parses the ClientHello at the start of the CRYPTO stream (RFC 8446 §4.1.2).
fn parse_client_hello(stream: Received<'_>) -> Result<ClientHello<'_>, PeekError> {
    let head = stream.get(0, 4).ok_or(PeekError::Incomplete)?;
    let mut r = Reader::new(head);
    if r.u8() != Some(TLS_CLIENT_HELLO) {
        return Err(PeekError::NotClientHello);
    }
    let len = r.u24().ok_or(PeekError::Incomplete)?;
    let mut cursor = Cursor {
        stream,
        pos: 4,
        end: 4 + len as usize,
    };
    let mut found = Found::default();
    match walk_client_hello(&mut cursor, &mut found) {
        Ok(()) => Ok(found.hello),
        Err(PeekError::Incomplete) if found.server_name_seen && found.alpn_seen => Ok(found.hello),
        Err(e) => Err(e),
    }
}

fn walk_client_hello<'a>(c: &mut Cursor<'a>, found: &mut Found<'a>) -> Result<(), PeekError> {
    let m = PeekError::Malformed;
    c.skip(2)?; // legacy_version
    c.skip(32)?; // random
    let session_id = usize::from(c.u8()?);
    if session_id > 32 {
        return Err(m);
    }
    c.skip(session_id)?;
    let suites = usize::from(c.u16()?);
    if suites < 2 || suites % 2 != 0 {
        return Err(m);
    }
    c.skip(suites)?;
    let compression = usize::from(c.u8()?);
    if compression == 0 {
        return Err(m);
    }
    c.skip(compression)?;
    if c.pos == c.end {
        return Ok(()); // no extensions at all
    }
    let extensions = usize::from(c.u16()?);
    if c.pos + extensions != c.end {
        return Err(m);
    }
    while c.pos < c.end {
        let ty = c.u16()?;
        let len = usize::from(c.u16()?);
        match ty {
            EXT_SERVER_NAME => {
                if found.server_name_seen {
                    return Err(m); // extensions do not repeat (RFC 8446 §4.2)
                }
                found.hello.server_name = parse_server_name(c.take(len)?)?;
                found.server_name_seen = true;
            }
            EXT_ALPN => {
                if found.alpn_seen {
                    return Err(m);
                }
                found.hello.alpn = parse_alpn(c.take(len)?)?;
                found.alpn_seen = true;
            }
            _ => c.skip(len)?,
        }
    }
    Ok(())
}

/// The `host_name` of a `server_name` extension body (RFC 6066 §3): a `ServerNameList` of
/// at least one entry. Read as rustls reads it: `host_name` entries until one of another
/// type, whose encoding is unknown, ends the list (what follows is ignored); a second
/// `host_name` is an error. The name must be printable ASCII.
fn parse_server_name(body: &[u8]) -> Result<Option<&str>, PeekError> {
    let m = PeekError::Malformed;
    let mut r = Reader::new(body);
    let list = usize::from(r.u16().ok_or(m)?);
    if list == 0 || list != r.remaining() {
        return Err(m);
    }
    let mut host_name = None;
    while !r.is_empty() {
        let ty = r.u8().ok_or(m)?;
        if ty != SNI_HOST_NAME {
            break;
        }
        let len = r.u16().ok_or(m)?;
        let name = r.bytes(u64::from(len)).ok_or(m)?;
        if host_name.is_some() || name.is_empty() || !name.iter().all(u8::is_ascii_graphic) {
            return Err(m);
        }
        host_name = Some(std::str::from_utf8(name).map_err(|_| m)?);
    }
    Ok(host_name)
}

/// The protocol names of an ALPN extension body (RFC 7301 §3.1): a `ProtocolNameList` of at
/// least one name, each of 1 to 255 bytes.
fn parse_alpn(body: &[u8]) -> Result<Alpn<'_>, PeekError> {
    let m = PeekError::Malformed;
    let mut r = Reader::new(body);
    let list = usize::from(r.u16().ok_or(m)?);
    if list < 2 || list != r.remaining() {
        return Err(m);
    }
    let names = r.rest();
    let mut check = Reader::new(names);
    while !check.is_empty() {
        let len = check.u8().ok_or(m)?;
        if len == 0 {
            return Err(m);
        }
        check.bytes(u64::from(len)).ok_or(m)?;
    }
    Ok(Alpn { list: names })
}

// ---------------------------------------------------------------------------------------
// Bytes

/// A bounds-checked reader: every read returns `None` past the end.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn rest(&self) -> &'a [u8] {
        self.buf.get(self.pos..).unwrap_or_default()
    }

    /// The range of the next `len` bytes, consumed.
    fn range(&mut self, len: u64) -> Option<Range<usize>> {
        let end = usize::try_from(len).ok()?.checked_add(self.pos)?;
        if end > self.buf.len() {
            return None;
        }
        let range = self.pos..end;
        self.pos = end;
        Some(range)
    }

    fn bytes(&mut self, len: u64) -> Option<&'a [u8]> {
        let range = self.range(len)?;
        self.buf.get(range)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.bytes(N as u64)?.try_into().ok()
    }

    fn u8(&mut self) -> Option<u8> {
        self.array::<1>().map(|[b]| b)
    }

    fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_be_bytes)
    }

    fn u24(&mut self) -> Option<u32> {
        self.array::<3>()
            .map(|[a, b, c]| u32::from_be_bytes([0, a, b, c]))
    }

    fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_be_bytes)
    }

    /// A variable-length integer (RFC 9000 §16).
    fn varint(&mut self) -> Option<u64> {
        let first = self.u8()?;
        let mut value = u64::from(first & 0x3f);
        for _ in 1..1usize << (first >> 6) {
            value = value << 8 | u64::from(self.u8()?);
        }
        Some(value)
    }

    /// A connection ID of a version 1 long header: a length byte (at most 20) and the ID.
    fn cid(&mut self) -> Result<Range<usize>, PeekError> {
        let len = self.u8().ok_or(PeekError::Truncated)?;
        if usize::from(len) > MAX_CID_LEN {
            return Err(PeekError::Malformed);
        }
        self.range(u64::from(len)).ok_or(PeekError::Truncated)
    }
}

// ---------------------------------------------------------------------------------------
// Test kit

/// Sealing and opening client Initial packets, for tests (feature `testing`): build a
/// ClientHello of one's own into an Initial, or open one a client built, change its
/// payload and seal it again.
#[cfg(any(test, feature = "testing"))]
pub mod testing {
    use super::*;

    /// A client Initial packet in clear.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Initial {
        pub dcid: Vec<u8>,
        pub scid: Vec<u8>,
        pub token: Vec<u8>,
        /// The packet number, sent in `pn_len` bytes: [`seal`](Self::seal) drops the
        /// higher bits, as a server decodes a client's first packet number from its bytes
        /// alone.
        pub pn: u32,
        /// 1 to 4.
        pub pn_len: usize,
        /// The two reserved bits of the first byte (0 in a valid packet).
        pub reserved: u8,
        /// The frames.
        pub payload: Vec<u8>,
    }

    impl Initial {
        /// An Initial of packet number 0 (in 4 bytes) carrying `payload`.
        pub fn new(dcid: &[u8], payload: Vec<u8>) -> Self {
            Self {
                dcid: dcid.to_vec(),
                scid: Vec::new(),
                token: Vec::new(),
                pn: 0,
                pn_len: 4,
                reserved: 0,
                payload,
            }
        }

        /// Opens the first packet of `datagram` as [`peek`] does.
        pub fn open(datagram: &[u8]) -> Result<Self, PeekError> {
            let mut buf = Box::new([0; MAX_PACKET_LEN]);
            let opened = open(datagram, &mut buf)?;
            let l = &opened.layout;
            let field = |r: &Range<usize>| datagram.get(r.clone()).unwrap_or_default().to_vec();
            let first = opened.header.first().copied().unwrap_or_default();
            let pn_len = usize::from(first & 0x03) + 1;
            let pn = opened
                .header
                .get(l.pn_offset..)
                .unwrap_or_default()
                .iter()
                .fold(0u32, |pn, &b| pn << 8 | u32::from(b));
            Ok(Self {
                dcid: field(&l.dcid),
                scid: field(&l.scid),
                token: field(&l.token),
                pn,
                pn_len,
                reserved: (first >> 2) & 0b11,
                payload: opened.payload.to_vec(),
            })
        }

        /// The protected packet (RFC 9001 §5): the Length field takes 2 bytes; a payload
        /// too short for the header-protection sample gets PADDING frames. Panics on a
        /// connection ID over 255 bytes, a `pn_len` out of 1..=4 or a payload of 16 KiB.
        pub fn seal(&self) -> Vec<u8> {
            self.sealed(0x40)
        }

        /// [`seal`](Self::seal) with the fixed bit clear (greased, RFC 9287).
        pub fn seal_without_fixed_bit(&self) -> Vec<u8> {
            self.sealed(0)
        }

        fn sealed(&self, fixed_bit: u8) -> Vec<u8> {
            assert!((1..=4).contains(&self.pn_len));
            let mut payload = self.payload.clone();
            let min = (SAMPLE_OFFSET + SAMPLE_LEN).saturating_sub(self.pn_len + TAG_LEN);
            if payload.len() < min {
                payload.resize(min, 0);
            }
            let mut packet =
                vec![0x80 | fixed_bit | (self.reserved & 0b11) << 2 | (self.pn_len - 1) as u8];
            packet.extend_from_slice(&VERSION_1.to_be_bytes());
            for cid in [&self.dcid, &self.scid] {
                packet.push(u8::try_from(cid.len()).expect("CID length"));
                packet.extend_from_slice(cid);
            }
            packet.extend_from_slice(&varint(self.token.len() as u64));
            packet.extend_from_slice(&self.token);
            let length = self.pn_len + payload.len() + TAG_LEN;
            assert!(length < 1 << 14, "payload too long");
            packet.extend_from_slice(&(0x4000 | length as u16).to_be_bytes());
            let pn_offset = packet.len();
            let pn = self.pn & (u32::MAX >> (32 - 8 * self.pn_len));
            packet.extend_from_slice(&pn.to_be_bytes()[4 - self.pn_len..]);

            let keys = InitialKeys::client(&self.dcid);
            keys.packet_key()
                .seal_in_place_append_tag(
                    keys.nonce(u64::from(pn)),
                    Aad::from(packet.clone()),
                    &mut payload,
                )
                .expect("seal");
            packet.extend_from_slice(&payload);
            let sample_at = pn_offset + SAMPLE_OFFSET;
            let mask = keys
                .header_key()
                .new_mask(&packet[sample_at..sample_at + SAMPLE_LEN])
                .expect("mask");
            packet[0] ^= mask[0] & 0x0f;
            for (b, m) in packet[pn_offset..pn_offset + self.pn_len]
                .iter_mut()
                .zip(&mask[1..])
            {
                *b ^= m;
            }
            packet
        }
    }

    /// The shortest encoding of a variable-length integer (RFC 9000 §16). Panics at 2^62.
    pub fn varint(v: u64) -> Vec<u8> {
        match v {
            0..0x40 => vec![v as u8],
            0x40..0x4000 => (0x4000 | v as u16).to_be_bytes().to_vec(),
            0x4000..0x4000_0000 => (0x8000_0000 | v as u32).to_be_bytes().to_vec(),
            _ => {
                assert!(v <= VARINT_MAX, "varint out of range");
                (0xc000_0000_0000_0000 | v).to_be_bytes().to_vec()
            }
        }
    }

    /// A CRYPTO frame.
    pub fn crypto_frame(offset: u64, data: &[u8]) -> Vec<u8> {
        let mut f = vec![0x06];
        f.extend(varint(offset));
        f.extend(varint(data.len() as u64));
        f.extend_from_slice(data);
        f
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{crypto_frame, varint, Initial};
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    // RFC 9001 Appendix A: the client's destination connection ID, its Initial keys, the
    // unprotected payload of its Initial (A.2: one CRYPTO frame, then 917 bytes of PADDING)
    // and the protected packet of 1200 bytes.
    const A_DCID: &str = "8394c8f03e515708";
    const A2_CRYPTO_FRAME: &str = "
        060040f1010000ed0303ebf8fa56f12939b9584a3896472ec40bb863cfd3e868
        04fe3a47f06a2b69484c00000413011302010000c000000010000e00000b6578
        616d706c652e636f6dff01000100000a00080006001d00170018001000070005
        04616c706e000500050100000000003300260024001d00209370b2c9caa47fba
        baf4559fedba753de171fa71f50f1ce15d43e994ec74d748002b000302030400
        0d0010000e0403050306030203080408050806002d00020101001c0002400100
        3900320408ffffffffffffffff05048000ffff07048000ffff08011001048000
        75300901100f088394c8f03e51570806048000ffff";
    const A2_PACKET: &str = "
        c000000001088394c8f03e5157080000449e7b9aec34d1b1c98dd7689fb8ec11
        d242b123dc9bd8bab936b47d92ec356c0bab7df5976d27cd449f63300099f399
        1c260ec4c60d17b31f8429157bb35a1282a643a8d2262cad67500cadb8e7378c
        8eb7539ec4d4905fed1bee1fc8aafba17c750e2c7ace01e6005f80fcb7df6212
        30c83711b39343fa028cea7f7fb5ff89eac2308249a02252155e2347b63d58c5
        457afd84d05dfffdb20392844ae812154682e9cf012f9021a6f0be17ddd0c208
        4dce25ff9b06cde535d0f920a2db1bf362c23e596d11a4f5a6cf3948838a3aec
        4e15daf8500a6ef69ec4e3feb6b1d98e610ac8b7ec3faf6ad760b7bad1db4ba3
        485e8a94dc250ae3fdb41ed15fb6a8e5eba0fc3dd60bc8e30c5c4287e53805db
        059ae0648db2f64264ed5e39be2e20d82df566da8dd5998ccabdae053060ae6c
        7b4378e846d29f37ed7b4ea9ec5d82e7961b7f25a9323851f681d582363aa5f8
        9937f5a67258bf63ad6f1a0b1d96dbd4faddfcefc5266ba6611722395c906556
        be52afe3f565636ad1b17d508b73d8743eeb524be22b3dcbc2c7468d54119c74
        68449a13d8e3b95811a198f3491de3e7fe942b330407abf82a4ed7c1b311663a
        c69890f4157015853d91e923037c227a33cdd5ec281ca3f79c44546b9d90ca00
        f064c99e3dd97911d39fe9c5d0b23a229a234cb36186c4819e8b9c5927726632
        291d6a418211cc2962e20fe47feb3edf330f2c603a9d48c0fcb5699dbfe58964
        25c5bac4aee82e57a85aaf4e2513e4f05796b07ba2ee47d80506f8d2c25e50fd
        14de71e6c418559302f939b0e1abd576f279c4b2e0feb85c1f28ff18f58891ff
        ef132eef2fa09346aee33c28eb130ff28f5b766953334113211996d20011a198
        e3fc433f9f2541010ae17c1bf202580f6047472fb36857fe843b19f5984009dd
        c324044e847a4f4a0ab34f719595de37252d6235365e9b84392b061085349d73
        203a4a13e96f5432ec0fd4a1ee65accdd5e3904df54c1da510b0ff20dcc0c77f
        cb2c0e0eb605cb0504db87632cf3d8b4dae6e705769d1de354270123cb11450e
        fc60ac47683d7b8d0f811365565fd98c4c8eb936bcab8d069fc33bd801b03ade
        a2e1fbc5aa463d08ca19896d2bf59a071b851e6c239052172f296bfb5e724047
        90a2181014f3b94a4e97d117b438130368cc39dbb2d198065ae3986547926cd2
        162f40a29f0c3c8745c0f50fba3852e566d44575c29d39a03f0cda721984b6f4
        40591f355e12d439ff150aab7613499dbd49adabc8676eef023b15b65bfc5ca0
        6948109f23f350db82123535eb8a7433bdabcb909271a6ecbcb58b936a88cd4e
        8f2e6ff5800175f113253d8fa9ca8885c2f552e657dc603f252e1a8e308f76f0
        be79e2fb8f5d5fbbe2e30ecadd220723c8c0aea8078cdfcb3868263ff8f09400
        54da48781893a7e49ad5aff4af300cd804a6b6279ab3ff3afb64491c85194aab
        760d58a606654f9f4400e8b38591356fbf6425aca26dc85244259ff2b19c41b9
        f96f3ca9ec1dde434da7d2d392b905ddf3d1f9af93d1af5950bd493f5aa731b4
        056df31bd267b6b90a079831aaf579be0a39013137aac6d404f518cfd4684064
        7e78bfe706ca4cf5e9c5453e9f7cfd2b8b4c8d169a44e55c88d4a9a7f9474241
        e221af44860018ab0856972e194cd934";
    /// Where the packet number starts in the A.2 packet (RFC 9001 A.2: 18).
    const A2_PN_OFFSET: usize = 18;

    fn a2_packet() -> Vec<u8> {
        hex(A2_PACKET)
    }

    #[test]
    fn rfc9001_a1_client_initial_keys() {
        let keys = InitialKeys::client(&hex(A_DCID));
        assert_eq!(keys.key.to_vec(), hex("1f369613dd76d5467730efcbe3b1a22d"));
        assert_eq!(keys.iv.to_vec(), hex("fa044b2f42a3fd3b46fb255c"));
        assert_eq!(keys.hp.to_vec(), hex("9f50449e04a0e810283a1e9933adedd2"));
    }

    /// The A.2 client Initial: packet number 2 in 4 bytes, the payload of the RFC; its
    /// ClientHello offers server name "example.com" and one ALPN protocol, "alpn".
    #[test]
    fn rfc9001_a2_client_initial() {
        let packet = a2_packet();
        assert_eq!(packet.len(), 1200);

        let opened = Initial::open(&packet).unwrap();
        let mut payload = hex(A2_CRYPTO_FRAME);
        payload.resize(1162, 0);
        assert_eq!(opened.payload, payload);
        assert_eq!((opened.pn, opened.pn_len, opened.reserved), (2, 4, 0));
        assert_eq!(opened.dcid, hex(A_DCID));
        assert!(opened.scid.is_empty() && opened.token.is_empty());
        // Sealing it again gives the RFC's bytes: the test kit protects as the RFC does.
        assert_eq!(opened.seal(), packet);

        let info = peek(&packet).unwrap();
        assert_eq!(
            info,
            ClientHelloInfo {
                server_name: Some("example.com".into()),
                alpn: vec![b"alpn".to_vec()],
            }
        );
        let mut scratch = Scratch::new();
        let hello = peek_with(&packet, &mut scratch).unwrap();
        assert_eq!(hello.server_name, Some("example.com"));
        assert!(hello.alpn.contains(b"alpn") && !hello.alpn.contains(b"h3"));
        assert_eq!(format!("{:?}", hello.alpn), r#"["alpn"]"#);
        assert_eq!(hello.to_info(), info);
    }

    /// The RFC sends the A.2 packet alone in its datagram; packets coalesced after it do not
    /// matter.
    #[test]
    fn coalesced_packets_after_the_initial_are_ignored() {
        let mut datagram = a2_packet();
        datagram.extend_from_slice(&[0xe0, 0, 0, 0, 1, 0xff, 0xff, 0xff]);
        assert_eq!(peek(&datagram).unwrap().server_name.unwrap(), "example.com");
    }

    #[test]
    fn every_truncation_of_the_vector_is_truncated() {
        let packet = a2_packet();
        for n in 0..packet.len() {
            assert_eq!(peek(&packet[..n]), Err(PeekError::Truncated), "length {n}");
        }
    }

    /// Any byte changed after the Length field (packet number, ciphertext, tag) or in the
    /// destination connection ID: the AEAD refuses the packet.
    #[test]
    fn a_changed_byte_fails_decryption() {
        let packet = a2_packet();
        let dcid = 6..14;
        for i in dcid.chain(A2_PN_OFFSET..packet.len()) {
            let mut forged = packet.clone();
            forged[i] ^= 0x01;
            assert_eq!(peek(&forged), Err(PeekError::Decrypt), "byte {i}");
        }
    }

    #[test]
    fn header_errors() {
        let packet = a2_packet();
        let with = |i: usize, b: u8| {
            let mut p = packet.clone();
            p[i] = b;
            p
        };
        let with_length = |len: u16| {
            let mut p = packet.clone();
            p[16..18].copy_from_slice(&(0x4000 | len).to_be_bytes());
            p
        };
        assert_eq!(peek(&[]), Err(PeekError::Truncated));
        assert_eq!(peek(&with(0, 0x40)), Err(PeekError::NotInitial)); // short header
        assert_eq!(peek(&with(0, 0xd0)), Err(PeekError::NotInitial)); // 0-RTT
        assert_eq!(peek(&with(0, 0xe0)), Err(PeekError::NotInitial)); // Handshake
        assert_eq!(peek(&with(0, 0xf0)), Err(PeekError::NotInitial)); // Retry
                                                                      // The fixed bit clear after sealing: the header is the AEAD's associated data.
        assert_eq!(peek(&with(0, 0x80)), Err(PeekError::Decrypt));
        assert_eq!(peek(&with(4, 2)), Err(PeekError::UnsupportedVersion(2)));
        assert_eq!(peek(&with(4, 0)), Err(PeekError::UnsupportedVersion(0)));
        assert_eq!(peek(&with(5, 21)), Err(PeekError::Malformed)); // DCID of 21 bytes
        assert_eq!(peek(&with(14, 21)), Err(PeekError::Malformed)); // SCID of 21 bytes
        assert_eq!(peek(&with_length(1183)), Err(PeekError::Truncated)); // 1 byte short
        assert_eq!(peek(&with_length(19)), Err(PeekError::Malformed)); // no room for a sample
        assert_eq!(peek(&with_length(20)), Err(PeekError::Decrypt)); // shorter packet

        // Protected bits of the first byte changed (reserved bits set): the AEAD checks them
        // first.
        assert_eq!(peek(&with(0, 0xcc)), Err(PeekError::Decrypt));
    }

    // -- Initials of our own --

    const DCID: [u8; 8] = [7, 6, 5, 4, 3, 2, 1, 0];

    /// An extension: type, length, body.
    fn ext(ty: u16, body: &[u8]) -> Vec<u8> {
        let mut e = ty.to_be_bytes().to_vec();
        e.extend_from_slice(&(body.len() as u16).to_be_bytes());
        e.extend_from_slice(body);
        e
    }

    fn sni_ext(names: &[(u8, &[u8])]) -> Vec<u8> {
        let mut list = Vec::new();
        for (ty, name) in names {
            list.push(*ty);
            list.extend_from_slice(&(name.len() as u16).to_be_bytes());
            list.extend_from_slice(name);
        }
        let mut body = (list.len() as u16).to_be_bytes().to_vec();
        body.extend(list);
        ext(EXT_SERVER_NAME, &body)
    }

    fn alpn_ext(names: &[&[u8]]) -> Vec<u8> {
        let mut list = Vec::new();
        for name in names {
            list.push(name.len() as u8);
            list.extend_from_slice(name);
        }
        let mut body = (list.len() as u16).to_be_bytes().to_vec();
        body.extend(list);
        ext(EXT_ALPN, &body)
    }

    /// A ClientHello handshake message with these extensions (None: no extensions field).
    fn client_hello(extensions: Option<&[Vec<u8>]>) -> Vec<u8> {
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[0xaa; 32]); // random
        body.push(32);
        body.extend_from_slice(&[0xbb; 32]); // legacy session id
        body.extend_from_slice(&[0, 4, 0x13, 0x01, 0x13, 0x02]); // cipher suites
        body.extend_from_slice(&[1, 0]); // compression methods
        if let Some(extensions) = extensions {
            let all = extensions.concat();
            body.extend_from_slice(&(all.len() as u16).to_be_bytes());
            body.extend(all);
        }
        let mut msg = vec![TLS_CLIENT_HELLO];
        msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        msg.extend(body);
        msg
    }

    /// A sealed Initial carrying `frames`, padded to 1200 bytes.
    fn initial(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut payload = frames.concat();
        // Header: 7 bytes, the DCID, token length (1), Length (2), packet number (4).
        let overhead = 7 + DCID.len() + 1 + 2 + 4 + TAG_LEN;
        payload.resize(payload.len().max(1200 - overhead), 0);
        Initial::new(&DCID, payload).seal()
    }

    fn typical() -> Vec<u8> {
        client_hello(Some(&[
            ext(0x000a, &[0, 2, 0, 0x1d]),
            sni_ext(&[(0, b"Server.Example")]),
            alpn_ext(&[b"h3", b"hq-interop"]),
            ext(0x0033, &[0x55; 40]),
        ]))
    }

    fn info(name: Option<&str>, alpn: &[&[u8]]) -> ClientHelloInfo {
        ClientHelloInfo {
            server_name: name.map(Into::into),
            alpn: alpn.iter().map(|a| a.to_vec()).collect(),
        }
    }

    #[test]
    fn one_crypto_frame() {
        let ch = typical();
        let got = peek(&initial(&[crypto_frame(0, &ch)]));
        assert_eq!(
            got,
            Ok(info(Some("server.example"), &[b"h3", b"hq-interop"]))
        );
    }

    #[test]
    fn other_frames_an_initial_may_carry() {
        let ch = typical();
        let ack = [0x02, 0x05, 0x00, 0x01, 0x00, 0x01, 0x02].to_vec(); // 1 range after the first
        let ack_ecn = [0x03, 0x05, 0x00, 0x00, 0x00, 0x01, 0x02, 0x03].to_vec();
        let close = [0x1c, 0x0a, 0x06, 0x03, b'b', b'y', b'e'].to_vec();
        let long_padding_type = vec![0x40, 0x00]; // PADDING in a 2-byte encoding
        let frames = [
            vec![0x01],
            ack,
            crypto_frame(0, &ch),
            ack_ecn,
            vec![0, 0, 0],
            close,
            long_padding_type,
        ];
        assert!(peek(&initial(&frames)).is_ok());
    }

    #[test]
    fn frames_an_initial_may_not_carry_or_cut_short() {
        let ch = typical();
        let stream = [0x08, 0x00, 0x01, 0xff].to_vec();
        let new_token = [0x07, 0x01, 0x01].to_vec();
        for bad in [stream, new_token] {
            let frames = [crypto_frame(0, &ch), bad];
            assert_eq!(peek(&initial(&frames)), Err(PeekError::Malformed));
        }
        // A CRYPTO frame longer than the payload, an ACK with more ranges than bytes, a
        // CRYPTO frame ending at 2^62.
        let mut long_crypto = crypto_frame(0, &ch);
        long_crypto.truncate(long_crypto.len() - 1);
        let cut = Initial::new(&DCID, long_crypto).seal();
        assert_eq!(peek(&cut), Err(PeekError::Malformed));
        let ack = [0x02, 0x05, 0x00, 0x80, 0xff, 0xff, 0xff, 0x00].to_vec();
        let cut = Initial::new(&DCID, ack).seal();
        assert_eq!(peek(&cut), Err(PeekError::Malformed));
        let mut at_limit = vec![0x06];
        at_limit.extend(varint(VARINT_MAX));
        at_limit.extend(varint(1));
        at_limit.push(0);
        assert_eq!(peek(&initial(&[at_limit])), Err(PeekError::Malformed));
    }

    /// Chrome scatters a ClientHello over many CRYPTO frames in any order, some
    /// overlapping, mixed with PING and PADDING.
    #[test]
    fn crypto_frames_out_of_order_and_overlapping() {
        let ch = typical();
        let n = ch.len();
        let frames = [
            crypto_frame(40, &ch[40..n]),
            vec![0x01, 0x00],
            crypto_frame(10, &ch[10..50]),
            crypto_frame(0, &ch[0..12]),
            crypto_frame(5, &ch[5..6]),
            crypto_frame(n as u64, &[]),
        ];
        let want = info(Some("server.example"), &[b"h3", b"hq-interop"]);
        assert_eq!(peek(&initial(&frames)), Ok(want));

        // Overlaps that disagree.
        let mut other = ch[10..50].to_vec();
        other[35] ^= 1;
        let frames = [crypto_frame(0, &ch), crypto_frame(10, &other)];
        assert_eq!(peek(&initial(&frames)), Err(PeekError::Malformed));
    }

    /// CRYPTO data beyond the reassembly buffer is dropped; a frame straddling its end keeps
    /// what fits.
    #[test]
    fn crypto_beyond_the_buffer() {
        let ch = typical();
        let frames = [
            crypto_frame(0, &ch),
            crypto_frame(MAX_CLIENT_HELLO_LEN as u64 - 2, &[1, 2, 3, 4]),
            crypto_frame(1 << 40, &[1, 2, 3]),
        ];
        assert!(peek(&initial(&frames)).is_ok());
    }

    #[test]
    fn not_a_client_hello() {
        let mut ch = typical();
        ch[0] = 2; // ServerHello
        assert_eq!(
            peek(&initial(&[crypto_frame(0, &ch)])),
            Err(PeekError::NotClientHello)
        );
        // No CRYPTO data at offset 0: nothing to tell.
        let ch = typical();
        assert_eq!(
            peek(&initial(&[crypto_frame(1, &ch[1..])])),
            Err(PeekError::Incomplete)
        );
        assert_eq!(peek(&initial(&[vec![0x01]])), Err(PeekError::Incomplete));
    }

    #[test]
    fn absent_extensions() {
        let ch = client_hello(Some(&[ext(0x002b, &[2, 3, 4])]));
        assert_eq!(peek(&initial(&[crypto_frame(0, &ch)])), Ok(info(None, &[])));
        let ch = client_hello(None);
        assert_eq!(peek(&initial(&[crypto_frame(0, &ch)])), Ok(info(None, &[])));
        // A server_name list with another name type only.
        let ch = client_hello(Some(&[sni_ext(&[(1, b"x")]), alpn_ext(&[b"h3"])]));
        let got = peek(&initial(&[crypto_frame(0, &ch)]));
        assert_eq!(got, Ok(info(None, &[b"h3"])));
    }

    #[test]
    fn malformed_client_hellos() {
        let bad_extensions: [&[Vec<u8>]; 8] = [
            &[sni_ext(&[(0, b"a"), (0, b"b")])],        // two host names
            &[sni_ext(&[(0, b"")])],                    // empty name
            &[sni_ext(&[(0, "caf\u{e9}".as_bytes())])], // not ASCII
            &[sni_ext(&[(0, b"a b")])],                 // not printable
            &[sni_ext(&[])],                            // empty list
            &[alpn_ext(&[b"h3", b""])],                 // empty protocol
            &[alpn_ext(&[])],                           // empty list
            &[alpn_ext(&[b"h3"]), alpn_ext(&[b"h2"])],  // repeated extension
        ];
        for exts in bad_extensions {
            let ch = client_hello(Some(exts));
            let got = peek(&initial(&[crypto_frame(0, &ch)]));
            assert_eq!(got, Err(PeekError::Malformed), "{exts:?}");
        }
        // Lengths that disagree: the ClientHello claims a byte more than its extensions, an
        // extension runs past the list, the session id is too long.
        let ch = typical();
        let mut longer = ch.clone();
        longer[3] += 1;
        longer.push(0);
        let mut ext_past = ch.clone();
        // Handshake header (4), fixed fields (75), extensions length (2), supported_groups
        // (8), then the server_name type (2) and length.
        let sni_len_at = 4 + 75 + 2 + 8 + 2;
        assert_eq!(ch[sni_len_at - 2..sni_len_at], [0, 0]);
        ext_past[sni_len_at..sni_len_at + 2].copy_from_slice(&[0x10, 0x00]);
        let mut sid = ch.clone();
        sid[4 + 2 + 32] = 33;
        for ch in [longer, ext_past, sid] {
            let got = peek(&initial(&[crypto_frame(0, &ch)]));
            assert_eq!(got, Err(PeekError::Malformed));
        }
    }

    /// A ClientHello spread over two Initials: this packet carries the first part only.
    #[test]
    fn split_client_hello() {
        let big_share = ext(0x0033, &[0x55; 1500]);
        let sni = sni_ext(&[(0, b"server.example")]);
        let alpn = alpn_ext(&[b"h3"]);
        let first_part = |ch: &[u8]| initial(&[crypto_frame(0, &ch[..1000])]);
        let want = info(Some("server.example"), &[b"h3"]);

        // Both extensions before the cut: known.
        let ch = client_hello(Some(&[sni.clone(), alpn.clone(), big_share.clone()]));
        assert_eq!(peek(&first_part(&ch)), Ok(want.clone()));
        // One of them after the cut, or absent but another extension header after the
        // cut: the rest could hold it.
        let ch = client_hello(Some(&[sni.clone(), big_share.clone(), alpn.clone()]));
        assert_eq!(peek(&first_part(&ch)), Err(PeekError::Incomplete));
        let versions = ext(0x002b, &[2, 3, 4]);
        let ch = client_hello(Some(&[sni.clone(), big_share.clone(), versions]));
        assert_eq!(peek(&first_part(&ch)), Err(PeekError::Incomplete));
        // The cut inside the last extension, which is skipped: every extension header was
        // read, so the ALPN extension is known to be absent.
        let ch = client_hello(Some(&[sni.clone(), big_share.clone()]));
        assert_eq!(
            peek(&first_part(&ch)),
            Ok(info(Some("server.example"), &[]))
        );
        // The second part alone.
        let second = initial(&[crypto_frame(1000, &ch[1000..])]);
        assert_eq!(peek(&second), Err(PeekError::Incomplete));

        // Bytes past a gap are not read, even inside an extension that is only skipped:
        // another packet may fill the gap with other bytes, and the TLS stack reads those
        // (the stream in order, the later copy of a byte dropped). So a packet that carries
        // the start and, past a gap, a decoy tail naming an allowed server is Incomplete,
        // not that name.
        let ch = client_hello(Some(&[big_share.clone(), sni.clone(), alpn.clone()]));
        let tail = ch.len() - sni.len() - alpn.len() - 4;
        let frames = [
            crypto_frame(0, &ch[..200]),
            crypto_frame(tail as u64, &ch[tail..]),
        ];
        assert_eq!(peek(&initial(&frames)), Err(PeekError::Incomplete));
        // The gap filled in the same packet: read whole.
        let frames = [
            crypto_frame(tail as u64, &ch[tail..]),
            crypto_frame(0, &ch[..200]),
            crypto_frame(200, &ch[200..tail]),
        ];
        assert_eq!(peek(&initial(&frames)), Ok(want.clone()));
    }

    /// Names as the TLS stack takes them: lower case, no trailing dot, an IP address as no
    /// name; a `server_name` list read as rustls reads it, up to an entry of another type.
    #[test]
    fn server_names_are_canonical() {
        let named = |entries: &[(u8, &[u8])]| {
            let ch = client_hello(Some(&[sni_ext(entries)]));
            peek(&initial(&[crypto_frame(0, &ch)])).map(|i| i.server_name)
        };
        assert_eq!(
            named(&[(0, b"Blocked.Example.")]),
            Ok(Some("blocked.example".into()))
        );
        assert_eq!(named(&[(0, b"192.0.2.1")]), Ok(None));
        assert_eq!(named(&[(0, b"2001:db8::1")]), Ok(None));
        // A host_name, then an entry of an unknown type: rustls stops there and takes the
        // name (the entry's encoding is unknown).
        let mut odd = sni_ext(&[(0, b"blocked.example")]);
        odd.extend_from_slice(&[0x01, 0xff]);
        let n = odd.len();
        odd[2..4].copy_from_slice(&((n - 4) as u16).to_be_bytes()); // extension length
        odd[4..6].copy_from_slice(&((n - 6) as u16).to_be_bytes()); // list length
        let ch = client_hello(Some(&[odd]));
        assert_eq!(
            peek(&initial(&[crypto_frame(0, &ch)])).map(|i| i.server_name),
            Ok(Some("blocked.example".into()))
        );
        // Two host_names: an error, as in rustls.
        assert_eq!(
            named(&[(0, b"a.example"), (0, b"b.example")]),
            Err(PeekError::Malformed)
        );
    }

    /// An Initial with its fixed bit clear (greased, RFC 9287), which quinn-proto takes, is
    /// read as any other.
    #[test]
    fn an_initial_without_the_fixed_bit_is_read() {
        let ch = typical();
        let packet = Initial::new(&DCID, crypto_frame(0, &ch)).seal_without_fixed_bit();
        assert_eq!(packet[0] & 0x40, 0);
        assert_eq!(
            peek(&packet),
            Ok(info(Some("server.example"), &[b"h3", b"hq-interop"]))
        );
    }

    /// A ClientHello longer than the reassembly buffer (a big pre-shared key, say) in an
    /// Initial larger than the buffer is: TooLarge. In a smaller one, parsed as far as it
    /// goes.
    #[test]
    fn large_packets_and_client_hellos() {
        let big = ext(0x0029, &[0x66; 5000]);
        let ch = client_hello(Some(&[
            sni_ext(&[(0, b"a.example")]),
            alpn_ext(&[b"h3"]),
            big,
        ]));
        let whole = initial(&[crypto_frame(0, &ch)]);
        assert_eq!(peek(&whole), Err(PeekError::TooLarge));
        let part = initial(&[crypto_frame(0, &ch[..3000])]);
        assert_eq!(peek(&part), Ok(info(Some("a.example"), &[b"h3"])));
    }

    /// Reserved bits set under header protection: refused once decrypted.
    #[test]
    fn reserved_bits() {
        let mut packet = Initial::new(&DCID, crypto_frame(0, &typical()));
        packet.payload.resize(1100, 0);
        for reserved in 1..4 {
            packet.reserved = reserved;
            assert_eq!(peek(&packet.seal()), Err(PeekError::Malformed));
        }
        packet.reserved = 0;
        assert!(peek(&packet.seal()).is_ok());
    }

    /// Packet numbers of 1 to 4 bytes, and a token and source CID in the header.
    #[test]
    fn header_variants() {
        let mut packet = Initial::new(&[0xab; 20], crypto_frame(0, &typical()));
        packet.scid = vec![1; 20];
        packet.token = vec![9; 300];
        packet.pn = 0x0102_0304;
        for pn_len in 1..=4 {
            packet.pn_len = pn_len;
            let sealed = packet.seal();
            assert!(peek(&sealed).is_ok(), "pn_len {pn_len}");
            let opened = Initial::open(&sealed).unwrap();
            assert_eq!(opened.pn, packet.pn & (u32::MAX >> (32 - 8 * pn_len)));
        }
        // No DCID at all is still decodable (quinn-proto refuses it itself).
        let empty = Initial::new(&[], crypto_frame(0, &typical())).seal();
        assert!(peek(&empty).is_ok());
    }

    /// A reused Scratch starts over: nothing of the previous ClientHello leaks.
    #[test]
    fn scratch_reuse() {
        let mut scratch = Scratch::new();
        let ch = typical();
        let whole = initial(&[crypto_frame(0, &ch)]);
        assert!(peek_with(&whole, &mut scratch).is_ok());
        let tail = initial(&[crypto_frame(4, &ch[4..])]);
        assert_eq!(peek_with(&tail, &mut scratch), Err(PeekError::Incomplete));
        assert!(peek_with(&whole, &mut scratch).is_ok());
    }
}
