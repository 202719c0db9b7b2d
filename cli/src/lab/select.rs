//! Choosing a lab: `--lab NAME`, `-t FILE`, or the only lab there is.

use std::path::PathBuf;

use crate::guest::SshError;
use crate::topology::{self, TopologyError};

use super::dir::{self as labdir, LabDir, LabDirError};

/// Which lab a command acts on.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LabSelector {
    /// Lab name (see the `name:` of its topology).
    #[arg(long = "lab", value_name = "NAME")]
    pub lab: Option<String>,
    /// Topology file whose lab to use.
    #[arg(long = "topology", short = 't', value_name = "FILE", conflicts_with = "lab")]
    pub topology: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(transparent)]
    Topology(#[from] TopologyError),
    #[error(transparent)]
    LabDir(#[from] LabDirError),
    #[error("no lab is up (nothing under {0}); start one with `testbed up TOPOLOGY`")]
    NoLabs(PathBuf),
    #[error("several labs exist ({}); choose one with --lab NAME", .0.join(", "))]
    Ambiguous(Vec<String>),
    #[error("`{0}` is not a lab name (lowercase letters, digits and '-', starting with a letter, at most {max})", max = crate::topology::validate::MAX_LAB_NAME)]
    BadName(String),
    #[error("no lab named `{name}` (no directory {dir})")]
    NotFound { name: String, dir: PathBuf },
    #[error("lab `{0}` has no state.json: its `up` did not get far; remove it with `testbed down --lab {0}`")]
    NoState(String),
    #[error("lab `{lab}` has no node `{node}`; nodes: {}", known.join(", "))]
    UnknownNode { lab: String, node: String, known: Vec<String> },
    #[error("node {node}: {source}")]
    Ssh {
        node: String,
        #[source]
        source: Box<SshError>,
    },
}

impl LabError {
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            LabError::Topology(_)
                | LabError::Ambiguous(_)
                | LabError::NotFound { .. }
                | LabError::UnknownNode { .. }
                | LabError::NoLabs(_)
                | LabError::BadName(_)
        )
    }
}

impl From<LabError> for crate::exit::CliError {
    fn from(e: LabError) -> Self {
        if e.is_bad_input() {
            crate::exit::CliError::bad_input(e)
        } else {
            crate::exit::CliError::infra(e)
        }
    }
}

/// The topology as `up` takes it, positional, for the lab verbs that take nothing else positional (`down`,
/// `status`, `run SUITE`): `testbed down FILE` is `testbed down -t FILE`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LabArgs {
    /// Topology file whose lab to use (the same as `-t FILE`).
    #[arg(value_name = "TOPOLOGY", conflicts_with_all = ["lab", "topology"])]
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub selector: LabSelector,
}

impl LabArgs {
    /// The lab these arguments choose.
    pub fn selector(&self) -> LabSelector {
        match &self.file {
            Some(file) => LabSelector { lab: None, topology: Some(file.clone()) },
            None => self.selector.clone(),
        }
    }
}

impl LabSelector {
    /// The lab's directory (which may not exist: `down` is idempotent). None only when no lab was named and
    /// none exists.
    pub fn resolve(&self) -> Result<Option<LabDir>, LabError> {
        self.resolve_in(&labdir::state_root()?)
    }

    fn resolve_in(&self, root: &std::path::Path) -> Result<Option<LabDir>, LabError> {
        if let Some(name) = &self.lab {
            // The name becomes a path under the state root (and `down` removes it): only lab names pass.
            if !crate::topology::validate::is_lab_name(name) {
                return Err(LabError::BadName(name.clone()));
            }
            return Ok(Some(LabDir::new(root, name)));
        }
        if let Some(file) = &self.topology {
            let checked = topology::load(file)?;
            return Ok(Some(LabDir::new(root, &checked.lab)));
        }
        let labs = labdir::list_labs(root)?;
        match labs.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(LabDir::new(root, one))),
            _ => Err(LabError::Ambiguous(labs)),
        }
    }

    /// Like `resolve`, but the lab must exist.
    pub fn resolve_existing(&self) -> Result<LabDir, LabError> {
        let root = labdir::state_root()?;
        let dir = self.resolve()?.ok_or(LabError::NoLabs(root))?;
        if !dir.exists() {
            return Err(LabError::NotFound { name: dir.name.clone(), dir: dir.root.clone() });
        }
        Ok(dir)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(clap::Parser)]
    struct Verb {
        #[command(flatten)]
        lab: LabArgs,
    }

    #[test]
    fn the_topology_is_positional_as_up_takes_it_or_a_flag() {
        let parse = |args: &[&str]| Verb::try_parse_from(std::iter::once("down").chain(args.iter().copied()));
        let file = |args: &[&str]| parse(args).unwrap().lab.selector().topology;
        assert_eq!(file(&["t.yaml"]), Some(PathBuf::from("t.yaml")));
        assert_eq!(file(&["-t", "t.yaml"]), Some(PathBuf::from("t.yaml")));
        assert_eq!(parse(&["--lab", "x"]).unwrap().lab.selector().lab.as_deref(), Some("x"));
        assert!(parse(&["t.yaml", "-t", "u.yaml"]).is_err(), "a file twice is a usage error");
        assert!(parse(&["t.yaml", "--lab", "x"]).is_err());
    }

    #[test]
    fn selector_by_name_file_or_the_only_lab() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let auto = LabSelector::default();
        assert!(auto.resolve_in(root).unwrap().is_none());
        std::fs::create_dir_all(root.join("a")).unwrap();
        std::fs::write(root.join("a/lock"), "").unwrap();
        assert_eq!(auto.resolve_in(root).unwrap().unwrap().name, "a");
        std::fs::create_dir_all(root.join("b")).unwrap();
        std::fs::write(root.join("b/plan.json"), "{}").unwrap();
        assert!(matches!(auto.resolve_in(root), Err(LabError::Ambiguous(v)) if v == ["a", "b"]));
        let named = LabSelector { lab: Some("zz".into()), topology: None };
        assert_eq!(named.resolve_in(root).unwrap().unwrap().root, root.join("zz"));
        let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../topologies/default.yaml");
        let by_file = LabSelector { lab: None, topology: Some(file) };
        assert_eq!(by_file.resolve_in(root).unwrap().unwrap().name, "default");
        let bad = LabSelector { lab: None, topology: Some(root.join("missing.yaml")) };
        let err = bad.resolve_in(root).unwrap_err();
        assert!(err.is_bad_input(), "{err}");
    }

    #[test]
    fn lab_names_that_are_paths_are_bad_input() {
        let tmp = tempfile::tempdir().unwrap();
        for name in ["../victim", "/", "", ".", "..", "a/b", "UPPER", "x".repeat(25).as_str()] {
            let sel = LabSelector { lab: Some(name.to_string()), topology: None };
            let err = sel.resolve_in(tmp.path()).unwrap_err();
            assert!(matches!(err, LabError::BadName(_)) && err.is_bad_input(), "{name:?}: {err}");
        }
    }
}
