//! The Vagrant provider: `testbed up --provider vagrant` makes each node a vagrant-libvirt machine from a copy of
//! the repository's Vagrantfile in the lab directory (`project`), booted from testbed's own box with a seed
//! testbed writes (`prepare`), one `vagrant up NODE` at a time (`node`); `libvirt` finds the machines' QEMU and
//! removes whatever `vagrant destroy` leaves. The guests' networking is the Vagrantfile's: QEMU user networking
//! with SSH on 127.0.0.1 and UDP socket NICs on loopback, nothing on the host's network; a network of more than
//! two nodes goes through the lab's `hub`. `doctor` holds the checks `testbed doctor` and `up` share.

pub mod doctor;
pub mod hub;
mod libvirt;
mod node;
mod prepare;
mod project;

use futures::future::BoxFuture;

use crate::lab::{LabDir, NodeState, PreparedLab, Provider, ProviderError, UpContext, UpError};
use crate::plan::{NodePlan, Plan};

/// What can go wrong around Vagrant and libvirt.
#[derive(Debug, thiserror::Error)]
pub enum VagrantError {
    #[error("the vagrant provider needs {missing}; install and start them: {fix} (`testbed doctor` lists the same)")]
    Missing { missing: String, fix: String },
    #[error(
        "`{command}` failed ({status}); its whole output is in {} (kept only with `up --keep`){}",
        .log.display(),
        tail(.output)
    )]
    Failed { command: String, status: String, log: std::path::PathBuf, output: String },
    #[error("`virsh {args}` failed: {stderr}")]
    Virsh { args: String, stderr: String },
    // The source follows in the error chain (`CliError` prints it).
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("machine {domain} (pid {pid}) still runs after `virsh destroy`")]
    Survivor { domain: String, pid: u32 },
}

fn tail(output: &str) -> String {
    let lines: Vec<&str> = output.lines().filter(|l| !l.contains("Progress:")).collect();
    let start = lines.len().saturating_sub(12);
    lines[start..].iter().map(|l| format!("\n    {l}")).collect()
}

impl VagrantError {
    pub(super) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> VagrantError {
        let what = what.into();
        move |source| VagrantError::Io { what, source }
    }
}

impl From<VagrantError> for UpError {
    fn from(e: VagrantError) -> Self {
        UpError::Provider(ProviderError::new(e))
    }
}

/// vagrant-libvirt machines on this host's system libvirtd.
pub struct VagrantProvider;

impl Provider for VagrantProvider {
    fn prepare<'a>(&'a self, lab: &'a UpContext) -> BoxFuture<'a, Result<PreparedLab, UpError>> {
        Box::pin(prepare::prepare(lab))
    }

    fn is_running(&self, dir: &LabDir, node: &str, state: &NodeState) -> bool {
        state.process().is_some_and(|p| libvirt::runs_machine(p, &libvirt::domain(&dir.name, node)))
    }

    /// The machines hang on nothing of the host's but libvirtd: there is no netns to lose.
    fn host_resources_exist(&self, _plan: &Plan) -> bool {
        true
    }

    fn stop_machines(&self, dir: &LabDir) -> Result<Vec<(String, u32)>, ProviderError> {
        node::destroy(dir, None).map_err(ProviderError::new)
    }

    /// The hub, once the machines that send to it are gone, and the seeds (the lab's only host files outside its
    /// directory). A Vagrant lab has no netns: None.
    fn remove_host_resources(&self, dir: &LabDir) -> Result<Option<String>, ProviderError> {
        hub::stop(dir).map_err(ProviderError::new)?;
        prepare::remove_seeds(&dir.name).map_err(ProviderError::new)?;
        Ok(None)
    }

    fn remove_machine(&self, dir: &LabDir, _plan: &Plan, node: &NodePlan) -> Result<Option<u32>, ProviderError> {
        let stopped = node::destroy(dir, Some(&node.name)).map_err(ProviderError::new)?;
        prepare::remove_seed(&dir.name, &node.name).map_err(ProviderError::new)?;
        Ok(stopped.first().map(|(_, pid)| *pid))
    }
}
