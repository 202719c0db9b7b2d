//! Images built here, with the tar crate: layouts with whiteouts and opaque directories, an archive of one,
//! a corrupt blob. Whiteouts become device nodes and trusted xattrs, so these run as root (as the agent does).

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use flate2::write::GzEncoder;

use super::*;

enum Entry<'a> {
    File(&'a str, &'a str),
    Dir(&'a str),
}

fn layer_tar(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        match entry {
            Entry::File(path, text) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(text.len() as u64);
                header.set_mode(0o644);
                builder.append_data(&mut header, path, text.as_bytes()).unwrap();
            }
            Entry::Dir(path) => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                header.set_mode(0o755);
                builder.append_data(&mut header, path, std::io::empty()).unwrap();
            }
        }
    }
    builder.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut encoder, bytes).unwrap();
    encoder.finish().unwrap()
}

fn put_blob(layout: &Path, bytes: &[u8]) -> serde_json::Value {
    let digest =
        Digest::parse(&format!("sha256:{}", hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes)))).unwrap();
    std::fs::write(layout.join("blobs/sha256").join(digest.hex()), bytes).unwrap();
    serde_json::json!({ "digest": digest.to_string(), "size": bytes.len() })
}

/// Writes an image layout with these layers (gzip-compressed) and returns each layer's digest.
fn write_layout(layout: &Path, layers: &[Vec<u8>]) -> Vec<Digest> {
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    std::fs::write(layout.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": { "Entrypoint": ["/bin/sh"], "Cmd": ["-c", "echo hi"], "Env": ["PATH=/bin"], "WorkingDir": "/d" },
        "rootfs": { "type": "layers", "diff_ids": [] },
    });
    let mut config_desc = put_blob(layout, config.to_string().as_bytes());
    config_desc["mediaType"] = "application/vnd.oci.image.config.v1+json".into();
    let mut digests = vec![];
    let layer_descs: Vec<_> = layers
        .iter()
        .map(|tar| {
            let mut desc = put_blob(layout, &gzip(tar));
            digests.push(Digest::parse(desc["digest"].as_str().unwrap()).unwrap());
            desc["mediaType"] = "application/vnd.oci.image.layer.v1.tar+gzip".into();
            desc
        })
        .collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": layout::MANIFEST_MEDIA_TYPE, "config": config_desc, "layers": layer_descs,
    });
    let mut manifest_desc = put_blob(layout, manifest.to_string().as_bytes());
    manifest_desc["mediaType"] = layout::MANIFEST_MEDIA_TYPE.into();
    manifest_desc["annotations"] = serde_json::json!({ "org.opencontainers.image.ref.name": "test:1" });
    let index = serde_json::json!({ "schemaVersion": 2, "manifests": [manifest_desc] });
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
    digests
}

fn two_layers() -> Vec<Vec<u8>> {
    vec![
        layer_tar(&[
            Entry::Dir("etc"),
            Entry::File("etc/gone", "deleted by the layer above\n"),
            Entry::File("etc/kept", "kept\n"),
            Entry::Dir("d"),
            Entry::File("d/old", "hidden by the opaque dir above\n"),
        ]),
        layer_tar(&[
            Entry::File("etc/.wh.gone", ""),
            Entry::Dir("d"),
            Entry::File("d/.wh..wh..opq", ""),
            Entry::File("d/new", "new\n"),
        ]),
    ]
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let (p, n) = (std::ffi::CString::new(path.to_str().unwrap()).unwrap(), std::ffi::CString::new(name).unwrap());
    let mut buf = [0u8; 64];
    // SAFETY: valid strings and buffer.
    let len = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (len >= 0).then(|| buf[..len as usize].to_vec())
}

#[test]
fn a_layout_is_unpacked_once_per_layer_with_whiteouts_in_overlayfs_form() {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let layers = write_layout(&layout, &two_layers());
    let store = ImageStore::new(dir.path().join("store"));

    let image = store.import_layout(&layout, Some("test:1")).unwrap();
    assert_eq!(image.config.entrypoint.as_deref(), Some(&["/bin/sh".to_string()][..]));
    assert_eq!(image.config.working_dir.as_deref(), Some("/d"));
    assert_eq!(image.layers, layers.iter().map(Digest::to_string).collect::<Vec<_>>());
    let lower = store.lower_dirs(&image).unwrap();
    assert_eq!(lower, vec![store.layer_dir(&layers[1]), store.layer_dir(&layers[0])], "top layer first");

    let (bottom, top) = (&lower[1], &lower[0]);
    assert_eq!(std::fs::read_to_string(bottom.join("etc/gone")).unwrap(), "deleted by the layer above\n");
    let whiteout = std::fs::symlink_metadata(top.join("etc/gone")).unwrap();
    assert!(whiteout.file_type().is_char_device() && whiteout.rdev() == 0, "a whiteout is a 0/0 char device");
    assert!(!top.join("etc/.wh.gone").exists(), "the marker itself is not unpacked");
    assert_eq!(xattr(&top.join("d"), "trusted.overlay.opaque").as_deref(), Some(&b"y"[..]));
    assert!(!top.join("d/.wh..wh..opq").exists());
    assert_eq!(std::fs::read_to_string(top.join("d/new")).unwrap(), "new\n");

    // Once per layer: a second import (of the same layer) keeps what is there.
    std::fs::write(bottom.join("marker"), "").unwrap();
    store.import_layout(&layout, None).unwrap();
    assert!(bottom.join("marker").exists(), "an unpacked layer is not unpacked again");
}

#[test]
fn an_oci_archive_is_imported_and_its_staging_removed() {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    write_layout(&layout, &two_layers());
    let archive = dir.path().join("image.tar");
    let mut builder = tar::Builder::new(std::fs::File::create(&archive).unwrap());
    builder.append_dir_all(".", &layout).unwrap();
    builder.finish().unwrap();
    let store = ImageStore::new(dir.path().join("store"));

    let image = store.import_archive(&archive, Some("test:1")).unwrap();
    assert_eq!(image.layers.len(), 2);
    assert_eq!(std::fs::read_dir(dir.path().join("store/tmp")).unwrap().count(), 0, "staging left behind");
}

#[test]
fn a_blob_that_does_not_match_its_digest_fails_naming_it_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let layers = write_layout(&layout, &two_layers());
    let blob = layout.join("blobs/sha256").join(layers[1].hex());
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[20] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let store = ImageStore::new(dir.path().join("store"));

    let err = store.import_layout(&layout, None).unwrap_err();
    assert!(matches!(&err, ImageError::DigestMismatch { digest, .. } if *digest == layers[1]), "{err}");
    assert!(err.to_string().contains(&layers[1].to_string()), "names the blob: {err}");
    assert!(!store.layer_dir(&layers[0]).exists() && !dir.path().join("store/images").exists());
}

#[test]
fn a_layer_entry_that_leaves_the_root_is_refused() {
    let mut header = tar::Header::new_gnu();
    header.as_gnu_mut().unwrap().name[..9].copy_from_slice(b"../escape");
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(0);
    header.set_mode(0o644);
    header.set_cksum();
    let mut builder = tar::Builder::new(Vec::new());
    builder.append(&header, std::io::empty()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let layers = write_layout(&layout, &[builder.into_inner().unwrap()]);
    let store = ImageStore::new(dir.path().join("store"));

    let err = store.import_layout(&layout, None).unwrap_err();
    assert!(matches!(&err, ImageError::LayerEntry { entry, .. } if entry == "../escape"), "{err}");
    assert!(!store.layer_dir(&layers[0]).exists() && !dir.path().join("escape").exists());
}

#[test]
fn a_root_entry_is_taken_as_the_layer_directory_and_only_as_a_directory() {
    let root_entry = |kind: tar::EntryType| {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.as_gnu_mut().unwrap().name[..2].copy_from_slice(b"./");
        header.set_entry_type(kind);
        header.set_size(0);
        header.set_mode(0o700);
        header.set_cksum();
        builder.append(&header, std::io::empty()).unwrap();
        let mut file = tar::Header::new_gnu();
        file.set_size(3);
        file.set_mode(0o644);
        file.set_uid(0);
        file.set_gid(0);
        file.set_mtime(0);
        builder.append_data(&mut file, "./etc/hostname", &b"hi\n"[..]).unwrap();
        builder.into_inner().unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let layers = write_layout(&layout, &[root_entry(tar::EntryType::Directory)]);
    let store = ImageStore::new(dir.path().join("store"));
    store.import_layout(&layout, None).unwrap();
    assert_eq!(std::fs::read_to_string(store.layer_dir(&layers[0]).join("etc/hostname")).unwrap(), "hi\n");

    let other = tempfile::tempdir().unwrap();
    let layout = other.path().join("layout");
    write_layout(&layout, &[root_entry(tar::EntryType::Regular)]);
    let err = ImageStore::new(other.path().join("store")).import_layout(&layout, None).unwrap_err();
    assert!(
        matches!(&err, ImageError::LayerEntry { entry, what, .. } if entry == "./" && what.contains("not a directory")),
        "{err}"
    );
}

#[test]
fn a_layout_with_two_images_needs_a_reference() {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    write_layout(&layout, &two_layers());
    let index_path = layout.join("index.json");
    let mut index: serde_json::Value = serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let first = index["manifests"][0].clone();
    index["manifests"].as_array_mut().unwrap().push(first);
    std::fs::write(&index_path, index.to_string()).unwrap();
    let store = ImageStore::new(dir.path().join("store"));
    let err = store.import_layout(&layout, None).unwrap_err();
    assert!(err.to_string().contains("2 manifests and no reference"), "{err}");
    assert!(store
        .import_layout(&layout, Some("missing"))
        .unwrap_err()
        .to_string()
        .contains("no manifest named missing"));
}

#[test]
fn the_name_index_finds_an_image_by_any_spelling_of_its_name_and_a_tag_moves() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::new(dir.path().join("store"));
    let (first, second) = (dir.path().join("first"), dir.path().join("second"));
    write_layout(&first, &[layer_tar(&[Entry::File("a", "first\n")])]);
    write_layout(&second, &[layer_tar(&[Entry::File("a", "second\n")])]);
    let one = store.import_layout(&first, None).unwrap();
    let two = store.import_layout(&second, None).unwrap();

    // The layout's full `ref.name` (`test:1`) is a name; the second import of the same name takes it over.
    let by = |name: &str| store.get_by_name(name).unwrap().map(|i| i.digest);
    assert_eq!(by("docker.io/library/test:1"), Some(two.digest.clone()), "the last import under a name has it");
    store.tag("busybox", &Digest::parse(&one.digest).unwrap()).unwrap();
    for spelling in ["busybox", "busybox:latest", "library/busybox", "docker.io/library/busybox:latest"] {
        assert_eq!(by(spelling), Some(one.digest.clone()), "{spelling}");
    }
    assert_eq!(by("busybox:1.36"), None, "another tag is another name");
    let names: Vec<(String, String)> = store.names().unwrap().into_iter().map(|n| (n.name, n.digest)).collect();
    assert_eq!(
        names,
        [
            ("docker.io/library/busybox:latest".to_string(), one.digest.clone()),
            ("docker.io/library/test:1".into(), two.digest)
        ]
    );

    let missing = Digest::parse(&format!("sha256:{}", "0f".repeat(32))).unwrap();
    assert!(matches!(store.tag("other", &missing), Err(ImageError::NotPresent(_))), "only a stored image is named");
    assert!(matches!(store.get_by_name("Busybox"), Err(ImageError::BadName(_))));
}

#[test]
fn a_bare_ref_name_is_a_tag_and_names_nothing_but_containerds_full_name_does() {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    write_layout(&layout, &[layer_tar(&[Entry::File("a", "a\n")])]);
    let index_path = layout.join("index.json");
    let mut index: serde_json::Value = serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    index["manifests"][0]["annotations"] = serde_json::json!({
        "org.opencontainers.image.ref.name": "latest",
        "io.containerd.image.name": "registry.local:5000/team/app:v2",
    });
    std::fs::write(&index_path, index.to_string()).unwrap();
    let store = ImageStore::new(dir.path().join("store"));
    store.import_layout(&layout, None).unwrap();
    let names: Vec<String> = store.names().unwrap().into_iter().map(|n| n.name).collect();
    assert_eq!(names, ["registry.local:5000/team/app:v2"]);
}
