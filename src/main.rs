use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // clap exits with 2 on usage errors and 0 for --help/--version.
    let cli = kvmctl::cli::Cli::parse();
    kvmctl::cli::init_tracing(cli.verbose, cli.quiet);
    match kvmctl::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut msg = format!("error: {e}");
            for cause in e.chain().skip(1) {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    msg.push_str(&format!(": {c}"));
                }
            }
            eprintln!("{msg}");
            ExitCode::FAILURE
        }
    }
}
