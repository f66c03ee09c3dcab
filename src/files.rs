//! Opening the files omex reads: only regular files (a FIFO, device or directory given where a file belongs
//! is refused at once instead of blocking in `open` or reading forever), and never more bytes than a caller
//! allows (a JSON file is read whole, so its size is bounded before anything is allocated).

use std::io::{Error, ErrorKind, Result};
use std::path::Path;

/// The largest JSON or text file omex reads whole (graph.json, metadata.json, tokenizer.json, memory traces).
/// A 262k-entry tokenizer.json is about 35 MB; this leaves room for ten times that.
pub const MAX_TEXT_FILE: u64 = 512 << 20;

fn kind_of(ft: std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_fifo() {
            return "a FIFO";
        }
        if ft.is_socket() {
            return "a socket";
        }
        if ft.is_block_device() || ft.is_char_device() {
            return "a device";
        }
    }
    if ft.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

/// Errors are `std::io::Error`s without the path, so each caller wraps them in its own error type (which
/// names the file).
///
/// Opens `path` for reading if it is a regular file (after following symlinks). On Unix the open itself does
/// not block: it is made with `O_NONBLOCK`, which a regular file ignores, so a FIFO with no writer cannot hang.
pub fn open_regular(path: &Path) -> Result<std::fs::File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.custom_flags(libc::O_NONBLOCK);
    }
    let f = opts.open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("is {}, not a regular file", kind_of(meta.file_type())),
        ));
    }
    #[cfg(unix)]
    {
        // Back to blocking reads; harmless for a regular file, but keeps the descriptor conventional.
        use std::os::unix::io::AsRawFd;
        // SAFETY: fcntl on a descriptor this function owns; F_GETFL/F_SETFL take and return plain ints.
        unsafe {
            let fd = f.as_raw_fd();
            let flags = libc::fcntl(fd, libc::F_GETFL);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
            }
        }
    }
    Ok(f)
}

/// Reads a whole regular file of at most `max` bytes.
pub fn read_regular(path: &Path, max: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let f = open_regular(path)?;
    let len = f.metadata()?.len();
    if len > max {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("{len} bytes is more than the {max} omex reads from a file of this kind"),
        ));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    // `take` bounds the read even if the file grows underneath us.
    f.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(Error::new(ErrorKind::InvalidInput, format!("grew past {max} bytes while being read")));
    }
    Ok(bytes)
}

/// Reads a whole regular text file of at most `max` bytes as UTF-8.
pub fn read_regular_string(path: &Path, max: u64) -> Result<String> {
    String::from_utf8(read_regular(path, max)?)
        .map_err(|e| Error::new(ErrorKind::InvalidData, format!("not UTF-8: {e}")))
}

/// Memory-maps a regular file read-only.
#[cfg(not(target_arch = "wasm32"))]
pub fn map_regular(path: &Path) -> Result<memmap2::Mmap> {
    let f = open_regular(path)?;
    // SAFETY: opened read-only; omex never writes a file it has mapped. A file truncated by another process
    // underneath the map is the one case mmap cannot defend against (as with every mmap reader).
    unsafe { memmap2::Mmap::map(&f) }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn refuses_a_fifo_without_blocking() {
        let dir = std::env::temp_dir().join(format!("omex-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = read_regular(&fifo, 10).unwrap_err().to_string();
        assert!(e.contains("FIFO"), "{e}");
        let e = read_regular(&dir, 10).unwrap_err().to_string();
        assert!(e.contains("directory"), "{e}");
        std::fs::write(dir.join("big"), [0u8; 11]).unwrap();
        let e = read_regular(&dir.join("big"), 10).unwrap_err().to_string();
        assert!(e.contains("11 bytes"), "{e}");
        assert_eq!(read_regular(&dir.join("big"), 11).unwrap().len(), 11);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// omex's own directory for its config and caches: `$OMEX_HOME`, else `$HOME/.omex`; none without either.
pub fn omex_home() -> Option<std::path::PathBuf> {
    match std::env::var_os("OMEX_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => Some(dir.into()),
        None => Some(std::path::PathBuf::from(std::env::var_os("HOME").filter(|v| !v.is_empty())?).join(".omex")),
    }
}
