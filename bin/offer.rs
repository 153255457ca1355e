fn main() -> std::process::ExitCode {
    formic::exit::exit_70_on_panic("offer");
    formic::cli::main("offer", formic::offer::run)
}
