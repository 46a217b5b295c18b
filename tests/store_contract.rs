//! The store contract, one suite run against every kind of store: a local directory and the
//! real S3 test server. What `backup` builds on (a manifest is never overwritten, an upload
//! without its end leaves no object, a missing object is `Missing`, sizes and bytes come back
//! as written) holds for both, so a third store only has to pass this file.

mod common;

use backup::pipeline::Msg;
use backup::{Error, Store};
use common::{S3, S3_ACCESS_KEY, S3_SECRET_KEY};

async fn contract(store: &Store, what: &str) {
    let key = "db/20261122T093000Z-manual-3f2a.json";
    // put_new writes once, never over an existing object.
    store.put_new(key, b"first").await.unwrap();
    assert!(
        store.put_new(key, b"second").await.is_err(),
        "{what}: put_new overwrote"
    );
    assert_eq!(store.get_bytes(key).await.unwrap(), b"first", "{what}");
    // put replaces (receipts, the failed-batch record).
    store.put("db/other.json", b"one").await.unwrap();
    store.put("db/other.json", b"two").await.unwrap();
    assert_eq!(
        store.get_bytes("db/other.json").await.unwrap(),
        b"two",
        "{what}"
    );

    // A stream with its end: exactly the bytes, and the size the store reports.
    let data_key = "db/20261122T093000Z-manual-3f2a.sqlite.zst";
    let chunk = store.chunk_size(20 << 20);
    let payload: Vec<u8> = (0..(chunk * 2 + 12345))
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let sender = {
        let payload = payload.clone();
        tokio::spawn(async move {
            for c in payload.chunks(chunk) {
                tx.send(Msg::Data(c.to_vec())).await.unwrap();
            }
            tx.send(Msg::Done).await.unwrap();
        })
    };
    let size = store.put_stream(data_key, rx).await.unwrap();
    sender.await.unwrap();
    assert_eq!(size, payload.len() as u64, "{what}");
    let dir = tempfile::tempdir().unwrap();
    let mut file = std::fs::File::create(dir.path().join("d")).unwrap();
    let (n, sha) = store.download(data_key, &mut file).await.unwrap();
    assert_eq!(n, payload.len() as u64, "{what}");
    assert_eq!(
        std::fs::read(dir.path().join("d")).unwrap(),
        payload,
        "{what}"
    );
    assert_eq!(sha.len(), 64);

    // A stream that ends without `Done` (the source failed): no object at all.
    let broken = "db/20261122T093001Z-manual-0001.sqlite.zst";
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let sender = tokio::spawn(async move {
        tx.send(Msg::Data(vec![1u8; chunk])).await.unwrap();
        tx.send(Msg::Data(vec![2u8; chunk])).await.unwrap();
        drop(tx);
    });
    assert!(store.put_stream(broken, rx).await.is_err(), "{what}");
    sender.await.unwrap();
    assert!(
        matches!(store.get_bytes(broken).await, Err(Error::Missing(_))),
        "{what}"
    );

    // Listing: one level, keys relative to the prefix, sizes.
    let mut listed = store.list("db").await.unwrap();
    listed.sort_by(|a, b| a.key.cmp(&b.key));
    let keys: Vec<&str> = listed.iter().map(|o| o.key.as_str()).collect();
    assert!(
        keys.contains(&key) && keys.contains(&data_key),
        "{what}: {keys:?}"
    );
    assert!(
        !keys.iter().any(|k| k.contains("0001")),
        "{what}: the broken upload is listed: {keys:?}"
    );
    let data = listed.iter().find(|o| o.key == data_key).unwrap();
    assert_eq!(data.size, payload.len() as u64, "{what}");

    // Missing objects, and deletes (idempotent).
    assert!(
        matches!(
            store.get_bytes("db/none.json").await,
            Err(Error::Missing(_))
        ),
        "{what}"
    );
    store.delete(key).await.unwrap();
    store.delete(key).await.unwrap();
    assert!(
        matches!(store.get_bytes(key).await, Err(Error::Missing(_))),
        "{what}"
    );
}

#[tokio::test]
async fn a_local_directory_keeps_the_store_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        &format!("file://{}", dir.path().display()),
        &Default::default(),
    )
    .await
    .unwrap();
    contract(&store, "file://").await;
}

#[tokio::test]
async fn the_s3_test_server_keeps_the_store_contract() {
    let s3 = S3::start();
    // This test process talks to S3 itself: the SDK reads its credentials from the environment.
    std::env::set_var("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY);
    std::env::set_var("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY);
    let opts = backup::S3Options {
        endpoint: Some(s3.endpoint()),
        region: Some("us-east-1".into()),
        path_style: true,
        part_size: Some(5 << 20),
        max_in_flight: 2,
        ca_file: None,
    };
    let store = Store::open(&format!("s3://{}/contract", s3.bucket), &opts)
        .await
        .unwrap();
    contract(&store, "s3://").await;
}
