//! TLS set-up: rustls (ring provider, TLS 1.3) configurations for quinn-proto, and a
//! self-signed certificate for tests and demos.

use std::path::Path;
use std::sync::Arc;

use quinn_proto::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

/// Errors of TLS set-up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[cfg(feature = "self-signed")]
    #[error("cannot generate a certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Pem(String),
    #[error("the TLS configuration cannot serve QUIC: {0}")]
    Quic(String),
}

/// The crypto provider every configuration here uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate chain and its key.
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Identity {
    /// A fresh self-signed ECDSA P-256 certificate for `names` (DNS names or IP addresses).
    /// Feature `self-signed`.
    #[cfg(feature = "self-signed")]
    pub fn self_signed(names: &[&str]) -> Result<Self, TlsError> {
        Self::self_signed_with(names, &rcgen::PKCS_ECDSA_P256_SHA256)
    }

    /// A fresh self-signed Ed25519 certificate for `names`. Its signatures are deterministic
    /// and of fixed length, so handshakes have the same sizes on every run: what the seeded
    /// simulation needs to replay. Feature `self-signed`.
    #[cfg(feature = "self-signed")]
    pub fn self_signed_ed25519(names: &[&str]) -> Result<Self, TlsError> {
        Self::self_signed_with(names, &rcgen::PKCS_ED25519)
    }

    #[cfg(feature = "self-signed")]
    fn self_signed_with(
        names: &[&str],
        alg: &'static rcgen::SignatureAlgorithm,
    ) -> Result<Self, TlsError> {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let key = rcgen::KeyPair::generate_for(alg)?;
        let cert = rcgen::CertificateParams::new(names)?.self_signed(&key)?;
        Ok(Self {
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
                key.serialize_der(),
            )),
        })
    }

    /// Loads a PEM certificate chain and a PEM private key.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        use rustls::pki_types::pem::PemObject;
        let chain = certs_from_pem_file(cert)?;
        let key_pem = std::fs::read(key).map_err(|source| TlsError::Read {
            path: key.display().to_string(),
            source,
        })?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| TlsError::Pem(format!("{}: {e}", key.display())))?;
        Ok(Self { chain, key })
    }
}

/// Reads every certificate of a PEM file (e.g. a CA bundle, or a server's self-signed one).
pub fn certs_from_pem_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let certs = rustls_pemfile_certs(&pem)
        .map_err(|e| TlsError::Pem(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(TlsError::Pem(format!(
            "{}: no CERTIFICATE block",
            path.display()
        )));
    }
    Ok(certs)
}

fn rustls_pemfile_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())
}

/// Datagrams kept for one connection attempt not decided yet ([`crate::Decision::Defer`];
/// the async API defers every attempt), in octets: beyond it they are dropped (the client
/// sends them again). quinn-proto's own default is 10 MiB.
pub const INCOMING_BUFFER: u64 = 64 << 10;
/// Datagrams kept for all the attempts not decided yet of one worker's endpoint, in octets.
/// quinn-proto's own default is 100 MiB.
pub const INCOMING_BUFFER_TOTAL: u64 = 4 << 20;

/// A QUIC server configuration: `identity`, ALPN protocols `alpn`, any server name; the
/// datagrams kept for undecided attempts bounded by [`INCOMING_BUFFER`] and
/// [`INCOMING_BUFFER_TOTAL`].
pub fn server_config(
    identity: Identity,
    alpn: &[&[u8]],
) -> Result<quinn_proto::ServerConfig, TlsError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(identity.chain, identity.key)?;
    tls.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    tls.max_early_data_size = u32::MAX;
    let quic = QuicServerConfig::try_from(tls).map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut config = quinn_proto::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(Arc::new(crate::engine::default_transport()));
    config.incoming_buffer_size(INCOMING_BUFFER);
    config.incoming_buffer_size_total(INCOMING_BUFFER_TOTAL);
    Ok(config)
}

/// How a client checks the server's certificate.
pub enum Trust {
    /// Only these roots (e.g. the server's self-signed certificate).
    Roots(Vec<CertificateDer<'static>>),
    /// No check at all: for tests and demos against self-signed servers only.
    InsecureAnyCertificate,
}

/// A QUIC client configuration.
pub fn client_config(trust: Trust, alpn: &[&[u8]]) -> Result<quinn_proto::ClientConfig, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let mut tls = match trust {
        Trust::Roots(roots) => {
            let mut store = rustls::RootCertStore::empty();
            for r in roots {
                store.add(r)?;
            }
            builder.with_root_certificates(store).with_no_client_auth()
        }
        Trust::InsecureAnyCertificate => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider())))
            .with_no_client_auth(),
    };
    tls.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    tls.enable_early_data = true;
    let quic = QuicClientConfig::try_from(tls).map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut config = quinn_proto::ClientConfig::new(Arc::new(quic));
    config.transport_config(Arc::new(crate::engine::default_transport()));
    Ok(config)
}

/// Accepts any certificate, still checking that the handshake signatures are valid.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(all(test, feature = "self-signed"))]
mod tests {
    use super::*;

    #[test]
    fn server_configs_bound_what_undecided_attempts_keep() {
        let id = Identity::self_signed(&["localhost"]).expect("a certificate");
        let config = server_config(id, &[b"x"]).expect("a configuration");
        // quinn-proto has no getter: its Debug output shows the fields.
        let shown = format!("{config:?}");
        assert!(
            shown.contains(&format!("incoming_buffer_size: {INCOMING_BUFFER}"))
                && shown.contains(&format!(
                    "incoming_buffer_size_total: {INCOMING_BUFFER_TOTAL}"
                )),
            "{shown}"
        );
    }
}
