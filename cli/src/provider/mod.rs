//! Providers: what makes and runs a lab's machines, each one a folder here with a type that implements the lab
//! layer's [`Provider`] contract. The lab layer (`crate::lab`) owns the lab directory, its state, lock, `up`'s
//! lock/rollback frame, teardown order and status; a provider owns the machines and the host resources they
//! need. QEMU is the one provider today, chosen in [`default_provider`].

pub mod qemu;
pub mod vagrant;

use std::sync::Arc;

use crate::lab::Provider;

/// The provider of every lab: QEMU on this host, the only one so far. Once there is a second one, `up` takes
/// it from the command line and the lab's state records it for `down` and `status`.
pub fn default_provider() -> Arc<dyn Provider> {
    Arc::new(qemu::QemuProvider::new(Arc::new(qemu::hostnet::IpHostNet)))
}
