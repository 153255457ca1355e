fn main() -> std::process::ExitCode {
    formic::exit::exit_70_on_panic("pack");
    formic::cli::main("pack", formic::pack::run)
}
