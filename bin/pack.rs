fn main() -> std::process::ExitCode {
    formic::cli::main("pack", formic::pack::run)
}
