//! [`Error`]: what can go wrong supervising a process, each failure with the process's name
//! and, where it has one, the tail of its log.

use std::fmt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use crate::Signal;

/// The last lines of a process's log file, shown with an error so the reason a process died
/// or never got ready is on screen, not only in `.local/…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogTail {
    /// The log file.
    pub path: PathBuf,
    /// Its last lines (at most [`LogTail::LINES`]), or why they could not be read.
    pub lines: String,
}

impl LogTail {
    /// Lines of a log an error shows.
    pub const LINES: usize = 20;
}

impl fmt::Display for LogTail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "\n--- last lines of {}:\n{}",
            self.path.display(),
            self.lines
        )
    }
}

/// The log tails of an error, each on lines of its own.
struct Tails<'a>(&'a [LogTail]);

impl fmt::Display for Tails<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|tail| tail.fmt(f))
    }
}

/// A failure to start, signal or wait for a process.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The executable could not be run (missing, not executable) or its log file not opened.
    #[error("starting {name} ({}) failed", executable.display())]
    Spawn {
        /// The process's name.
        name: String,
        /// What was run.
        executable: PathBuf,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// [`crate::Process::start`] on a process that runs: stop it first.
    #[error("{name} is already running (pid {pid})")]
    AlreadyRunning {
        /// The process's name.
        name: String,
        /// Its pid.
        pid: u32,
    },
    /// A signal for a process that is not running (never started, stopped, or exited).
    #[error("{name} is not running, so it cannot be sent {signal}")]
    NotRunning {
        /// The process's name.
        name: String,
        /// The signal that was not sent.
        signal: Signal,
    },
    /// `kill(1)` could not be run or refused.
    #[error("sending {signal} to {name} (pid {pid}) failed: {reason}")]
    Signal {
        /// The process's name.
        name: String,
        /// Its pid.
        pid: u32,
        /// The signal.
        signal: Signal,
        /// `kill`'s exit status, or why it could not run.
        reason: String,
    },
    /// A watched process exited on its own while waiting for something.
    #[error("{name} exited ({status}) while waiting for {what}{}", log.as_ref().map(ToString::to_string).unwrap_or_default())]
    Exited {
        /// The process's name.
        name: String,
        /// What was being waited for.
        what: String,
        /// How it exited.
        status: ExitStatus,
        /// The end of its log, if it has one.
        log: Option<LogTail>,
    },
    /// The readiness check still failed when the wait's time was up.
    #[error("timed out after {timeout:?} waiting for {what}{}{}", last.as_ref().map(|l| format!(" (last check: {l})")).unwrap_or_default(), Tails(logs))]
    NotReady {
        /// What was being waited for.
        what: String,
        /// How long it was waited for.
        timeout: Duration,
        /// Why the last check failed, when the check said.
        last: Option<String>,
        /// The end of every watched process's log.
        logs: Vec<LogTail>,
    },
}
