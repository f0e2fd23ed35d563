//! Certificates made per test (a CA and a server certificate it signed), and a
//! blocking TLS client that trusts only the roots a test gives it.

use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

/// A CA, and a certificate it signed for 127.0.0.1 and localhost, as PEM files.
pub struct Pki {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub ca_der: CertificateDer<'static>,
}

impl Pki {
    pub fn new(dir: &Path, name: &str) -> Self {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "vmm-service test");
        let server = params.signed_by(&server_key, &issuer).unwrap();

        let write = |file: &str, text: &str| {
            let path = dir.join(format!("{name}-{file}"));
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            path
        };
        Self {
            ca_cert: write("ca.pem", &ca.pem()),
            server_cert: write("server.pem", &server.pem()),
            server_key: write("server.key", &server_key.serialize_pem()),
            ca_der: ca.der().clone(),
        }
    }

    /// The serve options that make the TCP listeners speak TLS with this certificate.
    pub fn serve_args(&self) -> Vec<String> {
        vec![
            "--tls-cert".to_string(),
            self.server_cert.display().to_string(),
            "--tls-key".to_string(),
            self.server_key.display().to_string(),
        ]
    }
}

/// A client configuration trusting only `roots`.
pub fn client_config(roots: &[CertificateDer<'static>]) -> Arc<ClientConfig> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).unwrap();
    }
    #[allow(deprecated)] // ring, as the service uses
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(store)
            .with_no_client_auth(),
    )
}

pub type TlsClient = StreamOwned<ClientConnection, TcpStream>;

/// Connects to `address` and completes the handshake for the name `host`.
pub fn connect(
    config: &Arc<ClientConfig>,
    address: &str,
    host: &str,
) -> Result<TlsClient, std::io::Error> {
    let name = ServerName::try_from(host.to_string()).unwrap();
    let connection = ClientConnection::new(Arc::clone(config), name).unwrap();
    let mut stream = StreamOwned::new(connection, TcpStream::connect(address)?);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(stream)
}
