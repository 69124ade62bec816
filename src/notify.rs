//! The systemd notification protocol (sd_notify(3)) without libsystemd.
//!
//! Owns two things: sending one state datagram (`READY=1`, `WATCHDOG=1`, `STATUS=…`,
//! `STOPPING=1`) to the socket named by `$NOTIFY_SOCKET`, and reading the watchdog interval from
//! `$WATCHDOG_USEC`. Outside systemd both are silent no-ops. This module never panics and never
//! fails the caller: a lost notification is at worst a restart by the watchdog, which is what
//! the watchdog is for.

use std::env;
use std::ffi::OsStr;
use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Sends `state` (one or more `KEY=VALUE` lines) to the service manager.
///
/// Does nothing when `$NOTIFY_SOCKET` is unset or empty; errors are swallowed after a debug
/// log line, since there is nobody to report them to but the manager that did not listen.
pub fn notify(state: &str) {
    let Some(socket) = env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if socket.is_empty() {
        return;
    }
    if let Err(err) = send_to(&socket, state.as_bytes()) {
        log::debug!("sd_notify {state:?} to {socket:?} failed: {err}");
    }
}

/// How often to send `WATCHDOG=1`: half of `$WATCHDOG_USEC`, as sd_watchdog_enabled(3)
/// advises, or `None` when the watchdog is off or meant for another process.
pub fn watchdog_interval() -> Option<Duration> {
    let usec = env::var("WATCHDOG_USEC").ok()?;
    let pid = env::var("WATCHDOG_PID").ok();
    interval_from(&usec, pid.as_deref(), std::process::id())
}

/// The pure part of [`watchdog_interval`], kept apart so tests need no environment.
fn interval_from(usec: &str, watchdog_pid: Option<&str>, our_pid: u32) -> Option<Duration> {
    if let Some(pid) = watchdog_pid {
        if pid.trim().parse::<u32>().ok()? != our_pid {
            return None;
        }
    }
    let usec: u64 = usec.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    Some(Duration::from_micros(usec / 2))
}

/// Sends one datagram to a path or, with a leading `@`, to an abstract-namespace socket.
fn send_to(socket: &OsStr, payload: &[u8]) -> io::Result<()> {
    let addr = address(socket)?;
    let sock = UnixDatagram::unbound()?;
    let sent = sock.send_to_addr(payload, &addr)?;
    if sent != payload.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "notification datagram cut short",
        ));
    }
    Ok(())
}

fn address(socket: &OsStr) -> io::Result<SocketAddr> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = socket.as_bytes();
    match bytes.strip_prefix(b"@") {
        Some(name) => abstract_address(name),
        None => SocketAddr::from_pathname(socket),
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn abstract_address(name: &[u8]) -> io::Result<SocketAddr> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn abstract_address(_name: &[u8]) -> io::Result<SocketAddr> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract sockets exist only on Linux",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::Mutex;

    /// The tests below change process-wide environment variables; one at a time.
    static ENV_LOCK: Mutex<()> = Mutex::new(());

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = env::temp_dir().join(format!(
            "container-logd-notify-{tag}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        dir
    }

    fn receive(sock: &UnixDatagram) -> String {
        sock.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("set timeout");
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).expect("datagram received");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn sends_states_to_a_path_socket() {
        let _guard = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let dir = temp_dir("path");
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind");
        env::set_var("NOTIFY_SOCKET", &path);
        notify("READY=1");
        assert_eq!(receive(&sock), "READY=1");
        notify("STATUS=following 3 containers");
        assert_eq!(receive(&sock), "STATUS=following 3 containers");
        notify("WATCHDOG=1\nSTATUS=ok");
        assert_eq!(receive(&sock), "WATCHDOG=1\nSTATUS=ok");
        env::remove_var("NOTIFY_SOCKET");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        let _guard = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let name = format!("container-logd-test-{}", std::process::id());
        let addr = abstract_address(name.as_bytes()).expect("abstract address");
        let sock = UnixDatagram::bind_addr(&addr).expect("bind abstract");
        env::set_var("NOTIFY_SOCKET", format!("@{name}"));
        notify("READY=1");
        assert_eq!(receive(&sock), "READY=1");
        env::remove_var("NOTIFY_SOCKET");
    }

    #[test]
    fn silent_without_a_socket_or_with_a_dead_one() {
        let _guard = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        env::remove_var("NOTIFY_SOCKET");
        notify("READY=1");
        env::set_var("NOTIFY_SOCKET", "");
        notify("READY=1");
        env::set_var("NOTIFY_SOCKET", "/nonexistent/container-logd/notify.sock");
        notify("READY=1");
        env::remove_var("NOTIFY_SOCKET");
    }

    #[test]
    fn watchdog_interval_is_half_and_only_for_us() {
        assert_eq!(
            interval_from("30000000", None, 42),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            interval_from("30000000", Some("42"), 42),
            Some(Duration::from_secs(15))
        );
        assert_eq!(interval_from("30000000", Some("41"), 42), None);
        assert_eq!(interval_from("30000000", Some("x"), 42), None);
        assert_eq!(interval_from("0", None, 42), None);
        assert_eq!(interval_from("soon", None, 42), None);
    }

    #[test]
    fn watchdog_interval_reads_the_environment() {
        let _guard = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        env::set_var("WATCHDOG_USEC", "2000000");
        env::set_var("WATCHDOG_PID", std::process::id().to_string());
        assert_eq!(watchdog_interval(), Some(Duration::from_secs(1)));
        env::set_var("WATCHDOG_PID", "1");
        assert_eq!(watchdog_interval(), None);
        env::remove_var("WATCHDOG_PID");
        env::remove_var("WATCHDOG_USEC");
        assert_eq!(watchdog_interval(), None);
    }
}
