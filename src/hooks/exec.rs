//! Running one command: a local process, or an exec in a pod through the
//! API server's websocket. Both end within their timeout, keep a bounded
//! part of their output, and stop when cancelled.

use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, AttachParams};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::sync::CancellationToken;

/// Output kept per stream; the rest is counted and dropped, so a chatty
/// hook cannot flood the log or the memory.
pub const OUTPUT_LIMIT: usize = 32 * 1024;
/// How long output is still read after a process ended: a background
/// child it left may hold the pipes open for ever.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// A command that ran to its end.
#[derive(Debug, Default)]
pub struct Finished {
    /// `None` when killed by a signal (local) or when the server gave no
    /// code (exec).
    pub code: Option<i32>,
    /// Standard output: its first [`OUTPUT_LIMIT`] bytes, and a count of the rest.
    pub stdout: String,
    /// Standard error: its first [`OUTPUT_LIMIT`] bytes, and a count of the rest.
    pub stderr: String,
}

impl Finished {
    /// Whether the command exited with code 0.
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

/// Reads a stream to its end, keeping the first [`OUTPUT_LIMIT`] bytes.
async fn capture(mut r: impl AsyncRead + Unpin) -> String {
    let mut kept = Vec::new();
    let mut dropped = 0usize;
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = OUTPUT_LIMIT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
                dropped += n.saturating_sub(room);
            }
        }
    }
    let mut s = String::from_utf8_lossy(&kept).trim_end().to_string();
    if dropped > 0 {
        s.push_str(&format!("\n… [{dropped} more bytes not shown]"));
    }
    s
}

/// Variables besides the secret ones that a hook never sees: where the
/// passwords are, and the storage credentials.
const HIDDEN_FROM_HOOKS: &[&str] = &[
    crate::config::vars::PASSWORD_FILE,
    crate::config::vars::COPY_TO_PASSWORD_FILE,
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
];

/// Runs `argv` in its own process group, so that a timeout kills what it
/// started too (`sh -c 'sleep 30'` leaves no `sleep` behind).
pub async fn local(
    argv: &[String],
    env: &[(String, String)],
    timeout: Duration,
    cancel: &CancellationToken,
) -> Result<Finished, String> {
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    // Hooks need neither the repository's password nor the bucket's keys,
    // and their output is logged.
    for v in crate::config::vars::ALL.iter().filter(|v| v.secret) {
        cmd.env_remove(v.name);
    }
    for name in HIDDEN_FROM_HOOKS {
        cmd.env_remove(name);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start `{}`: {e}", argv[0]))?;
    let pid = child
        .id()
        .and_then(|p| rustix::process::Pid::from_raw(p as i32));
    // Should this future be dropped half-way, the group goes with it.
    let mut guard = KillGroup(pid);
    let out = child.stdout.take().map(|s| tokio::spawn(capture(s)));
    let err = child.stderr.take().map(|s| tokio::spawn(capture(s)));
    let ended = tokio::select! {
        s = child.wait() => s.map_err(|e| format!("waiting for `{}`: {e}", argv[0])),
        _ = tokio::time::sleep(timeout) => {
            guard.kill();
            let _ = child.wait().await;
            Err(format!("timed out after {}; killed", fmt_duration(timeout)))
        }
        _ = cancel.cancelled() => {
            guard.kill();
            let _ = child.wait().await;
            Err("cancelled by signal; killed".to_string())
        }
    };
    // Waited for: a process that ended on its own may leave children
    // behind on purpose, and its pid may be reused.
    guard.0 = None;
    let mut finished = Finished {
        code: None,
        stdout: drain(out).await,
        stderr: drain(err).await,
    };
    match ended {
        Ok(status) => {
            finished.code = status.code();
            if finished.code.is_none() {
                use std::os::unix::process::ExitStatusExt;
                finished.stderr.push_str(&format!(
                    "\n[killed by signal {}]",
                    status.signal().unwrap_or(0)
                ));
            }
            Ok(finished)
        }
        Err(e) => Err(with_output(e, &finished)),
    }
}

/// SIGKILL to a process group (the hook's own, see [`local`]).
struct KillGroup(Option<rustix::process::Pid>);

impl KillGroup {
    fn kill(&self) {
        if let Some(pid) = self.0 {
            // The group may be gone already; nothing to do then.
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
}

impl Drop for KillGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn drain(task: Option<tokio::task::JoinHandle<String>>) -> String {
    let Some(mut task) = task else {
        return String::new();
    };
    match tokio::time::timeout(DRAIN_GRACE, &mut task).await {
        Ok(Ok(s)) => s,
        _ => {
            task.abort();
            String::new()
        }
    }
}

/// Runs `argv` in `container` of pod `ns/pod` and reads the exit status
/// from the status channel.
pub async fn in_pod(
    client: kube::Client,
    ns: &str,
    pod: &str,
    container: &str,
    argv: &[String],
    timeout: Duration,
    cancel: &CancellationToken,
) -> Result<Finished, String> {
    let api: Api<Pod> = Api::namespaced(client, ns);
    let ap = AttachParams {
        container: Some(container.to_string()),
        stdin: false,
        stdout: true,
        stderr: true,
        tty: false,
        ..AttachParams::default()
    };
    let run = async {
        let mut proc = api
            .exec(pod, argv.to_vec(), &ap)
            .await
            .map_err(|e| exec_error(&e))?;
        let status = proc.take_status();
        let out = proc.stdout().map(capture);
        let err = proc.stderr().map(capture);
        let (stdout, stderr, status) = tokio::join!(
            async {
                match out {
                    Some(f) => f.await,
                    None => String::new(),
                }
            },
            async {
                match err {
                    Some(f) => f.await,
                    None => String::new(),
                }
            },
            async {
                match status {
                    Some(f) => f.await,
                    None => None,
                }
            },
        );
        let _ = proc.join().await;
        let mut finished = Finished {
            code: None,
            stdout,
            stderr,
        };
        match status {
            Some(s) => {
                finished.code = exit_code(&s);
                if finished.code.is_none() {
                    return Err(with_output(
                        format!(
                            "failed: {}",
                            s.message.unwrap_or_else(|| s.reason.unwrap_or_default())
                        ),
                        &finished,
                    ));
                }
                Ok(finished)
            }
            None => Err(with_output(
                "the connection closed without an exit status".into(),
                &finished,
            )),
        }
    };
    // The remote process cannot be killed through the API; dropping the
    // connection is all a timeout can do (the container may keep it running).
    tokio::select! {
        r = tokio::time::timeout(timeout, run) => r.unwrap_or_else(|_| Err(format!(
            "timed out after {}; the connection was closed, but the command may still run in the container",
            fmt_duration(timeout)
        ))),
        _ = cancel.cancelled() => Err("cancelled by signal".into()),
    }
}

/// The exit code a remote-command Status carries: 0 for `Success`, the
/// `ExitCode` cause for `NonZeroExitCode`.
pub fn exit_code(s: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Status) -> Option<i32> {
    if s.status.as_deref() == Some("Success") {
        return Some(0);
    }
    if s.reason.as_deref() != Some("NonZeroExitCode") {
        return None;
    }
    s.details
        .as_ref()?
        .causes
        .as_ref()?
        .iter()
        .find(|c| c.reason.as_deref() == Some("ExitCode"))?
        .message
        .as_deref()?
        .parse()
        .ok()
}

/// kube's upgrade errors carry the API server's answer; show it.
fn exec_error(e: &kube::Error) -> String {
    let mut s = crate::cluster::api::message(e);
    if let kube::Error::Api(st) = e
        && st.code == 403
    {
        s.push_str(" (the service account needs `create` on pods/exec)");
    }
    s
}

fn with_output(mut msg: String, f: &Finished) -> String {
    let tail = |s: &str| {
        let s = s.trim();
        match s.char_indices().rev().nth(499) {
            Some((i, _)) => format!("…{}", &s[i..]),
            None => s.to_string(),
        }
    };
    if !f.stderr.trim().is_empty() {
        msg.push_str(&format!("; stderr: {}", tail(&f.stderr)));
    } else if !f.stdout.trim().is_empty() {
        msg.push_str(&format!("; stdout: {}", tail(&f.stdout)));
    }
    msg
}

/// A duration for messages: whole seconds as `30s`, else tenths (`1.5s`).
pub fn fmt_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}
