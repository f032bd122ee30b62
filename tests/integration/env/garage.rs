//! A single-node Garage S3 server with one access key.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::process::{Proc, free_ports, run, wait_for};
use super::{binary, random_hex};

const GARAGE_TIMEOUT: Duration = Duration::from_secs(60);
const BUCKET_TIMEOUT: Duration = Duration::from_secs(30);
pub(crate) const REGION: &str = "garage";

pub(crate) struct Garage {
    bin: PathBuf,
    config: PathBuf,
    pub(crate) s3_url: String,
    pub(crate) key_id: String,
    pub(crate) secret_key: String,
    pub(crate) proc: Proc,
}

impl Garage {
    /// Starts the server, assigns the single-node layout and creates the
    /// `kubestow-test` key. Blocking; no tokio runtime needed.
    pub(crate) fn start(dir: &Path) -> Garage {
        let bin = binary::garage();
        std::fs::create_dir_all(dir).expect("creating garage dir");
        let [rpc, s3, admin] = free_ports::<3>();
        let config = dir.join("garage.toml");
        std::fs::write(
            &config,
            format!(
                r#"metadata_dir = "{meta}"
data_dir = "{data}"
db_engine = "lmdb"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "{REGION}"
api_bind_addr = "127.0.0.1:{s3}"

[admin]
api_bind_addr = "127.0.0.1:{admin}"
"#,
                meta = dir.join("meta").display(),
                data = dir.join("data").display(),
                secret = random_hex(32),
            ),
        )
        .expect("writing garage.toml");

        let args = vec![
            "-c".to_owned(),
            config.display().to_string(),
            "server".to_owned(),
        ];
        let proc = Proc::start(
            "garage",
            &bin,
            &args,
            &[("RUST_LOG", "garage=info,warn")],
            dir,
        );
        let mut garage = Garage {
            bin,
            config,
            s3_url: format!("http://127.0.0.1:{s3}"),
            key_id: String::new(),
            secret_key: String::new(),
            proc,
        };

        // `status` succeeds once the daemon answers RPC. `node id -q` then
        // prints `<64 hex id>@<addr>`; it only reads `metadata_dir/node_key`,
        // so it is asked after `status` (the key is complete by then).
        wait_for("garage status", &garage.proc, &[], GARAGE_TIMEOUT, || {
            run(garage.cli().arg("status"))
        });
        let node_id = wait_for("garage node id", &garage.proc, &[], GARAGE_TIMEOUT, || {
            let out = run(garage.cli().args(["node", "id", "-q"]))?;
            out.trim()
                .split('@')
                .next()
                .filter(|id| !id.is_empty())
                .map(str::to_owned)
                .ok_or_else(|| format!("unexpected `garage node id -q` output: {out:?}"))
        });
        garage.cli_ok(&["layout", "assign", "-z", "dc1", "-c", "1G", &node_id]);
        garage.cli_ok(&["layout", "apply", "--version", "1"]);
        let out = garage.cli_ok(&["key", "create", "kubestow-test"]);
        garage.key_id = field(&out, "Key ID").unwrap_or_else(|| {
            garage.proc.fail(&format!(
                "no `Key ID:` in `garage key create` output:\n{out}"
            ))
        });
        garage.secret_key = field(&out, "Secret key").unwrap_or_else(|| {
            garage.proc.fail(&format!(
                "no `Secret key:` in `garage key create` output:\n{out}"
            ))
        });
        garage
    }

    fn cli(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("-c").arg(&self.config).env("RUST_LOG", "warn");
        cmd
    }

    /// Runs a CLI command that must succeed, retrying while the freshly
    /// started node settles.
    fn cli_ok(&self, args: &[&str]) -> String {
        wait_for(
            &format!("`garage {}`", args.join(" ")),
            &self.proc,
            &[],
            GARAGE_TIMEOUT,
            || run(self.cli().args(args)),
        )
    }

    /// Creates `name` and gives the test key read, write and owner rights.
    pub(crate) async fn create_bucket(&self, name: &str) {
        self.cli_async(&["bucket", "create", name]).await;
        self.cli_async(&[
            "bucket",
            "allow",
            "--read",
            "--write",
            "--owner",
            name,
            "--key",
            &self.key_id,
        ])
        .await;
    }

    async fn cli_async(&self, args: &[&str]) {
        let deadline = tokio::time::Instant::now() + BUCKET_TIMEOUT;
        loop {
            let mut cmd = tokio::process::Command::from(self.cli());
            let out = cmd
                .args(args)
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true)
                .output()
                .await
                .unwrap_or_else(|e| panic!("test env: running garage {args:?}: {e}"));
            if out.status.success() {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "test env: `garage {}` failed ({}):\nstdout: {}\nstderr: {}\n--- {} ---\n{}",
                    args.join(" "),
                    out.status,
                    String::from_utf8_lossy(&out.stdout).trim(),
                    String::from_utf8_lossy(&out.stderr).trim(),
                    self.proc.log.display(),
                    self.proc.log_tail(30),
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A fresh S3 client for the test key (bound to the calling runtime).
    pub(crate) fn client(&self) -> aws_sdk_s3::Client {
        use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(&self.s3_url)
            .force_path_style(true)
            .region(Region::new(REGION))
            .credentials_provider(Credentials::new(
                &self.key_id,
                &self.secret_key,
                None,
                None,
                "kubestow-test-env",
            ))
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }
}

/// The value of a `Name: value` line (any indentation and padding).
fn field(output: &str, name: &str) -> Option<String> {
    output.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == name)
            .then(|| value.trim().to_owned())
            .filter(|v| !v.is_empty())
    })
}
