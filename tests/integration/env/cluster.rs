//! etcd, kube-apiserver and kube-controller-manager.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use kube::api::{Api, ObjectMeta, PostParams};

use super::pki::Pki;
use super::process::{Proc, free_ports, wait_for};
use super::{ServerVersion, binary, k8s_release, random_hex};

const ETCD_TIMEOUT: Duration = Duration::from_secs(30);
const APISERVER_TIMEOUT: Duration = Duration::from_secs(120);
const CONTROLLER_MANAGER_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `Cluster::namespace` waits for the controller-populated objects.
const NAMESPACE_SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) const SERVICE_ACCOUNT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

pub(crate) struct Etcd {
    pub(crate) url: String,
    pub(crate) proc: Proc,
}

impl Etcd {
    pub(crate) fn start(dir: &Path) -> Etcd {
        let etcd = binary::etcd();
        let [client_port, peer_port] = free_ports::<2>();
        let url = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let args = [
            "--name=default".to_owned(),
            format!("--data-dir={}", dir.join("etcd-data").display()),
            format!("--listen-client-urls={url}"),
            format!("--advertise-client-urls={url}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster=default={peer}"),
            "--initial-cluster-state=new".to_owned(),
            "--initial-cluster-token=kubestow-test".to_owned(),
            // 8 GiB: generous, so long benchmark runs never hit the alarm.
            "--quota-backend-bytes=8589934592".to_owned(),
            "--logger=zap".to_owned(),
            "--log-level=warn".to_owned(),
        ];
        let proc = Proc::start("etcd", &etcd, &args, &[], dir);
        let addr: SocketAddr = ([127, 0, 0, 1], client_port).into();
        wait_for("etcd /health", &proc, &[], ETCD_TIMEOUT, || {
            let body = http_get(addr, "/health")?;
            if body.contains(r#""health":"true""#) {
                Ok(())
            } else {
                Err(format!("unhealthy: {body}"))
            }
        });
        Etcd { url, proc }
    }
}

/// Minimal blocking HTTP/1.0 GET (etcd only speaks plain HTTP here).
fn http_get(addr: SocketAddr, path: &str) -> Result<String, String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    Ok(response)
}

/// One Kubernetes control plane (apiserver + controller-manager) whose state
/// lives under its own `--etcd-prefix` in the shared etcd.
pub struct Cluster {
    name: String,
    server: String,
    etcd_prefix: String,
    kubeconfig: PathBuf,
    pub(crate) apiserver: Proc,
    pub(crate) controller_manager: Proc,
}

impl Cluster {
    /// Starts an apiserver on `etcd` under `etcd_prefix` plus its
    /// controller-manager, all state in `dir`; returns once the apiserver is
    /// ready and the controller-manager has populated the `default`
    /// namespace. Must run outside any tokio runtime.
    pub(crate) fn start(name: &str, etcd_prefix: &str, dir: &Path, pki: &Pki, etcd: &Etcd) -> Self {
        std::fs::create_dir_all(dir).expect("creating cluster dir");
        let apiserver_bin = binary::kubernetes("kube-apiserver");
        let kcm_bin = binary::kubernetes("kube-controller-manager");
        let [port] = free_ports::<1>();
        let server = format!("https://127.0.0.1:{port}");

        let token = random_hex(24);
        let token_file = dir.join("tokens.csv");
        std::fs::write(
            &token_file,
            format!("{token},admin,admin-uid,\"system:masters\"\n"),
        )
        .expect("writing token file");
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            kubeconfig_yaml(name, &server, &pki.ca_pem, &token),
        )
        .expect("writing kubeconfig");
        let cert_dir = dir.join("apiserver-certs");
        std::fs::create_dir_all(&cert_dir).expect("creating cert dir");

        let release = k8s_release();
        let p = |path: &Path| path.display().to_string();
        let mut apiserver_args = vec![
            format!("--etcd-servers={}", etcd.url),
            format!("--etcd-prefix={etcd_prefix}"),
            "--bind-address=127.0.0.1".to_owned(),
            format!("--secure-port={port}"),
            "--advertise-address=127.0.0.1".to_owned(),
            format!("--cert-dir={}", p(&cert_dir)),
            format!("--tls-cert-file={}", p(&pki.serving_cert)),
            format!("--tls-private-key-file={}", p(&pki.serving_key)),
            format!("--client-ca-file={}", p(&pki.ca_cert)),
            format!("--token-auth-file={}", p(&token_file)),
            format!("--service-account-key-file={}", p(&pki.sa_pub)),
            format!("--service-account-signing-key-file={}", p(&pki.sa_key)),
            format!("--service-account-issuer={SERVICE_ACCOUNT_ISSUER}"),
            format!("--api-audiences={SERVICE_ACCOUNT_ISSUER}"),
            "--service-cluster-ip-range=10.96.0.0/16".to_owned(),
            "--authorization-mode=RBAC".to_owned(),
            "--allow-privileged=true".to_owned(),
            // The lease reconciler would try to publish 127.0.0.1 as the
            // `kubernetes` endpoint, which endpoint validation rejects.
            "--endpoint-reconciler-type=none".to_owned(),
            "--profiling=false".to_owned(),
        ];
        if release.has_insecure_ports() {
            // 1.20 still opens an insecure port on 8080 by default (the flag
            // is gone from 1.24 on).
            apiserver_args.push("--insecure-port=0".to_owned());
        }
        let apiserver = Proc::start(
            &format!("{name}-kube-apiserver"),
            &apiserver_bin,
            &apiserver_args,
            &[],
            dir,
        );

        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("building a tokio runtime for start-up checks");
        let client = rt
            .block_on(client_from_kubeconfig(&kubeconfig))
            .unwrap_or_else(|e| apiserver.fail(&e));
        wait_for(
            "kube-apiserver /readyz",
            &apiserver,
            &[],
            APISERVER_TIMEOUT,
            || {
                rt.block_on(async {
                    let request = http::Request::get("/readyz")
                        .body(Vec::new())
                        .map_err(|e| e.to_string())?;
                    match client.request_text(request).await {
                        Ok(body) if body.trim() == "ok" => Ok(()),
                        Ok(body) => Err(format!("/readyz said {body:?}")),
                        Err(e) => Err(e.to_string()),
                    }
                })
            },
        );

        let version = rt
            .block_on(server_version(&client))
            .unwrap_or_else(|e| apiserver.fail(&e));
        if version.semver() != release.version {
            apiserver.fail(&format!(
                "{} reports {}, not the requested {}",
                apiserver_bin.display(),
                version.git_version,
                release.version
            ));
        }

        let mut kcm_args = vec![
            format!("--kubeconfig={}", p(&kubeconfig)),
            "--leader-elect=false".to_owned(),
            "--bind-address=127.0.0.1".to_owned(),
            // No serving at all: 0 disables the secure port (and, with
            // `--port=0` below, 1.20's insecure one).
            "--secure-port=0".to_owned(),
            format!("--service-account-private-key-file={}", p(&pki.sa_key)),
            format!("--root-ca-file={}", p(&pki.ca_cert)),
            format!("--cluster-signing-cert-file={}", p(&pki.ca_cert)),
            format!("--cluster-signing-key-file={}", p(&pki.ca_key)),
            "--use-service-account-credentials=false".to_owned(),
            "--controllers=*".to_owned(),
            format!("--cluster-name={name}"),
            "--profiling=false".to_owned(),
        ];
        if release.has_insecure_ports() {
            kcm_args.push("--port=0".to_owned());
        }
        let controller_manager = Proc::start(
            &format!("{name}-kube-controller-manager"),
            &kcm_bin,
            &kcm_args,
            &[],
            dir,
        );
        wait_for(
            "kube-controller-manager to create default/default ServiceAccount",
            &controller_manager,
            &[&apiserver],
            CONTROLLER_MANAGER_TIMEOUT,
            || rt.block_on(namespace_settled(&client, "default")),
        );

        Cluster {
            name: name.to_owned(),
            server,
            etcd_prefix: etcd_prefix.to_owned(),
            kubeconfig,
            apiserver,
            controller_manager,
        }
    }

    /// For a failure message about something the controller-manager should
    /// have done: whether it still runs, its log lines that mention
    /// `needle` (the last 30), and its last 20 lines.
    pub fn controller_manager_report(&self, needle: &str) -> String {
        let kcm = &self.controller_manager;
        let state = match kcm.exited() {
            Some(status) => format!("exited: {status}"),
            None => "running".to_owned(),
        };
        let text = std::fs::read_to_string(&kcm.log).unwrap_or_default();
        let hits: Vec<&str> = text.lines().filter(|l| l.contains(needle)).collect();
        format!(
            "{} is {state}; its lines on {needle} ({} in all, the last 30):\n{}\n--- its last 20 lines ({}) ---\n{}",
            kcm.name,
            hits.len(),
            hits[hits.len().saturating_sub(30)..].join("\n"),
            kcm.log.display(),
            kcm.log_tail(20),
        )
    }

    /// Short name of this cluster (`main`, `second`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `https://127.0.0.1:<port>`.
    pub fn server_url(&self) -> &str {
        &self.server
    }

    /// The `--etcd-prefix` this cluster's apiserver stores its objects under.
    pub fn etcd_prefix(&self) -> &str {
        &self.etcd_prefix
    }

    /// Admin kubeconfig (token auth, CA inline), for `KUBECONFIG=`.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// What the apiserver reports at `/version`.
    pub async fn server_version(&self) -> ServerVersion {
        server_version(&self.client().await)
            .await
            .unwrap_or_else(|e| panic!("test env: {e}"))
    }

    /// A fresh admin client (bound to the calling test's runtime).
    pub async fn client(&self) -> kube::Client {
        client_from_kubeconfig(&self.kubeconfig)
            .await
            .unwrap_or_else(|e| panic!("test env: {e}"))
    }

    /// Creates a fresh namespace named after `hint` and returns an admin
    /// client with its name. Returns once the controller-manager has filled it
    /// (ServiceAccount `default`, before 1.24 with its token Secret, and
    /// ConfigMap `kube-root-ca.crt`), so tests see a namespace that no longer
    /// changes by itself.
    pub async fn namespace(&self, hint: &str) -> (kube::Client, String) {
        let client = self.client().await;
        let name = super::unique_name(hint);
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(BTreeMap::from([(
                    "kubestow.test/fixture".to_owned(),
                    "true".to_owned(),
                )])),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("test env: creating namespace {name}: {e}"));
        let deadline = tokio::time::Instant::now() + NAMESPACE_SETTLE_TIMEOUT;
        loop {
            match namespace_settled(&client, &name).await {
                Ok(()) => break,
                Err(e) if tokio::time::Instant::now() > deadline => panic!(
                    "test env: namespace {name} not populated by kube-controller-manager \
                     within {NAMESPACE_SETTLE_TIMEOUT:?}: {e}\n--- {} ---\n{}",
                    self.controller_manager.log.display(),
                    self.controller_manager.log_tail(40)
                ),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        (client, name)
    }
}

/// `/version` of the apiserver behind `client`.
async fn server_version(client: &kube::Client) -> Result<ServerVersion, String> {
    let info = client
        .apiserver_version()
        .await
        .map_err(|e| format!("GET /version: {e}"))?;
    // Some builds say e.g. minor "20+"; the digits are what counts.
    let number = |s: &str| -> Result<u32, String> {
        s.trim_end_matches('+')
            .parse()
            .map_err(|_| format!("/version: odd version {info:?}"))
    };
    Ok(ServerVersion {
        major: number(&info.major)?,
        minor: number(&info.minor)?,
        git_version: info.git_version.clone(),
    })
}

/// `Ok` once `namespace` holds the objects the controller-manager creates in
/// every namespace.
async fn namespace_settled(client: &kube::Client, namespace: &str) -> Result<(), String> {
    let sa = Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .get_opt("default")
        .await
        .map_err(|e| e.to_string())?
        .ok_or("no ServiceAccount default yet")?;
    if k8s_release().has_token_secrets() && sa.secrets.as_ref().is_none_or(|s| s.is_empty()) {
        return Err("ServiceAccount default has no token Secret yet".into());
    }
    Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .get_opt("kube-root-ca.crt")
        .await
        .map_err(|e| e.to_string())?
        .ok_or("no ConfigMap kube-root-ca.crt yet")?;
    Ok(())
}

pub(crate) async fn client_from_kubeconfig(path: &Path) -> Result<kube::Client, String> {
    // rustls has both ring and aws-lc-rs enabled in this dependency graph, so
    // a process-wide provider must be chosen before kube builds its config.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kubeconfig = kube::config::Kubeconfig::read_from(path)
        .map_err(|e| format!("reading kubeconfig {}: {e}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .map_err(|e| format!("loading kubeconfig {}: {e}", path.display()))?;
    kube::Client::try_from(config).map_err(|e| format!("building kube client: {e}"))
}

fn kubeconfig_yaml(name: &str, server: &str, ca_pem: &str, token: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: kubestow-{name}
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: admin
  user:
    token: {token}
contexts:
- name: kubestow-{name}
  context:
    cluster: kubestow-{name}
    user: admin
    namespace: default
current-context: kubestow-{name}
"
    )
}
