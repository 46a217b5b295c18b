//! The toolchain dbward says it builds with is one it builds with: Cargo.toml's `rust-version`
//! and the Dockerfile's Rust image are at least the newest `rust-version` of every locked
//! dependency (`cargo metadata --locked`), so `cargo install` on that toolchain and
//! `docker build` do not stop at "rustc X is not supported by the following packages".

use std::path::Path;
use std::process::Command;

fn version(v: &str) -> Vec<u64> {
    v.split('.').map(|p| p.parse().unwrap_or(0)).collect()
}

#[test]
fn rust_version_and_the_images_rust_cover_every_locked_dependency() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .current_dir(root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (needed, by) = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["source"].is_string())
        .filter_map(|p| Some((version(p["rust_version"].as_str()?), p["name"].to_string())))
        .max()
        .unwrap();
    assert!(needed >= version("1.80"), "{needed:?} (by {by})");

    let ours = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "dbward")
        .and_then(|p| p["rust_version"].as_str())
        .map(version)
        .unwrap();
    assert!(
        ours >= needed,
        "Cargo.toml says rust-version {ours:?}; {by} needs {needed:?}"
    );

    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    let image = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("FROM rust:"))
        .and_then(|tag| tag.split('-').next())
        .expect("the Dockerfile builds FROM rust:<version>-...");
    assert!(
        version(image) >= needed,
        "the Dockerfile builds with Rust {image}; {by} needs {needed:?}"
    );
    // The image runs as its own user, and keeps the binary where the package puts it.
    assert!(dockerfile.contains("\nUSER dbward\n"), "{dockerfile}");
    assert!(
        dockerfile.contains("ENTRYPOINT [\"/usr/bin/dbward\"]"),
        "{dockerfile}"
    );
}
