//! Packet codecs of the datapath. Each parser is bounds-checked and total: it returns `None`
//! or an error for any input, never panics.

pub mod quic;
