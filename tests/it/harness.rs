//! The harness itself: the real servers start on loopback and answer as the real thing.

use crate::common;

use std::io::{Read, Write};

#[test]
fn the_s3_server_is_real_and_refuses_unsigned_requests() {
    let s3 = common::S3::start();
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", s3.port)).unwrap();
    write!(
        conn,
        "GET /{}/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        s3.bucket
    )
    .unwrap();
    let mut reply = String::new();
    conn.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 403"), "{reply}");
    assert!(
        reply.contains("AccessDenied") || reply.contains("Signature"),
        "an S3 error document: {reply}"
    );
}

#[test]
fn the_postgres_cluster_answers_on_its_port_and_its_files_are_not_roots() {
    use std::os::unix::fs::MetadataExt;
    let pg = common::Pg::start();
    assert_eq!(
        pg.psql("postgres", "SELECT current_setting('port')"),
        pg.port.to_string()
    );
    // initdb refuses root: the cluster belongs to `postgres` (or to a non-root runner).
    assert_ne!(std::fs::metadata(pg.data_dir()).unwrap().uid(), 0);
}
