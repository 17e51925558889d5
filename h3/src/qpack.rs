//! Checks the instructions a peer sends on its QPACK encoder and decoder streams (RFC 9204
//! §4.3, §4.4) against what this side allows. h3 0.0.8 never reads those streams past their
//! type: it offers a dynamic table of no room (it sends no SETTINGS_QPACK_MAX_TABLE_CAPACITY,
//! so 0) and encodes every field section without one (Required Insert Count 0). So:
//!
//! - on the peer's **encoder** stream, the one instruction allowed is Set Dynamic Table
//!   Capacity to 0 (the octet `0x20`): a larger capacity exceeds the maximum (§4.3.1), an
//!   insertion does not fit a table of no room, a duplicate refers to an entry that cannot
//!   exist (§4.3.2–4.3.4). Each is a QPACK_ENCODER_STREAM_ERROR.
//! - on the peer's **decoder** stream, Stream Cancellation is allowed (its stream id is
//!   read and dropped); a Section Acknowledgment acknowledges a field section of which none
//!   referred to the dynamic table (§4.4.1), an Insert Count Increment counts insertions
//!   never made (§4.4.3). Each is a QPACK_DECODER_STREAM_ERROR.
//!
//! Instructions may be split over any number of chunks; the checker keeps the state
//! between them in a few octets.

/// QPACK_ENCODER_STREAM_ERROR (RFC 9204 §6).
pub const QPACK_ENCODER_STREAM_ERROR: u64 = 0x201;
/// QPACK_DECODER_STREAM_ERROR (RFC 9204 §6).
pub const QPACK_DECODER_STREAM_ERROR: u64 = 0x202;

/// The QPACK stream types (RFC 9204 §4.2).
pub const ENCODER_STREAM: u64 = 0x2;
pub const DECODER_STREAM: u64 = 0x3;

/// The most continuation octets of a prefixed integer (RFC 9204 §4.1.1, RFC 7541 §5.1): a
/// 6-bit prefix and 9 octets of 7 bits hold any 62-bit stream id; more is refused.
const MAX_CONTINUATION: u8 = 9;

/// An instruction refused: the connection error to close with and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QpackError {
    /// [`QPACK_ENCODER_STREAM_ERROR`] or [`QPACK_DECODER_STREAM_ERROR`].
    pub code: u64,
    pub reason: &'static str,
}

/// Which of the peer's QPACK streams is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Encoder,
    Decoder,
}

/// Where the checker is in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the first octet of an instruction.
    Start,
    /// Inside the stream id of a Stream Cancellation: this many continuation octets read.
    StreamId(u8),
}

/// The checker of one of the peer's QPACK streams.
#[derive(Debug, Clone)]
pub struct InstructionCheck {
    kind: Kind,
    state: State,
    /// The first refusal: every later call repeats it.
    refused: Option<QpackError>,
}

impl InstructionCheck {
    /// A checker for the peer's stream of QPACK stream type `ty` ([`ENCODER_STREAM`] or
    /// [`DECODER_STREAM`]); `None` for another type.
    pub fn for_stream_type(ty: u64) -> Option<Self> {
        let kind = match ty {
            ENCODER_STREAM => Kind::Encoder,
            DECODER_STREAM => Kind::Decoder,
            _ => return None,
        };
        Some(Self {
            kind,
            state: State::Start,
            refused: None,
        })
    }

    /// Checks the next octets of the stream (after its type).
    pub fn feed(&mut self, data: &[u8]) -> Result<(), QpackError> {
        if let Some(e) = self.refused {
            return Err(e);
        }
        let checked = match self.kind {
            Kind::Encoder => check_encoder(data),
            Kind::Decoder => self.check_decoder(data),
        };
        if let Err(e) = checked {
            self.refused = Some(e);
        }
        checked
    }

    /// Whether the checker is between two instructions.
    #[cfg(test)]
    fn at_boundary(&self) -> bool {
        self.state == State::Start
    }

    fn check_decoder(&mut self, data: &[u8]) -> Result<(), QpackError> {
        for &b in data {
            self.state = match self.state {
                State::Start if b & 0x80 != 0 => {
                    return Err(QpackError {
                        code: QPACK_DECODER_STREAM_ERROR,
                        reason: "a Section Acknowledgment, but no field section this side \
                                 sent refers to the dynamic table",
                    })
                }
                // Stream Cancellation: the id fits its 6-bit prefix, or continues.
                State::Start if b & 0x40 != 0 => {
                    if b & 0x3f == 0x3f {
                        State::StreamId(0)
                    } else {
                        State::Start
                    }
                }
                State::Start => {
                    return Err(QpackError {
                        code: QPACK_DECODER_STREAM_ERROR,
                        reason: "an Insert Count Increment, but this side never inserts",
                    })
                }
                State::StreamId(n) if n >= MAX_CONTINUATION => {
                    return Err(QpackError {
                        code: QPACK_DECODER_STREAM_ERROR,
                        reason: "a Stream Cancellation whose stream id is too long",
                    })
                }
                State::StreamId(n) if b & 0x80 != 0 => State::StreamId(n + 1),
                State::StreamId(_) => State::Start,
            };
        }
        Ok(())
    }
}

/// Every octet must be Set Dynamic Table Capacity to 0: `001` and a 5-bit prefix of 0 (a
/// capacity of 31 or more continues the prefix, and is over the maximum anyway).
fn check_encoder(data: &[u8]) -> Result<(), QpackError> {
    match data.iter().find(|&&b| b != 0x20) {
        None => Ok(()),
        Some(&b) => Err(QpackError {
            code: QPACK_ENCODER_STREAM_ERROR,
            reason: if b & 0xe0 == 0x20 {
                "a dynamic table capacity over the maximum of 0 this side allows"
            } else if b & 0xc0 != 0 {
                "an insertion into a dynamic table of no room"
            } else {
                "a duplicate of an entry a dynamic table of no room cannot hold"
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `data` split at every position into one or two chunks, and checks each split
    /// gives `want` (the code of the error, or `None`) and, when accepted, `boundary`.
    fn every_split(ty: u64, data: &[u8], want: Option<u64>, boundary: bool) {
        for split in 0..=data.len() {
            let mut c = InstructionCheck::for_stream_type(ty).unwrap();
            let got = c.feed(&data[..split]).and_then(|()| c.feed(&data[split..]));
            assert_eq!(
                got.err().map(|e| e.code),
                want,
                "{data:02x?} split at {split}"
            );
            if want.is_none() {
                assert_eq!(c.at_boundary(), boundary, "{data:02x?} split at {split}");
            } else {
                // Refused for good.
                assert_eq!(c.feed(&[0x20]).err().map(|e| e.code), want);
            }
        }
    }

    #[test]
    fn the_encoder_stream_may_only_set_a_capacity_of_0() {
        every_split(ENCODER_STREAM, &[0x20, 0x20, 0x20], None, true);
        every_split(ENCODER_STREAM, &[], None, true);
        // A capacity of 1, of 31 (prefix full, continued), an insertion with a name
        // reference, with a literal name, a duplicate.
        for bad in [
            &[0x20, 0x21][..],
            &[0x3f, 0x00],
            &[0xc0 | 17, 0x03, b'f', b'o', b'o'],
            &[0x43, b'a', b'b', b'c', 0x01, b'x'],
            &[0x00],
        ] {
            every_split(ENCODER_STREAM, bad, Some(QPACK_ENCODER_STREAM_ERROR), true);
        }
        let mut c = InstructionCheck::for_stream_type(ENCODER_STREAM).unwrap();
        assert!(c.feed(&[0x80]).unwrap_err().reason.contains("insertion"));
    }

    #[test]
    fn the_decoder_stream_may_only_cancel_streams() {
        // Stream Cancellation of stream 4 (prefix), of stream 63 + 300 (continued over two
        // octets: 300 = 0b10_0101100), and of a 62-bit id (nine continuation octets).
        let long = [0x7f, 0xc0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f];
        every_split(DECODER_STREAM, &[0x44], None, true);
        every_split(DECODER_STREAM, &[0x7f, 0xac, 0x02, 0x44], None, true);
        every_split(DECODER_STREAM, &long, None, true);
        // Cut inside the id: accepted so far, not at a boundary.
        every_split(DECODER_STREAM, &[0x44, 0x7f, 0xac], None, false);
        // A Section Acknowledgment (stream 4), an Insert Count Increment of 1 and of 0, an
        // id with a tenth continuation octet.
        let mut too_long = long.to_vec();
        too_long.insert(1, 0x80);
        for bad in [&[0x84][..], &[0x01], &[0x00], &[0x44, 0x81], &too_long] {
            every_split(DECODER_STREAM, bad, Some(QPACK_DECODER_STREAM_ERROR), true);
        }
    }

    #[test]
    fn only_qpack_stream_types_are_checked() {
        assert!(InstructionCheck::for_stream_type(0x0).is_none());
        assert!(InstructionCheck::for_stream_type(0x1).is_none());
        assert!(InstructionCheck::for_stream_type(0x21).is_none());
    }
}
