//! `testbed image` input and environment errors, through the real binary: exit codes and messages people act on.
//! (The real build and boots are in cli/src/image/boot_test.rs, ignored by default because they take minutes.)

#![allow(clippy::unwrap_used)] // a test file: panics are the failure report

use std::path::Path;
use std::process::{Command, Output};

fn testbed(cache: &Path, path_env: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_testbed"));
    cmd.args(args).env("TESTBED_CACHE_DIR", cache);
    if let Some(p) = path_env {
        cmd.env("PATH", p);
    }
    cmd.output().unwrap()
}

#[test]
fn unknown_image_name_is_bad_input_and_lists_known_names() {
    let cache = tempfile::tempdir().unwrap();
    let out = testbed(cache.path(), None, &["image", "build", "--name", "fedora-40"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("fedora-40") && stderr.contains("debian-12"), "{stderr}");
}

#[test]
fn missing_mmdebstrap_is_an_infrastructure_error_naming_the_package() {
    let cache = tempfile::tempdir().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let out = testbed(cache.path(), Some(empty.path().to_str().unwrap()), &["image", "build"]);
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("apt-get install mmdebstrap"), "{stderr}");
    assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), 0, "nothing written to the cache");
}

#[test]
fn json_errors_carry_the_kind() {
    let cache = tempfile::tempdir().unwrap();
    let out = testbed(cache.path(), None, &["image", "rm", "no-such-image", "-o", "json"]);
    assert_eq!(out.status.code(), Some(2));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["error"]["kind"], "bad-input");
    assert!(doc["error"]["message"].as_str().unwrap().contains("no-such-image"));
}

#[test]
fn bad_fetch_arguments_are_bad_input() {
    let cache = tempfile::tempdir().unwrap();
    let sum = "a".repeat(64);
    for (args, needle) in [
        (vec!["image", "fetch", "http://127.0.0.1:9/x.qcow2", "--sha256", "xyz"], "64 hex digits"),
        (vec!["image", "fetch", "ftp://127.0.0.1/x.qcow2", "--sha256", &sum], "http"),
        (vec!["image", "fetch", "not a url", "--sha256", &sum], "invalid image URL"),
    ] {
        let out = testbed(cache.path(), None, &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(needle),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn empty_cache_lists_nothing() {
    let cache = tempfile::tempdir().unwrap();
    let out = testbed(cache.path(), None, &["image", "list", "-o", "json"]);
    assert!(out.status.success());
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(), serde_json::json!([]));
}
