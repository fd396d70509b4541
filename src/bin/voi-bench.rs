fn main() -> std::process::ExitCode {
    voi::cli::bench::main()
}
