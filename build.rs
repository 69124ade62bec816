//! The build script owns one thing: a release build of the binary for Linux is linked with
//! packaging/hot-text.ld, which puts the functions the agent runs at the start of its code, in
//! an output section of their own (packaging/hot-text.py says why, and how the script is made).
//! `CLD_HOT_TEXT=0` leaves it out, for builds that valgrind reads (`make bench` builds one with
//! symbols): valgrind names only functions in `.text`. Tests, examples, the library and debug
//! builds are linked as they were. `CLD_LINK_MAP=FILE` has the linker write its map there, which
//! names the section of every function even in a stripped binary (packaging/hot-text.py reads
//! it).

use std::env;

fn main() {
    println!("cargo:rerun-if-changed=packaging/hot-text.ld");
    println!("cargo:rerun-if-env-changed=CLD_HOT_TEXT");
    println!("cargo:rerun-if-env-changed=CLD_LINK_MAP");
    let linux = env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    let release = env::var("PROFILE").is_ok_and(|p| p == "release");
    let wanted = env::var("CLD_HOT_TEXT").map_or(true, |v| v != "0");
    if linux && release && wanted {
        let dir = env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
        println!("cargo:rustc-link-arg-bins=-Wl,-T,{dir}/packaging/hot-text.ld");
    }
    if let Ok(map) = env::var("CLD_LINK_MAP") {
        println!("cargo:rustc-link-arg-bins=-Wl,-Map={map}");
    }
}
