//! TLS settings: the PEM files named by the configuration, read and checked.

use std::path::Path;

use super::{CacheConfig, RedisTarget};
use crate::error::ConfigError;
use crate::redact::redact_url;

impl CacheConfig {
    /// The TLS material named by [`tls_ca_file`](Self::tls_ca_file),
    /// [`tls_cert_file`](Self::tls_cert_file) and
    /// [`tls_key_file`](Self::tls_key_file), read and checked; `None` when
    /// none is set (a `rediss://` URL then trusts the system roots).
    pub(crate) fn tls_certificates(
        &self,
        names: TlsVariables,
    ) -> Result<Option<TlsMaterial>, ConfigError> {
        let root_cert = match &self.tls_ca_file {
            Some(path) => Some(read_pem_certificates(names.ca, path)?),
            None => None,
        };
        let client = match (&self.tls_cert_file, &self.tls_key_file) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some((
                read_pem_certificates(names.cert, cert)?,
                read_pem_key(names.key, key)?,
            )),
            (Some(cert), None) => {
                return Err(tls_file(
                    names.key,
                    cert,
                    format!(
                        "a client certificate needs its private key: set {} too",
                        names.key
                    ),
                ));
            }
            (None, Some(key)) => {
                return Err(tls_file(
                    names.cert,
                    key,
                    format!(
                        "a private key needs its client certificate: set {} too",
                        names.cert
                    ),
                ));
            }
        };
        if root_cert.is_none() && client.is_none() {
            return Ok(None);
        }
        if let Some(target) = &self.redis {
            let urls: Vec<&String> = match target {
                RedisTarget::Single(url) => vec![url],
                RedisTarget::Cluster(urls) => urls.iter().collect(),
                // The sentinels or the data nodes may use TLS alone.
                RedisTarget::Sentinel {
                    sentinels,
                    data_url,
                    ..
                } if super::sentinel::uses_tls(sentinels, data_url.as_deref()) => Vec::new(),
                RedisTarget::Sentinel { sentinels, .. } => sentinels.iter().collect(),
            };
            if let Some(plain) = urls.iter().find(|u| !u.starts_with("rediss://")) {
                let variable = if root_cert.is_some() {
                    names.ca
                } else {
                    names.cert
                };
                return Err(ConfigError::Invalid {
                    variable,
                    value: redact_url(plain),
                    reason: "TLS certificates need a rediss:// URL".to_owned(),
                });
            }
        }
        Ok(Some(TlsMaterial { root_cert, client }))
    }
}

pub(super) const CA_VAR: &str = "REDIS_TLS_CA_FILE";
pub(super) const CERT_VAR: &str = "REDIS_TLS_CERT_FILE";
pub(super) const KEY_VAR: &str = "REDIS_TLS_KEY_FILE";

/// Names used in TLS errors: the environment variables, or the builder methods.
#[derive(Clone, Copy)]
pub(crate) struct TlsVariables {
    pub(crate) ca: &'static str,
    pub(crate) cert: &'static str,
    pub(crate) key: &'static str,
}

impl TlsVariables {
    pub(crate) const ENV: TlsVariables = TlsVariables {
        ca: CA_VAR,
        cert: CERT_VAR,
        key: KEY_VAR,
    };
}

/// PEM bytes checked to hold what they should.
#[derive(Clone)]
#[cfg_attr(not(feature = "tls"), allow(dead_code))]
pub(crate) struct TlsMaterial {
    /// CA certificates to trust besides the system roots.
    pub(crate) root_cert: Option<Vec<u8>>,
    /// Client certificate chain and private key.
    pub(crate) client: Option<(Vec<u8>, Vec<u8>)>,
}

fn tls_file(variable: &'static str, path: &Path, reason: String) -> ConfigError {
    ConfigError::TlsFile {
        variable,
        path: path.display().to_string(),
        reason,
    }
}

fn read_file(variable: &'static str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| tls_file(variable, path, format!("cannot read it: {e}")))
}

/// Reads a PEM file that must hold at least one certificate.
pub(crate) fn read_pem_certificates(
    variable: &'static str,
    path: &Path,
) -> Result<Vec<u8>, ConfigError> {
    let bytes = read_file(variable, path)?;
    #[cfg(feature = "tls")]
    {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut count = 0;
        for cert in CertificateDer::pem_slice_iter(&bytes) {
            cert.map_err(|e| tls_file(variable, path, format!("malformed PEM: {e}")))?;
            count += 1;
        }
        if count == 0 {
            return Err(tls_file(
                variable,
                path,
                "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".to_owned(),
            ));
        }
    }
    Ok(bytes)
}

/// Reads a PEM file that must hold a private key.
pub(crate) fn read_pem_key(variable: &'static str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    let bytes = read_file(variable, path)?;
    #[cfg(feature = "tls")]
    {
        use rustls::pki_types::PrivateKeyDer;
        use rustls::pki_types::pem::PemObject;
        PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
            tls_file(
                variable,
                path,
                format!("holds no usable PEM private key: {e}"),
            )
        })?;
    }
    Ok(bytes)
}
