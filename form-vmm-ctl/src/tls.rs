//! https:// endpoints: which CAs are trusted (--ca-file, else the system's store),
//! the handshake, and its failures put in the operator's terms.
//!
//! The system store (rustls-native-certs) rather than a compiled-in Mozilla list
//! (webpki-roots): services like this one are usually certified by an organisation's
//! own CA, which operators install in the system store, and the store follows the
//! distribution's updates without a new form-vmm-ctl.

use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{CertificateError, ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::error::CtlError;

/// The client configuration trusting the CAs of `ca_file` (PEM), or the system's.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, CtlError> {
    let roots = match ca_file {
        Some(path) => roots_from_file(path)?,
        None => system_roots()?,
    };
    // Explicitly ring: the process-wide default would panic if another crate in the
    // build ever enabled a second provider. rustls deprecates ring for lacking
    // post-quantum key exchange; aws-lc-rs would bring cmake and a C library build.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| CtlError::Usage(format!("cannot set up TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn roots_from_file(path: &Path) -> Result<RootCertStore, CtlError> {
    let fail = |reason: String| CtlError::CaFile {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(format!("not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(fail(
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".to_string(),
        ));
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| fail(format!("a certificate cannot be used as a CA: {e}")))?;
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore, CtlError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (_added, _unusable) = roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        let why = found
            .errors
            .first()
            .map_or_else(|| "it is empty".to_string(), |e| e.to_string());
        return Err(CtlError::NoSystemRoots { reason: why });
    }
    Ok(roots)
}

/// The TLS handshake over `tcp` for the name `host`; a failure is the reason, worded
/// for the operator.
pub async fn handshake(
    config: Arc<ClientConfig>,
    host: &str,
    tcp: TcpStream,
) -> Result<TlsStream<TcpStream>, String> {
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| format!("'{host}' cannot be checked against a certificate: {e}"))?;
    TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| explain(host, &e))
}

fn explain(host: &str, error: &io::Error) -> String {
    let tls = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match tls {
        Some(rustls::Error::InvalidCertificate(why)) => certificate(host, why),
        Some(rustls::Error::InvalidMessage(_))
        | Some(rustls::Error::InappropriateMessage { .. }) => {
            format!("{host} does not speak TLS on this port ({error}); if the service listens without --tls-cert, use http://")
        }
        Some(other) => format!("the TLS handshake with {host} failed: {other}"),
        None if error.kind() == io::ErrorKind::UnexpectedEof
            || error.kind() == io::ErrorKind::ConnectionReset =>
        {
            format!("{host} closed the connection during the TLS handshake (the service at its --max-connections, or not a TLS listener?)")
        }
        None => format!("the TLS handshake with {host} failed: {error}"),
    }
}

fn certificate(host: &str, why: &CertificateError) -> String {
    const CA_FILE: &str = "pass the CA that signed the service's certificate with --ca-file FILE";
    let what = match why {
        CertificateError::UnknownIssuer => {
            format!("is not signed by a CA this client trusts (the system's store, or --ca-file); {CA_FILE}")
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            format!("is not valid for the name '{host}' ({why}); use a name or address the certificate lists")
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            format!("has expired ({why}); renew it")
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            format!("is not valid yet ({why}); is this host's clock right?")
        }
        // webpki's own errors reach here only as text.
        CertificateError::Other(other) if other.to_string() == "CaUsedAsEndEntity" => {
            "is a CA certificate, which cannot be a server's own (a self-signed one from `openssl req -x509`, which marks it CA:TRUE?); give the service a certificate signed by a CA, or one made with -addext basicConstraints=critical,CA:FALSE".to_string()
        }
        CertificateError::Other(other) => format!("was refused: {other}; {CA_FILE}"),
        other => format!("was refused: {other}; {CA_FILE}"),
    };
    format!("the TLS certificate of {host} {what}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_must_hold_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("ca.pem");
        std::fs::write(&garbage, "not a certificate").unwrap();
        let missing = dir.path().join("missing.pem");
        for (path, says) in [
            (&garbage, "holds no PEM certificate"),
            (&missing, "No such file"),
        ] {
            let err = client_config(Some(path)).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("--ca-file {}", path.display())),
                "{err}"
            );
            assert!(err.contains(says), "{err}");
        }
    }

    #[test]
    fn verification_failures_name_the_host_and_suggest_ca_file() {
        let error = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        let text = explain("gpu-host-3", &error);
        assert!(text.contains("certificate of gpu-host-3"), "{text}");
        assert!(text.contains("not signed by a CA"), "{text}");
        assert!(text.contains("--ca-file"), "{text}");
    }
}
