//! TLS for Redis connections: rustls' crypto provider, and the
//! certificates (a private CA on top of the system roots, a client
//! certificate) handed to redis-rs.

use crate::config::TlsMaterial;

/// Installs rustls' ring crypto provider as the process default unless one
/// is installed already (by the application or an earlier cache).
#[cfg(feature = "tls")]
pub(crate) fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // rustls 0.23.48 deprecates this function (ring has no post-quantum
        // key exchange) and offers no other way to name the ring provider in
        // 0.23; it stays this crate's provider, so the lint is allowed here.
        #[allow(deprecated)]
        let ring = rustls::crypto::ring::default_provider();
        // Losing a race to another installer is fine: one provider is in.
        let _ = ring.install_default();
    }
}

/// A client for `info`, with the TLS material when there is some (the
/// tracking connection of prefix generations and the near cache uses it,
/// so it reaches the server exactly as the data connections do).
pub(crate) fn client_with_tls(
    info: redis::ConnectionInfo,
    tls: Option<&TlsMaterial>,
) -> redis::RedisResult<redis::Client> {
    match tls {
        #[cfg(feature = "tls")]
        Some(material) => redis::Client::build_with_tls(info, certificates(material)),
        _ => redis::Client::open(info),
    }
}

/// redis-rs's certificates. A CA file is trusted on top of the system's
/// root certificates, not instead of them: redis-rs trusts either its
/// `root_cert` or the system roots, so the system roots are appended to the
/// CA file's PEM.
#[cfg(feature = "tls")]
pub(crate) fn certificates(material: &TlsMaterial) -> redis::TlsCertificates {
    redis::TlsCertificates {
        client_tls: material
            .client
            .as_ref()
            .map(|(cert, key)| redis::ClientTlsConfig {
                client_cert: cert.clone(),
                client_key: key.clone(),
            }),
        root_cert: material.root_cert.as_ref().map(|ca| {
            let mut pem = ca.clone();
            pem.push(b'\n');
            let system = rustls_native_certs::load_native_certs();
            if !system.errors.is_empty() {
                tracing::debug!(errors = ?system.errors, "some system root certificates could not be loaded");
            }
            for cert in &system.certs {
                pem_encode(cert, &mut pem);
            }
            pem
        }),
    }
}

/// Appends `der` as a PEM `CERTIFICATE` block.
#[cfg(feature = "tls")]
pub(crate) fn pem_encode(der: &[u8], out: &mut Vec<u8>) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    out.extend_from_slice(b"-----BEGIN CERTIFICATE-----\n");
    for (i, chunk) in der.chunks(3).enumerate() {
        if i > 0 && i % 16 == 0 {
            out.push(b'\n'); // 64 characters a line
        }
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for j in 0..4 {
            if j <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * j)) & 63) as usize]);
            } else {
                out.push(b'=');
            }
        }
    }
    out.extend_from_slice(b"\n-----END CERTIFICATE-----\n");
}

#[cfg(all(test, feature = "tls"))]
mod tests {
    #[test]
    pub(crate) fn pem_encoding_round_trips() {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        for len in [0usize, 1, 2, 3, 47, 48, 49, 1000] {
            let der: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let mut pem = Vec::new();
            super::pem_encode(&der, &mut pem);
            if len == 0 {
                continue;
            }
            let back = CertificateDer::from_pem_slice(&pem).unwrap();
            assert_eq!(back.as_ref(), der.as_slice(), "length {len}");
        }
    }
}
