//! `cid`: the connection-ID codec (`cid::CidLayout`, `cid::ShardCidGenerator`). Input format:
//! `CidInput` in `src/lib.rs` (raw layout parameters, a worker pick, nonce bytes, and an
//! arbitrary candidate CID).
//!
//! * `CidLayout::new` accepts exactly the documented parameters (config rotation 0..=6, 1..=256
//!   workers, 1 + server id + 1 + 4 <= len <= 20) and otherwise names the first rule broken;
//! * the accessors agree with the parameters (`first_octet` = CR << 5 | len - 1, ...);
//! * encode → decode round-trips for every worker pick and nonce: `write` lays out first
//!   octet, server id, worker octet, and `decode` gives the worker back; changing a nonce octet
//!   keeps the worker, changing the worker octet gives that worker (or `None` when out of
//!   range), changing any other octet, or the length, gives `None`;
//! * `decode` of arbitrary octets never panics and returns `Some(w)` exactly when the octets
//!   have the layout's length, first octet, server id and a worker octet `w < workers`;
//! * `ShardCidGenerator` validates exactly the CIDs `decode` gives to its own worker, issues
//!   CIDs of its worker, and refuses the CIDs of the other shards.

#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use quinn_proto::{ConnectionId, ConnectionIdGenerator};
use xdp_quic::cid::{
    CidLayout, CidLayoutError, ShardCidGenerator, CR_UNROUTABLE, MAX_CID_LEN, MIN_NONCE_LEN,
};
use xdp_quic_fuzz::{ByteRng, CidInput};

fuzz_target!(|data: &[u8]| {
    let input = CidInput::decode(data);
    let sid = input.server_id;
    let r = CidLayout::new(input.len, input.config_rotation, sid, input.workers);

    // The documented rules, in the order they are checked.
    let want_err = if input.config_rotation >= CR_UNROUTABLE {
        Some(CidLayoutError::ConfigRotation(input.config_rotation))
    } else if input.workers == 0 || input.workers > 256 {
        Some(CidLayoutError::Workers(input.workers))
    } else if input.len < 1 + sid.len() + 1 + MIN_NONCE_LEN || input.len > MAX_CID_LEN {
        Some(CidLayoutError::Length {
            len: input.len,
            sid: sid.len(),
        })
    } else {
        None
    };
    let layout = match (r, want_err) {
        (Err(e), Some(want)) => {
            assert_eq!(e, want);
            let _ = e.to_string();
            return;
        }
        (Ok(l), None) => l,
        (r, want) => panic!("CidLayout::new gave {r:?}, want error {want:?}"),
    };

    // Accessors.
    let len = layout.len();
    let workers = layout.workers();
    let w_off = layout.worker_offset();
    assert_eq!(len, input.len);
    assert!(!layout.is_empty());
    assert_eq!(workers, input.workers);
    assert_eq!(layout.server_id(), sid);
    assert_eq!(w_off, 1 + sid.len());
    assert!(w_off + 1 + MIN_NONCE_LEN <= len && len <= MAX_CID_LEN);
    assert_eq!(
        layout.first_octet(),
        (input.config_rotation << 5) | (len as u8 - 1)
    );

    // Encode → decode.
    let worker = usize::from(input.pick) % workers;
    let mut cid = [0u8; MAX_CID_LEN];
    let cid = &mut cid[..len];
    layout.write(worker, &mut ByteRng::new(input.nonce), cid);
    assert_eq!(cid[0], layout.first_octet());
    assert_eq!(&cid[1..w_off], sid);
    assert_eq!(usize::from(cid[w_off]), worker);
    assert_eq!(layout.decode(cid), Some(worker));
    if !input.nonce.is_empty() {
        // The nonce is the RNG's output, verbatim.
        let want: Vec<u8> = input
            .nonce
            .iter()
            .copied()
            .cycle()
            .take(len - w_off - 1)
            .collect();
        assert_eq!(cid[w_off + 1..], want[..]);
    }

    // Single-octet changes.
    for i in 0..len {
        let mut m = [0u8; MAX_CID_LEN];
        let m = &mut m[..len];
        m.copy_from_slice(cid);
        m[i] ^= input.mask;
        let want = if i > w_off {
            Some(worker)
        } else if i == w_off {
            Some(usize::from(m[i])).filter(|&w| w < workers)
        } else {
            None
        };
        assert_eq!(layout.decode(m), want, "octet {i} ^ {:#x}", input.mask);
    }
    // Other lengths.
    for l in 0..len {
        assert_eq!(layout.decode(&cid[..l]), None);
    }
    let mut longer = cid.to_vec();
    longer.push(input.mask);
    assert_eq!(layout.decode(&longer), None);

    // Arbitrary octets.
    let cand = input.candidate;
    let got = layout.decode(cand);
    let want = (cand.len() == len
        && cand[0] == layout.first_octet()
        && cand[1..w_off] == *sid
        && usize::from(cand[w_off]) < workers)
        .then(|| usize::from(cand[w_off]));
    assert_eq!(got, want);

    // The shard generators.
    let layout = Arc::new(layout);
    let mut gen = ShardCidGenerator::new(layout.clone(), worker);
    assert_eq!(gen.cid_len(), len);
    assert!(gen.validate(&ConnectionId::new(cid)).is_ok());
    let fresh = gen.generate_cid();
    assert_eq!(fresh.len(), len);
    assert_eq!(layout.decode(&fresh), Some(worker));
    assert!(gen.validate(&fresh).is_ok());
    if cand.len() <= MAX_CID_LEN {
        let ok = gen.validate(&ConnectionId::new(cand)).is_ok();
        assert_eq!(ok, got == Some(worker));
    }
    if workers > 1 {
        let other = (worker + 1 + usize::from(input.mask)) % workers;
        if other != worker {
            let g = ShardCidGenerator::new(layout.clone(), other);
            assert!(g.validate(&fresh).is_err());
            assert!(g.validate(&ConnectionId::new(cid)).is_err());
        }
    }
});
