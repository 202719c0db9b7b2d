//! Against a real guest: the built `debian-12` image booted under QEMU (TCG) with a seed carrying keys from
//! this module. Ignored by default (boots a VM; builds the image first when it is not cached):
//!
//! ```text
//! cargo test -p testbed guest::real_guest_tests -- --ignored --nocapture
//! ```

use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use super::agent_deploy::{locate_agent_binary, push_agent};
use super::keys::{generate_client_key, generate_host_key};
use super::session::{Session, SshError};
use crate::image::seed::{write_seed, SeedConfig};
use crate::plan::ImageRef;
use crate::ui::{OutputFormat, Ui};
use std::process::{Child, Command, Stdio};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The QEMU process, killed by PID on drop.
struct Vm(Child);

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "boots a QEMU guest (TCG), about a minute"]
async fn real_guest_connect_exec_upload_forward_push_agent() {
    let ui = Ui::new(OutputFormat::Text, true);
    let image = crate::image::ensure(&ui, &ImageRef::Named("debian-12".into())).await.expect("debian-12 image");
    let dir = tempfile::tempdir().expect("tempdir");
    let client_key = generate_client_key(dir.path()).expect("client key");
    let client_pub = std::fs::read_to_string(dir.path().join("id_ed25519.pub")).expect("read .pub");
    let host = generate_host_key().expect("host key");
    let seed = SeedConfig {
        hostname: "sshtest".into(),
        host_key_ed25519_private: host.host_private_openssh.clone(),
        host_key_ed25519_public: host.host_public_openssh.clone(),
        authorized_keys: vec![client_pub.trim().to_string()],
        nics: Vec::new(),
    };
    write_seed(&dir.path().join("seed.img"), &seed).expect("seed");
    let overlay = dir.path().join("overlay.qcow2");
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(&image.disk)
        .arg(&overlay)
        .status()
        .expect("qemu-img");
    assert!(st.success());
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let serial = dir.path().join("serial.log");
    let (Some(kernel), Some(initrd)) = (&image.kernel, &image.initrd) else { panic!("built image has a kernel") };
    let started = Instant::now();
    let _vm = Vm(Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-smp", "1", "-m", "768", "-nodefaults", "-no-user-config", "-display", "none"])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", &image.cmdline])
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=qcow2", overlay.display()))
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=raw,readonly=on", dir.path().join("seed.img").display()))
        .args(["-netdev", &format!("user,id=mgmt,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22")])
        .args(["-device", "virtio-net-pci,netdev=mgmt"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64"));
    let serial_log = || std::fs::read_to_string(&serial).unwrap_or_default();

    // Connect while the guest boots: the retries are the point.
    let session = Session::connect(port, &client_key, &host.host_public_openssh, Duration::from_secs(180))
        .await
        .unwrap_or_else(|e| panic!("connect: {e}\nserial:\n{}", serial_log()));
    eprintln!("SSH session after {:?} from QEMU start", started.elapsed());

    // A wrong pinned key against the real guest is refused at once.
    let other = generate_host_key().expect("other key");
    let err = Session::connect(port, &client_key, &other.host_public_openssh, Duration::from_secs(30))
        .await
        .expect_err("wrong pin");
    assert!(matches!(err, SshError::HostKeyMismatch { .. }), "{err}");

    let t = Instant::now();
    let out = session.exec("sh -c 'hostname; exit 3'", None).await.expect("exec");
    eprintln!("exec round trip {:?}", t.elapsed());
    assert_eq!(out.stdout_lossy().trim(), "sshtest");
    assert_eq!(out.exit_code, 3);

    let err = session.exec_timeout("sleep 40.5", None, Duration::from_secs(2)).await.expect_err("timeout");
    assert!(matches!(err, SshError::ExecTimeout { .. }), "{err}");
    let start = Instant::now();
    while session.exec("pgrep -f '^sleep 40.5$'", None).await.expect("pgrep").exit_code == 0 {
        assert!(start.elapsed() < Duration::from_secs(10), "timed-out command still runs in the guest");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let data: Vec<u8> = (0..5 * 1024 * 1024).map(|_| rand::random::<u8>()).collect();
    let t = Instant::now();
    session.upload(&data, "/root/blob", 0o640).await.expect("upload");
    let took = t.elapsed();
    eprintln!("upload 5 MiB to the guest: {took:?} ({:.1} MiB/s)", 5.0 / took.as_secs_f64());
    let out = session.exec("sha256sum /root/blob; stat -c %a /root/blob", None).await.expect("verify");
    let text = out.stdout_lossy();
    assert!(text.starts_with(&hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&data))), "{text}");
    assert!(text.trim_end().ends_with("640"), "{text}");
    // Again, now that boot-time work in the guest is over.
    let t = Instant::now();
    session.upload(&data, "/root/blob", 0o640).await.expect("upload again");
    let took = t.elapsed();
    eprintln!("upload 5 MiB again: {took:?} ({:.1} MiB/s)", 5.0 / took.as_secs_f64());

    // Forward to a server listening on the guest's loopback only.
    session
        .exec("busybox nc -l -p 7171 -e /bin/cat >/dev/null 2>&1 </dev/null & sleep 0.5", None)
        .await
        .expect("start guest echo");
    let local = session.forward(7171).await.expect("forward");
    let mut conn = TcpStream::connect(("127.0.0.1", local)).await.expect("connect forward");
    conn.write_all(b"through slirp and ssh\n").await.expect("write");
    let mut buf = vec![0u8; 22];
    tokio::time::timeout(Duration::from_secs(10), conn.read_exact(&mut buf))
        .await
        .expect("echo in time")
        .expect("read echo");
    assert_eq!(buf, b"through slirp and ssh\n");
    drop(conn);

    // The real agent, when it has been built static.
    match locate_agent_binary() {
        Ok(agent) => {
            let t = Instant::now();
            let client = push_agent(&session, &agent).await.unwrap_or_else(|e| panic!("push_agent: {e}"));
            eprintln!(
                "push_agent ({} MiB) + healthy: {:?}",
                std::fs::metadata(&agent).map(|m| m.len() >> 20).unwrap_or(0),
                t.elapsed()
            );
            let health = client.health().await.expect("health");
            eprintln!("agent health: {health:?}");
            let t = Instant::now();
            push_agent(&session, &agent).await.expect("second push (unchanged)");
            eprintln!("second push_agent (no upload): {:?}", t.elapsed());
        }
        Err(e) => eprintln!("SKIP push_agent: {e}"),
    }
}
