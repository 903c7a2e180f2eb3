//! [`Program`]: what a [`crate::Process`] runs, built like [`std::process::Command`] but
//! kept, so the same process can be started again.

use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Where a process's stdout and stderr go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Output {
    /// Nowhere (`/dev/null`): a process nobody reads.
    #[default]
    Discard,
    /// Both streams to this file, created or truncated at each start.
    File(PathBuf),
    /// Both streams appended to this file (created where missing): a process started again
    /// adds to its earlier runs' lines.
    AppendFile(PathBuf),
    /// stderr to this file (created or truncated at each start), stdout discarded: for the
    /// services, which log to stderr and keep stdout for what a command prints.
    StderrFile(PathBuf),
}

impl Output {
    /// The log file, unless the output is discarded.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Self::Discard => None,
            Self::File(path) | Self::AppendFile(path) | Self::StderrFile(path) => Some(path),
        }
    }

    /// The child's stdout and stderr.
    fn streams(&self) -> std::io::Result<(Stdio, Stdio)> {
        let open = |append: bool, path: &Path| -> std::io::Result<File> {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            let mut options = OpenOptions::new();
            options.create(true);
            if append {
                options.append(true);
            } else {
                options.write(true).truncate(true);
            }
            options.open(path)
        };
        Ok(match self {
            Self::Discard => (Stdio::null(), Stdio::null()),
            Self::File(path) | Self::AppendFile(path) => {
                let file = open(matches!(self, Self::AppendFile(_)), path)?;
                (file.try_clone()?.into(), file.into())
            }
            Self::StderrFile(path) => (Stdio::null(), open(false, path)?.into()),
        })
    }
}

/// How a [`crate::Process`] still running is stopped when its handle is dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnDrop {
    /// SIGKILL at once: for servers a test or scenario owns, whose data goes with them.
    #[default]
    Kill,
    /// SIGTERM, then SIGKILL if it has not exited within `grace`: for the services, which
    /// finish their work in hand on SIGTERM. Dropping blocks the thread for up to `grace`.
    Terminate {
        /// Longest wait for the exit after SIGTERM.
        grace: Duration,
    },
}

/// An executable with its arguments, environment, working directory, output and drop
/// behaviour: everything needed to start it, and to start it again the same way.
///
/// The environment is this process's, with [`Self::env`]'s variables added on top. Stdin is
/// always `/dev/null`.
#[derive(Debug, Clone)]
pub struct Program {
    /// What messages and errors call it (e.g. `coupon-api-1`); often its log file's stem.
    name: String,
    executable: PathBuf,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    current_dir: Option<PathBuf>,
    output: Output,
    on_drop: OnDrop,
}

impl Program {
    /// `executable`, called `name` in messages, with no arguments, its output discarded and
    /// killed when dropped.
    pub fn new(name: impl Into<String>, executable: impl AsRef<Path>) -> Self {
        Self {
            name: name.into(),
            executable: executable.as_ref().to_owned(),
            args: Vec::new(),
            env: Vec::new(),
            current_dir: None,
            output: Output::Discard,
            on_drop: OnDrop::Kill,
        }
    }

    /// Adds an argument.
    pub fn arg(&mut self, arg: impl AsRef<OsStr>) -> &mut Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Adds arguments.
    pub fn args<I, S>(&mut self, args: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable (the last setting of a name wins).
    pub fn env(&mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> &mut Self {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Sets environment variables (the last setting of a name wins).
    pub fn envs<I, K, V>(&mut self, vars: I) -> &mut Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        for (key, value) in vars {
            self.env(key, value);
        }
        self
    }

    /// Runs it in `dir` instead of this process's working directory.
    pub fn current_dir(&mut self, dir: impl AsRef<Path>) -> &mut Self {
        self.current_dir = Some(dir.as_ref().to_owned());
        self
    }

    /// Where its stdout and stderr go.
    pub fn output(&mut self, output: Output) -> &mut Self {
        self.output = output;
        self
    }

    /// How it is stopped when its [`crate::Process`] is dropped while it runs.
    pub fn on_drop(&mut self, on_drop: OnDrop) -> &mut Self {
        self.on_drop = on_drop;
        self
    }

    /// Its name in messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The executable.
    pub fn executable(&self) -> &Path {
        &self.executable
    }

    /// The value it is given for the environment variable `key` (the last setting), if any.
    pub fn get_env(&self, key: impl AsRef<OsStr>) -> Option<&OsStr> {
        self.env
            .iter()
            .rev()
            .find(|(k, _)| k == key.as_ref())
            .map(|(_, v)| v.as_os_str())
    }

    /// Its log file, unless its output is discarded.
    pub fn log_path(&self) -> Option<&Path> {
        self.output.path()
    }

    pub(crate) fn drop_behaviour(&self) -> OnDrop {
        self.on_drop
    }

    /// The [`Command`] of one start, its log file opened.
    pub(crate) fn command(&self) -> std::io::Result<Command> {
        let (stdout, stderr) = self.output.streams()?;
        let mut command = Command::new(&self.executable);
        command
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        if let Some(dir) = &self.current_dir {
            command.current_dir(dir);
        }
        Ok(command)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_discarded_output_has_no_log_path() {
        assert_eq!(Output::Discard.path(), None);
        for output in [
            Output::File("a.log".into()),
            Output::AppendFile("a.log".into()),
            Output::StderrFile("a.log".into()),
        ] {
            assert_eq!(output.path(), Some(Path::new("a.log")));
        }
    }

    #[test]
    fn a_program_keeps_its_arguments_in_order_and_the_last_setting_of_a_variable() {
        let mut program = Program::new("echo", "/bin/echo");
        program
            .arg("a")
            .args(["b", "c"])
            .env("X", "1")
            .envs([("Y", "2"), ("X", "3")]);
        let command = program.command().expect("no log file to open");
        let args: Vec<_> = command.get_args().collect();
        assert_eq!(args, ["a", "b", "c"]);
        let env: Vec<_> = command.get_envs().collect();
        assert_eq!(
            env,
            [
                (OsStr::new("X"), Some(OsStr::new("3"))),
                (OsStr::new("Y"), Some(OsStr::new("2")))
            ]
        );
        assert_eq!(program.get_env("X"), Some(OsStr::new("3")));
        assert_eq!(program.get_env("Z"), None);
    }
}
