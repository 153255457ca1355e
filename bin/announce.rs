fn main() -> std::process::ExitCode {
    formic::exit::exit_70_on_panic("announce");
    formic::cli::main("announce", formic::announce::run)
}
