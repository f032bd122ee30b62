//! Resume and the reconnect window, through the real binary:
//!
//! - a `volume-backup` killed with SIGKILL at several points and run again
//!   uploads again only a small part of what the killed run stored, and
//!   restores byte for byte; an interrupted `volume-restore` run again
//!   keeps the files it had finished;
//! - Garage and the API server behind a TCP proxy that is cut for a while:
//!   a network loss, without stopping the servers every other test shares.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kubestow::config::{Compression, Secret};
use kubestow::repo::backend::{Backend, S3Backend};
use kubestow::repo::{OpenOptions, PackId, Repository, pack_id_from_key};
use kubestow::volume::compare::compare_trees;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::binary::{self, Run};
use crate::env;

const PW: &str = "resume-test-password";
const MIB: u64 = 1 << 20;
const VOLUME: &str = "shop/data-db-0";

// ---------------------------------------------------------------- data

/// Files of mixed sizes under `root`: `big` files of 24 MiB, 1.5 MiB ones,
/// 100 KiB ones and tiny ones, in a few directories. Returns the bytes.
fn make_data(root: &Path, big: u64, mid: u64, small: u64) -> u64 {
    let mut total = 0;
    let mut put = |rel: String, len: u64, seed: u64| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, kubestow::repo::fixture::bytes(len as usize, seed)).unwrap();
        total += len;
    };
    for i in 0..big {
        put(format!("big/file-{i}"), 24 * MIB, 1000 + i);
    }
    for i in 0..mid {
        put(format!("mid/d{}/file-{i}", i % 5), 3 * MIB / 2, 2000 + i);
    }
    for i in 0..small {
        put(format!("small/d{}/file-{i}", i % 10), 100 << 10, 3000 + i);
    }
    for i in 0..100 {
        put(format!("tiny/file-{i}"), 1024 + 37 * i, 4000 + i);
    }
    total
}

// ---------------------------------------------------------------- runs

fn volume_cmd(mode: &str, repo: &str, path: &Path) -> std::process::Command {
    let mut cmd = binary::command();
    cmd.arg(mode)
        .env("STOW_REPOSITORY", repo)
        .env("STOW_PASSWORD", PW)
        .env("STOW_VOLUME_PATH", path)
        .env("STOW_VOLUME_NAME", VOLUME)
        .env("STOW_INIT", "true");
    cmd
}

/// A kubestow process whose stderr is read line by line, so a test can act
/// on what it logs.
struct Running {
    child: tokio::process::Child,
    lines: mpsc::UnboundedReceiver<String>,
    stderr: Arc<Mutex<String>>,
    stdout: tokio::task::JoinHandle<String>,
}

impl Running {
    fn spawn(cmd: std::process::Command) -> Running {
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("start kubestow");
        let (tx, lines) = mpsc::unbounded_channel();
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = BufReader::new(child.stderr.take().unwrap()).lines();
        let all = stderr.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = err.next_line().await {
                let mut a = all.lock().unwrap();
                a.push_str(&line);
                a.push('\n');
                drop(a);
                let _ = tx.send(line);
            }
        });
        let mut out = child.stdout.take().unwrap();
        let stdout = tokio::spawn(async move {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s).await;
            s
        });
        Running {
            child,
            lines,
            stderr,
            stdout,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id().expect("still running")
    }

    /// Waits for a stderr line containing `pattern`; `false` if the
    /// process ended first or `timeout` passed.
    async fn wait_line(&mut self, pattern: &str, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(l)) if l.contains(pattern) => return true,
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return false,
            }
        }
    }

    fn kill(&mut self) {
        self.child.start_kill().expect("SIGKILL");
    }

    fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    async fn finish(mut self) -> Run {
        let status = self.child.wait().await.unwrap();
        let stdout = self.stdout.await.unwrap();
        // Let the reader take the last lines.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let stderr = self.stderr.lock().unwrap().clone();
        let summary = stdout
            .lines()
            .last()
            .and_then(|l| serde_json::from_str(l).ok())
            .unwrap_or(serde_json::Value::Null);
        Run {
            code: status.code(),
            summary,
            stdout,
            stderr,
        }
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[track_caller]
fn assert_success(run: &Run) {
    assert!(
        run.code == Some(0) && run.summary["status"] == "success",
        "exit {:?}\n--- stdout\n{}\n--- stderr (tail)\n{}",
        run.code,
        run.stdout,
        tail(&run.stderr, 40)
    );
}

fn bytes(run: &Run, key: &str) -> u64 {
    run.summary["bytes"][key].as_u64().unwrap_or(0)
}

fn count(run: &Run, key: &str) -> u64 {
    run.summary["counts"][key].as_u64().unwrap_or(0)
}

// ---------------------------------------------------------------- the bucket

async fn open(bucket: &str) -> Repository {
    let backend: Arc<dyn Backend> = Arc::new(S3Backend::new(env::s3_client(), bucket, ""));
    OpenOptions::new(backend, &Secret::new(PW))
        .compression(Compression::FAST)
        .open()
        .await
        .unwrap()
}

async fn objects(bucket: &str, prefix: &str) -> Vec<(String, u64)> {
    S3Backend::new(env::s3_client(), bucket, "")
        .list(prefix)
        .await
        .unwrap()
        .into_iter()
        .map(|o| (o.key, o.size))
        .collect()
}

/// What a killed run left: every pack with its size, and those no index
/// object lists (a rerun cannot know their blobs).
struct Left {
    packs: BTreeMap<PackId, u64>,
    orphans: Vec<PackId>,
}

impl Left {
    async fn of(bucket: &str) -> Left {
        let packs: BTreeMap<PackId, u64> = objects(bucket, "data/")
            .await
            .into_iter()
            .filter_map(|(k, size)| pack_id_from_key(&k).map(|id| (id, size)))
            .collect();
        let indexed: HashSet<PackId> = open(bucket).await.packs().into_iter().collect();
        let orphans = packs
            .keys()
            .filter(|p| !indexed.contains(p))
            .copied()
            .collect();
        Left { packs, orphans }
    }

    fn stored(&self) -> u64 {
        self.packs.values().sum()
    }

    /// Stored bytes of the blobs of the orphans that the rerun stored
    /// again elsewhere: what was uploaded twice.
    async fn uploaded_again(&self, bucket: &str) -> u64 {
        let repo = open(bucket).await;
        let mut again = 0;
        for pack in &self.orphans {
            for (blob, entry) in repo.read_pack_header(pack).await.unwrap() {
                if repo.index_entry(&blob).is_some_and(|e| e.pack != *pack) {
                    again += entry.length;
                }
            }
        }
        again
    }
}

/// Waits until `cond` holds on the bucket, polling fast: the kill must
/// land close to the moment the condition became true.
async fn poll_bucket(
    run: &mut Running,
    what: &str,
    timeout: Duration,
    mut cond: impl AsyncFnMut() -> bool,
) {
    let deadline = Instant::now() + timeout;
    while !cond().await {
        assert!(run.is_running(), "the backup ended before {what}");
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------- SIGKILL

#[derive(Debug, Clone, Copy)]
enum KillPoint {
    /// Packs are being uploaded.
    Upload,
    /// Right after a checkpoint: some files are complete, others not.
    BetweenFiles,
    /// Every file is read: the last packs, the last index object and the
    /// snapshot are being stored.
    Commit,
}

/// Packs stored before the kill, of about 17 in all: early enough that the
/// paced run (see `kill_and_resume`) has well over ten seconds left. A pack
/// stored but not yet indexed when the kill lands (possible within the
/// milliseconds its index object takes) is adopted by the rerun, so
/// nothing stored is uploaded again.
const PACKS_BEFORE_KILL: usize = 4;

/// Starts a backup, kills it at `point`, runs it again (a new run id, as
/// by hand), and restores into a fresh directory.
async fn kill_and_resume(point: KillPoint) {
    let (_s3, bucket) = env::bucket(&format!("kill-{point:?}")).await;
    let repo = format!("s3://{bucket}/");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let total = make_data(&src, 6, 60, 400);
    let started = Instant::now();

    let mut first = volume_cmd("volume-backup", &repo, &src);
    first.env("STOW_RUN_ID", format!("kill-{point:?}-1"));
    // Paced (290 MB at 12 MiB/s: about 23 s), so the kill lands while the
    // run is still uploading. Unpaced they take about 6 s here, and twice in
    // CI the run ended between the poll that saw its moment and the kill
    // (the second time at 24 MiB/s and 12 packs before the kill).
    first.env("STOW_RATE_LIMIT", "12MiB");
    let mut run = Running::spawn(first);
    let timeout = Duration::from_secs(180);
    match point {
        KillPoint::Upload => {
            // Kill when every stored pack is indexed: a pack that is
            // being uploaded is not visible, and must be uploaded again.
            poll_bucket(&mut run, "packs", timeout, async || {
                objects(&bucket, "data/").await.len() >= PACKS_BEFORE_KILL
            })
            .await;
            let reader = open(&bucket).await;
            poll_bucket(&mut run, "every pack indexed", timeout, async || {
                let packs = objects(&bucket, "data/").await;
                reader.reload_index().await.unwrap();
                let indexed: HashSet<PackId> = reader.packs().into_iter().collect();
                packs
                    .iter()
                    .all(|(k, _)| pack_id_from_key(k).is_some_and(|p| indexed.contains(&p)))
            })
            .await
        }
        KillPoint::BetweenFiles => {
            poll_bucket(&mut run, "packs", timeout, async || {
                objects(&bucket, "data/").await.len() >= PACKS_BEFORE_KILL
            })
            .await;
            let seen = objects(&bucket, "checkpoints/").await.len();
            poll_bucket(&mut run, "a checkpoint", timeout, async || {
                objects(&bucket, "checkpoints/").await.len() > seen
            })
            .await
        }
        KillPoint::Commit => assert!(
            run.wait_line("all files read", timeout).await,
            "no commit: {}",
            run.stderr.lock().unwrap()
        ),
    }
    run.kill();
    let killed = run.finish().await;
    assert_eq!(killed.code, None, "killed by a signal: {}", killed.stdout);
    let left = Left::of(&bucket).await;
    let snapshots = objects(&bucket, "snapshots/").await.len();

    let mut again = volume_cmd("volume-backup", &repo, &src);
    again.env("STOW_RUN_ID", format!("kill-{point:?}-2"));
    let rerun = Running::spawn(again).finish().await;
    assert_success(&rerun);
    let uploaded_again = left.uploaded_again(&bucket).await;
    eprintln!(
        "kill during {point:?}: {total} bytes of files; the killed run stored {} bytes in {} \
         packs ({} not indexed), {snapshots} snapshot(s); the rerun read {} bytes, took {} files \
         ({} bytes) from checkpoints and {} bytes from a parent, deduplicated {} bytes, \
         uploaded {} bytes ({} new), of which {uploaded_again} bytes had been stored already \
         ({:.2}%); {:.1?} in all",
        left.stored(),
        left.packs.len(),
        left.orphans.len(),
        bytes(&rerun, "read"),
        count(&rerun, "resumed"),
        bytes(&rerun, "resumed"),
        bytes(&rerun, "reused"),
        bytes(&rerun, "deduplicated"),
        bytes(&rerun, "stored"),
        bytes(&rerun, "new"),
        100.0 * uploaded_again as f64 / left.stored().max(1) as f64,
        started.elapsed(),
    );
    assert!(left.stored() > 0, "the kill came before any upload");
    assert_eq!(
        uploaded_again,
        0,
        "uploaded again {uploaded_again} of {} stored bytes",
        left.stored()
    );
    if !left.orphans.is_empty() {
        assert!(rerun.stderr.contains("adopted packs"), "{}", rerun.stderr);
    }
    match point {
        // Files already stored are not read again.
        KillPoint::BetweenFiles => assert!(count(&rerun, "resumed") > 0, "{}", rerun.stdout),
        // Most files come from checkpoints (unless the snapshot made it
        // before the kill: then from it).
        KillPoint::Commit => assert!(
            count(&rerun, "resumed") > 0 || snapshots > 0,
            "{}",
            rerun.stdout
        ),
        KillPoint::Upload => {}
    }

    let dst = dir.path().join("dst");
    if let KillPoint::Commit = point {
        // An interrupted restore, too: killed halfway, run again.
        let mut restore = Running::spawn(volume_cmd("volume-restore", &repo, &dst));
        let deadline = Instant::now() + timeout;
        while tree_bytes(&dst) < total / 2 {
            assert!(restore.is_running(), "the restore ended before half");
            assert!(Instant::now() < deadline, "restore too slow");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        restore.kill();
        restore.finish().await;
    }
    let restored = Running::spawn(volume_cmd("volume-restore", &repo, &dst))
        .finish()
        .await;
    assert_success(&restored);
    let diffs = compare_trees(&src, &dst);
    assert!(diffs.is_empty(), "{diffs:#?}");
    if let KillPoint::Commit = point {
        eprintln!(
            "restore run again after a kill: {} files ({} bytes) verified and kept, {} bytes written",
            count(&restored, "reused"),
            bytes(&restored, "reused"),
            bytes(&restored, "written")
        );
        assert!(
            bytes(&restored, "reused") > total / 4,
            "{}",
            restored.stdout
        );
        assert!(bytes(&restored, "written") < total, "{}", restored.stdout);
    }
}

/// A backup that indexes nothing before it is killed (`STOW_RESUME_BUFFER`
/// of 1 GiB, killed well within the 60 s checkpoint): every pack it stored
/// is an orphan. The rerun adopts them all and uploads none of it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_before_any_index_then_rerun_adopts_the_stored_packs() {
    let (_s3, bucket) = env::bucket("kill-adopt").await;
    let repo = format!("s3://{bucket}/");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_data(&src, 6, 60, 400);

    let mut first = volume_cmd("volume-backup", &repo, &src);
    first.env("STOW_RESUME_BUFFER", "1GiB");
    // Paced as in `kill_and_resume`, so the kill after 4 packs lands long
    // before the run could end (and index its packs).
    first.env("STOW_RATE_LIMIT", "12MiB");
    let mut run = Running::spawn(first);
    poll_bucket(&mut run, "4 packs", Duration::from_secs(50), async || {
        objects(&bucket, "data/").await.len() >= 4
    })
    .await;
    run.kill();
    let killed = run.finish().await;
    assert_eq!(killed.code, None, "killed by a signal: {}", killed.stdout);
    let left = Left::of(&bucket).await;
    assert!(left.packs.len() >= 4, "{:?}", left.packs);
    assert_eq!(left.orphans.len(), left.packs.len(), "nothing was indexed");

    let rerun = Running::spawn(volume_cmd("volume-backup", &repo, &src))
        .finish()
        .await;
    assert_success(&rerun);
    let again = left.uploaded_again(&bucket).await;
    eprintln!(
        "killed before any index: {} packs ({} bytes) left unindexed; the rerun uploaded {} bytes \
         ({} new), {again} of them stored before; log: {}",
        left.packs.len(),
        left.stored(),
        bytes(&rerun, "stored"),
        bytes(&rerun, "new"),
        rerun
            .stderr
            .lines()
            .find(|l| l.contains("adopted packs"))
            .unwrap_or("no adoption logged")
    );
    assert!(rerun.stderr.contains("adopted packs"), "{}", rerun.stderr);
    assert_eq!(again, 0, "uploaded again {again} bytes");
    let indexed: HashSet<PackId> = open(&bucket).await.packs().into_iter().collect();
    assert!(left.packs.keys().all(|p| indexed.contains(p)));

    let dst = dir.path().join("dst");
    let restored = Running::spawn(volume_cmd("volume-restore", &repo, &dst))
        .finish()
        .await;
    assert_success(&restored);
    assert!(compare_trees(&src, &dst).is_empty());
}

/// Bytes of the regular files under `root` (0 while it does not exist).
fn tree_bytes(root: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(root) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => tree_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_upload_then_rerun_resumes() {
    kill_and_resume(KillPoint::Upload).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_between_files_then_rerun_resumes() {
    kill_and_resume(KillPoint::BetweenFiles).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_commit_then_rerun_resumes() {
    kill_and_resume(KillPoint::Commit).await;
}

// ---------------------------------------------------------------- the proxy

/// A TCP forwarder to a server that can be cut: while cut, its port
/// refuses connections and every open connection is dropped, as when the
/// network to the server is lost. Shared servers stay up for other tests.
struct Proxy {
    port: u16,
    cut: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Forwards `127.0.0.1:<port>` to `upstream`; each chunk the server
    /// sends waits `delay` first (to slow a run down), if not zero.
    async fn start(upstream: SocketAddr, delay: Duration) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (cut, rx) = watch::channel(false);
        let task = tokio::spawn(Self::serve(listener, port, upstream, delay, rx));
        Proxy { port, cut, task }
    }

    fn url(&self, scheme: &str) -> String {
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    fn cut(&self) {
        self.cut.send_replace(true);
    }

    fn restore(&self) {
        self.cut.send_replace(false);
    }

    async fn serve(
        mut listener: TcpListener,
        port: u16,
        upstream: SocketAddr,
        delay: Duration,
        mut cut: watch::Receiver<bool>,
    ) {
        let for_connections = cut.clone();
        loop {
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        if let Ok((conn, _)) = accepted {
                            let cut = for_connections.clone();
                            tokio::spawn(Self::forward(conn, upstream, delay, cut));
                        }
                    }
                    _ = cut.wait_for(|c| *c) => break,
                }
            }
            // Closed: connections are refused until the cut ends.
            drop(listener);
            if cut.wait_for(|c| !*c).await.is_err() {
                return;
            }
            listener = loop {
                match TcpListener::bind(("127.0.0.1", port)).await {
                    Ok(l) => break l,
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            };
        }
    }

    async fn forward(
        inbound: TcpStream,
        upstream: SocketAddr,
        delay: Duration,
        mut cut: watch::Receiver<bool>,
    ) {
        let Ok(outbound) = TcpStream::connect(upstream).await else {
            return;
        };
        let (mut ri, mut wi) = inbound.into_split();
        let (mut ro, mut wo) = outbound.into_split();
        let up = async {
            let _ = tokio::io::copy(&mut ri, &mut wo).await;
        };
        let down = async {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                match ro.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if !delay.is_zero() {
                            tokio::time::sleep(delay).await;
                        }
                        if wi.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
        };
        // Whichever ends first ends the connection; a cut drops both sides.
        tokio::select! {
            _ = up => {}
            _ = down => {}
            _ = cut.wait_for(|c| *c) => {}
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn garage_addr() -> SocketAddr {
    env::s3_endpoint()
        .trim_start_matches("http://")
        .parse()
        .expect("Garage listens on 127.0.0.1:<port>")
}

/// `binary::command()` with the repository reached through `proxy`.
fn through(proxy: &Proxy, mut cmd: std::process::Command) -> std::process::Command {
    cmd.env("AWS_ENDPOINT_URL", proxy.url("http"));
    cmd
}

// ---------------------------------------------------------------- reconnect

/// Garage out of reach for 20 s in the middle of a backup, within a 1 min
/// window: the backup waits, goes on, completes; `check` passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repository_outage_shorter_than_the_window_is_survived() {
    let (_s3, bucket) = env::bucket("outage-survived").await;
    let repo = format!("s3://{bucket}/");
    let proxy = Proxy::start(garage_addr(), Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_data(&src, 2, 20, 50);

    let mut cmd = through(&proxy, volume_cmd("volume-backup", &repo, &src));
    cmd.env("STOW_RECONNECT_TIMEOUT", "1m");
    let mut run = Running::spawn(cmd);
    poll_bucket(&mut run, "2 packs", Duration::from_secs(60), async || {
        objects(&bucket, "data/").await.len() >= 2
    })
    .await;
    proxy.cut();
    let cut_at = Instant::now();
    assert!(
        run.wait_line("repository connection lost", Duration::from_secs(20))
            .await,
        "{}",
        run.stderr.lock().unwrap()
    );
    tokio::time::sleep_until((cut_at + Duration::from_secs(20)).into()).await;
    assert!(run.is_running(), "the backup must wait for the repository");
    proxy.restore();
    let done = run.finish().await;
    assert_success(&done);
    let lost = done.stderr.find("repository connection lost").unwrap();
    let back = done
        .stderr
        .find("repository connection is back")
        .unwrap_or_else(|| panic!("{}", done.stderr));
    assert!(lost < back);
    eprintln!(
        "repository outage of 20 s: backup done {:.1?} after the cut; log:\n{}",
        cut_at.elapsed(),
        done.stderr
            .lines()
            .filter(|l| l.contains("repository connection"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    let mut check = binary::command();
    check
        .arg("check")
        .env("STOW_REPOSITORY", &repo)
        .env("STOW_PASSWORD", PW)
        .env("STOW_CHECK_READ_DATA", "all");
    let checked = binary::run(check).await;
    assert_success(&checked);
    let dst = dir.path().join("dst");
    let restored = binary::run(volume_cmd("volume-restore", &repo, &dst)).await;
    assert_success(&restored);
    assert!(compare_trees(&src, &dst).is_empty());
}

/// Garage out of reach for longer than the window: the backup fails with
/// an error naming the repository, the endpoint and the window; run again
/// once the network is back, it resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repository_outage_longer_than_the_window_fails_then_resumes() {
    let (_s3, bucket) = env::bucket("outage-too-long").await;
    let repo = format!("s3://{bucket}/");
    let proxy = Proxy::start(garage_addr(), Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_data(&src, 2, 20, 50);

    let mut cmd = through(&proxy, volume_cmd("volume-backup", &repo, &src));
    cmd.env("STOW_RECONNECT_TIMEOUT", "1m");
    let mut run = Running::spawn(cmd);
    // Cut after a checkpoint if the backup is slow enough to save one.
    poll_bucket(
        &mut run,
        "a checkpoint or 3 packs",
        Duration::from_secs(60),
        async || {
            !objects(&bucket, "checkpoints/").await.is_empty()
                || objects(&bucket, "data/").await.len() >= 3
        },
    )
    .await;
    // Timed from the cut itself: the listing below takes a moment, and
    // the run may see the outage (and start its window) during it.
    let cut_at = Instant::now();
    proxy.cut();
    let checkpointed = !objects(&bucket, "checkpoints/").await.is_empty();
    // The window is at least a minute; the cut lasts until the run gives up.
    let deadline = cut_at + Duration::from_secs(90);
    while run.is_running() {
        assert!(Instant::now() < deadline, "still running after 90 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let failed = run.finish().await;
    let gave_up_after = cut_at.elapsed();
    proxy.restore();
    assert_eq!(failed.code, Some(1), "{}", failed.stdout);
    assert_eq!(failed.summary["status"], "failed");
    let reason = failed.summary["reason"].as_str().unwrap_or_default();
    for part in [
        bucket.as_str(),
        "STOW_RECONNECT_TIMEOUT=1m",
        &proxy.url("http"),
    ] {
        assert!(reason.contains(part), "{part:?} not in {reason}");
    }
    assert!(
        gave_up_after >= Duration::from_secs(60),
        "{gave_up_after:?}"
    );
    eprintln!(
        "repository outage longer than the window: failed after {gave_up_after:.1?}: {reason}"
    );
    let left = Left::of(&bucket).await;

    let rerun = binary::run(through(&proxy, volume_cmd("volume-backup", &repo, &src))).await;
    assert_success(&rerun);
    let again = left.uploaded_again(&bucket).await;
    eprintln!(
        "rerun: stored before {} bytes ({} packs, {} not indexed); uploaded again {again} bytes; \
         resumed {} bytes, read {} bytes, new {} bytes",
        left.stored(),
        left.packs.len(),
        left.orphans.len(),
        bytes(&rerun, "resumed"),
        bytes(&rerun, "read"),
        bytes(&rerun, "new")
    );
    // A pack stored but not indexed when the cut came is adopted.
    assert_eq!(again, 0, "uploaded again {again} bytes");
    if !left.orphans.is_empty() {
        assert!(rerun.stderr.contains("adopted packs"), "{}", rerun.stderr);
    }
    // What was not checkpointed is read again, but not uploaded again.
    assert!(
        !checkpointed || bytes(&rerun, "resumed") > 0,
        "{}",
        rerun.stdout
    );
}

/// SIGTERM during the retries of an outage ends the run at once instead of
/// after the window (the retries stop waiting).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_retries_of_an_outage() {
    let (_s3, bucket) = env::bucket("outage-sigterm").await;
    let repo = format!("s3://{bucket}/");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_data(&src, 0, 2, 5);
    let made = binary::run(volume_cmd("volume-backup", &repo, &src)).await;
    assert_success(&made);

    let proxy = Proxy::start(garage_addr(), Duration::ZERO).await;
    proxy.cut();
    let mut check = through(&proxy, binary::command());
    check
        .arg("check")
        .env("STOW_REPOSITORY", &repo)
        .env("STOW_PASSWORD", PW)
        .env("STOW_RECONNECT_TIMEOUT", "5m");
    let mut run = Running::spawn(check);
    assert!(
        run.wait_line("repository connection lost", Duration::from_secs(30))
            .await,
        "{}",
        run.stderr.lock().unwrap()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let signalled = Instant::now();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(run.pid() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let done = run.finish().await;
    assert!(
        signalled.elapsed() < Duration::from_secs(3),
        "exited {:.1?} after SIGTERM",
        signalled.elapsed()
    );
    assert_eq!(done.code, Some(1), "{}", done.stdout);
    assert_eq!(done.summary["status"], "cancelled", "{}", done.stdout);
}

/// The API server out of reach for 10 s while a `backup` lists objects:
/// the run waits, logs the loss and the return, and completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_outage_shorter_than_the_window_is_survived() {
    let (client, ns) = env::namespace("api-outage").await;
    for i in 0..30 {
        crate::api::request(
            &client,
            http::Method::POST,
            &format!("/api/v1/namespaces/{ns}/configmaps"),
            Some(&serde_json::json!({"metadata": {"name": format!("cm-{i}")}, "data": {"i": i.to_string()}})),
        )
        .await
        .unwrap();
    }
    let server = env::cluster().server_url();
    let upstream: SocketAddr = server.trim_start_matches("https://").parse().unwrap();
    // Slowed down, so the cut lands while objects are being listed.
    let proxy = Proxy::start(upstream, Duration::from_millis(30)).await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let original = std::fs::read_to_string(env::kubeconfig_path()).unwrap();
    assert!(original.contains(server));
    std::fs::write(&kubeconfig, original.replace(server, &proxy.url("https"))).unwrap();

    let mut cmd = binary::command();
    cmd.arg("backup")
        .env("KUBECONFIG", &kubeconfig)
        .env(
            "STOW_REPOSITORY",
            format!("file://{}/repo", dir.path().display()),
        )
        .env("STOW_PASSWORD", PW)
        .env("STOW_INIT", "true")
        .env("STOW_NAMESPACES", &ns)
        .env("STOW_VOLUME_SOURCE", "skip")
        .env("STOW_RECONNECT_TIMEOUT", "1m");
    let mut run = Running::spawn(cmd);
    assert!(
        run.wait_line("backing up resources", Duration::from_secs(60))
            .await,
        "{}",
        run.stderr.lock().unwrap()
    );
    proxy.cut();
    let cut_at = Instant::now();
    assert!(
        run.wait_line("Kubernetes API connection lost", Duration::from_secs(20))
            .await,
        "{}",
        run.stderr.lock().unwrap()
    );
    tokio::time::sleep_until((cut_at + Duration::from_secs(10)).into()).await;
    assert!(run.is_running(), "the backup must wait for the API server");
    proxy.restore();
    let done = run.finish().await;
    assert_success(&done);
    assert_eq!(count(&done, "configmaps"), 31, "{}", done.stdout);
    assert!(
        done.stderr.contains("Kubernetes API connection is back"),
        "{}",
        done.stderr
    );
    eprintln!(
        "API outage of 10 s: backup done {:.1?} after the cut; log:\n{}",
        cut_at.elapsed(),
        done.stderr
            .lines()
            .filter(|l| l.contains("Kubernetes API connection"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
