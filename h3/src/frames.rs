//! A watch on the HTTP/3 frames a peer sends, before h3 sees them: h3 0.0.8 buffers every
//! frame but DATA whole before it decodes (and before it checks a HEADERS frame against
//! SETTINGS_MAX_FIELD_SECTION_SIZE), so a peer announcing a huge HEADERS or unknown frame
//! could make it buffer without bound. [`FrameGuard`] reads the frame headers as the octets
//! go by (it does not change them) and refuses a non-DATA frame longer than
//! [`MAX_FRAME`].

/// The longest frame other than DATA a peer may send (HEADERS, SETTINGS, unknown types).
pub const MAX_FRAME: u64 = 64 << 10;

/// The frame type of DATA (RFC 9114 §7.2.1).
const DATA: u64 = 0x0;
/// The unidirectional stream type of the control stream (RFC 9114 §6.2.1); the others a
/// peer may open (QPACK's encoder and decoder streams, RFC 9204 §4.2) are not framed.
const CONTROL: u64 = 0x0;

/// Where a [`FrameGuard`] is in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A unidirectional stream's type, not read yet.
    StreamType,
    /// A frame's type.
    FrameType,
    /// A frame's length (its type known).
    Length(u64),
    /// Inside a frame's payload, this many octets left.
    Payload(u64),
    /// Not framed (a QPACK stream): nothing more to watch.
    Unframed,
}

/// Follows the frame headers of one stream the peer sends on.
#[derive(Debug, Clone)]
pub struct FrameGuard {
    state: State,
    /// The variable-length integer being read, and how many of its octets came.
    varint: [u8; 8],
    have: usize,
}

/// A frame longer than [`MAX_FRAME`] that is not DATA: its type and announced length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLong {
    pub frame_type: u64,
    pub length: u64,
}

impl std::fmt::Display for TooLong {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "a frame of type {:#x} announced {} octets, over the {MAX_FRAME} allowed",
            self.frame_type, self.length
        )
    }
}

impl std::error::Error for TooLong {}

impl FrameGuard {
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
            varint: [0; 8],
            have: 0,
        }
    }

    /// Follows `data`, the next octets of the stream.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), TooLong> {
        while !data.is_empty() {
            match self.state {
                State::Unframed => return Ok(()),
                State::Payload(left) => {
                    let n = left.min(data.len() as u64);
                    data = &data[n as usize..];
                    self.state = if left == n {
                        State::FrameType
                    } else {
                        State::Payload(left - n)
                    };
                }
                State::StreamType | State::FrameType | State::Length(_) => {
                    let Some(v) = self.varint(&mut data) else {
                        return Ok(());
                    };
                    self.state = match self.state {
                        State::StreamType if v == CONTROL => State::FrameType,
                        State::StreamType => State::Unframed,
                        State::FrameType => State::Length(v),
                        State::Length(ty) if ty != DATA && v > MAX_FRAME => {
                            return Err(TooLong {
                                frame_type: ty,
                                length: v,
                            })
                        }
                        State::Length(_) if v == 0 => State::FrameType,
                        State::Length(_) => State::Payload(v),
                        s => s,
                    };
                }
            }
        }
        Ok(())
    }

    /// Takes the octets of a variable-length integer (RFC 9000 §16) from the front of
    /// `data`; the integer once all of them came.
    fn varint(&mut self, data: &mut &[u8]) -> Option<u64> {
        let first = if self.have == 0 {
            data[0]
        } else {
            self.varint[0]
        };
        let len = 1usize << (first >> 6);
        let take = (len - self.have).min(data.len());
        self.varint[self.have..self.have + take].copy_from_slice(&data[..take]);
        self.have += take;
        *data = &data[take..];
        if self.have < len {
            return None;
        }
        self.have = 0;
        let mut v = u64::from(self.varint[0] & 0x3f);
        for &b in &self.varint[1..len] {
            v = v << 8 | u64::from(b);
        }
        Some(v)
    }
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

    fn frame(ty: u64, len: u64, payload: usize) -> Vec<u8> {
        let mut f = varint(ty, 1);
        f.extend(varint(len, 8));
        f.extend(std::iter::repeat_n(0x5a, payload));
        f
    }

    #[test]
    fn frames_are_followed_across_any_split() {
        // HEADERS of 100, DATA of 200 000 (over the limit: DATA may be), an unknown frame of
        // MAX_FRAME, an empty SETTINGS.
        let mut s = frame(0x1, 100, 100);
        s.extend(frame(DATA, 200_000, 200_000));
        s.extend(frame(0x21, MAX_FRAME, MAX_FRAME as usize));
        s.extend(frame(0x4, 0, 0));
        for split in [1, 2, 3, 7, 1000, s.len()] {
            let mut g = FrameGuard::bidi();
            for part in s.chunks(split) {
                g.feed(part).unwrap();
            }
            assert_eq!(g.state, State::FrameType, "split {split}");
        }
    }

    #[test]
    fn a_long_frame_other_than_data_is_refused_at_its_header() {
        for ty in [0x1, 0x4, 0x21] {
            let s = frame(ty, MAX_FRAME + 1, 0);
            for split in [1, 4, s.len()] {
                let mut g = FrameGuard::bidi();
                let r = s.chunks(split).try_for_each(|p| g.feed(p));
                assert_eq!(
                    r,
                    Err(TooLong {
                        frame_type: ty,
                        length: MAX_FRAME + 1
                    }),
                    "type {ty} split {split}"
                );
            }
        }
        // After an allowed frame too.
        let mut s = frame(0x1, 10, 10);
        s.extend(frame(0x1, 1 << 40, 0));
        assert!(FrameGuard::bidi().feed(&s).is_err());
    }

    #[test]
    fn control_streams_are_framed_qpack_streams_are_not() {
        let mut control = varint(CONTROL, 1);
        control.extend(frame(0x4, MAX_FRAME + 1, 0));
        assert!(FrameGuard::uni().feed(&control).is_err());
        for ty in [0x2, 0x3, 0x21] {
            let mut qpack = varint(ty, 1);
            qpack.extend(frame(0x1, 1 << 40, 0));
            assert!(FrameGuard::uni().feed(&qpack).is_ok(), "stream type {ty}");
        }
        // A stream type in two octets, split.
        let mut s = varint(CONTROL, 2);
        s.extend(frame(0x7, MAX_FRAME + 1, 0));
        let mut g = FrameGuard::uni();
        assert!(g.feed(&s[..1]).is_ok());
        assert!(g.feed(&s[1..]).is_err());
    }
}
