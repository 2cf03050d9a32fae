//! Append-only JSON-lines files with fsync: the reference terminal's durable state.
//!
//! Owns opening a file (reading its complete lines, cutting off a torn last line left by a
//! crash mid-write), appending a batch of lines with one `fsync`, and compacting by atomic
//! replace. A complete line that is not JSON is corruption and refuses the open rather than
//! being skipped, because skipping could forget an intent or an execution. It must never hold
//! decisions: what the lines mean belongs to the machines' `recover` constructors.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Why a file could not be used.
#[derive(Debug)]
pub enum StoreError {
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A complete line (1-based `line`) is not a JSON object of the expected shape.
    Corrupt {
        path: PathBuf,
        line: usize,
        detail: String,
    },
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            StoreError::Corrupt { path, line, detail } => {
                write!(f, "{} line {line} is corrupt: {detail}", path.display())
            }
        }
    }
}

impl std::error::Error for StoreError {}

/// One append-only JSON-lines file.
#[derive(Debug)]
pub struct JsonlFile {
    path: PathBuf,
    file: File,
    /// A compaction renamed the file but its directory fsync failed: sync it before the next
    /// append is reported durable.
    dir_unsynced: bool,
}

impl JsonlFile {
    /// Opens (creating) `path` and returns its complete lines, parsed, in file order.
    pub fn open(path: &Path) -> Result<(JsonlFile, Vec<Value>), StoreError> {
        let io = |source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(io)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io)?;
        let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        if complete < bytes.len() {
            tracing::warn!(
                path = %path.display(),
                bytes = bytes.len() - complete,
                "cutting off a torn last line (crash in the middle of a write)"
            );
            file.set_len(complete as u64).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        file.seek(SeekFrom::End(0)).map_err(io)?;
        let mut values = Vec::new();
        for (n, raw) in bytes[..complete].split(|&b| b == b'\n').enumerate() {
            if raw.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let v: Value = serde_json::from_slice(raw).map_err(|e| StoreError::Corrupt {
                path: path.to_path_buf(),
                line: n + 1,
                detail: e.to_string(),
            })?;
            values.push(v);
        }
        Ok((
            JsonlFile {
                path: path.to_path_buf(),
                file,
                dir_unsynced: false,
            },
            values,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends the lines (each must end with `\n`) and fsyncs once. After a compaction whose
    /// directory fsync failed, the directory is synced first: a row is never reported durable
    /// while the name of the file holding it might not be.
    pub fn append(&mut self, lines: &[String]) -> std::io::Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        if self.dir_unsynced {
            sync_dir(&self.path)?;
            self.dir_unsynced = false;
        }
        let mut buf = String::with_capacity(lines.iter().map(String::len).sum());
        for l in lines {
            buf.push_str(l);
        }
        self.file.write_all(buf.as_bytes())?;
        self.file.sync_data()
    }

    /// The temporary file a compaction writes before renaming it over the file. One left
    /// behind by a crash is ignored by [`JsonlFile::open`] and overwritten by the next
    /// compaction.
    pub fn temp_path(&self) -> PathBuf {
        temp_path(&self.path)
    }

    /// Replaces the file's content with `lines` atomically: write a temporary file, fsync it,
    /// rename it over the file, fsync the directory. A crash before the rename leaves the old
    /// file whole; after it, the new one. Appends then go to the new file (its handle is the
    /// temporary file's, opened before the rename, so no append can reach the old inode).
    pub fn rewrite(&mut self, lines: &[String]) -> Result<(), StoreError> {
        self.rewrite_lines(lines.iter().cloned()).map(|_| ())
    }

    /// [`JsonlFile::rewrite`] from lines produced one at a time (a compaction need not hold
    /// the whole new file in memory); returns how many lines it wrote.
    pub fn rewrite_lines(
        &mut self,
        lines: impl IntoIterator<Item = String>,
    ) -> Result<usize, StoreError> {
        let io = |source| StoreError::Io {
            path: self.path.clone(),
            source,
        };
        let tmp = self.temp_path();
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io)?;
        let mut w = std::io::BufWriter::with_capacity(1 << 16, f);
        let mut n = 0;
        for l in lines {
            w.write_all(l.as_bytes()).map_err(io)?;
            n += 1;
        }
        let mut f = w.into_inner().map_err(|e| io(e.into_error()))?;
        f.sync_all().map_err(io)?;
        f.seek(SeekFrom::End(0)).map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        // From here the new content is the file's; an append must not go to the old inode.
        self.file = f;
        if let Err(e) = sync_dir(&self.path) {
            self.dir_unsynced = true;
            return Err(io(e));
        }
        Ok(n)
    }
}

fn temp_path(path: &Path) -> PathBuf {
    path.with_extension("compact.tmp")
}

/// fsync of the directory holding `path` (makes a rename durable).
fn sync_dir(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

/// Wall-clock milliseconds since the Unix epoch (timestamps in files and intents).
pub fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Wall-clock microseconds since the Unix epoch (the benchmark's latency fields).
pub fn wall_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// One JSON line (with `\n`) from a value.
pub fn line(v: &Value) -> String {
    let mut s = v.to_string();
    s.push('\n');
    s
}
