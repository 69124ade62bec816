//! Certificates for TLS tests, made with `openssl` in a test's own directory: a CA (`ca.crt`),
//! a second, unrelated CA (`other-ca.crt`, the wrong one), and a server certificate for
//! `localhost`/`127.0.0.1` signed by the first (`server.crt`, `server.key`).

use std::net::TcpStream;
use std::path::Path;
use std::process::Command;

use super::broker::{Broker, BrokerOpts};
use super::{free_port, wait_until, PATIENCE};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `-newkey` arguments for a P-256 key without a passphrase, written to `key`.
fn ec_key_args(key: &str) -> Vec<&str> {
    vec![
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        key,
    ]
}

fn make_ca(dir: &Path, name: &str) {
    let key = format!("{name}.key");
    let crt = format!("{name}.crt");
    let subj = format!("/CN={name}");
    let mut args = vec!["req", "-x509"];
    args.extend(ec_key_args(&key));
    args.extend(["-out", &crt, "-days", "2", "-subj", &subj]);
    openssl(dir, &args);
}

/// Writes `ca.crt`, `other-ca.crt`, `server.crt` and `server.key` into `dir`.
pub fn make_certs(dir: &Path) {
    make_ca(dir, "ca");
    make_ca(dir, "other-ca");
    let mut args = vec!["req"];
    args.extend(ec_key_args("server.key"));
    args.extend(["-out", "server.csr", "-subj", "/CN=localhost"]);
    openssl(dir, &args);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .expect("ext.cnf");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
}

/// Makes the certificates in `d` and starts a broker with a plain listener (its `port`) and a
/// TLS one for `localhost` (the second value), once the TLS listener accepts connections.
pub fn broker(d: &Path) -> (Broker, u16) {
    make_certs(d);
    let tls_port = free_port();
    let broker = Broker::start_opts(BrokerOpts {
        extra: format!(
            "listener {tls_port} 127.0.0.1\ncafile {0}/ca.crt\ncertfile {0}/server.crt\nkeyfile {0}/server.key",
            d.display()
        ),
        ..Default::default()
    });
    let up = wait_until(PATIENCE, || {
        TcpStream::connect(("127.0.0.1", tls_port)).is_ok()
    });
    assert!(up, "the TLS listener did not come up");
    (broker, tls_port)
}
