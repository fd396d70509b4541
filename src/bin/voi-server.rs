fn main() -> std::process::ExitCode {
    voi::server::cli::main(|keep_running| Box::pin(voi::demo::run(keep_running)))
}
