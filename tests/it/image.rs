//! The container image `scripts/image.sh` builds (Debian's packages, no Docker engine, as an
//! OCI layout in DBWARD_TEST_IMAGE, built by scripts/test.sh), run with runc as a container
//! runs it: `dbward run` as process 1 migrates, starts the application, finds it healthy, and
//! on SIGTERM (what `docker stop` sends) hands the signal to it and ends with it. Everything
//! runs as the image's own user, on the package's paths.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{tool, Http, MISSING};

/// A container started by this test: killed and deleted on every path out.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("runc")
            .args(["kill", &self.0, "KILL"])
            .output();
        let _ = Command::new("runc")
            .args(["delete", "--force", &self.0])
            .output();
    }
}

/// Waits (at most a minute) for `what` to hold, saying what it waited for, and what the
/// container said, when it does not.
fn wait_until(what: &str, said: impl Fn() -> String, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "waited a minute for {what}; the container said:\n{}",
            said()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_image_runs_dbward_as_process_1_with_its_own_user_and_the_packages_paths() {
    let image = PathBuf::from(std::env::var("DBWARD_TEST_IMAGE").unwrap_or_else(|_| {
        panic!(
            "DBWARD_TEST_IMAGE is not set: {MISSING} (it builds the image with scripts/image.sh)"
        )
    }));
    let dir = common::server_dir("image");
    let bundle = dir.path().join("bundle");
    tool(
        Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:dbward", image.display()))
            .arg(&bundle),
    );
    let rootfs = bundle.join("rootfs");
    // The image as built: the binary where the package puts it, a state dir its user owns.
    assert!(rootfs.join("usr/bin/dbward").is_file());
    let uid = |p: &Path| std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(p).unwrap());
    assert_eq!(uid(&rootfs.join("var/lib/dbward")), 10001);
    // The state dir is the image's VOLUME: a volume a container engine makes for it takes the
    // image directory's owner and mode, as this one does.
    let state = dir.path().join("volume");
    std::fs::create_dir(&state).unwrap();
    std::os::unix::fs::chown(&state, Some(10001), Some(10001)).unwrap();
    std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o750)).unwrap();
    assert!(
        rootfs.join("usr/bin/pg_dump").exists(),
        "the PostgreSQL client tools"
    );

    // The application: the repository's demo migrations, and a process that says who it runs
    // as and ends cleanly on SIGTERM.
    let app = rootfs.join("app");
    std::fs::create_dir_all(app.join("migrations")).unwrap();
    for e in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), app.join("migrations").join(e.file_name())).unwrap();
    }
    std::fs::write(
        app.join("app.sh"),
        "#!/bin/sh\ntrap 'echo stopped > /var/lib/dbward/app-stopped; exit 0' TERM\nid -u > /var/lib/dbward/app-uid.new && mv /var/lib/dbward/app-uid.new /var/lib/dbward/app-uid\nwhile :; do sleep 0.2; done\n",
    )
    .unwrap();
    std::fs::set_permissions(
        app.join("app.sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let health = Http::status(200);
    let config = bundle.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    // The image's entrypoint, with `run` as a compose file gives it.
    assert_eq!(spec["process"]["args"][0], "/usr/bin/dbward");
    spec["process"]["args"] = serde_json::json!([
        "/usr/bin/dbward",
        "--database",
        "sqlite:/var/lib/dbward/app.db",
        "--migrations",
        "/app/migrations",
        "run",
        "--url",
        format!("http://127.0.0.1:{}/", health.port),
        "--",
        "/app/app.sh"
    ]);
    spec["process"]["terminal"] = false.into();
    // The host's network: the health endpoint is this test's, on loopback.
    let namespaces = spec["linux"]["namespaces"].as_array_mut().unwrap();
    namespaces.retain(|n| n["type"] != "network");
    let mounts = spec["mounts"].as_array_mut().unwrap();
    let volume = mounts
        .iter_mut()
        .find(|m| m["destination"] == "/var/lib/dbward")
        .expect("the image declares /var/lib/dbward a volume");
    *volume = serde_json::json!({
        "destination": "/var/lib/dbward",
        "type": "bind",
        "source": state,
        "options": ["rbind", "rw"],
    });
    std::fs::write(&config, spec.to_string()).unwrap();

    // First deploy: nothing to snapshot. Then a release with a new migration: its pre-deploy
    // snapshot goes to the default store, relative to the working directory, in the volume.
    let first = deploy(dir.path(), &bundle, &state, "first");
    assert!(first.contains("applied 4 migration(s)"), "{first}");
    assert_eq!(uid(&state.join("app.db")), 10001, "{first}");
    std::fs::write(
        app.join("migrations/V5__add_note.sql"),
        "ALTER TABLE users ADD COLUMN note TEXT;\n",
    )
    .unwrap();
    let second = deploy(dir.path(), &bundle, &state, "second");
    assert!(second.contains("applied 1 migration(s)"), "{second}");
    let snapshots: Vec<_> = std::fs::read_dir(state.join(".dbward/snapshots/app"))
        .unwrap_or_else(|e| panic!("no snapshot in the volume ({e}): {second}"))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".sqlite.zst"))
        .collect();
    assert_eq!(snapshots.len(), 1, "{snapshots:?}: {second}");
}

/// One start of the container (`run` as process 1) until it is healthy, then `docker stop`:
/// SIGTERM to process 1. Checks who runs what, and that the application got the signal and
/// the container ended with it; returns what dbward said.
fn deploy(dir: &Path, bundle: &Path, state: &Path, name: &str) -> String {
    let _ = std::fs::remove_file(state.join("app-stopped"));
    let _ = std::fs::remove_file(state.join("app-uid"));
    let id = format!("dbward-test-{}-{name}", std::process::id());
    let log = dir.join(format!("{name}.log"));
    let mut runc = Command::new("runc")
        .args(["run", "--bundle"])
        .arg(bundle)
        .arg(&id)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join(format!("{name}.out"))).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("runc: {e}: {MISSING}"));
    let container = Container(id.clone());
    let said = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until("the application to be healthy", said, || {
        said().contains("healthy; waiting on")
    });
    // The health endpoint is this test's and answers at once: the application may still be
    // starting. It sets its SIGTERM trap, then writes its user id whole (a rename): a file there is
    // complete and the trap is set.
    wait_until("the application to say who it runs as", said, || {
        state.join("app-uid").exists()
    });
    assert_eq!(
        std::fs::read_to_string(state.join("app-uid"))
            .unwrap()
            .trim(),
        "10001",
        "the application runs as the image's user"
    );
    // The container's process 1 (its init, as runc reports it) is dbward.
    let state_json: serde_json::Value =
        serde_json::from_str(&tool(Command::new("runc").args(["state", &id]))).unwrap();
    let init = state_json["pid"].as_i64().unwrap();
    let cmdline = std::fs::read(format!("/proc/{init}/cmdline")).unwrap();
    assert!(
        cmdline.starts_with(b"/usr/bin/dbward\0"),
        "{}",
        String::from_utf8_lossy(&cmdline)
    );

    // `docker stop`: SIGTERM to process 1, which is dbward.
    tool(Command::new("runc").args(["kill", &id, "TERM"]));
    let start = Instant::now();
    let status = loop {
        if let Some(s) = runc.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the container did not stop within a minute of SIGTERM: {}",
            said()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(0), "{}", said());
    assert_eq!(
        std::fs::read_to_string(state.join("app-stopped"))
            .unwrap()
            .trim(),
        "stopped",
        "the application got the SIGTERM"
    );
    drop(container);
    said()
}
