//! Child processes for multi-process and crash tests.
//!
//! A test re-runs its own binary with only itself selected and a role in the
//! environment; [`role`] tells the test function which side it is on. Children
//! talk to the parent in lines: the parent sends on stdin, the child reports on
//! stdout with [`report`], prefixed so that the test runner's own output is
//! ignored. A report is written before anything that follows it in the child, so
//! a parent that read `ack 7` knows the child finished the work behind it, even if
//! the child is killed a moment later.
//!
//! Waits are bounded generously ([`WAIT_BOUND`]) only so that a hung child fails
//! the test instead of hanging it; no result depends on timing.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

/// The environment variable that carries a child's role.
const ROLE_VAR: &str = "JOBSAFE_TEST_CHILD_ROLE";
/// Marks the lines a child reports, among whatever else the test runner prints.
const REPORT_PREFIX: &str = "jobsafe-child> ";
/// How long the parent waits for one line before declaring the child hung.
pub const WAIT_BOUND: Duration = Duration::from_secs(120);

/// This process's role if it was started by [`Child::spawn`], `None` in the
/// parent.
pub fn role() -> Option<String> {
    std::env::var(ROLE_VAR).ok()
}

/// A variable the parent passed to this child.
pub fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("the parent did not pass {name}"))
}

/// Sends one line to the parent. Returns only once the line is written to the
/// pipe.
pub fn report(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{REPORT_PREFIX}{line}")
        .and_then(|()| out.flush())
        .unwrap_or_else(|e| panic!("report to the parent: {e}"));
}

/// Waits for the next line from the parent (`None` when the parent closed the
/// pipe).
pub fn receive() -> Option<String> {
    let mut line = String::new();
    match std::io::stdin().read_line(&mut line) {
        Ok(0) => None,
        Ok(_) => Some(line.trim_end().to_owned()),
        Err(e) => panic!("read from the parent: {e}"),
    }
}

/// In a child: tells the parent it is ready, then waits for the parent to let
/// it go (see [`start_together`]).
pub fn ready_then_wait() {
    report("ready");
    let go = receive();
    assert_eq!(go.as_deref(), Some("go"), "the parent did not say go");
}

/// In the parent: waits until every child has said it is ready (with
/// [`ready_then_wait`]), then lets them all go at once, so that they race.
pub fn start_together(children: &mut [Child]) {
    for child in children.iter_mut() {
        assert_eq!(child.expect_report(), "ready");
    }
    for child in children.iter_mut() {
        child.send("go");
    }
}

/// A running child: its input, its reports, and everything it printed to stderr.
pub struct Child {
    name: String,
    process: std::process::Child,
    stdin: Option<ChildStdin>,
    reports: Receiver<String>,
    stderr: Option<JoinHandle<String>>,
}

impl Child {
    /// Starts this test binary again, running only `test` (its full path, as the
    /// test runner names it, e.g. `children_race_cas_increments`), with `role` and
    /// the given variables in its environment.
    pub fn spawn(test: &str, role: &str, vars: &HashMap<&str, String>) -> Child {
        Child::spawn_under(&[], test, role, vars)
    }

    /// As [`Child::spawn`], through `wrapper`: a program and its arguments that
    /// runs the command line that follows them (`unshare --pid --fork`, say).
    pub fn spawn_under(
        wrapper: &[&str],
        test: &str,
        role: &str,
        vars: &HashMap<&str, String>,
    ) -> Child {
        let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current exe: {e}"));
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(&exe);
                command
            }
            None => Command::new(&exe),
        };
        let mut process = command
            .args([
                test,
                "--exact",
                // A test that needs root is ignored unless asked for; its
                // children run whenever it does.
                "--include-ignored",
                "--nocapture",
                "--test-threads=1",
                "--quiet",
            ])
            .env(ROLE_VAR, role)
            .envs(vars)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {} as {role}: {e}", exe.display()));
        let stdin = process.stdin.take();
        let stdout = process
            .stdout
            .take()
            .unwrap_or_else(|| unreachable!("piped"));
        let mut stderr = process
            .stderr
            .take()
            .unwrap_or_else(|| unreachable!("piped"));
        let (sender, reports) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(report) = line.strip_prefix(REPORT_PREFIX)
                    && sender.send(report.to_owned()).is_err()
                {
                    break;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        Child {
            name: format!("{role} (pid {})", process.id()),
            process,
            stdin,
            reports,
            stderr: Some(stderr),
        }
    }

    /// Sends one line to the child.
    pub fn send(&mut self, line: &str) {
        let Some(stdin) = self.stdin.as_mut() else {
            panic!("{}: input already closed", self.name);
        };
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("send to {}: {e}", self.name));
    }

    /// The child's next report, or `None` if it exited without another one.
    /// Panics, with the child's stderr, if it neither reports nor exits within
    /// [`WAIT_BOUND`].
    pub fn next_report(&mut self) -> Option<String> {
        match self.reports.recv_timeout(WAIT_BOUND) {
            Ok(line) => Some(line),
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => {
                self.fail(&format!("sent nothing for {WAIT_BOUND:?}"))
            }
        }
    }

    /// Waits for a report, failing with the child's stderr if it exits first.
    pub fn expect_report(&mut self) -> String {
        match self.next_report() {
            Some(line) => line,
            None => self.fail("exited without reporting"),
        }
    }

    /// Kills the child with SIGKILL (no destructors, no flushing: a crash) and
    /// returns every report it had written before it died.
    pub fn kill(mut self) -> Vec<String> {
        // The child may have exited already; then there is nothing to kill.
        let _ = self.process.kill();
        let _ = self.wait_status();
        // The reader thread ends at end of file, which comes once the pipe is
        // drained: nothing the child wrote before dying is missed.
        self.reports.iter().collect()
    }

    /// Closes the child's input, waits for it to exit however it does (a child
    /// that crashes on purpose, say) and returns how, with its reports.
    pub fn wait(mut self) -> (ExitStatus, Vec<String>) {
        let status = self.wait_status();
        (status, self.reports.iter().collect())
    }

    /// Closes the child's input, waits for it to exit and returns its remaining
    /// reports; fails with its stderr if it did not exit successfully.
    pub fn finish(mut self) -> Vec<String> {
        self.stdin = None;
        let status = self.wait_status();
        // The reader thread ends at end of file, after the last report.
        let reports: Vec<String> = self.reports.iter().collect();
        if !status.success() {
            self.fail(&format!("failed with {status}"));
        }
        reports
    }

    fn wait_status(&mut self) -> ExitStatus {
        self.stdin = None;
        self.process
            .wait()
            .unwrap_or_else(|e| panic!("wait for {}: {e}", self.name))
    }

    /// Fails the test with what went wrong and everything the child printed to
    /// stderr (stopping it first, so that stderr is complete).
    fn fail(&mut self, what: &str) -> ! {
        let _ = self.process.kill();
        let _ = self.process.wait();
        let stderr = self
            .stderr
            .take()
            .and_then(|thread| thread.join().ok())
            .unwrap_or_default();
        panic!("child {} {what}; its stderr:\n{stderr}", self.name)
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        // Never leave a child running after a failed test.
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// The variables that tell a child where its store is.
pub fn store_vars(root: &Path) -> HashMap<&'static str, String> {
    HashMap::from([("JOBSAFE_TEST_STORE", root.display().to_string())])
}

/// In a child: the store directory the parent passed with [`store_vars`].
pub fn store_root() -> std::path::PathBuf {
    var("JOBSAFE_TEST_STORE").into()
}
