//! Floods over AF_XDP, for real: a testbed (two network namespaces, a veth pair), the XDP
//! program and an AF_XDP server on one side; on the other, a raw IPv4 socket forges client
//! Initials from thousands of addresses that do not exist, while independent quinn clients
//! connect and echo. A packet socket on the client's interface captures what the server sends
//! back to the forged addresses, so the anti-amplification limit is checked on the wire.
//! Root is needed; with `CI` set a missing privilege fails the test.

mod support;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};

use xdp_quic::backend::xsk::TxMode;
use xdp_quic::cid::CidLayout;
use xdp_quic::packet::{checksum, ipv4, udp};
use xdp_quic::{tls, Engine, EngineBuilder, RetryPolicy, VarInt, XdpSetup};
use xdp_quic_control::testbed::Testbed;
use xdp_quic_control::testing::{privileged, sh, unique_name, wait_until};
use xdp_quic_control::xdp::{AttachMode, EmbeddedAttachment};
use xdp_quic_examples::echo::{self, EchoServer};

const PORT: u16 = 4433;
const THRESHOLD: usize = 8;
const QUEUES: u32 = 2;
const FLOOD: u32 = 2_000;
const LEGIT: u64 = 8;
/// A hang guard for each wait, never a performance bound.
const GUARD: Duration = Duration::from_secs(120);

/// Forged source `i`: 10.66.x.y, never assigned anywhere.
fn forged(i: u32) -> (Ipv4Addr, u16) {
    (
        Ipv4Addr::new(10, 66, (i >> 8) as u8, i as u8),
        20_000 + (i % 40_000) as u16,
    )
}

fn check(rc: libc::c_int, what: &str) -> libc::c_int {
    assert!(rc >= 0, "{what}: {}", std::io::Error::last_os_error());
    rc
}

/// A raw IPv4 socket (IP_HDRINCL) that sends UDP datagrams from any source address.
struct RawSender {
    fd: OwnedFd,
    packet: Vec<u8>,
}

impl RawSender {
    fn new() -> Self {
        // SAFETY: plain socket(2); the fd is owned right away.
        let fd = unsafe {
            OwnedFd::from_raw_fd(check(
                libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW),
                "raw socket",
            ))
        };
        Self {
            fd,
            packet: Vec::new(),
        }
    }

    fn send(&mut self, (src, sport): (Ipv4Addr, u16), to: Ipv4Addr, payload: &[u8]) {
        let mut ip = [0u8; ipv4::HEADER_LEN];
        ipv4::write(&mut ip, src, to, 0, 17, udp::HEADER_LEN + payload.len());
        let mut uh = [0u8; udp::HEADER_LEN];
        udp::write(&mut uh, sport, PORT, payload.len(), 0);
        self.packet.clear();
        self.packet.extend_from_slice(&uh);
        self.packet.extend_from_slice(payload);
        udp::set_checksum(&mut uh, checksum::udp_v4(src, to, &self.packet));
        self.packet.clear();
        self.packet.extend_from_slice(&ip);
        self.packet.extend_from_slice(&uh);
        self.packet.extend_from_slice(payload);
        let dst = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(to).to_be(),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: `packet` and `dst` outlive the call; lengths are theirs.
        let rc = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                self.packet.as_ptr().cast(),
                self.packet.len(),
                0,
                (&dst as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        check(rc as libc::c_int, "sendto");
    }
}

/// Sends `FLOOD` real client Initials (quinn-proto's, a ClientHello each) from forged
/// addresses to `to`, one per 500 µs, over a raw socket of the current namespace, counting
/// them in `progress`. Returns the UDP payload octets sent per forged address.
fn flood(to: Ipv4Addr, progress: &AtomicU32) -> HashMap<Ipv4Addr, u64> {
    let mut raw = RawSender::new();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[3; 32]);
    let mut endpoint = quinn_proto::Endpoint::new(
        Arc::new(quinn_proto::EndpointConfig::new(Arc::new(key))),
        None,
        false,
        None,
    );
    let config = tls::client_config(tls::Trust::InsecureAnyCertificate, &[echo::ALPN]).unwrap();
    let server = SocketAddr::new(to.into(), PORT);
    let mut sent = HashMap::new();
    let mut quic = Vec::new();
    for i in 0..FLOOD {
        let now = Instant::now();
        let (_, mut conn) = endpoint
            .connect(now, config.clone(), server, "localhost")
            .unwrap();
        quic.clear();
        let t = conn.poll_transmit(now, 1, &mut quic).expect("an Initial");
        let from = forged(i);
        raw.send(from, to, &quic[..t.size]);
        *sent.entry(from.0).or_insert(0) += t.size as u64;
        progress.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(Duration::from_micros(500));
    }
    sent
}

/// Sets socket option `name` (level SOL_SOCKET) to `value`.
fn setopt<T>(fd: &OwnedFd, name: libc::c_int, value: &T) {
    // SAFETY: valid fd; `value` is live and its size is given.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    check(rc, "setsockopt");
}

/// What the server sent one forged address.
#[derive(Default, Debug, Clone, Copy)]
struct Answer {
    octets: u64,
    retries: u64,
    initials: u64,
    /// Short headers: stateless resets, to a forged address.
    resets: u64,
}

/// What [`capture`] saw, shared with the test while it runs.
#[derive(Default)]
struct Capture {
    /// Set once the packet socket is bound: what the server sends from then on is seen.
    ready: AtomicBool,
    /// Asks the capture to take what is left in its socket and end.
    stop: AtomicBool,
    /// What the server sent each forged address.
    answers: Mutex<HashMap<Ipv4Addr, Answer>>,
}

/// Captures, on interface `dev` of the current namespace, every UDP datagram from the server's
/// port to a forged address until `cap.stop`, then the datagrams still in its socket.
fn capture(dev: &str, cap: &Capture) {
    let ifindex = xdp_quic::engine::ifindex(dev).unwrap();
    let proto = (libc::ETH_P_IP as u16).to_be();
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe {
        OwnedFd::from_raw_fd(check(
            libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, i32::from(proto)),
            "packet socket",
        ))
    };
    // SAFETY: an all-zero sockaddr_ll is valid; the fields set below make it a bind address.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = ifindex as i32;
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    // SAFETY: valid fd, a pointer to a live sockaddr_ll with its size.
    check(
        unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        },
        "bind packet socket",
    );
    setopt(&fd, libc::SO_RCVTIMEO, &timeout);
    setopt(&fd, libc::SO_RCVBUFFORCE, &(8 << 20));
    cap.ready.store(true, Ordering::SeqCst);
    let mut buf = vec![0u8; 65536];
    let mut take = |flags: libc::c_int| -> bool {
        // SAFETY: `buf` is writable for its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), flags) };
        if n <= 0 {
            return false;
        }
        let Ok((ip, rest)) = ipv4::parse(&buf[..n as usize], false) else {
            return true;
        };
        if ip.protocol != 17 || ip.dst.octets()[..2] != [10, 66] {
            return true;
        }
        let Ok((uh, _, payload)) = udp::parse(rest) else {
            return true;
        };
        if uh.src_port != PORT {
            return true;
        }
        let mut answers = cap.answers.lock().unwrap();
        let a = answers.entry(ip.dst).or_default();
        a.octets += payload.len() as u64;
        match payload.first().map(|b| b & 0xf0) {
            Some(0xf0) => a.retries += 1,
            Some(0xc0) => a.initials += 1,
            Some(b) if b & 0x80 == 0 => a.resets += 1,
            _ => {}
        }
        true
    };
    while !cap.stop.load(Ordering::SeqCst) {
        take(0);
    }
    while take(libc::MSG_DONTWAIT) {}
}

/// Whether the workers have taken in every packet the program redirected to their sockets
/// (received, or dropped on the way and counted: frame errors, the kernel's drops), and no
/// connection is left on the server: then it has sent everything it will send (the answers
/// went out before the counters that say so were published).
fn quiescent(engine: &Engine<EchoServer>, attachment: &EmbeddedAttachment) -> bool {
    let total = engine.handle().total();
    let dropped: u64 = engine
        .xsk_queues()
        .iter()
        .map(|q| {
            let s = q.snapshot();
            s.rx_parse_errors
                + s.rx_bad_checksum
                + s.rx_other_port
                + s.kernel.rx_dropped
                + s.kernel.rx_ring_full
        })
        .sum();
    let redirected: u64 = attachment
        .counters()
        .unwrap()
        .named()
        .into_iter()
        .filter(|(name, _)| name.ends_with(".redirected"))
        .map(|(_, v)| v)
        .sum();
    redirected == total.rx_packets + dropped && total.conns_active == 0
}

/// Attaches the XDP program and serves echo over AF_XDP on every queue of `tb`'s server,
/// transmitting per `tx`. On the kernel path, replies to the forged sources (10.66/16) are
/// routed to the client's side, where the capture sees them.
fn serve(
    tb: &Testbed,
    builder: EngineBuilder,
    tx: TxMode,
) -> (
    Engine<EchoServer>,
    EmbeddedAttachment,
    Vec<rustls::pki_types::CertificateDer<'static>>,
) {
    let id = tls::Identity::self_signed(&["localhost"]).unwrap();
    let cert = id.chain.clone();
    let builder = builder
        .workers(QUEUES as usize)
        .server(tls::server_config(id, &[echo::ALPN]).unwrap())
        .drain_timeout(Duration::from_secs(1));
    let mut setup = XdpSetup::new(
        &tb.server_if,
        format!("0.0.0.0:{PORT}").parse().unwrap(),
        (0..QUEUES).collect(),
    );
    setup.tx = tx;
    let via = tb.client_v4.to_string();
    sh(&[
        "ip",
        "-n",
        &tb.server_ns,
        "route",
        "add",
        "10.66.0.0/16",
        "via",
        &via,
    ]);
    let (engine, attachment) = tb
        .serve_xdp(builder, &setup, AttachMode::Native, |_| {
            EchoServer::default()
        })
        .expect("serve over AF_XDP");
    (engine, attachment, cert)
}

/// 2,000 forged Initials (one per 500 µs) while 8 quinn clients connect and echo, the
/// server transmitting on its TX rings.
#[test]
fn spoofed_initial_flood_over_af_xdp() {
    if !privileged("spoofed_initial_flood_over_af_xdp") {
        return;
    }
    spoofed_initial_flood(TxMode::Xsk, "xf", 221);
}

/// The same, the server transmitting through the kernel.
#[test]
fn spoofed_initial_flood_over_af_xdp_transmitting_through_the_kernel() {
    if !privileged("spoofed_initial_flood_over_af_xdp_transmitting_through_the_kernel") {
        return;
    }
    spoofed_initial_flood(TxMode::Kernel, "xk", 223);
}

fn spoofed_initial_flood(tx: TxMode, prefix: &str, net: u8) {
    let tb = Testbed::create(&unique_name(prefix), QUEUES, net).expect("testbed");
    // A 5 s idle timeout: the handshakes of forged clients, which never answer, end 5 s after
    // the server's last probe rather than 30 (what it may send them is the same: at most 3x
    // what they sent), so that the test can wait for their end.
    let mut transport = xdp_quic::default_transport();
    transport.max_idle_timeout(Some(Duration::from_secs(5).try_into().unwrap()));
    let (engine, attachment, cert) = serve(
        &tb,
        EngineBuilder::default()
            .retry(RetryPolicy::AbovePendingHandshakes(THRESHOLD))
            .transport(transport),
        tx,
    );
    let server = SocketAddr::new(tb.server_v4.into(), PORT);
    let handle = engine.handle();

    let cap = Capture::default();
    let flooding = AtomicBool::new(true);
    let progress = AtomicU32::new(0);
    let (sent, max_pending, max_alive) = std::thread::scope(|s| {
        let capture = s.spawn(|| tb.in_client(|| capture(&tb.client_if, &cap)).unwrap());
        wait_until("the capture is ready", GUARD, || {
            cap.ready.load(Ordering::SeqCst) || capture.is_finished()
        });
        // Samples the workers' gauges while the flood lasts.
        let monitor = s.spawn(|| {
            let (mut pending, mut alive) = (0u64, 0u64);
            while flooding.load(Ordering::Relaxed) {
                let c = handle.counters();
                pending = pending.max(c.iter().map(|w| w.conns_handshaking).max().unwrap());
                alive = alive.max(c.iter().map(|w| w.conns_active).sum());
                std::thread::sleep(Duration::from_millis(5));
            }
            (pending, alive)
        });
        let flooder = s.spawn(|| tb.in_client(|| flood(tb.server_v4, &progress)).unwrap());
        // The legitimate clients connect while the flood is under way.
        wait_until("a tenth of the flood sent", GUARD, || {
            progress.load(Ordering::Relaxed) >= FLOOD / 10 || flooder.is_finished()
        });
        tb.in_client(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async {
                    let clients = (0..LEGIT).map(|i| legit_echo(&cert, server, i, 20_000));
                    tokio::time::timeout(Duration::from_secs(120), async {
                        for c in clients {
                            c.await;
                        }
                    })
                    .await
                    .expect("hang guard");
                })
        })
        .unwrap();
        let sent = flooder.join().unwrap();
        // Every forged Initial handled, every connection (the forged handshakes included)
        // over: the server has sent the forged addresses all it ever will.
        wait_until(
            "the server took in the flood and ended every connection",
            GUARD,
            || quiescent(&engine, &attachment),
        );
        flooding.store(false, Ordering::Relaxed);
        cap.stop.store(true, Ordering::SeqCst);
        let (pending, alive) = monitor.join().unwrap();
        capture.join().unwrap();
        (sent, pending, alive)
    });
    let answers = cap.answers.into_inner().unwrap();
    let t = handle.total();
    engine.shutdown(VarInt::from_u32(0), b"").unwrap();
    drop(attachment);

    assert_eq!(sent.len(), FLOOD as usize);
    assert_eq!(
        t.handshakes, LEGIT,
        "every legitimate client got through, nobody else"
    );
    assert!(
        max_pending as usize <= THRESHOLD + LEGIT as usize,
        "pending handshakes per worker stayed bounded: at most {max_pending}"
    );
    assert!(
        max_alive as usize <= QUEUES as usize * THRESHOLD + LEGIT as usize,
        "connections alive stayed bounded: at most {max_alive}"
    );
    let answered_with_state = answers.values().filter(|a| a.initials > 0).count();
    let retried = answers.values().filter(|a| a.retries > 0).count();
    assert!(
        answered_with_state <= QUEUES as usize * THRESHOLD,
        "{answered_with_state} forged addresses got a handshake"
    );
    assert!(
        retried >= FLOOD as usize - QUEUES as usize * THRESHOLD - 50,
        "the flood beyond the threshold got Retry: {retried} of {FLOOD} (a few may be lost \
         on the veth)"
    );
    let mut worst = 0.0f64;
    for (ip, a) in &answers {
        let from = sent[ip];
        assert!(
            a.octets <= 3 * from,
            "{ip} got {} octets for {from}: more than 3x",
            a.octets
        );
        worst = worst.max(a.octets as f64 / from as f64);
    }
    println!(
        "{FLOOD} forged Initials over AF_XDP: {retried} got Retry, {answered_with_state} a \
         handshake; at most {max_pending} pending handshakes on a worker, {max_alive} \
         connections alive; worst amplification {worst:.2}x; server counters: {} Retry sent",
        t.retries_sent
    );
}

/// One legitimate quinn client (over kernel UDP): connects, echoes `len` octets, checks them.
async fn legit_echo(
    cert: &[rustls::pki_types::CertificateDer<'static>],
    server: SocketAddr,
    seed: u64,
    len: u32,
) {
    let ep = support::quinn_endpoint(cert, false);
    let conn = ep
        .connect(server, "localhost")
        .unwrap()
        .await
        .expect("a legitimate client's handshake");
    let data: Vec<u8> = (0..len).map(|i| (i * 7 + seed as u32) as u8).collect();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&data).await.unwrap();
    send.finish().unwrap();
    let back = recv.read_to_end(usize::MAX).await.unwrap();
    assert!(back == data, "client {seed}: echoed intact");
    conn.close(VarInt::from_u32(0), b"done");
    ep.wait_idle().await;
}

/// 20,000 short headers of unknown CIDs from one forged address (half random, half in the
/// server's CID layout, the only ones that could earn a reset) while a quinn client echoes
/// 2 MB: the transfer is untouched, no state is made, and resets stay within one per worker
/// per `min_reset_interval`.
#[test]
fn unknown_cid_flood_over_af_xdp_gets_rate_limited_resets() {
    if !privileged("unknown_cid_flood_over_af_xdp_gets_rate_limited_resets") {
        return;
    }
    unknown_cid_flood(TxMode::Xsk, "xr", 222);
}

/// The same, the server transmitting through the kernel.
#[test]
fn unknown_cid_flood_over_af_xdp_transmitting_through_the_kernel() {
    if !privileged("unknown_cid_flood_over_af_xdp_transmitting_through_the_kernel") {
        return;
    }
    unknown_cid_flood(TxMode::Kernel, "xq", 224);
}

fn unknown_cid_flood(tx: TxMode, prefix: &str, net: u8) {
    let tb = Testbed::create(&unique_name(prefix), QUEUES, net).expect("testbed");
    let interval = Duration::from_millis(50);
    let (engine, attachment, cert) = serve(
        &tb,
        EngineBuilder::default().min_reset_interval(interval),
        tx,
    );
    let handle = engine.handle();
    let server = SocketAddr::new(tb.server_v4.into(), PORT);
    let attacker = forged(7);
    let cap = Capture::default();
    let (sent, window) = std::thread::scope(|s| {
        let capture = s.spawn(|| tb.in_client(|| capture(&tb.client_if, &cap)).unwrap());
        wait_until("the capture is ready", GUARD, || {
            cap.ready.load(Ordering::SeqCst) || capture.is_finished()
        });
        let started = Instant::now();
        let flooder = s.spawn(|| {
            tb.in_client(|| {
                let layout = CidLayout::for_workers(QUEUES as usize).unwrap();
                let mut rng = rand::rngs::StdRng::seed_from_u64(11);
                let mut raw = RawSender::new();
                let mut packet = [0u8; 120];
                for i in 0..20_000u32 {
                    rng.fill_bytes(&mut packet);
                    packet[0] = 0x40 | (packet[0] & 0x3f);
                    if i % 2 == 0 {
                        let w = (i as usize / 2) % QUEUES as usize;
                        layout.write(w, &mut rng, &mut packet[1..1 + layout.len()]);
                    }
                    raw.send(attacker, tb.server_v4, &packet);
                    if i % 100 == 99 {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
                20_000u64 * packet.len() as u64
            })
            .unwrap()
        });
        tb.in_client(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async {
                    tokio::time::timeout(
                        Duration::from_secs(120),
                        legit_echo(&cert, server, 1, 2_000_000),
                    )
                    .await
                    .expect("hang guard")
                })
        })
        .unwrap();
        let sent = flooder.join().unwrap();
        // Every forged short header handled (and answered, or not), the client's connection
        // over: the server has sent all it will.
        wait_until(
            "the server took in the flood and ended every connection",
            GUARD,
            || quiescent(&engine, &attachment),
        );
        cap.stop.store(true, Ordering::SeqCst);
        capture.join().unwrap();
        (sent, started.elapsed())
    });
    let answers = cap.answers.into_inner().unwrap();
    let t = handle.total();
    engine.shutdown(VarInt::from_u32(0), b"").unwrap();
    drop(attachment);

    let a = answers.get(&attacker.0).copied().unwrap_or_default();
    let cap = QUEUES as u64 * (window.as_millis() / interval.as_millis() + 1) as u64;
    assert_eq!(t.conns_accepted, 1, "the flood made no connection");
    assert!(a.resets >= 1, "forged CIDs earned resets");
    assert!(
        t.resets_sent <= cap,
        "{} resets in {window:?}: more than one per worker per {interval:?}",
        t.resets_sent
    );
    assert!(a.resets <= t.resets_sent);
    // Half the forged CIDs name the worker whose queue did not receive them: the reset is
    // made by the owner after a hand-over, and must still find the attacker's link layer.
    assert!(t.handover_in > 0);
    assert_eq!(t.tx_errors, 0, "every reset and reply reached the wire");
    assert!(a.octets < sent / 20, "{} octets back for {sent}", a.octets);
    println!(
        "20,000 unknown-CID short headers over AF_XDP in {window:?}: {} stateless resets \
         ({} octets back for {sent}); cap {cap}",
        a.resets, a.octets
    );
}
