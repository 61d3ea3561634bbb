//! `bftnet`: local bftd testnets and the deterministic simulator.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
