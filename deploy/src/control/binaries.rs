//! Executables uploaded for versions that run custom code (`squall deploy --binary`), like a jar
//! uploaded to Flink: stored under the SHA-256 of their bytes in `<state dir>/binaries/` (mode
//! 0755, written atomically), and accepted only once they run (`--version` answers). A deployment
//! that names one runs its processes with it, across server restarts and upgrades.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;
use std::time::Duration;

use axum::body::Bytes;
use futures::{Stream, StreamExt as _};
use sha2::{Digest as _, Sha256};

use crate::files::publish;
use crate::values::BinaryHash;

/// How long `<executable> --version` may take.
const VERSION_TIMEOUT: Duration = Duration::from_secs(10);

/// An executable the server keeps.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct StoredBinary {
    /// Its SHA-256: what `POST /v1/deployments` takes as `binary`.
    #[schema(value_type = String)]
    pub sha256: BinaryHash,
    /// Its size.
    pub bytes: u64,
    /// What it answered to `--version`.
    pub version: String,
}

/// Why an upload was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The body is larger than the server accepts.
    #[error("the executable is larger than {limit} bytes")]
    TooLarge {
        /// The limit (`squall server --max-binary-bytes`).
        limit: u64,
    },
    /// The upload broke off.
    #[error("the upload broke off: {0}")]
    Body(String),
    /// The file does not run, or `--version` failed.
    #[error("the executable does not answer --version")]
    DoesNotRun {
        /// What running it printed, or why it could not run.
        output: String,
    },
    /// The server could not store it.
    #[error("cannot {what}: {error}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Why it failed.
        error: String,
    },
}

fn io(what: &'static str) -> impl Fn(std::io::Error) -> UploadError {
    move |e| UploadError::Io { what, error: e.to_string() }
}

/// Stores the executable streamed as `body` (at most `limit` bytes) in `dir`, once it has
/// answered `--version`.
pub async fn store<S, E>(dir: &Path, body: S, limit: u64) -> Result<StoredBinary, UploadError>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: std::fmt::Display,
{
    std::fs::create_dir_all(dir).map_err(io("create the binaries directory"))?;
    let tmp = dir.join(format!(".upload-{}", super::launcher::launch_id()));
    let result = receive(&tmp, body, limit).await;
    let stored = match result {
        Ok((hash, bytes)) => match check_runs(&tmp).await {
            Ok(version) => keep(&tmp, &dir.join(hash.as_str())).map(|()| StoredBinary { sha256: hash, bytes, version }),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    let _ = std::fs::remove_file(&tmp);
    stored
}

/// Writes `body` to `tmp` (executable, synced); its hash and size.
async fn receive<S, E>(tmp: &Path, body: S, limit: u64) -> Result<(BinaryHash, u64), UploadError>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: std::fmt::Display,
{
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o755)
        .open(tmp)
        .map_err(io("create the upload file"))?;
    let (mut hasher, mut bytes) = (Sha256::new(), 0u64);
    let mut body = std::pin::pin!(body);
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| UploadError::Body(e.to_string()))?;
        bytes += chunk.len() as u64;
        if bytes > limit {
            return Err(UploadError::TooLarge { limit });
        }
        hasher.update(&chunk);
        // Chunks are small (tens of KiB): writing them to the page cache does not hold up the runtime.
        file.write_all(&chunk).map_err(io("write the upload file"))?;
    }
    // The mode given at creation is reduced by the umask: make it executable whatever that is.
    file.set_permissions(std::fs::Permissions::from_mode(0o755)).map_err(io("make the upload executable"))?;
    file.sync_all().map_err(io("sync the upload file"))?;
    Ok((BinaryHash::of_digest(&hasher.finalize().into()), bytes))
}

/// Runs `path --version`; what it printed, if it succeeded.
async fn check_runs(path: &Path) -> Result<String, UploadError> {
    let mut attempts = 0;
    let output = loop {
        let run = tokio::process::Command::new(path)
            .arg("--version")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        match tokio::time::timeout(VERSION_TIMEOUT, run).await {
            Err(_) => {
                return Err(UploadError::DoesNotRun { output: format!("no answer within {VERSION_TIMEOUT:?}") });
            }
            // Another thread's child may hold the file open for writing between its fork and exec
            // (the descriptor is close-on-exec): that passes in moments.
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && attempts < 20 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(Err(e)) => return Err(UploadError::DoesNotRun { output: format!("cannot run it: {e}") }),
            Ok(Ok(output)) => break output,
        }
    };
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    let text = text.trim().to_owned();
    if !output.status.success() {
        return Err(UploadError::DoesNotRun { output: format!("{} ({})", text, output.status) });
    }
    Ok(text)
}

/// Moves the checked upload `tmp` to `path`, unless the same bytes are there already.
fn keep(tmp: &Path, path: &Path) -> Result<(), UploadError> {
    if path.is_file() {
        return Ok(());
    }
    publish(tmp, path).map_err(io("store the executable"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: &[&[u8]]) -> impl Stream<Item = Result<Bytes, std::io::Error>> + use<> {
        let parts: Vec<Result<Bytes, std::io::Error>> = parts.iter().map(|p| Ok(Bytes::copy_from_slice(p))).collect();
        futures::stream::iter(parts)
    }

    #[tokio::test]
    async fn keeps_what_runs_under_its_hash_and_nothing_else() {
        let dir = std::env::temp_dir().join(format!("squall-binaries-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let script: &[u8] = b"#!/bin/sh\necho \"squall 9.9.9 $1\"\n";
        let stored = store(&dir, chunks(&[&script[..10], &script[10..]]), 1024).await.unwrap();
        assert_eq!(stored.version, "squall 9.9.9 --version");
        assert_eq!(stored.bytes, script.len() as u64);
        let digest: [u8; 32] = Sha256::digest(script).into();
        assert_eq!(stored.sha256, BinaryHash::of_digest(&digest));
        let path = dir.join(stored.sha256.as_str());
        assert_eq!(std::fs::read(&path).unwrap(), script);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o755);
        // The same bytes again: the same name, nothing added.
        assert_eq!(store(&dir, chunks(&[script]), 1024).await.unwrap(), stored);

        let fails = store(&dir, chunks(&[b"#!/bin/sh\necho no such option >&2; exit 2\n"]), 1024).await.unwrap_err();
        assert!(
            matches!(&fails, UploadError::DoesNotRun { output } if output.starts_with("no such option (exit status: 2)")),
            "{fails:?}"
        );
        let garbage = store(&dir, chunks(&[b"\x7fELF not really"]), 1024).await.unwrap_err();
        assert!(
            matches!(&garbage, UploadError::DoesNotRun { output } if output.starts_with("cannot run it")),
            "{garbage:?}"
        );
        let large = store(&dir, chunks(&[&[b'x'; 600], &[b'x'; 600]]), 1024).await.unwrap_err();
        assert!(matches!(large, UploadError::TooLarge { limit: 1024 }), "{large:?}");
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from(stored.sha256.as_str())], "no upload left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
