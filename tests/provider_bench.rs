//! `testbed up` of the same topology and image with each provider, side by side in one run, for
//! docs/benchmarks.md (issue 17's target: the QEMU provider at least 5x faster than the Vagrant one). Ignored: run
//! on purpose, as root, with QEMU, vagrant-libvirt and a running libvirtd, nothing else busy:
//!
//!   cargo test --workspace --test provider_bench -- --ignored --nocapture --test-threads=1
//!
//! A warm-up `up`/`down` with each provider first (the image, the box and its volume in libvirt's pool are then
//! cached, as on any `up` after the first), then `REPEATS` rounds of one `up` per provider, alternating, each
//! followed by its `down`. Equal work: the default topology (2 nodes, 3 vCPUs, 1 GiB), the same image and agent,
//! `up` timed to its end (every node's agent ready, the API server answering, the Nodes Ready). What differs is
//! what each provider does to make a machine: QEMU started directly, or `vagrant up NODE` (Ruby, vagrant-libvirt,
//! libvirtd), one node at a time.

use std::path::Path;
use std::time::Instant;

use testbed_test_support::host::KvmForLibvirt;
use testbed_test_support::lab::{ensure_agent, run_testbed, show, topology_copy, LabGuard};

const REPEATS: usize = 3;

/// One `up` and its `down`: the seconds `up` took and the per-node stage seconds it reports.
fn up_down(bin: &Path, state: &Path, topo: &Path, lab: &str, provider: &str) -> (f64, String) {
    let _guard = LabGuard { binary: bin.to_path_buf(), state_dir: state.to_path_buf(), lab: lab.into() };
    let t = Instant::now();
    let topo = topo.to_str().expect("utf-8 path");
    let up = run_testbed(bin, state, &["-q", "-o", "json", "up", "--provider", provider, "--timeout", "900", topo]);
    let wall = t.elapsed().as_secs_f64();
    assert!(up.status.success(), "{}", show(&format!("up --provider {provider}"), &up));
    let outcome: serde_json::Value = serde_json::from_slice(&up.stdout).expect("up JSON");
    let stages: Vec<String> = outcome["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| format!("{} {}", n["name"].as_str().unwrap_or("?"), n["stage_seconds"]))
        .collect();
    let down = run_testbed(bin, state, &["-q", "down", "--lab", lab]);
    assert!(down.status.success(), "{}", show("down", &down));
    (wall, stages.join("; "))
}

#[test]
#[ignore = "benchmark: run on purpose (see the module doc)"]
fn up_with_qemu_against_up_with_vagrant() {
    ensure_agent();
    // As a host with udev has it: otherwise libvirtd spends about 30 s probing QEMU per machine.
    let _kvm = KvmForLibvirt::grant();
    let tmp = tempfile::tempdir().expect("tempdir");
    let state = tmp.path().join("state");
    let bin = Path::new(env!("CARGO_BIN_EXE_testbed"));
    let topo = topology_copy(tmp.path(), "default.yaml", "bench-providers");
    for provider in ["qemu", "vagrant"] {
        let (s, _) = up_down(bin, &state, &topo, "bench-providers", provider);
        eprintln!("warm-up {provider}: {s:.1} s");
    }
    let mut times: Vec<(&str, Vec<f64>)> = vec![("qemu", Vec::new()), ("vagrant", Vec::new())];
    for round in 1..=REPEATS {
        for (provider, samples) in times.iter_mut() {
            let (s, stages) = up_down(bin, &state, &topo, "bench-providers", provider);
            eprintln!("round {round} {provider}: up {s:.1} s ({stages})");
            samples.push(s);
        }
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (q, v) = (median(&times[0].1), median(&times[1].1));
    eprintln!(
        "median of {REPEATS}: qemu {q:.1} s {:?}, vagrant {v:.1} s {:?}: the QEMU provider is {:.1}x faster",
        times[0].1,
        times[1].1,
        v / q
    );
}
