//! TLS with rustls (ring provider): loads a PEM certificate chain and private key, and
//! swaps them on reload without touching open connections.
//!
//! A [`TlsHandle`] holds the current `rustls::ServerConfig` behind a lock that every
//! handshake reads once; [`TlsHandle::reload`] builds a complete new config from the
//! files first and only then swaps it in, so a broken pair (unreadable, not PEM, key
//! not matching the certificate) is refused and the old one keeps serving.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::ring;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// ALPN protocols offered, in preference order: HTTP/2 for REST, HTTP/1.1 for
/// WebSockets (which upgrade over HTTP/1.1 only).
const ALPN_PROTOCOLS: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Why a certificate chain and key could not be loaded. Every variant names the file
/// at fault, so an operator knows which one to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read or holds no valid PEM section of the expected kind.
    #[error("cannot read {what} from {path}: {reason}")]
    Read {
        /// "certificate chain" or "private key".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What went wrong, from the PEM parser or the file system.
        reason: String,
    },
    /// The private key does not belong to the chain's first (end-entity) certificate,
    /// or rustls refused the pair for another reason.
    #[error("the private key in {key} does not match the certificate in {chain}: {reason}")]
    Mismatch {
        /// The certificate chain file.
        chain: PathBuf,
        /// The private key file.
        key: PathBuf,
        /// What rustls said.
        reason: String,
    },
}

/// The live TLS configuration of a server: the paths it came from and the
/// `rustls::ServerConfig` every new handshake uses. Cheap to clone; clones share the
/// same configuration, so reloading one reloads them all.
#[derive(Clone)]
pub struct TlsHandle {
    inner: Arc<TlsInner>,
}

struct TlsInner {
    chain_path: PathBuf,
    key_path: PathBuf,
    /// Replaced whole on reload; a handshake clones the `Arc` and keeps its config
    /// even if a reload happens mid-handshake.
    current: RwLock<Arc<rustls::ServerConfig>>,
}

impl TlsHandle {
    /// Loads the PEM certificate chain at `chain_path` (end-entity certificate first,
    /// as in Let's Encrypt's `fullchain.pem`) and the PEM private key at `key_path`
    /// (PKCS#8, PKCS#1 or SEC1), and checks that the key matches the certificate.
    pub fn load(chain_path: impl Into<PathBuf>, key_path: impl Into<PathBuf>) -> Result<TlsHandle, TlsError> {
        let chain_path = chain_path.into();
        let key_path = key_path.into();
        let config = build_config(&chain_path, &key_path)?;
        Ok(TlsHandle {
            inner: Arc::new(TlsInner { chain_path, key_path, current: RwLock::new(Arc::new(config)) }),
        })
    }

    /// Reads both files again and, if they make a valid pair, serves them to every
    /// new connection. On error the previous pair stays in use and the error is
    /// returned; open connections are never affected.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = build_config(&self.inner.chain_path, &self.inner.key_path)?;
        *self.inner.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
        Ok(())
    }

    /// The certificate chain file.
    pub fn chain_path(&self) -> &Path {
        &self.inner.chain_path
    }

    /// The private key file.
    pub fn key_path(&self) -> &Path {
        &self.inner.key_path
    }

    /// An acceptor with the configuration current at this instant.
    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let config = self.inner.current.read().unwrap_or_else(|e| e.into_inner()).clone();
        tokio_rustls::TlsAcceptor::from(config)
    }
}

impl std::fmt::Debug for TlsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsHandle")
            .field("chain_path", &self.inner.chain_path)
            .field("key_path", &self.inner.key_path)
            .finish_non_exhaustive()
    }
}

/// Reads and checks the pair, returning a ready server config (TLS 1.2 and 1.3, ALPN
/// `h2` and `http/1.1`, no client certificates).
fn build_config(chain_path: &Path, key_path: &Path) -> Result<rustls::ServerConfig, TlsError> {
    let read_error =
        |what, path: &Path, reason: String| TlsError::Read { what, path: path.to_owned(), reason };
    let chain = CertificateDer::pem_file_iter(chain_path)
        .map_err(|e| read_error("certificate chain", chain_path, pem_reason(e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read_error("certificate chain", chain_path, pem_reason(e)))?;
    if chain.is_empty() {
        return Err(read_error("certificate chain", chain_path, "no CERTIFICATE section found".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| read_error("private key", key_path, pem_reason(e)))?;

    let mismatch = |e: rustls::Error| TlsError::Mismatch {
        chain: chain_path.to_owned(),
        key: key_path.to_owned(),
        reason: e.to_string(),
    };
    let provider = Arc::new(ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(mismatch)?
        .with_no_client_auth()
        // Loads the key and compares its public key with the end-entity certificate's.
        .with_single_cert(chain, key)
        .map_err(mismatch)?;
    config.alpn_protocols = ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

fn pem_reason(e: rustls_pki_types::pem::Error) -> String {
    match e {
        rustls_pki_types::pem::Error::Io(io) => io.to_string(),
        rustls_pki_types::pem::Error::NoItemsFound => "no PEM section of the expected kind found".to_owned(),
        other => format!("not valid PEM: {other}"),
    }
}
