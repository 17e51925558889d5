//! A filter on the HTTP/3 frames a peer sends, before h3 sees them.
//!
//! h3 0.0.8 buffers every frame but DATA whole before it decodes it (and before it checks
//! a HEADERS frame against SETTINGS_MAX_FIELD_SECTION_SIZE), unknown and reserved types
//! included, so a peer announcing a huge frame could make it buffer without bound.
//! [`FrameFilter`] reads the frame headers as the octets go by and:
//! - passes the frames of the types RFC 9114 defines (§7.2: DATA, HEADERS, CANCEL_PUSH,
//!   SETTINGS, PUSH_PROMISE, GOAWAY, MAX_PUSH_ID) unchanged, and refuses at its header
//!   ([`TooLong`]) a HEADERS or PUSH_PROMISE frame longer than [`MAX_FIELD_FRAME`] and any
//!   other but DATA longer than [`MAX_FRAME`];
//! - refuses at its type ([`FrameError::Unexpected`]) a frame of the types HTTP/3 reserves
//!   for HTTP/2's PRIORITY, PING, WINDOW_UPDATE and CONTINUATION (§7.2.8: a connection error
//!   of type H3_FRAME_UNEXPECTED, whatever its length; h3 says the same once it has read
//!   the frame whole);
//! - drops the frames of every other type, header and payload, whatever their length: they
//!   carry nothing this server understands and MUST be ignored (§7.2.8, §9);
//! - refuses ([`FrameError::Malformed`]) a CANCEL_PUSH, GOAWAY or MAX_PUSH_ID frame whose
//!   payload is not exactly one variable-length integer, and a PUSH_PROMISE too short for
//!   its push ID (§7.1: H3_FRAME_ERROR). h3 0.0.8 reads only the integer: on a payload too
//!   short it waits for the rest without end, buffering every later octet of the stream; on
//!   one too long it reads the excess as the next frame's header;
//! - tells, at the stream's end, whether it ended inside a frame ([`FrameFilter::at_end`]:
//!   §7.1, H3_FRAME_ERROR), which h3 does not always notice.
//!
//! A chunk that loses nothing is passed on as it came (no copy); one that does is copied
//! once, without the dropped octets.

use bytes::{Bytes, BytesMut};

/// The longest frame other than DATA a peer may send (SETTINGS, GOAWAY, ...).
pub const MAX_FRAME: u64 = 64 << 10;

/// The longest HEADERS or PUSH_PROMISE frame a peer may send, whatever the field section
/// size the application allows: h3 0.0.8 makes a `HeaderMap` as large as the section's
/// field lines, which panics past 24,576 of them, and each line takes an octet at least.
pub const MAX_FIELD_FRAME: u64 = 24_576 - 1;

/// The longest frame of type `ty` a peer may send (DATA: any).
fn max_len(ty: u64) -> u64 {
    match ty {
        DATA => u64::MAX,
        HEADERS | PUSH_PROMISE => MAX_FIELD_FRAME,
        _ => MAX_FRAME,
    }
}

/// What the payload of a frame of type `ty` must hold at least, and at most, beyond its
/// length: one variable-length integer and nothing else (CANCEL_PUSH, GOAWAY, MAX_PUSH_ID),
/// or one first (PUSH_PROMISE's push ID); `None` for the other types.
fn leading_varint(ty: u64) -> Option<Exactly> {
    match ty {
        CANCEL_PUSH | GOAWAY | MAX_PUSH_ID => Some(Exactly::Yes),
        PUSH_PROMISE => Some(Exactly::No),
        _ => None,
    }
}

/// Whether a frame's payload is its leading integer and nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exactly {
    Yes,
    No,
}

/// The frame type of DATA (RFC 9114 §7.2.1).
const DATA: u64 = 0x0;
/// The frame type of SETTINGS (RFC 9114 §7.2.4).
const SETTINGS: u64 = 0x4;
/// The frame types whose payload is one integer (RFC 9114 §7.2.3, §7.2.6, §7.2.7).
const CANCEL_PUSH: u64 = 0x3;
const GOAWAY: u64 = 0x7;
const MAX_PUSH_ID: u64 = 0xd;
/// The frame types of HEADERS and PUSH_PROMISE (RFC 9114 §7.2.2, §7.2.5).
const HEADERS: u64 = 0x1;
const PUSH_PROMISE: u64 = 0x5;
/// The unidirectional stream type of the control stream (RFC 9114 §6.2.1); the others a
/// peer may open (QPACK's encoder and decoder streams, RFC 9204 §4.2) are not framed.
pub const CONTROL: u64 = 0x0;

/// The frame types HTTP/3 reserves for HTTP/2's PRIORITY, PING, WINDOW_UPDATE and
/// CONTINUATION (RFC 9114 §7.2.8, §11.2.1).
const H2_RESERVED: [u64; 4] = [0x2, 0x6, 0x8, 0x9];

/// Whether RFC 9114 defines frame type `ty` (HTTP/2's reserved types included: refused at
/// their type, [`FrameError::Unexpected`]).
fn defined(ty: u64) -> bool {
    ty <= 0x9 || ty == 0xd
}

/// Where a [`FrameFilter`] is in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A unidirectional stream's type, not read yet.
    StreamType,
    /// A frame's type.
    FrameType,
    /// A frame's length (its type known).
    Length(u64),
    /// Inside a frame's payload, this many octets left; passed on if `keep`.
    Payload { left: u64, keep: bool },
    /// Before the first octet of the payload of `len` octets of a frame of type `ty` that
    /// starts with an integer ([`leading_varint`]): that octet tells the integer's length.
    Leading { ty: u64, len: u64, exactly: Exactly },
    /// Not framed (a QPACK stream, or one h3 refuses): passed on as it comes.
    Unframed,
}

/// Filters the frames of one stream the peer sends on.
#[derive(Debug, Clone)]
pub struct FrameFilter {
    state: State,
    /// The octets of the frame header (type and length) read so far, and how many.
    head: [u8; 16],
    head_len: usize,
    /// The variable-length integer being read: its first octet's index in `head`.
    varint_at: usize,
    /// The stream type of a unidirectional stream, once read.
    stream_type: Option<u64>,
    /// A control stream's first frame has come (it must be SETTINGS).
    first_frame: bool,
    /// What was refused: every later call says it again (the state stops where the refusal
    /// found it, mid-header).
    refused: Option<FrameError>,
}

/// A frame refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// Longer than its type allows ([`MAX_FIELD_FRAME`] for HEADERS and PUSH_PROMISE,
    /// [`MAX_FRAME`] for the others but DATA): its type and announced length. Answered with
    /// H3_EXCESSIVE_LOAD.
    TooLong { frame_type: u64, length: u64 },
    /// A payload its type cannot have (a CANCEL_PUSH, GOAWAY or MAX_PUSH_ID that is not
    /// exactly one integer, a PUSH_PROMISE shorter than its push ID): its type and announced
    /// length. A connection error of type H3_FRAME_ERROR (RFC 9114 §7.1).
    Malformed { frame_type: u64, length: u64 },
    /// The stream ended inside a frame: a connection error of type H3_FRAME_ERROR (RFC
    /// 9114 §7.1).
    Truncated,
    /// A control stream whose first frame is not SETTINGS, of whatever type (h3 checks the
    /// types it sees; frames of undefined types it never sees): a connection error of type
    /// H3_MISSING_SETTINGS (RFC 9114 §6.2.1).
    MissingSettings,
    /// A frame of a type HTTP/3 reserves for HTTP/2's (PRIORITY, PING, WINDOW_UPDATE,
    /// CONTINUATION): a connection error of type H3_FRAME_UNEXPECTED (RFC 9114 §7.2.8).
    Unexpected { frame_type: u64 },
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            FrameError::TooLong { frame_type, length } => write!(
                f,
                "a frame of type {frame_type:#x} announced {length} octets, over the {} allowed",
                max_len(frame_type)
            ),
            FrameError::Malformed { frame_type, length } => write!(
                f,
                "a frame of type {frame_type:#x} of {length} octets that do not hold its one \
                 integer"
            ),
            FrameError::Truncated => write!(f, "the stream ended inside a frame"),
            FrameError::MissingSettings => {
                write!(f, "a control stream whose first frame is not SETTINGS")
            }
            FrameError::Unexpected { frame_type } => {
                write!(
                    f,
                    "a frame of type {frame_type:#x}, which HTTP/3 reserves for HTTP/2's"
                )
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// What a chunk becomes: a prefix of it (no copy) until something in it is dropped or
/// octets of an earlier chunk go in front; then a copy.
struct Out<'a> {
    data: &'a Bytes,
    /// While `copy` is `None`: what was passed on is `data[..prefix]`.
    prefix: usize,
    copy: Option<BytesMut>,
}

impl<'a> Out<'a> {
    fn new(data: &'a Bytes) -> Self {
        Self {
            data,
            prefix: 0,
            copy: None,
        }
    }

    /// The copy, made from the prefix passed on so far if there is none yet.
    fn copy(&mut self) -> &mut BytesMut {
        let (data, prefix) = (self.data, self.prefix);
        self.copy.get_or_insert_with(|| {
            let mut b = BytesMut::with_capacity(data.len());
            b.extend_from_slice(&data[..prefix]);
            b
        })
    }

    /// Passes on `data[from..to]`.
    fn range(&mut self, from: usize, to: usize) {
        if from == to {
            return;
        }
        if self.copy.is_none() && from == self.prefix {
            self.prefix = to;
        } else {
            let data = self.data;
            self.copy().extend_from_slice(&data[from..to]);
        }
    }

    /// Passes on octets that are not (all) in this chunk.
    fn octets(&mut self, o: &[u8]) {
        if !o.is_empty() {
            self.copy().extend_from_slice(o);
        }
    }

    fn finish(self) -> Bytes {
        match self.copy {
            Some(b) => b.freeze(),
            None => self.data.slice(..self.prefix),
        }
    }
}

impl FrameFilter {
    /// For a bidirectional (request) stream: frames from its first octet.
    pub fn bidi() -> Self {
        Self::at(State::FrameType)
    }

    /// For a unidirectional stream: its type first; frames only on a control stream.
    pub fn uni() -> Self {
        Self::at(State::StreamType)
    }

    fn at(state: State) -> Self {
        Self {
            state,
            head: [0; 16],
            head_len: 0,
            varint_at: 0,
            stream_type: None,
            first_frame: false,
            refused: None,
        }
    }

    /// A unidirectional stream's type, once its octets came.
    pub fn stream_type(&self) -> Option<u64> {
        self.stream_type
    }

    /// The next octets of the stream, `data`, as h3 is to see them: frames of undefined
    /// types taken out, and the octets of a frame header that `data` ends inside held back
    /// until the rest of it comes. Empty when nothing of `data` is to be seen (yet). Once it
    /// refused something, it refuses every later chunk the same way.
    pub fn filter(&mut self, data: Bytes) -> Result<Bytes, FrameError> {
        if let Some(refused) = self.refused {
            return Err(refused);
        }
        let seen = self.filter_frames(data);
        if let Err(refused) = seen {
            self.refused = Some(refused);
        }
        seen
    }

    fn filter_frames(&mut self, data: Bytes) -> Result<Bytes, FrameError> {
        let mut out = Out::new(&data);
        // The frame header being read started in this chunk at `head_from` (so it can be
        // passed on as a range of it), or in an earlier one.
        let mut head_from = (self.head_len == 0).then_some(0);
        let mut at = 0;
        while at < data.len() {
            match self.state {
                State::Unframed => {
                    out.range(at, data.len());
                    at = data.len();
                }
                State::Leading { ty, len, exactly } => {
                    // The integer's length, from its first octet; its octets stay in `data`
                    // for the payload state to pass on.
                    let need = 1u64 << (data[at] >> 6);
                    let fits = match exactly {
                        Exactly::Yes => need == len,
                        Exactly::No => need <= len,
                    };
                    if !fits {
                        return Err(FrameError::Malformed {
                            frame_type: ty,
                            length: len,
                        });
                    }
                    self.state = State::Payload {
                        left: len,
                        keep: true,
                    };
                }
                State::Payload { left, keep } => {
                    let n = left.min((data.len() - at) as u64) as usize;
                    if keep {
                        out.range(at, at + n);
                    }
                    at += n;
                    self.state = if left == n as u64 {
                        State::FrameType
                    } else {
                        State::Payload {
                            left: left - n as u64,
                            keep,
                        }
                    };
                }
                State::StreamType | State::FrameType | State::Length(_) => {
                    if self.head_len == 0 {
                        head_from = Some(at);
                    }
                    let Some(v) = self.varint(&data, &mut at) else {
                        break; // the header goes on in the next chunk
                    };
                    match self.state {
                        State::StreamType => {
                            self.stream_type = Some(v);
                            self.pass_head(&mut out, head_from, at);
                            self.state = if v == CONTROL {
                                State::FrameType
                            } else {
                                State::Unframed
                            };
                        }
                        State::FrameType => {
                            if self.stream_type == Some(CONTROL) && !self.first_frame {
                                if v != SETTINGS {
                                    return Err(FrameError::MissingSettings);
                                }
                                self.first_frame = true;
                            }
                            if H2_RESERVED.contains(&v) {
                                return Err(FrameError::Unexpected { frame_type: v });
                            }
                            self.state = State::Length(v);
                        }
                        State::Length(ty) => {
                            let keep = defined(ty);
                            if keep && v > max_len(ty) {
                                return Err(FrameError::TooLong {
                                    frame_type: ty,
                                    length: v,
                                });
                            }
                            let leading = leading_varint(ty);
                            if leading.is_some_and(|e| v == 0 || (e == Exactly::Yes && v > 8)) {
                                return Err(FrameError::Malformed {
                                    frame_type: ty,
                                    length: v,
                                });
                            }
                            if keep {
                                self.pass_head(&mut out, head_from, at);
                            } else {
                                self.head_len = 0;
                            }
                            self.state = match leading {
                                Some(exactly) => State::Leading {
                                    ty,
                                    len: v,
                                    exactly,
                                },
                                None if v == 0 => State::FrameType,
                                None => State::Payload { left: v, keep },
                            };
                        }
                        _ => unreachable!("only header states read integers"),
                    }
                }
            }
        }
        Ok(out.finish())
    }

    /// Whether the stream may end here, after the octets filtered so far: not inside a
    /// frame (a unidirectional stream may end before its type is complete, RFC 9114 §6.2;
    /// one that is not framed, anywhere). Call when the stream's end is read.
    pub fn at_end(&self) -> Result<(), FrameError> {
        if let Some(refused) = self.refused {
            return Err(refused);
        }
        match self.state {
            State::Unframed | State::StreamType => Ok(()),
            State::FrameType if self.head_len == 0 => Ok(()),
            State::FrameType | State::Length(_) | State::Payload { .. } | State::Leading { .. } => {
                Err(FrameError::Truncated)
            }
        }
    }

    /// Passes on the header read (it ends at `to` in this chunk), and starts the next.
    fn pass_head(&mut self, out: &mut Out<'_>, from: Option<usize>, to: usize) {
        match from {
            Some(from) => out.range(from, to),
            None => out.octets(&self.head[..self.head_len]),
        }
        self.head_len = 0;
    }

    /// Reads the octets of a variable-length integer (RFC 9000 §16) from `data` at `*at`
    /// into `head`; the integer once all of them came.
    fn varint(&mut self, data: &[u8], at: &mut usize) -> Option<u64> {
        if self.head_len == 0 {
            self.varint_at = 0;
        }
        let start = self.varint_at;
        let first = if self.head_len == start {
            data[*at]
        } else {
            self.head[start]
        };
        let len = 1usize << (first >> 6);
        let have = self.head_len - start;
        let take = (len - have).min(data.len() - *at);
        self.head[self.head_len..self.head_len + take].copy_from_slice(&data[*at..*at + take]);
        self.head_len += take;
        *at += take;
        if self.head_len - start < len {
            return None;
        }
        self.varint_at = self.head_len;
        let mut v = u64::from(self.head[start] & 0x3f);
        for &b in &self.head[start + 1..start + len] {
            v = v << 8 | u64::from(b);
        }
        Some(v)
    }
}

/// Splits what [`FrameFilter::filter`] passed on in the chunk where a unidirectional
/// stream's type came whole (the filter holds a type's octets until its last comes, then
/// passes them all) into the type's octets, for h3, and the octets after it.
pub fn split_stream_type(mut seen: Bytes) -> (Bytes, Bytes) {
    // A variable-length integer's length is in its first octet's two high bits.
    let type_len = seen
        .first()
        .map_or(0, |b| 1usize << (b >> 6))
        .min(seen.len());
    let rest = seen.split_off(type_len);
    (seen, rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `v` as a variable-length integer of `len` octets.
    fn varint(v: u64, len: usize) -> Vec<u8> {
        let tag = match len {
            1 => 0u8,
            2 => 1,
            4 => 2,
            _ => 3,
        };
        let mut out = v.to_be_bytes()[8 - len..].to_vec();
        out[0] |= tag << 6;
        out
    }

    /// A frame whose length field says `len` and that carries `payload` octets.
    fn frame(ty: u64, len: u64, payload: usize) -> Vec<u8> {
        let mut f = varint(ty, if ty < 64 { 1 } else { 8 });
        f.extend(varint(len, 8));
        f.extend((0..payload).map(|i| i as u8));
        f
    }

    /// A refusal mid-header (a GOAWAY whose 8-octet length says 0) stays: the next chunk,
    /// which would start another integer past the header's buffer, is refused the same way,
    /// and so is the stream's end.
    #[test]
    fn a_refusal_stays_whatever_comes_after() {
        let mut g = FrameFilter::bidi();
        let mut s = frame(0x1, 3, 3);
        s.extend(frame(0x7, 0, 0));
        let refused = FrameError::Malformed {
            frame_type: 0x7,
            length: 0,
        };
        assert_eq!(g.filter(Bytes::from(s)), Err(refused));
        for next in [&[0xc0u8, 0, 0, 0][..], &[0xff; 20], &[0x00]] {
            assert_eq!(g.filter(Bytes::copy_from_slice(next)), Err(refused));
        }
        assert_eq!(g.at_end(), Err(refused));
    }

    /// What h3 sees of `s` given in chunks of `split` octets.
    fn seen(mut g: FrameFilter, s: &[u8], split: usize) -> Result<Vec<u8>, FrameError> {
        let mut out = Vec::new();
        for part in s.chunks(split) {
            out.extend_from_slice(&g.filter(Bytes::copy_from_slice(part))?);
        }
        Ok(out)
    }

    const SPLITS: [usize; 7] = [1, 2, 3, 7, 9, 1000, usize::MAX];

    #[test]
    fn defined_frames_pass_unchanged_across_any_split() {
        // HEADERS of 100, DATA of 200 000 (over the limit: DATA may be), SETTINGS of
        // MAX_FRAME, an empty GOAWAY.
        let mut s = frame(0x1, 100, 100);
        s.extend(frame(DATA, 200_000, 200_000));
        s.extend(frame(0x4, MAX_FRAME, MAX_FRAME as usize));
        s.extend(frame(0x7, 1, 1));
        for split in SPLITS {
            assert_eq!(
                seen(FrameFilter::bidi(), &s, split).unwrap(),
                s,
                "split {split}"
            );
        }
    }

    #[test]
    fn undefined_frames_are_taken_out_whatever_their_length() {
        // A reserved type (0x1f * N + 0x21) far over MAX_FRAME, an unknown one, and an
        // empty one, between defined frames: only the defined ones are left.
        let reserved = 0x1f * 1337 + 0x21;
        let mut s = frame(0x1, 10, 10);
        s.extend(frame(reserved, 200_000, 200_000));
        s.extend(frame(DATA, 5, 5));
        s.extend(frame(0x21, 3, 3));
        s.extend(frame(0x2f, 0, 0));
        s.extend(frame(0x1, 3, 3));
        let mut want = frame(0x1, 10, 10);
        want.extend(frame(DATA, 5, 5));
        want.extend(frame(0x1, 3, 3));
        for split in SPLITS {
            assert_eq!(
                seen(FrameFilter::bidi(), &s, split).unwrap(),
                want,
                "split {split}"
            );
        }
        // On a control stream too, after its type.
        let mut control = varint(CONTROL, 1);
        control.extend(frame(0x4, 0, 0));
        control.extend(frame(reserved, 1 << 40, 70_000));
        let mut want = varint(CONTROL, 1);
        want.extend(frame(0x4, 0, 0));
        for split in SPLITS {
            assert_eq!(seen(FrameFilter::uni(), &control, split).unwrap(), want);
        }
    }

    #[test]
    fn a_chunk_that_loses_nothing_is_not_copied() {
        let s = Bytes::from(frame(0x1, 100, 100));
        let out = FrameFilter::bidi().filter(s.clone()).unwrap();
        assert_eq!(out.as_ptr(), s.as_ptr());
        assert_eq!(out.len(), s.len());
        // A chunk that ends inside a header is passed on up to it, still without a copy.
        let mut two = frame(0x1, 100, 100);
        two.extend(frame(0x1, 100, 100));
        let two = Bytes::from(two);
        let out = FrameFilter::bidi()
            .filter(two.slice(..s.len() + 3))
            .unwrap();
        assert_eq!((out.as_ptr(), out.len()), (two.as_ptr(), s.len()));
    }

    #[test]
    fn a_long_defined_frame_other_than_data_is_refused_at_its_header() {
        for ty in [0x1, 0x4, 0x5, 0x7] {
            let s = frame(ty, MAX_FRAME + 1, 0);
            for split in [1, 4, s.len()] {
                assert_eq!(
                    seen(FrameFilter::bidi(), &s, split),
                    Err(FrameError::TooLong {
                        frame_type: ty,
                        length: MAX_FRAME + 1
                    }),
                    "type {ty} split {split}"
                );
            }
        }
        // Header sections: h3 would panic on as many field lines as octets here.
        for ty in [0x1, 0x5] {
            let s = frame(ty, MAX_FIELD_FRAME + 1, 0);
            assert!(seen(FrameFilter::bidi(), &s, 3).is_err(), "type {ty}");
            let s = frame(ty, MAX_FIELD_FRAME, MAX_FIELD_FRAME as usize);
            assert_eq!(seen(FrameFilter::bidi(), &s, 1000).unwrap(), s, "type {ty}");
        }
        // After an allowed frame too.
        let mut s = frame(0x1, 10, 10);
        s.extend(frame(0x1, 1 << 40, 0));
        assert!(seen(FrameFilter::bidi(), &s, usize::MAX).is_err());
    }

    #[test]
    fn http2_frame_types_are_refused_at_their_type_whatever_their_length() {
        for ty in H2_RESERVED {
            for len in [0, 8, MAX_FRAME + 1, 1 << 40] {
                let mut s = frame(0x1, 10, 10);
                s.extend(frame(ty, len, 0));
                for split in [1, 11, 12, s.len()] {
                    assert_eq!(
                        seen(FrameFilter::bidi(), &s, split),
                        Err(FrameError::Unexpected { frame_type: ty }),
                        "type {ty} length {len} split {split}"
                    );
                }
            }
            // On a control stream too, after its SETTINGS.
            let mut c = varint(CONTROL, 1);
            c.extend(frame(SETTINGS, 0, 0));
            c.extend(frame(ty, 1, 1));
            assert_eq!(
                seen(FrameFilter::uni(), &c, 2),
                Err(FrameError::Unexpected { frame_type: ty })
            );
        }
    }

    /// A QPACK stream's type, in one octet or two, and what follows it, split at every
    /// position: the chunk where the type comes whole splits into the type and the octets
    /// after it, and nothing is lost or seen twice.
    #[test]
    fn the_type_of_a_stream_splits_from_what_follows_it() {
        for type_octets in [varint(0x2, 1), varint(0x3, 2)] {
            let mut s = type_octets.clone();
            s.extend([0x44, 0x7f, 0xac, 0x02]);
            for at in 0..=s.len() {
                let mut g = FrameFilter::uni();
                let (mut ty, mut rest) = (Vec::new(), Vec::new());
                for part in [&s[..at], &s[at..]] {
                    let typed = g.stream_type().is_some();
                    let seen = g.filter(Bytes::copy_from_slice(part)).unwrap();
                    if !typed && g.stream_type().is_some() {
                        let (t, r) = split_stream_type(seen);
                        ty.extend_from_slice(&t);
                        rest.extend_from_slice(&r);
                    } else if typed {
                        rest.extend_from_slice(&seen);
                    } else {
                        assert!(
                            seen.is_empty(),
                            "a type's octets are held until it is whole"
                        );
                    }
                }
                assert_eq!(ty, type_octets, "split at {at}");
                assert_eq!(rest, s[type_octets.len()..], "split at {at}");
            }
        }
    }

    #[test]
    fn control_streams_are_framed_qpack_streams_are_not() {
        let mut control = varint(CONTROL, 1);
        control.extend(frame(0x4, MAX_FRAME + 1, 0));
        let mut g = FrameFilter::uni();
        assert!(g.filter(Bytes::from(control)).is_err());
        assert_eq!(g.stream_type(), Some(CONTROL));
        for ty in [0x2, 0x3, 0x21] {
            let mut qpack = varint(ty, 1);
            qpack.extend(frame(0x1, 1 << 40, 0));
            qpack.extend(frame(0x21, 5, 5));
            for split in SPLITS {
                assert_eq!(
                    seen(FrameFilter::uni(), &qpack, split).unwrap(),
                    qpack,
                    "stream type {ty} split {split}"
                );
            }
        }
        // A stream type in two octets, split.
        let mut s = varint(CONTROL, 2);
        s.extend(frame(0x4, MAX_FRAME + 1, 0));
        let mut g = FrameFilter::uni();
        assert_eq!(g.filter(Bytes::copy_from_slice(&s[..1])).unwrap().len(), 0);
        assert_eq!(g.stream_type(), None);
        assert!(g.filter(Bytes::copy_from_slice(&s[1..])).is_err());
        assert_eq!(g.stream_type(), Some(CONTROL));
    }

    /// A frame whose payload is one integer with a payload that is not (RFC 9114 §7.1): h3
    /// would wait without end for an integer too long for it, buffering every later octet,
    /// or read the excess as the next frame. Refused, however the octets are split.
    #[test]
    fn a_frame_of_one_integer_must_be_exactly_that() {
        for ty in [CANCEL_PUSH, GOAWAY, MAX_PUSH_ID] {
            let malformed = |length| FrameError::Malformed {
                frame_type: ty,
                length,
            };
            // Good: each length of integer.
            for len in [1usize, 2, 4, 8] {
                let mut s = varint(CONTROL, 1);
                s.extend(frame(0x4, 0, 0));
                s.extend(frame(ty, len as u64, 0));
                s.extend(varint(5, len));
                s.extend(frame(0x4, 0, 0));
                for split in SPLITS {
                    assert_eq!(seen(FrameFilter::uni(), &s, split).unwrap(), s);
                }
            }
            // Empty, longer than any integer, or not its integer's length.
            for (len, payload, want) in [
                (0u64, vec![], malformed(0)),
                (9, vec![0; 9], malformed(9)),
                (1, vec![0x40], malformed(1)),
                (2, vec![0x00, 0x21], malformed(2)),
                (4, vec![0x40, 0, 0, 0], malformed(4)),
            ] {
                let mut s = varint(CONTROL, 1);
                s.extend(frame(0x4, 0, 0));
                s.extend(frame(ty, len, 0));
                s.extend(payload);
                s.extend(frame(DATA, 1 << 40, 100));
                for split in SPLITS {
                    assert_eq!(
                        seen(FrameFilter::uni(), &s, split),
                        Err(want),
                        "type {ty} length {len} split {split}"
                    );
                }
            }
        }
        // PUSH_PROMISE: its push ID, then a field section.
        let mut s = frame(PUSH_PROMISE, 3, 0);
        s.extend([0x40, 0x01, 0xff]);
        assert_eq!(seen(FrameFilter::bidi(), &s, 1).unwrap(), s);
        let mut s = frame(PUSH_PROMISE, 3, 0);
        s.extend([0x80, 0, 0, 1]);
        assert!(seen(FrameFilter::bidi(), &s, 2).is_err());
        assert!(seen(FrameFilter::bidi(), &frame(PUSH_PROMISE, 0, 0), 2).is_err());
    }

    /// A stream may end between frames, before a unidirectional stream's type is complete,
    /// and anywhere in an unframed stream; not inside a frame's header or payload, nor inside
    /// a dropped frame (RFC 9114 §7.1).
    #[test]
    fn a_stream_that_ends_inside_a_frame_is_truncated() {
        let ends = |g: FrameFilter, s: &[u8]| {
            let mut g = g;
            g.filter(Bytes::copy_from_slice(s)).unwrap();
            g.at_end()
        };
        let headers = frame(0x1, 3, 3);
        let mut cut_header = headers.clone();
        cut_header.push(0x00);
        let mut cut_length = headers.clone();
        cut_length.extend([0x00, 0x40]);
        let data = frame(DATA, 10, 5);
        let dropped = frame(0x21, 10, 5);
        assert_eq!(ends(FrameFilter::bidi(), &[]), Ok(()));
        assert_eq!(ends(FrameFilter::bidi(), &headers), Ok(()));
        for cut in [
            &cut_header,
            &cut_length,
            &data,
            &dropped,
            &frame(GOAWAY, 1, 0),
        ] {
            assert_eq!(
                ends(FrameFilter::bidi(), cut),
                Err(FrameError::Truncated),
                "{cut:?}"
            );
        }
        assert_eq!(ends(FrameFilter::uni(), &[0x40]), Ok(()), "inside its type");
        assert_eq!(
            ends(FrameFilter::uni(), &[0x02, 0x00, 0x40]),
            Ok(()),
            "QPACK"
        );
        let mut control = varint(CONTROL, 1);
        control.extend(frame(0x4, 2, 1));
        assert_eq!(
            ends(FrameFilter::uni(), &control),
            Err(FrameError::Truncated)
        );
    }

    /// A control stream must begin with SETTINGS (RFC 9114 §6.2.1), also when what comes
    /// first is a frame of an undefined type, which h3 would never see.
    #[test]
    fn a_control_stream_must_begin_with_settings() {
        let reserved = 0x1f * 1337 + 0x21;
        for first in [reserved, GOAWAY, DATA] {
            let mut s = varint(CONTROL, 1);
            s.extend(frame(first, 1, 1));
            s.extend(frame(0x4, 0, 0));
            for split in SPLITS {
                assert_eq!(
                    seen(FrameFilter::uni(), &s, split),
                    Err(FrameError::MissingSettings),
                    "first {first:#x} split {split}"
                );
            }
        }
        // SETTINGS first, then anything: as before.
        let mut s = varint(CONTROL, 1);
        s.extend(frame(0x4, 0, 0));
        s.extend(frame(reserved, 1, 1));
        s.extend(frame(0x4, 0, 0));
        let mut want = varint(CONTROL, 1);
        want.extend(frame(0x4, 0, 0));
        want.extend(frame(0x4, 0, 0));
        assert_eq!(seen(FrameFilter::uni(), &s, 1).unwrap(), want);
        // Request streams have no such rule.
        assert!(seen(FrameFilter::bidi(), &frame(reserved, 1, 1), 1).is_ok());
    }
}
