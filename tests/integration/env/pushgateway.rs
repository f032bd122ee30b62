//! A Prometheus Pushgateway (Debian's `prometheus-pushgateway`) on
//! loopback, for the metrics tests.

use std::path::Path;
use std::time::Duration;

use super::process::{Proc, find_in_path, free_ports, wait_for};

pub(crate) struct Pushgateway {
    pub(crate) url: String,
    pub(crate) proc: Proc,
}

impl Pushgateway {
    pub(crate) fn start(dir: &Path) -> Pushgateway {
        let bin = find_in_path("prometheus-pushgateway").unwrap_or_else(|| {
            panic!(
                "test env: `prometheus-pushgateway` is not on PATH; run `just setup` \
                 (tests/env/setup.sh installs Debian's prometheus-pushgateway)"
            )
        });
        std::fs::create_dir_all(dir).expect("creating pushgateway dir");
        let [port] = free_ports::<1>();
        let proc = Proc::start(
            "pushgateway",
            &bin,
            &[
                format!("--web.listen-address=127.0.0.1:{port}"),
                // Debian's default persists to one file under /var/lib,
                // which every test run would share: memory only.
                "--persistence.file=".to_string(),
            ],
            &[],
            dir,
        );
        let url = format!("http://127.0.0.1:{port}");
        wait_for(
            "the Pushgateway to answer",
            &proc,
            &[],
            Duration::from_secs(30),
            || {
                std::net::TcpStream::connect(("127.0.0.1", port))
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            },
        );
        Pushgateway { url, proc }
    }
}
