//! What the committed corpus reaches, so that a corpus that only exercises error paths shows:
//!
//! ```text
//! cargo test --manifest-path fuzz/Cargo.toml --lib -- --ignored --nocapture corpus_stats
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use xdp_quic::cid::CidLayout;
use xdp_quic::packet::frame;
use xdp_quic::route::{route, Destination};

use xdp_quic::packet::client_hello::peek;

use crate::{CidInput, ClientHelloInput, FrameWriteInput, HelloPayload, RouteInput};

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(d)
        .map(|r| r.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    files.sort();
    files.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

fn show(target: &str, n: usize, counts: BTreeMap<String, usize>) {
    println!("{target}: {n} inputs");
    for (k, v) in counts {
        println!("  {k:<40} {v}");
    }
}

#[test]
#[ignore = "reads the corpus; run explicitly"]
fn corpus_stats() {
    let inputs = corpus("frame");
    let mut c = BTreeMap::new();
    for f in &inputs {
        let key = match (frame::parse(f, false), frame::parse(f, true)) {
            (Ok(p), v) => format!(
                "ok {} vlan={} verified={}",
                if p.src.is_ipv4() { "v4" } else { "v6" },
                p.l2.vlan.is_some(),
                v.is_ok()
            ),
            (Err(e), _) => format!("err {e:?}"),
        };
        *c.entry(key).or_default() += 1;
    }
    show("frame", inputs.len(), c);

    let inputs = corpus("frame_write");
    let mut c = BTreeMap::new();
    for f in &inputs {
        let i = FrameWriteInput::decode(f);
        let mut buf = vec![0u8; 70_000];
        let len = (frame::header_len(&i.l2, true) + i.payload.len() + i.long_by)
            .saturating_sub(i.short_by)
            .min(buf.len());
        let key = match frame::write(&mut buf[..len], &i.l2, i.src, i.dst, i.ecn, &i.payload) {
            Ok(n) => format!("ok parse={:?}", frame::parse(&buf[..n], true).err()),
            Err(e) => format!("err {e:?}"),
        };
        *c.entry(key).or_default() += 1;
    }
    show("frame_write", inputs.len(), c);

    let inputs = corpus("cid");
    let mut c = BTreeMap::new();
    for f in &inputs {
        let i = CidInput::decode(f);
        let key = match CidLayout::new(i.len, i.config_rotation, i.server_id, i.workers) {
            Ok(l) => format!(
                "layout ok, candidate decodes={}",
                l.decode(i.candidate).is_some()
            ),
            Err(e) => format!(
                "layout err {}",
                format!("{e:?}").split(['(', ' ']).next().unwrap()
            ),
        };
        *c.entry(key).or_default() += 1;
    }
    show("cid", inputs.len(), c);

    let inputs = corpus("route");
    let mut c = BTreeMap::new();
    for f in &inputs {
        let i = RouteInput::decode(f);
        let key = match route(&i.layout, i.me, i.datagram) {
            Destination::Local => "datagram Local".to_string(),
            Destination::Worker(_) => "datagram Worker(_)".to_string(),
            Destination::Opened(_) => "datagram Opened(_)".to_string(),
            Destination::Stray => "datagram Stray".to_string(),
            Destination::Drop(e) => format!("datagram Drop({e:?})"),
        };
        *c.entry(key).or_default() += 1;
        *c.entry(format!("built {:?}", i.built)).or_default() += 1;
    }
    show("route", inputs.len(), c);

    let inputs = corpus("client_hello");
    let mut c = BTreeMap::new();
    for f in &inputs {
        let i = ClientHelloInput::decode(f);
        let mode = match i.payload {
            HelloPayload::Frames(_) => "frames",
            HelloPayload::Built(_) => "built",
        };
        let variant = if i.flip.is_some() { " flipped" } else { "" };
        let mut datagram = i.initial().seal();
        if let Some(at) = i.flip {
            let n = datagram.len();
            datagram[usize::from(at) % n] ^= 1;
        }
        let key = match peek(&datagram) {
            Ok(info) => format!(
                "{mode}{variant} Ok sni={} alpn={}",
                info.server_name.is_some(),
                info.alpn.len()
            ),
            Err(e) => format!(
                "{mode}{variant} Err {}",
                format!("{e:?}").split('(').next().unwrap()
            ),
        };
        *c.entry(key).or_default() += 1;
    }
    show("client_hello", inputs.len(), c);
}
