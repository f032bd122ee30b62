//! Round trips, trees and chunking: what a volume backup stores.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_reproduces_content_and_metadata() {
    let fx = Fixture::new().await;
    let src = fx.path("src");
    let (xattrs_ok, device) = build_rich_tree(&src);
    // A socket is recorded but not restored.
    let sock = std::os::unix::net::UnixListener::bind(src.join("sock")).unwrap();
    stamp_dirs(&src, 1_500_000_000_987_654_321);

    let started = Instant::now();
    let report = fx.backup(&src, "shop/data-db-0", "run-1").await;
    eprintln!("backup: {:?} {report:?}", started.elapsed());
    assert_eq!(report.status(), Status::Success, "{:?}", report.errors);
    assert_eq!(count(&report, "hardlinks"), 2);
    assert_eq!(count(&report, "symlinks"), 3);
    // FIFO, socket, and the device if there is one.
    assert_eq!(count(&report, "special"), 2 + u64::from(device));
    assert_eq!(count(&report, "changed"), 0);
    // root, dir1, dir-\x80, deep and its 60 levels, shared, tmp, private
    assert_eq!(count(&report, "dirs"), 1 + 2 + 61 + 3);
    // The 1 GiB of zeros costs one chunk; the data itself is new.
    assert!(bytes(&report, "new") < 48 * MIB, "{report:?}");
    assert!(report.details["snapshot"].is_string());

    drop(sock);
    fs::remove_file(src.join("sock")).unwrap();
    stamp_dirs(&src, 1_500_000_000_987_654_321);

    let dst = fx.dir.path().join("dst/nested");
    let started = Instant::now();
    let restored = fx.restore("shop/data-db-0", &dst).await;
    eprintln!("restore: {:?} {restored:?}", started.elapsed());
    assert_eq!(restored.status(), Status::Success, "{:?}", restored.errors);
    assert_eq!(count(&restored, "skipped"), 1); // the socket
    assert_eq!(count(&restored, "special"), 1 + u64::from(device));
    assert_eq!(count(&restored, "xattr_failures"), 0);
    let diffs = compare_trees(&src, &dst);
    assert!(diffs.is_empty(), "{diffs:#?}");

    // Holes came back as holes.
    let sparse = dst.join("sparse.img");
    assert_eq!(fs::metadata(&sparse).unwrap().len(), 1024 * MIB);
    assert!(
        allocated(&sparse) < 64 * MIB,
        "restored sparse file allocates {} bytes",
        allocated(&sparse)
    );
    // Hard links are one inode.
    let ino = |p: &str| fs::metadata(dst.join(p)).unwrap().ino();
    assert_eq!(ino("hl-a"), ino("dir1/hl-b"));
    assert_eq!(ino("hl-a"), ino("hl-c"));
    assert_ne!(ino("hl-a"), ino("small.txt"));
    if xattrs_ok {
        assert_eq!(
            xattr::get(dst.join("large.bin"), "user.comment").unwrap(),
            Some(b"hello".to_vec())
        );
    }

    // The comparison is not vacuous: one changed byte is found.
    let victim = dst.join("large.bin");
    let mut data = fs::read(&victim).unwrap();
    data[12_345_678] ^= 1;
    let mtime = fs::metadata(&victim).unwrap();
    fs::write(&victim, &data).unwrap();
    set_mtime(&victim, super::tree::mtime_ns(&mtime));
    let diffs = compare_trees(&src, &dst);
    assert_eq!(diffs, vec!["large.bin: content differs".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_trees_finds_each_kind_of_difference() {
    let dir = tempfile::tempdir().unwrap();
    let make = |name: &str| {
        let root = dir.path().join(name);
        fs::create_dir_all(root.join("sub")).unwrap();
        fs::write(root.join("a"), b"same").unwrap();
        fs::write(root.join("b"), b"same").unwrap();
        fs::hard_link(root.join("a"), root.join("sub/a-link")).unwrap();
        std::os::unix::fs::symlink("a", root.join("sym")).unwrap();
        for e in ["a", "b", "sym", "sub/a-link", "sub", "."] {
            set_mtime(&root.join(e), 1_700_000_000_000_000_001);
        }
        root
    };
    let (a, b) = (make("a"), make("b"));
    assert!(compare_trees(&a, &b).is_empty());
    let touch = |p: &Path| set_mtime(p, 1_700_000_000_000_000_001);

    // One of each: content, mode, mtime, symlink target, hard link, extra entry.
    fs::write(b.join("b"), b"diff").unwrap();
    touch(&b.join("b"));
    chmod(&b.join("a"), 0o600);
    set_mtime(&b.join("sub"), 1_700_000_000_000_000_002);
    fs::remove_file(b.join("sym")).unwrap();
    std::os::unix::fs::symlink("b", b.join("sym")).unwrap();
    touch(&b.join("sym"));
    touch(&b);
    let mut d = compare_trees(&a, &b);
    d.sort();
    assert_eq!(d.len(), 5, "{d:#?}");
    assert!(d[0].starts_with("a: mode 0644 != 0600"), "{d:#?}");
    assert!(d[1].starts_with("b: content differs"), "{d:#?}");
    // The mode belongs to the inode, which the hard link shares.
    assert!(d[2].starts_with("sub/a-link: mode 0644 != 0600"), "{d:#?}");
    assert!(d[3].starts_with("sub: mtime"), "{d:#?}");
    assert!(d[4].starts_with("sym: symlink target"), "{d:#?}");

    let (a, b) = (make("c"), make("d"));
    // A hard link replaced by a copy with the same content and times.
    fs::remove_file(b.join("sub/a-link")).unwrap();
    fs::write(b.join("sub/a-link"), b"same").unwrap();
    touch(&b.join("sub/a-link"));
    touch(&b.join("sub"));
    fs::write(b.join("extra"), b"").unwrap();
    touch(&b);
    let xattr_ok = xattr::set(b.join("a"), "user.k", b"v").is_ok();
    let d = compare_trees(&a, &b);
    assert!(
        d.iter()
            .any(|l| l == "sub/a-link: hard-link identity differs"),
        "{d:#?}"
    );
    assert!(
        d.iter().any(|l| l == "extra: only in the second tree"),
        "{d:#?}"
    );
    if xattr_ok {
        assert!(d.iter().any(|l| l.starts_with("a: xattrs")), "{d:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_small_files_round_trip_and_reuse() {
    let fx = Fixture::new().await;
    let src = fx.path("src");
    for d in 0..10 {
        let dir = src.join(format!("dir{d}"));
        fs::create_dir(&dir).unwrap();
        for f in 0..1000 {
            fs::write(dir.join(format!("f{f:04}")), format!("file {d}/{f}\n")).unwrap();
        }
    }
    let started = Instant::now();
    let first = fx.backup(&src, "many", "run-1").await;
    eprintln!("10,000 files: backup {:?}", started.elapsed());
    assert_eq!(count(&first, "files"), 10_000);
    let started = Instant::now();
    let second = fx.backup(&src, "many", "run-2").await;
    eprintln!("10,000 files: incremental backup {:?}", started.elapsed());
    assert_eq!(bytes(&second, "read"), 0);
    assert_eq!(first.details["root"], second.details["root"]);
    let dst = fx.path("dst");
    let started = Instant::now();
    let restored = fx.restore("many", &dst).await;
    eprintln!("10,000 files: restore {:?}", started.elapsed());
    assert_eq!(count(&restored, "files"), 10_000);
    let diffs = compare_trees(&src, &dst);
    assert!(diffs.is_empty(), "{diffs:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedup_across_volumes_and_shifted_data() {
    let fx = Fixture::new().await;
    let size = 200 * MIB as usize;
    let data = random(size, 42);
    let (a, b, c) = (fx.path("a"), fx.path("b"), fx.path("c"));
    fs::write(a.join("data"), &data).unwrap();
    fs::write(b.join("copy"), &data).unwrap();
    let mut shifted = vec![0x5a];
    shifted.extend_from_slice(&data);
    fs::write(c.join("shifted"), &shifted).unwrap();
    drop((data, shifted));

    let started = Instant::now();
    let first = fx.backup(&a, "a", "run-a").await;
    let backup_secs = started.elapsed().as_secs_f64();
    assert!(bytes(&first, "new") >= size as u64);

    let same = fx.backup(&b, "b", "run-b").await;
    assert_eq!(bytes(&same, "read"), size as u64);
    let new_same = bytes(&same, "new") as f64 / size as f64;
    assert!(new_same < 0.01, "{same:?}");

    let moved = fx.backup(&c, "c", "run-c").await;
    let new_shifted = bytes(&moved, "new") as f64 / size as f64;
    assert!(new_shifted < 0.05, "{moved:?}");

    let dst = fx.path("dst");
    let started = Instant::now();
    fx.restore("a", &dst).await;
    let restore_secs = started.elapsed().as_secs_f64();
    assert!(compare_trees(&a, &dst).is_empty());
    eprintln!(
        "200 MiB: backup {backup_secs:.2}s ({:.0} MiB/s), restore {restore_secs:.2}s ({:.0} MiB/s); \
         new bytes for an identical copy {:.3}%, for a one-byte shift {:.2}%",
        200.0 / backup_secs,
        200.0 / restore_secs,
        new_same * 100.0,
        new_shifted * 100.0
    );
}

#[test]
fn tree_json_follows_the_format() {
    let mut n = node(b"bad-\xff", NodeType::File);
    n.size = 3;
    n.mtime_ns = -5;
    n.content = vec![crate::repo::BlobId([7; 32])];
    n.xattrs.insert(b"user.a".to_vec(), b"v".to_vec());
    n.xattrs.insert(b"user.\xfe".to_vec(), vec![0, 255]);
    let mut l = node(b"sym", NodeType::Symlink);
    l.target = Some(b"t\xff".to_vec());
    let mut h = node(b"zz", NodeType::Hardlink);
    h.link = Some(b"dir/first".to_vec());
    let mut d = node(b"\xc3\xa9t\xc3\xa9", NodeType::Dir);
    d.subtree = Some(crate::repo::BlobId([9; 32]));
    let tree = Tree {
        nodes: vec![n, l, h, d],
        next: None,
    };
    let json = tree.encode();
    let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    let nodes = v["nodes"].as_array().unwrap();
    assert_eq!(nodes[0]["name_b64"], "YmFkLf8=");
    assert!(nodes[0].get("name").is_none());
    assert_eq!(nodes[0]["type"], "file");
    assert_eq!(nodes[0]["content"][0], "07".repeat(32));
    assert_eq!(nodes[0]["xattrs"]["user.a"], "dg==");
    assert_eq!(nodes[0]["xattrs_b64"]["dXNlci7+"], "AP8=");
    assert_eq!(nodes[0]["mtime_ns"], -5);
    assert_eq!(nodes[1]["target_b64"], "dP8=");
    assert_eq!(nodes[2]["link"], "dir/first");
    assert_eq!(nodes[3]["name"], "été");
    assert_eq!(nodes[3]["subtree"], "09".repeat(32));
    assert!(nodes[3].get("content").is_none());
    // Same nodes, same bytes; and back.
    assert_eq!(tree.encode(), json);
    assert_eq!(Tree::decode(&json).unwrap(), tree);
    assert!(Tree::decode(br#"{"nodes":[{"type":"file"}]}"#).is_err());
    // A type from the future is read, and skipped by restore.
    let t = Tree::decode(br#"{"nodes":[{"name":"x","type":"whiteout","extra":1}]}"#).unwrap();
    assert_eq!(t.nodes[0].kind, NodeType::Unknown);
}

/// Names are unique and sorted by their bytes (docs/format.md §12); a
/// tree that breaks this is refused, naming the entry.
#[test]
fn tree_with_a_name_twice_or_out_of_order_is_refused() {
    use super::tree::TreeError;
    let decode = |names: &[&[u8]]| {
        let nodes = names.iter().map(|n| node(n, NodeType::File)).collect();
        Tree::decode(&serde_json::to_vec(&Tree { nodes, next: None }).unwrap())
    };
    // Byte order: uppercase before lowercase, and non-UTF-8 last.
    let ok = decode(&[b"A", b"a", b"a.txt", b"b", b"\xff"]).unwrap();
    assert_eq!(ok.nodes.len(), 5);
    match decode(&[b"a", b"b", b"b"]) {
        Err(e @ TreeError::Duplicate { .. }) => {
            assert_eq!(e.to_string(), "entry `b` appears more than once")
        }
        other => panic!("{other:?}"),
    }
    match decode(&[b"a", b"c", b"b"]) {
        Err(e @ TreeError::Unsorted { .. }) => assert_eq!(
            e.to_string(),
            "entry `b` comes after `c`; entries must be sorted by name"
        ),
        other => panic!("{other:?}"),
    }
    // A name that is not UTF-8 is shown lossily, still naming the entry.
    let e = decode(&[b"z", b"bad-\xff"]).unwrap_err();
    assert!(
        e.to_string().contains("`bad-\u{fffd}` comes after `z`"),
        "{e}"
    );
}

#[test]
fn chunker_params_outside_fastcdc_limits_are_refused() {
    use crate::repo::ChunkerParams;
    assert!(Chunker::new(ChunkerParams::default()).is_ok());
    for (min, avg, max) in [
        (16, 1024, 4096),
        (1 << 20, 1 << 20, 32 << 20),
        (257, 1024, 4096),
    ] {
        let e = Chunker::new(ChunkerParams { min, avg, max }).unwrap_err();
        assert!(e.to_string().contains("FastCDC"), "{e}");
    }
}

/// Small files are cut in memory, large ones streamed: the same bytes must
/// cut at the same points either way.
#[test]
fn in_memory_and_streaming_chunking_cut_alike() {
    use fastcdc::v2020::{FastCDC, StreamCDC};
    let data = random(3 * MIB as usize + 17, 8);
    let c = Chunker::new(crate::repo::ChunkerParams::default()).unwrap();
    let mem: Vec<(u64, usize)> = FastCDC::new(&data, c.min, c.avg, c.max)
        .map(|x| (x.offset as u64, x.length))
        .collect();
    let streamed: Vec<(u64, usize)> = StreamCDC::new(&data[..], c.min, c.avg, c.max)
        .map(|x| x.map(|x| (x.offset, x.length)).unwrap())
        .collect();
    assert!(mem.len() > 1, "{mem:?}");
    assert_eq!(mem, streamed);
}

/// The generic walker of check/prune/copy follows only `content` and
/// `subtree`; from a volume snapshot it must reach every blob the backup
/// stored, or prune would delete live data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generic_walker_reaches_every_blob_of_a_volume() {
    let fx = Fixture::new().await;
    let src = fx.path("src");
    fs::create_dir_all(src.join("a/b/c")).unwrap();
    fs::write(src.join("a/b/c/big"), random(6 * MIB as usize, 1)).unwrap();
    fs::write(src.join("a/small"), b"small").unwrap();
    fs::write(src.join("a/b/hl"), b"hard").unwrap();
    fs::hard_link(src.join("a/b/hl"), src.join("hl2")).unwrap();
    std::os::unix::fs::symlink("a", src.join("s")).unwrap();
    fx.backup(&src, "vol", "run-1").await;
    let runs = fx.repo.complete_runs().await.unwrap();
    let (id, m) = &runs[0].parts[0];
    let walk =
        crate::repo::walk::walk(&fx.repo, crate::repo::walk::Root::of_manifest(*id, m), 2).await;
    assert!(walk.problems.is_empty(), "{:?}", walk.problems);
    let stored: std::collections::HashSet<_> = fx.repo.index_entries().map(|(id, _)| id).collect();
    assert_eq!(walk.reachable, stored);
}

/// The tree blob ids of a listing's parts, from its first, in order.
async fn chain(repo: &Repository, first: crate::repo::BlobId) -> Vec<crate::repo::BlobId> {
    let mut ids = vec![first];
    loop {
        let raw = repo.read_blob(ids.last().unwrap()).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&raw).unwrap();
        match v["next"].as_str() {
            Some(n) => ids.push(n.parse().unwrap()),
            None => return ids,
        }
    }
}

/// A listing over the tree limit is stored as a chain of parts, each
/// within the limit, that the restore joins whole, the repository walk
/// reaches (so prune keeps every part) and the next backup compares whole
/// (nothing read again). Before, such a directory was recorded empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_over_the_limit_is_a_chain_restored_whole() {
    let fx = Fixture::new().await;
    let src = fx.path("src");
    let big = src.join("big");
    fs::create_dir(&big).unwrap();
    for i in 0..300 {
        fs::write(big.join(format!("file-{i:04}")), format!("body {i}")).unwrap();
    }
    let mut o = fx.opts(&src, "vol", "run-1");
    o.hooks.max_tree_bytes = Some(4096);
    let r = backup(&fx.repo, &o, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(r.status(), Status::Success, "{r:?}");

    let (id, m) = fx.repo.list_snapshots().await.unwrap().remove(0);
    let root = Tree::decode(&fx.repo.read_blob(&m.volumes["vol"].root).await.unwrap()).unwrap();
    let top = Tree::decode(
        &fx.repo
            .read_blob(&root.nodes[0].subtree.unwrap())
            .await
            .unwrap(),
    )
    .unwrap();
    let parts = chain(&fx.repo, top.find(b"big").unwrap().subtree.unwrap()).await;
    assert!(parts.len() > 3, "{} parts", parts.len());
    let mut names = Vec::new();
    for p in &parts {
        let raw = fx.repo.read_blob(p).await.unwrap();
        assert!(raw.len() <= 4096, "{}", raw.len());
        names.extend(
            Tree::decode(&raw)
                .unwrap()
                .nodes
                .into_iter()
                .map(|n| n.name),
        );
    }
    assert_eq!(names.len(), 300);
    assert!(
        names.windows(2).all(|w| w[0] < w[1]),
        "ascending across parts"
    );

    let walked =
        crate::repo::walk::walk(&fx.repo, crate::repo::walk::Root::of_manifest(id, &m), 2).await;
    assert!(walked.problems.is_empty());
    for p in &parts {
        assert!(walked.reachable.contains(p), "part {p} unreachable");
    }

    let dst = fx.path("dst");
    let rep = fx.restore("vol", &dst).await;
    assert_eq!(rep.status(), Status::Success, "{rep:?}");
    for i in [0, 137, 299] {
        assert_eq!(
            fs::read_to_string(dst.join(format!("big/file-{i:04}"))).unwrap(),
            format!("body {i}")
        );
    }
    assert_eq!(fs::read_dir(dst.join("big")).unwrap().count(), 300);

    o.run_id = "run-2".into();
    let again = backup(&fx.repo, &o, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(bytes(&again, "read"), 0, "{again:?}");
}

/// A chain whose names go back (a part that repeats an earlier one, as a
/// loop would) or an empty part that names another is refused, naming
/// the tree; the restore fails that directory only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_that_goes_back_or_goes_nowhere_is_refused() {
    let fx = Fixture::in_memory().await;
    let w = fx.repo.writer(1);
    let put = |t: Tree| {
        let w = &w;
        async move {
            w.add(BlobKind::Tree, Bytes::from(t.encode()))
                .await
                .unwrap()
                .0
        }
    };
    let b = put(Tree {
        nodes: vec![node(b"a", NodeType::Dir)],
        next: None,
    })
    .await;
    let a = put(Tree {
        nodes: vec![node(b"b", NodeType::Dir)],
        next: Some(b),
    })
    .await;
    let empty = put(Tree {
        nodes: vec![],
        next: Some(b),
    })
    .await;
    w.finish().await.unwrap();
    let err = load_tree(&fx.repo, &a).await.unwrap_err().to_string();
    assert!(
        err.contains(&b.to_hex()) && err.contains("comes after"),
        "{err}"
    );
    let err = load_tree(&fx.repo, &empty).await.unwrap_err().to_string();
    assert!(err.contains("empty part"), "{err}");
    assert_eq!(load_tree(&fx.repo, &b).await.unwrap().nodes.len(), 1);
}
