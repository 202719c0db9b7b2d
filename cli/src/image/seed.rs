//! The per-node seed disk: a raw vfat image labelled `CIDATA` (guest /dev/vdb, read-only). It carries the same
//! node configuration twice:
//! - cloud-init NoCloud `meta-data`, `user-data`, `network-config` (rendered from templates/cloud-init/), for
//!   stock cloud images;
//! - `testbed/{hostname, nics, ssh_host_ed25519_key(.pub), authorized_keys}`, plain files that testbed's own
//!   init (templates/guest/testbed-init) reads with nothing but `cat` and `read`.
//!
//! The image is written with the `fatfs` crate (no mtools/dosfstools needed at `up`), to a temp file beside
//! `path` and renamed into place.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;

use serde::Serialize;

use super::ImageError;

/// QEMU's MAC for the first NIC created without `mac=`; the provider's management NIC is the first NIC.
/// The cloud-init network config matches the management NIC by this address.
pub const MGMT_MAC: &str = "52:54:00:12:34:56";

const META_DATA: &str = include_str!("../../../templates/cloud-init/meta-data.tera");
const USER_DATA: &str = include_str!("../../../templates/cloud-init/user-data.tera");
const NETWORK_CONFIG: &str = include_str!("../../../templates/cloud-init/network-config.tera");
const SSHD_CONFIG: &str = include_str!("../../../templates/guest/sshd_config");
const AGENT_UNIT: &str = include_str!("../../../templates/guest/testbed-agent.service");

/// 2 MiB: FAT12, room for the keys and configs many times over.
const SEED_BYTES: u64 = 2 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SeedNic {
    /// Name inside the guest: eth1, eth2, ...
    pub name: String,
    pub mac: String,
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub mtu: u32,
}

impl SeedConfig {
    /// The seed of `node` (hostname, underlay NICs) with this host key pair and these client keys: what every
    /// provider writes.
    pub fn of_node(
        node: &crate::plan::NodePlan,
        host_key_private: String,
        host_key_public: String,
        authorized_keys: Vec<String>,
    ) -> SeedConfig {
        SeedConfig {
            hostname: node.name.clone(),
            host_key_ed25519_private: host_key_private,
            host_key_ed25519_public: host_key_public,
            authorized_keys,
            nics: SeedNic::of_node(node),
        }
    }
}

impl SeedNic {
    /// The underlay NICs of `node` as the plan gives them: what every provider's seed disk carries.
    pub fn of_node(node: &crate::plan::NodePlan) -> Vec<SeedNic> {
        node.nics
            .iter()
            .map(|n| SeedNic {
                name: n.guest_interface.clone(),
                mac: n.mac.clone(),
                address: n.ip,
                prefix_len: n.prefix_len,
                mtu: n.mtu,
            })
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedConfig {
    pub hostname: String,
    /// OpenSSH PEM.
    pub host_key_ed25519_private: String,
    pub host_key_ed25519_public: String,
    pub authorized_keys: Vec<String>,
    pub nics: Vec<SeedNic>,
}

/// The files of the seed, path -> content. Public to the module for tests.
pub(super) fn render(seed: &SeedConfig) -> Result<Vec<(String, String)>, ImageError> {
    validate(seed)?;
    let instance_id = {
        use sha2::{Digest, Sha256};
        // A new host key means a new node: cloud-init must run its per-instance modules again.
        let h = hex::encode(Sha256::digest(seed.host_key_ed25519_public.as_bytes()));
        format!("testbed-{}-{}", seed.hostname, &h[..12])
    };
    let mut ctx = tera::Context::new();
    ctx.insert("instance_id", &instance_id);
    ctx.insert("hostname", &seed.hostname);
    ctx.insert("host_key_private", &ensure_newline(&seed.host_key_ed25519_private));
    ctx.insert("host_key_public", seed.host_key_ed25519_public.trim());
    let keys: Vec<&str> = seed.authorized_keys.iter().map(|k| k.trim()).collect();
    ctx.insert("authorized_keys", &keys);
    ctx.insert("nics", &seed.nics);
    ctx.insert("mgmt_mac", MGMT_MAC);
    ctx.insert("sshd_config", SSHD_CONFIG);
    ctx.insert("agent_unit", AGENT_UNIT);

    let mut files = Vec::new();
    for (name, template) in [("meta-data", META_DATA), ("user-data", USER_DATA), ("network-config", NETWORK_CONFIG)] {
        let mut t = tera::Tera::default();
        t.autoescape_on(vec![]);
        t.add_raw_template(name, template).map_err(|e| template_error(name, &e))?;
        let text = t.render(name, &ctx).map_err(|e| template_error(name, &e))?;
        files.push((name.to_string(), ensure_newline(&text)));
    }
    let nics: String = seed
        .nics
        .iter()
        .map(|n| format!("{} {} {}/{} {}\n", n.mac.to_ascii_lowercase(), n.name, n.address, n.prefix_len, n.mtu))
        .collect();
    files.push(("testbed/hostname".into(), format!("{}\n", seed.hostname)));
    files.push(("testbed/nics".into(), nics));
    files.push(("testbed/ssh_host_ed25519_key".into(), ensure_newline(&seed.host_key_ed25519_private)));
    files.push(("testbed/ssh_host_ed25519_key.pub".into(), ensure_newline(seed.host_key_ed25519_public.trim())));
    files.push(("testbed/authorized_keys".into(), keys.iter().map(|k| format!("{k}\n")).collect()));
    Ok(files)
}

/// Writes the seed image for one node (see the module doc).
pub fn write_seed(path: &Path, seed: &SeedConfig) -> Result<(), ImageError> {
    let files = render(seed)?;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let io = |what: &str, e: std::io::Error| ImageError::io(format!("{what} seed image {}", path.display()), e);
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| io("create", e))?;
    tmp.as_file().set_len(SEED_BYTES).map_err(|e| io("size", e))?;
    let mut label = [b' '; 11];
    label[..6].copy_from_slice(b"CIDATA");
    fatfs::format_volume(tmp.as_file_mut(), fatfs::FormatVolumeOptions::new().volume_label(label))
        .map_err(|e| io("format", e))?;
    {
        let fs = fatfs::FileSystem::new(tmp.as_file_mut(), fatfs::FsOptions::new()).map_err(|e| io("open", e))?;
        let root = fs.root_dir();
        root.create_dir("testbed").map_err(|e| io("mkdir testbed in", e))?;
        for (name, content) in &files {
            let mut f = root.create_file(name).map_err(|e| io(&format!("create {name} in"), e))?;
            f.truncate().map_err(|e| io(&format!("truncate {name} in"), e))?;
            f.write_all(content.as_bytes()).map_err(|e| io(&format!("write {name} in"), e))?;
            f.flush().map_err(|e| io(&format!("flush {name} in"), e))?;
        }
        drop(root);
        fs.unmount().map_err(|e| io("finish", e))?;
    }
    tmp.as_file().sync_all().map_err(|e| io("sync", e))?;
    tmp.persist(path).map_err(|e| io("rename", e.error))?;
    Ok(())
}

fn validate(seed: &SeedConfig) -> Result<(), ImageError> {
    let bad = |what: String| Err(ImageError::Seed(what));
    let h = &seed.hostname;
    if h.is_empty() || h.len() > 63 || !h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') || h.starts_with('-')
    {
        return bad(format!("hostname {h:?} is not a DNS label"));
    }
    if !seed.host_key_ed25519_private.contains("BEGIN OPENSSH PRIVATE KEY") {
        return bad("host_key_ed25519_private is not an OpenSSH private key".into());
    }
    if !seed.host_key_ed25519_public.trim().starts_with("ssh-ed25519 ")
        || seed.host_key_ed25519_public.trim().contains('\n')
    {
        return bad("host_key_ed25519_public is not one `ssh-ed25519 ...` line".into());
    }
    if seed.authorized_keys.is_empty() {
        return bad("no authorized_keys: nobody could log in".into());
    }
    if let Some(k) = seed.authorized_keys.iter().find(|k| k.trim().is_empty() || k.trim().contains('\n')) {
        return bad(format!("authorized key {k:?} must be exactly one line"));
    }
    for n in &seed.nics {
        let valid_name = !n.name.is_empty()
            && n.name.len() <= 15
            && n.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid_name || n.name == "eth0" {
            return bad(format!("NIC name {:?} must be an interface name other than eth0 (management)", n.name));
        }
        let parts: Vec<&str> = n.mac.split(':').collect();
        if parts.len() != 6 || !parts.iter().all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit())) {
            return bad(format!("NIC {}: MAC {:?} is not aa:bb:cc:dd:ee:ff", n.name, n.mac));
        }
        if n.mac.eq_ignore_ascii_case(MGMT_MAC) {
            return bad(format!("NIC {}: MAC {MGMT_MAC} is the management NIC's", n.name));
        }
        if n.prefix_len > 32 || !(68..=65535).contains(&n.mtu) {
            return bad(format!("NIC {}: prefix /{} or MTU {} out of range", n.name, n.prefix_len, n.mtu));
        }
    }
    Ok(())
}

fn ensure_newline(s: &str) -> String {
    if s.ends_with('\n') {
        s.to_string()
    } else {
        format!("{s}\n")
    }
}

fn template_error(name: &str, e: &tera::Error) -> ImageError {
    // tera's Display hides the cause chain; the cause names the variable or the line.
    let mut detail = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        src = s.source();
    }
    ImageError::Template { name: name.to_string(), detail }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRIV: &str = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n-----END OPENSSH PRIVATE KEY-----\n";
    const PUB: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAjM+TsX6wuaEjHo7u1B43hFWUCZGpa7D/6w4tAhrGX0 host";

    fn seed() -> SeedConfig {
        SeedConfig {
            hostname: "node-1".into(),
            host_key_ed25519_private: PRIV.into(),
            host_key_ed25519_public: PUB.into(),
            authorized_keys: vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBBB client".into()],
            nics: vec![
                SeedNic {
                    name: "eth1".into(),
                    mac: "52:54:00:AA:00:01".into(),
                    address: Ipv4Addr::new(192, 168, 77, 2),
                    prefix_len: 24,
                    mtu: 1500,
                },
                SeedNic {
                    name: "eth2".into(),
                    mac: "52:54:00:aa:00:02".into(),
                    address: Ipv4Addr::new(10, 9, 0, 2),
                    prefix_len: 16,
                    mtu: 9000,
                },
            ],
        }
    }

    fn file<'a>(files: &'a [(String, String)], name: &str) -> &'a str {
        &files.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no {name}")).1
    }

    #[test]
    fn cloud_init_files_carry_every_field() {
        let files = render(&seed()).unwrap();
        let meta: serde_yaml::Value = serde_yaml::from_str(file(&files, "meta-data")).unwrap();
        assert_eq!(meta["local-hostname"], "node-1");
        assert!(meta["instance-id"].as_str().unwrap().starts_with("testbed-node-1-"));

        let user = file(&files, "user-data");
        assert!(user.starts_with("#cloud-config\n"));
        let user: serde_yaml::Value = serde_yaml::from_str(user).unwrap();
        assert_eq!(user["hostname"], "node-1");
        assert_eq!(user["disable_root"], false);
        assert_eq!(user["ssh_pwauth"], false);
        assert_eq!(user["ssh_keys"]["ed25519_private"], PRIV);
        assert_eq!(user["ssh_keys"]["ed25519_public"], PUB);
        assert_eq!(user["ssh_authorized_keys"][0], "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBBB client");
        let unit = &user["write_files"][1];
        assert_eq!(unit["path"], "/etc/systemd/system/testbed-agent.service");
        assert!(unit["content"].as_str().unwrap().contains("/usr/local/bin/testbed-agent serve"));
        assert!(user["write_files"][0]["content"].as_str().unwrap().contains("PasswordAuthentication no"));

        let net: serde_yaml::Value = serde_yaml::from_str(file(&files, "network-config")).unwrap();
        assert_eq!(net["version"], 2);
        let eth = &net["ethernets"];
        assert_eq!(eth["eth0"]["match"]["macaddress"], MGMT_MAC);
        assert_eq!(eth["eth0"]["addresses"][0], "10.0.2.15/24");
        assert!(eth["eth0"].get("gateway4").is_none() && eth["eth0"].get("routes").is_none(), "no default route");
        assert_eq!(eth["eth1"]["match"]["macaddress"], "52:54:00:AA:00:01");
        assert_eq!(eth["eth1"]["set-name"], "eth1");
        assert_eq!(eth["eth1"]["addresses"][0], "192.168.77.2/24");
        assert_eq!(eth["eth1"]["dhcp4"], false);
        assert_eq!(eth["eth2"]["mtu"], 9000);
        assert_eq!(eth["eth2"]["addresses"][0], "10.9.0.2/16");
    }

    #[test]
    fn testbed_files_are_plain_lines() {
        let files = render(&seed()).unwrap();
        assert_eq!(file(&files, "testbed/hostname"), "node-1\n");
        assert_eq!(
            file(&files, "testbed/nics"),
            "52:54:00:aa:00:01 eth1 192.168.77.2/24 1500\n52:54:00:aa:00:02 eth2 10.9.0.2/16 9000\n"
        );
        assert_eq!(file(&files, "testbed/ssh_host_ed25519_key"), PRIV);
        assert_eq!(file(&files, "testbed/ssh_host_ed25519_key.pub"), format!("{PUB}\n"));
    }

    #[test]
    fn bad_seeds_are_refused_with_the_field() {
        let mut s = seed();
        s.hostname = "bad host".into();
        assert!(render(&s).unwrap_err().to_string().contains("hostname"));
        let mut s = seed();
        s.nics[0].mac = "52:54:00:aa:00".into();
        assert!(render(&s).unwrap_err().to_string().contains("eth1"));
        let mut s = seed();
        s.authorized_keys = vec!["a\nb".into()];
        assert!(render(&s).unwrap_err().to_string().contains("one line"));
    }

    /// The real tools (blkid from util-linux, mtools) must see a CIDATA vfat with our files in it.
    #[test]
    fn seed_image_is_a_cidata_vfat() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed.img");
        write_seed(&path, &seed()).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), SEED_BYTES);
        let blkid = std::process::Command::new("blkid").args(["-o", "export"]).arg(&path).output().unwrap();
        let blkid = String::from_utf8_lossy(&blkid.stdout);
        assert!(blkid.contains("LABEL=CIDATA") && blkid.contains("TYPE=vfat"), "{blkid}");
        let out = std::process::Command::new("mtype").arg("-i").arg(&path).arg("::testbed/nics").output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout), file(&render(&seed()).unwrap(), "testbed/nics"));
        let out = std::process::Command::new("mtype").arg("-i").arg(&path).arg("::user-data").output().unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("#cloud-config"));
    }
}
