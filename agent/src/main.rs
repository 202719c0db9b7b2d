//! `testbed-agent`: runs in every guest and converges the node's kernel to a NodeSpec.

mod net;

fn main() {
    eprintln!("testbed-agent: not built yet");
    std::process::exit(3);
}
