fn main() -> std::process::ExitCode {
    formic::cli::main("offer", formic::offer::run)
}
