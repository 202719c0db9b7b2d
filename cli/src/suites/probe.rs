//! Shell snippets the checks run inside pods and on nodes, and the parsers of their output. Only tools the
//! guest image guarantees: busybox (httpd, wget, nc), iputils ping, iperf3, iproute2, coreutils, bash.

use std::net::Ipv4Addr;

use sha2::{Digest, Sha256};

/// Port of the busybox httpd in every test pod's `web` container.
pub const HTTP_PORT: u16 = 8080;
/// TCP echo-to-stdout server (busybox nc) port.
pub const TCP_PORT: u16 = 5001;
/// iperf3 server port.
pub const IPERF_PORT: u16 = 5201;
/// Lines of `seq 1 N` served as `/big` (1,288,895 bytes: many MTUs).
pub const BIG_LINES: u32 = 200_000;

/// Command of the `web` container: a document root named after the pod (so an answer tells which pod served
/// it), a CGI that prints the client address the server saw (the no-SNAT check) and a large file, then httpd.
pub fn web_command(pod: &str) -> Vec<String> {
    let script = format!(
        "d=/tmp/tb-www-{pod}; mkdir -p $d/cgi-bin && echo {pod} > $d/index.html && seq 1 {BIG_LINES} > $d/big && \
         printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho $REMOTE_ADDR\\n' > $d/cgi-bin/peer && \
         chmod 755 $d/cgi-bin/peer && exec busybox httpd -f -p {HTTP_PORT} -h $d"
    );
    vec!["sh".into(), "-c".into(), script]
}

pub fn sh(script: impl Into<String>) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

pub fn ping(ip: Ipv4Addr, count: u32) -> String {
    format!("ping -n -c {count} -W 2 {ip}")
}

/// A ping with Don't Fragment set and `payload` bytes of ICMP data (IP packet = payload + 28).
pub fn ping_df(ip: Ipv4Addr, payload: u32) -> String {
    format!("ping -n -M do -s {payload} -c 2 -W 2 {ip}")
}

/// `timeout` rather than wget's own `-T`: Debian 12's busybox-static 1.35 wget segfaults whenever `-T` is given.
pub fn http_get(ip: Ipv4Addr, path: &str) -> String {
    http_get_within(ip, path, 5)
}

pub fn http_get_within(ip: Ipv4Addr, path: &str, secs: u32) -> String {
    format!("timeout {secs} busybox wget -q -O - http://{ip}:{HTTP_PORT}{path}")
}

/// `n` HTTP GETs from a node, the body's last line (or `FAIL`) a line (busybox wget segfaults on the guests
/// outside a pod's exec).
pub fn node_gets(ip: Ipv4Addr, port: u16, path: &str, n: u32) -> String {
    format!(
        "for i in $(seq {n}); do a=$(printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' | timeout 5 busybox nc -w 3 {ip} {port} \
         | tail -n 1); echo ${{a:-FAIL}}; done"
    )
}

/// Retries `cmd` (a server that is still starting) up to `attempts` times, 0.3 s apart.
pub fn retrying(cmd: &str, attempts: u32) -> String {
    format!("i=0; while [ $i -lt {attempts} ]; do {cmd} && exit 0; i=$((i+1)); sleep 0.3; done; exit 1")
}

/// A one-connection TCP server printing what it receives. Its stdin is a FIFO opened read-write, which never
/// reaches EOF: busybox nc closes its sending half on stdin EOF, and the client would then stop sending early.
pub fn tcp_server(port: u16, timeout_s: u32) -> String {
    format!(
        "f=/tmp/tb-fifo-$$; rm -f $f; mkfifo $f || exit 90; timeout {timeout_s} busybox nc -l -p {port} 0<>$f; \
         rc=$?; rm -f $f; exit $rc"
    )
}

pub fn tcp_client(ip: Ipv4Addr, port: u16, message: &str) -> String {
    retrying(&format!("echo {message} | busybox nc {ip} {port}"), 40)
}

pub fn iperf_server(port: u16, timeout_s: u32) -> String {
    format!("timeout {timeout_s} iperf3 -s -1 -p {port} -J")
}

/// A 1-second UDP iperf3 run at 1 Mbit/s with datagrams of `len` bytes.
pub fn iperf_udp_client(ip: Ipv4Addr, port: u16, len: u32) -> String {
    iperf_client(ip, port, &format!("-u -b 1M -t 1 -l {len}"))
}

/// An iperf3 client with `args`; prints the JSON of the first attempt that connects (the server may still be
/// starting). iperf3 3.12 with `-J` can exit 0 on "connection refused", so success is judged by the absence
/// of an `"error"` key.
pub fn iperf_client(ip: Ipv4Addr, port: u16, args: &str) -> String {
    format!(
        "i=0; while [ $i -lt 60 ]; do out=$(iperf3 -c {ip} -p {port} {args} -J 2>&1); \
         case \"$out\" in *'\"error\"'*) ;; *) echo \"$out\"; exit 0;; esac; i=$((i+1)); sleep 0.5; done; \
         echo \"$out\"; exit 1"
    )
}

/// What one iperf3 client run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct IperfRun {
    /// Received throughput (UDP: sent rate minus losses).
    pub mbps: f64,
    pub cpu_sender: Option<f64>,
    pub cpu_receiver: Option<f64>,
    pub retransmits: Option<u64>,
    pub lost_percent: Option<f64>,
}

pub fn parse_iperf_client(json: &str, udp: bool) -> Result<IperfRun, String> {
    let v: serde_json::Value = serde_json::from_str(json.trim()).map_err(|e| format!("iperf3 JSON: {e}"))?;
    if let Some(err) = v.get("error").and_then(|e| e.as_str()) {
        return Err(format!("iperf3: {err}"));
    }
    let end = &v["end"];
    let cpu = &end["cpu_utilization_percent"];
    let (mbps, retransmits, lost_percent) = if udp {
        let bps = end["sum"]["bits_per_second"].as_f64().ok_or("iperf3 JSON: no end.sum.bits_per_second")?;
        let lost = end["sum"]["lost_percent"].as_f64().unwrap_or(0.0);
        (bps * (1.0 - lost / 100.0) / 1e6, None, Some(lost))
    } else {
        let bps = end["sum_received"]["bits_per_second"]
            .as_f64()
            .ok_or("iperf3 JSON: no end.sum_received.bits_per_second")?;
        (bps / 1e6, end["sum_sent"]["retransmits"].as_u64(), None)
    };
    Ok(IperfRun {
        mbps,
        cpu_sender: cpu["host_total"].as_f64(),
        cpu_receiver: cpu["remote_total"].as_f64(),
        retransmits,
        lost_percent,
    })
}

/// What one ping run saw: echoes sent and answered, and the RTT of each answer in arrival order.
#[derive(Debug, Clone, PartialEq)]
pub struct PingRun {
    pub transmitted: u32,
    pub received: u32,
    pub rtts_ms: Vec<f64>,
}

impl PingRun {
    /// Echoes lost, percent of those sent.
    pub fn loss_percent(&self) -> f64 {
        100.0 * f64::from(self.transmitted.saturating_sub(self.received)) / f64::from(self.transmitted.max(1))
    }

    /// Mean RTT without the first answer, which pays for neighbour resolution (and, under TCG, translating
    /// the path's code); all of them when there are fewer than two.
    pub fn mean_after_first_ms(&self) -> Option<f64> {
        let rest = if self.rtts_ms.len() >= 2 { &self.rtts_ms[1..] } else { &self.rtts_ms[..] };
        (!rest.is_empty()).then(|| rest.iter().sum::<f64>() / rest.len() as f64)
    }
}

/// A ping's per-reply lines (`... time=0.512 ms`) and its `N packets transmitted, M received` summary.
pub fn parse_ping(out: &str) -> Option<PingRun> {
    let summary = out.lines().find(|l| l.contains("packets transmitted"))?;
    let count = |word: &str| -> Option<u32> {
        let t: Vec<&str> = summary.split(|c: char| c == ',' || c.is_whitespace()).filter(|t| !t.is_empty()).collect();
        t.iter().position(|x| *x == word).and_then(|i| i.checked_sub(1)).and_then(|i| t[i].parse().ok())
    };
    let rtts_ms =
        out.lines().filter_map(|l| l.split("time=").nth(1)?.split_whitespace().next()?.parse().ok()).collect();
    Some(PingRun { transmitted: count("packets")?, received: count("received")?, rtts_ms })
}

/// Prints the route from here to `dst` and every link, for `route_mtu`.
pub fn route_mtu_script(dst: Ipv4Addr) -> String {
    format!("ip -o route get {dst} && ip -o link show")
}

/// The interface `ip -o route get` chose and its MTU from the `ip -o link show` lines that follow.
pub fn route_mtu(out: &str) -> Option<(String, u32)> {
    let mut lines = out.lines();
    let route: Vec<&str> = lines.next()?.split_whitespace().collect();
    let dev = route.iter().position(|t| *t == "dev").and_then(|i| route.get(i + 1))?.to_string();
    let mtu = lines.find_map(|l| {
        let name = l.split_whitespace().nth(1)?.trim_end_matches(':');
        (name.split('@').next() == Some(dev.as_str())).then(|| link_mtu(l)).flatten()
    })?;
    Some((dev, mtu))
}

/// sha256 (hex) of what `seq 1 n` prints.
pub fn seq_sha256(n: u32) -> String {
    let mut h = Sha256::new();
    for i in 1..=n {
        h.update(format!("{i}\n").as_bytes());
    }
    hex::encode(h.finalize())
}

/// UDP datagrams an iperf3 server JSON says arrived, and the peer address it saw.
#[derive(Debug, Clone, PartialEq)]
pub struct UdpReceived {
    pub packets: u64,
    pub lost: u64,
    pub remote_host: Option<String>,
}

pub fn parse_iperf_udp_server(json: &str) -> Result<UdpReceived, String> {
    let v: serde_json::Value = serde_json::from_str(json.trim()).map_err(|e| format!("iperf3 JSON: {e}"))?;
    if let Some(err) = v.get("error").and_then(|e| e.as_str()) {
        return Err(format!("iperf3: {err}"));
    }
    let sum = &v["end"]["sum"];
    let packets = sum["packets"].as_u64().ok_or("iperf3 JSON: no end.sum.packets")?;
    let lost = sum["lost_packets"].as_u64().unwrap_or(0);
    let remote_host = v["start"]["connected"][0]["remote_host"].as_str().map(str::to_string);
    Ok(UdpReceived { packets, lost, remote_host })
}

/// busybox httpd gives CGI `REMOTE_ADDR` as `[::ffff:10.244.0.2]` on its dual-stack socket.
pub fn parse_remote_addr(s: &str) -> Option<Ipv4Addr> {
    let s = s.trim().trim_start_matches('[').trim_end_matches(']');
    let s = s.strip_prefix("::ffff:").unwrap_or(s);
    s.parse().ok()
}

/// Namespace identities (`net:[4026531992]`) of a process, from `readlink /proc/self/ns/*` in NS_KINDS order.
pub const NS_KINDS: [&str; 5] = ["net", "pid", "uts", "ipc", "mnt"];

pub fn ns_script() -> String {
    // pid_for_children would differ from pid right after unshare; /proc/self/ns/pid is the process's own.
    let links: Vec<String> = NS_KINDS.iter().map(|k| format!("/proc/self/ns/{k}")).collect();
    format!("readlink {}; cat /proc/sys/kernel/hostname", links.join(" "))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NsIds {
    /// In NS_KINDS order.
    pub ids: Vec<String>,
    pub hostname: String,
}

impl NsIds {
    pub fn get(&self, kind: &str) -> &str {
        NS_KINDS.iter().position(|k| *k == kind).and_then(|i| self.ids.get(i)).map_or("", String::as_str)
    }
}

pub fn parse_ns(out: &str) -> Result<NsIds, String> {
    let lines: Vec<&str> = out.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    if lines.len() != NS_KINDS.len() + 1 {
        return Err(format!("expected {} namespace links and a hostname, got: {out:?}", NS_KINDS.len()));
    }
    for (kind, line) in NS_KINDS.iter().zip(&lines) {
        if !line.starts_with(&format!("{kind}:[")) {
            return Err(format!("expected a `{kind}:[inode]` link, got `{line}`"));
        }
    }
    Ok(NsIds {
        ids: lines[..NS_KINDS.len()].iter().map(|s| s.to_string()).collect(),
        hostname: lines[NS_KINDS.len()].to_string(),
    })
}

/// Reads `key value` lines (cpu.stat, memory.events) into the value of `key`.
pub fn flat_keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next() == Some(key)).then(|| it.next().and_then(|v| v.parse().ok())).flatten()
    })
}

/// IPv4 addresses of `ip -4 -o addr show` output, except loopback.
pub fn non_loopback_ipv4(out: &str) -> Vec<(String, String)> {
    out.lines()
        .filter_map(|l| {
            let t: Vec<&str> = l.split_whitespace().collect();
            let dev = t.get(1)?.trim_end_matches(':').to_string();
            let at = t.iter().position(|x| *x == "inet")?;
            let addr = t.get(at + 1)?.to_string();
            (dev != "lo").then_some((dev, addr))
        })
        .collect()
}

/// `mtu N` from `ip -o link show DEV`.
pub fn link_mtu(out: &str) -> Option<u32> {
    let t: Vec<&str> = out.split_whitespace().collect();
    t.iter().position(|x| *x == "mtu").and_then(|i| t.get(i + 1)).and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_hash_matches_coreutils() {
        // `seq 1 3 | sha256sum` and `seq 1 200000 | sha256sum` on Debian 12
        assert_eq!(seq_sha256(3), "14c5e74c4b96ccef41cd94db73a9ec3348038ac094feca4fd897cecffa07cdae");
        assert_eq!(seq_sha256(BIG_LINES), "5af7b95208fdcff454bab3f5eddf567a688a3796c703d4fef91072e38645c062");
    }

    #[test]
    fn parses_iperf_client_and_ping() {
        let tcp = r#"{"end":{"sum_sent":{"retransmits":3},"sum_received":{"bits_per_second":8.5e8},
            "cpu_utilization_percent":{"host_total":40.5,"remote_total":20.25}}}"#;
        let r = parse_iperf_client(tcp, false).expect("tcp");
        assert_eq!((r.mbps, r.retransmits, r.cpu_sender, r.cpu_receiver), (850.0, Some(3), Some(40.5), Some(20.25)));
        let udp = r#"{"end":{"sum":{"bits_per_second":2e8,"lost_percent":25.0}}}"#;
        let r = parse_iperf_client(udp, true).expect("udp");
        assert_eq!((r.mbps, r.lost_percent), (150.0, Some(25.0)));
        assert!(parse_iperf_client(r#"{"error":"unable to connect"}"#, false).is_err());
    }

    #[test]
    fn parses_ping_replies_loss_and_the_route_mtu() {
        let out = "PING 10.0.0.1 (10.0.0.1) 56(84) bytes of data.\n64 bytes from 10.0.0.1: icmp_seq=1 ttl=64 time=3.00 ms\n\
                   64 bytes from 10.0.0.1: icmp_seq=2 ttl=64 time=0.5 ms\n64 bytes from 10.0.0.1: icmp_seq=4 ttl=64 time=0.7 ms\n\
                   --- 10.0.0.1 ping statistics ---\n4 packets transmitted, 3 received, 25% packet loss, time 603ms\n";
        let p = parse_ping(out).expect("ping");
        assert_eq!((p.transmitted, p.received, p.rtts_ms.len()), (4, 3, 3));
        assert_eq!(p.loss_percent(), 25.0);
        // The first reply (neighbour resolution) is left out.
        assert!((p.mean_after_first_ms().expect("mean") - 0.6).abs() < 1e-9);
        let none = parse_ping("3 packets transmitted, 0 received, +3 errors, 100% packet loss").expect("summary");
        assert_eq!((none.received, none.loss_percent(), none.mean_after_first_ms()), (0, 100.0, None));
        assert_eq!(parse_ping("ping: connect: Network is unreachable"), None);
        let r = "10.244.1.2 dev eth0 src 10.244.0.2 uid 0 \\    cache \n1: lo: <LOOPBACK,UP> mtu 65536 qdisc noqueue\n\
                 3: eth0@if7: <BROADCAST,UP> mtu 1400 qdisc noqueue\n";
        assert_eq!(route_mtu(r), Some(("eth0".into(), 1400)));
        let local =
            "local 192.168.50.11 dev lo table local src 192.168.50.11 uid 0\n1: lo: <LOOPBACK> mtu 65536 qdisc\n";
        assert_eq!(route_mtu(local), Some(("lo".into(), 65536)));
        assert_eq!(route_mtu("RTNETLINK answers: Network is unreachable"), None);
    }

    #[test]
    fn parses_remote_addr_forms() {
        assert_eq!(parse_remote_addr("[::ffff:10.244.1.2]\n"), Some(Ipv4Addr::new(10, 244, 1, 2)));
        assert_eq!(parse_remote_addr("10.244.1.2"), Some(Ipv4Addr::new(10, 244, 1, 2)));
        assert_eq!(parse_remote_addr("[::1]"), None);
    }

    #[test]
    fn parses_namespaces() {
        let out = "net:[1]\npid:[2]\nuts:[3]\nipc:[4]\nmnt:[5]\ntb-c-a1\n";
        let ns = parse_ns(out).expect("parse");
        assert_eq!(ns.get("uts"), "uts:[3]");
        assert_eq!(ns.hostname, "tb-c-a1");
        assert!(parse_ns("net:[1]\n").is_err());
    }

    #[test]
    fn parses_iperf_and_keyed_files() {
        let j =
            r#"{"start":{"connected":[{"remote_host":"10.244.0.3"}]},"end":{"sum":{"packets":42,"lost_packets":1}}}"#;
        let r = parse_iperf_udp_server(j).expect("parse");
        assert_eq!((r.packets, r.lost, r.remote_host.as_deref()), (42, 1, Some("10.244.0.3")));
        assert!(parse_iperf_udp_server(r#"{"error":"unable to connect"}"#).is_err());
        assert_eq!(flat_keyed("usage_usec 100\nnr_throttled 7\n", "nr_throttled"), Some(7));
        assert_eq!(flat_keyed("oom 1\noom_kill 2\n", "oom_kill"), Some(2));
        assert_eq!(
            non_loopback_ipv4("1: lo    inet 127.0.0.1/8 scope host lo\n2: eth0    inet 10.244.0.5/24 brd x"),
            vec![("eth0".to_string(), "10.244.0.5/24".to_string())]
        );
        assert_eq!(link_mtu("2: eth0@if5: <BROADCAST,UP> mtu 1450 qdisc noqueue"), Some(1450));
    }
}
