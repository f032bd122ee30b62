//! Garage over TLS with a private CA. Garage serves S3 as plain HTTP and
//! its documentation puts TLS in a reverse proxy; this is stunnel (Debian's
//! stunnel4) in front of the test Garage, with a certificate for 127.0.0.1
//! signed by a CA made here that no trust store holds.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::process::{Proc, find_in_path, free_ports, wait_for};

pub struct TlsFront {
    /// `https://127.0.0.1:<port>`, Garage's S3 API behind TLS.
    pub url: String,
    /// PEM of the private CA that signed the front's certificate.
    pub ca: PathBuf,
    _proc: Proc,
}

impl TlsFront {
    /// Starts stunnel on a free loopback port, forwarding to `backend`
    /// (`host:port` of Garage's plain S3 API).
    pub(crate) fn start(dir: &Path, backend: &str) -> TlsFront {
        std::fs::create_dir_all(dir).expect("creating the TLS front's dir");
        let (ca_pem, cert_pem, key_pem) = certificates("127.0.0.1");
        let write = |name: &str, body: &str| {
            let p = dir.join(name);
            std::fs::write(&p, body).unwrap();
            p
        };
        let ca = write("s3-ca.crt", &ca_pem);
        let cert = write("s3.crt", &cert_pem);
        let key = write("s3.key", &key_pem);
        let [port] = free_ports::<1>();
        let config = write(
            "stunnel.conf",
            &format!(
                "foreground = yes\npid =\n[s3]\naccept = 127.0.0.1:{port}\nconnect = {backend}\ncert = {}\nkey = {}\n",
                cert.display(),
                key.display()
            ),
        );
        let bin = find_in_path("stunnel4")
            .or_else(|| find_in_path("stunnel"))
            .expect("stunnel is needed (tests/env/setup.sh installs stunnel4)");
        let proc = Proc::start("stunnel", &bin, &[config.display().to_string()], &[], dir);
        wait_for(
            "stunnel to listen",
            &proc,
            &[],
            Duration::from_secs(30),
            || {
                TcpStream::connect(("127.0.0.1", port))
                    .map(drop)
                    .map_err(|e| e.to_string())
            },
        );
        TlsFront {
            url: format!("https://127.0.0.1:{port}"),
            ca,
            _proc: proc,
        }
    }
}

/// (CA PEM, server certificate PEM, server key PEM) for `ip`, from a CA of
/// its own.
fn certificates(ip: &str) -> (String, String, String) {
    let (ca_pem, _, issuer) = super::pki::ca("kubestow-test-s3-ca");
    let (cert, key) = super::pki::serving(&issuer, ip, &[ip]);
    (ca_pem, cert, key)
}
