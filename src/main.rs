//! Kept small: all behaviour lives in the library so tests can reach it.

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    kubestow::run::main(&args)
}
