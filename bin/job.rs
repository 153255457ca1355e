fn main() -> std::process::ExitCode {
    formic::exit::exit_70_on_panic("job");
    formic::cli::main("job", formic::job::tool::run)
}
