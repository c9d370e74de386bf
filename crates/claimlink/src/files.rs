//! Crash-safe file writing: write to a temporary name in the same directory, then rename.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Creates `path` with `contents` and `mode`, refusing to replace an existing file.
/// The file appears complete or not at all.
pub(crate) fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    if path.exists() {
        bail!("{} already exists; refusing to overwrite it", path.display());
    }
    write_atomic(path, contents, mode)
}

/// Writes `path` atomically (temp file + fsync + rename).
pub(crate) fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = temp_name(path);
    let result = (|| -> std::io::Result<()> {
        let mut f = create_with_mode(&tmp, mode)?;
        f.write_all(contents)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot write {}", path.display()))
}

/// Creates a new file with `mode` (0600 for secrets), failing if it exists.
pub(crate) fn create_with_mode(path: &Path, mode: u32) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new().write(true).create_new(true).mode(mode).open(path)
}

fn temp_name(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Reads a file of at most `max` bytes, naming it in every error.
pub(crate) fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>> {
    let meta = fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if meta.len() > max {
        bail!("{}: file is {} bytes, more than the {max} accepted", path.display(), meta.len());
    }
    fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}
