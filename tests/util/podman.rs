//! The private Podman service of `tests/env.sh podman-up` (Podman's Docker API on its own
//! socket) and containers run there, removed when dropped.

use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use super::{start_service, IMAGE};

/// These machines lack CAP_SYS_RESOURCE: without explicit limits `podman run` fails raising
/// its own.
const ULIMITS: [&str; 4] = [
    "--ulimit",
    "nofile=20000:20000",
    "--ulimit",
    "nproc=4096:4096",
];

/// The private Podman service's `DOCKER_HOST`, started on first use.
pub fn podman_engine() -> &'static str {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| start_service("podman-up", "podman-host"))
}

/// Runs the podman CLI as a client of the private service.
pub fn podman(args: &[&str]) -> Output {
    Command::new("podman")
        .arg("--url")
        .arg(podman_engine())
        .args(args)
        .output()
        .expect("podman CLI")
}

/// A container of the private Podman service, removed (with `podman rm -f`) when dropped.
pub struct PodContainer {
    pub name: String,
    pub id: String,
}

impl PodContainer {
    /// `podman run -d --network none --ulimit … --name NAME <extra> cld-busybox sh -c SCRIPT`.
    pub fn run(name: &str, extra: &[&str], script: &str) -> PodContainer {
        let mut args = vec!["run", "-d", "--network", "none", "--name", name];
        args.extend_from_slice(&ULIMITS);
        args.extend_from_slice(extra);
        args.extend_from_slice(&[IMAGE, "sh", "-c", script]);
        let out = podman(&args);
        assert!(
            out.status.success(),
            "podman run {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        PodContainer {
            name: name.to_string(),
            id: String::from_utf8_lossy(&out.stdout).trim().to_string(),
        }
    }

    pub fn short(&self) -> &str {
        &self.id[..12]
    }

    /// Waits for the container to exit; its exit code.
    pub fn wait(&self, timeout: Duration) -> i32 {
        let out = Command::new("timeout")
            .arg(format!("{}", timeout.as_secs().max(1)))
            .args(["podman", "--url", podman_engine(), "wait", &self.name])
            .output()
            .expect("podman wait");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("container {} did not exit in {timeout:?}", self.name))
    }
}

impl Drop for PodContainer {
    fn drop(&mut self) {
        let _ = podman(&["rm", "-f", "-t", "0", &self.name]);
    }
}
