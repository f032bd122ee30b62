//! Restore behaviour: snapshot choice, escaping names, skipping verified files.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_picks_snapshots_by_point_and_id() {
    let fx = Fixture::new().await;
    let src = fx.path("src");
    fs::write(src.join("f"), b"version 1").unwrap();
    let r1 = fx.backup(&src, "vol", "run-1").await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let between = jiff::Timestamp::now();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    fs::write(src.join("f"), b"version 2!").unwrap();
    let r2 = fx.backup(&src, "vol", "run-2").await;
    assert_ne!(r1.details["snapshot"], r2.details["snapshot"]);
    let read = |d: &Path| fs::read(d.join("f")).unwrap();

    let newest = fx.path("newest");
    let rep = fx.restore("vol", &newest).await;
    assert_eq!(rep.details["snapshot"], r2.details["snapshot"]);
    assert_eq!(read(&newest), b"version 2!");

    let mut o = restore_opts("vol", &fx.path("at-point"));
    o.point = Some(between);
    restore(&fx.repo, &o, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(read(&o.path), b"version 1");

    let mut o = restore_opts("vol", &fx.path("by-id"));
    o.snapshot = Some(r1.details["snapshot"].as_str().unwrap()[..12].to_string());
    restore(&fx.repo, &o, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(read(&o.path), b"version 1");

    // Errors name what is missing.
    let o = restore_opts("nope", &fx.path("x"));
    let e = restore(&fx.repo, &o, &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("`nope`"), "{e}");
    let mut o = restore_opts("nope", &fx.path("y"));
    o.snapshot = r1.details["snapshot"].as_str().map(String::from);
    let e = restore(&fx.repo, &o, &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("it has: vol"), "{e}");
    let mut o = restore_opts("vol", &fx.path("z"));
    o.point = Some("2000-01-01T00:00:00Z".parse().unwrap());
    let e = restore(&fx.repo, &o, &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("at or before 2000"), "{e}");
}

/// Stores `nodes` as one tree blob exactly as given: order and duplicates
/// included, as a hostile writer holding the key could.
async fn raw_tree(w: &crate::repo::Writer, nodes: Vec<Node>) -> crate::repo::BlobId {
    let json = serde_json::to_vec(&Tree { nodes, next: None }).unwrap();
    w.add(BlobKind::Tree, Bytes::from(json)).await.unwrap().0
}

/// Saves a snapshot of volume `name` whose root directory lists the tree
/// `listing` (the writer must be finished by then).
async fn save_volume(
    w: &crate::repo::Writer,
    repo: &Repository,
    name: &str,
    listing: crate::repo::BlobId,
) {
    save_volume_with(w, repo, name, listing, serde_json::Value::Null).await
}

/// [`save_volume`] with the counts a backup records.
async fn save_volume_with(
    w: &crate::repo::Writer,
    repo: &Repository,
    name: &str,
    listing: crate::repo::BlobId,
    stats: serde_json::Value,
) {
    let mut root = node(b".", NodeType::Dir);
    root.mode = 0o755;
    root.subtree = Some(listing);
    let root_id = raw_tree(w, vec![root]).await;
    w.flush().await.unwrap();
    let mut m = SnapshotManifest::new(name, 0, 1, "daily");
    m.volumes.insert(
        name.into(),
        VolumeEntry {
            root: root_id,
            stats,
        },
    );
    repo.save_snapshot(&m).await.unwrap();
}

/// A file with everything a restore sets: setuid and world-writable, an
/// owner, an mtime, an extended attribute.
fn hostile_file(name: &[u8], data: crate::repo::BlobId) -> Node {
    let mut n = node(name, NodeType::File);
    n.mode = 0o4777;
    n.uid = 4321;
    n.gid = 8765;
    n.mtime_ns = 42;
    n.xattrs.insert(b"user.planted".to_vec(), b"x".to_vec());
    n.size = 7;
    n.content = vec![data];
    n
}

/// A file outside the restore target, and its state before the run.
struct Outside {
    dir: PathBuf,
    file: PathBuf,
    before: fs::Metadata,
}

impl Outside {
    fn new(fx: &Fixture) -> Outside {
        let dir = fx.path("outside");
        let file = dir.join("target");
        fs::write(&file, b"outside").unwrap();
        chmod(&file, 0o640);
        set_mtime(&file, 1_234_567_890_123_456_789);
        let before = fs::symlink_metadata(&file).unwrap();
        Outside { dir, file, before }
    }

    /// Content, mode, owner and times (ctime too: any chmod, chown or
    /// xattr change bumps it) are as before, and nothing was added.
    fn assert_untouched(&self) {
        let now = fs::symlink_metadata(&self.file).unwrap();
        let b = &self.before;
        assert_eq!(
            format!("{:o}", now.mode()),
            format!("{:o}", b.mode()),
            "the mode of a file outside the target changed"
        );
        assert_eq!((now.uid(), now.gid()), (b.uid(), b.gid()), "owner changed");
        assert_eq!((now.mtime(), now.mtime_nsec()), (b.mtime(), b.mtime_nsec()));
        assert_eq!((now.ctime(), now.ctime_nsec()), (b.ctime(), b.ctime_nsec()));
        assert_eq!(fs::read(&self.file).unwrap(), b"outside");
        let names: Vec<_> = fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["target"]);
    }
}

/// A hostile or damaged tree cannot make restore write outside the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_refuses_names_and_links_that_escape() {
    let fx = Fixture::in_memory().await;
    let outside = Outside::new(&fx);
    let w = fx.repo.writer(1);
    let (data, _) = w
        .add(BlobKind::Data, Bytes::from_static(b"payload"))
        .await
        .unwrap();
    let file = |name: &[u8]| {
        let mut n = node(name, NodeType::File);
        n.size = 7;
        n.content = vec![data];
        n
    };
    let mut escape_link = node(b"hl-escape", NodeType::Hardlink);
    escape_link.link = Some(b"../outside/target".to_vec());
    let mut via_symlink = node(b"hl-via-symlink", NodeType::Hardlink);
    via_symlink.link = Some(b"a-sym/target".to_vec());
    let mut sym = node(b"a-sym", NodeType::Symlink);
    sym.target = Some(outside.dir.as_os_str().as_bytes().to_vec());
    // A directory where the target already has a symlink: the symlink is
    // replaced, not followed.
    let mut was_sym = node(b"was-sym", NodeType::Dir);
    was_sym.mode = 0o755;
    was_sym.subtree = Some(raw_tree(&w, vec![file(b"target")]).await);
    let listing = raw_tree(
        &w,
        vec![
            file(b".."),
            sym,
            file(b"a/b"),
            escape_link,
            via_symlink,
            file(b"ok"),
            was_sym,
        ],
    )
    .await;
    save_volume(&w, &fx.repo, "evil", listing).await;

    let dst = fx.path("dst");
    std::os::unix::fs::symlink(&outside.dir, dst.join("was-sym")).unwrap();
    let report = fx.restore("evil", &dst).await;
    let failed: Vec<&str> = report.errors.iter().map(|e| e.item.as_str()).collect();
    assert_eq!(
        failed,
        vec!["..", "a/b", "hl-escape", "hl-via-symlink"],
        "{:?}",
        report.errors
    );
    outside.assert_untouched();
    assert_eq!(fs::read(dst.join("ok")).unwrap(), b"payload");
    assert!(
        fs::symlink_metadata(dst.join("a-sym"))
            .unwrap()
            .is_symlink()
    );
    assert!(fs::symlink_metadata(dst.join("was-sym")).unwrap().is_dir());
    assert_eq!(fs::read(dst.join("was-sym/target")).unwrap(), b"payload");
}

/// A file and then a symlink of the same name out of the target: the
/// symlink replaced the file while its content was written, and the
/// file's mode went through it. A tree with a name twice is refused,
/// whether it is the root's (the run fails) or a subdirectory's (that
/// directory is reported and restored empty).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_refuses_a_tree_with_a_name_twice() {
    let fx = Fixture::in_memory().await;
    let outside = Outside::new(&fx);
    let w = fx.repo.writer(1);
    let (data, _) = w
        .add(BlobKind::Data, Bytes::from_static(b"payload"))
        .await
        .unwrap();
    let mut out = node(b"a", NodeType::Symlink);
    out.target = Some(outside.file.as_os_str().as_bytes().to_vec());
    out.uid = 4321;
    out.mtime_ns = 42;
    let twice = vec![hostile_file(b"a", data), out];
    let top = raw_tree(&w, twice.clone()).await;
    let sub = raw_tree(&w, twice).await;
    let mut d = node(b"d", NodeType::Dir);
    d.mode = 0o755;
    d.subtree = Some(sub);
    let mut ok = hostile_file(b"ok", data);
    ok.mode = 0o644;
    let nested = raw_tree(&w, vec![d, ok]).await;
    save_volume(&w, &fx.repo, "top", top).await;
    save_volume(&w, &fx.repo, "nested", nested).await;

    let dst = fx.path("dst-top");
    let result = restore(
        &fx.repo,
        &restore_opts("top", &dst),
        &CancellationToken::new(),
    )
    .await;
    outside.assert_untouched();
    let err = result.expect_err("a root listing with a name twice is refused");
    assert!(matches!(err, VolumeError::Tree { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(&top.to_hex()) && msg.contains("entry `a` appears more than once"),
        "{msg}"
    );
    assert_eq!(
        fs::read_dir(&dst).unwrap().count(),
        0,
        "nothing is restored"
    );

    let dst = fx.path("dst-nested");
    let report = fx.restore("nested", &dst).await;
    outside.assert_untouched();
    assert_eq!(report.status(), Status::Partial);
    assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
    let e = &report.errors[0];
    assert_eq!(e.item, "d");
    assert!(
        e.message.contains(&sub.to_hex()) && e.message.contains("entry `a` appears more than once"),
        "{}",
        e.message
    );
    assert_eq!(fs::read_dir(dst.join("d")).unwrap().count(), 0);
    assert_eq!(fs::read(dst.join("ok")).unwrap(), b"payload");
}

/// Names out of order are refused the same way, naming the entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_refuses_a_tree_with_names_out_of_order() {
    let fx = Fixture::in_memory().await;
    let w = fx.repo.writer(1);
    let (data, _) = w
        .add(BlobKind::Data, Bytes::from_static(b"payload"))
        .await
        .unwrap();
    let unsorted = vec![hostile_file(b"b", data), hostile_file(b"a", data)];
    let top = raw_tree(&w, unsorted.clone()).await;
    let mut d = node(b"d", NodeType::Dir);
    d.subtree = Some(raw_tree(&w, unsorted).await);
    let nested = raw_tree(&w, vec![d]).await;
    save_volume(&w, &fx.repo, "top", top).await;
    save_volume(&w, &fx.repo, "nested", nested).await;

    let dst = fx.path("dst-top");
    let err = restore(
        &fx.repo,
        &restore_opts("top", &dst),
        &CancellationToken::new(),
    )
    .await
    .expect_err("a root listing out of order is refused");
    let msg = err.to_string();
    assert!(
        msg.contains(&top.to_hex()) && msg.contains("entry `a` comes after `b`"),
        "{msg}"
    );
    assert_eq!(
        fs::read_dir(&dst).unwrap().count(),
        0,
        "nothing is restored"
    );

    let dst = fx.path("dst-nested");
    let report = fx.restore("nested", &dst).await;
    assert_eq!(report.status(), Status::Partial);
    let items: Vec<(&str, bool)> = report
        .errors
        .iter()
        .map(|e| {
            (
                e.item.as_str(),
                e.message.contains("entry `a` comes after `b`"),
            )
        })
        .collect();
    assert_eq!(items, [("d", true)], "{:?}", report.errors);
    assert_eq!(fs::read_dir(dst.join("d")).unwrap().count(), 0);
}

/// Metadata goes to the file written, through its descriptor: a symlink
/// put at its name meanwhile (by another process in the target) is not
/// followed out of the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_sets_metadata_on_the_file_written_not_on_its_name() {
    let fx = Fixture::in_memory().await;
    let outside = Outside::new(&fx);
    let w = fx.repo.writer(1);
    let (data, _) = w
        .add(BlobKind::Data, Bytes::from_static(b"payload"))
        .await
        .unwrap();
    let listing = raw_tree(&w, vec![hostile_file(b"victim", data)]).await;
    save_volume(&w, &fx.repo, "vol", listing).await;

    let dst = fx.path("dst");
    let mut opts = restore_opts("vol", &dst);
    let target = outside.file.clone();
    opts.hooks.before_meta = Some(Arc::new(move |p: &Path| {
        if p.ends_with("victim") {
            fs::remove_file(p).unwrap();
            std::os::unix::fs::symlink(&target, p).unwrap();
        }
    }));
    let report = restore(&fx.repo, &opts, &CancellationToken::new()).await;
    outside.assert_untouched();
    report.unwrap();
    // The hook ran: the swapped-in symlink is there, left as it was put.
    assert!(
        fs::symlink_metadata(dst.join("victim"))
            .unwrap()
            .is_symlink()
    );
}

/// A restore run again over its own partial result (or any older copy)
/// leaves files that are complete and verified alone, and rewrites the
/// rest: a file of the right size but other content is not trusted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_again_skips_verified_files_only() {
    let fx = Fixture::new().await;
    let src = fx.path("src");
    fs::create_dir(src.join("d")).unwrap();
    let big = random(3 * MIB as usize, 1);
    fs::write(src.join("big"), &big).unwrap();
    fs::write(src.join("d/same"), random(300_000, 2)).unwrap();
    fs::write(src.join("d/flipped"), random(2 * MIB as usize, 3)).unwrap();
    fs::write(src.join("d/short"), random(500_000, 4)).unwrap();
    fs::write(src.join("d/zeros"), vec![0u8; MIB as usize]).unwrap();
    fs::write(src.join("d/readonly"), random(70_000, 5)).unwrap();
    chmod(&src.join("d/readonly"), 0o444);
    fs::write(src.join("empty"), b"").unwrap();
    let linked = src.join("d/same");
    fs::hard_link(&linked, src.join("link")).unwrap();
    stamp_dirs(&src, 1_700_000_000_000_000_000);
    fx.backup(&src, "vol", "run-1").await;

    let dst = fx.path("dst");
    let first = fx.restore("vol", &dst).await;
    assert_eq!(count(&first, "reused"), 0);
    assert_eq!(bytes(&first, "reused"), 0);

    // What an interrupted restore (or a stale copy) may leave behind.
    let mut flipped = fs::read(dst.join("d/flipped")).unwrap();
    flipped[MIB as usize + 17] ^= 1;
    fs::write(dst.join("d/flipped"), &flipped).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(dst.join("d/short"))
        .unwrap()
        .set_len(100)
        .unwrap();
    // Read-only (as restored) and different: rewritten all the same.
    let mut ro = fs::read(dst.join("d/readonly")).unwrap();
    ro[0] ^= 1;
    chmod(&dst.join("d/readonly"), 0o644);
    fs::write(dst.join("d/readonly"), &ro).unwrap();
    chmod(&dst.join("d/readonly"), 0o444);
    // Right content, wrong metadata: kept, metadata set again.
    chmod(&dst.join("big"), 0o600);
    set_mtime(&dst.join("big"), 0);
    let big_inode = fs::metadata(dst.join("big")).unwrap().ino();

    let again = fx.restore("vol", &dst).await;
    let diffs = compare_trees(&src, &dst);
    assert!(diffs.is_empty(), "{diffs:#?}");
    // big and d/zeros; d/same has a second name (the hard link), so it is
    // rewritten rather than trusted.
    assert_eq!(count(&again, "reused"), 2, "{again:?}");
    assert_eq!(bytes(&again, "reused"), 3 * MIB + MIB);
    assert_eq!(fs::metadata(dst.join("big")).unwrap().ino(), big_inode);
    assert_eq!(fs::read(dst.join("big")).unwrap(), big);
    assert!(
        bytes(&again, "written") >= 2 * MIB + 500_000,
        "the flipped and the short file are written again: {again:?}"
    );
}

/// Counts every entry under `dir` (not following symlinks).
fn entries_under(dir: &Path) -> usize {
    fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| {
                let e = e.unwrap();
                1 + if e.file_type().unwrap().is_dir() {
                    entries_under(&e.path())
                } else {
                    0
                }
            })
            .sum()
        })
        .unwrap_or(0)
}

/// A key holder's tree bomb: 24 levels, each a directory listing `a` and
/// `b`, both the same tree of the level below: 2^25 directories from 25
/// blobs. The snapshot records 3 directories, so the restore stops after a
/// bounded number of entries and fails naming the volume, instead of
/// creating tens of millions of directories.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_refuses_a_tree_that_references_one_subtree_many_times() {
    let fx = Fixture::in_memory().await;
    let w = fx.repo.writer(1);
    let mut level = raw_tree(&w, vec![]).await;
    for _ in 0..24 {
        let mut a = node(b"a", NodeType::Dir);
        a.mode = 0o755;
        a.subtree = Some(level);
        let mut b = a.clone();
        b.name = b"b".to_vec();
        level = raw_tree(&w, vec![a, b]).await;
    }
    save_volume_with(
        &w,
        &fx.repo,
        "bomb",
        level,
        serde_json::json!({"dirs": 3, "files": 0}),
    )
    .await;
    let target = fx.path("bomb-target");
    let err = restore(
        &fx.repo,
        &restore_opts("bomb", &target),
        &CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, VolumeError::TreeBudget { .. }), "{err}");
    assert!(err.to_string().contains("bomb"), "{err}");
    let made = entries_under(&target);
    assert!(
        made <= 1100,
        "{made} entries created before the budget stopped it"
    );
    assert_eq!(
        crate::volume::restore::entry_budget(&serde_json::json!({"dirs": 3, "files": 0})),
        1030
    );
    assert_eq!(
        crate::volume::restore::entry_budget(&serde_json::Value::Null),
        crate::volume::restore::UNRECORDED_BUDGET
    );
}

/// A chain of directories deeper than a restore goes (each level holds a
/// descriptor and a listing) fails at the bound, naming the volume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_refuses_directories_nested_beyond_the_bound() {
    let fx = Fixture::in_memory().await;
    let w = fx.repo.writer(1);
    let mut level = raw_tree(&w, vec![]).await;
    for _ in 0..(crate::volume::restore::MAX_DEPTH + 10) {
        let mut d = node(b"d", NodeType::Dir);
        d.mode = 0o755;
        d.subtree = Some(level);
        level = raw_tree(&w, vec![d]).await;
    }
    let dirs = (crate::volume::restore::MAX_DEPTH + 10) as u64;
    save_volume_with(
        &w,
        &fx.repo,
        "deep",
        level,
        serde_json::json!({"dirs": dirs}),
    )
    .await;
    let err = restore(
        &fx.repo,
        &restore_opts("deep", &fx.path("deep-target")),
        &CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, VolumeError::TreeBudget { .. }), "{err}");
    assert!(err.to_string().contains("deeper than 512"), "{err}");
}

/// Small files go in batches that cross directories and are bounded by
/// count and by bytes: across many batches every file comes back with its
/// own content (zero chunks as holes, a trailing one too), length, mode
/// and time; a hard link to a batched file is its file; and a directory's
/// time is set after its files are written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_fills_small_files_in_batches_across_directories() {
    use crate::volume::restore::{BATCH_BYTES, BATCH_FILES, SMALL_FILE};
    let fx = Fixture::in_memory().await;
    let w = fx.repo.writer(1);
    let zeros = w
        .add(BlobKind::Data, Bytes::from(vec![0u8; 4096]))
        .await
        .unwrap()
        .0;
    // Each directory's name and its files' names and bytes, in tree order.
    type Files = Vec<(String, Vec<u8>)>;
    let mut expected: Vec<(String, Files)> = Vec::new();
    let mut dirs = Vec::new();
    let per_dir = BATCH_FILES + BATCH_FILES / 2;
    for d in 0..3u64 {
        let mut nodes = Vec::new();
        let mut files = Vec::new();
        for i in 0..per_dir as u64 {
            let name = format!("f{i:04}");
            // Every tenth file is as large as a small file gets, so bytes
            // end batches too; some end in a hole.
            let len = if i % 10 == 0 {
                SMALL_FILE as usize
            } else {
                1 + (i as usize * 37) % 5000
            };
            let data = random(len, d * 10_000 + i);
            let id = w
                .add(BlobKind::Data, Bytes::from(data.clone()))
                .await
                .unwrap()
                .0;
            let mut n = node(name.as_bytes(), NodeType::File);
            n.mode = 0o640 + (i as u32 % 8);
            n.mtime_ns = 1_000_000_000 * (i as i64 + 1);
            n.content = vec![id];
            if d == 0 && i == 1 {
                n.nlink = 2; // The target of zz-link.
            }
            let mut content = data;
            if i % 7 == 0 {
                n.content.push(zeros);
                content.extend_from_slice(&[0; 4096]);
            }
            n.size = content.len() as u64;
            nodes.push(n);
            files.push((name, content));
        }
        if d == 1 {
            let mut h = node(b"zz-link", NodeType::Hardlink);
            h.link = Some(b"d0/f0001".to_vec());
            nodes.push(h);
        }
        let mut dir = node(format!("d{d}").as_bytes(), NodeType::Dir);
        dir.mode = 0o750;
        dir.mtime_ns = 1_000_000_000 * (7 + d as i64);
        dir.subtree = Some(raw_tree(&w, nodes).await);
        dirs.push(dir);
        expected.push((format!("d{d}"), files));
    }
    assert!(3 * per_dir as u64 * SMALL_FILE / 10 > 2 * BATCH_BYTES);
    let listing = raw_tree(&w, dirs).await;
    save_volume(&w, &fx.repo, "vol", listing).await;

    let dst = fx.path("dst");
    let report = restore(
        &fx.repo,
        &restore_opts("vol", &dst),
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    for (d, (dir, files)) in expected.iter().enumerate() {
        for (i, (name, content)) in files.iter().enumerate() {
            let p = dst.join(dir).join(name);
            assert!(fs::read(&p).unwrap() == *content, "{} differs", p.display());
            let md = fs::metadata(&p).unwrap();
            assert_eq!(md.permissions().mode() & 0o7777, 0o640 + (i as u32 % 8));
            assert_eq!(md.mtime(), i as i64 + 1, "{}", p.display());
        }
        let md = fs::metadata(dst.join(dir)).unwrap();
        assert_eq!(md.permissions().mode() & 0o7777, 0o750);
        assert_eq!(md.mtime(), 7 + d as i64, "{dir}");
    }
    let linked = fs::metadata(dst.join("d1/zz-link")).unwrap();
    assert_eq!(
        linked.ino(),
        fs::metadata(dst.join("d0/f0001")).unwrap().ino()
    );
    assert_eq!(
        fs::read(dst.join("d1/zz-link")).unwrap(),
        expected[0].1[1].1
    );
}
