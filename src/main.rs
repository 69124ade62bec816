fn main() {
    println!("container-logd {}", env!("CARGO_PKG_VERSION"));
}
