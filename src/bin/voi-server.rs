fn main() -> std::process::ExitCode {
    voi::cli::server::main()
}
