fn main() -> std::process::ExitCode {
    formic::cli::main("launch", formic::launch::run)
}
