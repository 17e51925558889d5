//! Packet codecs of the datapath. Each parser is bounds-checked and total: it returns `None`
//! or an error for any input, never panics.

pub mod checksum;
pub mod client_hello;
pub mod eth;
pub mod frame;
pub mod ipv4;
pub mod ipv6;
pub mod quic;
pub mod udp;
