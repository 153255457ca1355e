fn main() -> std::process::ExitCode {
    formic::exit::exit_70_on_panic("formic-supervise");
    formic::cli::main("formic-supervise", formic::supervise::main)
}
