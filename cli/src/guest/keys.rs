//! SSH keys of a lab: the lab's client key, one host key per node (generated here, injected into the guest and
//! pinned by the client), and the known_hosts file the system `ssh` checks them against.

use std::fmt;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use russh::keys::ssh_key::private::{Ed25519Keypair, KeypairData};
use russh::keys::ssh_key::LineEnding;
use russh::keys::{PrivateKey, PublicKey};

use super::session::SshError;

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SshError + 'a {
    move |source| SshError::Io { action, path: path.to_path_buf(), source }
}

/// A node's SSH host key pair, generated on the host and injected through the seed.
#[derive(Clone)]
pub struct NodeKeys {
    /// OpenSSH private key (`-----BEGIN OPENSSH PRIVATE KEY-----`), goes to the guest's /etc/ssh.
    pub host_private_openssh: String,
    /// `ssh-ed25519 AAAA... comment`: what the client pins and what known_hosts holds.
    pub host_public_openssh: String,
}

impl fmt::Debug for NodeKeys {
    // The private half never lands in logs or panics.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeKeys").field("host_public_openssh", &self.host_public_openssh).finish_non_exhaustive()
    }
}

fn random_ed25519(comment: &str) -> Result<PrivateKey, SshError> {
    use rand::RngCore as _;
    let mut seed = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    let keypair = Ed25519Keypair::from_seed(&seed);
    seed.fill(0);
    PrivateKey::new(KeypairData::Ed25519(keypair), comment)
        .map_err(|e| SshError::Key { what: "generation".into(), message: e.to_string() })
}

fn private_openssh(key: &PrivateKey) -> Result<String, SshError> {
    key.to_openssh(LineEnding::LF)
        .map(|pem| pem.to_string())
        .map_err(|e| SshError::Key { what: "encoding (private)".into(), message: e.to_string() })
}

fn public_openssh(key: &PublicKey) -> Result<String, SshError> {
    key.to_openssh().map_err(|e| SshError::Key { what: "encoding (public)".into(), message: e.to_string() })
}

/// Writes `contents` to `path` with `mode` atomically (temp file in the same directory, then rename).
pub(super) fn write_file_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), SshError> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".testbed-")
        .permissions(std::fs::Permissions::from_mode(mode))
        .tempfile_in(dir)
        .map_err(io_err("create a temporary file in", dir))?;
    tmp.write_all(contents).map_err(io_err("write", tmp.path()))?;
    tmp.as_file().sync_all().map_err(io_err("sync", tmp.path()))?;
    tmp.persist(path).map_err(|e| SshError::Io {
        action: "rename into place",
        path: path.to_path_buf(),
        source: e.error,
    })?;
    Ok(())
}

/// The lab's client key: `<lab_dir>/id_ed25519` (0600, OpenSSH format) with `id_ed25519.pub` beside it.
/// Idempotent: an existing valid key is kept (the running guests trust it), its `.pub` rewritten from it.
pub fn generate_client_key(lab_dir: &Path) -> Result<PathBuf, SshError> {
    let path = lab_dir.join("id_ed25519");
    let pub_path = lab_dir.join("id_ed25519.pub");
    let key = if path.exists() {
        russh::keys::load_secret_key(&path, None)
            .map_err(|e| SshError::Key { what: path.display().to_string(), message: e.to_string() })?
    } else {
        let key = random_ed25519("testbed-client")?;
        // create_new + 0600 from the start: the private key is never world-readable, not even for a moment.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err("create", &path))?;
        file.write_all(private_openssh(&key)?.as_bytes()).map_err(io_err("write", &path))?;
        file.sync_all().map_err(io_err("sync", &path))?;
        key
    };
    let public = format!("{}\n", public_openssh(key.public_key())?);
    write_file_atomic(&pub_path, public.as_bytes(), 0o644)?;
    Ok(path)
}

/// A fresh ed25519 host key pair for one node.
pub fn generate_host_key() -> Result<NodeKeys, SshError> {
    let key = random_ed25519("testbed-host")?;
    Ok(NodeKeys {
        host_private_openssh: private_openssh(&key)?,
        host_public_openssh: public_openssh(key.public_key())?,
    })
}

/// Parses an OpenSSH public key line (`ssh-ed25519 AAAA... [comment]`).
pub(super) fn parse_public(line: &str) -> Result<PublicKey, SshError> {
    PublicKey::from_openssh(line.trim())
        .map_err(|e| SshError::Key { what: format!("`{}` (pinned host key)", line.trim()), message: e.to_string() })
}

/// `[127.0.0.1]:<port> <type> <base64>` lines for the system ssh; comments stripped. Written atomically, 0644.
pub fn write_known_hosts(path: &Path, entries: &[(u16, String)]) -> Result<(), SshError> {
    let mut text = String::new();
    for (port, public) in entries {
        let mut key = parse_public(public)?;
        key.set_comment("");
        text.push_str(&format!("[127.0.0.1]:{port} {}\n", public_openssh(&key)?.trim_end()));
    }
    write_file_atomic(path, text.as_bytes(), 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_openssh_and_private_is_0600() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = generate_client_key(dir.path()).expect("client key");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"), "{text}");
        let public = std::fs::read_to_string(dir.path().join("id_ed25519.pub")).expect("read .pub");
        assert!(public.starts_with("ssh-ed25519 "), "{public}");
        // Idempotent: a second call keeps the key the guests already trust.
        generate_client_key(dir.path()).expect("again");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), text);
        // ssh-keygen (openssh-client) agrees that the private key derives the public one.
        let derived = std::process::Command::new("ssh-keygen").arg("-y").arg("-f").arg(&path).output();
        if let Ok(out) = derived {
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let derived = String::from_utf8_lossy(&out.stdout);
            let key_of = |line: &str| line.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
            assert_eq!(key_of(&derived), key_of(&public));
        }

        let host = generate_host_key().expect("host key");
        assert!(host.host_private_openssh.contains("OPENSSH PRIVATE KEY"));
        assert!(host.host_public_openssh.starts_with("ssh-ed25519 "));
        assert!(!format!("{host:?}").contains("PRIVATE"), "Debug must not print the private key");
    }

    #[test]
    fn known_hosts_lines_are_bracketed_and_comment_free() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = generate_host_key().expect("key a");
        let b = generate_host_key().expect("key b");
        let path = dir.path().join("known_hosts");
        write_known_hosts(&path, &[(2201, a.host_public_openssh.clone()), (2202, b.host_public_openssh.clone())])
            .expect("write");
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let bare = |k: &str| k.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
        assert_eq!(lines[0], format!("[127.0.0.1]:2201 {}", bare(&a.host_public_openssh)));
        assert_eq!(lines[1], format!("[127.0.0.1]:2202 {}", bare(&b.host_public_openssh)));
        assert!(write_known_hosts(&path, &[(1, "not a key".into())]).is_err());
    }
}
