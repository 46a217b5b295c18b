//! The store contract, one suite run against every kind of store: a local directory and the
//! real S3 test server. What `backup` builds on (a manifest is never overwritten, an upload
//! without its end leaves no object, a missing object is `Missing`, sizes and bytes come back
//! as written) holds for both, so a third store only has to pass this file.

use crate::common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use ::backup::pipeline::Msg;
use ::backup::{Error, Store};
use common::{free_port, server_dir, MISSING, S3, S3_ACCESS_KEY, S3_SECRET_KEY};

async fn contract(store: &Store, what: &str) {
    let key = "db/20261122T093000Z-manual-3f2a.json";
    // put_new writes once, never over an existing object.
    store.put_new(key, b"first").await.unwrap();
    assert!(
        matches!(store.put_new(key, b"second").await, Err(Error::Exists(_))),
        "{what}: put_new overwrote, or failed for another reason"
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

    // Listing reads every page: more objects than one page of an S3 listing (1,000) holds.
    for n in 0..1005 {
        store
            .put(&format!("many/k{n:05}.json"), b"{}")
            .await
            .unwrap();
    }
    assert_eq!(store.list("many").await.unwrap().len(), 1005, "{what}");

    // The folders under the root, one per database (`report` lists them), names only, sorted.
    store.put("db/deploys/x.json", b"{}").await.unwrap();
    assert_eq!(
        store.folders().await.unwrap(),
        ["db", "many"],
        "{what}: a folder's subfolders are not the root's"
    );

    // list_after: exactly the keys whose name (relative to the folder) sorts after the one
    // given (itself excluded, a name between two keys works), one level, `None` being all;
    // `restore latest` and the catalog's time windows rely on it.
    let names = |listed: Vec<::backup::store::ObjectInfo>| {
        let mut v: Vec<String> = listed.into_iter().map(|o| o.key).collect();
        v.sort();
        v
    };
    for k in [
        "win/20261101T000000Z-a.json",
        "win/20261102T000000Z-b.json",
        "win/20261103T000000Z-c.json",
    ] {
        store.put(k, b"{}").await.unwrap();
    }
    store
        .put("win/sub/20261104T000000Z-d.json", b"{}")
        .await
        .unwrap();
    assert_eq!(
        names(
            store
                .list_after("win", Some("20261102T000000Z-b.json"))
                .await
                .unwrap()
        ),
        ["win/20261103T000000Z-c.json"],
        "{what}: after an existing name"
    );
    assert_eq!(
        names(store.list_after("win", Some("20261101T5")).await.unwrap()),
        ["win/20261102T000000Z-b.json", "win/20261103T000000Z-c.json"],
        "{what}: after a name between two keys"
    );
    assert_eq!(
        names(store.list_after("win", None).await.unwrap()),
        [
            "win/20261101T000000Z-a.json",
            "win/20261102T000000Z-b.json",
            "win/20261103T000000Z-c.json"
        ],
        "{what}: None is every name of that level, and none below it"
    );
    assert!(
        store
            .list_after("win", Some("20261199"))
            .await
            .unwrap()
            .is_empty(),
        "{what}: after the last name"
    );

    // download_blocks: the object's bytes in blocks of BLOCK (the last one shorter), with the
    // size and SHA-256 `download` gives; a receiver that goes away early does not cut the
    // hashing short (a damaged object is told by its checksum); a missing object is `Missing`.
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    let reader = tokio::spawn(async move {
        let mut blocks = Vec::new();
        while let Some(b) = rx.recv().await {
            blocks.push(b);
        }
        blocks
    });
    let (n_blocks, sha_blocks) = store.download_blocks(data_key, tx).await.unwrap();
    let blocks = reader.await.unwrap();
    assert_eq!((n_blocks, &sha_blocks), (n, &sha), "{what}");
    let (last, full) = blocks.split_last().unwrap();
    assert!(
        full.iter().all(|b| b.len() == ::backup::store::BLOCK)
            && last.len() <= ::backup::store::BLOCK,
        "{what}: block sizes {:?}",
        blocks.iter().map(Vec::len).collect::<Vec<_>>()
    );
    assert_eq!(blocks.concat(), payload, "{what}");
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(1);
    let quitter = tokio::spawn(async move {
        rx.recv().await;
        drop(rx);
    });
    let (n_quit, sha_quit) = store.download_blocks(data_key, tx).await.unwrap();
    quitter.await.unwrap();
    assert_eq!(
        (n_quit, &sha_quit),
        (n, &sha),
        "{what}: the receiver left after one block"
    );
    let (tx, _rx) = tokio::sync::mpsc::channel(1);
    assert!(
        matches!(
            store.download_blocks("db/none.sqlite.zst", tx).await,
            Err(Error::Missing(_))
        ),
        "{what}: download_blocks of a missing object"
    );
    assert!(
        matches!(
            store.download("db/none.sqlite.zst", &mut Vec::new()).await,
            Err(Error::Missing(_))
        ),
        "{what}: download of a missing object"
    );

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
    let opts = ::backup::StoreOptions {
        endpoint: Some(s3.endpoint()),
        region: Some("us-east-1".into()),
        path_style: true,
        part_size: Some(5 << 20),
        max_in_flight: 2,
        ca_file: None,
        timeout: ::backup::store::s3::DEFAULT_TIMEOUT,
        group: None,
    };
    let store = Store::open(&format!("s3://{}/contract", s3.bucket), &opts)
        .await
        .unwrap();
    contract(&store, "s3://").await;
}

/// moto's S3 server (s3s-fs does not list multipart uploads), started from a launcher file in
/// this run's server directory, so the suite's cleanup can find it; stopped on drop.
struct Moto {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Moto {
    fn start() -> Moto {
        let dir = server_dir("dbward-test-moto-");
        let port = free_port();
        let launcher = dir.path().join("launch_moto_server.py");
        std::fs::write(
            &launcher,
            format!("from moto.server import main\nmain(['-H', '127.0.0.1', '-p', '{port}'])\n"),
        )
        .unwrap();
        let child = Command::new("python3")
            .arg(&launcher)
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("moto.log")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("python3: {e}: {MISSING}"));
        let mut m = Moto {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                m.child.try_wait().unwrap().is_none(),
                "moto_server exited: {} ({MISSING}; it installs moto[server])",
                std::fs::read_to_string(m._dir.path().join("moto.log")).unwrap_or_default()
            );
            assert!(Instant::now() < deadline, "moto_server did not listen");
            std::thread::sleep(Duration::from_millis(100));
        }
        m
    }

    /// Runs boto3 against this server; `script` sees `s3` and `bucket`. Returns stdout.
    fn boto3(&self, script: &str) -> String {
        let full = format!(
            "import boto3\ns3 = boto3.client('s3', endpoint_url='http://127.0.0.1:{}', aws_access_key_id='k', aws_secret_access_key='s', region_name='us-east-1')\nbucket = 'uploads'\n{script}",
            self.port
        );
        let out = Command::new("python3")
            .arg("-c")
            .arg(full)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "boto3: {} ({MISSING})",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Prune's cleanup of multipart uploads a killed backup left: only uploads of dbward's own
/// data keys in the database's folder are aborted; another tool's upload under the same prefix,
/// and another database's, stay. More than 1,000 uploads are listed; moto answers them in one
/// page (it does not implement max-uploads), so the listing's paging by key and upload-id
/// markers is not exercised here: no test server on this machine pages that listing.
#[tokio::test]
async fn stale_multipart_uploads_are_aborted_only_for_dbwards_own_keys() {
    let moto = Moto::start();
    moto.boto3(
        "s3.create_bucket(Bucket=bucket)\n\
         for n in range(1003):\n\
         \x20   s3.create_multipart_upload(Bucket=bucket, Key='pre/db/20261122T%02d%02d%02dZ-manual-%04x.sqlite.zst' % (n // 3600, n // 60 % 60, n % 60, n))\n\
         for k in ['pre/db/notes.txt', 'pre/db/backup.sqlite.zst', 'pre/other/20261122T093000Z-manual-3f2a.sqlite.zst']:\n\
         \x20   s3.create_multipart_upload(Bucket=bucket, Key=k)\n",
    );

    std::env::set_var("AWS_ACCESS_KEY_ID", "k");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "s");
    let opts = ::backup::StoreOptions {
        endpoint: Some(format!("http://127.0.0.1:{}", moto.port)),
        region: Some("us-east-1".into()),
        path_style: true,
        part_size: Some(5 << 20),
        max_in_flight: 2,
        ca_file: None,
        timeout: ::backup::store::s3::DEFAULT_TIMEOUT,
        group: None,
    };
    let store = Store::open("s3://uploads/pre", &opts).await.unwrap();
    let ours = |key: &str| {
        matches!(
            ::backup::manifest::OwnKey::parse("db", key),
            Some(::backup::manifest::OwnKey::Data(..))
        )
    };
    // moto dates every upload in 2010: all are older than now.
    let dry = store
        .abort_stale_uploads("db", SystemTime::now(), true, &ours)
        .await
        .unwrap();
    assert_eq!(dry.len(), 1003);
    let aborted = store
        .abort_stale_uploads("db", SystemTime::now(), false, &ours)
        .await
        .unwrap();
    assert_eq!(aborted.len(), 1003);
    let left = moto.boto3(
        "r = s3.list_multipart_uploads(Bucket=bucket)\n\
         print(sorted(u['Key'] for u in r.get('Uploads', [])))\n",
    );
    assert_eq!(
        left.trim(),
        "['pre/db/backup.sqlite.zst', 'pre/db/notes.txt', 'pre/other/20261122T093000Z-manual-3f2a.sqlite.zst']"
    );
}
