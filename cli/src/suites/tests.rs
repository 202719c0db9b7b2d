//! Suite-level unit tests against the fake cluster: statuses, exit codes, cleanup, reports.

use std::path::Path;

use testbed_api::results::{CheckStatus, Measurement, PerfFlag, RunOutcome, SuiteResults};
use testbed_api::Backend;

use super::declared::DeclaredTest;
use super::fake::{plan, FakeCluster, Faults};
use super::fake_pods::PodFaults;
use super::runner::Selection;
use super::{outcome_to_result, parse_backends, report, run_conformance};
use crate::ui::{OutputFormat, Ui};

fn ui() -> Ui {
    Ui::new(OutputFormat::Json, true)
}

async fn run(c: &FakeCluster, backends: &[Backend], filter: Option<&str>) -> SuiteResults {
    run_conformance(c, &ui(), backends, filter.map(str::to_string), &[]).await
}

fn failures(r: &SuiteResults) -> Vec<String> {
    r.checks
        .iter()
        .filter(|c| !matches!(c.status, CheckStatus::Pass | CheckStatus::Skip))
        .map(|c| format!("{} {}: {:?} {:?}", c.status, c.name, c.message, c.details))
        .collect()
}

fn exit_code(r: &SuiteResults) -> u8 {
    outcome_to_result(r, Path::new("out")).err().map_or(0, |e| e.exit_code())
}

#[tokio::test]
async fn healthy_lab_passes_every_check_and_cleans_up() {
    let c = FakeCluster::new(plan(2, Backend::Vxlan), Faults::default());
    let r = run(&c, &[Backend::Vxlan], None).await;
    assert!(failures(&r).is_empty(), "{:#?}", failures(&r));
    assert_eq!(r.outcome(), RunOutcome::Passed);
    assert_eq!(exit_code(&r), 0);
    assert!(r.summary.total >= 35, "only {} checks", r.summary.total);
    assert_eq!(r.summary.skipped, 0, "two nodes on vxlan: nothing to skip");
    assert!(r.checks.iter().any(|c| c.name == "[pod-network] vxlan pod->pod cross-node: tcp"));
    assert!(r.checks.iter().any(|c| c.name == "[cgroups] memory limit enforced: OOM kill"));
    assert!(c.leftover_test_pods().is_empty(), "left behind: {:?}", c.leftover_test_pods());
    assert!(c.created().iter().any(|p| p == "tb-c-b1"));
    assert_eq!(r.metadata.backends, vec![Backend::Vxlan]);
    assert_eq!(r.metadata.kernel.as_deref(), Some("6.1.0-fake"));
    assert_eq!(r.metadata.kernel_cmdline.as_deref(), Some("console=ttyS0 root=/dev/vda rw quiet"));
    assert_eq!(r.metadata.accelerator.as_deref(), Some("tcg"));
}

#[tokio::test]
async fn all_backends_switch_in_turn_and_restore_the_topologys() {
    let c = FakeCluster::new(plan(2, Backend::HostGw), Faults::default());
    let r = run(&c, &Backend::ALL, None).await;
    assert!(failures(&r).is_empty(), "{:#?}", failures(&r));
    for b in Backend::ALL {
        assert!(r.checks.iter().any(|c| c.backend == Some(b) && c.group == "pod-network"), "no checks for {b}");
    }
    // Backend-independent checks run once.
    assert_eq!(r.checks.iter().filter(|c| c.name == "[sandbox] a pod has exactly one IP").count(), 1);
    let none_cross =
        r.checks.iter().find(|c| c.name == "[pod-network] none pod->pod cross-node: icmp").expect("present");
    assert_eq!(none_cross.status, CheckStatus::Skip);
    assert!(r.checks.iter().any(|c| c.name == "[setup] host-gw restore the topology's backend"));
    assert_eq!(c.backend_of("node1"), Some(Backend::HostGw));
    // The MTU checks follow the backend's overhead.
    assert!(r.checks.iter().any(|c| c.name == "[mtu] vxlan cross-node DF ping at the overlay MTU (1450) passes"));
    assert!(r.checks.iter().any(|c| c.name == "[mtu] udp cross-node DF ping at the overlay MTU (1472) passes"));
}

#[tokio::test]
async fn single_node_skips_cross_node_checks() {
    let c = FakeCluster::new(plan(1, Backend::Vxlan), Faults::default());
    let r = run(&c, &[Backend::Vxlan], None).await;
    assert!(failures(&r).is_empty(), "{:#?}", failures(&r));
    let skipped: Vec<&str> =
        r.checks.iter().filter(|c| c.status == CheckStatus::Skip).map(|c| c.name.as_str()).collect();
    assert!(
        skipped.iter().all(|n| n.contains("cross-node") || n.contains("re-applies") || n.contains("drift")),
        "{skipped:?}"
    );
    assert!(skipped.len() >= 8, "{skipped:?}");
}

#[tokio::test]
async fn snat_fails_the_no_snat_check_with_exit_1() {
    let c = FakeCluster::new(plan(2, Backend::Vxlan), Faults { snat: true, ..Faults::default() });
    let r = run(&c, &[Backend::Vxlan], None).await;
    let bad = failures(&r);
    // HTTP (the CGI's REMOTE_ADDR) and UDP (the iperf3 server's peer, in the pod-network and the MTU checks)
    // all see the masquerading address.
    assert_eq!(bad.len(), 5, "{bad:#?}");
    assert!(bad.iter().all(|b| b.contains("(SNAT)")), "{bad:#?}");
    assert_eq!(bad.iter().filter(|b| b.contains("no SNAT")).count(), 2, "{bad:#?}");
    assert_eq!(bad.iter().filter(|b| b.contains(": udp")).count(), 2, "{bad:#?}");
    let check = r.checks.iter().find(|c| c.name == "[pod-network] vxlan no SNAT pod->pod cross-node").expect("ran");
    assert!(check.message.as_deref().is_some_and(|m| m.contains("(SNAT)")), "{check:?}");
    assert_eq!(r.outcome(), RunOutcome::Failed);
    assert_eq!(exit_code(&r), 1);
    assert!(c.leftover_test_pods().is_empty(), "pods must be removed after failures too");
}

#[tokio::test]
async fn stale_overlay_device_and_non_idempotent_reapply_fail_the_overlay_checks() {
    let stale = FakeCluster::new(plan(2, Backend::HostGw), Faults { stale_vxlan_link: true, ..Faults::default() });
    let r = run(&stale, &[Backend::HostGw], Some("[overlay]")).await;
    let bad = failures(&r);
    assert_eq!(bad.len(), 2, "{bad:#?}");
    assert!(
        bad.iter().all(|b| b.contains("control state") && b.contains("stale link of the vxlan backend")),
        "{bad:#?}"
    );
    let churn = FakeCluster::new(plan(2, Backend::Vxlan), Faults { reapply_not_idempotent: true, ..Faults::default() });
    let r = run(&churn, &[Backend::Vxlan], Some("[overlay]")).await;
    let bad = failures(&r);
    assert_eq!(bad.len(), 1, "{bad:#?}");
    assert!(bad[0].contains("re-applying the unchanged spec on node2 changed"), "{bad:#?}");
}

/// An agent whose overhead formula is wrong gives pods an MTU above what the encapsulation leaves: every MTU
/// check must see it, because their expectation comes from header sizes, not from the agent's formula.
#[tokio::test]
async fn a_wrong_overlay_mtu_fails_the_mtu_checks() {
    let c = FakeCluster::new(plan(2, Backend::Vxlan), Faults { mtu_too_big: true, ..Faults::default() });
    let r = run(&c, &[Backend::Vxlan], Some("[mtu]")).await;
    let bad = failures(&r);
    assert!(bad.iter().any(|b| b.contains("at the overlay MTU (1450)") && b.contains("1460")), "{bad:#?}");
    assert!(bad.iter().any(|b| b.contains("at the pod's eth0") && b.contains("got through")), "{bad:#?}");
    assert!(bad.iter().any(|b| b.contains("overlay route") && b.contains("got through")), "{bad:#?}");
    let healthy = FakeCluster::new(plan(2, Backend::Vxlan), Faults::default());
    assert!(failures(&run(&healthy, &[Backend::Vxlan], Some("[mtu]")).await).is_empty());
}

#[tokio::test]
async fn missing_overlay_route_fails_the_state_check() {
    let c = FakeCluster::new(plan(2, Backend::Vxlan), Faults { missing_route: true, ..Faults::default() });
    let r = run(&c, &[Backend::Vxlan], Some("[overlay]")).await;
    let check =
        r.checks.iter().find(|c| c.name == "[overlay] vxlan control state on node1 matches the plan").expect("ran");
    assert_eq!(check.status, CheckStatus::Fail);
    assert!(check.message.as_deref().is_some_and(|m| m.contains("missing route to 10.244.1.0/24")), "{check:?}");
    let other =
        r.checks.iter().find(|c| c.name == "[overlay] vxlan control state on node2 matches the plan").expect("ran");
    assert_eq!(other.status, CheckStatus::Pass);
}

/// The status of the check named `name`, and its message and details.
fn check(r: &SuiteResults, name: &str) -> (CheckStatus, String) {
    let c = r.checks.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("{name} did not run"));
    (c.status, format!("{}\n{}", c.message.as_deref().unwrap_or(""), c.details.as_deref().unwrap_or("")))
}

const SHARED_NETNS: &str = "[sandbox] containers of a pod share one network namespace";
const HOSTNAME: &str = "[sandbox] hostname is the pod name";

#[tokio::test]
async fn a_container_outside_the_pods_namespaces_fails_the_sandbox_checks() {
    let c = FakeCluster::new(plan(2, Backend::Vxlan), Faults { rogue_sidecar: true, ..Faults::default() });
    let r = run(&c, &[Backend::Vxlan], Some("[sandbox]")).await;
    let (status, msg) = check(&r, SHARED_NETNS);
    assert_eq!(status, CheckStatus::Fail, "{msg}");
    assert!(msg.contains("side not in the pod's net namespace"), "{msg}");
    let (status, msg) = check(&r, HOSTNAME);
    assert_eq!(status, CheckStatus::Fail, "{msg}");
    assert!(msg.contains("side has `rogue`"), "{msg}");
    assert_eq!(failures(&r).len(), 2, "{:#?}", failures(&r));
}

#[tokio::test]
async fn an_exec_that_reads_the_infra_instead_of_the_container_fails_the_sandbox_checks() {
    // The agent before issue 12 with a container that left the pod's namespaces: every exec into it read the
    // infra's, so both checks passed. The node's view of the container's process tells them apart.
    let faults = Faults { rogue_sidecar: true, exec_joins_infra: true, ..Faults::default() };
    let c = FakeCluster::new(plan(2, Backend::Vxlan), faults);
    let r = run(&c, &[Backend::Vxlan], Some("[sandbox]")).await;
    for name in [SHARED_NETNS, HOSTNAME] {
        let (status, msg) = check(&r, name);
        assert_eq!(status, CheckStatus::Fail, "{name}: {msg}");
        assert!(msg.contains("an exec into tb-c-a1/side does not run in the container's namespaces"), "{msg}");
    }
    // With every container where it belongs, that agent's exec gave the right answers.
    let c = FakeCluster::new(plan(2, Backend::Vxlan), Faults { exec_joins_infra: true, ..Faults::default() });
    let r = run(&c, &[Backend::Vxlan], Some("[sandbox]")).await;
    assert!(failures(&r).is_empty(), "{:#?}", failures(&r));
}

#[tokio::test]
async fn a_teardown_that_leaves_a_veth_fails_test_pods_removed() {
    let c = FakeCluster::new(plan(2, Backend::Vxlan), Faults { leaky_teardown: true, ..Faults::default() });
    let r = run(&c, &[Backend::Vxlan], Some("[pod-network] vxlan pod->pod same-node: icmp")).await;
    let (status, msg) = check(&r, "[setup] vxlan test pods removed");
    assert_eq!(status, CheckStatus::Fail, "{msg}");
    assert!(msg.contains("answered success but left behind"), "{msg}");
    for pod in ["tb-c-a1", "tb-c-a2", "tb-c-b1"] {
        assert!(msg.contains(&format!("{pod} veth veth")), "{pod}: {msg}");
    }
    assert_eq!(r.outcome(), RunOutcome::Failed);
}

#[tokio::test]
async fn dead_agent_is_an_infrastructure_error_with_exit_3() {
    let c = FakeCluster::new(plan(2, Backend::Vxlan), Faults { agent_down: true, ..Faults::default() });
    let r = run(&c, &[Backend::Vxlan], None).await;
    assert_eq!(r.outcome(), RunOutcome::InfraError);
    assert_eq!(exit_code(&r), 3);
    let setup = &r.checks[0];
    assert_eq!(setup.status, CheckStatus::Error);
    assert!(setup.message.as_deref().is_some_and(|m| m.contains("connection refused")), "{setup:?}");
    // Nothing else can run once the backend cannot even be applied.
    assert_eq!(r.checks.len(), 1);
}

#[tokio::test]
async fn filter_selects_checks_but_setup_always_runs() {
    let c = FakeCluster::new(plan(2, Backend::Vxlan), Faults::default());
    let r = run(&c, &[Backend::Vxlan], Some("cross-node: ")).await;
    let names: Vec<&str> = r.checks.iter().filter(|c| c.group != "setup").map(|c| c.name.as_str()).collect();
    assert_eq!(names.len(), 4, "{names:?}");
    assert!(names.iter().all(|n| n.contains("cross-node: ")));
    assert_eq!(r.checks.iter().filter(|c| c.group == "setup").count(), 3);
    let none = run(&c, &[Backend::Vxlan], Some("no such check")).await;
    assert!(super::selection_matched_nothing(&Some("no such check".to_string()).into(), &none.checks));
    assert!(!super::selection_matched_nothing(&Some("cross-node: ".to_string()).into(), &r.checks));
}

/// The declared tests of a topology matching the fake cluster's plan (pod `web` on node1), through the real
/// loader: YAML, validation, plan.
fn declared(tests_yaml: &str) -> Vec<DeclaredTest> {
    let src = format!(
        "name: t\nnodes: {{node1: {{}}, node2: {{}}}}\nnetworks: {{underlay: {{cidr: 192.168.50.0/24}}}}\n\
         pods: [{{name: web, node: node1, containers: [{{name: web, command: [sh]}}]}}]\ntests:\n{tests_yaml}"
    );
    let path = Path::new("t.yaml");
    let topology = crate::topology::check_source(path, src.as_bytes()).expect("valid");
    crate::plan::build(&topology).tests
}

#[tokio::test]
async fn declared_tests_levels_expectations_and_stop_on_error() {
    let c = FakeCluster::new(plan(2, Backend::None), Faults::default());
    let yaml = r#"
- {name: node2 reaches web, from: 'node:node2', to: 'pod:web', kind: http, port: 8080}
- {name: web isolated from node2 pods, from: 'pod:web', to: 'ip:10.244.1.9', kind: ping, expect: fail}
- {name: web reaches node2 port 22, from: 'pod:web', to: 'node:node2', kind: tcp, port: 22, level: warning}
- {name: web reaches a far address, from: 'pod:web', to: 'ip:10.99.0.1', kind: ping, retry: {attempts: 2, wait: 10ms}, stop_on_error: true}
- {name: never runs, from: 'pod:web', to: 'pod:web', kind: ping}
"#;
    let only_vxlan = "- {name: cross, from: 'pod:web', to: 'node:node2', kind: ping, backends: [vxlan]}";
    let t = declared(only_vxlan);
    let r = run_conformance(&c, &ui(), &[Backend::None], Some("[declared]".into()), &t).await;
    let cross = r.checks.iter().find(|c| c.name == "[declared] none cross").expect("recorded");
    assert_eq!(cross.status, CheckStatus::Skip);
    assert_eq!(cross.message.as_deref(), Some("only for backends vxlan"));
    let tests = declared(yaml);
    let r = run_conformance(&c, &ui(), &[Backend::None], Some("[declared]".into()), &tests).await;
    let status = |name: &str| {
        r.checks.iter().find(|c| c.name == format!("[declared] none {name}")).map(|c| c.status).expect(name)
    };
    assert_eq!(status("node2 reaches web"), CheckStatus::Pass);
    assert_eq!(status("web isolated from node2 pods"), CheckStatus::Pass);
    assert_eq!(status("web reaches node2 port 22"), CheckStatus::Warn);
    assert_eq!(status("web reaches a far address"), CheckStatus::Fail);
    assert_eq!(status("never runs"), CheckStatus::Skip);
    assert_eq!(r.outcome(), RunOutcome::Failed);
    let details = r.checks.iter().find(|c| c.name.ends_with("far address")).and_then(|c| c.details.clone());
    assert!(details.is_some_and(|d| d.contains("attempt 2")));
}

/// `expect: fail` passes on "not reached" only: a probe whose tool is missing (exit 127) is an error, both
/// ways round, never a pass.
#[tokio::test]
async fn declared_expect_fail_does_not_pass_when_the_probe_is_broken() {
    let yaml = "- {name: blocked, from: 'pod:web', to: 'ip:10.99.0.1', kind: ping, expect: fail}\n\
                - {name: open, from: 'pod:web', to: 'node:node1', kind: ping}";
    let tests = declared(yaml);
    let status = |r: &SuiteResults, name: &str| {
        r.checks.iter().find(|c| c.name == format!("[declared] none {name}")).map(|c| c.status).expect(name)
    };
    let healthy = FakeCluster::new(plan(2, Backend::None), Faults::default());
    let r = run_conformance(&healthy, &ui(), &[Backend::None], Some("[declared]".into()), &tests).await;
    assert_eq!(status(&r, "blocked"), CheckStatus::Pass);
    assert_eq!(status(&r, "open"), CheckStatus::Pass);
    let broken = FakeCluster::new(plan(2, Backend::None), Faults { ping_missing: true, ..Faults::default() });
    let r = run_conformance(&broken, &ui(), &[Backend::None], Some("[declared]".into()), &tests).await;
    assert_eq!(status(&r, "blocked"), CheckStatus::Error);
    assert_eq!(status(&r, "open"), CheckStatus::Error);
    let details = r.checks.iter().find(|c| c.name.ends_with("blocked")).and_then(|c| c.message.clone());
    assert!(details.is_some_and(|d| d.contains("exit 127")), "{:?}", r.checks);
}

#[test]
fn backend_argument() {
    assert_eq!(parse_backends(None), Ok(None));
    assert_eq!(parse_backends(Some("all")), Ok(Some(Backend::ALL.to_vec())));
    assert_eq!(parse_backends(Some("host-gw")), Ok(Some(vec![Backend::HostGw])));
    assert!(parse_backends(Some("geneve")).is_err());
}

/// A small XML well-formedness check: balanced tags, quoted attributes, only the five predefined entities,
/// no raw `<`/`&` in text, no control characters.
fn well_formed(xml: &str) -> Result<(), String> {
    fn text_ok(t: &str) -> Result<(), String> {
        if t.contains('<') {
            return Err(format!("raw < in `{t}`"));
        }
        if let Some(c) = t.chars().find(|c| (*c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r')) {
            return Err(format!("control character {:?}", c));
        }
        let mut rest = t;
        while let Some(i) = rest.find('&') {
            rest = &rest[i..];
            if !["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"].iter().any(|e| rest.starts_with(e)) {
                return Err(format!("bad entity at `{}`", &rest[..rest.len().min(10)]));
            }
            rest = &rest[1..];
        }
        Ok(())
    }
    let mut stack: Vec<String> = Vec::new();
    let mut rest = xml.strip_prefix("<?xml version=\"1.0\" encoding=\"UTF-8\"?>").ok_or("no XML declaration")?;
    let mut roots = 0;
    while let Some(i) = rest.find('<') {
        text_ok(&rest[..i])?;
        if stack.is_empty() && !rest[..i].trim().is_empty() {
            return Err("text outside the root".into());
        }
        rest = &rest[i + 1..];
        let end = rest.find('>').ok_or("unclosed tag")?;
        let tag = &rest[..end];
        rest = &rest[end + 1..];
        if let Some(name) = tag.strip_prefix('/') {
            let open = stack.pop().ok_or(format!("</{name}> without an open tag"))?;
            if open != name.trim() {
                return Err(format!("</{name}> closes <{open}>"));
            }
            continue;
        }
        let self_closing = tag.ends_with('/');
        let body = tag.trim_end_matches('/');
        let name_end = body.find(char::is_whitespace).unwrap_or(body.len());
        let name = &body[..name_end];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(format!("bad tag name `{name}`"));
        }
        let mut attrs = body[name_end..].trim();
        while !attrs.is_empty() {
            let eq = attrs.find('=').ok_or(format!("attribute without value in <{name}>"))?;
            let value = attrs[eq + 1..].strip_prefix('"').ok_or(format!("unquoted attribute in <{name}>"))?;
            let close = value.find('"').ok_or("unterminated attribute")?;
            text_ok(&value[..close])?;
            attrs = value[close + 1..].trim_start();
        }
        if stack.is_empty() {
            roots += 1;
        }
        if !self_closing {
            stack.push(name.to_string());
        }
    }
    text_ok(rest)?;
    if !rest.trim().is_empty() || !stack.is_empty() || roots != 1 {
        return Err(format!("unbalanced: open {stack:?}, roots {roots}"));
    }
    Ok(())
}

#[test]
fn the_xml_checker_rejects_broken_xml() {
    let d = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>";
    assert!(well_formed(&format!("{d}<a><b x=\"1\"/>t &amp; u</a>")).is_ok());
    assert!(well_formed(&format!("{d}<a><b></a>")).is_err());
    assert!(well_formed(&format!("{d}<a x=1></a>")).is_err());
    assert!(well_formed(&format!("{d}<a>&nbsp;</a>")).is_err());
    assert!(well_formed(&format!("{d}<a>\u{1}</a>")).is_err());
    assert!(well_formed(&format!("{d}<a></a><a></a>")).is_err());
}

/// Results with every status and hostile characters in names and messages.
async fn tricky_results() -> SuiteResults {
    let c = FakeCluster::new(plan(2, Backend::Vxlan), Faults { snat: true, ..Faults::default() });
    let mut r = run(&c, &[Backend::Vxlan], None).await;
    let first = &mut r.checks[1];
    first.name = "[x] <b>&\"quoted\" 'name' | pipe".into();
    first.status = CheckStatus::Warn;
    first.message = Some("warn <i>\u{7} & | more".into());
    let second = &mut r.checks[2];
    second.status = CheckStatus::Error;
    second.message = Some("ssh died ]]> <!-- -->".into());
    r.summary = testbed_api::results::Summary::of(&r.checks);
    r
}

#[tokio::test]
async fn junit_is_well_formed_and_lists_every_check() {
    let r = tricky_results().await;
    let x = report::junit(&r);
    well_formed(&x).map_err(|e| format!("{e}\n{x}")).expect("well-formed junit");
    for c in &r.checks {
        assert!(x.contains(&format!("name=\"{}\"", report::xml_escape(&c.name))), "{} missing", c.name);
    }
    assert_eq!(x.matches("<testcase ").count(), r.checks.len());
    assert_eq!(x.matches("<failure ").count(), r.summary.failed);
    assert_eq!(x.matches("<error ").count(), r.summary.errors);
    assert_eq!(x.matches("<skipped ").count(), r.summary.skipped);
    assert!(x.contains(&format!("failures=\"{}\"", r.summary.failed)));
}

#[tokio::test]
async fn markdown_and_html_contain_every_check_problems_first() {
    let r = tricky_results().await;
    let md = report::markdown(&r).expect("markdown");
    let html = report::html(&r).expect("html");
    for c in &r.checks {
        assert!(md.contains(&c.name.replace('|', "\\|")) || md.contains(&c.name), "md lacks {}", c.name);
        let escaped = c
            .name
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
            .replace('\'', "&#x27;");
        assert!(html.contains(&escaped), "html lacks {escaped}");
    }
    assert!(md.starts_with("# testbed conformance: INFRASTRUCTURE ERROR"), "{}", &md[..80]);
    let problems_at = md.find("## Failures, errors and warnings").expect("problems section");
    assert!(problems_at < md.find("## All checks").expect("all checks"));
    assert!(!html.contains("<b>&"), "html must escape check names");
    for external in ["<link", "<script", "src=", "href=", "@import", "url("] {
        assert!(!html.contains(external), "report.html must be self-contained, found `{external}`");
    }
    assert!(html.contains("<svg") && html.contains("<rect class=\"pass\""));
}

#[tokio::test]
async fn results_json_round_trips_and_report_rerenders() {
    let r = tricky_results().await;
    let dir = tempfile::tempdir().expect("tempdir");
    report::write_all(dir.path(), &r).expect("write");
    for f in ["results.json", "junit.xml", "report.md", "report.html"] {
        assert!(dir.path().join(f).is_file(), "{f}");
    }
    let back = report::load(dir.path()).expect("load");
    assert_eq!(back, r);
    std::fs::remove_file(dir.path().join("report.html")).expect("rm");
    report::write_renders(dir.path(), &back).expect("re-render");
    assert!(dir.path().join("report.html").is_file());
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("results.json")).expect("read")).expect("json");
    assert_eq!(doc["schema_version"], 1);
    assert!(doc["checks"]
        .as_array()
        .is_some_and(|c| c.iter().all(|c| c["status"].is_string() && c["name"].is_string())));

    // A results.json written before host_cpu, nodes and iperf3_version existed still loads and renders.
    let mut older = doc.clone();
    let meta = older["metadata"].as_object_mut().expect("metadata object");
    for field in ["host_cpu", "nodes", "iperf3_version"] {
        meta.remove(field);
    }
    std::fs::write(dir.path().join("results.json"), older.to_string()).expect("write");
    let old = report::load(dir.path()).expect("load an older results.json");
    report::write_renders(dir.path(), &old).expect("re-render an older results.json");

    let mut newer = doc.clone();
    newer["schema_version"] = 99.into();
    std::fs::write(dir.path().join("results.json"), newer.to_string()).expect("write");
    assert!(matches!(report::load(dir.path()), Err(report::ReportError::Schema { found: 99, .. })));
    std::fs::write(dir.path().join("results.json"), "{not json").expect("write");
    assert!(matches!(report::load(dir.path()), Err(report::ReportError::Parse { .. })));
}

#[tokio::test]
async fn debug_bundle_has_every_nodes_state_and_reports_dead_nodes() {
    let c = FakeCluster::new(plan(2, Backend::Vxlan), Faults::default());
    let _ = run(&c, &[Backend::Vxlan], Some("nothing")).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let problems = super::debug::collect(&c, dir.path()).await;
    assert!(problems.is_empty(), "{problems:?}");
    for node in ["node1", "node2"] {
        for f in ["node-status.json", "ip-link.txt", "ip-route.txt", "ip-neigh.txt", "bridge-fdb.txt", "agent-log.txt"]
        {
            assert!(dir.path().join(node).join(f).is_file(), "{node}/{f}");
        }
    }
    let st: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("node1/node-status.json")).expect("read")).expect("json");
    assert_eq!(st["spec"]["backend"], "vxlan");

    let dead = FakeCluster::new(plan(1, Backend::Vxlan), Faults { agent_down: true, ..Faults::default() });
    let dir = tempfile::tempdir().expect("tempdir");
    let problems = super::debug::collect(&dead, dir.path()).await;
    assert!(!problems.is_empty());
    let errors = std::fs::read_to_string(dir.path().join("node1/errors.txt")).expect("errors.txt");
    assert!(errors.contains("connection refused"), "{errors}");
}

async fn perf(c: &FakeCluster, backends: &[Backend], repeats: u32) -> SuiteResults {
    let opts = super::perf::PerfOptions::new(repeats, 1, 1, 4);
    super::run_perf(c, &ui(), backends, Selection::default(), &opts).await
}

fn figure<'a>(r: &'a SuiteResults, path: &str, kind: &str, b: Backend) -> &'a Measurement {
    r.measurements
        .iter()
        .find(|m| m.path == path && m.kind == kind && m.backend == Some(b))
        .unwrap_or_else(|| panic!("{path} {kind} {b:?}"))
}

#[tokio::test]
async fn perf_measures_every_path_with_ratios_to_its_own_baseline() {
    let c = FakeCluster::new(plan(2, Backend::Vxlan), Faults::default());
    let r = perf(&c, &[Backend::Vxlan, Backend::None], 3).await;
    assert!(failures(&r).is_empty(), "{:#?}", failures(&r));
    assert_eq!(r.suite, "perf");
    let base = figure(&r, "underlay node->node", "tcp-1", Backend::Vxlan);
    assert_eq!((base.stats.n, base.stats.median, base.unit.as_str()), (3, 800.0, "Mbit/s"));
    assert_eq!((base.ratio_to_baseline, base.baseline.as_deref()), (None, None));
    let cross = figure(&r, "pod->pod cross-node", "tcp-4", Backend::Vxlan);
    assert_eq!(cross.ratio_to_baseline, Some(300.0 / 800.0));
    assert_eq!(cross.baseline.as_deref(), Some("underlay node->node"));
    assert_eq!(cross.cpu_sender_percent, Some(50.0));
    // Same-node pods divide by the node talking to itself (the fake answers 800 there too, 600 pod->pod).
    let same = figure(&r, "pod->pod same-node", "tcp-1", Backend::Vxlan);
    assert_eq!((same.baseline.as_deref(), same.ratio_to_baseline), (Some("underlay node->self"), Some(0.75)));
    // MTUs as the interfaces report them: the underlay NIC, lo, the pod's eth0.
    assert_eq!(base.mtu, Some(1500));
    assert_eq!(figure(&r, "underlay node->self", "tcp-1", Backend::Vxlan).mtu, Some(65536));
    assert_eq!(cross.mtu, Some(1450));
    assert_eq!(figure(&r, "pod->pod same-node", "tcp-1", Backend::None).mtu, Some(1500));
    // Ping: the first echo (3 ms, neighbour resolution) is left out.
    let lat = figure(&r, "pod->pod same-node", "latency", Backend::None);
    assert_eq!((lat.stats.median, lat.conditions[0].loss_percent), (0.5, Some(0.0)));
    let udp = figure(&r, "pod->pod cross-node", "udp", Backend::Vxlan);
    assert_eq!(udp.udp_offered_mbps, Some(300.0));
    // The fake delivers 300 Mbit/s cross-node at any offer, without loss: the search steps up from the
    // previous round's result; an offer the sender (here, the fake) cannot reach bounds it from above; every
    // probe is in the details.
    let max = figure(&r, "pod->pod cross-node", "udp-max", Backend::Vxlan);
    assert_eq!((max.stats.median, max.unit.as_str()), (300.0, "Mbit/s"));
    let details = max.details.as_deref().unwrap_or_default();
    assert_eq!(details, ["300>0.0% 360>0.0% 329>0.0%: 300.0 Mbit/s at 300 (resolved)"; 3].join("; "));
    // A quiet host and steady figures: nothing flagged, every sample's conditions recorded.
    assert!(r.measurements.iter().all(|m| m.flags.is_empty()), "{:#?}", r.measurements);
    assert!(r.measurements.iter().all(|m| m.conditions.len() == 3 && m.conditions.iter().all(|c| !c.disturbed)));
    assert_eq!(cross.conditions[0].host_other_cpus, Some(0.0));
    assert_eq!(cross.conditions[0].guest_steal_percent, Some(0.0));
    assert_eq!(r.metadata.iperf3_version.as_deref(), Some("iperf 3.12 (cJSON 1.7.15)"));
    assert_eq!(r.metadata.perf_settings.as_ref().map(|s| (s.repeats, s.omit_s)), Some((3, 1)));
    assert_eq!(r.metadata.nodes.len(), 2);
    // The baselines are measured with every backend, next to the figures they divide; none has no
    // cross-node figures, so no cross-node baseline either.
    for (b, n) in [(Backend::Vxlan, 20), (Backend::None, 10)] {
        assert_eq!(r.measurements.iter().filter(|m| m.backend == Some(b)).count(), n, "{b}");
    }
    assert!(r.measurements.iter().all(|m| !(m.backend == Some(Backend::None) && m.path.contains("node->node"))));
    // The fake has no service proxy: the Service paths are skipped, saying so (a lab measures them,
    // tests/conformance_e2e.rs).
    for path in ["pod->service ClusterIP cross-node", "node->service NodePort cross-node"] {
        let (status, message) = check(&r, &format!("[perf] vxlan {path}: tcp-1"));
        assert_eq!(status, CheckStatus::Skip, "{message}");
        assert!(message.contains("no service proxy"), "{message}");
    }
    assert!(c.leftover_test_pods().is_empty());
    // Runs from a node (the underlay baselines) are bounded on the node, as runs in a pod are by its agent.
    let bounds = c.node_exec_bounds();
    assert!(!bounds.is_empty() && bounds.iter().all(|b| *b > 0), "{bounds:?}");
    let md = report::markdown(&r).expect("md");
    let html = report::html(&r).expect("html");
    assert!(md.contains("## Performance") && md.contains("pod->pod cross-node"), "{md}");
    assert!(md.contains("| MTU |") && md.contains("iperf 3.12"), "{md}");
    assert!(md.contains("x of underlay node->self"), "{md}");
    assert!(html.contains("<h2>Performance</h2>") && html.contains("class=\"bar\""));
    well_formed(&report::junit(&r)).expect("junit");
}

#[tokio::test]
async fn perf_flags_ping_loss_and_the_real_interface_mtu() {
    let faults = Faults { ping_loss: true, pod_mtu: Some(1400), ..Faults::default() };
    let c = FakeCluster::new(plan(2, Backend::Vxlan), faults);
    let r = perf(&c, &[Backend::Vxlan], 3).await;
    let lat = figure(&r, "pod->pod cross-node", "latency", Backend::Vxlan);
    // The baseline's pings lose echoes too, so its ratio is flagged with it.
    assert_eq!(lat.flags, vec![PerfFlag::Loss, PerfFlag::BaselineFlagged]);
    // 6 echoes a sample (1 s of 5 a second, plus the discarded first), the 4th lost.
    assert!(lat.conditions.iter().all(|c| c.loss_percent == Some(100.0 / 6.0)), "{:?}", lat.conditions);
    // The survivors' RTT is still the figure, but the check says it is not to be trusted as is.
    let check = r.checks.iter().find(|c| c.name == "[perf] vxlan pod->pod cross-node: latency").expect("ran");
    assert_eq!(check.status, CheckStatus::Warn);
    assert!(check.message.as_deref().is_some_and(|m| m.contains("loss")), "{check:?}");
    // Warnings do not fail the run.
    assert_eq!(r.outcome(), RunOutcome::Passed);
    // The plan says 1450 for vxlan; the interface says 1400, and the figure reports what it measured through.
    assert_eq!(figure(&r, "pod->pod cross-node", "tcp-1", Backend::Vxlan).mtu, Some(1400));

    // No echo answered at all: the latency figure fails instead of averaging nothing.
    let c = FakeCluster::new(plan(2, Backend::Vxlan), Faults { ping_missing: true, ..Faults::default() });
    let r = perf(&c, &[Backend::Vxlan], 1).await;
    let check = r.checks.iter().find(|c| c.name == "[perf] vxlan pod->pod same-node: latency").expect("ran");
    assert_eq!(check.status, CheckStatus::Fail, "{check:?}");
    assert!(r.measurements.iter().all(|m| m.kind != "latency"));
}

#[tokio::test]
async fn perf_flags_a_disturbed_host_and_a_wide_interval() {
    let c = FakeCluster::new(plan(2, Backend::Vxlan), Faults { busy_host: true, ..Faults::default() });
    let r = perf(&c, &[Backend::Vxlan], 3).await;
    for m in &r.measurements {
        assert!(m.flags.contains(&PerfFlag::DisturbedHost), "{m:?}");
        assert!(m.conditions.iter().all(|c| c.disturbed && c.host_other_cpus == Some(0.9)), "{m:?}");
    }
    // A flagged baseline flags the ratios divided by it.
    let cross = figure(&r, "pod->pod cross-node", "tcp-1", Backend::Vxlan);
    assert!(cross.flags.contains(&PerfFlag::BaselineFlagged), "{cross:?}");
    let md = report::markdown(&r).expect("md");
    assert!(md.contains("disturbed_host"), "{md}");
    let json = serde_json::to_value(&r).expect("json");
    assert_eq!(json["measurements"][0]["flags"][0], "disturbed_host");
    assert_eq!(json["measurements"][0]["conditions"][0]["disturbed"], true);

    let c = FakeCluster::new(plan(2, Backend::Vxlan), Faults { noisy_throughput: true, ..Faults::default() });
    // Without the UDP rate searches: their probe count varies, and the fake's swing is timed to the fixed runs.
    let opts = super::perf::PerfOptions { udp_probes: 0, ..super::perf::PerfOptions::new(3, 1, 1, 4) };
    let r = super::run_perf(&c, &ui(), &[Backend::Vxlan], Selection::default(), &opts).await;
    assert!(r.measurements.iter().all(|m| m.kind != "udp-max"));
    let tcp = figure(&r, "pod->pod cross-node", "tcp-1", Backend::Vxlan);
    assert_eq!(tcp.flags, vec![PerfFlag::WideInterval, PerfFlag::BaselineFlagged], "{tcp:?}");
    assert!(tcp.stats.interval_reach().is_some_and(|x| x > 0.1));
    // Latency stayed steady: not flagged.
    assert!(figure(&r, "pod->pod cross-node", "latency", Backend::Vxlan).flags.is_empty());
    // One sample has no interval at all: nothing to compare with.
    let c = FakeCluster::new(plan(2, Backend::Vxlan), Faults::default());
    let r = perf(&c, &[Backend::Vxlan], 1).await;
    assert!(r.measurements.iter().all(|m| m.flags.contains(&PerfFlag::WideInterval)));
}

const API_POD: &str = "[control-plane] a pod created through the API on node2 runs there, is set Ready again after \
                       another writer marked it not Ready, and leaves when deleted";
const NODE_RESTORED: &str =
    "[control-plane] node2's Ready condition, set Unknown by another writer, is set True again by its agent";
const NODES_READY: &str = "[control-plane] every node is registered and Ready, with a Lease renewed within 40 s";

#[tokio::test]
async fn the_control_plane_checks_pass_on_a_healthy_api_and_fail_when_agents_stop_following_it() {
    let healthy = FakeCluster::new(plan(2, Backend::Vxlan), Faults::default());
    let r = run(&healthy, &[Backend::Vxlan], Some("[control-plane]")).await;
    assert!(failures(&r).is_empty(), "{:#?}", failures(&r));
    assert_eq!(r.checks.iter().filter(|c| c.group == "control-plane").count(), 6, "{:#?}", r.checks);

    let kubelet = super::fake_api::KubeletFaults { ignores_pods: true, ..Default::default() };
    let ignoring = FakeCluster::new(plan(2, Backend::Vxlan), Faults { kubelet, ..Faults::default() });
    let r = run(&ignoring, &[Backend::Vxlan], Some(API_POD)).await;
    let (status, msg) = check(&r, API_POD);
    assert_eq!(status, CheckStatus::Fail, "{msg}");
    assert!(msg.contains("is not Running with an IP in the API"), "{msg}");

    let kubelet = super::fake_api::KubeletFaults { stale_leases: true, ..Default::default() };
    let stale = FakeCluster::new(plan(2, Backend::Vxlan), Faults { kubelet, ..Faults::default() });
    let r = run(&stale, &[Backend::Vxlan], Some(NODES_READY)).await;
    let (status, msg) = check(&r, NODES_READY);
    assert_eq!(status, CheckStatus::Fail, "{msg}");
    // Renewed 120 s before the fake registered it, and the check runs a moment later (more on a busy host).
    let age = msg.split("node1: its Lease was last renewed ").nth(1).and_then(|rest| rest.split(' ').next());
    assert!(age.and_then(|a| a.parse::<u64>().ok()).is_some_and(|a| (120..180).contains(&a)), "{msg}");

    let kubelet = super::fake_api::KubeletFaults { keeps_overwritten_status: true, ..Default::default() };
    let keeping = FakeCluster::new(plan(2, Backend::Vxlan), Faults { kubelet, ..Faults::default() });
    let r = run(&keeping, &[Backend::Vxlan], Some("[control-plane]")).await;
    for (name, word) in [(NODE_RESTORED, "is not True 3 s later"), (API_POD, "is still not Ready 3 s later")] {
        let (status, msg) = check(&r, name);
        assert_eq!(status, CheckStatus::Fail, "{name}: {msg}");
        assert!(msg.contains(word), "{name}: {msg}");
    }
}

const ROLLING: &str =
    "[controller] RollingUpdateDeployment stays within maxSurge and maxUnavailable and ends on the new template";

#[tokio::test]
async fn the_controller_checks_pass_with_the_control_loops_and_fail_without_them() {
    let healthy = FakeCluster::new(plan(2, Backend::Vxlan), Faults::default());
    let r = run(&healthy, &[Backend::Vxlan], Some("[controller]")).await;
    assert!(failures(&r).is_empty(), "{:#?}", failures(&r));
    assert_eq!(r.checks.iter().filter(|c| c.group == "controller").count(), 8, "{:#?}", r.checks);

    let kubelet = super::fake_api::KubeletFaults { no_controllers: true, ..Default::default() };
    let down = FakeCluster::new(plan(2, Backend::Vxlan), Faults { kubelet, ..Faults::default() });
    let r = run(&down, &[Backend::Vxlan], Some(ROLLING)).await;
    let (status, msg) = check(&r, ROLLING);
    assert_eq!(status, CheckStatus::Fail, "{msg}");
    assert!(msg.contains("rolled out to 4 available replicas: not within"), "{msg}");
}

/// The `[container]` and `[probe]` groups' checks, each with the fault that must fail it and a word of the
/// message that says why.
fn image_group_faults() -> Vec<(&'static str, PodFaults, &'static str)> {
    let f = PodFaults::default;
    vec![
        (
            "[container] a container sees its image's files and not the node's",
            PodFaults { node_root: true, ..f() },
            "not the image's",
        ),
        (
            "[container] an image name the node does not have keeps the pod Pending, its container waiting (ErrImageNeverPull)",
            PodFaults { unknown_name_runs: true, ..f() },
            "at create: the pod is Running, not Pending",
        ),
        (
            "[container] a container's writes stay in its upper layer: not on the node, gone when the pod is recreated",
            PodFaults { upper_kept: true, ..f() },
            "after the pod was recreated",
        ),
        (
            "[container] a container's writes stay in its upper layer: not on the node, gone when the pod is recreated",
            PodFaults { node_root: true, ..f() },
            "in the node's /tmp/tb-c-upper",
        ),
        (
            "[container] two containers of a pod share an emptyDir and nothing else of each other's root",
            PodFaults { volume_per_container: true, ..f() },
            "does not see rw's write to the emptyDir",
        ),
        (
            "[container] two containers of a pod share an emptyDir and nothing else of each other's root",
            PodFaults { shared_root: true, ..f() },
            "their roots are shared",
        ),
        (
            "[container] readOnlyRootFilesystem refuses writes; an emptyDir mounted in it stays writable",
            PodFaults { root_writable: true, ..f() },
            "read-only root took a write",
        ),
        (
            "[container] readOnlyRootFilesystem refuses writes; an emptyDir mounted in it stays writable",
            PodFaults { volumes_follow_root: true, ..f() },
            "emptyDir in ro's read-only root is not writable",
        ),
        (
            "[container] runAsUser and runAsGroup are the ids of the container's process",
            PodFaults { user_only_in_exec: true, ..f() },
            "ro runs as uid [0, 0, 0, 0] gid [0, 0, 0, 0] (on the node)",
        ),
        (
            "[container] runAsUser and runAsGroup are the ids of the container's process",
            PodFaults { exec_as_root: true, ..f() },
            "an exec into ro has capabilities its process lacks",
        ),
        (
            "[container] a dropped capability is gone: NET_RAW not effective, no raw socket",
            PodFaults { caps_kept: true, ..f() },
            "NET_RAW is in the process's sets",
        ),
        (
            "[container] the pod's hostname, hosts and resolv.conf files are the ones the kubelet writes",
            PodFaults { node_etc: true, ..f() },
            "not the kubelet's managed file",
        ),
        (
            "[probe] liveness: a wedged container is killed and restarted, its restart count grows",
            PodFaults { liveness_ignored: true, ..f() },
            "the wedged container restarted: not within",
        ),
        (
            "[probe] a restarted container's log starts over; the previous instance's stays readable (logs --previous)",
            PodFaults { log_appended: true, ..f() },
            "the previous instance's log: ",
        ),
        (
            "[probe] liveness: the second restart waits out the kubelet's back-off as CrashLoopBackOff",
            PodFaults { no_back_off: true, ..f() },
            "restarted without showing CrashLoopBackOff",
        ),
        (
            "[probe] readiness flips the pod's Ready condition both ways",
            PodFaults { readiness_stuck: true, ..f() },
            "the pod Ready: not within",
        ),
        (
            "[probe] a startup probe holds liveness off until it succeeds",
            PodFaults { startup_ignored: true, ..f() },
            "before its startup probe could pass",
        ),
        (
            "[probe] readiness over httpGet: a 200 makes the pod Ready, a 404 from the same server not Ready",
            PodFaults { http_status_ignored: true, ..f() },
            "Ready while /ready answers 404",
        ),
        (
            "[probe] liveness over tcpSocket: a closed port gets the container restarted",
            PodFaults { tcp_refusal_ignored: true, ..f() },
            "the container restarted after its port closed: not within",
        ),
    ]
}

#[tokio::test]
async fn the_container_and_probe_checks_pass_on_a_healthy_node_and_each_fails_on_its_fault() {
    let healthy = FakeCluster::new(plan(2, Backend::Vxlan), Faults::default());
    let r = run(&healthy, &[Backend::Vxlan], Some("[container]")).await;
    assert!(failures(&r).is_empty(), "{:#?}", failures(&r));
    assert_eq!(r.checks.iter().filter(|c| c.group == "container" && c.status == CheckStatus::Pass).count(), 8);
    let r = run(&healthy, &[Backend::Vxlan], Some("[probe]")).await;
    assert!(failures(&r).is_empty(), "{:#?}", failures(&r));
    assert_eq!(r.checks.iter().filter(|c| c.group == "probe" && c.status == CheckStatus::Pass).count(), 7);
    assert!(healthy.leftover_test_pods().is_empty(), "left behind: {:?}", healthy.leftover_test_pods());

    for (name, pods, why) in image_group_faults() {
        let c = FakeCluster::new(plan(1, Backend::Vxlan), Faults { pods, ..Faults::default() });
        let group = if name.starts_with("[probe]") { "[probe]" } else { "[container]" };
        let r = run(&c, &[Backend::Vxlan], Some(group)).await;
        let (status, msg) = check(&r, name);
        assert_eq!(status, CheckStatus::Fail, "{name} with {pods:?}: {msg}");
        assert!(msg.contains(why), "{name} with {pods:?}: `{why}` not in {msg}");
    }
}

#[tokio::test]
async fn image_groups_left_out_create_no_pod() {
    let c = FakeCluster::new(plan(1, Backend::Vxlan), Faults::default());
    let r = run(&c, &[Backend::Vxlan], Some("[sandbox]")).await;
    assert!(failures(&r).is_empty(), "{:#?}", failures(&r));
    assert!(!c.created().iter().any(|p| p.starts_with("tb-c-img") || p.starts_with("tb-c-live")), "{:?}", c.created());
}
