//! Services as real processes: the binaries `cargo build` produced, configured through their
//! environment exactly as in production.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

/// `target/<profile>/<name>`: next to the running executable, or one level up from a test
/// executable's `deps` directory.
pub fn binary(name: &str) -> PathBuf {
    let path = binary_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the services first (`cargo build --workspace --bins`; scripts/test does)",
        path.display()
    );
    path
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Where a process's output goes: `target/test-logs/`.
fn log_path(name: &str) -> PathBuf {
    let dir = binary_dir().join("../test-logs");
    std::fs::create_dir_all(&dir).expect("a log directory");
    dir.join(format!("{name}-{}.log", uuid::Uuid::new_v4().simple()))
}

fn binary_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the executable has a path");
    let dir = exe.parent().expect("an executable lives in a directory");
    if dir.ends_with("deps") {
        dir.parent()
            .expect("deps lives in target/<profile>")
            .to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// Whether process `pid` holds a socket listening on TCP `port` (from `/proc/net/tcp{,6}` and the
/// process's file descriptors).
fn listens_on(pid: u32, port: u16) -> bool {
    listening_addresses(pid)
        .iter()
        .any(|address| address.port() == port)
}

/// The addresses on which process `pid` listens for TCP connections (from `/proc/net/tcp{,6}`
/// and the process's file descriptors): `127.0.0.1:9090` for a loopback listener, `0.0.0.0:9090`
/// or `[::]:9090` for one on every interface.
pub fn listening_addresses(pid: u32) -> Vec<std::net::SocketAddr> {
    const LISTEN: &str = "0A";
    let Ok(descriptors) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let sockets: Vec<String> = descriptors
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .map(|target| target.to_string_lossy().into_owned())
        .filter(|target| target.starts_with("socket:["))
        .collect();
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter_map(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let listening = fields.get(3) == Some(&LISTEN);
                    let socket = format!("socket:[{}]", fields.get(9)?);
                    (listening && sockets.contains(&socket))
                        .then(|| kernel_address(fields.get(1)?))?
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// An address as `/proc/net/tcp{,6}` writes it: the IP as 32-bit words in the machine's byte
/// order (little-endian here), hexadecimal, then `:` and the port in hexadecimal.
fn kernel_address(field: &str) -> Option<std::net::SocketAddr> {
    let (ip, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words = (0..ip.len() / 8)
        .map(|i| u32::from_str_radix(&ip[i * 8..i * 8 + 8], 16).map(u32::swap_bytes))
        .collect::<Result<Vec<u32>, _>>()
        .ok()?;
    let ip: std::net::IpAddr = match words.as_slice() {
        [v4] => std::net::Ipv4Addr::from(*v4).into(),
        [a, b, c, d] => {
            let mut octets = [0u8; 16];
            for (i, word) in [a, b, c, d].into_iter().enumerate() {
                octets[i * 4..i * 4 + 4].copy_from_slice(&word.to_be_bytes());
            }
            std::net::Ipv6Addr::from(octets).into()
        }
        _ => return None,
    };
    Some(std::net::SocketAddr::new(ip, port))
}

/// A running service. Killed when dropped; [`ServiceProcess::stop`] shuts it down gracefully.
pub struct ServiceProcess {
    name: String,
    child: Child,
    /// The port of each port variable, the one serving `/health` first.
    ports: Vec<(String, u16)>,
    log: PathBuf,
}

impl ServiceProcess {
    /// Starts binary `name` with `env`, listening on a free port given in `port_variable`, and
    /// waits until its `/health` answers.
    ///
    /// A port is free when it is chosen, but a test running in parallel can take it before the
    /// service binds it. A start that fails that way is retried on another port.
    pub async fn start(name: &str, port_variable: &str, env: &[(String, String)]) -> Self {
        Self::start_choosing(name, &[port_variable], env, free_port).await
    }

    /// [`ServiceProcess::start`] for a service that listens on several ports, one per variable
    /// of `port_variables` (the first serves `/health`), from `choose`; a start that fails
    /// because a port was taken is retried with newly chosen ports for all of them.
    pub async fn start_choosing(
        name: &str,
        port_variables: &[&str],
        env: &[(String, String)],
        mut choose: impl FnMut() -> u16,
    ) -> Self {
        const ATTEMPTS: u32 = 5;
        let mut attempt = 1;
        loop {
            let mut process = Self::spawn(name, port_variables, env, &mut choose);
            let Err(status) = process.wait_until_healthy().await else {
                return process;
            };
            let log = process.log_text();
            if attempt == ATTEMPTS || !log.contains("Address already in use") {
                panic!("{name} exited with {status} before it was ready:\n{log}");
            }
            attempt += 1;
        }
    }

    fn spawn(
        name: &str,
        port_variables: &[&str],
        env: &[(String, String)],
        choose: &mut impl FnMut() -> u16,
    ) -> Self {
        assert!(!port_variables.is_empty(), "{name} needs a port");
        let ports: Vec<(String, u16)> = port_variables
            .iter()
            .map(|variable| ((*variable).to_owned(), choose()))
            .collect();
        let log = log_path(name);
        let out = std::fs::File::create(&log).expect("a log file");
        let err = out.try_clone().expect("a second handle");
        let child = Command::new(binary(name))
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(ports.iter().map(|(k, port)| (k.as_str(), port.to_string())))
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Self {
            name: name.to_owned(),
            child,
            ports,
            log,
        }
    }

    /// Runs `command` (a program and its arguments, e.g. a tool of the operators' stack) with
    /// `env` as process `name`, and waits until `ready` (a URL) answers with success. Its ports
    /// are the caller's business: [`ServiceProcess::port`] and [`ServiceProcess::url`] have none
    /// to tell.
    pub async fn launch(
        name: &str,
        command: &[String],
        env: &[(String, String)],
        ready: &str,
    ) -> Self {
        Self::try_launch(name, command, env, ready)
            .await
            .unwrap_or_else(|log| panic!("{name} exited before it was ready:\n{log}"))
    }

    /// [`ServiceProcess::launch`], returning what the process printed when it exits before it
    /// is ready (e.g. because a port it was given was taken meanwhile).
    pub async fn try_launch(
        name: &str,
        command: &[String],
        env: &[(String, String)],
        ready: &str,
    ) -> Result<Self, String> {
        let (program, args) = command.split_first().expect("a program to run");
        let log = log_path(name);
        let out = std::fs::File::create(&log).expect("a log file");
        let err = out.try_clone().expect("a second handle");
        let child = Command::new(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({program}): {e}"));
        let mut process = Self {
            name: name.to_owned(),
            child,
            ports: Vec::new(),
            log,
        };
        match process.wait_until_answering(ready).await {
            Ok(()) => Ok(process),
            Err(status) => Err(format!("{status}\n{}", process.log_text())),
        }
    }

    /// Waits until `/health` answers; the exit status if the process ended before that.
    async fn wait_until_healthy(&mut self) -> Result<(), std::process::ExitStatus> {
        let health = format!("{}/health", self.url());
        self.wait_until_answering(&health).await
    }

    /// Waits until `url` answers with success; the exit status if the process ended before that.
    async fn wait_until_answering(&mut self, url: &str) -> Result<(), std::process::ExitStatus> {
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(status);
            }
            let health = client.get(url).timeout(Duration::from_secs(1)).send().await;
            // What answers must be this process: a parallel test's service can hold the port
            // this one was given and failed to bind.
            let ours = match (self.ports.first(), self.child.id()) {
                (Some(&(_, port)), Some(pid)) => listens_on(pid, port),
                _ => true,
            };
            if health.is_ok_and(|r| r.status().is_success()) && ours {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("{} did not become ready:\n{}", self.name, self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The port serving `/health`.
    pub fn port(&self) -> u16 {
        self.ports[0].1
    }

    /// The port given to the service in `variable`, one of those it was started on.
    pub fn port_of(&self, variable: &str) -> u16 {
        self.ports
            .iter()
            .find(|(name, _)| name == variable)
            .map(|&(_, port)| port)
            .unwrap_or_else(|| panic!("{} was not started with a port in {variable}", self.name))
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port())
    }

    /// Everything the process printed so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, signal: &str) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args([&format!("-{signal}"), &pid.to_string()])
                .status();
        }
    }

    /// Freezes the process (SIGSTOP), as a hung service is: it keeps its connections and
    /// answers nothing, neither requests nor messages.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Lets a [paused](ServiceProcess::pause) process run again (SIGCONT).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    /// Sends SIGTERM and waits (up to `grace`) for a clean exit; kills it after that. Returns
    /// whether it exited by itself with success.
    pub async fn stop(&mut self, grace: Duration) -> bool {
        self.signal("TERM");
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(Ok(status)) => status.success(),
            _ => {
                let _ = self.child.kill().await;
                false
            }
        }
    }

    /// Waits up to `patience` for the process to exit by itself (e.g. at a crash point of
    /// `messaging::crash`); its exit status, or `None` while it is still running.
    pub async fn exited_within(&mut self, patience: Duration) -> Option<std::process::ExitStatus> {
        tokio::time::timeout(patience, self.child.wait())
            .await
            .ok()
            .and_then(Result::ok)
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_found_listening_on_its_own_port_and_not_on_another() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(listens_on(std::process::id(), port));
        let elsewhere = free_port();
        assert!(!listens_on(std::process::id(), elsewhere));
        drop(listener);
        assert!(!listens_on(std::process::id(), port));
    }

    #[test]
    fn a_process_s_listening_addresses_name_their_interface() {
        let loopback = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let everywhere = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let addresses = listening_addresses(std::process::id());
        assert!(
            addresses.contains(&loopback.local_addr().unwrap()),
            "{addresses:?}"
        );
        assert!(
            addresses.contains(&everywhere.local_addr().unwrap()),
            "{addresses:?}"
        );
        if let Ok(six) = std::net::TcpListener::bind("[::1]:0") {
            let addresses = listening_addresses(std::process::id());
            assert!(
                addresses.contains(&six.local_addr().unwrap()),
                "{addresses:?}"
            );
        }
    }

    #[test]
    fn kernel_addresses_are_read_in_the_machine_s_byte_order() {
        assert_eq!(
            kernel_address("0100007F:2382"),
            Some("127.0.0.1:9090".parse().unwrap())
        );
        assert_eq!(
            kernel_address("00000000000000000000000001000000:1F90"),
            Some("[::1]:8080".parse().unwrap())
        );
        assert_eq!(kernel_address("nonsense"), None);
    }
}
