// mimalloc, not glibc's malloc: pack allocates a spec's worth of small pieces per job on
// two threads at once, where glibc's thread arenas grow a few pages per system call (see
// Cargo.toml).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    formic::exit::exit_70_on_panic("pack");
    formic::cli::main("pack", formic::pack::run)
}
