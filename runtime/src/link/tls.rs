//! TLS for the agent ↔ core link: loading PEM files into rustls configs, and throw-away
//! certificates for the demo and tests.
//!
//! Owns certificates and keys only. It must never log key material, and never fall back to
//! plain text by itself: whether plain text is allowed (loopback only) is the server's and
//! client's explicit choice.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no usable PEM {what} in it")]
    Pem { path: PathBuf, what: &'static str },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(String),
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The PEM files of one side of the link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Server: require client certificates signed by this CA (mutual TLS).
    /// Client: the CA that signed the server's certificate.
    pub ca: Option<PathBuf>,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_path_buf(),
            what: "certificate",
        });
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| TlsError::Pem {
        path: path.to_path_buf(),
        what: "private key",
    })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The core's rustls config: its certificate, and client certificates required when
/// `files.ca` is set. ALPN offers h2 only (gRPC).
pub fn server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?;
    let builder = match &files.ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs(ca)? {
                roots.add(c)?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_single_cert(certs(&files.cert)?, key(&files.key)?)?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// The agent's tonic TLS config: trust `ca`, present a client certificate if given.
pub fn client_config(
    ca: &Path,
    domain: &str,
    identity: Option<(&Path, &Path)>,
) -> Result<tonic::transport::ClientTlsConfig, TlsError> {
    let mut cfg = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(read(ca)?))
        .domain_name(domain.to_string());
    if let Some((cert, key)) = identity {
        cfg = cfg.identity(tonic::transport::Identity::from_pem(
            read(cert)?,
            read(key)?,
        ));
    }
    Ok(cfg)
}

/// Throw-away PKI written to a directory: a CA, a server certificate for `localhost` and
/// `127.0.0.1`, and one client certificate for mutual TLS.
#[derive(Clone, Debug)]
pub struct DemoPki {
    pub ca: PathBuf,
    pub server: TlsFiles,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

pub fn generate_demo_pki(dir: &Path) -> Result<DemoPki, TlsError> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Echo throw-away demo CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

    let leaf = |names: Vec<String>, cn: &str| -> Result<(String, String), TlsError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &ca)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let (server_cert, server_key) = leaf(
        vec!["localhost".to_string(), "127.0.0.1".to_string()],
        "echo-core",
    )?;
    let (client_cert, client_key) = leaf(vec!["echo-agent".to_string()], "echo-agent")?;

    let write = |name: &str, body: &str| -> Result<PathBuf, TlsError> {
        let path = dir.join(name);
        std::fs::write(&path, body).map_err(|source| TlsError::Write {
            path: path.clone(),
            source,
        })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
        }
        Ok(path)
    };
    let ca_path = write("ca.pem", &ca.pem())?;
    Ok(DemoPki {
        server: TlsFiles {
            cert: write("core.pem", &server_cert)?,
            key: write("core.key", &server_key)?,
            ca: Some(ca_path.clone()),
        },
        client_cert: write("agent.pem", &client_cert)?,
        client_key: write("agent.key", &client_key)?,
        ca: ca_path,
    })
}
