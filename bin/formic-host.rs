fn main() -> std::process::ExitCode {
    formic::exit::exit_70_on_panic("formic-host");
    formic::cli::main("formic-host", formic::transport::serve::run)
}
