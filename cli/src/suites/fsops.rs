//! File operations the `[container]` and `[probe]` groups run inside a container (through an exec) and on a
//! node (over SSH, where `/proc/<pid>/root/...` is a container's root as its own process sees it): one line of
//! shell per operation, answered by `== ` lines the parser reads back. Reads use shell builtins only (`[`,
//! `read`, `echo`): under TCG every process start costs 0.1-0.5 s. The fake cluster parses the same lines back
//! (`parse_script`), so the unit tests exercise the scripts the lab runs.

use std::collections::BTreeMap;

/// One operation on a path. Paths and texts are the suite's own constants: no quoting beyond `'...'`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `echo TEXT > PATH`: answered `wrote` or `refused` (the shell's reason goes to stderr).
    Write { path: String, text: String },
    /// `rm -f PATH`.
    Remove { path: String },
    /// Whether PATH exists and, when it does, its lines.
    Read { path: String },
}

impl Op {
    pub fn write(path: &str, text: &str) -> Op {
        Op::Write { path: path.into(), text: text.into() }
    }

    pub fn remove(path: &str) -> Op {
        Op::Remove { path: path.into() }
    }

    pub fn read(path: &str) -> Op {
        Op::Read { path: path.into() }
    }

    fn line(&self) -> String {
        match self {
            Op::Write { path, text } => {
                format!("if echo '{text}' > '{path}'; then echo '== wrote {path}'; else echo '== refused {path}'; fi")
            }
            Op::Remove { path } => format!("rm -f '{path}'; echo '== removed {path}'"),
            Op::Read { path } => format!(
                "if [ -e '{path}' ]; then echo '== present {path}'; while IFS= read -r l || [ -n \"$l\" ]; do \
                 echo \"$l\"; done < '{path}'; echo '== end'; else echo '== absent {path}'; fi"
            ),
        }
    }
}

/// The shell script of `ops`, one line each, run in order.
pub fn script(ops: &[Op]) -> String {
    ops.iter().map(Op::line).collect::<Vec<_>>().join("\n")
}

/// The operations of a script `script` wrote; None when any line is not one of them.
#[cfg(test)]
pub fn parse_script(script: &str) -> Option<Vec<Op>> {
    script.lines().map(parse_line).collect()
}

#[cfg(test)]
fn parse_line(line: &str) -> Option<Op> {
    let quoted = |s: &str| -> Option<String> { Some(s.strip_prefix('\'')?.split('\'').next()?.to_string()) };
    if let Some(rest) = line.strip_prefix("if echo ") {
        let text = quoted(rest)?;
        let path = quoted(rest.split_once(" > ")?.1)?;
        Some(Op::Write { path, text })
    } else if let Some(rest) = line.strip_prefix("rm -f ") {
        Some(Op::Remove { path: quoted(rest)? })
    } else if let Some(rest) = line.strip_prefix("if [ -e ") {
        Some(Op::Read { path: quoted(rest)? })
    } else {
        None
    }
}

/// What an operation found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    Wrote,
    Refused,
    Removed,
    /// The file's lines, joined with `\n` (a directory reads as empty).
    Present(String),
    Absent,
}

/// What each path's last operation found, from a script's stdout.
pub fn parse_output(stdout: &str) -> BTreeMap<String, Found> {
    let mut found = BTreeMap::new();
    let mut reading: Option<(String, Vec<&str>)> = None;
    for line in stdout.lines() {
        if let Some((path, lines)) = reading.as_mut() {
            if line == "== end" {
                found.insert(std::mem::take(path), Found::Present(lines.join("\n")));
                reading = None;
            } else {
                lines.push(line);
            }
            continue;
        }
        let Some((what, path)) = line.strip_prefix("== ").and_then(|l| l.split_once(' ')) else { continue };
        let path = path.to_string();
        let f = match what {
            "wrote" => Found::Wrote,
            "refused" => Found::Refused,
            "removed" => Found::Removed,
            "absent" => Found::Absent,
            "present" => {
                reading = Some((path, Vec::new()));
                continue;
            }
            _ => continue,
        };
        found.insert(path, f);
    }
    found
}

/// The answer a healthy shell gives to `ops`, given what each one found: what the fake cluster prints.
#[cfg(test)]
pub fn render_output(answers: &[(&Op, Found)]) -> String {
    let mut out = String::new();
    for (op, found) in answers {
        let path = match op {
            Op::Write { path, .. } | Op::Remove { path } | Op::Read { path } => path,
        };
        match found {
            Found::Wrote => out.push_str(&format!("== wrote {path}\n")),
            Found::Refused => out.push_str(&format!("== refused {path}\n")),
            Found::Removed => out.push_str(&format!("== removed {path}\n")),
            Found::Absent => out.push_str(&format!("== absent {path}\n")),
            Found::Present(text) => {
                out.push_str(&format!("== present {path}\n"));
                for l in text.lines() {
                    out.push_str(&format!("{l}\n"));
                }
                out.push_str("== end\n");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_parse_back_and_outputs_read_back() {
        let ops = vec![Op::write("/tmp/x", "hello"), Op::read("/proc/12/root/etc/passwd"), Op::remove("/tmp/x")];
        let s = script(&ops);
        assert_eq!(parse_script(&s), Some(ops.clone()));
        assert_eq!(parse_script("echo hi"), None);
        let out = render_output(&[
            (&ops[0], Found::Refused),
            (&ops[1], Found::Present("root:x:0:0\nsecond".into())),
            (&ops[2], Found::Removed),
        ]);
        let found = parse_output(&out);
        assert_eq!(found["/tmp/x"], Found::Removed);
        assert_eq!(found["/proc/12/root/etc/passwd"], Found::Present("root:x:0:0\nsecond".into()));
    }

    /// The scripts run as written by a real shell (this host's sh).
    #[test]
    fn a_real_shell_answers_the_scripts() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f").display().to_string();
        let missing = dir.path().join("no/such/dir/g").display().to_string();
        let ops = vec![Op::write(&f, "one"), Op::read(&f), Op::write(&missing, "x"), Op::read(&missing)];
        let out = std::process::Command::new("sh").arg("-c").arg(script(&ops)).output().unwrap();
        let found = parse_output(&String::from_utf8_lossy(&out.stdout));
        assert_eq!(found[&f], Found::Present("one".into()));
        assert_eq!(found[&missing], Found::Absent);
        let ops = vec![Op::write(&missing, "x"), Op::remove(&f), Op::read(&f)];
        let out = std::process::Command::new("sh").arg("-c").arg(script(&ops)).output().unwrap();
        let found = parse_output(&String::from_utf8_lossy(&out.stdout));
        assert_eq!(found[&missing], Found::Refused);
        assert_eq!(found[&f], Found::Absent);
    }
}
