fn main() -> std::process::ExitCode {
    formic::exit::exit_70_on_panic("reap");
    formic::cli::main("reap", formic::reap::run)
}
