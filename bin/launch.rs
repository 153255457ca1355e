fn main() -> std::process::ExitCode {
    formic::exit::exit_70_on_panic("launch");
    formic::cli::main("launch", formic::launch::run)
}
