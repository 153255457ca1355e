fn main() -> std::process::ExitCode {
    formic::exit::exit_70_on_panic("roll");
    formic::cli::main("roll", formic::roll::run)
}
