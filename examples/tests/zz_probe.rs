use std::net::UdpSocket;
use xdp_quic::backend::udp::bind_group;
use xdp_quic::backend::Backend;
use xdp_quic::cid::CidLayout;
#[test]
fn probe() {
    let layout = CidLayout::for_workers(4).unwrap();
    let (g, st) = bind_group("0.0.0.0:0".parse().unwrap(), 4, &layout).unwrap();
    let port = g[0].local_addr().unwrap().port();
    eprintln!("steering {st:?} port {port}");
    let socks: Vec<&UdpSocket> = g.iter().map(|b| b.socket()).collect();
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    // each group socket sends first (as a client would), then the peer replies with a long header
    for (i, s) in socks.iter().enumerate() {
        s.send_to(&[i as u8; 10], peer.local_addr().unwrap())
            .unwrap();
    }
    for _ in 0..8 {
        let mut d = vec![0xc0u8, 0, 0, 0, 1, 8, 7, 2, 1, 1, 1, 1, 1, 1];
        d.resize(1200, 0);
        peer.send_to(&d, ("127.0.0.1", port)).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    for (i, s) in socks.iter().enumerate() {
        let mut n = 0;
        let mut b = [0u8; 2000];
        while s.recv_from(&mut b).is_ok() {
            n += 1;
        }
        eprintln!("socket {i}: {n}");
    }
}
