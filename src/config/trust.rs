//! The certificate variables kubestow honours besides its own, checked
//! with the configuration: a bundle that cannot be read fails the run
//! before anything is touched, naming the variable, instead of every TLS
//! handshake failing later with "unknown issuer".
//!
//! - `SSL_CERT_FILE` and `SSL_CERT_DIR` replace the image's roots for every
//!   TLS connection kubestow makes itself (S3 and the Pushgateway; the
//!   Kubernetes API uses the cluster's CA).
//! - `AWS_CA_BUNDLE` is trusted for S3 in addition to those roots, as the
//!   AWS command line reads it.

use std::io::Read;

use super::error::ConfigError;

/// A PEM file of trusted certificates that replaces the image's roots.
pub const SSL_CERT_FILE: &str = "SSL_CERT_FILE";
/// A directory of PEM certificates that replaces the image's roots.
pub const SSL_CERT_DIR: &str = "SSL_CERT_DIR";
/// A PEM file of certificates trusted for S3 besides the roots.
pub const AWS_CA_BUNDLE: &str = "AWS_CA_BUNDLE";

/// Largest bundle read; the public roots are about 200 KiB.
pub const MAX_BUNDLE: u64 = 16 << 20;

const PEM_CERTIFICATE: &str = "-----BEGIN CERTIFICATE-----";

/// Reads a bundle `var` names: at most [`MAX_BUNDLE`] bytes holding at
/// least one PEM certificate.
pub fn read_bundle(var: &'static str, path: &str) -> Result<Vec<u8>, ConfigError> {
    let fail = |reason: String| ConfigError::File {
        var,
        path: path.to_string(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| fail(e.kind().to_string()))?;
    let mut bytes = Vec::new();
    file.take(MAX_BUNDLE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(e.kind().to_string()))?;
    if bytes.len() as u64 > MAX_BUNDLE {
        return Err(fail(format!("larger than {MAX_BUNDLE} bytes")));
    }
    if !String::from_utf8_lossy(&bytes).contains(PEM_CERTIFICATE) {
        return Err(fail("no PEM certificate in it".into()));
    }
    Ok(bytes)
}

/// The errors of the certificate variables among `vars` (empty values
/// count as unset).
pub(super) fn check(vars: &[(String, String)]) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    for (name, value) in vars.iter().filter(|(_, v)| !v.is_empty()) {
        match name.as_str() {
            SSL_CERT_FILE => errors.extend(read_bundle(SSL_CERT_FILE, value).err()),
            AWS_CA_BUNDLE => errors.extend(read_bundle(AWS_CA_BUNDLE, value).err()),
            SSL_CERT_DIR if !std::path::Path::new(value).is_dir() => {
                errors.push(ConfigError::File {
                    var: SSL_CERT_DIR,
                    path: value.clone(),
                    reason: "not a directory".into(),
                })
            }
            _ => {}
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors_for(name: &str, value: &str) -> Vec<String> {
        check(&[(name.to_string(), value.to_string())])
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn bundles_that_cannot_be_used_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("ca.pem");
        std::fs::write(
            &good,
            format!("{PEM_CERTIFICATE}\nMIIB\n-----END CERTIFICATE-----\n"),
        )
        .unwrap();
        let bad = dir.path().join("key.pem");
        std::fs::write(&bad, "-----BEGIN PRIVATE KEY-----\n").unwrap();
        let good = good.to_str().unwrap();
        let bad = bad.to_str().unwrap();

        assert!(errors_for(SSL_CERT_FILE, good).is_empty());
        assert!(errors_for(AWS_CA_BUNDLE, good).is_empty());
        assert!(errors_for(SSL_CERT_DIR, dir.path().to_str().unwrap()).is_empty());
        assert!(errors_for(SSL_CERT_FILE, "").is_empty(), "empty is unset");

        let e = errors_for(SSL_CERT_FILE, bad);
        assert!(e[0].starts_with("SSL_CERT_FILE: ") && e[0].contains("no PEM certificate"));
        let e = errors_for(AWS_CA_BUNDLE, "/nonexistent/ca.pem");
        assert!(
            e[0].starts_with("AWS_CA_BUNDLE: ") && e[0].contains("not found"),
            "{e:?}"
        );
        let e = errors_for(SSL_CERT_DIR, good);
        assert!(e[0].starts_with("SSL_CERT_DIR: ") && e[0].contains("not a directory"));
    }

    #[test]
    fn a_bundle_is_read_only_up_to_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.pem");
        let mut body = PEM_CERTIFICATE.as_bytes().to_vec();
        body.resize(MAX_BUNDLE as usize + 10, b'A');
        std::fs::write(&big, body).unwrap();
        let e = read_bundle(AWS_CA_BUNDLE, big.to_str().unwrap()).unwrap_err();
        assert!(e.to_string().contains("larger than"), "{e}");
    }
}
