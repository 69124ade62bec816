//! The .deb and the files it ships, tested the way a user meets them.
//!
//! Owns: the systemd unit (systemd-analyze verify and its security score), the package's
//! contents and metadata (`dpkg-deb`), and a real install, remove, reinstall and purge with
//! `dpkg` on this machine, with systemd not running, as on a build host or in a container. The
//! dpkg tests need root on Debian and fail, never skip, without it. (The settings file is
//! checked against the configuration's table by a unit test in `config.rs`.)
//!
//! The package comes from `$CARGO_DEB_PATH` (`make test` builds it first with `make deb`);
//! without it, the tests build it once with `cargo deb` in a target directory of their own.
//! Every command runs under a deadline.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

const PACKAGE: &str = "container-logd";
const SHORT: Duration = Duration::from_secs(60);
const DPKG: Duration = Duration::from_secs(180);
const BUILD: Duration = Duration::from_secs(30 * 60);

mod util;

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `cmd` to completion or kills it at `limit`; panics with the command line on timeout.
fn run(cmd: &mut Command, limit: Duration) -> Output {
    let line = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {line}: {e}"));
    // Drain both pipes on threads so a chatty command cannot block on a full pipe.
    let mut out_pipe = child.stdout.take().expect("stdout piped");
    let mut err_pipe = child.stderr.take().expect("stderr piped");
    let out_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out_pipe.read_to_end(&mut buf);
        buf
    });
    let err_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err_pipe.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{line} did not finish within {limit:?}");
            }
            Ok(None) => thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("waiting for {line}: {e}"),
        }
    };
    Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    }
}

/// Runs `cmd` and panics, showing its output, unless it exits 0; returns its stdout.
fn run_ok(cmd: &mut Command, limit: Duration) -> String {
    let line = format!("{cmd:?}");
    let out = run(cmd, limit);
    assert!(
        out.status.success(),
        "{line} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sh(script: &str) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(script);
    cmd
}

fn require_root_on_debian() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        == Some("0");
    assert!(
        root,
        "the packaging tests install the .deb with dpkg and must run as root \
         (sudo make test); refusing to pass without having tested anything"
    );
    assert!(
        Path::new("/usr/bin/dpkg").exists(),
        "the packaging tests need Debian's dpkg (/usr/bin/dpkg is missing)"
    );
}

/// The .deb under test, built at most once per test run.
fn deb_path() -> &'static Path {
    static DEB: OnceLock<PathBuf> = OnceLock::new();
    DEB.get_or_init(|| {
        if let Some(path) = std::env::var_os("CARGO_DEB_PATH").filter(|p| !p.is_empty()) {
            let path = PathBuf::from(path);
            assert!(
                path.is_file(),
                "CARGO_DEB_PATH={} is not a file",
                path.display()
            );
            return path;
        }
        // The target directory of `cargo test` may still be locked by it: build elsewhere.
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| manifest_dir().join("target"))
            .join("packaging-test");
        let arch = run_ok(Command::new("dpkg").arg("--print-architecture"), SHORT);
        let path = target.join(format!(
            "debian/{PACKAGE}_{}_{}.deb",
            env!("CARGO_PKG_VERSION"),
            arch.trim()
        ));
        if !path.is_file() {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            run_ok(
                Command::new(cargo)
                    .args(["deb", "--locked", "--output"])
                    .arg(&path)
                    .current_dir(manifest_dir())
                    .env("CARGO_TARGET_DIR", &target),
                BUILD,
            );
        }
        path
    })
}

fn read_repo_file(rel: &str) -> String {
    let path = manifest_dir().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn unit_passes_systemd_analyze_verify_and_security() {
    let unit = read_repo_file("etc/container-logd.service");
    for needed in [
        "Type=notify",
        "WatchdogSec=30",
        "Restart=always",
        "StateDirectory=container-logd",
        "EnvironmentFile=-/etc/default/container-logd",
        "User=container-logd",
        "Environment=LOG_DIR=/var/lib/container-logd/logs",
        "Environment=STATE_DIR=/var/lib/container-logd/state",
        "ProtectSystem=strict",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
    ] {
        assert!(
            unit.lines().any(|l| l.trim() == needed),
            "the unit lacks {needed}"
        );
    }
    // A group named here that the host lacks stops the unit from starting (216/GROUP, in a
    // loop); postinst puts the user in the engine's group instead.
    assert!(
        !unit.lines().any(|l| l.starts_with("SupplementaryGroups=")),
        "the unit names a supplementary group"
    );
    assert!(
        Path::new("/usr/bin/systemd-analyze").exists(),
        "systemd-analyze is missing: apt-get install -y systemd (tests/env.sh deps)"
    );
    let out = run_ok(
        Command::new(manifest_dir().join("packaging/check-unit.sh"))
            .arg(env!("CARGO_BIN_EXE_container-logd")),
        SHORT,
    );
    assert!(out.contains("verify: ok"), "{out}");
    assert!(out.contains("Overall exposure level"), "{out}");
}

#[test]
fn deb_holds_the_binary_the_unit_and_the_conffile() {
    let deb = deb_path();
    let contents = run_ok(Command::new("dpkg-deb").arg("-c").arg(deb), SHORT);
    let has = |path: &str| contents.lines().any(|l| l.ends_with(path));
    assert!(has("./usr/bin/container-logd"), "no binary in:\n{contents}");
    assert!(
        has("/lib/systemd/system/container-logd.service"),
        "no unit in:\n{contents}"
    );
    assert!(
        has("./etc/default/container-logd"),
        "no settings file in:\n{contents}"
    );
    let binary_line = contents
        .lines()
        .find(|l| l.ends_with("./usr/bin/container-logd"))
        .unwrap_or_default();
    assert!(
        binary_line.starts_with("-rwxr-xr-x 0/0 ")
            || binary_line.starts_with("-rwxr-xr-x root/root "),
        "the binary is not root's and executable: {binary_line}"
    );

    let field = |name: &str| {
        run_ok(
            Command::new("dpkg-deb").args(["-f"]).arg(deb).arg(name),
            SHORT,
        )
        .trim()
        .to_string()
    };
    assert_eq!(field("Package"), PACKAGE);
    assert_eq!(field("Version"), env!("CARGO_PKG_VERSION"));
    let depends = field("Depends");
    assert!(depends.contains("adduser"), "Depends: {depends}");
    assert!(
        depends.contains("init-system-helpers"),
        "Depends: {depends}"
    );
    let arch = field("Architecture");
    assert!(
        deb.to_string_lossy().ends_with(&format!("_{arch}.deb")),
        "{} is not named for its architecture {arch}",
        deb.display()
    );
}

#[test]
fn deb_marks_the_conffile_and_has_its_maintainer_scripts() {
    let deb = deb_path();
    let conffiles = run_ok(
        Command::new("dpkg-deb").arg("-I").arg(deb).arg("conffiles"),
        SHORT,
    );
    assert!(
        conffiles
            .lines()
            .any(|l| l.trim() == "/etc/default/container-logd"),
        "conffiles: {conffiles}"
    );
    let postinst = run_ok(
        Command::new("dpkg-deb").arg("-I").arg(deb).arg("postinst"),
        SHORT,
    );
    assert!(postinst.contains("adduser --system"), "{postinst}");
    assert!(postinst.contains("deb-systemd-helper"), "{postinst}");
    assert!(!postinst.contains("#DEBHELPER#"), "{postinst}");
    let postrm = run_ok(
        Command::new("dpkg-deb").arg("-I").arg(deb).arg("postrm"),
        SHORT,
    );
    assert!(
        postrm.contains("rm -rf /var/lib/container-logd"),
        "{postrm}"
    );
}

/// Purges the package when a test ends, even by a failed assertion.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let _ = run(Command::new("dpkg").args(["--purge", PACKAGE]), DPKG);
    }
}

fn user_exists() -> bool {
    run(Command::new("getent").args(["passwd", PACKAGE]), SHORT)
        .status
        .success()
}

fn dpkg(args: &[&str], deb: Option<&Path>) -> String {
    let mut cmd = Command::new("dpkg");
    cmd.args(args);
    if let Some(deb) = deb {
        cmd.arg(deb);
    }
    // Outside a real boot the maintainer scripts must still succeed: systemd is not PID 1 here.
    cmd.env("DEBIAN_FRONTEND", "noninteractive");
    run_ok(&mut cmd, DPKG)
}

const WANTS_LINK: &str = "/etc/systemd/system/multi-user.target.wants/container-logd.service";

#[test]
fn install_remove_reinstall_purge() {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _lock = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    require_root_on_debian();
    let deb = deb_path();
    let _purge = Purge;
    dpkg(&["--purge", PACKAGE], None);

    // Install, then install again: the second run takes the upgrade path of the scripts.
    dpkg(&["-i"], Some(deb));
    dpkg(&["-i"], Some(deb));
    assert!(Path::new("/usr/bin/container-logd").exists());
    assert!(Path::new("/etc/default/container-logd").exists());
    assert!(
        user_exists(),
        "postinst did not create the container-logd user"
    );
    let has_docker_group = run(Command::new("getent").args(["group", "docker"]), SHORT)
        .status
        .success();
    if has_docker_group {
        let groups = run_ok(Command::new("id").args(["-nG", PACKAGE]), SHORT);
        assert!(
            groups.split_whitespace().any(|g| g == "docker"),
            "container-logd is not in the docker group: {groups}"
        );
    }
    assert!(
        Path::new(WANTS_LINK).exists(),
        "the unit was not enabled ({WANTS_LINK} missing)"
    );

    // The installed binary runs with the installed settings file sourced the way systemd reads it.
    let version = run_ok(
        &mut sh("set -a; . /etc/default/container-logd; exec /usr/bin/container-logd --version"),
        SHORT,
    );
    assert!(
        version.contains(env!("CARGO_PKG_VERSION")),
        "--version said {version:?}"
    );
    installed_agent_runs_as_its_user();

    // Remove: the binary goes, the user and the settings (a conffile) stay.
    dpkg(&["-r", PACKAGE], None);
    assert!(!Path::new("/usr/bin/container-logd").exists());
    assert!(user_exists(), "remove deleted the container-logd user");
    assert!(Path::new("/etc/default/container-logd").exists());

    // Reinstall over the kept settings, leave some state behind, then purge: all of it goes.
    dpkg(&["-i"], Some(deb));
    std::fs::create_dir_all("/var/lib/container-logd/state").expect("create state dir");
    std::fs::write("/var/lib/container-logd/state/cursors.json", "{}").expect("write state");
    dpkg(&["--purge", PACKAGE], None);
    assert!(!Path::new("/var/lib/container-logd").exists());
    assert!(!Path::new("/etc/default/container-logd").exists());
    assert!(!Path::new(WANTS_LINK).exists());
    assert!(!Path::new("/usr/bin/container-logd").exists());
    assert!(user_exists(), "purge deleted the container-logd user");
}

/// The installed binary, as the service runs it: its own user (in the docker group), the
/// installed settings file, the unit's state directory. It must reach the engine, answer on
/// its API and stop cleanly on SIGTERM.
fn installed_agent_runs_as_its_user() {
    let host = util::engine();
    let state = Path::new("/var/lib/container-logd");
    std::fs::create_dir_all(state).expect("state dir");
    run_ok(
        Command::new("chown").args([
            "-R",
            "container-logd:container-logd",
            "/var/lib/container-logd",
        ]),
        SHORT,
    );
    let port = util::free_port();
    let script = format!(
        "set -a; . /etc/default/container-logd; DOCKER_HOST={host} API_LISTEN=127.0.0.1:{port} \
         MQTT_BROKER=off LOG_DIR=/var/lib/container-logd/logs STATE_DIR=/var/lib/container-logd/state \
         exec setpriv --reuid=container-logd --regid=container-logd --init-groups /usr/bin/container-logd"
    );
    let mut child = sh(&script)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the installed agent");
    let mut health = (0, String::new());
    let up = util::wait_until(util::PATIENCE, || {
        health = util::http_get(port, "/api/v1/health", None);
        health.0 == 200
    });
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().expect("wait for the agent");
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    assert!(
        up,
        "the installed agent did not become healthy: {health:?}\n{err}"
    );
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(
        Path::new("/var/lib/container-logd/state/cursors.json").exists(),
        "the service user could write its state: {err}"
    );
}
