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

        let ca_key = KeyPair::generate().expect("generating CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "kubestow-test-ca");
        ca_params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).expect("self-signing CA");
        let ca_pem = ca_cert.pem();
        let ca_key_pem = ca_key.serialize_pem();
        let issuer = Issuer::new(ca_params, ca_key);

        let serving_key = KeyPair::generate().expect("generating serving key");
        let mut serving_params = CertificateParams::new(vec![
            "127.0.0.1".to_owned(),
            "localhost".to_owned(),
            "kubernetes".to_owned(),
            "kubernetes.default".to_owned(),
            "kubernetes.default.svc".to_owned(),
            "kubernetes.default.svc.cluster.local".to_owned(),
            "10.96.0.1".to_owned(),
        ])
        .expect("serving params");
        serving_params
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        serving_params.use_authority_key_identifier_extension = true;
        serving_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        serving_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let serving_cert = serving_params
            .signed_by(&serving_key, &issuer)
            .expect("signing serving certificate");

        let sa_key = KeyPair::generate().expect("generating service-account key");

        Pki {
            ca_cert: write("ca.crt", &ca_pem),
            ca_key: write("ca.key", &ca_key_pem),
            serving_cert: write("apiserver.crt", &serving_cert.pem()),
            serving_key: write("apiserver.key", &serving_key.serialize_pem()),
            sa_key: write("sa.key", &sa_key.serialize_pem()),
            sa_pub: write("sa.pub", &sa_key.public_key_pem()),
            ca_pem,
        }
    }
}
