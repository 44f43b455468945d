//! Server TLS with client certificates, for `auth.mode = "mtls"`. The caller is the SPIFFE ID
//! (`spiffe://...` URI SAN) of a client certificate that chains to `client_ca_file`; a
//! certificate with no SPIFFE ID, or more than one, names no caller.
//!
//! tonic's own TLS configuration is fixed at start, and certificates rotate (cert-manager, SPIRE),
//! so the gateway accepts TLS itself (`crate::listener`): each connection's handshake uses the
//! configuration in force, which is rebuilt when the files change.

use std::{path::Path, sync::Arc};

use arc_swap::ArcSwap;
use rustls::{RootCertStore, ServerConfig, server::WebPkiClientVerifier};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use tokio_rustls::TlsAcceptor;

use crate::config::MtlsConfig;

/// How a SPIFFE ID starts.
const SPIFFE_SCHEME: &str = "spiffe://";

/// The live TLS configuration.
pub(crate) struct Tls {
    config: MtlsConfig,
    current: ArcSwap<ServerConfig>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Reads the certificates and key; any problem is an error naming the file.
    pub(crate) fn load(config: MtlsConfig) -> Result<Self, String> {
        let server = build(&config)?;
        Ok(Self {
            config,
            current: ArcSwap::from_pointee(server),
        })
    }

    /// Re-reads the files; on failure the configuration in force stays.
    pub(crate) fn reload(&self) -> Result<(), String> {
        let built = build(&self.config);
        crate::metrics::record_tls_reload(built.is_ok());
        let server = built?;
        self.current.store(Arc::new(server));
        tracing::info!("TLS certificates reloaded");
        Ok(())
    }

    /// The files to watch.
    pub(crate) fn files(&self) -> [&Path; 3] {
        [
            &self.config.cert_file,
            &self.config.key_file,
            &self.config.client_ca_file,
        ]
    }

    /// How long a handshake may take (`auth.mtls.handshake_timeout_secs`).
    pub(crate) fn handshake_timeout(&self) -> std::time::Duration {
        self.config.handshake_timeout
    }

    /// An acceptor with the certificates in force now.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.load_full())
    }
}

fn build(config: &MtlsConfig) -> Result<ServerConfig, String> {
    let read = |key: &str, path: &Path, e: &dyn std::fmt::Display| {
        format!("auth.mtls.{key} {}: {e}", path.display())
    };
    let chain = CertificateDer::pem_file_iter(&config.cert_file)
        .map_err(|e| read("cert_file", &config.cert_file, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read("cert_file", &config.cert_file, &e))?;
    if chain.is_empty() {
        return Err(read("cert_file", &config.cert_file, &"no certificate"));
    }
    let key = PrivateKeyDer::from_pem_file(&config.key_file)
        .map_err(|e| read("key_file", &config.key_file, &e))?;
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(&config.client_ca_file)
        .map_err(|e| read("client_ca_file", &config.client_ca_file, &e))?
    {
        let ca = ca.map_err(|e| read("client_ca_file", &config.client_ca_file, &e))?;
        roots
            .add(ca)
            .map_err(|e| read("client_ca_file", &config.client_ca_file, &e))?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    // Client certificates are required: a connection without one never completes its handshake.
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
            .build()
            .map_err(|e| read("client_ca_file", &config.client_ca_file, &e))?;
    let mut server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| read("key_file", &config.key_file, &e))?;
    server.alpn_protocols = vec![b"h2".to_vec()];
    Ok(server)
}

/// The SPIFFE ID of a verified client certificate: its one `spiffe://` URI SAN, or why there is
/// none. An X.509-SVID holds exactly one SPIFFE ID; a certificate with two would authenticate as
/// whichever came first, so it names no one. The scheme is compared in any case, so that a second
/// ID spelt `SPIFFE://` cannot hide behind the first.
pub(crate) fn spiffe_id(certificate: &CertificateDer<'_>) -> Result<String, &'static str> {
    let parsed = webpki::EndEntityCert::try_from(certificate)
        .map_err(|_| "client certificate does not parse")?;
    let mut ids = parsed.valid_uri_names().filter(|uri| {
        uri.get(..SPIFFE_SCHEME.len())
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case(SPIFFE_SCHEME))
    });
    match (ids.next(), ids.next()) {
        (Some(id), None) => Ok(id.to_owned()),
        (None, _) => Err("client certificate has no SPIFFE ID"),
        (Some(_), Some(_)) => Err("client certificate has more than one SPIFFE ID"),
    }
}
