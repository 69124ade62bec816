//! `container-logd`: parses the command line, loads the configuration and hands over to the
//! agent (`run`), the checker (`check`) or the log reader (`logs`). Nothing else lives here.

use std::process::ExitCode;

use container_logd::config::{Config, VARS};
use container_logd::{agent, agentlog, cli};

const USAGE: &str = "\
container-logd — follows the logs of every container, keeps them locally and pushes them to MQTT

usage:
  container-logd [run]      run the agent in the foreground (what systemd starts)
  container-logd check      check the configuration, the engine and the broker
  container-logd logs [--app ID] [--service NAME] [--level LEVEL] [--since TIME] [--limit N] [-f|--follow] [--json]
                            read logs from a running agent's API
  container-logd logs --broker URL --host NAME [filters] [-f] | --hosts
                            the same over MQTT, from any agent with MQTT_QUERY=true
  container-logd --help | --version

Configuration comes from environment variables (the service reads /etc/default/container-logd);
`container-logd --help` lists them.
Exit codes: 0 clean stop, 1 fatal error, 2 bad configuration or usage.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None => run(),
        Some("run") if args.len() == 1 => run(),
        Some("-h" | "--help" | "help") => {
            say(&help());
            ExitCode::SUCCESS
        }
        Some("-V" | "--version" | "version") => {
            say(&format!("container-logd {}", env!("CARGO_PKG_VERSION")));
            ExitCode::SUCCESS
        }
        Some("check") => ExitCode::from(cli::check::main(&args[1..])),
        Some("logs") => ExitCode::from(cli::logs::main(&args[1..])),
        Some(other) => {
            eprintln!("container-logd: unknown command or argument '{other}'\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// The usage and every variable with its default and meaning, from the configuration's table.
fn help() -> String {
    let mut text = format!("{USAGE}\n\nvariables (VAR=default; an empty value means the default):");
    for var in VARS {
        text.push_str(&format!(
            "\n  {}={}\n      {}",
            var.name, var.default, var.help
        ));
    }
    text
}

/// Prints to stdout; a closed pipe (`container-logd --help | head -1`) is not an error.
fn say(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{text}");
}

fn run() -> ExitCode {
    let cfg = match Config::from_process_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("container-logd: configuration: {e}");
            return ExitCode::from(2);
        }
    };
    agentlog::init(cfg.log_level);
    // A panic in any thread would leave a limping agent: exit, and let systemd restart us.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        log::error!("panic: {info}; exiting so the service manager restarts the agent");
        std::process::exit(1);
    }));
    match agent::run(cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::from(1)
        }
    }
}
