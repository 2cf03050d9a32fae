//! Unix domain socket transport of the pipes (Linux and other Unixes).
//!
//! Owns the socket files: `<dir>/<account>.sock`, mode 0600 from the moment the path exists
//! (the socket is bound under a temporary name, chmod-ed, then renamed into place), stale files
//! of a dead agent replaced, a live listener's file never stolen, and the file removed when the
//! server goes away — only if it is still the one this process created. It must never delete
//! anything that is not a socket.

use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use echo_statemachine::ids::AccountId;
use tokio::net::UnixListener;
use tokio::sync::mpsc;

use super::{endpoint_path, BoxRead, BoxWrite, PipeError};

/// `sockaddr_un.sun_path` holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

/// A socket file this process created; removed on drop if it is still ours.
pub(super) struct SocketFile {
    path: PathBuf,
    dev_ino: (u64, u64),
}

impl SocketFile {
    pub(super) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Ok(m) = std::fs::symlink_metadata(&self.path) {
            if (m.dev(), m.ino()) == self.dev_ino {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PipeError + '_ {
    move |source| PipeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Binds `<dir>/<account>.sock` with mode 0600.
pub(super) fn bind(
    dir: &Path,
    account: &AccountId,
) -> Result<(UnixListener, SocketFile), PipeError> {
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(dir))?;
    }
    let path = endpoint_path(dir, account);
    let tmp = dir.join(format!(".{}.{}.tmp", account.as_str(), std::process::id()));
    for p in [&path, &tmp] {
        if p.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(PipeError::PathTooLong {
                path: p.clone(),
                max: MAX_SOCKET_PATH,
            });
        }
    }
    match std::fs::symlink_metadata(&path) {
        Ok(m) if !m.file_type().is_socket() => return Err(PipeError::NotASocket { path }),
        Ok(_) => match std::os::unix::net::UnixStream::connect(&path) {
            Ok(_) => return Err(PipeError::InUse { path }),
            Err(e) => {
                tracing::info!(path = %path.display(), error = %e, "replacing stale pipe socket");
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(PipeError::Io { path, source: e }),
    }
    if let Ok(m) = std::fs::symlink_metadata(&tmp) {
        if m.file_type().is_socket() {
            let _ = std::fs::remove_file(&tmp);
        }
    }
    let listener = UnixListener::bind(&tmp).map_err(io_err(&tmp))?;
    let cleanup = |e: PipeError| {
        let _ = std::fs::remove_file(&tmp);
        e
    };
    check_dir(dir, &tmp).map_err(cleanup)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .map_err(io_err(&tmp))
        .map_err(cleanup)?;
    // rename() replaces a stale socket atomically; connections resolve the inode, which is
    // the listening socket's whatever its name.
    std::fs::rename(&tmp, &path)
        .map_err(io_err(&path))
        .map_err(cleanup)?;
    let m = std::fs::symlink_metadata(&path).map_err(io_err(&path))?;
    Ok((
        listener,
        SocketFile {
            path,
            dev_ino: (m.dev(), m.ino()),
        },
    ))
}

/// The socket directory must belong to this process's user and be writable by nobody else:
/// whoever can write the directory can swap the socket for their own. The owner is compared
/// with the owner of the socket just bound (this process's effective user), which needs no
/// `unsafe` call to learn the user id.
fn check_dir(dir: &Path, ours: &Path) -> Result<(), PipeError> {
    let d = std::fs::metadata(dir).map_err(io_err(dir))?;
    let me = std::fs::symlink_metadata(ours).map_err(io_err(ours))?;
    let reason = if d.uid() != me.uid() {
        Some(format!(
            "owned by uid {}, not by this process (uid {})",
            d.uid(),
            me.uid()
        ))
    } else if d.mode() & 0o022 != 0 {
        Some(format!(
            "writable by group or others (mode {:o})",
            d.mode() & 0o777
        ))
    } else {
        None
    };
    match reason {
        Some(reason) => Err(PipeError::UnsafeDir {
            path: dir.to_path_buf(),
            reason,
        }),
        None => Ok(()),
    }
}

pub(super) async fn accept_loop(
    listener: UnixListener,
    account: AccountId,
    conns: mpsc::Sender<(BoxRead, BoxWrite)>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let (r, w) = stream.into_split();
                if conns.send((Box::new(r), Box::new(w))).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(account = %account, error = %e, "pipe accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// Connects to a terminal's socket (the terminal side of [`bind`]).
pub(super) async fn connect(path: &Path) -> std::io::Result<(BoxRead, BoxWrite)> {
    let s = tokio::net::UnixStream::connect(path).await?;
    let (r, w) = s.into_split();
    Ok((Box::new(r), Box::new(w)))
}
