//! The one place where failures become exit codes CI can trust:
//! 0 pass, 1 a test failed, 2 bad input or usage, 3 infrastructure failure.

/// A command's failure, classified. Library modules keep their own `thiserror` types; command handlers
/// decide the class when they convert (`.map_err(CliError::bad_input)` / `CliError::infra`).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The user's input is wrong (topology, flags, names). Exit 2.
    #[error("{0:#}")]
    BadInput(anyhow::Error),
    /// Something testbed depends on failed (QEMU, SSH, the kernel, the disk). Exit 3.
    #[error("{0:#}")]
    Infra(anyhow::Error),
    /// A suite ran and at least one check failed. Exit 1.
    #[error("{0}")]
    TestsFailed(String),
    /// The command ran and printed its report (a suite's results, a lab's status), and that report shows an
    /// infrastructure failure (a node or agent unreachable). Exit 3, with no second document after it.
    #[error("{0}")]
    InfraReported(String),
}

impl CliError {
    pub fn bad_input(e: impl Into<anyhow::Error>) -> Self {
        CliError::BadInput(e.into())
    }

    pub fn infra(e: impl Into<anyhow::Error>) -> Self {
        CliError::Infra(e.into())
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::TestsFailed(_) => 1,
            CliError::BadInput(_) => 2,
            CliError::Infra(_) | CliError::InfraReported(_) => 3,
        }
    }

    /// True when the command already printed its own result document (a suite's results), so no error
    /// document may follow it on stdout.
    pub fn results_printed(&self) -> bool {
        matches!(self, CliError::TestsFailed(_) | CliError::InfraReported(_))
    }

    pub fn kind(&self) -> &'static str {
        match self {
            CliError::TestsFailed(_) => "tests-failed",
            CliError::BadInput(_) => "bad-input",
            CliError::Infra(_) | CliError::InfraReported(_) => "infrastructure",
        }
    }
}

pub type CliResult<T = ()> = Result<T, CliError>;
