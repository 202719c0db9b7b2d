//! A container with an `image` is started the runtime-spec way: a bundle directory (`config.json` and a
//! `rootfs/` mount point) that crun runs (`launcher::oci`). This module writes the bundle: the process from
//! the image config and the spec's overrides (Kubernetes' rules for command/args), the mounts (own /proc,
//! read-only /sys, a minimal /dev, /etc/hostname, /etc/hosts and /etc/resolv.conf per pod, as the kubelet
//! writes them), and the namespaces the runtime creates. The pod's network, IPC and UTS namespaces are not
//! in it: the launcher joins the infra's before it runs crun, which inherits them (as today's containers).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::processes::{ImageLaunch, DEFAULT_PATH};
use super::record::Pod;
use super::volumes;
use super::{lock, Agent, AgentError, Result};
use crate::image::{users, Digest, ImageConfig, ImageError, ImageFiles, ImageStore, ImageUser, StoredImage};
use testbed_api::{ContainerSpec, PodSecurityContext, SecurityContext};

/// Where a container's bundle lives in its pod's directory, and its parts.
pub struct BundleDir(pub PathBuf);

impl BundleDir {
    pub fn rootfs(&self) -> PathBuf {
        self.0.join("rootfs")
    }
    pub fn upper(&self) -> PathBuf {
        self.0.join("upper")
    }
    pub fn work(&self) -> PathBuf {
        self.0.join("work")
    }
}

/// The default capability set of containerd (and Docker): what a container's root keeps.
const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// The container's argv, as the kubelet derives it: `command` replaces the Entrypoint and drops the Cmd;
/// `args` replaces the Cmd; with neither, Entrypoint + Cmd.
pub fn argv(image: &ImageConfig, command: &[String], args: &[String]) -> Result<Vec<String>, String> {
    let entrypoint = image.entrypoint.clone().unwrap_or_default();
    let cmd = image.cmd.clone().unwrap_or_default();
    let argv = match (command.is_empty(), args.is_empty()) {
        (false, _) => [command, args].concat(),
        (true, false) => [entrypoint.as_slice(), args].concat(),
        (true, true) => [entrypoint, cmd].concat(),
    };
    if argv.is_empty() {
        return Err("the image has no Entrypoint or Cmd and the container gives no command".into());
    }
    Ok(argv)
}

/// The image's Env with the spec's `env` over it (same name: the spec wins), PATH defaulted, HOSTNAME set.
pub fn environment(image: &ImageConfig, env: &BTreeMap<String, String>, hostname: &str) -> Vec<String> {
    let mut merged: BTreeMap<String, String> = BTreeMap::new();
    merged.insert("PATH".into(), DEFAULT_PATH.into());
    for pair in image.env.iter().flatten() {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        merged.insert(k.into(), v.into());
    }
    merged.insert("HOSTNAME".into(), hostname.into());
    merged.extend(env.iter().map(|(k, v)| (k.clone(), v.clone())));
    merged.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// The ids the container runs as: the spec's `runAsUser`/`runAsGroup` over the image's `User`, names and
/// groups looked up in the image's own /etc/passwd and /etc/group as containerd does.
pub fn user(
    files: &ImageFiles<'_>,
    image: &ImageConfig,
    run_as: (Option<u32>, Option<u32>),
) -> Result<ImageUser, String> {
    match run_as {
        (Some(uid), gid) => Ok(users::by_id(files, uid, gid)),
        (None, gid) => {
            let from_image = users::resolve(files, image.user.as_deref().unwrap_or(""))
                .map_err(|e| format!("the image's User: {e}"))?;
            Ok(match gid {
                Some(gid) => users::by_id(files, from_image.uid, Some(gid)),
                None => from_image,
            })
        }
    }
}

/// The kubelet's /etc/hosts for a pod (`kubelet_pods.go`, managedHostsFileContent).
pub fn hosts_file(pod_ip: Option<Ipv4Addr>, hostname: &str) -> String {
    let mut text = String::from(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    if let Some(ip) = pod_ip {
        text.push_str(&format!("{ip}\t{hostname}\n"));
    }
    text
}

/// What `config_json` needs beyond the image.
pub struct Process {
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: ImageUser,
    /// Bounding, effective and permitted set (`SecurityContext::capabilities`).
    pub capabilities: Vec<String>,
    /// `allowPrivilegeEscalation: false`.
    pub no_new_privileges: bool,
}

/// The container's view of files beyond its image: the root's mode, volumes, and what privileged opens up.
#[derive(Default)]
pub struct Filesystem {
    pub read_only_root: bool,
    /// `privileged`: /sys writable and no masked or read-only /proc paths (every capability is in `Process`).
    pub privileged: bool,
    pub volumes: Vec<VolumeBind>,
}

/// One `volumeMounts` entry resolved to a path on the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeBind {
    pub source: PathBuf,
    pub destination: String,
    pub read_only: bool,
}

/// The runtime-spec config: crun makes the container's PID and mount namespaces (the pod's network, IPC and
/// UTS namespaces are inherited from the launcher).
pub fn config_json(process: &Process, fs: &Filesystem, bundle: &BundleDir) -> Value {
    let bind = |name: &str, dest: &str| json!({ "destination": dest, "type": "bind", "source": bundle.0.join(name), "options": ["rbind", "rprivate"] });
    let sys_mode = if fs.privileged { "rw" } else { "ro" };
    let mut mounts = vec![
        json!({ "destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"] }),
        json!({ "destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] }),
        json!({ "destination": "/dev/pts", "type": "devpts", "source": "devpts",
                "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"] }),
        json!({ "destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] }),
        json!({ "destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"] }),
        json!({ "destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", sys_mode] }),
        bind("hostname", "/etc/hostname"),
        bind("hosts", "/etc/hosts"),
        bind("resolv.conf", "/etc/resolv.conf"),
    ];
    // After the runtime's own mounts, as the kubelet orders them: a volume may cover one of them.
    for v in &fs.volumes {
        let mode = if v.read_only { "ro" } else { "rw" };
        mounts.push(json!({ "destination": v.destination, "type": "bind", "source": v.source, "options": ["rbind", "rprivate", mode] }));
    }
    let (masked, read_only): (&[&str], &[&str]) =
        if fs.privileged { (&[], &[]) } else { (&MASKED_PATHS, &READ_ONLY_PATHS) };
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": { "uid": process.user.uid, "gid": process.user.gid, "additionalGids": process.user.additional_gids },
            "args": process.argv,
            "env": process.env,
            "cwd": process.cwd,
            "capabilities": {
                "bounding": process.capabilities, "effective": process.capabilities, "permitted": process.capabilities,
            },
            "noNewPrivileges": process.no_new_privileges,
        },
        "root": { "path": "rootfs", "readonly": fs.read_only_root },
        "mounts": mounts,
        "linux": {
            "namespaces": [{ "type": "pid" }, { "type": "mount" }],
            "maskedPaths": masked,
            "readonlyPaths": read_only,
        },
    })
}

/// The kubelet's (containerd's) masked /proc and /sys paths of an unprivileged container.
const MASKED_PATHS: [&str; 9] = [
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
];
/// ... and its read-only /proc paths.
const READ_ONLY_PATHS: [&str; 5] = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// Writes a fresh bundle into `bundle`: an empty writable layer (a restarted container starts from the
/// image again, as with containerd), the per-pod /etc files and config.json.
pub fn write(bundle: &BundleDir, config: &Value, hostname: &str, hosts: &str) -> std::io::Result<()> {
    let _ = std::fs::remove_dir_all(&bundle.0);
    for dir in [bundle.rootfs(), bundle.upper(), bundle.work()] {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(bundle.0.join("hostname"), format!("{hostname}\n"))?;
    std::fs::write(bundle.0.join("hosts"), hosts)?;
    // dnsPolicy Default: the node's resolver configuration (the pod has no cluster DNS to point at yet).
    let resolv = std::fs::read("/etc/resolv.conf").unwrap_or_default();
    std::fs::write(bundle.0.join("resolv.conf"), resolv)?;
    std::fs::write(bundle.0.join("config.json"), serde_json::to_vec_pretty(config).expect("JSON value"))
}

/// The bundle's path given to the launcher and the one crun is run with.
pub fn path(pod_dir: &Path, container: &str) -> BundleDir {
    BundleDir(pod_dir.join(format!("{container}.oci")))
}

impl Agent {
    /// The image store of this node: `<state-dir>/images` (`testbed-agent import-image` fills the same one).
    fn image_store(&self) -> ImageStore {
        ImageStore::new(self.cfg.state_dir.join("images"))
    }

    /// Resolves container `c`'s image (importing it when named by path) and writes its bundle.
    pub(super) async fn prepare_bundle(&self, pod: &Pod, c: &ContainerSpec, reference: &str) -> Result<ImageLaunch> {
        let spec = &pod.spec;
        let failed = |what: String| {
            AgentError::Failed(format!("pod {} container {}: image {reference}: {what}", spec.name, c.name))
        };
        if spec.share_process_namespace {
            return Err(failed("shareProcessNamespace with an image is not supported yet".into()));
        }
        let store = self.image_store();
        let image = {
            let reference = reference.to_string();
            let store = self.image_store();
            tokio::task::spawn_blocking(move || resolve(&store, &reference))
                .await
                .map_err(|e| failed(e.to_string()))?
                .map_err(|e| match e {
                ImageError::NotPresent(_) => AgentError::ImageNeverPull(failed(e.to_string()).to_string()),
                e => failed(e.to_string()),
            })?
        };
        let lower = store.lower_dirs(&image).map_err(|e| failed(e.to_string()))?;
        let argv = argv(&image.config, &c.command, &c.args).map_err(failed)?;
        let security = c.security_context.as_ref();
        let run_as = SecurityContext::run_as(security, spec.security_context.as_ref());
        let mut user = user(&ImageFiles { lower: &lower }, &image.config, run_as).map_err(failed)?;
        user.add_groups(&PodSecurityContext::extra_groups(spec.security_context.as_ref()));
        let process = Process {
            argv: argv.clone(),
            env: environment(&image.config, &c.env, &spec.name),
            cwd: image.config.working_dir.clone().filter(|d| !d.is_empty()).unwrap_or_else(|| "/".into()),
            user,
            capabilities: SecurityContext::capabilities(security, &DEFAULT_CAPABILITIES),
            no_new_privileges: security.and_then(|s| s.allow_privilege_escalation) == Some(false),
        };
        let pod_dir = self.pod_dir(&spec.name);
        let filesystem = Filesystem {
            read_only_root: security.and_then(|s| s.read_only_root_filesystem) == Some(true),
            privileged: security.and_then(|s| s.privileged) == Some(true),
            volumes: volumes::binds(&pod_dir, spec, c).map_err(|e| AgentError::Failed(e.to_string()))?,
        };
        let bundle = path(&pod_dir, &c.name);
        let config = config_json(&process, &filesystem, &bundle);
        let ip = lock(&pod.record).ip;
        write(&bundle, &config, &spec.name, &hosts_file(ip, &spec.name))
            .map_err(|e| failed(format!("writing the bundle {}: {e}", bundle.0.display())))?;
        let lower = lower.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(":");
        Ok(ImageLaunch { bundle: bundle.0, lower, argv })
    }
}

/// The image a container names: in the store by manifest digest or by name, or imported from a layout or
/// archive path.
fn resolve(store: &ImageStore, reference: &str) -> Result<StoredImage, ImageError> {
    // ErrImageNeverPull is the kubelet's reason for a missing image it may not pull.
    let missing = || {
        ImageError::NotPresent(format!(
            "{reference} (ErrImageNeverPull: testbed pulls nothing; `testbed image load` puts an image on a running \
             lab's nodes)"
        ))
    };
    if reference.starts_with("sha256:") {
        return store.get(&Digest::parse(reference)?)?.ok_or_else(missing);
    }
    let path = Path::new(reference);
    if !path.is_absolute() {
        return store.get_by_name(reference)?.ok_or_else(missing);
    }
    if path.is_dir() {
        store.import_layout(path, None)
    } else {
        store.import_archive(path, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn image() -> ImageConfig {
        ImageConfig {
            entrypoint: Some(strings(&["/bin/ep"])),
            cmd: Some(strings(&["cmd1"])),
            env: Some(strings(&["PATH=/img/bin", "A=image", "B=image"])),
            working_dir: Some("/w".into()),
            user: Some("1000:50".into()),
        }
    }

    #[test]
    fn command_and_args_override_entrypoint_and_cmd_as_the_kubelet_does() {
        let img = image();
        assert_eq!(argv(&img, &[], &[]).unwrap(), strings(&["/bin/ep", "cmd1"]));
        assert_eq!(argv(&img, &[], &strings(&["a"])).unwrap(), strings(&["/bin/ep", "a"]));
        assert_eq!(argv(&img, &strings(&["/c"]), &[]).unwrap(), strings(&["/c"]), "command drops Cmd");
        assert_eq!(argv(&img, &strings(&["/c"]), &strings(&["a"])).unwrap(), strings(&["/c", "a"]));
        assert!(argv(&ImageConfig::default(), &[], &[]).is_err());
    }

    #[test]
    fn spec_env_wins_over_the_images_and_path_comes_from_the_image() {
        let env = environment(&image(), &BTreeMap::from([("B".into(), "spec".into())]), "pod1");
        assert_eq!(env, strings(&["A=image", "B=spec", "HOSTNAME=pod1", "PATH=/img/bin"]));
        let bare = environment(&ImageConfig::default(), &BTreeMap::new(), "p");
        assert!(bare.contains(&format!("PATH={DEFAULT_PATH}")));
    }

    #[test]
    fn the_spec_ids_go_over_the_images_user_and_groups_come_from_the_image() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/passwd"), "root:x:0:0::/:/bin/sh\nweb:x:1000:1000::/:/bin/sh\n").unwrap();
        std::fs::write(dir.path().join("etc/group"), "web:x:1000:\nstaff:x:50:web\n").unwrap();
        let lower = [dir.path().to_path_buf()];
        let files = ImageFiles { lower: &lower };
        let named = ImageConfig { user: Some("web".into()), ..Default::default() };
        let ids = |image: &ImageConfig, run_as| user(&files, image, run_as).map(|u| (u.uid, u.gid, u.additional_gids));
        assert_eq!(ids(&named, (None, None)), Ok((1000, 1000, vec![1000, 50])), "the image's user by name");
        assert_eq!(ids(&named, (None, Some(7))), Ok((1000, 7, vec![7, 50])), "runAsGroup over the image's group");
        assert_eq!(ids(&named, (Some(0), None)), Ok((0, 0, vec![0])), "runAsUser: its passwd group");
        assert_eq!(
            ids(&image(), (None, None)),
            Ok((1000, 50, vec![50, 50])).map(|(u, g, mut a)| {
                a.dedup();
                (u, g, a)
            })
        );
        let unknown = ImageConfig { user: Some("nobody".into()), ..Default::default() };
        assert_eq!(
            ids(&unknown, (None, None)),
            Err("the image's User: user \"nobody\" is not in the image's /etc/passwd".into())
        );
        assert_eq!(ids(&unknown, (Some(5), None)), Ok((5, 0, vec![0])), "runAsUser needs no name");
    }

    fn process(security: Option<&SecurityContext>) -> Process {
        Process {
            argv: strings(&["x"]),
            env: vec![],
            cwd: "/".into(),
            user: ImageUser { uid: 0, gid: 0, additional_gids: vec![0] },
            capabilities: SecurityContext::capabilities(security, &DEFAULT_CAPABILITIES),
            no_new_privileges: false,
        }
    }

    #[test]
    fn the_runtime_makes_pid_and_mount_namespaces_only_and_hosts_names_the_pod() {
        let b = BundleDir("/b".into());
        let types = |v: &Value| -> Vec<String> {
            v["linux"]["namespaces"].as_array().unwrap().iter().map(|n| n["type"].as_str().unwrap().into()).collect()
        };
        assert_eq!(types(&config_json(&process(None), &Filesystem::default(), &b)), strings(&["pid", "mount"]));
        assert!(hosts_file(Some(Ipv4Addr::new(10, 1, 0, 5)), "p").ends_with("10.1.0.5\tp\n"));
    }

    #[test]
    fn volumes_are_bound_after_the_runtimes_mounts_with_their_mode_and_the_root_may_be_read_only() {
        let fs = Filesystem {
            read_only_root: true,
            privileged: false,
            volumes: vec![
                VolumeBind { source: "/pods/p/volumes/v".into(), destination: "/data".into(), read_only: false },
                VolumeBind { source: "/srv/conf".into(), destination: "/conf".into(), read_only: true },
            ],
        };
        let config = config_json(&process(None), &fs, &BundleDir("/b".into()));
        assert_eq!(config["root"]["readonly"], true);
        let mounts = config["mounts"].as_array().unwrap();
        let n = mounts.len();
        assert_eq!(mounts[n - 2]["destination"], "/data");
        assert_eq!(mounts[n - 2]["source"], "/pods/p/volumes/v");
        assert_eq!(mounts[n - 2]["options"], json!(["rbind", "rprivate", "rw"]));
        assert_eq!(mounts[n - 1]["options"], json!(["rbind", "rprivate", "ro"]));
        let sys = mounts.iter().find(|m| m["destination"] == "/sys").unwrap();
        assert!(sys["options"].as_array().unwrap().contains(&json!("ro")));
        assert!(!config["linux"]["maskedPaths"].as_array().unwrap().is_empty());
    }

    #[test]
    fn user_capabilities_and_no_new_privileges_reach_the_process() {
        let sc = SecurityContext {
            run_as_user: Some(1000),
            capabilities: Some(testbed_api::Capabilities { add: strings(&["net_admin"]), drop: strings(&["NET_RAW"]) }),
            ..Default::default()
        };
        let pod = testbed_api::PodSecurityContext { run_as_user: Some(5), run_as_group: Some(6), ..Default::default() };
        assert_eq!(SecurityContext::run_as(Some(&sc), Some(&pod)), (Some(1000), Some(6)), "own, then the pod's");
        assert_eq!(SecurityContext::run_as(None, None), (None, None), "the image's");
        let mut p = process(Some(&sc));
        p.no_new_privileges = true;
        let config = config_json(&p, &Filesystem::default(), &BundleDir("/b".into()));
        let caps = &config["process"]["capabilities"];
        for set in ["bounding", "effective", "permitted"] {
            let list: Vec<&str> = caps[set].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
            assert!(list.contains(&"CAP_NET_ADMIN") && !list.contains(&"CAP_NET_RAW"), "{set}: {list:?}");
            assert!(list.contains(&"CAP_CHOWN"), "{set}: the rest of the default set stays");
        }
        assert_eq!(config["process"]["noNewPrivileges"], true);
        assert_eq!(config["root"]["readonly"], false);
    }

    #[test]
    fn capabilities_follow_containerds_order_all_first_then_names_and_a_drop_wins() {
        let caps = |add: &[&str], drop: &[&str]| {
            let sc = SecurityContext {
                capabilities: Some(testbed_api::Capabilities { add: strings(add), drop: strings(drop) }),
                ..Default::default()
            };
            SecurityContext::capabilities(Some(&sc), &DEFAULT_CAPABILITIES)
        };
        assert_eq!(caps(&["NET_RAW"], &["ALL"]), strings(&["CAP_NET_RAW"]), "drop ALL, then add one");
        assert_eq!(caps(&["ALL"], &["CHOWN"]).len(), testbed_api::ALL_CAPABILITIES.len() - 1);
        assert!(!caps(&["SYS_TIME"], &["SYS_TIME"]).contains(&"CAP_SYS_TIME".to_string()), "drop wins");
        let privileged = SecurityContext { privileged: Some(true), ..Default::default() };
        assert_eq!(SecurityContext::capabilities(Some(&privileged), &DEFAULT_CAPABILITIES).len(), 41);
        let fs = Filesystem { privileged: true, ..Default::default() };
        let config = config_json(&process(Some(&privileged)), &fs, &BundleDir("/b".into()));
        assert_eq!(config["linux"]["maskedPaths"], json!([]));
        let sys = config["mounts"].as_array().unwrap().iter().find(|m| m["destination"] == "/sys").unwrap().clone();
        assert!(sys["options"].as_array().unwrap().contains(&json!("rw")), "{sys}");
    }
}
