//! `echo-core`: the core process (same as `echo core`).

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("echo-core: starting the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(echo_runtime::app::core::main(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("echo-core: {e}");
            ExitCode::from(2)
        }
    }
}
