//! [`Process`]: one supervised child of a [`Program`], started, signalled and stopped within
//! a bound, and stopped when dropped.

use std::fmt;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use crate::{Error, LogTail, OnDrop, Program, Wait};

/// How often a stop looks whether the process has exited.
const EXIT_POLL: Duration = Duration::from_millis(50);

/// The signals the suites send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM: stop gracefully (the services drain; Kafka's controlled shutdown).
    Term,
    /// SIGKILL: a crash; nothing is saved on the way out.
    Kill,
    /// SIGSTOP: frozen: connections stay open and nothing answers, the way a hung host looks.
    Stop,
    /// SIGCONT: thawed after [`Signal::Stop`].
    Cont,
}

impl Signal {
    /// The name without `SIG`, as `kill -NAME` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Term => "TERM",
            Self::Kill => "KILL",
            Self::Stop => "STOP",
            Self::Cont => "CONT",
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SIG{}", self.name())
    }
}

/// How a stopped process went.
#[derive(Debug, Clone, Copy)]
pub struct Stopped {
    /// From the signal to the exit.
    pub took: Duration,
    /// Whether it outlasted the grace and was killed (SIGKILL).
    pub forced: bool,
    /// Its exit status (`None` if it could not be collected).
    pub status: Option<ExitStatus>,
}

impl fmt::Display for Stopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "exited {:.1} s after the signal",
            self.took.as_secs_f64()
        )?;
        if self.forced {
            f.write_str(", killed (SIGKILL) after the grace")?;
        }
        Ok(())
    }
}

/// Where a process is in its life, as far as this handle has seen.
#[derive(Debug)]
enum State {
    /// Never started.
    Idle,
    /// Started, not yet seen to exit. Its pid cannot be reused until it is collected here, so
    /// a signal to it reaches it (or its zombie), never another process.
    Running(Child),
    /// Exited on its own (found so while polling).
    Exited(ExitStatus),
    /// Stopped by this handle (its exit status went to the caller, in [`Stopped`]).
    Stopped,
}

/// A child process of a [`Program`]: started (and started again after a stop), signalled,
/// stopped within a bound, and stopped as [`Program::on_drop`] says when dropped.
#[derive(Debug)]
pub struct Process {
    program: Program,
    state: State,
}

impl Process {
    /// A handle for `program`, not started yet.
    pub fn new(program: Program) -> Self {
        Self {
            program,
            state: State::Idle,
        }
    }

    /// Starts `program`.
    ///
    /// # Errors
    /// As [`Self::start`].
    pub fn spawn(program: Program) -> Result<Self, Error> {
        let mut process = Self::new(program);
        process.start()?;
        Ok(process)
    }

    /// The program it runs.
    pub fn program(&self) -> &Program {
        &self.program
    }

    /// The program it runs, to change before the next [`Self::start`].
    pub fn program_mut(&mut self) -> &mut Program {
        &mut self.program
    }

    /// Its name in messages.
    pub fn name(&self) -> &str {
        self.program.name()
    }

    /// Its log file, unless its output is discarded.
    pub fn log_path(&self) -> Option<&Path> {
        self.program.log_path()
    }

    /// Starts the program (again, after a stop or an exit); returns the pid.
    ///
    /// # Errors
    /// It already runs ([`Error::AlreadyRunning`]), or it could not be started
    /// ([`Error::Spawn`]).
    pub fn start(&mut self) -> Result<u32, Error> {
        if let Some(pid) = self.pid() {
            if self.is_running() {
                return Err(Error::AlreadyRunning {
                    name: self.name().to_owned(),
                    pid,
                });
            }
        }
        let spawn_error = |source| Error::Spawn {
            name: self.program.name().to_owned(),
            executable: self.program.executable().to_owned(),
            source,
        };
        let child = self
            .program
            .command()
            .and_then(|mut command| command.spawn())
            .map_err(spawn_error)?;
        let pid = child.id();
        self.state = State::Running(child);
        Ok(pid)
    }

    /// Its pid while it runs as far as this handle knows (not stopped here, not seen to
    /// exit): for CPU sampling and signals.
    pub fn pid(&self) -> Option<u32> {
        match &self.state {
            State::Running(child) => Some(child.id()),
            State::Idle | State::Exited(_) | State::Stopped => None,
        }
    }

    /// Whether it runs: started, not stopped, and not exited (looked up now).
    pub fn is_running(&mut self) -> bool {
        self.poll();
        matches!(self.state, State::Running(_))
    }

    /// Its exit status if it exited on its own (looked up now); `None` while it runs, before
    /// its start and after a stop by this handle.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.poll();
        match self.state {
            State::Exited(status) => Some(status),
            State::Idle | State::Running(_) | State::Stopped => None,
        }
    }

    /// Collects the exit of a running process that has exited.
    fn poll(&mut self) {
        if let State::Running(child) = &mut self.state {
            if let Ok(Some(status)) = child.try_wait() {
                self.state = State::Exited(status);
            }
        }
    }

    /// Sends `signal` without waiting for its effect ([`Self::stop`] waits for an exit).
    ///
    /// # Errors
    /// It is not running, or `kill` failed.
    pub fn signal(&self, signal: Signal) -> Result<(), Error> {
        let State::Running(child) = &self.state else {
            return Err(Error::NotRunning {
                name: self.name().to_owned(),
                signal,
            });
        };
        send(self.name(), child.id(), signal)
    }

    /// Kills it (SIGKILL) and collects its exit; `None` when it was not running.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        let child = self.take_running()?;
        let started = Instant::now();
        self.force(child, started, false).status
    }

    /// Sends `signal` (SIGTERM for a graceful stop, SIGKILL for a crash) and waits for the
    /// exit without blocking the runtime: up to `grace`, then SIGKILL. `None` when it was not
    /// running.
    pub async fn stop(&mut self, signal: Signal, grace: Duration) -> Option<Stopped> {
        let (mut child, started) = self.begin_stop(signal)?;
        while started.elapsed() < grace {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(self.stopped(started, false, Some(status)));
            }
            tokio::time::sleep(EXIT_POLL).await;
        }
        Some(self.force(child, started, true))
    }

    /// [`Self::stop`], blocking the thread: for the end of a run and for `Drop`, not while
    /// other tasks on this thread must go on.
    pub fn stop_blocking(&mut self, signal: Signal, grace: Duration) -> Option<Stopped> {
        let (mut child, started) = self.begin_stop(signal)?;
        while started.elapsed() < grace {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(self.stopped(started, false, Some(status)));
            }
            std::thread::sleep(EXIT_POLL);
        }
        Some(self.force(child, started, true))
    }

    /// Waits as `wait` says until `check` passes, failing early if this process exits.
    ///
    /// # Errors
    /// As [`Wait::until`].
    pub async fn wait_ready<T, F, Fut>(&mut self, wait: &Wait, check: F) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future,
        Fut::Output: crate::CheckOutcome<T>,
    {
        wait.until(std::slice::from_mut(self), check).await
    }

    /// The last `lines` lines of its log file (`None` when its output is discarded).
    pub fn log_tail(&self, lines: usize) -> Option<LogTail> {
        let path = self.log_path()?;
        let lines = match read_tail(path, lines) {
            Ok(text) => text,
            Err(err) => format!("(unreadable: {err})"),
        };
        Some(LogTail {
            path: path.to_owned(),
            lines,
        })
    }

    /// Takes the child out of a running process (one that exited on its own too: its status
    /// is collected by the caller).
    fn take_running(&mut self) -> Option<Child> {
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Running(child) => Some(child),
            other => {
                self.state = other;
                None
            }
        }
    }

    /// Sends `signal` to a running process and takes its child to wait for.
    fn begin_stop(&mut self, signal: Signal) -> Option<(Child, Instant)> {
        let mut child = self.take_running()?;
        let started = Instant::now();
        // Failures are not fatal here: the process may just have exited, and the wait below
        // sees that; one that ignores the signal is killed after the grace.
        let _ = match signal {
            Signal::Kill => child.kill().map_err(drop),
            _ => send(self.name(), child.id(), signal).map_err(drop),
        };
        Some((child, started))
    }

    /// SIGKILL (where `forced`, or for [`Self::kill`]) and the exit collected.
    fn force(&mut self, mut child: Child, started: Instant, forced: bool) -> Stopped {
        let _ = child.kill();
        let status = child.wait().ok();
        self.stopped(started, forced, status)
    }

    fn stopped(&mut self, started: Instant, forced: bool, status: Option<ExitStatus>) -> Stopped {
        self.state = State::Stopped;
        Stopped {
            took: started.elapsed(),
            forced,
            status,
        }
    }
}

/// Sends `signal` to every running process of `processes` at once, waits for them all within
/// one `grace`, then kills (SIGKILL) any left: a group stops in the time of its slowest member,
/// not in the sum of its members' times. Blocks the thread. Each entry is `None` for a process
/// that was not running.
pub fn stop_all<P: AsMut<Process>>(
    processes: &mut [P],
    signal: Signal,
    grace: Duration,
) -> Vec<Option<Stopped>> {
    let mut stopping: Vec<Option<(Child, Instant)>> = processes
        .iter_mut()
        .map(|p| p.as_mut().begin_stop(signal))
        .collect();
    let mut stopped: Vec<Option<Stopped>> = vec![None; processes.len()];
    let started = Instant::now();
    loop {
        for (i, entry) in stopping.iter_mut().enumerate() {
            if let Some((child, since)) = entry {
                if let Ok(Some(status)) = child.try_wait() {
                    stopped[i] = Some(processes[i].as_mut().stopped(*since, false, Some(status)));
                    *entry = None;
                }
            }
        }
        if stopping.iter().all(Option::is_none) || started.elapsed() >= grace {
            break;
        }
        std::thread::sleep(EXIT_POLL);
    }
    for (i, entry) in stopping.into_iter().enumerate() {
        if let Some((child, since)) = entry {
            stopped[i] = Some(processes[i].as_mut().force(child, since, true));
        }
    }
    stopped
}

impl AsMut<Process> for Process {
    fn as_mut(&mut self) -> &mut Process {
        self
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        match self.program.drop_behaviour() {
            OnDrop::Kill => {
                self.kill();
            }
            OnDrop::Terminate { grace } => {
                self.stop_blocking(Signal::Term, grace);
            }
        }
    }
}

/// `kill -NAME pid`.
fn send(name: &str, pid: u32, signal: Signal) -> Result<(), Error> {
    let failed = |reason: String| Error::Signal {
        name: name.to_owned(),
        pid,
        signal,
        reason,
    };
    let status = Command::new("kill")
        .arg(format!("-{}", signal.name()))
        .arg(pid.to_string())
        .status()
        .map_err(|err| failed(format!("running kill: {err}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(failed(format!("kill {status}")))
    }
}

/// Bytes read from the end of a log for its tail: enough for 20 long lines, without reading a
/// log of hundreds of megabytes.
const TAIL_BYTES: u64 = 16 * 1024;

/// The last `lines` lines of the file at `path`.
fn read_tail(path: &Path, lines: usize) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let from = len.saturating_sub(TAIL_BYTES);
    file.seek(SeekFrom::Start(from))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    // A read that starts mid-file starts mid-line: drop that partial line.
    let whole = match from {
        0 => &text[..],
        _ => text.split_once('\n').map_or("", |(_, rest)| rest),
    };
    let kept: Vec<&str> = whole.lines().collect();
    Ok(kept[kept.len().saturating_sub(lines)..].join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_print_as_their_names() {
        assert_eq!(Signal::Term.to_string(), "SIGTERM");
        assert_eq!(Signal::Cont.name(), "CONT");
    }

    #[test]
    fn a_stop_prints_how_long_it_took_and_whether_it_was_forced() {
        let mut stopped = Stopped {
            took: Duration::from_millis(1_300),
            forced: false,
            status: None,
        };
        assert_eq!(stopped.to_string(), "exited 1.3 s after the signal");
        stopped.forced = true;
        assert_eq!(
            stopped.to_string(),
            "exited 1.3 s after the signal, killed (SIGKILL) after the grace"
        );
    }

    #[test]
    fn the_tail_of_a_log_is_its_last_whole_lines() {
        let path = std::env::temp_dir().join(format!("harness-tail-{}.log", std::process::id()));
        let long: String = (0..5_000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, long).expect("a temporary file");
        let tail = read_tail(&path, 3).expect("readable");
        std::fs::remove_file(&path).expect("removable");
        assert_eq!(tail, "line 4997\nline 4998\nline 4999");
    }
}
