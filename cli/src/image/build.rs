//! Builds the `debian-12` guest image: mmdebstrap a minimal bookworm root, add testbed's init, make an ext4
//! filesystem from the directory (`mkfs.ext4 -d`, no loop mounts), convert it to qcow2, and build a ~2 MB
//! busybox initramfs that loads only the virtio modules the root disk needs. Booting skips Debian's initrd and
//! systemd entirely; see templates/guest/ for what runs in the guest.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use super::cache::{self, Manifest, Source, TempEntry};
use super::cpio::CpioWriter;
use super::{ImageArtifacts, ImageError};
use crate::ui::Ui;

/// Bumped whenever the recipe below changes in a way that changes the image; part of the cache key.
pub const RECIPE_VERSION: u32 = 1;
pub const DEBIAN_12: &str = "debian-12";
pub const KNOWN_NAMES: &[&str] = &[DEBIAN_12];
const SUITE: &str = "bookworm";
/// The suite name as a literal, so that `PACKAGES` can name the kernel package in it with `concat!`.
macro_rules! kernel_suite {
    () => {
        "bookworm-backports"
    };
}
/// Where the kernel comes from: bookworm's 6.1 virtio-net cannot hand a UDP GSO send to the hypervisor whole
/// (USO came with 6.2), which the udp backend's throughput depends on (docs/benchmarks.md, "udp backend").
const KERNEL_SUITE: &str = kernel_suite!();

/// Kernel arguments for direct boot of a built image. `quiet` matters: every console line costs time under TCG.
pub const CMDLINE: &str = "console=ttyS0 root=/dev/vda rw quiet";

/// What the guest gets. busybox-static (not busybox) so that the very same binary also runs the initramfs.
/// tiny-initramfs satisfies the kernel's `linux-initramfs-tool` dependency in a fraction of initramfs-tools'
/// time; its output is deleted, our initramfs replaces it.
pub const PACKAGES: &[&str] = &[
    // Debian's own newer kernel (6.12 at the time of writing) from the suite below.
    concat!("linux-image-cloud-amd64/", kernel_suite!()),
    "tiny-initramfs",
    "openssh-server",
    "iproute2",
    "iperf3",
    "kmod",
    "iputils-ping",
    "procps",
    "busybox-static",
    "ethtool",
    "util-linux",
    "coreutils",
    // The control plane's store (etcd 3.4 in bookworm). mmdebstrap keeps package scripts from starting
    // services while it installs (it moves policy-rc.d and start-stop-daemon aside), and busybox init runs no
    // init scripts: etcd runs only where `up` starts it, under `testbed-service`.
    "etcd-server",
    // The agent's service proxy writes its nftables table through the `nft` binary (docs/architecture.md,
    // "Service proxy").
    "nftables",
    // The service proxy's benchmark (agent/src/proxy/bench.rs) compares with kube-proxy's iptables-mode
    // ruleset through iptables-restore; with it in the image it runs in a guest as on the host.
    "iptables",
    // The OCI runtime the agent starts containers with an `image` with (agent/src/pod/oci.rs).
    "crun",
    // The NetworkPolicy model's UDP server and client (a datagram answered with the pod's name): busybox's
    // nc serves one UDP peer and exits, and iperf3's UDP needs a TCP control connection a policy may block.
    "socat",
];

/// What dpkg leaves out of a root it installs: documentation and translations are a third of a minimal
/// system and nobody reads them in a node or a container.
pub const DOC_EXCLUDES: &[&str] = &["/usr/share/man/*", "/usr/share/doc/*", "/usr/share/locale/*", "/usr/share/info/*"];

/// Loaded by the initramfs, in this order after dependency resolution, so that /dev/vda appears.
const INITRAMFS_MODULES: &[&str] = &["virtio_pci", "virtio_blk"];
/// busybox applets the initramfs script calls.
const INITRAMFS_APPLETS: &[&str] =
    &["sh", "mount", "umount", "cat", "mkdir", "insmod", "usleep", "switch_root", "poweroff", "echo"];

const INITRAMFS_INIT: &str = include_str!("../../../templates/guest/initramfs-init");
const TESTBED_INIT: &str = include_str!("../../../templates/guest/testbed-init");
const SUPERVISOR: &str = include_str!("../../../templates/guest/testbed-agent-supervisor");
const SERVICE: &str = include_str!("../../../templates/guest/testbed-service");
const INITTAB: &str = include_str!("../../../templates/guest/inittab");
const SSHD_CONFIG: &str = include_str!("../../../templates/guest/sshd_config");

/// Files testbed adds to the root filesystem: (path, mode, content).
const GUEST_FILES: &[(&str, u32, &str)] = &[
    ("sbin/testbed-init", 0o755, TESTBED_INIT),
    ("usr/local/sbin/testbed-agent-supervisor", 0o755, SUPERVISOR),
    ("usr/local/sbin/testbed-service", 0o755, SERVICE),
    ("etc/inittab", 0o644, INITTAB),
    ("etc/ssh/sshd_config.d/testbed.conf", 0o644, SSHD_CONFIG),
];

/// Below this much free space in the cache directory the build would fail half-way; refuse up front.
const MIN_FREE_BYTES: u64 = 2 << 30;
/// The root filesystem's size; the raw file is sparse and qcow2 stores only used blocks.
const DISK_BYTES: u64 = 2 << 30;

#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    pub force: bool,
    /// A Debian mirror URL; default: the host's own bookworm apt sources.
    pub mirror: Option<String>,
}

/// The cache id of `name` built with this binary's recipe: a hash of everything that shapes the image.
pub fn image_id(name: &str) -> Result<String, ImageError> {
    if !KNOWN_NAMES.contains(&name) {
        return Err(ImageError::UnknownName {
            name: name.to_string(),
            known: KNOWN_NAMES.iter().map(|s| s.to_string()).collect(),
        });
    }
    let mut h = Sha256::new();
    h.update(format!("recipe {RECIPE_VERSION}\nsuite {SUITE}\ncmdline {CMDLINE}\n"));
    for p in PACKAGES {
        h.update(format!("package {p}\n"));
    }
    for m in INITRAMFS_MODULES {
        h.update(format!("module {m}\n"));
    }
    for (name, content) in
        [("initramfs-init", INITRAMFS_INIT)].into_iter().chain(GUEST_FILES.iter().map(|(p, _, c)| (*p, *c)))
    {
        h.update(format!("file {name} {}\n", hex::encode(Sha256::digest(content.as_bytes()))));
    }
    let digest = hex::encode(h.finalize());
    Ok(format!("{name}-{}", &digest[..12]))
}

/// Returns the cached image `name`, building it first when missing (or always with `force`).
pub fn build(ui: &Ui, name: &str, opts: &BuildOptions) -> Result<ImageArtifacts, ImageError> {
    let id = image_id(name)?;
    let root = cache::cache_root()?;
    if !opts.force {
        if let Some(entry) = cache::lookup(&root, &id)? {
            return Ok(entry.manifest.artifacts(&entry.dir));
        }
    }
    preflight()?;
    std::fs::create_dir_all(&root).map_err(|e| ImageError::io(format!("create {}", root.display()), e))?;
    cache::sweep_stale(&root);
    check_free_space(&root)?;

    let task = ui.task(&format!("image {name}"));
    let started = std::time::Instant::now();
    let result = build_into(&task, &root, &id, name, opts);
    match &result {
        Ok(_) => task.finish(format!("built {id} in {:.0} s", started.elapsed().as_secs_f64())),
        Err(e) => task.fail(e.to_string()),
    }
    result
}

fn build_into(
    task: &crate::ui::Task,
    root: &Path,
    id: &str,
    name: &str,
    opts: &BuildOptions,
) -> Result<ImageArtifacts, ImageError> {
    let tmp = TempEntry::create(root, id)?;
    let rootfs = tmp.dir.join("rootfs");
    let log = tmp.dir.join("mmdebstrap.log");

    let mirrors = with_backports(match &opts.mirror {
        Some(m) => vec![m.clone()],
        None => host_apt_sources()?,
    });
    task.stage(format!("mmdebstrap {SUITE} ({} packages)", PACKAGES.len()));
    mmdebstrap(task, &rootfs, &mirrors, &log)?;

    task.stage("adding testbed init");
    customize_rootfs(&rootfs)?;
    let kernel_release = kernel_release(&rootfs)?;
    let packages = installed_versions(&rootfs)?;

    task.stage("extracting kernel, building initramfs");
    let vmlinuz = rootfs.join(format!("boot/vmlinuz-{kernel_release}"));
    copy(&vmlinuz, &tmp.dir.join(cache::KERNEL))?;
    let initrd = build_initramfs(&rootfs, &kernel_release)?;
    write(&tmp.dir.join(cache::INITRD), &initrd)?;
    // Nothing boots these from inside the guest; they only cost space.
    remove_boot_leftovers(&rootfs)?;

    task.stage("mkfs.ext4 -d (root filesystem)");
    let raw = tmp.dir.join("disk.raw");
    let f = std::fs::File::create(&raw).map_err(|e| ImageError::io(format!("create {}", raw.display()), e))?;
    f.set_len(DISK_BYTES).map_err(|e| ImageError::io(format!("size {}", raw.display()), e))?;
    drop(f);
    run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "testbed-root"])
            // Initialise inode tables and the journal now: otherwise the guest's ext4lazyinit thread does it
            // at every boot, writing to the overlay and stealing CPU from a TCG guest.
            .args(["-E", "lazy_itable_init=0,lazy_journal_init=0", "-d"])
            .arg(&rootfs)
            .arg(&raw),
        "mkfs.ext4",
    )?;
    task.stage("qemu-img convert (qcow2)");
    run(
        Command::new("qemu-img").args(["convert", "-O", "qcow2"]).arg(&raw).arg(tmp.dir.join(cache::DISK)),
        "qemu-img convert",
    )?;
    remove_file(&raw)?;
    std::fs::remove_dir_all(&rootfs).map_err(|e| ImageError::io(format!("remove {}", rootfs.display()), e))?;
    let _ = std::fs::remove_file(&log);

    let manifest = Manifest {
        id: id.to_string(),
        name: name.to_string(),
        source: Source::Built { recipe_version: RECIPE_VERSION, suite: SUITE.to_string(), packages, kernel_release },
        created_unix: cache::now_unix(),
        cmdline: CMDLINE.to_string(),
        has_kernel: true,
        size_bytes: cache::dir_size(&tmp.dir),
    };
    if opts.force {
        // Replace the previous build of the same inputs: move it aside first so the rename below succeeds.
        let old = root.join(id);
        if old.exists() {
            let trash = root.join(format!(".tmp-old-{id}-{}-0", std::process::id()));
            std::fs::rename(&old, &trash).map_err(|e| ImageError::io(format!("rename {}", old.display()), e))?;
            let _ = std::fs::remove_dir_all(&trash);
        }
    }
    let entry = tmp.commit(&manifest)?;
    Ok(entry.manifest.artifacts(&entry.dir))
}

/// Tools the build runs, with the Debian package that provides each.
const TOOLS: &[(&str, &str)] =
    &[("mmdebstrap", "mmdebstrap"), ("mkfs.ext4", "e2fsprogs"), ("qemu-img", "qemu-utils"), ("xz", "xz-utils")];

fn preflight() -> Result<(), ImageError> {
    for (tool, package) in TOOLS {
        if find_in_path(tool).is_none() {
            return Err(ImageError::MissingTool { tool: tool.to_string(), package: package.to_string() });
        }
    }
    // mmdebstrap's root mode and mkfs.ext4 -d need real root to keep file owners (sshd refuses keys otherwise).
    if !nix::unistd::geteuid().is_root() {
        return Err(ImageError::NeedsRoot);
    }
    Ok(())
}

pub fn find_in_path(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].iter().map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

fn check_free_space(dir: &Path) -> Result<(), ImageError> {
    let st =
        nix::sys::statvfs::statvfs(dir).map_err(|e| ImageError::io(format!("statvfs {}", dir.display()), e.into()))?;
    #[allow(clippy::unnecessary_cast)] // the field types differ between libc targets
    let free = st.blocks_available() as u64 * st.fragment_size() as u64;
    if free < MIN_FREE_BYTES {
        return Err(ImageError::DiskFull {
            path: dir.to_path_buf(),
            detail: format!("{} MiB free, the build needs {} MiB", free >> 20, MIN_FREE_BYTES >> 20),
        });
    }
    Ok(())
}

/// The bookworm entries of the host's apt configuration, as one-line `deb` entries for mmdebstrap. Using the
/// host's own sources means the build uses whatever mirror (or proxy, or snapshot) this machine is set up for.
pub fn host_apt_sources() -> Result<Vec<String>, ImageError> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(rd) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut extra: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        extra.sort();
        files.extend(extra);
    }
    let mut entries = Vec::new();
    for f in files {
        let name = f.to_string_lossy();
        let Ok(text) = std::fs::read_to_string(&f) else { continue };
        if name.ends_with(".sources") {
            entries.extend(parse_deb822_sources(&text));
        } else if name.ends_with(".list") {
            entries.extend(parse_one_line_sources(&text));
        }
    }
    if entries.is_empty() {
        return Err(ImageError::NoAptSource);
    }
    Ok(entries)
}

/// `mirrors` plus a `KERNEL_SUITE` entry on the same mirror as the first plain bookworm one, unless one is
/// there: every Debian mirror carries backports, but a machine's sources often leave it out.
fn with_backports(mut mirrors: Vec<String>) -> Vec<String> {
    let suite_of = |entry: &str| -> Option<(String, String)> {
        let rest = entry.strip_prefix("deb")?.trim_start();
        let (options, rest) = match rest.strip_prefix('[') {
            Some(r) => {
                let (o, r) = r.split_once(']')?;
                (format!("[{o}] "), r.trim_start())
            }
            None => (String::new(), rest),
        };
        let mut words = rest.split_whitespace();
        let uri = words.next()?;
        Some((words.next()?.to_string(), format!("deb {options}{uri} {KERNEL_SUITE} main")))
    };
    if mirrors.iter().any(|m| suite_of(m).is_some_and(|(suite, _)| suite == KERNEL_SUITE)) {
        return mirrors;
    }
    let extra = mirrors.iter().find_map(|m| match suite_of(m) {
        Some((suite, line)) => (suite == SUITE).then_some(line),
        // A bare URL (`--mirror`), which mmdebstrap takes as `deb URL bookworm main`.
        None => (!m.starts_with("deb")).then(|| format!("deb {} {KERNEL_SUITE} main", m.trim())),
    });
    mirrors.extend(extra);
    mirrors
}

fn is_bookworm(suite: &str) -> bool {
    suite == SUITE || suite.starts_with("bookworm-") || suite.starts_with("bookworm/")
}

fn parse_one_line_sources(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| l.starts_with("deb ") || l.starts_with("deb\t"))
        .filter(|l| {
            // deb [options] URI SUITE COMPONENTS...
            let rest = l[3..].trim_start();
            let rest = if rest.starts_with('[') { rest.split_once(']').map(|(_, r)| r).unwrap_or("") } else { rest };
            rest.split_whitespace().nth(1).is_some_and(is_bookworm)
        })
        .map(str::to_string)
        .collect()
}

fn parse_deb822_sources(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let uncommented: Vec<&str> = text.lines().filter(|l| !l.trim_start().starts_with('#')).collect();
    for stanza in uncommented.join("\n").split("\n\n") {
        let mut fields: BTreeMap<String, String> = BTreeMap::new();
        let mut last: Option<String> = None;
        for line in stanza.lines() {
            if line.starts_with([' ', '\t']) {
                if let Some(k) = &last {
                    if let Some(v) = fields.get_mut(k) {
                        v.push(' ');
                        v.push_str(line.trim());
                    }
                }
            } else if let Some((k, v)) = line.split_once(':') {
                let k = k.trim().to_ascii_lowercase();
                fields.insert(k.clone(), v.trim().to_string());
                last = Some(k);
            }
        }
        let get = |k: &str| fields.get(k).map(String::as_str).unwrap_or("");
        if !get("types").split_whitespace().any(|t| t == "deb") || get("enabled").eq_ignore_ascii_case("no") {
            continue;
        }
        let options = match get("signed-by") {
            "" => String::new(),
            // An inline key block cannot be written on one line; apt's default keyring covers Debian anyway.
            s if s.contains("BEGIN PGP") => String::new(),
            s => format!("[signed-by={s}] "),
        };
        for uri in get("uris").split_whitespace() {
            for suite in get("suites").split_whitespace().filter(|s| is_bookworm(s)) {
                out.push(format!("deb {options}{uri} {suite} {}", get("components")));
            }
        }
    }
    out
}

fn mmdebstrap(task: &crate::ui::Task, rootfs: &Path, mirrors: &[String], log: &Path) -> Result<(), ImageError> {
    let mut cmd = Command::new("mmdebstrap");
    cmd.args(["--mode=root", "--variant=minbase", "--format=directory"])
        .arg(format!("--include={}", PACKAGES.join(",")))
        .args(DOC_EXCLUDES.iter().map(|path| format!("--dpkgopt=path-exclude={path}")))
        .arg(SUITE)
        .arg(rootfs)
        .args(mirrors)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env("LC_ALL", "C.UTF-8");
    let mut child = cmd.spawn().map_err(|e| ImageError::io("run mmdebstrap".to_string(), e))?;
    let mut log_text = String::new();
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            // mmdebstrap's "I: ..." lines name its phases; show them as the stage.
            if let Some(phase) = line.strip_prefix("I: ") {
                task.stage(format!("mmdebstrap: {phase}"));
            }
            log_text.push_str(&line);
            log_text.push('\n');
        }
    }
    let _ = std::fs::write(log, &log_text);
    let status = child.wait().map_err(|e| ImageError::io("wait for mmdebstrap".to_string(), e))?;
    if !status.success() {
        return Err(command_failed("mmdebstrap", status, &log_text, rootfs));
    }
    Ok(())
}

/// Installs testbed's init and config, and removes what must not be shared between nodes (SSH host keys).
fn customize_rootfs(rootfs: &Path) -> Result<(), ImageError> {
    for (path, mode, content) in GUEST_FILES {
        let dest = rootfs.join(path);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(|e| ImageError::io(format!("create {}", parent.display()), e))?;
        }
        write(&dest, content.as_bytes())?;
        set_mode(&dest, *mode)?;
    }
    // openssh-server's postinst generated host keys; each node gets its own from the seed instead.
    let ssh_dir = rootfs.join("etc/ssh");
    for item in
        std::fs::read_dir(&ssh_dir).map_err(|e| ImageError::io(format!("read {}", ssh_dir.display()), e))?.flatten()
    {
        if item.file_name().to_string_lossy().starts_with("ssh_host_") {
            remove_file(&item.path())?;
        }
    }
    // Without systemd there are no poweroff/reboot commands; busybox's talk to busybox init (PID 1).
    // nc/httpd/wget are what the suites use from busybox.
    for (dir, applets) in
        [("sbin", &["poweroff", "reboot", "halt"][..]), ("usr/local/bin", &["nc", "httpd", "wget"][..])]
    {
        std::fs::create_dir_all(rootfs.join(dir)).map_err(|e| ImageError::io(format!("create {dir}"), e))?;
        for applet in applets {
            let link = rootfs.join(dir).join(applet);
            if link.symlink_metadata().is_err() {
                std::os::unix::fs::symlink("/bin/busybox", &link)
                    .map_err(|e| ImageError::io(format!("symlink {}", link.display()), e))?;
            }
        }
    }
    Ok(())
}

fn remove_boot_leftovers(rootfs: &Path) -> Result<(), ImageError> {
    let boot = rootfs.join("boot");
    for item in std::fs::read_dir(&boot).map_err(|e| ImageError::io(format!("read {}", boot.display()), e))?.flatten() {
        let name = item.file_name().to_string_lossy().into_owned();
        if name.starts_with("initrd.img") || name.starts_with("vmlinuz") {
            remove_file(&item.path())?;
        }
    }
    Ok(())
}

/// The one kernel release installed under /lib/modules.
fn kernel_release(rootfs: &Path) -> Result<String, ImageError> {
    let dir = rootfs.join("lib/modules");
    let releases: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|e| ImageError::io(format!("read {}", dir.display()), e))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|r| rootfs.join(format!("boot/vmlinuz-{r}")).exists())
        .collect();
    match releases.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(ImageError::Recipe(format!("expected exactly one kernel in the root filesystem, found {releases:?}"))),
    }
}

/// `package=version` for the packages the recipe asked for, read from dpkg's status file.
fn installed_versions(rootfs: &Path) -> Result<Vec<String>, ImageError> {
    let path = rootfs.join("var/lib/dpkg/status");
    let text = std::fs::read_to_string(&path).map_err(|e| ImageError::io(format!("read {}", path.display()), e))?;
    let mut versions = BTreeMap::new();
    for stanza in text.split("\n\n") {
        let field = |k: &str| stanza.lines().find_map(|l| l.strip_prefix(k)).map(str::trim);
        if let (Some(p), Some(v)) = (field("Package:"), field("Version:")) {
            if field("Status:").is_some_and(|s| s.ends_with("installed")) {
                versions.insert(p.to_string(), v.to_string());
            }
        }
    }
    Ok(PACKAGES
        .iter()
        .map(|p| match versions.get(*p) {
            Some(v) => format!("{p}={v}"),
            None => format!("{p}=?"),
        })
        .collect())
}

/// Module file paths (relative to /lib/modules/<release>) to insmod, dependencies first.
pub fn resolve_modules(modules_dep: &str, builtin: &str, wanted: &[&str]) -> Result<Vec<String>, ImageError> {
    let module_name = |path: &str| -> String {
        let file = path.rsplit('/').next().unwrap_or(path);
        file.split(".ko").next().unwrap_or(file).replace('-', "_")
    };
    let mut deps: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for line in modules_dep.lines() {
        if let Some((path, rest)) = line.split_once(':') {
            deps.insert(module_name(path), (path.to_string(), rest.split_whitespace().map(str::to_string).collect()));
        }
    }
    let builtin: HashSet<String> = builtin.lines().map(module_name).collect();
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    fn visit(
        name: &str,
        deps: &BTreeMap<String, (String, Vec<String>)>,
        builtin: &HashSet<String>,
        seen: &mut HashSet<String>,
        order: &mut Vec<String>,
        module_name: &dyn Fn(&str) -> String,
    ) -> Result<(), ImageError> {
        if !seen.insert(name.to_string()) || builtin.contains(name) {
            return Ok(());
        }
        let (path, requires) = deps
            .get(name)
            .ok_or_else(|| ImageError::Recipe(format!("kernel module {name} is neither a module nor built in")))?;
        // modules.dep lists dependencies so that loading them last-to-first satisfies each one's own deps.
        for dep in requires.iter().rev() {
            visit(&module_name(dep), deps, builtin, seen, order, module_name)?;
        }
        order.push(path.clone());
        Ok(())
    }
    for w in wanted {
        visit(w, &deps, &builtin, &mut seen, &mut order, &module_name)?;
    }
    Ok(order)
}

fn build_initramfs(rootfs: &Path, release: &str) -> Result<Vec<u8>, ImageError> {
    let moddir = rootfs.join("lib/modules").join(release);
    let modules_dep = read_to_string(&moddir.join("modules.dep"))?;
    let builtin = read_to_string(&moddir.join("modules.builtin")).unwrap_or_default();
    let modules = resolve_modules(&modules_dep, &builtin, INITRAMFS_MODULES)?;
    let busybox = std::fs::read(rootfs.join("bin/busybox"))
        .map_err(|e| ImageError::io("read the guest's /bin/busybox".to_string(), e))?;

    let mut w = CpioWriter::new();
    for d in ["bin", "dev", "proc", "sys", "newroot", "lib", "lib/modules"] {
        w.dir(d, 0o755);
    }
    // The kernel opens /dev/console for /init's stdio before anything mounts devtmpfs.
    w.char_dev("dev/console", 0o600, 5, 1);
    w.file("bin/busybox", 0o755, &busybox);
    for applet in INITRAMFS_APPLETS {
        w.symlink(&format!("bin/{applet}"), "busybox");
    }
    let mut order = String::new();
    for m in &modules {
        let data = std::fs::read(moddir.join(m)).map_err(|e| ImageError::io(format!("read module {m}"), e))?;
        // busybox's insmod takes only plain modules; Debian's kernels from 6.x on ship them xz-compressed.
        let (m, data) = match m.strip_suffix(".xz") {
            Some(plain) => (plain, unxz(&data, m)?),
            None => (m.as_str(), data),
        };
        if !m.ends_with(".ko") {
            return Err(ImageError::Recipe(format!("compressed kernel module {m} is not supported by the initramfs")));
        }
        let file = m.rsplit('/').next().unwrap_or(m);
        w.file(&format!("lib/modules/{file}"), 0o644, &data);
        order.push_str(file);
        order.push('\n');
    }
    w.file("modules.order", 0o644, order.as_bytes());
    w.file("init", 0o755, INITRAMFS_INIT.as_bytes());
    Ok(w.finish())
}

/// `xz -dc` of a module's bytes (the guest's kmod reads .ko.xz itself; only the initramfs needs them plain).
fn unxz(data: &[u8], what: &str) -> Result<Vec<u8>, ImageError> {
    use std::io::Write;
    let mut child = Command::new("xz")
        .args(["-dc"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| ImageError::io(format!("run xz -dc for {what}"), e))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().map_err(|e| ImageError::io(format!("run xz -dc for {what}"), e))?;
    let _ = writer.join();
    if !out.status.success() {
        return Err(command_failed(
            &format!("xz -dc {what}"),
            out.status,
            &String::from_utf8_lossy(&out.stderr),
            Path::new("."),
        ));
    }
    Ok(out.stdout)
}

fn run(cmd: &mut Command, what: &str) -> Result<(), ImageError> {
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| ImageError::io(format!("run {what}"), e))?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
        return Err(command_failed(what, out.status, &text, Path::new(".")));
    }
    Ok(())
}

fn command_failed(what: &str, status: std::process::ExitStatus, output: &str, path: &Path) -> ImageError {
    let tail: Vec<&str> = output.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect();
    let tail = tail.join("\n");
    if tail.contains("No space left on device") {
        return ImageError::DiskFull { path: path.to_path_buf(), detail: format!("{what} ran out of space") };
    }
    ImageError::CommandFailed { what: what.to_string(), status: status.to_string(), output: tail }
}

fn read_to_string(path: &Path) -> Result<String, ImageError> {
    std::fs::read_to_string(path).map_err(|e| ImageError::io(format!("read {}", path.display()), e))
}

fn write(path: &Path, data: &[u8]) -> Result<(), ImageError> {
    std::fs::write(path, data).map_err(|e| ImageError::io(format!("write {}", path.display()), e))
}

fn copy(from: &Path, to: &Path) -> Result<(), ImageError> {
    std::fs::copy(from, to)
        .map(|_| ())
        .map_err(|e| ImageError::io(format!("copy {} to {}", from.display(), to.display()), e))
}

fn remove_file(path: &Path) -> Result<(), ImageError> {
    std::fs::remove_file(path).map_err(|e| ImageError::io(format!("remove {}", path.display()), e))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), ImageError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| ImageError::io(format!("chmod {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
";

    #[test]
    fn modules_load_dependencies_first() {
        let order = resolve_modules(DEP, "", INITRAMFS_MODULES).unwrap();
        let names: Vec<&str> = order.iter().map(|p| p.rsplit('/').next().unwrap()).collect();
        assert_eq!(
            names,
            [
                "virtio_ring.ko",
                "virtio.ko",
                "virtio_pci_modern_dev.ko",
                "virtio_pci_legacy_dev.ko",
                "virtio_pci.ko",
                "virtio_blk.ko"
            ]
        );
    }

    #[test]
    fn builtin_modules_are_skipped_and_unknown_ones_rejected() {
        let order = resolve_modules(DEP, "kernel/drivers/virtio/virtio_ring.ko\n", &["virtio_blk"]).unwrap();
        assert_eq!(order, ["kernel/drivers/virtio/virtio.ko", "kernel/drivers/block/virtio_blk.ko"]);
        let err = resolve_modules(DEP, "", &["nvme"]).unwrap_err();
        assert!(err.to_string().contains("nvme"), "{err}");
    }

    #[test]
    fn the_kernel_suite_is_added_on_the_first_bookworm_mirror_unless_present() {
        let url = with_backports(vec!["http://mirror.example/debian".into()]);
        assert_eq!(url, ["http://mirror.example/debian", "deb http://mirror.example/debian bookworm-backports main"]);
        let lines = with_backports(vec![
            "deb http://sec.example/debian-security bookworm-security main".into(),
            "deb [signed-by=/k.gpg] http://deb.example/debian bookworm main contrib".into(),
        ]);
        assert_eq!(lines[2], "deb [signed-by=/k.gpg] http://deb.example/debian bookworm-backports main");
        let present = vec![
            "deb http://deb.example/debian bookworm main".to_string(),
            "deb http://deb.example/debian bookworm-backports main".to_string(),
        ];
        assert_eq!(with_backports(present.clone()), present);
    }

    #[test]
    fn apt_sources_keep_only_bookworm_debs() {
        let deb822 = "\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main

Types: deb
URIs: https://example.invalid/other
Suites: nodistro
Components: main
";
        assert_eq!(
            parse_deb822_sources(deb822),
            [
                "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main",
                "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-updates main",
            ]
        );
        let one_line = "# comment\ndeb http://mirror.invalid/debian bookworm main contrib\ndeb [arch=amd64] http://x.invalid/ cloud-sdk-bookworm main\ndeb-src http://mirror.invalid/debian bookworm main\ndeb http://mirror.invalid/debian-security bookworm-security main\n";
        assert_eq!(
            parse_one_line_sources(one_line),
            [
                "deb http://mirror.invalid/debian bookworm main contrib",
                "deb http://mirror.invalid/debian-security bookworm-security main"
            ]
        );
    }

    /// The provider waits for this exact console line; the init script must print it after starting sshd.
    #[test]
    fn init_announces_sshd_on_the_console() {
        let (prefix, message) = super::super::SSHD_STARTED.split_once(": ").unwrap();
        assert_eq!(prefix, "testbed-init");
        assert!(TESTBED_INIT.contains(r#"log() { echo "testbed-init: $*" >/dev/console; }"#));
        let sshd = TESTBED_INIT.find("/usr/sbin/sshd").unwrap();
        let announce = TESTBED_INIT.find(&format!("log \"{message}\"")).unwrap();
        assert!(announce > sshd);
    }

    #[test]
    fn image_id_is_stable_and_names_are_checked() {
        let a = image_id(DEBIAN_12).unwrap();
        assert_eq!(a, image_id(DEBIAN_12).unwrap());
        assert!(a.starts_with("debian-12-") && a.len() == "debian-12-".len() + 12);
        let err = image_id("fedora-40").unwrap_err();
        assert!(matches!(err, ImageError::UnknownName { .. }));
        assert!(err.to_string().contains("debian-12"), "{err}");
    }
}
