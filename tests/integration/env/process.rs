//! Child-process plumbing: supervised spawning, log capture, free ports and
//! readiness polling.
//!
//! Every server is spawned from one dedicated, never-ending thread through
//! `setpriv --pdeathsig KILL --`. The kernel delivers the parent-death signal
//! when the *thread* that forked the child exits, so spawning from a test
//! thread (which ends with its test) would kill the servers early; the
//! supervisor thread only ends when the whole test process does, and then every
//! server gets SIGKILL, whatever the way the process ended (normal exit, panic,
//! SIGKILL of the test binary).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs::File;
use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

const KEEP_HINT: &str = "set KUBESTOW_KEEP_TEST_ENV=1 to keep it after the run";

type SpawnReply = mpsc::Sender<io::Result<Child>>;

static SPAWNER: OnceLock<Mutex<mpsc::Sender<(Command, SpawnReply)>>> = OnceLock::new();

/// Spawns `cmd` from the supervisor thread (see the module docs).
pub(crate) fn spawn_supervised(cmd: Command) -> io::Result<Child> {
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<(Command, SpawnReply)>();
        std::thread::Builder::new()
            .name("test-env-supervisor".into())
            .spawn(move || {
                // The sender lives in a static that is never dropped, so this
                // loop (and the thread) lasts until the process exits.
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawning the test-env supervisor thread");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, reply_tx))
        .expect("test-env supervisor thread is gone");
    reply_rx.recv().expect("test-env supervisor thread is gone")
}

/// `setpriv --pdeathsig <signal> -- program`, or a clear panic if util-linux's
/// setpriv is not installed.
pub(crate) fn deathsig_command(signal: &str, program: &Path) -> Command {
    static SETPRIV: OnceLock<PathBuf> = OnceLock::new();
    let setpriv = SETPRIV.get_or_init(|| {
        find_in_path("setpriv").unwrap_or_else(|| {
            panic!(
                "`setpriv` (util-linux) is not on PATH; the integration-test environment \
                 needs it so that servers die with the test process"
            )
        })
    });
    let mut cmd = Command::new(setpriv);
    cmd.args(["--pdeathsig", signal, "--"]).arg(program);
    cmd
}

pub(crate) fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

pub(crate) fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// A long-running server whose stdout and stderr go to `log`.
pub(crate) struct Proc {
    pub(crate) name: String,
    pub(crate) log: PathBuf,
    child: Mutex<Child>,
}

impl Proc {
    /// Starts `program args...` (killed with the test process) with its output
    /// in `<log_dir>/<name>.log`.
    pub(crate) fn start(
        name: &str,
        program: &Path,
        args: &[String],
        envs: &[(&str, &str)],
        log_dir: &Path,
    ) -> Proc {
        let log = log_dir.join(format!("{name}.log"));
        let out = File::create(&log)
            .unwrap_or_else(|e| panic!("creating log file {}: {e}", log.display()));
        let err = out.try_clone().expect("cloning log file handle");
        let mut cmd = deathsig_command("KILL", program);
        cmd.args(args)
            .envs(envs.iter().copied())
            .current_dir(log_dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = spawn_supervised(cmd)
            .unwrap_or_else(|e| panic!("test env: starting {name} ({}): {e}", program.display()));
        Proc {
            name: name.to_owned(),
            log,
            child: Mutex::new(child),
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.lock().unwrap_or_else(|e| e.into_inner()).id()
    }

    /// `Some(status)` once the process has exited.
    pub(crate) fn exited(&self) -> Option<ExitStatus> {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        child.try_wait().ok().flatten()
    }

    pub(crate) fn kill(&self) {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }

    /// The last `lines` lines of the log, for failure messages.
    pub(crate) fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }

    /// Panics with `what`, the exit status if any, and the log tail.
    pub(crate) fn fail(&self, what: &str) -> ! {
        let status = match self.exited() {
            Some(status) => format!(" ({} exited: {status})", self.name),
            None => String::new(),
        };
        panic!(
            "test env: {what}{status}\n--- last lines of {} ({KEEP_HINT}) ---\n{}\n--- end of {} ---",
            self.log.display(),
            self.log_tail(60),
            self.name,
        )
    }
}

pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            let mut out = String::new();
            for line in &all[start..] {
                let _ = writeln!(out, "{line}");
            }
            out
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// `N` ports that were free on 127.0.0.1 a moment ago and were never handed
/// out before in this process (servers start concurrently, so two callers
/// must not get the same just-released port).
pub(crate) fn free_ports<const N: usize>() -> [u16; N] {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    // Listeners are held until all ports are chosen, so they differ.
    let mut listeners = Vec::new();
    let mut ports = Vec::new();
    while ports.len() < N {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        if handed_out.insert(port) {
            ports.push(port);
        }
        listeners.push(listener);
    }
    std::array::from_fn(|i| ports[i])
}

/// Polls `check` every 100–500 ms until it returns `Ok(value)`, failing with
/// the log tail of `proc` on timeout or if `proc` (or any of `also`) exits.
/// The last `Err` from `check` is part of the timeout message.
pub(crate) fn wait_for<T>(
    what: &str,
    proc: &Proc,
    also: &[&Proc],
    timeout: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let start = Instant::now();
    let mut delay = Duration::from_millis(100);
    loop {
        let last = match check() {
            Ok(value) => return value,
            Err(e) => e,
        };
        for p in std::iter::once(proc).chain(also.iter().copied()) {
            if p.exited().is_some() {
                p.fail(&format!("{} died while waiting for {what}", p.name));
            }
        }
        if start.elapsed() > timeout {
            proc.fail(&format!(
                "timed out after {timeout:?} waiting for {what}; last error: {last}"
            ));
        }
        std::thread::sleep(delay);
        delay = (delay * 3 / 2).min(Duration::from_millis(500));
    }
}

/// Runs a short command to completion, returning stdout, or `Err` with the
/// status and both streams.
pub(crate) fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running {cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim(),
        ))
    }
}

/// Removes `dir` when the test process ends, by a tiny shell that sleeps
/// until its parent-death signal arrives (SIGTERM, sent at the same moment the
/// servers get SIGKILL), then deletes the directory.
pub(crate) fn remove_at_exit(dir: &Path) {
    let script = r#"trap 'kill $! 2>/dev/null; sleep 1; rm -rf -- "$0" || { sleep 2; rm -rf -- "$0"; }; exit 0' TERM
while :; do sleep 86400 & wait $!; done"#;
    let mut cmd = deathsig_command("TERM", Path::new("/bin/sh"));
    cmd.arg("-c")
        .arg(script)
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Err(e) = spawn_supervised(cmd) {
        eprintln!(
            "test env: cannot start the clean-up process for {}: {e}",
            dir.display()
        );
    }
}
