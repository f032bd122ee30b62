//! Certificates and keys for the test clusters, generated in-process with
//! rcgen (all ECDSA P-256, PKCS#8 PEM).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// Files shared by every apiserver and controller-manager of the environment.
pub(crate) struct Pki {
    /// PEM of the CA that signs the serving certificate (and client CSRs).
    pub(crate) ca_pem: String,
    pub(crate) ca_cert: PathBuf,
    pub(crate) ca_key: PathBuf,
    /// Serving certificate for 127.0.0.1 / localhost / kubernetes.default...
    pub(crate) serving_cert: PathBuf,
    pub(crate) serving_key: PathBuf,
    /// Service-account token signing key and its public half.
    pub(crate) sa_key: PathBuf,
    pub(crate) sa_pub: PathBuf,
}

impl Pki {
    pub(crate) fn generate(dir: &Path) -> Pki {
        std::fs::create_dir_all(dir).expect("creating pki dir");
        let write = |name: &str, contents: &str| {
            let path = dir.join(name);
            std::fs::write(&path, contents)
                .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
            path
        };

        let (ca_pem, ca_key_pem, issuer) = ca("kubestow-test-ca");
        let (serving_pem, serving_key_pem) = serving(
            &issuer,
            "kube-apiserver",
            &[
                "127.0.0.1",
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
                "10.96.0.1",
            ],
        );

        let sa_key = KeyPair::generate().expect("generating service-account key");

        Pki {
            ca_cert: write("ca.crt", &ca_pem),
            ca_key: write("ca.key", &ca_key_pem),
            serving_cert: write("apiserver.crt", &serving_pem),
            serving_key: write("apiserver.key", &serving_key_pem),
            sa_key: write("sa.key", &sa_key.serialize_pem()),
            sa_pub: write("sa.pub", &sa_key.public_key_pem()),
            ca_pem,
        }
    }
}

/// A self-signed CA named `cn`: (certificate PEM, key PEM, the issuer that
/// signs with it).
pub(crate) fn ca(cn: &str) -> (String, String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().expect("generating CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, cn);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
    ];
    let pem = params.self_signed(&key).expect("self-signing CA").pem();
    let key_pem = key.serialize_pem();
    (pem, key_pem, Issuer::new(params, key))
}

/// A serving certificate named `cn` for `sans`, signed by `issuer`:
/// (certificate PEM, key PEM).
pub(crate) fn serving(issuer: &Issuer<'_, KeyPair>, cn: &str, sans: &[&str]) -> (String, String) {
    let key = KeyPair::generate().expect("generating serving key");
    let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .expect("serving params");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params
        .signed_by(&key, issuer)
        .expect("signing serving certificate");
    (cert.pem(), key.serialize_pem())
}
