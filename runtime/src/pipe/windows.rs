//! Windows named-pipe transport of the pipes: `\\.\pipe\echo-<account>`.
//!
//! NOT COMPILED IN THIS REPOSITORY'S CI (no Windows target is installed where it was written):
//! it is kept deliberately small and follows tokio's documented `named_pipe` server loop. It
//! owns creating pipe instances (the first with `first_pipe_instance(true)`, so a second agent
//! for the same account fails instead of sharing the name), handing each connected instance
//! to the account's actor, and the terminal's connect with retry on `ERROR_PIPE_BUSY`. Remote
//! clients are rejected (tokio's default). It must never decide about frames.

use std::path::Path;
use std::time::Duration;

use echo_statemachine::ids::AccountId;
use tokio::net::windows::named_pipe::{ClientOptions, NamedPipeServer, ServerOptions};
use tokio::sync::mpsc;

use super::{endpoint_path, BoxRead, BoxWrite, PipeError};

/// `ERROR_PIPE_BUSY`: every instance is connected; the client waits and tries again.
const ERROR_PIPE_BUSY: i32 = 231;

/// Creates the first instance of the account's pipe.
pub(super) fn create_first(account: &AccountId) -> Result<(NamedPipeServer, String), PipeError> {
    let name = endpoint_path(Path::new(""), account)
        .to_string_lossy()
        .into_owned();
    let server = ServerOptions::new()
        .first_pipe_instance(true)
        .create(&name)
        .map_err(|source| PipeError::Io {
            path: name.clone().into(),
            source,
        })?;
    Ok((server, name))
}

pub(super) async fn accept_loop(
    mut server: NamedPipeServer,
    name: String,
    account: AccountId,
    conns: mpsc::Sender<(BoxRead, BoxWrite)>,
) {
    loop {
        if let Err(e) = server.connect().await {
            tracing::warn!(account = %account, error = %e, "named pipe connect failed");
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        // Create the next instance before handing this one on, so a client always finds one.
        let next = loop {
            match ServerOptions::new().create(&name) {
                Ok(n) => break n,
                Err(e) => {
                    tracing::error!(account = %account, error = %e, "named pipe instance creation failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        let connected = std::mem::replace(&mut server, next);
        let (r, w) = tokio::io::split(connected);
        if conns.send((Box::new(r), Box::new(w))).await.is_err() {
            return;
        }
    }
}

/// Opens the account's pipe from the terminal side, waiting while every instance is busy.
pub(super) async fn connect(name: &Path) -> std::io::Result<(BoxRead, BoxWrite)> {
    loop {
        match ClientOptions::new().open(name) {
            Ok(client) => {
                let (r, w) = tokio::io::split(client);
                return Ok((Box::new(r), Box::new(w)));
            }
            Err(e) if e.raw_os_error() == Some(ERROR_PIPE_BUSY) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e),
        }
    }
}
