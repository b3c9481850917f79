//! TLS set-up shared by the MQTT and HTTP clients.
//!
//! pv3 uses rustls with the `ring` provider only (no OpenSSL, no aws-lc), so
//! that it cross-compiles for a Raspberry Pi with nothing but rustup.

use std::path::Path;
use std::sync::{Arc, Once};

use anyhow::{Context, Result, bail};
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// Installs `ring` as the process-wide rustls provider (reqwest needs one).
/// Idempotent.
pub fn ensure_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err means another provider was installed first: fine too.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A rustls client config trusting `ca_file` (PEM) or, without one, the
/// system's roots.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>> {
    ensure_provider();
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .with_context(|| format!("cannot read CA file {}", path.display()))?
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("CA file {} is not valid PEM", path.display()))?;
            if certs.is_empty() {
                bail!("CA file {} holds no certificate", path.display());
            }
            for cert in certs {
                roots
                    .add(cert)
                    .with_context(|| format!("bad certificate in {}", path.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                // A broken system certificate should not stop the others.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                bail!("no system CA certificates found: pass --mqtt-ca FILE");
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS set-up failed")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
