use std::process::ExitCode;

fn main() -> ExitCode {
    nftpol::cli::main(std::env::args_os())
}
