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
    taken_in(engine, attachment) && engine.handle().total().conns_active == 0
}

/// Whether the workers have taken in every packet the program redirected to their sockets
/// (received, or dropped on the way and counted).
fn taken_in(engine: &Engine<EchoServer>, attachment: &EmbeddedAttachment) -> bool {
    let total = engine.handle().total();
    let dropped: u64 = engine
        .xsk_queues()
        .iter()
        .map(|q| {
            let s = q.snapshot();
            s.rx_parse_errors
                + s.rx_bad_checksum
                + s.rx_other_port
                + s.rx_martians
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
    redirected == total.rx_packets + dropped
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
        "replace",
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

// ---- The shield on the wire ------------------------------------------------------------

use xdp_quic_control::testing::read_until;
use xdp_quic_control::xdp::pressure::PressureChange;
use xdp_quic_control::xdp::{PressurePolicy, ShieldConfig, ShieldGuard};

/// The program's counter `name` of `attachment`.
fn program_counter(attachment: &EmbeddedAttachment, name: &str) -> u64 {
    attachment
        .counters()
        .unwrap()
        .named()
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no counter {name}"))
}

/// Engages the shield for `engine` as `serve --xdp-shield` does: default rules, the
/// engine's CID layout (the builder's defaults), a pressure monitor per `policy`.
fn engage_shield(
    engine: &Engine<EchoServer>,
    attachment: &EmbeddedAttachment,
    policy: PressurePolicy,
    report: Option<Box<dyn FnMut(PressureChange) + Send>>,
) -> ShieldGuard {
    ShieldGuard::engage(
        attachment.shield().unwrap(),
        &ShieldConfig::default(),
        &CidLayout::for_workers(QUEUES as usize).unwrap(),
        engine,
        policy,
        report,
    )
    .expect("engage the shield")
}

/// The Prometheus text the server's collector exports (as `serve --metrics` does with the
/// shield on): the workers, their queues, the program's counters, the pressure flags.
fn prometheus_text(
    engine: &Engine<EchoServer>,
    attachment: &EmbeddedAttachment,
    iface: &str,
    shield: &ShieldGuard,
) -> String {
    use xdp_quic_control::metrics::EngineCollector;
    let mut collector = EngineCollector::new(
        "xdp",
        Some(iface.to_string()),
        engine.handle().metrics(),
        engine.xsk_queues().to_vec(),
        Some(attachment.counters_reader().unwrap()),
    );
    if let Some(view) = shield.pressure() {
        collector = collector.with_pressure(view);
    }
    let mut reg = prometheus_client::registry::Registry::default();
    reg.register_collector(Box::new(collector));
    let mut body = String::new();
    prometheus_client::encoding::text::encode(&mut body, &reg).unwrap();
    body
}

/// An IPv4 packet (header, UDP, `payload`) from `from` to `to`:PORT, checksums set.
fn raw_packet((src, sport): (Ipv4Addr, u16), to: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let mut ip = [0u8; ipv4::HEADER_LEN];
    ipv4::write(&mut ip, src, to, 0, 17, udp::HEADER_LEN + payload.len());
    let mut uh = [0u8; udp::HEADER_LEN];
    udp::write(&mut uh, sport, PORT, payload.len(), 0);
    let mut l4 = uh.to_vec();
    l4.extend_from_slice(payload);
    udp::set_checksum(&mut uh, checksum::udp_v4(src, to, &l4));
    let mut p = ip.to_vec();
    p.extend_from_slice(&uh);
    p.extend_from_slice(payload);
    p
}

impl RawSender {
    /// Sends a whole IPv4 packet made by [`raw_packet`].
    fn send_packet(&self, packet: &[u8]) {
        let dst = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes([packet[16], packet[17], packet[18], packet[19]]),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: `packet` and `dst` outlive the call; lengths are theirs.
        let rc = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&dst as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        check(rc as libc::c_int, "sendto");
    }
}

impl RawSender {
    /// Sends whole IPv4 packets made by [`raw_packet`], 64 per `sendmmsg`; counts them in
    /// `progress` as they go.
    fn send_all(&self, packets: &[Vec<u8>], progress: &AtomicU32) {
        for batch in packets.chunks(64) {
            let dst: Vec<libc::sockaddr_in> = batch
                .iter()
                .map(|p| libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: 0,
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes([p[16], p[17], p[18], p[19]]),
                    },
                    sin_zero: [0; 8],
                })
                .collect();
            let mut iov: Vec<libc::iovec> = batch
                .iter()
                .map(|p| libc::iovec {
                    iov_base: p.as_ptr() as *mut libc::c_void,
                    iov_len: p.len(),
                })
                .collect();
            // SAFETY: an all-zero mmsghdr is valid; the fields set point into `dst` and
            // `iov`, which outlive the calls below.
            let mut msgs: Vec<libc::mmsghdr> = (0..batch.len())
                .map(|i| {
                    let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                    m.msg_hdr.msg_name = (&dst[i] as *const libc::sockaddr_in) as *mut _;
                    m.msg_hdr.msg_namelen =
                        std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
                    m.msg_hdr.msg_iov = &mut iov[i];
                    m.msg_hdr.msg_iovlen = 1;
                    m
                })
                .collect();
            let mut done = 0;
            while done < msgs.len() {
                // SAFETY: `msgs[done..]` are valid mmsghdrs whose pointers are live.
                let n = unsafe {
                    libc::sendmmsg(
                        self.fd.as_raw_fd(),
                        msgs[done..].as_mut_ptr(),
                        (msgs.len() - done) as libc::c_uint,
                        0,
                    )
                };
                check(n, "sendmmsg");
                done += n as usize;
            }
            progress.fetch_add(batch.len() as u32, Ordering::Relaxed);
        }
    }
}

/// 2,000 Initials in datagrams shorter than 1,200 octets, from forged addresses: with the
/// shield on, the program drops every one (counted as `dropped_short_initial`) and no worker
/// receives any; then a quinn client connects and echoes through the shield (its short
/// headers carry the engine's CIDs).
#[test]
fn short_initials_are_dropped_in_xdp_and_reach_no_worker() {
    if !privileged("short_initials_are_dropped_in_xdp_and_reach_no_worker") {
        return;
    }
    let tb = Testbed::create(&unique_name("xs"), QUEUES, 225).expect("testbed");
    let (engine, attachment, cert) = serve(&tb, EngineBuilder::default(), TxMode::Auto);
    let shield = engage_shield(&engine, &attachment, PressurePolicy::default(), None);
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let packets: Vec<Vec<u8>> = (0..FLOOD)
        .map(|i| {
            // A v1 Initial header (random CIDs), 100 to 1,199 octets in all.
            let len = 100 + (rng.next_u32() % 1100) as usize;
            let mut q = vec![0u8; len];
            rng.fill_bytes(&mut q);
            q[0] = 0xc0 | (q[0] & 0x0f);
            q[1..5].copy_from_slice(&1u32.to_be_bytes());
            q[5] = 8;
            // Never our CID (whose first octet's low bits are its length less one, at most
            // 19): an Initial to our CID is no new attempt, and passes whatever its size.
            q[6] |= 0x1f;
            q[14] = 8;
            raw_packet(forged(i), tb.server_v4, &q)
        })
        .collect();
    tb.in_client(|| {
        let raw = RawSender::new();
        for p in &packets {
            raw.send_packet(p);
        }
    })
    .unwrap();
    let dropped = read_until(
        "the short Initials counted",
        GUARD,
        || program_counter(&attachment, "v4.dropped_short_initial"),
        |&n| n >= u64::from(FLOOD),
    );
    assert_eq!(dropped, u64::from(FLOOD));
    assert_eq!(program_counter(&attachment, "v4.redirected"), 0);
    let t = engine.handle().total();
    assert_eq!(t.rx_packets, 0, "no worker received a short Initial");
    assert_eq!(t.conns_accepted + t.retries_sent + t.rx_malformed, 0);

    // What the Prometheus endpoint exports: every counter of the program (each new reason
    // among them), the short Initials counted, and the shield's pressure flags per queue.
    let body = prometheus_text(&engine, &attachment, &tb.server_if, &shield);
    for c in xdp_quic_ebpf::Counter::all() {
        let name = c.name();
        let (family, outcome) = name.split_once('.').unwrap_or(("any", &name));
        let series = format!(
            "xdpquic_xdp_packets_total{{iface=\"{}\",family=\"{family}\",outcome=\"{outcome}\"}} ",
            tb.server_if
        );
        assert!(body.contains(&series), "no {series}in\n{body}");
    }
    assert!(
        body.contains(&format!(
            "family=\"v4\",outcome=\"dropped_short_initial\"}} {FLOOD}\n"
        )),
        "{body}"
    );
    for q in 0..QUEUES {
        let series = format!(
            "xdpquic_xdp_pressure{{iface=\"{}\",queue=\"{q}\"}} 0\n",
            tb.server_if
        );
        assert!(body.contains(&series), "no {series}in\n{body}");
    }

    // Legitimate traffic goes through the shield.
    let server = SocketAddr::new(tb.server_v4.into(), PORT);
    tb.in_client(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                tokio::time::timeout(
                    Duration::from_secs(120),
                    legit_echo(&cert, server, 3, 200_000),
                )
                .await
                .expect("hang guard")
            })
    })
    .unwrap();
    let t = engine.handle().total();
    assert_eq!(t.handshakes, 1);
    assert_eq!(program_counter(&attachment, "v4.dropped_foreign_cid"), 0);
    assert_eq!(
        program_counter(&attachment, "v4.dropped_short_initial"),
        u64::from(FLOOD)
    );
    println!(
        "{FLOOD} short Initials over AF_XDP with the shield: {dropped} dropped in XDP, 0 to the \
         workers; then a quinn client echoed 200 kB through the shield ({} packets to the \
         workers)",
        t.rx_packets
    );
    drop(shield);
    engine.shutdown(VarInt::from_u32(0), b"").unwrap();
    drop(attachment);
}

/// Tokenless Initials in the big flood.
const BIG_FLOOD: u32 = 50_000;

/// Forged source `i` of the big flood: 16 /24 prefixes (10.66.0-15.0/24), 256 hosts each,
/// the prefix changing with every packet.
fn forged_spread(i: u32) -> (Ipv4Addr, u16) {
    (
        Ipv4Addr::new(10, 66, (i % 16) as u8, (i / 16) as u8),
        20_000 + (i % 40_000) as u16,
    )
}

/// `n` real client Initials (quinn-proto's, a ClientHello each, no token) to `to`, from
/// forged sources, as whole IPv4 packets: made before the flood, so that it goes at the rate
/// the sender can write.
fn forged_initials(n: u32, to: Ipv4Addr) -> Vec<Vec<u8>> {
    let config = tls::client_config(tls::Trust::InsecureAnyCertificate, &[echo::ALPN]).unwrap();
    let server = SocketAddr::new(to.into(), PORT);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[3; 32]);
    let mut out = Vec::with_capacity(n as usize);
    let mut quic = Vec::new();
    for chunk in 0..n.div_ceil(1000) {
        // A fresh endpoint every 1,000: it keeps a little of every connection it made.
        let mut endpoint = quinn_proto::Endpoint::new(
            Arc::new(quinn_proto::EndpointConfig::new(Arc::new(key.clone()))),
            None,
            false,
            None,
        );
        for i in chunk * 1000..((chunk + 1) * 1000).min(n) {
            let now = Instant::now();
            let (_, mut conn) = endpoint
                .connect(now, config.clone(), server, "localhost")
                .unwrap();
            quic.clear();
            let t = conn.poll_transmit(now, 1, &mut quic).expect("an Initial");
            out.push(raw_packet(forged_spread(i), to, &quic[..t.size]));
        }
    }
    out
}

/// CPU time (ns) of this process's worker threads (`xdp-quic-w*`) so far.
fn workers_cpu_ns() -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let p = e.path();
        let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
        if !comm.starts_with("xdp-quic-w") {
            continue;
        }
        let stat = std::fs::read_to_string(p.join("schedstat")).unwrap_or_default();
        total += stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    total
}

/// Softirq CPU time of the whole machine so far (every CPU), from /proc/stat: where the XDP
/// program and the kernel's copy into the AF_XDP sockets run.
fn softirq_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let f: Vec<u64> = stat
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap())
        .collect();
    // user nice system idle iowait irq softirq steal guest guest_nice
    let softirq = f[6];
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_nanos(softirq * 1_000_000_000 / hz)
}

/// One quinn client: connects, echoes 2,000 octets; returns its handshake time.
async fn legit_timed(
    cert: Vec<rustls::pki_types::CertificateDer<'static>>,
    server: SocketAddr,
    seed: u64,
) -> Duration {
    let ep = support::quinn_endpoint(&cert, false);
    let started = Instant::now();
    let conn = ep
        .connect(server, "localhost")
        .unwrap()
        .await
        .expect("a legitimate client's handshake");
    let handshake = started.elapsed();
    let data: Vec<u8> = (0..2_000u32).map(|i| (i * 7 + seed as u32) as u8).collect();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&data).await.unwrap();
    send.finish().unwrap();
    let back = recv.read_to_end(usize::MAX).await.unwrap();
    assert!(back == data, "client {seed}: echoed intact");
    conn.close(VarInt::from_u32(0), b"done");
    ep.wait_idle().await;
    handshake
}

/// What one run of the big flood measured.
#[derive(Debug)]
struct FloodRun {
    shield: bool,
    sent_in: Duration,
    /// From the flood's first packet to the first queue under pressure.
    pressure_after: Option<Duration>,
    /// Service packets the XDP program saw.
    reached_xdp: u64,
    softirq: Duration,
    fill_ring_empty: u64,
    rx_ring_full: u64,
    kernel_rx_dropped: u64,
    worker_packets: u64,
    worker_cpu: Duration,
    handshakes: Vec<Duration>,
    dropped_in_xdp: u64,
    admitted: u64,
    pressure_episodes: u64,
}

/// Serves echo over AF_XDP (Retry above 64 pending handshakes per worker, 5 s idle timeout),
/// with or without the shield, and sends the `BIG_FLOOD` Initials at full rate from the client
/// namespace; when 40% are sent, 8 quinn clients connect at once and echo. Waits until the
/// server has taken in everything and every connection is over.
fn big_flood(shield_on: bool, initials: &[Vec<u8>], tb: &Testbed) -> FloodRun {
    let mut transport = xdp_quic::default_transport();
    transport.max_idle_timeout(Some(Duration::from_secs(5).try_into().unwrap()));
    let (engine, attachment, cert) = serve(
        tb,
        EngineBuilder::default()
            .retry(RetryPolicy::AbovePendingHandshakes(64))
            .transport(transport),
        TxMode::Auto,
    );
    // When the first queue came under pressure.
    let pressured = Arc::new(Mutex::new(None::<Instant>));
    let shield = shield_on.then(|| {
        let first = pressured.clone();
        let report = Box::new(move |c: PressureChange| {
            if c.cause.is_some() {
                first.lock().unwrap().get_or_insert_with(Instant::now);
            }
        });
        engage_shield(
            &engine,
            &attachment,
            PressurePolicy::for_retry_threshold(Some(64)),
            Some(report),
        )
    });
    let flood_started = Mutex::new(None::<Instant>);
    let server = SocketAddr::new(tb.server_v4.into(), PORT);
    let queues = |f: fn(&xdp_quic::backend::xsk::XskSnapshot) -> u64| -> u64 {
        engine.xsk_queues().iter().map(|q| f(&q.snapshot())).sum()
    };
    let empty0 = queues(|s| s.kernel.rx_fill_ring_empty);
    let dropped0 = queues(|s| s.kernel.rx_dropped);
    let cpu0 = workers_cpu_ns();
    let softirq0 = softirq_time();
    let full0 = queues(|s| s.kernel.rx_ring_full);
    let progress = AtomicU32::new(0);
    let rest = std::sync::atomic::AtomicBool::new(false);
    let first = initials.len() * 2 / 5;
    let (sent_in, mut handshakes) = std::thread::scope(|s| {
        let flooder = s.spawn(|| {
            tb.in_client(|| {
                let raw = RawSender::new();
                let started = Instant::now();
                *flood_started.lock().unwrap() = Some(started);
                raw.send_all(&initials[..first], &progress);
                while !rest.load(Ordering::Acquire) {
                    std::thread::yield_now();
                }
                raw.send_all(&initials[first..], &progress);
                started.elapsed()
            })
            .unwrap()
        });
        wait_until("40% of the flood sent", GUARD, || {
            progress.load(Ordering::Relaxed) as usize >= first
        });
        if shield_on {
            // However fast the sender, the rest of the flood meets the shield engaged (no
            // wait if the pressure came already; the first 40% met the workers unshielded).
            wait_until("the flood put a queue under pressure", GUARD, || {
                pressured.lock().unwrap().is_some()
            });
        }
        rest.store(true, Ordering::Release);
        let handshakes = tb
            .in_client(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(async {
                        let mut set = tokio::task::JoinSet::new();
                        for i in 0..LEGIT {
                            set.spawn(legit_timed(cert.clone(), server, i));
                        }
                        tokio::time::timeout(Duration::from_secs(120), set.join_all())
                            .await
                            .expect("hang guard")
                    })
            })
            .unwrap();
        (flooder.join().unwrap(), handshakes)
    });
    // The CPU the flood cost the machine: until the workers have taken in the last packet
    // (the forged handshakes' timers later cost little).
    wait_until("the workers took in the flood", GUARD, || {
        taken_in(&engine, &attachment)
    });
    let softirq = softirq_time() - softirq0;
    wait_until(
        "the server took in the flood and ended every connection",
        GUARD,
        || quiescent(&engine, &attachment),
    );
    let t = engine.handle().total();
    let drops = |name: &str| program_counter(&attachment, &format!("v4.{name}"));
    let run = FloodRun {
        shield: shield_on,
        sent_in,
        pressure_after: pressured
            .lock()
            .unwrap()
            .zip(*flood_started.lock().unwrap())
            .map(|(p, f)| p.saturating_duration_since(f)),
        reached_xdp: program_counter(&attachment, "v4.seen"),
        softirq,
        rx_ring_full: queues(|s| s.kernel.rx_ring_full) - full0,
        fill_ring_empty: queues(|s| s.kernel.rx_fill_ring_empty) - empty0,
        kernel_rx_dropped: queues(|s| s.kernel.rx_dropped) - dropped0,
        worker_packets: t.rx_packets,
        worker_cpu: Duration::from_nanos(workers_cpu_ns() - cpu0),
        handshakes: {
            handshakes.sort();
            handshakes
        },
        dropped_in_xdp: drops("dropped_initial_rate")
            + drops("dropped_short_initial")
            + drops("dropped_unknown_version")
            + drops("dropped_version_rate")
            + drops("dropped_foreign_cid"),
        admitted: program_counter(&attachment, "shield_admitted"),
        pressure_episodes: shield
            .as_ref()
            .and_then(ShieldGuard::pressure)
            .map_or(0, |v| v.queues().iter().map(|q| q.2).sum()),
    };
    assert_eq!(t.handshakes, LEGIT, "every legitimate client got through");
    drop(shield);
    engine.shutdown(VarInt::from_u32(0), b"").unwrap();
    drop(attachment);
    run
}

/// 50,000 tokenless Initials from forged addresses at full rate while 8 quinn clients
/// connect, without the shield and with it: every client connects both times; with the
/// shield the queues come under pressure and the program drops Initials beyond their
/// prefixes' rate. Prints the comparison (kernel fill-ring drops, the workers' packets, the
/// workers' CPU per flood packet, the clients' handshake times): figures, not thresholds.
#[test]
fn tokenless_initial_flood_with_and_without_the_shield() {
    if !privileged("tokenless_initial_flood_with_and_without_the_shield") {
        return;
    }
    let tb = Testbed::create(&unique_name("xe"), QUEUES, 228).expect("testbed");
    let made = Instant::now();
    let initials = forged_initials(BIG_FLOOD, tb.server_v4);
    let made = made.elapsed();
    let off = big_flood(false, &initials, &tb);
    let on = big_flood(true, &initials, &tb);
    assert_eq!(off.dropped_in_xdp, 0);
    assert!(
        on.pressure_episodes > 0,
        "the flood put a queue under pressure"
    );
    assert!(
        on.dropped_in_xdp > 0,
        "the shield dropped Initials over their prefix's rate"
    );
    println!(
        "{BIG_FLOOD} tokenless Initials (made in {made:.2?}) from 16 forged /24s, 8 quinn clients:"
    );
    for r in [&off, &on] {
        let ms: Vec<String> = r
            .handshakes
            .iter()
            .map(|d| format!("{:.1}", d.as_secs_f64() * 1e3))
            .collect();
        println!(
            "  shield {}: sent in {:.0?} ({:.0} pkt/s); reached XDP {}; first pressure after \
             {}; kernel drops at the sockets: fill ring empty {}, RX ring full {}, rx dropped {}; workers \
             received {} packets, used {:.0?} CPU ({:.2} µs per flood packet); softirq \
             {:.0?} ({:.2} µs per flood packet, machine-wide); dropped in XDP {}, admitted \
             under pressure {}, pressure episodes {}; handshakes (ms) {}",
            if r.shield { "on " } else { "off" },
            r.sent_in,
            f64::from(BIG_FLOOD) / r.sent_in.as_secs_f64(),
            r.reached_xdp,
            r.pressure_after
                .map_or("-".to_string(), |d| format!("{:.0?}", d)),
            r.fill_ring_empty,
            r.rx_ring_full,
            r.kernel_rx_dropped,
            r.worker_packets,
            r.worker_cpu,
            r.worker_cpu.as_secs_f64() * 1e6 / f64::from(BIG_FLOOD),
            r.softirq,
            r.softirq.as_secs_f64() * 1e6 / f64::from(BIG_FLOOD),
            r.dropped_in_xdp,
            r.admitted,
            r.pressure_episodes,
            ms.join(" ")
        );
    }
}

/// The library's server with the shield (what `serve --xdp-shield` runs) over an attachment
/// pinned by `xdp-quic attach`: the shield comes on with the engine's CID layout, a quinn
/// client echoes through it, forged Initials put a queue under pressure (reported), and when
/// the server stops the shield is off again, its layout and pressure flags cleared.
#[test]
fn server_with_the_shield_engages_it_and_puts_it_back() {
    if !privileged("server_with_the_shield_engages_it_and_puts_it_back") {
        return;
    }
    use xdp_quic_control::serve::{Backend, Event, Fallback, ServeOptions, Server, ShieldOptions};
    use xdp_quic_control::testing::PinGuard;
    use xdp_quic_control::xdp::{self, AttachOptions, ServiceConfig, ShieldMaps};

    let tb = Testbed::create(&unique_name("xd"), QUEUES, 229).expect("testbed");
    let _pins = PinGuard(tb.server_if.clone());
    let opts = AttachOptions {
        service: ServiceConfig {
            ports: [PORT].into(),
            addrs: Default::default(),
        },
        mode: AttachMode::Auto,
        force: false,
        shield: None,
    };
    tb.in_server(|| xdp::attach(&tb.server_if, &opts))
        .unwrap()
        .expect("attach");
    let maps = || {
        tb.in_server(|| ShieldMaps::from_pins(&tb.server_if))
            .unwrap()
            .unwrap()
    };
    assert_eq!(maps().config().unwrap(), None, "off after a plain attach");

    let id = tls::Identity::self_signed(&["localhost"]).unwrap();
    let cert = id.chain.clone();
    let builder = EngineBuilder::default()
        .server(tls::server_config(id, &[echo::ALPN]).unwrap())
        .retry(RetryPolicy::AbovePendingHandshakes(8))
        .drain_timeout(Duration::from_secs(1));
    let setup = XdpSetup::new(
        &tb.server_if,
        format!("0.0.0.0:{PORT}").parse().unwrap(),
        (0..QUEUES).collect(),
    );
    let options = ServeOptions {
        shield: Some(ShieldOptions {
            pressure: PressurePolicy::for_retry_threshold(Some(8)),
            ..ShieldOptions::default()
        }),
        ..ServeOptions::default()
    };
    let backend = Backend::Xdp {
        setup,
        mode: AttachMode::Auto,
        fallback: Fallback::Never,
    };
    let server = tb
        .in_server(|| Server::start(builder, backend, options, |_| EchoServer::default()))
        .unwrap()
        .expect("start the server");
    let next = || {
        server
            .events()
            .recv_timeout(GUARD)
            .expect("an event from the server")
    };
    assert!(matches!(next(), Event::Serving(_)));
    match next() {
        Event::Shield {
            config, monitor, ..
        } => {
            assert_eq!(config, ShieldConfig::default());
            assert!(monitor);
        }
        other => panic!("expected the shield, got {other:?}"),
    }
    // On, with the engine's layout (8-octet CIDs, config rotation 0, 2 workers), marked as
    // turned on by a server for its life.
    let entry = maps().entry().unwrap();
    assert_eq!(maps().config().unwrap(), Some(ShieldConfig::default()));
    assert!(maps().on_for_a_server().unwrap());
    assert_eq!(
        tb.in_server(|| xdp::shield::pinned(&tb.server_if))
            .unwrap()
            .unwrap(),
        None,
        "a later server does not take a server's shield for an `attach --shield`"
    );
    assert_eq!(
        (
            entry.flags & xdp_quic_ebpf::SHIELD_CID,
            entry.cid_first,
            entry.workers
        ),
        (xdp_quic_ebpf::SHIELD_CID, 7, QUEUES as u16)
    );

    let server_addr = SocketAddr::new(tb.server_v4.into(), PORT);
    tb.in_client(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                tokio::time::timeout(
                    Duration::from_secs(120),
                    legit_echo(&cert, server_addr, 4, 100_000),
                )
                .await
                .expect("hang guard")
            })
    })
    .unwrap();

    // Forged Initials until a queue is under pressure (past 8 pending handshakes).
    let initials = forged_initials(400, tb.server_v4);
    tb.in_client(|| {
        let raw = RawSender::new();
        for p in &initials {
            raw.send_packet(p);
        }
    })
    .unwrap();
    let change = loop {
        match next() {
            Event::Pressure { change, .. } => break change,
            Event::Link { .. } | Event::WatchFailed { .. } => {}
            other => panic!("expected pressure, got {other:?}"),
        }
    };
    assert!(
        change.cause.is_some(),
        "a queue came under pressure: {change:?}"
    );
    assert!(maps().pressure(change.queue).unwrap());

    server.stop();
    let reason = server.join().expect("the server ended cleanly");
    assert_eq!(reason, xdp_quic_control::serve::StopReason::Requested);
    // Off again, no layout, no pressure.
    let maps = maps();
    assert_eq!(maps.config().unwrap(), None);
    assert_eq!(maps.entry().unwrap(), xdp_quic_ebpf::Shield::default());
    assert!(maps.pressured(QUEUES).unwrap().is_empty());
    tb.in_server(|| xdp::detach(&tb.server_if))
        .unwrap()
        .expect("detach");
}

/// A server killed while it had the shield on leaves it on, with its CID layout, in the
/// pinned maps. The next server that serves without the shield turns that off (and says so);
/// a shield `xdp-quic attach --shield` turned on stays, for such a server to adopt.
#[test]
fn a_shield_left_on_by_a_killed_server_is_turned_off_by_the_next() {
    if !privileged("a_shield_left_on_by_a_killed_server_is_turned_off_by_the_next") {
        return;
    }
    use xdp_quic_control::serve::{Backend, Event, Fallback, ServeOptions, Server};
    use xdp_quic_control::testing::PinGuard;
    use xdp_quic_control::xdp::{self, AttachOptions, ServiceConfig, ShieldMaps};

    let tb = Testbed::create(&unique_name("xk"), QUEUES, 231).expect("testbed");
    let _pins = PinGuard(tb.server_if.clone());
    // Two ports: the two servers at the end each listen on one (a port has one server).
    let opts = AttachOptions {
        service: ServiceConfig {
            ports: [PORT, PORT + 1].into(),
            addrs: Default::default(),
        },
        mode: AttachMode::Auto,
        force: false,
        shield: None,
    };
    tb.in_server(|| xdp::attach(&tb.server_if, &opts))
        .unwrap()
        .expect("attach");
    let maps = || {
        tb.in_server(|| ShieldMaps::from_pins(&tb.server_if))
            .unwrap()
            .unwrap()
    };
    // A server on `queues` with CIDs of `cid_len` octets, with the shield for its life or not.
    let serve_with = |queues: std::ops::Range<u32>, port: u16, shield: bool, cid_len: usize| {
        let id = tls::Identity::self_signed(&["localhost"]).unwrap();
        let builder = EngineBuilder::default()
            .server(tls::server_config(id, &[echo::ALPN]).unwrap())
            .connection_ids(cid_len, &[], 0)
            .drain_timeout(Duration::from_secs(1));
        let setup = XdpSetup::new(
            &tb.server_if,
            format!("0.0.0.0:{port}").parse().unwrap(),
            queues.collect(),
        );
        let backend = Backend::Xdp {
            setup,
            mode: AttachMode::Auto,
            fallback: Fallback::Never,
        };
        let options = ServeOptions {
            shield: shield.then(|| xdp_quic_control::serve::ShieldOptions {
                config: ShieldConfig {
                    admit_under_pressure: false,
                    ..ShieldConfig::default()
                },
                cid_len,
                ..Default::default()
            }),
            ..ServeOptions::default()
        };
        tb.in_server(|| Server::start(builder, backend, options, |_| EchoServer::default()))
            .unwrap()
            .expect("start the server")
    };
    let serve_on =
        |queues: std::ops::Range<u32>, port: u16, shield: bool| serve_with(queues, port, shield, 8);
    // A server on queue 0 with the shield for its life, once its shield is engaged.
    let serve_shielded = || {
        let a = serve_on(0..1, PORT, true);
        loop {
            match a.events().recv_timeout(GUARD) {
                Ok(Event::Shield { .. }) => break,
                Ok(_) => {}
                Err(e) => panic!("server a: {e}: {:?}", a.join()),
            }
        }
        a
    };
    // A server on queue 1 without the shield, once it serves (a live server's shield is
    // never taken for one left behind).
    let serve_plain_beside = || {
        let b = serve_on(1..2, PORT + 1, false);
        loop {
            match b.events().recv_timeout(GUARD) {
                Ok(Event::Serving(_)) => break,
                Ok(Event::StaleShieldCleared { .. }) => {
                    panic!("a live server's shield taken for stale")
                }
                Ok(_) => {}
                Err(e) => panic!("server b: {e}: {:?}", b.join()),
            }
        }
        b
    };
    let serve_plain = || {
        let server = serve_on(0..QUEUES, PORT, false);
        // What it cleared of a killed server's (said before it serves): `Some(true)` the
        // shield, `Some(false)` its layout and flags on an operator's shield.
        let mut cleared = None;
        loop {
            match server.events().recv_timeout(GUARD).expect("an event") {
                Event::Serving(_) => break,
                Event::StaleShieldCleared { iface, turned_off } => {
                    assert_eq!(iface, tb.server_if);
                    cleared = Some(turned_off);
                }
                Event::Link { .. } | Event::WatchFailed { .. } => {}
                other => panic!("expected the server to serve, got {other:?}"),
            }
        }
        (server, cleared)
    };

    // What a server killed with the shield on leaves: on, its layout, the server's mark.
    let layout = xdp_quic::cid::CidLayout::for_workers(QUEUES as usize).unwrap();
    let mut m = maps();
    m.set_layout(Some(&layout)).unwrap();
    m.set_config(Some(&ShieldConfig::default())).unwrap();
    m.update(|e| {
        let mut e = *e;
        e.flags |= xdp_quic_ebpf::SHIELD_SERVER;
        Ok((e, ()))
    })
    .unwrap();
    // And a pressure flag its monitor had set.
    m.set_pressure(1, true).unwrap();
    assert!(maps().on_for_a_server().unwrap());
    assert!(
        maps().left_by_server(&[]).unwrap(),
        "no server holds a queue"
    );

    let (server, cleared) = serve_plain();
    assert_eq!(
        cleared,
        Some(true),
        "the server said nothing of the stale shield"
    );
    assert_eq!(maps().entry().unwrap(), xdp_quic_ebpf::Shield::default());
    assert_eq!(maps().pressured(QUEUES).unwrap(), Vec::<u32>::new());
    server.stop();
    server.join().expect("the server ended cleanly");

    // A shield turned on by `attach --shield` is not a server's: it stays.
    tb.in_server(|| xdp::shield::set_pinned(&tb.server_if, Some(&ShieldConfig::default())))
        .unwrap()
        .unwrap();
    assert!(!maps().on_for_a_server().unwrap());
    let (server, cleared) = serve_plain();
    assert_eq!(
        cleared, None,
        "an attach's shield was taken for a stale one"
    );
    server.stop();
    server.join().expect("the server ended cleanly");
    assert_eq!(maps().config().unwrap(), Some(ShieldConfig::default()));

    // A server killed while it served under that shield leaves its CID layout and pressure
    // flags on it: the next server that does not engage the shield (`serve --app h3`)
    // clears them, and the operator's shield stays. (Before, they stayed, and the old
    // layout dropped the short headers of workers beyond its count.)
    let one = xdp_quic::cid::CidLayout::for_workers(1).unwrap();
    let mut m = maps();
    m.set_layout(Some(&one)).unwrap();
    m.set_pressure(0, true).unwrap();
    let (server, cleared) = serve_plain();
    assert_eq!(cleared, Some(false), "the killed server's layout was kept");
    server.stop();
    server.join().expect("the server ended cleanly");
    let m = maps();
    assert_eq!(
        m.config().unwrap(),
        Some(ShieldConfig::default()),
        "the shield stays"
    );
    assert_eq!(
        m.entry().unwrap().flags & xdp_quic_ebpf::SHIELD_CID,
        0,
        "no layout"
    );
    assert_eq!(m.pressured(QUEUES).unwrap(), Vec::<u32>::new());

    // Two servers on one attachment, on queues of their own: the shield one of them turned
    // on for its life is not the other's to turn off, nor to take over.
    tb.in_server(|| xdp::shield::set_pinned(&tb.server_if, None))
        .unwrap()
        .unwrap();
    // Its shield engaged (after it serves) before the other starts.
    let a = serve_shielded();
    assert!(maps().on_for_a_server().unwrap());
    // A flag on a's queue, as a's pressure monitor would set it.
    maps().set_pressure(0, true).unwrap();
    let b = serve_plain_beside();
    assert!(
        maps().on_for_a_server().unwrap(),
        "server a's shield stays on"
    );
    let e = maps().entry().unwrap();
    assert_ne!(e.flags & xdp_quic_ebpf::SHIELD_CID, 0, "a's layout stays");
    assert_eq!(maps().pressured(QUEUES).unwrap(), [0], "a's flag stays");
    maps().set_pressure(0, false).unwrap();
    b.stop();
    b.join().expect("server b ended cleanly");
    assert!(maps().on_for_a_server().unwrap(), "still on after b");
    a.stop();
    a.join().expect("server a ended cleanly");
    assert_eq!(
        maps().config().unwrap(),
        None,
        "a turned it off as it ended"
    );

    // Two servers that engage the shield with the same CIDs (8 octets, one worker each)
    // share it: the first to end leaves it to the other, the last puts it back.
    let engaged = |s: &Server<EchoServer>, who: &str| loop {
        match s.events().recv_timeout(GUARD) {
            Ok(Event::Shield { .. }) => break,
            Ok(_) => {}
            Err(e) => panic!("server {who}: {e}"),
        }
    };
    let a = serve_shielded();
    let c = serve_on(1..2, PORT + 1, true);
    engaged(&c, "c");
    let mut shared = maps().entry().unwrap();
    assert_eq!(
        (shared.flags & xdp_quic_ebpf::SHIELD_CID, shared.workers),
        (xdp_quic_ebpf::SHIELD_CID, 1)
    );
    assert_eq!(shared.engaged, 2, "both servers counted");
    a.stop();
    a.join().expect("server a ended cleanly");
    shared.engaged = 1;
    assert_eq!(
        maps().entry().unwrap(),
        shared,
        "a put the shield back under c"
    );
    c.stop();
    c.join().expect("server c ended cleanly");
    assert_eq!(
        maps().entry().unwrap(),
        xdp_quic_ebpf::Shield::default(),
        "c, the last, put it back"
    );

    // A shielded server that stops first under a plain one puts the shield back as it would
    // alone: the plain one never engaged it.
    let a = serve_shielded();
    let b = serve_plain_beside();
    a.stop();
    a.join().expect("server a ended cleanly");
    assert_eq!(
        maps().entry().unwrap(),
        xdp_quic_ebpf::Shield::default(),
        "a's shield stayed under b"
    );
    b.stop();
    b.join().expect("server b ended cleanly");

    // A server that would write other CIDs over a live server's, or its own under a server
    // that serves without the shield, is refused and changes nothing.
    let refused = |s: Server<EchoServer>, who: &str| -> String {
        loop {
            match s.events().recv_timeout(GUARD) {
                Ok(Event::Shield { .. }) => panic!("server {who} engaged the shield"),
                Ok(_) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                Err(e) => panic!("server {who}: {e}"),
            }
        }
        format!("{:#}", s.join().expect_err("the server was refused"))
    };
    let a = serve_shielded();
    let before = maps().entry().unwrap();
    let why = refused(serve_with(1..2, PORT + 1, true, 10), "d");
    assert!(
        why.contains("another server holds queues [0]") && why.contains("other CIDs"),
        "{why}"
    );
    assert_eq!(maps().entry().unwrap(), before, "a's shield changed");
    // A plain server whose CIDs do not fit a live server's shield (its short headers would
    // be dropped) is refused too; one whose CIDs fit is not (b, above and below).
    let why = refused(serve_with(1..2, PORT + 1, false, 10), "e");
    assert!(
        why.contains("another server holds queues [0]") && why.contains("do not fit"),
        "{why}"
    );
    assert_eq!(maps().entry().unwrap(), before, "a's shield changed");
    a.stop();
    a.join().expect("server a ended cleanly");
    assert_eq!(maps().entry().unwrap(), xdp_quic_ebpf::Shield::default());
    let b = serve_plain_beside();
    let why = refused(serve_on(0..1, PORT, true), "a");
    assert!(
        why.contains("another server holds queues [1]") && why.contains("without the shield"),
        "{why}"
    );
    assert_eq!(maps().entry().unwrap(), xdp_quic_ebpf::Shield::default());
    b.stop();
    b.join().expect("server b ended cleanly");

    // `attach --shield` under a server that turned the shield on for its life, with the
    // very rules the server wrote ("on, unchanged"): the shield is the operator's now, and
    // stays when that server ends.
    let a = serve_shielded();
    let wrote = maps().config().unwrap();
    assert!(wrote.is_some());
    tb.in_server(|| xdp::shield::set_pinned(&tb.server_if, wrote.as_ref()))
        .unwrap()
        .unwrap();
    a.stop();
    a.join().expect("server a ended cleanly");
    assert_eq!(
        maps().config().unwrap(),
        wrote,
        "the operator's shield was turned off"
    );
    tb.in_server(|| xdp::detach(&tb.server_if))
        .unwrap()
        .expect("detach");
}
