//! TLS for the TCP listeners: the certificate and key the operator gives, loaded once
//! at start so a bad file stops the service before it listens, and the handshake,
//! bounded in time so a client that never finishes it cannot hold a connection slot.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// `--tls-cert` and `--tls-key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM: the server's certificate first, then the intermediates clients need.
    pub cert: PathBuf,
    /// PEM: the certificate's private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("--tls-cert {path}: {reason}")]
    Cert { path: PathBuf, reason: String },
    #[error("--tls-key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("--tls-key {key} does not belong to --tls-cert {cert}: {reason}")]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
}

/// Reads and checks the certificate chain and key; the acceptor every TCP listener
/// shares.
pub fn load(files: &TlsFiles) -> Result<TlsAcceptor, TlsError> {
    let chain = read_chain(&files.cert)?;
    let key = read_key(&files.key)?;
    // Explicitly ring: the process-wide default would panic if another crate in the
    // build ever enabled a second provider. rustls deprecates ring for lacking
    // post-quantum key exchange; aws-lc-rs would bring cmake and a C library build.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Pair {
            cert: files.cert.clone(),
            key: files.key.clone(),
            reason: e.to_string(),
        })?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| pair_error(files, &e))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let fail = |reason: String| TlsError::Cert {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    let chain = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(format!("not valid PEM: {}", pem_reason(&e))))?;
    if chain.is_empty() {
        let reason = if PrivateKeyDer::from_pem_slice(&text).is_ok() {
            "holds a private key but no certificate; were --tls-cert and --tls-key swapped?"
        } else {
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        };
        return Err(fail(reason.to_string()));
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let fail = |reason: String| TlsError::Key {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    match PrivateKeyDer::from_pem_slice(&text) {
        Ok(key) => Ok(key),
        Err(pem::Error::NoItemsFound) => {
            let reason = if contains(&text, b"ENCRYPTED PRIVATE KEY") {
                "holds an encrypted private key; give the key unencrypted (openssl pkey -in KEY -out KEY.plain) and mode 0600"
            } else if contains(&text, b"BEGIN CERTIFICATE") {
                "holds a certificate but no private key; were --tls-cert and --tls-key swapped?"
            } else {
                "holds no PEM private key (-----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY)"
            };
            Err(fail(reason.to_string()))
        }
        Err(e) => Err(fail(format!("not valid PEM: {}", pem_reason(&e)))),
    }
}

fn pair_error(files: &TlsFiles, error: &rustls::Error) -> TlsError {
    match error {
        rustls::Error::InconsistentKeys(_) => TlsError::Pair {
            cert: files.cert.clone(),
            key: files.key.clone(),
            reason: "the key's public half is not the one in the certificate".to_string(),
        },
        rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => {
            TlsError::Cert {
                path: files.cert.clone(),
                reason: format!("the first certificate cannot be used: {error}"),
            }
        }
        _ => TlsError::Key {
            path: files.key.clone(),
            reason: format!("cannot be used: {error}"),
        },
    }
}

fn pem_reason(error: &pem::Error) -> String {
    match error {
        pem::Error::MissingSectionEnd { end_marker } => format!(
            "a section does not end (missing {})",
            String::from_utf8_lossy(end_marker)
        ),
        pem::Error::IllegalSectionStart { line } => format!(
            "a malformed -----BEGIN line: {}",
            String::from_utf8_lossy(line)
        ),
        other => other.to_string(),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The TLS handshake of an accepted connection, given at most `within` (the header
/// timeout): `None`, logged, when it fails or takes longer.
pub async fn handshake(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    within: Duration,
) -> Option<TlsStream<TcpStream>> {
    let peer = stream
        .peer_addr()
        .map_or_else(|_| "a client".to_string(), |a| a.to_string());
    match tokio::time::timeout(within, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            // Port scanners and plain-HTTP clients end here every day: not a warning.
            log::debug!("TLS handshake with {peer} failed: {e}");
            None
        }
        Err(_) => {
            log::debug!("TLS handshake with {peer} not finished within {within:?}; closed");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn bad_files_are_named_with_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = write(dir.path(), "garbage.pem", "not a certificate\n");
        let torn = write(
            dir.path(),
            "torn.pem",
            "-----BEGIN CERTIFICATE-----\nMIIB\n",
        );
        let missing = dir.path().join("missing.pem");
        let files = |cert: &Path, key: &Path| TlsFiles {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        };
        for (cert, says) in [
            (&missing, "No such file"),
            (&garbage, "holds no PEM certificate"),
            (&torn, "not valid PEM"),
        ] {
            let err = load(&files(cert, &garbage)).err().unwrap().to_string();
            assert!(
                err.starts_with(&format!("--tls-cert {}", cert.display())),
                "{err}"
            );
            assert!(err.contains(says), "{err}");
        }
    }
}
