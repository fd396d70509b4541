fn main() -> std::process::ExitCode {
    voi::server::cli::main()
}
