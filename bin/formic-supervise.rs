fn main() -> std::process::ExitCode {
    formic::cli::main("formic-supervise", formic::supervise::main)
}
