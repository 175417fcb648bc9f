//! Real `baton` processes (the binary this crate builds), for tests that kill them, and a
//! private PostgreSQL server that a test may restart without disturbing the others.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The `baton` binary built for this test run.
const BATON: &str = env!("CARGO_BIN_EXE_baton");

/// Runs `baton <args>` to completion against `url`; panics with its stderr unless it succeeds.
/// Returns its stdout.
pub(crate) fn baton_cmd(url: &str, args: &[&str]) -> String {
    let out = Command::new(BATON)
        .args(args)
        .env("DATABASE_URL", url)
        .output()
        .expect("running baton");
    assert!(
        out.status.success(),
        "baton {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A `baton` process running in the background, its output captured in files.
pub(crate) struct BatonProcess {
    name: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    /// Set once the process has exited (or been killed and reaped).
    status: Option<ExitStatus>,
}

impl BatonProcess {
    /// Starts `baton <args>` against `url`, logging to `<dir>/<name>.{out,err}`.
    pub(crate) fn start(name: &str, dir: &Path, url: &str, args: &[&str]) -> BatonProcess {
        let stdout = dir.join(format!("{name}.out"));
        let stderr = dir.join(format!("{name}.err"));
        let child = Command::new(BATON)
            .args(args)
            .env("DATABASE_URL", url)
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).expect("creating a stdout file"))
            .stderr(File::create(&stderr).expect("creating a stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        BatonProcess {
            name: name.to_owned(),
            child,
            stdout,
            stderr,
            status: None,
        }
    }

    /// What the process printed on stderr so far.
    pub(crate) fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// What the process printed on stdout so far.
    pub(crate) fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// Panics unless the process is still running.
    pub(crate) fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("polling a child") {
            panic!(
                "{} exited early ({status}); stderr:\n{}",
                self.name,
                self.stderr()
            );
        }
    }

    /// Whether [`kill`](Self::kill) ended this process.
    pub(crate) fn was_killed(&self) -> bool {
        self.status.is_some()
    }

    /// SIGKILL: no cleanup, no lease release; what it owned must be rescued by others.
    pub(crate) fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.status = Some(self.child.wait().expect("reaping a killed child"));
    }

    /// SIGTERM, then waits up to `timeout` for a graceful exit; panics unless it exits 0.
    pub(crate) async fn stop(&mut self, timeout: Duration) {
        self.assert_running();
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(sent.success(), "could not signal {}", self.name);
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("polling a child") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not stop within {timeout:?} of SIGTERM; stderr:\n{}",
                self.name,
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        self.status = Some(status);
        assert!(
            status.success(),
            "{} exited with {status} after SIGTERM; stderr:\n{}",
            self.name,
            self.stderr()
        );
    }
}

impl Drop for BatonProcess {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A PostgreSQL server of the test's own (initdb in a temporary directory, a free port), so
/// that a test can restart it while every other test keeps the shared one.
#[derive(Debug)]
pub(crate) struct PrivateServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

impl PrivateServer {
    /// Creates and starts the server. Panics (fails the test) when that is impossible.
    pub(crate) fn start() -> PrivateServer {
        let bindir = Command::new("pg_config")
            .arg("--bindir")
            .output()
            .expect("pg_config (PostgreSQL's server binaries) is needed for a private server");
        let bin = PathBuf::from(String::from_utf8_lossy(&bindir.stdout).trim());
        let dir = tempfile::Builder::new()
            .prefix("baton_pg_")
            .tempdir()
            .expect("a temporary directory");
        let server = PrivateServer {
            port: free_port(),
            dir,
            bin,
        };
        // initdb and postgres refuse to run as root: run them as the `postgres` user then.
        if running_as_root() {
            let status = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(server.dir.path())
                .status()
                .expect("chown");
            assert!(status.success(), "chown of the private server's directory");
        }
        server.run(
            "initdb",
            &[
                "-D",
                &server.data(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        server.pg_ctl("start");
        server
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// A URL for `database` on this server.
    pub(crate) fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Stops the server (fast shutdown: sessions are terminated) and starts it again.
    pub(crate) fn restart(&self) {
        self.pg_ctl("restart");
    }

    fn pg_ctl(&self, action: &str) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log").display().to_string();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-o",
                &options,
                "-l",
                &log,
                "-m",
                "fast",
                "-w",
                action,
            ],
        );
    }

    fn run(&self, program: &str, args: &[&str]) {
        let path = self.bin.join(program);
        let mut cmd = if running_as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        let out = cmd
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap_or_else(|e| panic!("running {program}: {e}"));
        assert!(
            out.status.success(),
            "{program} {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        let path = self.bin.join("pg_ctl");
        let data = self.data();
        let args = ["-D", data.as_str(), "-m", "immediate", "-w", "stop"];
        let _ = if running_as_root() {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&path)
                .args(args)
                .output()
        } else {
            Command::new(&path).args(args).output()
        };
    }
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port")
}
