//! `testbed-agent`: runs in every guest and converges the node's kernel to a NodeSpec; runs pods.
//!
//! Subcommands: `serve` (the HTTP API), `apiserver` (the cluster control plane's API server, on a
//! control-plane node: one static binary reaches every guest through the existing fast path),
//! `controller-manager` (the control loops, beside the API server), and hidden ones: `run-container` (container and exec launcher, run
//! by the agent itself) and `bench` (pod creation benchmark).

mod bench;
mod cgroups;
mod image;
mod kubelet;
mod net;
mod pod;
mod policy;
mod proxy;
mod qos;
mod server;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "testbed-agent", version, about = "testbed node agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the agent API on a loopback address.
    Serve(ServeArgs),
    /// Serve the cluster API (Kubernetes wire format) over etcd, on a control-plane node.
    Apiserver(ApiserverArgs),
    /// Run the control loops (ReplicaSet, Deployment, garbage collector) while holding the leader Lease.
    #[command(name = "controller-manager")]
    ControllerManager(ControllerManagerArgs),
    /// Container / exec launcher (started by the agent).
    #[command(hide = true, name = "run-container")]
    RunContainer(pod::launcher::LauncherArgs),
    /// Import an OCI image (layout directory or oci-archive) into the node's image store, every blob checked
    /// against its digest; prints the stored image (config, layers, overlayfs lower directories) as JSON.
    #[command(name = "import-image")]
    ImportImage(ImportImageArgs),
    /// Pod creation benchmark against the reference CNI plugins (runs in a private network namespace).
    #[command(hide = true)]
    Bench(bench::BenchArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Loopback address to listen on (the CLI reaches it through SSH forwarding).
    #[arg(long, default_value_t = SocketAddr::from(([127, 0, 0, 1], testbed_api::AGENT_PORT)))]
    listen: SocketAddr,
    /// The applied NodeSpec and the pod records, kept on disk: after a guest reboot the node's network comes
    /// back and its pods are recreated, as a kubelet does.
    #[arg(long, default_value = testbed_api::AGENT_STATE_DIR)]
    state_dir: PathBuf,
    /// IP leases (default: <state-dir>/ipam). The guest images put them on tmpfs (/run): a pod creation then
    /// pays no ext4 journal commit (0.35 ms of 1.5 ms here), and the leases of pods a reboot ended go with
    /// them, while the pods recreated from their records get fresh ones.
    #[arg(long)]
    lease_dir: Option<PathBuf>,
    /// Name of the agent's cgroup subtree (tests use a private one).
    #[arg(long, default_value = "testbed", hide = true)]
    cgroup_name: String,
    /// Seconds between SIGTERM and SIGKILL when a pod is deleted without `?grace_period_secs` (Kubernetes'
    /// default terminationGracePeriodSeconds).
    #[arg(long, default_value_t = 30)]
    kill_grace_secs: u64,
}

#[derive(clap::Args)]
struct ImportImageArgs {
    /// An OCI image layout directory or an `oci-archive` tarball.
    path: PathBuf,
    /// Which image of the layout: its `org.opencontainers.image.ref.name` or its manifest digest (needed
    /// when the layout holds more than one).
    #[arg(long = "ref")]
    reference: Option<String>,
    /// A name to index the image under (`busybox`, `registry.local/app:v2`), besides those its layout gives;
    /// repeatable. A pod then names it so (`imagePullPolicy: Never`).
    #[arg(long = "name")]
    names: Vec<String>,
    #[arg(long, default_value = testbed_api::AGENT_IMAGE_STORE)]
    store: PathBuf,
}

#[derive(clap::Args)]
struct ApiserverArgs {
    /// Address to listen on: the node's underlay IP in a lab. Unspecified addresses (0.0.0.0) are refused so
    /// that nothing listens on the management NIC.
    #[arg(long)]
    listen: SocketAddr,
    /// The client URLs of etcd's members, comma-separated: every one of the lab's, so that the API server
    /// keeps serving when its own node's member stops.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    etcd: Vec<String>,
    /// The CA of etcd's certificate (PEM), for https:// members.
    #[arg(long, requires_all = ["etcd_certfile", "etcd_keyfile"])]
    etcd_cafile: Option<PathBuf>,
    /// The client certificate etcd asks for (PEM, signed by the lab CA).
    #[arg(long, requires = "etcd_cafile")]
    etcd_certfile: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, requires = "etcd_cafile")]
    etcd_keyfile: Option<PathBuf>,
    /// File holding the lab's bearer token (generated at `up`); every request must carry it.
    #[arg(long)]
    token_file: PathBuf,
    /// The server's certificate (PEM, signed by the lab CA): kubectl sends its token only over TLS.
    #[arg(long)]
    tls_cert_file: PathBuf,
    /// The server's private key (PEM).
    #[arg(long)]
    tls_key_file: PathBuf,
    /// Where Services' cluster IPs come from (kube-apiserver's flag).
    #[arg(long, default_value = testbed_control_plane::apiserver::DEFAULT_SERVICE_CIDR)]
    service_cluster_ip_range: String,
}

#[derive(clap::Args)]
struct ControllerManagerArgs {
    /// An API server URL (`https://10.0.0.11:6443`); repeat for every control-plane member (tried in order).
    #[arg(long = "server", required = true)]
    servers: Vec<String>,
    /// The lab CA (PEM): the only issuer trusted for the servers' certificates.
    #[arg(long)]
    ca_file: PathBuf,
    /// File holding the lab's bearer token.
    #[arg(long)]
    token_file: PathBuf,
    /// This member's name in the leader Lease and in Events (its node name).
    #[arg(long)]
    identity: String,
    /// Seconds without a Lease renewal before a node is marked `Unknown` (Kubernetes' 40 s).
    #[arg(long, value_name = "SECS", default_value_t = 40)]
    node_monitor_grace_period: u64,
    /// Seconds a node may stay not Ready before its pods are deleted and replaced elsewhere (Kubernetes' 300 s).
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pod_eviction_timeout: u64,
}

/// Exit codes shared with the CLI: 2 bad input, 3 infrastructure failure.
const EXIT_BAD_INPUT: i32 = 2;
const EXIT_INFRA: i32 = 3;

fn import_image(args: &ImportImageArgs) -> i32 {
    let store = image::ImageStore::new(&args.store);
    let imported = if args.path.is_dir() {
        store.import_layout(&args.path, args.reference.as_deref())
    } else {
        store.import_archive(&args.path, args.reference.as_deref())
    };
    let tagged = imported.and_then(|image| {
        let digest = image::Digest::parse(&image.digest)?;
        for name in &args.names {
            store.tag(name, &digest)?;
        }
        let names: Vec<String> =
            store.names()?.into_iter().filter(|n| n.digest == image.digest).map(|n| n.name).collect();
        Ok((store.lower_dirs(&image)?, names, image))
    });
    match tagged {
        Ok((lower_dirs, names, image)) => {
            println!("{}", serde_json::json!({ "image": image, "names": names, "lower_dirs": lower_dirs }));
            0
        }
        Err(e) => {
            eprintln!("testbed-agent import-image {}: {e}", args.path.display());
            match e {
                image::ImageError::Io { .. } => EXIT_INFRA,
                _ => EXIT_BAD_INPUT,
            }
        }
    }
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::RunContainer(args) => match pod::launcher::run(&args) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("testbed-agent run-container {}: {e}", args.pod);
                127
            }
        },
        Command::Serve(args) => {
            init_tracing();
            if !args.listen.ip().is_loopback() {
                eprintln!("testbed-agent: refusing to listen on {} (loopback addresses only)", args.listen);
                std::process::exit(EXIT_BAD_INPUT);
            }
            run_async(serve(args))
        }
        Command::Apiserver(args) => {
            init_tracing();
            if args.listen.ip().is_unspecified() {
                eprintln!("testbed-agent apiserver: refusing to listen on {} (give the node's address)", args.listen);
                std::process::exit(EXIT_BAD_INPUT);
            }
            run_async(apiserver(args))
        }
        Command::ControllerManager(args) => {
            init_tracing();
            run_async(controller_manager(args))
        }
        Command::ImportImage(args) => import_image(&args),
        Command::Bench(args) => {
            init_tracing();
            // Before any thread exists: the benchmark's whole network lives in a namespace of its own.
            if let Err(e) = bench::isolate() {
                eprintln!("testbed-agent bench: {e:#}");
                std::process::exit(EXIT_INFRA);
            }
            run_async(bench::run(args))
        }
    };
    std::process::exit(code);
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_ansi(ansi).with_env_filter(filter).init();
}

/// A current-thread runtime: the agent is I/O bound and must stay small (RSS) next to 100 pods.
fn run_async(fut: impl std::future::Future<Output = anyhow::Result<()>>) -> i32 {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().max_blocking_threads(8).build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("testbed-agent: tokio runtime: {e}");
            return EXIT_INFRA;
        }
    };
    match rt.block_on(fut) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("testbed-agent: {e:#}");
            EXIT_INFRA
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let cgroups = cgroups::detect(&args.cgroup_name).context("cgroups")?;
    let cfg = pod::Config {
        lease_dir: args.lease_dir.clone().unwrap_or_else(|| args.state_dir.join("ipam")),
        state_dir: args.state_dir.clone(),
        exe: PathBuf::from("/proc/self/exe"),
        kill_grace: Duration::from_secs(args.kill_grace_secs),
    };
    let agent = pod::Agent::new(cfg, cgroups).await.context("starting the runtime")?;
    agent.restore().await;
    tokio::spawn(Arc::clone(&agent).reconcile_loop());
    // After the restore: the loop then finds the pods it created running again and leaves them be.
    let kernel = proxy::NftNetlink::new().context("nf_tables netlink socket")?;
    let proxy = Arc::new(proxy::Proxy::new(Box::new(kernel)));
    tokio::spawn(Arc::clone(&proxy).reconcile_loop());
    let policy = Arc::new(policy::Enforcer::new(Box::new(policy::NftCli)));
    tokio::spawn(Arc::clone(&policy).reconcile_loop());
    let kubelet = kubelet::Kubelet::new(Arc::clone(&agent), Arc::clone(&proxy), Arc::clone(&policy), &args.state_dir)
        .context("control-plane state")?;
    kubelet.resume();
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("listen on {}", args.listen))?;
    tracing::info!(listen = %args.listen, state_dir = %args.state_dir.display(), "testbed-agent serving");
    axum::serve(listener, server::router(agent, kubelet, proxy, policy))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("http server")?;
    Ok(())
}

async fn controller_manager(args: ControllerManagerArgs) -> anyhow::Result<()> {
    let token = std::fs::read_to_string(&args.token_file)
        .with_context(|| format!("reading the token file {}", args.token_file.display()))?;
    let ca = std::fs::read_to_string(&args.ca_file)
        .with_context(|| format!("reading the CA file {}", args.ca_file.display()))?;
    let client = testbed_control_plane::client::Client::new(&args.servers, &ca, token.trim())?;
    let mut ctx = testbed_control_plane::controllers::Context::new(Arc::new(client), &args.identity);
    ctx.settings.node_lifecycle.grace_period = std::time::Duration::from_secs(args.node_monitor_grace_period);
    ctx.settings.node_lifecycle.eviction_timeout = std::time::Duration::from_secs(args.pod_eviction_timeout);
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let timing = testbed_control_plane::controllers::leader::Timing::default();
    testbed_control_plane::controllers::manager::run(ctx, timing, shutdown).await;
    Ok(())
}

async fn apiserver(args: ApiserverArgs) -> anyhow::Result<()> {
    let token = std::fs::read_to_string(&args.token_file)
        .with_context(|| format!("reading the token file {}", args.token_file.display()))?;
    let token = token.trim().to_string();
    anyhow::ensure!(!token.is_empty(), "the token file {} is empty", args.token_file.display());
    let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let (cert_pem, key_pem) = (read(&args.tls_cert_file)?, read(&args.tls_key_file)?);
    let etcd_tls = match (&args.etcd_cafile, &args.etcd_certfile, &args.etcd_keyfile) {
        (Some(ca), Some(cert), Some(key)) => {
            Some(testbed_control_plane::EtcdTls { ca_pem: read(ca)?, cert_pem: read(cert)?, key_pem: read(key)? })
        }
        _ => None,
    };
    let service_cidr = testbed_control_plane::apiserver::parse_service_cidr(&args.service_cluster_ip_range)?;
    let config = testbed_control_plane::Config {
        listen: args.listen,
        etcd: args.etcd,
        etcd_tls,
        token,
        cert_pem,
        key_pem,
        service_cidr,
    };
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    testbed_control_plane::serve(config, shutdown).await?;
    Ok(())
}
