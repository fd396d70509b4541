fn main() -> std::process::ExitCode {
    voi::agent::cli::main()
}
