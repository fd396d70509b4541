//! Optional TLS on the terminal port (off by default: the vendor's server
//! and terminals speak plain TCP). The same 24-byte framing runs inside.
//!
//! The agent never accepts a server it cannot check: it trusts a CA (or the
//! server's own self-signed certificate) from a PEM file, or pins the
//! sha256 of the server's certificate, or both. There is no "accept
//! anything" mode.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};

/// Longest a TLS handshake may take, on either side.
pub const TLS_HANDSHAKE: std::time::Duration = std::time::Duration::from_secs(10);

/// What a session runs over: plain TCP or TLS.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{0}: {1}")]
    File(PathBuf, String),
    #[error("TLS is on but neither `ca` nor `pin_sha256` is set; the agent will not trust an unchecked server")]
    NothingToTrust,
    #[error("pin_sha256 {0:?} is not 64 hex digits")]
    BadPin(String),
    #[error("server name {0:?}: {1}")]
    BadName(String, String),
    #[error("{0}")]
    Rustls(String),
    #[error("[tls] cert and key go together")]
    HalfAClientCertificate,
}

/// `[tls]` in the agent's config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentTlsConfig {
    #[serde(default)]
    pub enabled: bool,
    /// PEM file of the CA (or the server's self-signed certificate) to trust.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// sha256 of the server certificate (DER), hex; `voi-server` logs it at
    /// start.
    #[serde(default)]
    pub pin_sha256: Option<String>,
    /// The name the certificate must carry; default: the server address.
    #[serde(default)]
    pub server_name: Option<String>,
    /// This terminal's client certificate (PEM) and its key, for a server
    /// that requires them (mutual TLS). The certificate names this
    /// terminal's MAC (see `certificate_mac`).
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError::File(path.into(), e.to_string()))?
        .collect();
    let certs = certs.map_err(|e| TlsError::File(path.into(), e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::File(path.into(), "no certificate in it".into()));
    }
    Ok(certs)
}

/// The certificates of a PEM file as trust anchors.
fn root_store(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in read_certs(path)? {
        roots
            .add(c)
            .map_err(|e| TlsError::File(path.into(), e.to_string()))?;
    }
    Ok(roots)
}

/// sha256 of a certificate's DER bytes, lower-case hex: what `pin_sha256`
/// holds.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(cert.as_ref())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The fingerprint of the first certificate in a PEM file.
pub fn fingerprint_file(path: &Path) -> Result<String, TlsError> {
    Ok(fingerprint(&read_certs(path)?[0]))
}

/// Accepts the server when its certificate has the pinned hash (and, with a
/// CA too, when the CA also vouches for it). Handshake signatures are always
/// checked, so a pinned certificate is useless without its key.
#[derive(Debug)]
struct PinnedVerifier {
    pin: String,
    ca: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(ca) = &self.ca {
            ca.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
        }
        if fingerprint(end_entity) != self.pin {
            return Err(rustls::Error::General(
                "the server's certificate does not match pin_sha256".into(),
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The agent's side: connects TLS over an open TCP stream.
#[derive(Clone)]
pub struct Connector {
    inner: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Connector({:?})", self.name)
    }
}

impl Connector {
    pub fn new(cfg: &AgentTlsConfig, server_addr: &str) -> Result<Connector, TlsError> {
        let provider = provider();
        let ca = match &cfg.ca {
            Some(path) => {
                let roots = root_store(path)?;
                Some(
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| TlsError::Rustls(e.to_string()))?,
                )
            }
            None => None,
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
        let client_cert = match (&cfg.cert, &cfg.key) {
            (Some(c), Some(k)) => Some((read_certs(c)?, read_key(k)?)),
            (None, None) => None,
            _ => return Err(TlsError::HalfAClientCertificate),
        };
        let builder = match (&cfg.pin_sha256, ca) {
            (Some(pin), ca) => {
                let pin = pin.trim().to_ascii_lowercase().replace(':', "");
                if pin.len() != 64 || !pin.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(TlsError::BadPin(pin));
                }
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                        pin,
                        ca,
                        provider,
                    }))
            }
            (None, Some(ca)) => builder.with_webpki_verifier(ca),
            (None, None) => return Err(TlsError::NothingToTrust),
        };
        let config = match client_cert {
            Some((certs, key)) => builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| TlsError::Rustls(format!("client certificate: {e}")))?,
            None => builder.with_no_client_auth(),
        };
        let host = cfg
            .server_name
            .clone()
            .unwrap_or_else(|| server_addr.to_string());
        let name = ServerName::try_from(host.clone())
            .map_err(|e| TlsError::BadName(host, e.to_string()))?;
        Ok(Connector {
            inner: tokio_rustls::TlsConnector::from(Arc::new(config)),
            name,
        })
    }

    pub async fn connect(
        &self,
        tcp: tokio::net::TcpStream,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        self.inner.connect(self.name.clone(), tcp).await
    }
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::File(path.into(), e.to_string()))
}

/// The server's side, from its certificate chain and key (PEM). With
/// `client_ca`, every terminal must present a certificate that CA issued
/// and that is in date (mutual TLS); the MAC it names is checked at login.
pub fn acceptor(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<(tokio_rustls::TlsAcceptor, String), TlsError> {
    let certs = read_certs(cert)?;
    let fp = fingerprint(&certs[0]);
    let key = read_key(key)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let builder = match client_ca {
        Some(path) => {
            let roots = root_store(path)?;
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    Ok((tokio_rustls::TlsAcceptor::from(Arc::new(config)), fp))
}

/// The terminal MAC a client certificate names: its subject's common name,
/// or a DNS name among its subject alternative names, in any form
/// `normalize_mac` reads (`AA:BB:CC:DD:EE:FF`, `aa-bb-cc-dd-ee-ff`). A
/// certificate naming no MAC, or two different ones, names none.
pub fn certificate_mac(cert: &CertificateDer<'_>) -> Result<String, String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, x509) = X509Certificate::from_der(cert.as_ref())
        .map_err(|e| format!("unreadable certificate: {e}"))?;
    let mut names: Vec<String> = x509
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .map(str::to_string)
        .collect();
    if let Ok(Some(san)) = x509.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                names.push((*d).to_string());
            }
        }
    }
    let mut macs: Vec<String> = names
        .iter()
        .filter_map(|n| crate::protocol::normalize_mac(n))
        .collect();
    macs.dedup();
    match macs.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(format!("it names no MAC (subject {})", x509.subject())),
        _ => Err(format!("it names several MACs: {macs:?}")),
    }
}
