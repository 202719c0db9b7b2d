//! A busybox-static OCI image layout built in the test from the host's /bin/busybox, for the real-kernel
//! tests of containers with an image.

// Each test file compiles this module on its own.
#![allow(dead_code)]

use std::path::Path;

use serde_json::{json, Value};
use sha2::Digest as _;

pub const BUSYBOX_APPLETS: [&str; 12] =
    ["sh", "cat", "ls", "sleep", "echo", "test", "touch", "readlink", "hostname", "wc", "tr", "grep"];

fn blob(layout: &Path, bytes: &[u8], media_type: &str) -> Value {
    let hex = hex::encode(sha2::Sha256::digest(bytes));
    std::fs::write(layout.join("blobs/sha256").join(&hex), bytes).unwrap();
    json!({ "mediaType": media_type, "digest": format!("sha256:{hex}"), "size": bytes.len() })
}

fn file(tar: &mut tar::Builder<Vec<u8>>, path: &str, content: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(content.len() as u64);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    tar.append_data(&mut h, path, content).unwrap();
}

/// An OCI layout of two uncompressed layers: the host's busybox-static as /bin/busybox with its applets, an
/// /etc/passwd and /etc/group (user `web`, 1000, in groups 29 and 50), and two files the layer above deletes
/// (a whiteout, an opaque directory), then that layer.
pub fn busybox_layout(layout: &Path) {
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    std::fs::write(layout.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut tar = tar::Builder::new(Vec::new());
    let dir = |tar: &mut tar::Builder<Vec<u8>>, path: &str| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        tar.append_data(&mut h, path, std::io::empty()).unwrap();
    };
    for d in ["bin", "etc", "tmp", "proc", "sys", "dev"] {
        dir(&mut tar, d);
    }
    tar.append_path_with_name("/bin/busybox", "bin/busybox").unwrap();
    dir(&mut tar, "d");
    file(&mut tar, "etc/gone", b"deleted by the layer above\n");
    // A user with supplementary groups, as a Debian image has them, to resolve names and groups in.
    file(&mut tar, "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nweb:x:1000:1000::/tmp:/bin/sh\n");
    file(&mut tar, "etc/group", b"root:x:0:\naudio:x:29:web\nstaff:x:50:web\nweb:x:1000:\n");
    file(&mut tar, "d/old", b"hidden by the opaque directory above\n");
    for applet in BUSYBOX_APPLETS {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        tar.append_link(&mut h, format!("bin/{applet}"), "busybox").unwrap();
    }
    let layer = blob(layout, &tar.into_inner().unwrap(), "application/vnd.oci.image.layer.v1.tar");
    let mut top = tar::Builder::new(Vec::new());
    file(&mut top, "etc/.wh.gone", b"");
    dir(&mut top, "d");
    file(&mut top, "d/.wh..wh..opq", b"");
    file(&mut top, "d/new", b"new\n");
    let top = blob(layout, &top.into_inner().unwrap(), "application/vnd.oci.image.layer.v1.tar");
    let config = json!({
        "architecture": "amd64", "os": "linux",
        "config": {
            "Entrypoint": ["/bin/sh", "-c"],
            "Cmd": ["echo \"$GREETING\" > /written; exec sleep 1000"],
            "Env": ["PATH=/bin", "GREETING=from-the-image"],
            "WorkingDir": "/tmp",
        },
        "rootfs": { "type": "layers", "diff_ids": [] },
    });
    let config = blob(layout, config.to_string().as_bytes(), "application/vnd.oci.image.config.v1+json");
    let manifest = json!({ "schemaVersion": 2, "config": config, "layers": [layer, top] });
    let manifest = blob(layout, manifest.to_string().as_bytes(), "application/vnd.oci.image.manifest.v1+json");
    std::fs::write(layout.join("index.json"), json!({ "schemaVersion": 2, "manifests": [manifest] }).to_string())
        .unwrap();
}
