fn main() -> std::process::ExitCode {
    gigafactory_api::cli::main()
}
