fn main() -> std::process::ExitCode {
    formic::cli::main("announce", formic::announce::run)
}
