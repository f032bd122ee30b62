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

/// A hostile or damaged tree cannot make restore write outside the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_refuses_names_and_links_that_escape() {
    let fx = Fixture::new().await;
    let outside = fx.path("outside");
    fs::write(outside.join("secret"), b"outside").unwrap();
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
    escape_link.link = Some(b"../outside/secret".to_vec());
    let mut via_symlink = node(b"hl-via-symlink", NodeType::Hardlink);
    via_symlink.link = Some(b"sym/secret".to_vec());
    let mut sym = node(b"sym", NodeType::Symlink);
    sym.target = Some(outside.as_os_str().as_bytes().to_vec());
    // `sym` then a directory of the same name: the symlink is replaced,
    // not followed.
    let mut sym_dir = node(b"sym", NodeType::Dir);
    sym_dir.mode = 0o755;
    let inner = Tree {
        nodes: vec![file(b"secret")],
    };
    sym_dir.subtree = Some(
        w.add(BlobKind::Tree, Bytes::from(inner.encode()))
            .await
            .unwrap()
            .0,
    );
    let listing = Tree {
        nodes: vec![
            file(b".."),
            file(b"a/b"),
            escape_link,
            sym,
            via_symlink,
            sym_dir,
            file(b"ok"),
        ],
    };
    let listing_id = w
        .add(
            BlobKind::Tree,
            Bytes::from(serde_json::to_vec(&listing).unwrap()),
        )
        .await
        .unwrap()
        .0;
    let mut root = node(b".", NodeType::Dir);
    root.mode = 0o755;
    root.subtree = Some(listing_id);
    let (root_id, _) = w
        .add(
            BlobKind::Tree,
            Bytes::from(Tree { nodes: vec![root] }.encode()),
        )
        .await
        .unwrap();
    w.finish().await.unwrap();
    let mut m = SnapshotManifest::new("evil", 0, 1, "daily");
    m.volumes.insert(
        "evil".into(),
        VolumeEntry {
            root: root_id,
            stats: serde_json::Value::Null,
        },
    );
    fx.repo.save_snapshot(&m).await.unwrap();

    let dst = fx.path("dst");
    let report = fx.restore("evil", &dst).await;
    let failed: Vec<&str> = report.errors.iter().map(|e| e.item.as_str()).collect();
    assert_eq!(
        failed,
        vec!["..", "a/b", "hl-escape", "hl-via-symlink"],
        "{:?}",
        report.errors
    );
    assert_eq!(fs::read(outside.join("secret")).unwrap(), b"outside");
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 1);
    assert_eq!(fs::read(dst.join("ok")).unwrap(), b"payload");
    assert!(fs::symlink_metadata(dst.join("sym")).unwrap().is_dir());
    assert_eq!(fs::read(dst.join("sym/secret")).unwrap(), b"payload");
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
