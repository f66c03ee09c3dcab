//! The `file_reader` tool: reads text files under one root the user names, with the extensions and the size
//! cap its `file_access` entry gives, and nothing else. A requested path must be relative and free of `..`;
//! it is resolved (symlinks followed) and must still lie under the root, and on Linux the opened descriptor's
//! own path is checked again, so a link swapped in between the check and the open cannot escape either.

use crate::error::{Error, Result};
use crate::format::agent::FileAccess;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

/// Files one directory read returns at most.
pub const MAX_DIR_FILES: usize = 64;

#[derive(Clone, Debug)]
pub struct FileReader {
    /// Canonical.
    root: PathBuf,
    access: FileAccess,
}

/// One file read: its path relative to the root, and its text.
#[derive(Clone, Debug, PartialEq)]
pub struct FileText {
    pub path: String,
    pub text: String,
}

impl FileReader {
    /// A reader confined to the directory `root`.
    pub fn new(access: FileAccess, root: &Path) -> Result<FileReader> {
        let canon = root.canonicalize().map_err(|e| Error::io(root, e))?;
        if !canon.is_dir() {
            return Err(Error::Usage(format!("{}: the file_reader root must be a directory", root.display())));
        }
        Ok(FileReader { root: canon, access })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn tool_id(&self) -> &str {
        &self.access.tool_id
    }

    pub fn extensions(&self) -> &[String] {
        &self.access.extensions
    }

    /// Resolves `rel` under the root, refusing absolute paths, `..`, escapes through symlinks and paths that
    /// do not exist. Returns the canonical path.
    pub fn resolve(&self, rel: &str) -> Result<PathBuf> {
        let refuse = |why: &str| Error::Usage(format!("{}: {rel:?}: {why}", self.access.tool_id));
        let p = Path::new(rel);
        if rel.is_empty() || rel.contains('\0') {
            return Err(refuse("an empty path"));
        }
        for c in p.components() {
            match c {
                Component::Normal(_) | Component::CurDir => {}
                Component::ParentDir => return Err(refuse("\"..\" is not allowed")),
                Component::RootDir | Component::Prefix(_) => {
                    return Err(refuse("absolute paths are not allowed (give a path relative to the root)"))
                }
            }
        }
        let canon = self.root.join(p).canonicalize().map_err(|e| refuse(&format!("cannot be read: {e}")))?;
        if !canon.starts_with(&self.root) {
            return Err(refuse("resolves outside the root (a symlink leads out)"));
        }
        Ok(canon)
    }

    fn allowed_extension(&self, path: &Path) -> bool {
        let ext = path.extension().and_then(|e| e.to_str()).map(|e| format!(".{}", e.to_ascii_lowercase()));
        ext.is_some_and(|e| self.access.extensions.contains(&e))
    }

    /// The relative path of a canonical path under the root, `/`-separated.
    fn relative(&self, canon: &Path) -> String {
        let rel = canon.strip_prefix(&self.root).unwrap_or(canon);
        let s: Vec<_> = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
        if s.is_empty() {
            ".".into()
        } else {
            s.join("/")
        }
    }

    /// Reads the text file `rel`.
    pub fn read(&self, rel: &str) -> Result<FileText> {
        let canon = self.resolve(rel)?;
        self.read_canonical(rel, &canon)
    }

    fn read_canonical(&self, rel: &str, canon: &Path) -> Result<FileText> {
        let tool = &self.access.tool_id;
        // Both the name asked for and the file it resolves to must carry an allowed extension.
        if !self.allowed_extension(Path::new(rel)) || !self.allowed_extension(canon) {
            return Err(Error::Usage(format!(
                "{tool}: {rel:?}: only files ending in {} may be read",
                self.access.extensions.join(", ")
            )));
        }
        let f = crate::files::open_regular(canon).map_err(|e| Error::io(canon, e))?;
        self.check_descriptor(&f, rel)?;
        let len = f.metadata().map_err(|e| Error::io(canon, e))?.len();
        let max = self.access.max_file_bytes;
        if len > max {
            return Err(Error::Usage(format!("{tool}: {rel:?}: {len} bytes is over the tool's cap of {max}")));
        }
        let mut bytes = Vec::with_capacity(len as usize);
        f.take(max + 1).read_to_end(&mut bytes).map_err(|e| Error::io(canon, e))?;
        if bytes.len() as u64 > max {
            return Err(Error::Usage(format!("{tool}: {rel:?}: grew over the tool's cap of {max} bytes")));
        }
        let text =
            String::from_utf8(bytes).map_err(|_| Error::Usage(format!("{tool}: {rel:?}: not a UTF-8 text file")))?;
        Ok(FileText { path: self.relative(canon), text })
    }

    /// On Linux, the path the kernel gives the open descriptor must still be under the root.
    fn check_descriptor(&self, f: &std::fs::File, rel: &str) -> Result<()> {
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::io::AsRawFd;
            let link = PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()));
            if let Ok(real) = std::fs::read_link(&link) {
                if !real.starts_with(&self.root) {
                    return Err(Error::Usage(format!(
                        "{}: {rel:?}: the file opened lies outside the root",
                        self.access.tool_id
                    )));
                }
            }
        }
        let _ = (f, rel);
        Ok(())
    }

    /// Reads `rel`: a file, or a directory's files with an allowed extension (not recursive, sorted by name,
    /// at most [`MAX_DIR_FILES`]; other entries skipped).
    pub fn read_path(&self, rel: &str) -> Result<Vec<FileText>> {
        let canon = self.resolve(rel)?;
        if !canon.is_dir() {
            return Ok(vec![self.read_canonical(rel, &canon)?]);
        }
        let mut names: Vec<String> = std::fs::read_dir(&canon)
            .map_err(|e| Error::io(&canon, e))?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| !n.starts_with('.') && self.allowed_extension(Path::new(n)))
            .collect();
        names.sort();
        if names.len() > MAX_DIR_FILES {
            return Err(Error::Usage(format!(
                "{}: {rel:?} holds {} readable files, over the {MAX_DIR_FILES} one read takes",
                self.access.tool_id,
                names.len()
            )));
        }
        let base = self.relative(&canon);
        let mut out = Vec::new();
        for n in names {
            let child = if base == "." { n } else { format!("{base}/{n}") };
            let c = self.resolve(&child)?;
            if c.is_file() {
                out.push(self.read_canonical(&child, &c)?);
            }
        }
        Ok(out)
    }
}

/// Files as one text for a prompt: each under a `--- path ---` line.
pub fn render_files(files: &[FileText]) -> String {
    let mut s = String::new();
    for f in files {
        s.push_str(&format!("--- {} ---\n{}", f.path, f.text));
        if !f.text.ends_with('\n') {
            s.push('\n');
        }
    }
    s
}
