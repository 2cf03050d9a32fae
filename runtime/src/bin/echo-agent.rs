//! `echo-agent`: an agent process (same as `echo agent`).

fn main() -> std::process::ExitCode {
    echo_runtime::app::run_process("echo-agent", |args| async move {
        echo_runtime::app::agent::main(&args).await
    })
}
