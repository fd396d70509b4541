fn main() -> std::process::ExitCode {
    voi::cli::agent::main()
}
