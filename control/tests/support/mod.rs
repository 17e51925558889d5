//! Shared by the AF_XDP integration tests of the library: an independent QUIC client (the
//! quinn crate) on a socket of the calling thread's network namespace.
#![allow(dead_code)]

use std::net::SocketAddr;

/// A quinn client endpoint on a fresh socket of the current thread's namespace.
pub fn quinn_endpoint(
    certs: &[rustls::pki_types::CertificateDer<'static>],
    v6: bool,
) -> quinn::Endpoint {
    quinn_endpoint_with(certs, v6, false, false)
}

/// [`quinn_endpoint`], offering only TLS_CHACHA20_POLY1305_SHA256 when `chacha20_only`, and
/// sending 0-RTT data on resumed sessions when `early_data` (the endpoint keeps its tickets).
pub fn quinn_endpoint_with(
    certs: &[rustls::pki_types::CertificateDer<'static>],
    v6: bool,
    chacha20_only: bool,
    early_data: bool,
) -> quinn::Endpoint {
    let bind: SocketAddr = if v6 { "[::]:0" } else { "0.0.0.0:0" }.parse().unwrap();
    let socket = std::net::UdpSocket::bind(bind).unwrap();
    let mut ep = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket,
        std::sync::Arc::new(quinn::TokioRuntime),
    )
    .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in certs {
        roots.add(c.clone()).unwrap();
    }
    let mut provider = rustls::crypto::ring::default_provider();
    if chacha20_only {
        provider.cipher_suites =
            vec![rustls::crypto::ring::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256];
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![xdp_quic_examples::echo::ALPN.to_vec()];
    tls.enable_early_data = early_data;
    // Initial packets always use AES-128-GCM (RFC 9001), whatever the client offers.
    let initial = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256
        .tls13()
        .and_then(|s| s.quic_suite())
        .expect("AES-128-GCM has a QUIC suite");
    let quic =
        quinn::crypto::rustls::QuicClientConfig::with_initial(std::sync::Arc::new(tls), initial)
            .unwrap();
    let mut cfg = quinn::ClientConfig::new(std::sync::Arc::new(quic));
    let mut t = quinn::TransportConfig::default();
    t.datagram_receive_buffer_size(Some(1 << 20));
    cfg.transport_config(std::sync::Arc::new(t));
    ep.set_default_client_config(cfg);
    ep
}

/// Echoes `n` streams of `len` octets through `addr` with an xdp-quic client engine (kernel
/// UDP) of the calling thread's namespace; panics unless all come back intact.
pub fn echo_through(
    addr: SocketAddr,
    cert: &[rustls::pki_types::CertificateDer<'static>],
    n: u64,
    len: usize,
) {
    use xdp_quic::{tls, EngineBuilder};
    use xdp_quic_examples::echo::{self, EchoClient};
    let payloads: Vec<bytes::Bytes> = (0..n).map(|i| vec![i as u8; len].into()).collect();
    let client = EngineBuilder::default()
        .client(tls::client_config(tls::Trust::Roots(cert.to_vec()), &[echo::ALPN]).unwrap());
    let bind: SocketAddr = if addr.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let (hs, _) = xdp_quic_examples::client::run(
        client,
        bind,
        |_| EchoClient::new(addr, "localhost", payloads.clone(), vec![], 0),
        |h: &mut EchoClient, ctx| h.start(ctx),
    )
    .unwrap();
    assert!(hs[0].all_ok(), "{:?}", hs[0].error);
}
