//! The floor of `make bench`'s instructions phase: reads one container's log stream from the
//! engine and only decodes it (HTTP head, chunked body, frames), making no messages. Its
//! instructions per line are what any reader of the engine's stream pays.
//!
//!   cargo run --release --features internals --example floor -- CONTAINER [LINES]
fn main() {
    eprintln!("floor: not written yet");
    std::process::exit(1);
}
