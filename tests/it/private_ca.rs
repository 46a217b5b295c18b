//! An S3 endpoint behind a private CA (MinIO on a LAN, a corporate proxy): the real S3 test
//! server behind a TLS front whose certificate a throwaway CA signed. Without the CA the error
//! says the certificate is not trusted and how to fix it; with `AWS_CA_BUNDLE` (as the AWS CLI
//! and boto3 read it) or `store.ca_file`, backups and restores work.

use crate::common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::{run, sqlite, tool, Project, S3};

/// A CA and a certificate for 127.0.0.1 it signed, made with the openssl CLI.
fn throwaway_ca(dir: &Path) {
    let openssl = |args: &[&str]| {
        tool(Command::new("openssl").args(args).current_dir(dir));
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=dbward test CA",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
}

struct Front(Child);

impl Drop for Front {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The TLS front for `s3`; its port.
fn tls_front(s3: &S3, dir: &Path) -> (Front, u16) {
    let mut child = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls_proxy.py"))
        .arg(s3.port.to_string())
        .arg(dir.join("server.pem"))
        .arg(dir.join("server.key"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    (Front(child), line.trim().parse().expect("the front's port"))
}

#[test]
fn an_s3_endpoint_behind_a_private_ca() {
    let s3 = S3::start();
    let certs = tempfile::tempdir().unwrap();
    throwaway_ca(certs.path());
    let (_front, port) = tls_front(&s3, certs.path());
    let p = Project::new();
    p.migration(
        "V1__t.sql",
        "CREATE TABLE t (id INTEGER);\nINSERT INTO t VALUES (1);\n",
    );
    assert_eq!(run(p.dbward("sqlite:app.db").arg("migrate")).0, 0);
    let dbward = || {
        let mut c = p.dbward("sqlite:app.db");
        s3.configure(&mut c);
        c.env("DBWARD_S3_ENDPOINT", format!("https://127.0.0.1:{port}"));
        c
    };

    let (code, _, err) = run(dbward().arg("backup"));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("certificate is not trusted") && err.contains("AWS_CA_BUNDLE"),
        "{err}"
    );

    let ca = certs.path().join("ca.pem");
    let (code, _, err) = run(dbward().env("AWS_CA_BUNDLE", &ca).arg("backup"));
    assert_eq!(code, 0, "{err}");

    std::fs::write(
        p.path().join("dbward.toml"),
        format!("[store]\nca_file = \"{}\"\n", ca.display()),
    )
    .unwrap();
    sqlite(&p.path().join("app.db"), "DELETE FROM t");
    let (code, _, err) = run(dbward().args(["restore", "latest", "--yes"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        sqlite(&p.path().join("app.db"), "SELECT count(*) FROM t"),
        "1"
    );

    // A CA file that cannot be read is a usage error naming it.
    let (code, _, err) = run(dbward()
        .env("AWS_CA_BUNDLE", "/nonexistent/ca.pem")
        .arg("snapshots"));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("/nonexistent/ca.pem"), "{err}");
}
