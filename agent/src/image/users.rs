//! The user a container runs as, from its image's own /etc/passwd and /etc/group, by containerd's rules
//! (`oci.WithUser`, `WithUserID`, `WithAdditionalGIDs`): an image `User` may name its user and group by name
//! or by number, a numeric uid takes its primary group from the image's passwd, and the process gets the
//! supplementary groups whose member lists name the user.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

/// The ids a container process gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageUser {
    pub uid: u32,
    pub gid: u32,
    /// The primary gid first, then the groups that list the user (containerd's `AdditionalGids`).
    pub additional_gids: Vec<u32>,
}

impl ImageUser {
    /// Adds `groups` the user is not in yet (the pod's `supplementalGroups` and `fsGroup`, merged with the
    /// image's memberships as Kubernetes' default `Merge` policy does).
    pub fn add_groups(&mut self, groups: &[u32]) {
        for g in groups {
            if !self.additional_gids.contains(g) {
                self.additional_gids.push(*g);
            }
        }
    }
}

/// An image's files as its overlayfs root shows them, read from its unpacked layers (top first) without
/// mounting: a whiteout or an opaque directory in a higher layer hides what the lower ones have.
pub struct ImageFiles<'a> {
    pub lower: &'a [PathBuf],
}

impl ImageFiles<'_> {
    /// `path` (absolute in the image), or None when no layer has it.
    pub fn read(&self, path: &str) -> Option<String> {
        let relative = Path::new(path.trim_start_matches('/'));
        for layer in self.lower {
            let file = layer.join(relative);
            match std::fs::symlink_metadata(&file) {
                // overlayfs' whiteout: a 0/0 character device.
                Ok(m) if m.file_type().is_char_device() => return None,
                Ok(_) => return std::fs::read_to_string(&file).ok(),
                Err(_) if relative.ancestors().skip(1).any(|d| is_opaque(&layer.join(d))) => return None,
                Err(_) => continue,
            }
        }
        None
    }
}

fn is_opaque(dir: &Path) -> bool {
    let Ok(name) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else { return false };
    let mut value = [0u8; 1];
    // SAFETY: both pointers are valid for the lengths given; lgetxattr writes at most one byte.
    let n = unsafe { libc::lgetxattr(name.as_ptr(), c"trusted.overlay.opaque".as_ptr(), value.as_mut_ptr().cast(), 1) };
    n == 1 && value[0] == b'y'
}

struct Passwd {
    name: String,
    uid: u32,
    gid: u32,
}

struct Group {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn passwd(files: &ImageFiles<'_>) -> Vec<Passwd> {
    let text = files.read("/etc/passwd").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(Passwd { name: f.first()?.to_string(), uid: f.get(2)?.parse().ok()?, gid: f.get(3)?.parse().ok()? })
        })
        .collect()
}

fn groups(files: &ImageFiles<'_>) -> Vec<Group> {
    let text = files.read("/etc/group").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            let members = f.get(3).map(|m| m.split(',').filter(|m| !m.is_empty()).map(str::to_string).collect());
            Some(Group { name: f.first()?.to_string(), gid: f.get(2)?.parse().ok()?, members: members? })
        })
        .collect()
}

/// The image config's `User` (`user`, `uid`, `user:group`, `uid:gid`, any mix; empty is root) resolved in the
/// image's files. A name the image does not have is an error naming it.
pub fn resolve(files: &ImageFiles<'_>, user: &str) -> Result<ImageUser, String> {
    let users = passwd(files);
    let (user_part, group_part) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let (uid, primary) = match user_part.parse::<u32>() {
        _ if user_part.is_empty() => (0, users.iter().find(|u| u.uid == 0).map_or(0, |u| u.gid)),
        Ok(uid) => (uid, users.iter().find(|u| u.uid == uid).map_or(0, |u| u.gid)),
        Err(_) => {
            let u = users.iter().find(|u| u.name == user_part);
            let u = u.ok_or_else(|| format!("user {user_part:?} is not in the image's /etc/passwd"))?;
            (u.uid, u.gid)
        }
    };
    let gid = match group_part {
        None => primary,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                let found = groups(files).into_iter().find(|grp| grp.name == g);
                found.ok_or_else(|| format!("group {g:?} is not in the image's /etc/group"))?.gid
            }
        },
    };
    Ok(with_groups(files, uid, gid))
}

/// A uid (and gid) set by the pod spec (`runAsUser`, `runAsGroup`): without a gid, the primary group of
/// that uid in the image's /etc/passwd, else root's (containerd's `WithUserID`).
pub fn by_id(files: &ImageFiles<'_>, uid: u32, gid: Option<u32>) -> ImageUser {
    let gid = gid.unwrap_or_else(|| passwd(files).iter().find(|u| u.uid == uid).map_or(0, |u| u.gid));
    with_groups(files, uid, gid)
}

/// The groups that name the uid's user as a member (not the group named after it), the primary gid first.
fn with_groups(files: &ImageFiles<'_>, uid: u32, gid: u32) -> ImageUser {
    let name = passwd(files).into_iter().find(|u| u.uid == uid).map(|u| u.name);
    let mut additional_gids = vec![gid];
    if let Some(name) = name {
        let listed = groups(files).into_iter().filter(|g| g.name != name && g.members.contains(&name));
        for g in listed {
            if !additional_gids.contains(&g.gid) {
                additional_gids.push(g.gid);
            }
        }
    }
    ImageUser { uid, gid, additional_gids }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(layers: &[&[(&str, &str)]]) -> (tempfile::TempDir, Vec<PathBuf>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut lower = Vec::new();
        for (i, files) in layers.iter().enumerate() {
            let layer = dir.path().join(i.to_string());
            std::fs::create_dir_all(layer.join("etc")).expect("mkdir");
            for (path, text) in *files {
                std::fs::write(layer.join(path.trim_start_matches('/')), text).expect("write");
            }
            lower.push(layer);
        }
        (dir, lower)
    }

    const PASSWD: &str =
        "root:x:0:0:root:/root:/bin/sh\nweb:x:1000:1000::/home/web:/bin/sh\nlog:x:1001:50::/:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nstaff:x:50:\nweb:x:1000:web\naudio:x:29:web,log\nvideo:x:44:log\ndisk:x:6:web\n";

    #[test]
    fn names_and_numbers_resolve_as_containerd_does() {
        let (_d, lower) = image(&[&[("/etc/passwd", PASSWD), ("/etc/group", GROUP)]]);
        let files = ImageFiles { lower: &lower };
        let ids = |u: &str| resolve(&files, u).map(|u| (u.uid, u.gid, u.additional_gids));
        assert_eq!(ids("web"), Ok((1000, 1000, vec![1000, 29, 6])), "the group named after the user is not listed");
        assert_eq!(ids("1001"), Ok((1001, 50, vec![50, 29, 44])), "a numeric uid takes its passwd group");
        assert_eq!(ids("web:staff"), Ok((1000, 50, vec![50, 29, 6])));
        assert_eq!(ids("4242"), Ok((4242, 0, vec![0])), "a uid the image lacks: root's group, no others");
        assert_eq!(ids("1000:7"), Ok((1000, 7, vec![7, 29, 6])));
        assert_eq!(ids(""), Ok((0, 0, vec![0])));
        assert_eq!(ids("nobody"), Err("user \"nobody\" is not in the image's /etc/passwd".into()));
        assert_eq!(ids("web:wheel"), Err("group \"wheel\" is not in the image's /etc/group".into()));
        assert_eq!(by_id(&files, 1001, None).additional_gids, [50, 29, 44]);
        assert_eq!(by_id(&files, 1001, Some(3)).additional_gids, [3, 29, 44]);
        let mut with_pods = by_id(&files, 1001, None);
        with_pods.add_groups(&[4000, 29, 2000]);
        assert_eq!(with_pods.additional_gids, [50, 29, 44, 4000, 2000], "the pod's groups merged, none twice");
    }

    #[test]
    fn a_higher_layer_replaces_a_lower_layers_file() {
        let (_d, lower) = image(&[&[("/etc/passwd", "root:x:0:0::/:/bin/sh\n")], &[("/etc/passwd", PASSWD)]]);
        let files = ImageFiles { lower: &lower };
        assert_eq!(resolve(&files, "web"), Err("user \"web\" is not in the image's /etc/passwd".into()));
    }

    #[test]
    fn a_whiteout_or_an_opaque_directory_hides_a_lower_layers_file() {
        testbed_test_support::require_root!();
        let (_d, lower) = image(&[&[], &[("/etc/passwd", PASSWD)]]);
        let files = ImageFiles { lower: &lower };
        assert!(files.read("/etc/passwd").is_some());
        let opaque = crate::image::unpack::set_xattr(&lower[0].join("etc"), "trusted.overlay.opaque", b"y");
        opaque.expect("set the opaque xattr");
        assert!(files.read("/etc/passwd").is_none(), "an opaque /etc above hides the lower one");
        std::fs::remove_dir_all(lower[0].join("etc")).expect("rm");
        std::fs::create_dir(lower[0].join("etc")).expect("mkdir");
        let whiteout = lower[0].join("etc/passwd");
        nix::sys::stat::mknod(&whiteout, nix::sys::stat::SFlag::S_IFCHR, nix::sys::stat::Mode::empty(), 0)
            .expect("mknod a whiteout");
        assert!(files.read("/etc/passwd").is_none(), "a whiteout above hides the lower one");
    }
}
