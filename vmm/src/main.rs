fn main() {
    eprintln!("form-vmm: not built yet");
    std::process::exit(1);
}
