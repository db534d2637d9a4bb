use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // The per-VM supervisor skips clap and the CLI's log filter: it lives as long as its VM,
    // and what it never runs it never maps (its memory is a benchmark target).
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "__supervise") {
        kvmctl::domain::supervisor::main_from_args(&args[2..]);
    }
    // The shell's completion calls back here with KVMCTL_COMPLETE set (`kvmctl completion bash`
    // prints the registration). kvmctl's own variable: a stray COMPLETE in the environment
    // must not turn every command into a completion.
    clap_complete::CompleteEnv::with_factory(<kvmctl::cli::Cli as clap::CommandFactory>::command)
        .var(kvmctl::cli::COMPLETE_VAR)
        .complete();
    // `kvmctl capabilities | head`: print! panics once the reader has gone; that is the end
    // of the output, not an error.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let p = info.payload();
        let msg = p.downcast_ref::<String>().map(String::as_str).or(p.downcast_ref::<&str>().copied()).unwrap_or("");
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(0);
        }
        report(info)
    }));
    // Ctrl+C, SIGTERM and SIGHUP remove this command's temp files before it dies.
    kvmctl::state::interrupt::remove_temps_on_signals();
    // clap exits with 2 on usage errors and 0 for --help/--version.
    // virsh's named forms (`start --domain web1`) become kvmctl's positionals first.
    let cli = kvmctl::cli::Cli::parse_from(kvmctl::cli::virsh_args::rewrite(std::env::args_os().collect()));
    kvmctl::cli::init_tracing(cli.verbose, cli.quiet);
    match kvmctl::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // `kvmctl console VM --log | head`: the reader went away, which is not an error.
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::SUCCESS
        }
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
