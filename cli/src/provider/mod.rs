//! Providers: what makes and runs a lab's machines, each one a folder here with a type that implements the lab
//! layer's [`Provider`] contract. The lab layer (`crate::lab`) owns the lab directory, its state, lock, `up`'s
//! lock/rollback frame, teardown order and status; a provider owns the machines and the host resources they
//! need. `up --provider` chooses one for a new lab ([`of_kind`]); the lab's state records it, and every later
//! command takes it from there ([`of_lab`]).

pub mod qemu;
pub mod vagrant;

use std::sync::Arc;

use crate::lab::{LabDir, Provider, ProviderKind};

/// The provider of that kind.
pub fn of_kind(kind: ProviderKind) -> Arc<dyn Provider> {
    match kind {
        ProviderKind::Qemu => Arc::new(qemu::QemuProvider::new(Arc::new(qemu::hostnet::IpHostNet))),
        ProviderKind::Vagrant => Arc::new(vagrant::VagrantProvider),
    }
}

/// What the lab's state records (QEMU when there is no state: a lab is given a state before its provider
/// makes anything, so a lab without one has no machines of another provider).
pub fn recorded_kind(dir: &LabDir) -> ProviderKind {
    dir.read_state().ok().flatten().map(|s| s.provider).unwrap_or_default()
}

/// The provider that made the lab in `dir`.
pub fn of_lab(dir: &LabDir) -> Arc<dyn Provider> {
    of_kind(recorded_kind(dir))
}
