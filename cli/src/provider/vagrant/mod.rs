//! The Vagrant lab: the repository's top-level Vagrantfile makes one vagrant-libvirt VM per node from testbed's
//! box (`testbed image box`). This folder holds what testbed itself knows about it: `doctor`'s checks.

pub mod doctor;
