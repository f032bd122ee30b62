//! The backend contract as executable checks. Panics with the failing case.

use bytes::Bytes;

use super::Backend;

/// Runs every check against an empty backend.
pub async fn check_all(b: &dyn Backend) {
    let data = Bytes::from((0..100_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>());

    assert_eq!(
        b.head("data/ab/one").await.unwrap(),
        None,
        "head of a missing key"
    );
    let err = b.get("data/ab/one").await.unwrap_err();
    assert!(err.is_not_found(), "get of a missing key: {err}");
    assert!(
        err.to_string().contains("data/ab/one"),
        "error names the key: {err}"
    );

    b.put("data/ab/one", data.clone()).await.unwrap();
    b.put("data/cd/two", Bytes::from_static(b"two"))
        .await
        .unwrap();
    b.put("config", Bytes::from_static(b"cfg")).await.unwrap();
    b.put("empty", Bytes::new()).await.unwrap();

    assert_eq!(b.get("data/ab/one").await.unwrap(), data);
    assert_eq!(b.get("empty").await.unwrap().len(), 0);
    assert_eq!(b.head("data/ab/one").await.unwrap(), Some(100_000));
    assert!(b.exists("config").await.unwrap());
    assert_eq!(
        b.get_range("data/ab/one", 1000, 5000).await.unwrap(),
        data.slice(1000..6000)
    );
    assert_eq!(
        b.get_range("data/ab/one", 99_999, 1).await.unwrap(),
        data.slice(99_999..)
    );
    assert!(
        b.get_range("data/ab/one", 99_999, 2).await.is_err(),
        "range past the end"
    );
    // A backend that reads on the calling thread reads the same.
    if let Some(r) = b.get_range_blocking("data/ab/one", 1000, 5000) {
        assert_eq!(r.unwrap(), data.slice(1000..6000), "blocking range read");
        let past = b.get_range_blocking("data/ab/one", 99_999, 2).unwrap();
        assert!(past.is_err(), "blocking range read past the end");
        let missing = b.get_range_blocking("data/ab/none", 0, 1).unwrap();
        assert!(
            missing.as_ref().is_err_and(|e| e.is_not_found()),
            "blocking range read of a missing key: {missing:?}"
        );
        let escape = b.get_range_blocking("../outside", 0, 1).unwrap();
        assert!(escape.is_err(), "blocking range read outside the root");
    }

    let mut keys: Vec<_> = b
        .list("data/")
        .await
        .unwrap()
        .into_iter()
        .map(|o| (o.key, o.size))
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        vec![
            ("data/ab/one".to_string(), 100_000),
            ("data/cd/two".to_string(), 3)
        ]
    );
    let all = b.list("").await.unwrap();
    assert_eq!(all.len(), 4, "list everything: {all:?}");
    assert!(b.list("nothing/").await.unwrap().is_empty());
    let cfg: Vec<_> = b
        .list("config")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(cfg, vec!["config".to_string()]);

    // Overwrite is allowed by the backend (the repository never does it).
    b.put("config", Bytes::from_static(b"cfg2")).await.unwrap();
    assert_eq!(b.get("config").await.unwrap(), Bytes::from_static(b"cfg2"));

    b.delete("data/cd/two").await.unwrap();
    assert_eq!(b.head("data/cd/two").await.unwrap(), None);
    b.delete("data/cd/two").await.unwrap(); // idempotent

    for bad in ["", "/abs", "a/../b", "a//b"] {
        assert!(
            b.put(bad, Bytes::new()).await.is_err(),
            "key {bad:?} must be rejected"
        );
    }
    b.probe().await.unwrap();
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn memory_backend_honours_the_contract() {
        super::check_all(&super::super::MemBackend::new()).await;
    }

    use super::super::Backend;

    #[tokio::test]
    async fn filesystem_backend_honours_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        let b = super::super::FsBackend::new(dir.path().join("repo"));
        b.probe().await.unwrap(); // root does not exist yet: parent is fine
        super::check_all(&b).await;
        // No temp files are left behind.
        let stray = walkdir(dir.path());
        assert!(stray.iter().all(|p| !p.contains(".tmp-")), "{stray:?}");
    }

    fn walkdir(p: &std::path::Path) -> Vec<String> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(p).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                out.extend(walkdir(&e.path()));
            } else {
                out.push(e.path().display().to_string());
            }
        }
        out
    }
}
