//! `testbed doctor`'s QEMU consistency check: every installed QEMU package at one version.
//!
//! Why: a machine image may carry qemu-utils from a newer suite (bookworm-backports) than the qemu-system-x86
//! that apt offers by default. The two then Break each other, apt refuses every later install, and
//! qemu-img and qemu-system report different versions.

use std::process::Command;

use super::doctor::{Check, Status};

/// The QEMU packages testbed uses or that come with them; each must have the same Debian version.
const PACKAGES: &[&str] = &["qemu-utils", "qemu-system-x86", "qemu-system-common", "qemu-system-data"];

/// Installed (package, Debian version) pairs, from dpkg's database; empty where there is no dpkg.
fn installed_packages() -> Vec<(String, String)> {
    let Ok(out) = Command::new("dpkg-query")
        .args(["-W", "-f", "${db:Status-Abbrev}\t${Package}\t${Version}\n"])
        .args(PACKAGES)
        .output()
    else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let (status, name, version) = (f.next()?, f.next()?, f.next()?);
            status.starts_with("ii").then(|| (name.to_string(), version.to_string()))
        })
        .collect()
}

/// "qemu-img version 10.0.2 (Debian ...)" -> "10.0.2"; "QEMU emulator version 7.2.19 ..." -> "7.2.19".
pub fn upstream_version(version_line: &str) -> Option<&str> {
    version_line.split_whitespace().skip_while(|w| *w != "version").nth(1)
}

/// Is Debian version `a` newer than `b`? Asks dpkg, which owns the ordering rules (epochs, `~`).
fn dpkg_newer(a: &str, b: &str) -> bool {
    Command::new("dpkg").args(["--compare-versions", a, "gt", b]).status().is_ok_and(|s| s.success())
}

/// The check, from the installed packages and the two binaries' upstream versions (None: binary missing).
pub fn consistency(
    packages: &[(String, String)],
    qemu_img: Option<&str>,
    qemu_system: Option<&str>,
    newer: impl Fn(&str, &str) -> bool,
) -> Check {
    let disagree_packages = packages.windows(2).any(|w| w[0].1 != w[1].1);
    let disagree_binaries = matches!((qemu_img, qemu_system), (Some(a), Some(b)) if a != b);
    if !disagree_packages && !disagree_binaries {
        let detail = match packages.first() {
            Some((_, v)) => format!("{} package(s) at {v}", packages.len()),
            None => format!("qemu-img {} and qemu-system {}", qemu_img.unwrap_or("-"), qemu_system.unwrap_or("-")),
        };
        return Check { name: "qemu-packages", status: Status::Ok, detail, fix: None };
    }
    let listed: Vec<String> = packages.iter().map(|(n, v)| format!("{n} {v}")).collect();
    let detail = format!(
        "QEMU packages disagree (qemu-img {}, qemu-system {}{}{}): apt refuses further installs until they agree",
        qemu_img.unwrap_or("missing"),
        qemu_system.unwrap_or("missing"),
        if listed.is_empty() { "" } else { "; " },
        listed.join(", ")
    );
    // One version for all: the newest installed, from whichever suite offers it. install.sh enables that
    // suite when it is not configured yet.
    let fix = packages.iter().map(|(_, v)| v.as_str()).reduce(|a, b| if newer(b, a) { b } else { a }).map_or_else(
        || "install qemu-system-x86 and qemu-utils of one version (./install.sh does)".to_string(),
        |v| {
            let pins: Vec<String> = PACKAGES.iter().map(|p| format!("{p}={v}")).collect();
            format!(
                "apt-get install --no-install-recommends {} (./install.sh enables the suite that has it)",
                pins.join(" ")
            )
        },
    );
    Check { name: "qemu-packages", status: Status::Warn, detail, fix: Some(fix) }
}

/// The real check: dpkg's database and the binaries' own `--version`.
pub fn check(qemu_img_line: Option<&str>, qemu_system_version: Option<&str>) -> Check {
    consistency(&installed_packages(), qemu_img_line.and_then(upstream_version), qemu_system_version, dpkg_newer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkgs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    #[test]
    fn one_version_everywhere_is_ok() {
        let p = pkgs(&[("qemu-utils", "1:10.0.2+ds-2"), ("qemu-system-x86", "1:10.0.2+ds-2")]);
        let c = consistency(&p, Some("10.0.2"), Some("10.0.2"), |a, b| a > b);
        assert_eq!(c.status, Status::Ok, "{c:?}");
    }

    #[test]
    fn backports_utils_with_bookworm_system_is_flagged_with_a_fix_to_the_newest() {
        // This machine image's state before the fix: qemu-utils from backports, qemu-system from bookworm.
        let p = pkgs(&[("qemu-utils", "1:10.0.2+ds-2~bpo12+1"), ("qemu-system-x86", "1:7.2+dfsg-7")]);
        let c = consistency(&p, Some("10.0.2"), Some("7.2.19"), |a, b| a.starts_with("1:10") && b.starts_with("1:7"));
        assert_eq!(c.status, Status::Warn);
        assert!(c.detail.contains("qemu-img 10.0.2") && c.detail.contains("qemu-system 7.2.19"), "{}", c.detail);
        let fix = c.fix.expect("a fix");
        assert!(fix.contains("qemu-system-x86=1:10.0.2+ds-2~bpo12+1"), "{fix}");
        assert!(fix.contains("qemu-utils=1:10.0.2+ds-2~bpo12+1"), "{fix}");
    }

    #[test]
    fn binaries_alone_disagreeing_are_flagged_without_dpkg() {
        let c = consistency(&[], Some("10.0.2"), Some("7.2.0"), |_, _| false);
        assert_eq!(c.status, Status::Warn);
        assert!(c.fix.is_some_and(|f| f.contains("one version")));
    }

    #[test]
    fn version_word_is_read_from_both_banners() {
        assert_eq!(upstream_version("qemu-img version 10.0.2 (Debian 1:10.0.2+ds-2)"), Some("10.0.2"));
        assert_eq!(upstream_version("QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7)"), Some("7.2.19"));
    }
}
