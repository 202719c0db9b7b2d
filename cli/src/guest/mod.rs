//! Everything about reaching into a guest, whichever provider made it: SSH keys and known_hosts (`keys`), the
//! russh session with exec, upload and port forwarding (`session`), the interactive `testbed ssh`
//! (`interactive`), getting the node agent onto the guest (`agent_deploy`) and talking to it (`agent_client`).

pub mod agent_client;
pub mod agent_deploy;
pub mod interactive;
pub mod keys;
pub mod session;

#[cfg(test)]
mod real_guest_tests;
#[cfg(test)]
pub(crate) mod test_sshd;

pub use agent_client::{AgentClient, AgentError};
pub use session::{shell_quote, Session, SshError};
