//! `echo-core`: the core process (same as `echo core`).

fn main() -> std::process::ExitCode {
    echo_runtime::app::run_process("echo-core", |args| async move {
        echo_runtime::app::core::main(&args).await
    })
}
