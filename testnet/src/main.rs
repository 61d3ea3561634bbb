//! `bftnet`: local bftd testnets and the deterministic simulator.

mod cli;

/// The same allocator as `bftd` (docs/design-notes.md, "Allocator"): the load
/// generator allocates per request too.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
