fn main() -> std::process::ExitCode {
    formic::cli::main("reap", formic::reap::run)
}
