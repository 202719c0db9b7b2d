//! `testbed image box`: testbed's own guest image as a vagrant-libvirt box, made from the cache (no download).
//!
//! A libvirt box is a tar of `box.img` (the qcow2 disk), `metadata.json` (`provider`, `format`, `virtual_size`
//! in GiB) and a `Vagrantfile` that the box's users inherit. The image boots its kernel directly (no boot loader
//! on the disk), so the box Vagrantfile names a kernel and initrd on the host. QEMU runs as `libvirt-qemu`,
//! which cannot enter /root where the cache lives: the kernel and initrd are copied to [`BOOT_FILES_ROOT`]
//! (world-readable), and the box names them there.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

use super::{ImageArtifacts, ImageError};

/// Host directory for the boxes' kernels and initrds: readable by the `libvirt-qemu` user.
pub const BOOT_FILES_ROOT: &str = "/var/lib/testbed/boxes";

/// What `image box` made.
#[derive(Debug, Clone, Serialize)]
pub struct BoxFiles {
    /// The Vagrant box name to `vagrant box add` it under: `testbed/<image name>`, what the top-level
    /// Vagrantfile asks for by the plan's image name.
    pub name: String,
    /// The box archive (`vagrant box add --name NAME FILE`).
    pub file: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

#[derive(Serialize)]
struct Metadata {
    provider: &'static str,
    format: &'static str,
    virtual_size: u64,
}

/// The box's own Vagrantfile: direct kernel boot and root over SSH (testbed's image has no `vagrant` user).
fn box_vagrantfile(kernel: &Path, initrd: &Path, cmdline: &str) -> String {
    format!(
        r#"# Written by `testbed image box`: testbed's guest image boots its kernel directly.
Vagrant.configure("2") do |config|
  config.ssh.username = "root"
  # Root already, and the image has no sudo: run Vagrant's privileged commands as they are.
  config.ssh.sudo_command = "%c"
  config.vm.synced_folder ".", "/vagrant", disabled: true
  # The image has no /etc/fstab for Vagrant to edit (and no synced folders to mount).
  config.vm.allow_fstab_modification = false
  config.vm.provider :libvirt do |libvirt|
    libvirt.disk_bus = "virtio"
    libvirt.kernel = {kernel:?}
    libvirt.initrd = {initrd:?}
    libvirt.cmd_line = {cmdline:?}
  end
end
"#,
        kernel = kernel.display().to_string(),
        initrd = initrd.display().to_string(),
    )
}

/// The qcow2's virtual size in GiB, rounded up (vagrant-libvirt's unit).
fn virtual_size_gib(disk: &Path) -> Result<u64, ImageError> {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(disk)
        .output()
        .map_err(|e| ImageError::io(format!("run qemu-img info {}", disk.display()), e))?;
    if !out.status.success() {
        return Err(ImageError::CommandFailed {
            what: format!("qemu-img info {}", disk.display()),
            status: out.status.to_string(),
            output: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    let info: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|source| ImageError::Manifest { path: disk.to_path_buf(), source })?;
    let bytes = info["virtual-size"]
        .as_u64()
        .ok_or_else(|| ImageError::Recipe(format!("qemu-img info {}: no virtual-size", disk.display())))?;
    Ok(bytes.div_ceil(1 << 30))
}

fn copy_readable(from: &Path, to: &Path) -> Result<(), ImageError> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = to.with_extension("tmp");
    std::fs::copy(from, &tmp)
        .map_err(|e| ImageError::io(format!("copy {} to {}", from.display(), tmp.display()), e))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))
        .map_err(|e| ImageError::io(format!("chmod {}", tmp.display()), e))?;
    std::fs::rename(&tmp, to).map_err(|e| ImageError::io(format!("rename {}", to.display()), e))
}

/// Writes the box of `image` (named `image_name` in topologies) to `out_dir/testbed-<id>-<hash>.box` (kept when it
/// exists) and its boot files
/// under `boot_root/<id>/`.
pub fn write_box(
    image: &ImageArtifacts,
    image_name: &str,
    out_dir: &Path,
    boot_root: &Path,
) -> Result<BoxFiles, ImageError> {
    use std::os::unix::fs::PermissionsExt;
    let (Some(kernel), Some(initrd)) = (&image.kernel, &image.initrd) else {
        return Err(ImageError::Recipe(format!(
            "image {} has no direct-boot kernel: only testbed's built images can become a box",
            image.id
        )));
    };
    let boot_dir = boot_root.join(&image.id);
    std::fs::create_dir_all(&boot_dir).map_err(|e| ImageError::io(format!("create {}", boot_dir.display()), e))?;
    // Both directories must be enterable by libvirt-qemu.
    for dir in [boot_root, boot_dir.as_path()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| ImageError::io(format!("chmod {}", dir.display()), e))?;
    }
    let boot_kernel = boot_dir.join("vmlinuz");
    let boot_initrd = boot_dir.join("initrd.img");
    copy_readable(kernel, &boot_kernel)?;
    copy_readable(initrd, &boot_initrd)?;

    let metadata = Metadata { provider: "libvirt", format: "qcow2", virtual_size: virtual_size_gib(&image.disk)? };
    let metadata = serde_json::to_vec_pretty(&metadata).map_err(|e| ImageError::Recipe(e.to_string()))?;
    let vagrantfile = box_vagrantfile(&boot_kernel, &boot_initrd, &image.cmdline);

    std::fs::create_dir_all(out_dir).map_err(|e| ImageError::io(format!("create {}", out_dir.display()), e))?;
    let recipe = {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest([metadata.as_slice(), vagrantfile.as_bytes()].concat()))
    };
    let file = out_dir.join(format!("testbed-{}-{}.box", image.id, &recipe[..8]));
    let made = BoxFiles { name: format!("testbed/{image_name}"), file, kernel: boot_kernel, initrd: boot_initrd };
    // The image id and the hash of the other two files name the box's content: an existing file is this box. Keeping its file (and mtime) spares
    // Vagrant and vagrant-libvirt a new copy of the disk on every `box add` and `up`.
    if made.file.exists() {
        return Ok(made);
    }
    let file = made.file.clone();
    let tmp = file.with_extension("box.tmp");
    let write = || -> std::io::Result<()> {
        let mut tar = tar::Builder::new(std::io::BufWriter::new(std::fs::File::create(&tmp)?));
        for (name, bytes) in [("metadata.json", metadata.as_slice()), ("Vagrantfile", vagrantfile.as_bytes())] {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            tar.append_data(&mut header, name, bytes)?;
        }
        tar.append_path_with_name(&image.disk, "box.img")?;
        tar.into_inner()?.into_inner().map_err(|e| e.into_error())?.sync_all()
    };
    write().map_err(|e| ImageError::io(format!("write {}", tmp.display()), e))?;
    std::fs::rename(&tmp, &file).map_err(|e| ImageError::io(format!("rename {}", file.display()), e))?;
    Ok(made)
}

/// Writes the seed disk of `node` for a Vagrant-made VM (`image seed`; the top-level Vagrantfile calls it): the
/// node's hostname, underlay NICs (the plan's MACs and addresses), a fresh host key and `authorized_keys`. The
/// file is world-readable (0644) because libvirt's QEMU reads it as `libvirt-qemu`.
pub fn write_node_seed(node: &crate::plan::NodePlan, authorized_keys: &str, out: &Path) -> Result<(), ImageError> {
    let host = crate::guest::keys::generate_host_key().map_err(|e| ImageError::Seed(e.to_string()))?;
    let keys = authorized_keys.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
    let seed = super::seed::SeedConfig::of_node(node, host.host_private_openssh, host.host_public_openssh, keys);
    write_readable_seed(&seed, out)
}

/// Writes `seed` to `out` world-readable (0644): libvirt's QEMU reads it as `libvirt-qemu`.
pub fn write_readable_seed(seed: &super::seed::SeedConfig, out: &Path) -> Result<(), ImageError> {
    use std::os::unix::fs::PermissionsExt;
    super::seed::write_seed(out, seed)?;
    std::fs::set_permissions(out, std::fs::Permissions::from_mode(0o644))
        .map_err(|e| ImageError::io(format!("chmod {}", out.display()), e))
}

/// Where `image box` writes boxes: `boxes/` beside the image cache.
pub fn boxes_dir() -> Result<PathBuf, ImageError> {
    super::cache_root()?.parent().map(|p| p.join("boxes")).ok_or(ImageError::NoCacheDir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn box_vagrantfile_names_the_boot_files_and_root() {
        let v = box_vagrantfile(Path::new("/b/vmlinuz"), Path::new("/b/initrd.img"), "console=ttyS0 root=/dev/vda rw");
        assert!(v.contains(r#"libvirt.kernel = "/b/vmlinuz""#), "{v}");
        assert!(v.contains(r#"libvirt.initrd = "/b/initrd.img""#), "{v}");
        assert!(v.contains(r#"libvirt.cmd_line = "console=ttyS0 root=/dev/vda rw""#), "{v}");
        assert!(v.contains(r#"config.ssh.username = "root""#), "{v}");
    }
}
