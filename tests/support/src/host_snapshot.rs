//! What a lab could change in the host's own network namespace, captured as text: links, addresses, routes
//! (IPv4 and IPv6, every table), the nftables ruleset, the iptables and ip6tables rules, and the listening
//! sockets. The safety tests take one before a lab, while it runs and after it is gone, and compare.

use std::process::Command;

/// One capture of the host namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSnapshot {
    /// Links, addresses, routes, nftables and iptables, one section per command.
    pub network: String,
    /// Listening TCP and bound UDP sockets: `proto local-address:port`, sorted.
    pub sockets: Vec<String>,
}

fn run(program: &str, args: &[&str]) -> String {
    match Command::new(program).args(args).output() {
        Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
        Err(e) => format!("cannot run {program}: {e}\n"),
    }
}

/// `ip -d link` without the counters and per-link state that change on their own.
fn links() -> String {
    run("ip", &["-d", "-o", "link"])
        .lines()
        .map(|l| l.split(" qlen").next().unwrap_or(l).replace("state DOWN", "").replace("state UP", ""))
        .collect::<Vec<_>>()
        .join("\n")
}

impl HostSnapshot {
    pub fn take() -> Self {
        let mut network = String::new();
        let sections: [(&str, String); 8] = [
            ("links", links()),
            ("addresses", run("ip", &["-o", "addr"])),
            ("routes", run("ip", &["route", "show", "table", "all"])),
            ("routes6", run("ip", &["-6", "route", "show", "table", "all"])),
            ("rules", run("ip", &["rule"])),
            ("nftables", run("nft", &["list", "ruleset"])),
            ("iptables", run("iptables-save", &[])),
            ("ip6tables", run("ip6tables-save", &[])),
        ];
        for (name, text) in sections {
            // iptables-save stamps every dump with its time.
            let text: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
            network.push_str(&format!("== {name}\n{}\n", text.join("\n")));
        }
        let mut sockets: Vec<String> = run("ss", &["-H", "-n", "-l", "-t", "-u"])
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                Some(format!("{} {}", f.first()?, f.get(4)?))
            })
            .collect();
        sockets.sort();
        sockets.dedup();
        HostSnapshot { network, sockets }
    }

    /// What differs from `earlier`: network lines that appeared or vanished, and sockets that appeared except
    /// those on 127.0.0.0/8 (a lab's SSH forwards and UDP links live there by design). Sockets that vanished are
    /// other programs ending, no lab's doing.
    pub fn differences(&self, earlier: &HostSnapshot) -> Vec<String> {
        let mut out = Vec::new();
        let before: Vec<&str> = earlier.network.lines().collect();
        let now: Vec<&str> = self.network.lines().collect();
        out.extend(now.iter().filter(|l| !before.contains(l)).map(|l| format!("+ {l}")));
        out.extend(before.iter().filter(|l| !now.contains(l)).map(|l| format!("- {l}")));
        let on_loopback = |s: &String| s.split_whitespace().nth(1).is_some_and(|a| a.starts_with("127."));
        for s in self.sockets.iter().filter(|s| !earlier.sockets.contains(s) && !on_loopback(s)) {
            out.push(format!("+ socket {s}"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(network: &str, sockets: &[&str]) -> HostSnapshot {
        HostSnapshot { network: network.into(), sockets: sockets.iter().map(|s| s.to_string()).collect() }
    }

    #[test]
    fn loopback_sockets_may_differ_nothing_else() {
        let before = snap("== links\nlo\n", &["tcp 0.0.0.0:22"]);
        assert!(snap("== links\nlo\n", &["tcp 0.0.0.0:22", "udp 127.0.0.1:30000"]).differences(&before).is_empty());
        let d = snap("== links\nlo\nvirbr0\n", &["tcp 0.0.0.0:22", "tcp 0.0.0.0:30000"]).differences(&before);
        assert_eq!(d, vec!["+ virbr0".to_string(), "+ socket tcp 0.0.0.0:30000".to_string()]);
    }
}
