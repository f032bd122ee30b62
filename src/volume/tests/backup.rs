//! Backup behaviour: incremental reads, failures, cancellation, reruns.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_backup_reads_only_changed_files() {
    let fx = Fixture::new().await;
    let src = fx.path("src");
    for i in 0..20 {
        fs::write(src.join(format!("f{i}")), random(100_000, i)).unwrap();
    }
    fs::create_dir(src.join("sub")).unwrap();
    fs::write(src.join("sub/big"), random(5 * MIB as usize, 99)).unwrap();
    let total = 20 * 100_000 + 5 * MIB;

    let first = fx.backup(&src, "vol", "run-1").await;
    assert_eq!(bytes(&first, "read"), total);
    assert_eq!(first.details["parent"], serde_json::Value::Null);

    let second = fx.backup(&src, "vol", "run-2").await;
    assert_eq!(bytes(&second, "read"), 0, "{second:?}");
    assert_eq!(bytes(&second, "reused"), total);
    assert_eq!(bytes(&second, "new"), 0, "{second:?}");
    assert_eq!(second.details["parent"], first.details["snapshot"]);
    // Unchanged directories give the same trees, down to the root.
    assert_eq!(second.details["root"], first.details["root"]);

    // Another plan does not use this plan's snapshots as parents.
    let mut other = fx.opts(&src, "vol", "run-other");
    other.plan = "weekly".into();
    let r = backup(&fx.repo, &other, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(bytes(&r, "read"), total);

    // Change one file: only it is read.
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(src.join("sub/big"))
        .unwrap();
    f.write_all(b"appended").unwrap();
    drop(f);
    let third = fx.backup(&src, "vol", "run-3").await;
    assert_eq!(bytes(&third, "read"), 5 * MIB + 8, "{third:?}");
    assert_eq!(bytes(&third, "reused"), 20 * 100_000);
    assert!(bytes(&third, "new") < 5 * MIB, "{third:?}");

    let dst = fx.path("dst");
    fx.restore("vol", &dst).await;
    let diffs = compare_trees(&src, &dst);
    assert!(diffs.is_empty(), "{diffs:#?}");
}

/// The parent's listings are loaded ahead of the walk, in name order, and
/// an unchanged directory keeps its parent's tree without encoding it
/// again. Between the two backups, subdirectories (more than are loaded
/// ahead at once) are removed, added, turned into files and back, and
/// changed deep down: each unchanged file is still taken from its own
/// directory's listing, and no unchanged listing is sealed and looked up
/// again (`deduplicated` counts what was sealed and found stored already).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_of_the_parent_follow_a_changing_tree() {
    let fx = Fixture::new().await;
    let src = fx.path("src");
    let file = |rel: &str, seed: u64| {
        let p = src.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, random(1000, seed)).unwrap();
    };
    for d in 0..30u64 {
        file(&format!("d{d:02}/f"), d);
        file(&format!("d{d:02}/deep/g"), 100 + d);
        std::os::unix::fs::symlink("f", src.join(format!("d{d:02}/link"))).unwrap();
    }
    file("top", 999);
    let first = fx.backup(&src, "vol", "run-1").await;

    let second = fx.backup(&src, "vol", "run-2").await;
    assert_eq!(second.details["root"], first.details["root"]);
    assert_eq!(bytes(&second, "read"), 0, "{second:?}");
    // Only the one-node tree above the volume's root is sealed again.
    let top: crate::repo::BlobId = second.details["root"].as_str().unwrap().parse().unwrap();
    let top = fx.repo.read_blob(&top).await.unwrap().len() as u64;
    assert_eq!(bytes(&second, "deduplicated"), top, "{second:?}");

    fs::remove_dir_all(src.join("d03")).unwrap();
    fs::remove_dir_all(src.join("d04")).unwrap();
    fs::remove_dir_all(src.join("d10")).unwrap();
    file("d10", 210); // a directory turned into a file
    fs::remove_file(src.join("top")).unwrap();
    file("top/inner", 211); // a file turned into a directory
    file("d05a/new", 212); // a new directory between listed ones
    file("d20/deep/g", 213); // changed two levels down
    fs::remove_file(src.join("d25/link")).unwrap();
    std::os::unix::fs::symlink("elsewhere", src.join("d25/link")).unwrap();
    let third = fx.backup(&src, "vol", "run-3").await;
    assert_eq!(bytes(&third, "read"), 4 * 1000, "{third:?}");
    assert_eq!(bytes(&third, "reused"), (27 * 2 - 1) * 1000, "{third:?}");
    assert_eq!(bytes(&third, "deduplicated"), 0, "{third:?}");
    let dst = fx.path("dst");
    fx.restore("vol", &dst).await;
    let diffs = compare_trees(&src, &dst);
    assert!(diffs.is_empty(), "{diffs:#?}");
    assert_eq!(
        fs::read_link(dst.join("d25/link")).unwrap(),
        Path::new("elsewhere")
    );
}

/// Small files are read in batches, one task for several, while unchanged
/// files, symlinks and subdirectories between them are listed at once:
/// every node still lands in its place in the sorted listing (a listing
/// out of order does not decode), with its own content. More files than
/// one batch holds, with a changed one every third.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_files_read_in_batches_keep_their_places() {
    let fx = Fixture::new().await;
    let src = fx.path("src");
    for i in 0..150u64 {
        fs::write(src.join(format!("f{i:03}")), random(200 + i as usize, i)).unwrap();
        if i % 10 == 5 {
            fs::create_dir(src.join(format!("f{i:03}d"))).unwrap();
            fs::write(src.join(format!("f{i:03}d/inner")), random(50, 1000 + i)).unwrap();
            std::os::unix::fs::symlink("inner", src.join(format!("f{i:03}d/link"))).unwrap();
        }
        if i % 7 == 0 {
            std::os::unix::fs::symlink(format!("f{i:03}"), src.join(format!("f{i:03}s"))).unwrap();
        }
    }
    let first = fx.backup(&src, "vol", "run-1").await;
    assert_eq!(count(&first, "files"), 150 + 15);
    let dst = fx.path("dst1");
    fx.restore("vol", &dst).await;
    let diffs = compare_trees(&src, &dst);
    assert!(diffs.is_empty(), "{diffs:#?}");

    let mut changed = 0;
    for i in (0..150u64).step_by(3) {
        fs::write(src.join(format!("f{i:03}")), random(300, 5000 + i)).unwrap();
        changed += 300;
    }
    let second = fx.backup(&src, "vol", "run-2").await;
    assert_eq!(bytes(&second, "read"), changed, "{second:?}");
    let dst = fx.path("dst2");
    fx.restore("vol", &dst).await;
    let diffs = compare_trees(&src, &dst);
    assert!(diffs.is_empty(), "{diffs:#?}");
}

/// An unchanged file takes its extended attributes from the parent
/// snapshot without reading them; changing them changes the ctime, so the
/// next backup reads them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_attributes_follow_an_incremental_backup() {
    let fx = Fixture::new().await;
    let src = fx.path("src");
    fs::write(src.join("kept"), b"kept").unwrap();
    fs::write(src.join("tagged"), b"tagged").unwrap();
    if xattr::set(src.join("kept"), "user.k", b"one").is_err() {
        eprintln!("user xattrs are not supported here; skipping");
        return;
    }
    xattr::set(src.join("tagged"), "user.t", b"before").unwrap();
    fx.backup(&src, "vol", "run-1").await;
    xattr::set(src.join("tagged"), "user.t", b"after").unwrap();
    xattr::set(src.join("tagged"), "user.new", b"added").unwrap();
    let second = fx.backup(&src, "vol", "run-2").await;
    // The untouched file is taken from the parent; the retagged one has a
    // new ctime, so it is read again.
    assert_eq!(bytes(&second, "reused"), 4, "{second:?}");
    assert_eq!(bytes(&second, "read"), 6, "{second:?}");
    let dst = fx.path("dst");
    fx.restore("vol", &dst).await;
    let get = |f: &str, k: &str| xattr::get(dst.join(f), k).unwrap();
    assert_eq!(get("kept", "user.k").as_deref(), Some(&b"one"[..]));
    assert_eq!(get("tagged", "user.t").as_deref(), Some(&b"after"[..]));
    assert_eq!(get("tagged", "user.new").as_deref(), Some(&b"added"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_file_fails_the_item_and_the_rest_goes_on() {
    let fx = Fixture::new().await;
    let src = fx.path("src");
    fs::write(src.join("fine"), b"fine").unwrap();
    fs::create_dir(src.join("sub")).unwrap();
    fs::write(src.join("sub/locked"), b"locked").unwrap();
    fs::create_dir_all(src.join("sub/closed/inner")).unwrap();
    fs::write(src.join("sub/closed/inner/x"), b"x").unwrap();
    fs::write(src.join("zzz"), b"after").unwrap();
    let mut opts = fx.opts(&src, "vol", "run-1");
    if is_root() {
        // Root reads mode 000 files and lists mode 000 directories; make
        // them fail as they would for anyone else.
        opts.hooks.open_error = Some(Arc::new(|p: &Path| {
            (p.ends_with("sub/locked") || p.ends_with("sub/closed"))
                .then(|| std::io::Error::from(std::io::ErrorKind::PermissionDenied))
        }));
    } else {
        chmod(&src.join("sub/locked"), 0o000);
        chmod(&src.join("sub/closed"), 0o000);
    }
    let report = backup(&fx.repo, &opts, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(report.status(), Status::Partial);
    assert_eq!(Status::Partial.exit_code(), 3);
    let items: Vec<&str> = report.errors.iter().map(|e| e.item.as_str()).collect();
    assert_eq!(items, ["sub/closed", "sub/locked"], "{:?}", report.errors);
    assert!(
        report
            .errors
            .iter()
            .all(|e| e.message.to_lowercase().contains("permission"))
    );
    assert_eq!(count(&report, "unreadable"), 2);
    assert_eq!(count(&report, "files"), 3);

    // The snapshot holds everything else.
    let dst = fx.path("dst");
    fx.restore("vol", &dst).await;
    assert_eq!(fs::read(dst.join("fine")).unwrap(), b"fine");
    assert_eq!(fs::read(dst.join("zzz")).unwrap(), b"after");
    assert!(dst.join("sub").is_dir());
    assert!(!dst.join("sub/locked").exists());
    // The unlistable directory comes back empty.
    assert!(dst.join("sub/closed").is_dir());
    assert_eq!(fs::read_dir(dst.join("sub/closed")).unwrap().count(), 0);
    if !is_root() {
        chmod(&src.join("sub/closed"), 0o755);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_changing_while_read_is_reported_and_read_again_next_time() {
    let fx = Fixture::new().await;
    let src = fx.path("src");
    fs::write(src.join("steady"), random(300_000, 1)).unwrap();
    fs::write(src.join("growing.log"), random(10 * MIB as usize, 2)).unwrap();
    let mut opts = fx.opts(&src, "vol", "run-1");
    opts.hooks.after_first_chunk = Some(Arc::new(|p: &Path| {
        if p.ends_with("growing.log") {
            let mut f = fs::OpenOptions::new().append(true).open(p).unwrap();
            f.write_all(b"one more line\n").unwrap();
        }
    }));
    let report = backup(&fx.repo, &opts, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(report.status(), Status::Success);
    assert_eq!(count(&report, "changed"), 1);
    assert_eq!(
        report.details["changed_files"],
        serde_json::json!(["growing.log"])
    );
    // Stored as read; the next backup does not trust it.
    let again = fx.backup(&src, "vol", "run-2").await;
    assert_eq!(count(&again, "changed"), 0);
    assert_eq!(bytes(&again, "read"), 10 * MIB + 14);
    let dst = fx.path("dst");
    fx.restore("vol", &dst).await;
    assert!(compare_trees(&src, &dst).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_backup_flushes_but_saves_no_snapshot() {
    let fx = Fixture::new().await;
    let src = fx.path("src");
    fs::write(src.join("a"), random(12 * MIB as usize, 5)).unwrap();
    fs::write(src.join("b"), random(100, 6)).unwrap();
    let cancel = CancellationToken::new();
    let mut opts = fx.opts(&src, "vol", "run-1");
    opts.channels = 1;
    let c = cancel.clone();
    // The large file's first chunk stops the run, whatever is read
    // beside it.
    opts.hooks.after_first_chunk = Some(Arc::new(move |p: &Path| {
        if p.ends_with("a") {
            c.cancel()
        }
    }));
    let err = backup(&fx.repo, &opts, &cancel).await.unwrap_err();
    assert!(matches!(err, VolumeError::Cancelled), "{err}");
    assert!(fx.repo.list_snapshots().await.unwrap().is_empty());
    // What was added is durable, so the retry reuses it.
    assert!(!fx.repo.backend().list("index/").await.unwrap().is_empty());
    let retry = fx.backup(&src, "vol", "run-1").await;
    assert!(bytes(&retry, "new") < 12 * MIB, "{retry:?}");
    assert_eq!(fx.repo.list_snapshots().await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mover_mode_saves_a_result_not_a_snapshot() {
    let fx = Fixture::new().await;
    let src = fx.path("src");
    fs::write(src.join("a"), random(300_000, 1)).unwrap();
    let mut opts = fx.opts(&src, "shop/data-db-0", "orchestrator-run");
    opts.mover = true;
    let r = backup(&fx.repo, &opts, &CancellationToken::new())
        .await
        .unwrap();
    assert!(r.details["snapshot"].is_null(), "{:?}", r.details);
    assert!(r.details["mover_result"].is_string(), "{:?}", r.details);
    assert!(fx.repo.list_snapshots().await.unwrap().is_empty());
    let results = fx
        .repo
        .mover_results("orchestrator-run", "shop/data-db-0")
        .await
        .unwrap();
    assert_eq!(results.len(), 1);
    let entry = &results[0].entry;
    assert_eq!(entry.root.to_hex(), r.details["root"].as_str().unwrap());
    assert_eq!(results[0].report["bytes"]["read"], 300_000);

    // The orchestrator links the tree in its manifest; the next mover of
    // the same plan then finds it as its parent and reads nothing.
    let mut m = SnapshotManifest::new("orchestrator-run", 0, 1, "daily");
    m.volumes.insert("shop/data-db-0".into(), entry.clone());
    let committed = fx.repo.save_snapshot(&m).await.unwrap();
    opts.run_id = "orchestrator-run-2".into();
    let second = backup(&fx.repo, &opts, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(second.details["parent"], committed.to_hex());
    assert_eq!(bytes(&second, "read"), 0, "{second:?}");
}

/// Files a stopped backup read go into checkpoints while it runs; the
/// backup run again takes them unread (unless they changed since) and
/// reports them as resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerun_after_an_unfinished_backup_skips_checkpointed_files() {
    let fx = Fixture::new().await;
    let src = fx.path("src");
    // More than a pack (16 MiB) before the last file: the files of the
    // first pack are checkpointed as soon as it is indexed.
    for i in 0..24u64 {
        fs::write(src.join(format!("f{i:02}")), random(MIB as usize, i)).unwrap();
    }
    fs::write(src.join("z-last"), random(3 * MIB as usize, 99)).unwrap();
    let cancel = CancellationToken::new();
    let mut opts = fx.opts(&src, "vol", "run-1");
    opts.channels = 1;
    // A checkpoint for every file, as soon as its chunks are indexed.
    opts.resume_buffer = 1;
    let checkpoints = fx.dir.path().join("repo/checkpoints");
    let c = cancel.clone();
    opts.hooks.after_first_chunk = Some(Arc::new(move |p: &Path| {
        if p.ends_with("z-last") {
            // Stop in the middle of the last file, once the checkpoints of
            // the earlier ones are stored (not by the final checkpoint).
            let deadline = Instant::now() + std::time::Duration::from_secs(20);
            while fs::read_dir(&checkpoints).map_or(0, |d| d.count()) == 0 {
                assert!(Instant::now() < deadline, "no checkpoint while running");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            c.cancel();
        }
    }));
    // The repository writer indexes every pack (like the 10 MiB default).
    fx.repo.set_resume_buffer(1);
    let err = backup(&fx.repo, &opts, &cancel).await.unwrap_err();
    assert!(matches!(err, VolumeError::Cancelled), "{err}");
    assert!(fx.repo.list_snapshots().await.unwrap().is_empty());

    // One file changed since: it is read again. The rest were saved by
    // the periodic checkpoints and the last one, after the final flush.
    fs::write(src.join("f03"), random(MIB as usize, 333)).unwrap();
    let again = fx.backup(&src, "vol", "run-2").await;
    assert_eq!(count(&again, "resumed"), 23, "{again:?}");
    assert_eq!(bytes(&again, "resumed"), 23 * MIB);
    assert_eq!(bytes(&again, "read"), MIB + 3 * MIB, "{again:?}");
    let dst = fx.path("dst");
    fx.restore("vol", &dst).await;
    let diffs = compare_trees(&src, &dst);
    assert!(diffs.is_empty(), "{diffs:#?}");

    // Once a snapshot is complete, the next run takes the files from it,
    // not from the old checkpoints.
    let third = fx.backup(&src, "vol", "run-3").await;
    assert_eq!(count(&third, "resumed"), 0);
    assert_eq!(bytes(&third, "read"), 0);
    assert_eq!(bytes(&third, "reused"), 27 * MIB);
}

/// What the backup tests below plant outside the volume: a file whose
/// name and content must never reach the repository.
const MARKER: &[u8] = b"SECRET-MARKER-outside-the-volume-5b0e";
const MARKER_NAME: &str = "marker-name-outside-the-volume";

/// A directory outside the volume holding the marker, as `inner` (the name
/// the volume's directories use too) and as a file with a telling name.
fn outside_with_marker(fx: &Fixture) -> PathBuf {
    let outside = fx.path("outside");
    fs::write(outside.join("inner"), MARKER).unwrap();
    fs::write(outside.join(MARKER_NAME), MARKER).unwrap();
    outside
}

/// Nothing of the marker is stored: no blob, data or tree, holds its
/// content or its name.
async fn assert_marker_never_stored(repo: &Repository) {
    assert_eq!(
        blobs_containing(repo, MARKER).await,
        [],
        "the marker's content was stored"
    );
    assert_eq!(
        blobs_containing(repo, MARKER_NAME.as_bytes()).await,
        [],
        "a listing outside the volume was stored"
    );
}

/// Entries replaced by symlinks out of the volume between the listing and
/// the opening are reported and never followed: a file, a directory not
/// yet entered, and a directory already listed whose file is opened next
/// (the path `sub/inner` then leads outside; its descriptor does not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_never_follows_entries_swapped_for_symlinks() {
    let fx = Fixture::in_memory().await;
    let outside = outside_with_marker(&fx);
    let src = fx.path("src");
    fs::write(src.join("a-file"), b"a file").unwrap();
    fs::create_dir(src.join("dir")).unwrap();
    fs::write(src.join("dir/inner"), b"inside dir").unwrap();
    fs::create_dir(src.join("sub")).unwrap();
    fs::write(src.join("sub/inner"), b"inside sub").unwrap();
    fs::write(src.join("zzz"), b"after").unwrap();
    let mut opts = fx.opts(&src, "vol", "run-1");
    let (root, out) = (src.clone(), outside.clone());
    let swapped = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = swapped.clone();
    opts.hooks.before_open = Some(Arc::new(move |p: &Path| {
        let rel = p.strip_prefix(&root).unwrap().to_str().unwrap().to_string();
        let symlink =
            |name: &str, to: &Path| std::os::unix::fs::symlink(to, root.join(name)).unwrap();
        match rel.as_str() {
            "a-file" => {
                fs::remove_file(p).unwrap();
                symlink("a-file", &out.join(MARKER_NAME));
            }
            "dir" => {
                fs::remove_dir_all(p).unwrap();
                symlink("dir", &out);
            }
            // Listed already: moved aside inside the volume, a symlink in
            // its place.
            "sub/inner" => {
                fs::rename(root.join("sub"), root.join("sub-moved")).unwrap();
                symlink("sub", &out);
            }
            _ => return,
        }
        seen.lock().unwrap().push(rel);
    }));
    let report = backup(&fx.repo, &opts, &CancellationToken::new())
        .await
        .unwrap();
    // Files are opened on reading threads, directories on the walker's.
    let mut swapped = swapped.lock().unwrap().clone();
    swapped.sort();
    assert_eq!(swapped, ["a-file", "dir", "sub/inner"], "the hook ran");
    assert_marker_never_stored(&fx.repo).await;
    assert_eq!(report.status(), Status::Partial);
    let mut items: Vec<&str> = report.errors.iter().map(|e| e.item.as_str()).collect();
    items.sort();
    assert_eq!(items, ["a-file", "dir"], "{:?}", report.errors);
    assert!(
        report
            .errors
            .iter()
            .all(|e| e.message.contains("not followed")),
        "{:?}",
        report.errors
    );
    assert_eq!(count(&report, "replaced"), 2);

    // `sub/inner` was read through `sub`'s descriptor: the listed file.
    let dst = fx.path("dst");
    fx.restore("vol", &dst).await;
    assert_eq!(fs::read(dst.join("sub/inner")).unwrap(), b"inside sub");
    assert_eq!(fs::read(dst.join("zzz")).unwrap(), b"after");
    assert!(!dst.join("a-file").exists() && !dst.join("dir").exists());
}

/// The same race without a hook: a thread swaps a directory of the volume
/// and a symlink out of it (an atomic rename exchange) as fast as it can
/// while backups run; no run stores anything from outside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_racing_a_directory_swapped_with_a_symlink_stores_nothing_outside() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    const RUNS: usize = 100;
    let fx = Fixture::in_memory().await;
    let outside = outside_with_marker(&fx);
    let src = fx.path("src");
    fs::create_dir(src.join("victim")).unwrap();
    fs::write(src.join("victim/inner"), b"inside").unwrap();
    for i in 0..20 {
        fs::write(src.join(format!("f{i:02}")), random(1000, i)).unwrap();
    }
    // Beside the volume, on the same file system (for the exchange).
    let link = fx.dir.path().join("swap-link");
    std::os::unix::fs::symlink(&outside, &link).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicU64::new(0));
    let swapper = {
        let (stop, swaps, victim) = (stop.clone(), swaps.clone(), src.join("victim"));
        std::thread::spawn(move || {
            use rustix::fs::{CWD, RenameFlags, renameat_with};
            while !stop.load(Ordering::Relaxed) {
                renameat_with(CWD, &victim, CWD, &link, RenameFlags::EXCHANGE).unwrap();
                swaps.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let mut outcomes = BTreeMap::<String, usize>::new();
    for run in 0..RUNS {
        let report = fx.backup(&src, "vol", &format!("run-{run}")).await;
        let outcome = if report.errors.is_empty() {
            "clean".to_string()
        } else {
            report
                .errors
                .iter()
                .map(|e| e.item.clone())
                .collect::<Vec<_>>()
                .join(",")
        };
        *outcomes.entry(outcome).or_default() += 1;
    }
    stop.store(true, Ordering::Relaxed);
    swapper.join().unwrap();
    eprintln!(
        "{} swaps; outcomes: {outcomes:?}",
        swaps.load(Ordering::Relaxed)
    );
    assert!(
        swaps.load(Ordering::Relaxed) > RUNS as u64,
        "the swapper ran"
    );
    assert_marker_never_stored(&fx.repo).await;
}
