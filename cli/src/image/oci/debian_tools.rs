//! The `debian-tools` image: a small Debian 12 root with the programs the suites run in pods (busybox's
//! httpd, wget and nc, iperf3, socat, ping, ip, ps) beside bash, coreutils and dpkg, for containers that
//! need more than busybox. mmdebstrap's `essential` variant (no apt, no init), merged /usr by a hook rather
//! than the usrmerge package (which would pull in perl), no Recommends, no documentation: 75 MB unpacked,
//! one gzip layer of about 28 MB. Packages come from this host's bookworm apt sources (or
//! `TESTBED_DEBIAN_MIRROR`), verified by apt against the mirror's signed index. mmdebstrap picks its mode
//! itself: root as root, a user namespace otherwise.

use std::io::Read;
use std::path::Path;
use std::process::Command;

use super::{run, Layer, RuntimeDefaults};
use crate::image::build::{find_in_path, host_apt_sources, DOC_EXCLUDES};
use crate::image::ImageError;

/// Bumped whenever the recipe below changes the image; part of the cache key.
const RECIPE_VERSION: u32 = 1;
const SUITE: &str = "bookworm";
const PACKAGES: &[&str] = &["busybox-static", "iperf3", "iproute2", "iputils-ping", "procps", "socat"];
/// mmdebstrap's options besides the packages and the excluded paths.
const OPTIONS: &[&str] = &[
    "--variant=essential",
    "--format=tar",
    "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
    "--aptopt=APT::Install-Recommends \"false\"",
];
pub(super) const DEFAULTS: RuntimeDefaults =
    RuntimeDefaults { cmd: &["/bin/bash"], path: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" };

pub(super) fn recipe() -> String {
    format!(
        "oci recipe {RECIPE_VERSION}\nsuite {SUITE}\noptions {OPTIONS:?}\npackages {PACKAGES:?}\nexcludes \
         {DOC_EXCLUDES:?}\n"
    )
}

/// The image's layer: mmdebstrap's tar of the root, written into `staging`, without its device nodes.
pub(super) fn layer(staging: &Path) -> Result<Layer, ImageError> {
    if find_in_path("mmdebstrap").is_none() {
        return Err(ImageError::MissingTool { tool: "mmdebstrap".into(), package: "mmdebstrap".into() });
    }
    let mirrors = match std::env::var("TESTBED_DEBIAN_MIRROR") {
        Ok(mirror) if !mirror.is_empty() => vec![mirror],
        _ => host_apt_sources()?,
    };
    let root_tar = staging.join("root.tar");
    let mut cmd = Command::new("mmdebstrap");
    cmd.args(OPTIONS)
        .arg(format!("--include={}", PACKAGES.join(",")))
        .args(DOC_EXCLUDES.iter().map(|path| format!("--dpkgopt=path-exclude={path}")))
        .arg(SUITE)
        .arg(&root_tar)
        .args(&mirrors)
        // mmdebstrap clamps every file's time to this and sorts the tar: the same packages, the same bytes.
        .env("SOURCE_DATE_EPOCH", "0")
        .env("LC_ALL", "C.UTF-8");
    run(&mut cmd, "mmdebstrap (the debian-tools image)")?;
    let io = |e| ImageError::io(format!("read {}", root_tar.display()), e);
    let tar = without_device_nodes(std::fs::File::open(&root_tar).map_err(io)?).map_err(io)?;
    let _ = std::fs::remove_file(&root_tar);
    Layer::gzip(&tar).map_err(|e| ImageError::io("compress the debian-tools layer".into(), e))
}

/// `tar` without its character and block devices (mmdebstrap leaves /dev/null and a few more in /dev): the
/// runtime gives every container a /dev of its own, and a layer with devices could not be unpacked without
/// CAP_MKNOD. Everything else is copied as it is, in the same order.
fn without_device_nodes(tar: impl Read) -> std::io::Result<Vec<u8>> {
    let mut archive = tar::Archive::new(tar);
    let mut out = tar::Builder::new(Vec::new());
    for entry in archive.entries()? {
        let mut entry = entry?;
        let kind = entry.header().entry_type();
        if kind.is_character_special() || kind.is_block_special() {
            continue;
        }
        let mut header = entry.header().clone();
        let path = entry.path()?.into_owned();
        match entry.link_name()? {
            Some(target) if kind.is_symlink() || kind.is_hard_link() => {
                let target = target.into_owned();
                out.append_link(&mut header, &path, &target)?;
            }
            _ => out.append_data(&mut header, &path, &mut entry)?,
        }
    }
    out.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(tar: &mut tar::Builder<Vec<u8>>, kind: tar::EntryType, path: &str, body: &[u8], link: Option<&str>) {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(8);
        h.set_mtime(0);
        h.set_size(body.len() as u64);
        match link {
            Some(target) => tar.append_link(&mut h, path, target).unwrap(),
            None => tar.append_data(&mut h, path, body).unwrap(),
        }
    }

    #[test]
    fn device_nodes_are_left_out_and_everything_else_is_kept_as_it_was() {
        let mut tar = tar::Builder::new(Vec::new());
        entry(&mut tar, tar::EntryType::Directory, "./dev/", b"", None);
        entry(&mut tar, tar::EntryType::Char, "./dev/null", b"", None);
        entry(&mut tar, tar::EntryType::Block, "./dev/loop0", b"", None);
        entry(&mut tar, tar::EntryType::Regular, "./usr/bin/gunzip", b"#!/bin/sh\n", None);
        entry(&mut tar, tar::EntryType::Link, "./usr/bin/uncompress", b"", Some("./usr/bin/gunzip"));
        entry(&mut tar, tar::EntryType::Symlink, "./bin", b"", Some("usr/bin"));
        let long = format!("./usr/share/{}/file", "d".repeat(120));
        entry(&mut tar, tar::EntryType::Regular, &long, b"long", None);
        let input = tar.into_inner().unwrap();

        let output = without_device_nodes(input.as_slice()).unwrap();
        let mut archive = tar::Archive::new(output.as_slice());
        let mut seen = Vec::new();
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            let mut body = String::new();
            e.read_to_string(&mut body).unwrap();
            let link = e.link_name().unwrap().map(|l| l.display().to_string());
            let kind = e.header().entry_type();
            // The tar crate writes a short `./x` as `x`: the same path to an unpacker.
            let path = e.path().unwrap().display().to_string();
            seen.push((path.trim_start_matches("./").to_string(), kind, body, link, e.header().gid().unwrap()));
        }
        let paths: Vec<&str> = seen.iter().map(|s| s.0.as_str()).collect();
        assert_eq!(paths, ["dev/", "usr/bin/gunzip", "usr/bin/uncompress", "bin", &long[2..]]);
        assert_eq!(seen[1].2, "#!/bin/sh\n");
        assert_eq!((seen[2].1, seen[2].3.as_deref()), (tar::EntryType::Link, Some("./usr/bin/gunzip")));
        assert_eq!((seen[3].1, seen[3].3.as_deref()), (tar::EntryType::Symlink, Some("usr/bin")));
        assert_eq!(seen[4].2, "long");
        assert!(seen.iter().all(|s| s.4 == 8), "owners kept: {seen:?}");
    }
}
