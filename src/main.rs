fn main() -> std::process::ExitCode {
    maildir_migrate::cli::main()
}
