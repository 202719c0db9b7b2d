//! The SSH keys a lab keeps in its directory, whatever the provider: one client key per lab, one host key per
//! node (generated on the host so the client can pin it before the guest ever boots; kept so that a re-`up`
//! reuses it) and the known_hosts of `testbed ssh`.

use std::path::Path;

use crate::guest::keys as guest_keys;

use super::dir::{LabDir, LabDirError};
use super::state::NodeState;
use super::up::UpError;

/// The lab's client key, generated once; returns its public key line for the guests' authorized_keys.
pub fn client_public_key(dir: &LabDir) -> Result<String, UpError> {
    let client_key = guest_keys::generate_client_key(&dir.root).map_err(UpError::Keys)?;
    let client_pub_path = client_key.with_file_name("id_ed25519.pub");
    Ok(std::fs::read_to_string(&client_pub_path)
        .map_err(|source| LabDirError::Io { path: client_pub_path.clone(), source })?
        .trim()
        .to_string())
}

/// The node's host key pair, generated once and kept in the node directory (0600) so re-`up` reuses it;
/// returns the public key line.
pub fn node_host_key(dir: &LabDir, node: &str) -> Result<String, UpError> {
    let private = dir.host_key(node);
    let public = private.with_file_name("ssh_host_ed25519_key.pub");
    if let (Ok(_), Ok(p)) = (std::fs::metadata(&private), std::fs::read_to_string(&public)) {
        return Ok(p.trim().to_string());
    }
    let keys = guest_keys::generate_host_key().map_err(UpError::Keys)?;
    let node_dir = dir.node_dir(node);
    std::fs::create_dir_all(&node_dir).map_err(|source| LabDirError::Io { path: node_dir.clone(), source })?;
    write_private(&private, keys.host_private_openssh.as_bytes())?;
    std::fs::write(&public, format!("{}\n", keys.host_public_openssh.trim()))
        .map_err(|source| LabDirError::Io { path: public.clone(), source })?;
    Ok(keys.host_public_openssh.trim().to_string())
}

/// known_hosts of `testbed ssh`: every node's SSH port and pinned host key, in the order given.
pub fn write_known_hosts<'a>(dir: &LabDir, nodes: impl IntoIterator<Item = &'a NodeState>) -> Result<(), UpError> {
    let entries: Vec<(u16, String)> = nodes.into_iter().map(|n| (n.ssh_port, n.host_key_public.clone())).collect();
    guest_keys::write_known_hosts(&dir.known_hosts(), &entries).map_err(UpError::Keys)
}

fn write_private(path: &Path, body: &[u8]) -> Result<(), LabDirError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| LabDirError::Io { path: path.to_path_buf(), source })?;
    f.write_all(body).map_err(|source| LabDirError::Io { path: path.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_host_key_is_private_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = LabDir::new(tmp.path(), "k");
        let first = node_host_key(&dir, "node1").unwrap();
        assert!(first.starts_with("ssh-ed25519 "));
        let mode = std::fs::metadata(dir.host_key("node1")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(node_host_key(&dir, "node1").unwrap(), first);
        assert_ne!(node_host_key(&dir, "node2").unwrap(), first);
    }
}
