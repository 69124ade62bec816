//! The TLS settings of `mqtts://`: a rustls client configuration with the ring provider, the
//! trust anchors from `MQTT_CA_FILE` (else the system's PEM bundle) and an optional client
//! certificate.
//!
//! Certificates are always verified: this module has, and must never grow, a way to turn
//! verification off. It reads files only at start-up and never logs their contents.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use super::Error;
use crate::config::MqttConfig;

/// Where Debian and Raspberry Pi OS keep the system's trusted roots as one PEM bundle.
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Builds the rustls configuration for `cfg`.
pub fn client_config(cfg: &MqttConfig) -> Result<Arc<ClientConfig>, Error> {
    // ureq and the MQTT wire share rustls; whoever comes first installs ring, the other is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(Error::Tls)?
        .with_root_certificates(roots(cfg)?);
    let config = match (&cfg.client_cert_file, &cfg.client_key_file) {
        (Some(cert_path), Some(key_path)) => {
            let (certs, key) = client_identity(cert_path, key_path)?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(Error::Tls)?
        }
        (None, None) => builder.with_no_client_auth(),
        (Some(p), None) | (None, Some(p)) => {
            return Err(Error::Pem {
                path: p.clone(),
                what: "client certificate and key",
                detail: "both MQTT_CLIENT_CERT_FILE and MQTT_CLIENT_KEY_FILE are needed".into(),
            })
        }
    };
    Ok(Arc::new(config))
}

/// The trust anchors: `MQTT_CA_FILE`, else the system's bundle.
fn roots(cfg: &MqttConfig) -> Result<RootCertStore, Error> {
    let ca_path: PathBuf = cfg
        .ca_file
        .clone()
        .unwrap_or_else(|| PathBuf::from(SYSTEM_BUNDLE));
    let ca = read(&ca_path)?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&ca) {
        let cert = cert.map_err(|e| Error::Pem {
            path: ca_path.clone(),
            what: "CA certificates",
            detail: e.to_string(),
        })?;
        // A system bundle may hold a certificate rustls cannot parse; one bad root is no reason
        // to refuse the rest, but a file of only bad ones is caught below.
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(Error::Pem {
            path: ca_path,
            what: "CA certificates",
            detail: "no usable certificate in the file".into(),
        });
    }
    Ok(roots)
}

/// The client certificate chain and its key.
fn client_identity(
    cert_path: &Path,
    key_path: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), Error> {
    let pem = read(cert_path)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| Error::Pem {
            path: cert_path.to_path_buf(),
            what: "client certificate",
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(Error::Pem {
            path: cert_path.to_path_buf(),
            what: "client certificate",
            detail: "no certificate in the file".into(),
        });
    }
    let key_pem = read(key_path)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| Error::Pem {
        path: key_path.to_path_buf(),
        what: "client key",
        detail: e.to_string(),
    })?;
    Ok((certs, key))
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|err| Error::Read {
        path: path.to_path_buf(),
        err,
    })
}
