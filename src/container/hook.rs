//! The guidance hook: a user's program run as `HOOK NODE_ID GUIDANCE` (no shell) for a node with `guidance`
//! (the seeds' external links); its standard output joins the node's prompt.

use crate::error::{Error, Result};
use std::path::Path;
use std::time::{Duration, Instant};

/// A guidance hook's time and output limits.
const HOOK_TIMEOUT: Duration = Duration::from_secs(30);
const HOOK_OUTPUT: usize = 64 << 10;

/// Runs the guidance hook `hook NODE_ID GUIDANCE` (no shell) and returns its standard output.
pub(super) fn run_hook(hook: &Path, node: &str, guidance: &str) -> Result<String> {
    use std::io::Read;
    let mut child = std::process::Command::new(hook)
        .arg(node)
        .arg(guidance)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .map_err(|e| Error::io(hook, e))?;
    let mut stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let r = (&mut stdout).take(HOOK_OUTPUT as u64 + 1).read_to_end(&mut buf);
        r.map(|_| buf)
    });
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().map_err(|e| Error::io(hook, e))? {
            break s;
        }
        if t0.elapsed() > HOOK_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Usage(format!("guidance hook {}: no answer in {HOOK_TIMEOUT:?}", hook.display())));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = reader
        .join()
        .map_err(|_| Error::Usage("guidance hook reader panicked".into()))?
        .map_err(|e| Error::io(hook, e))?;
    if !status.success() {
        return Err(Error::Usage(format!("guidance hook {} failed: {status}", hook.display())));
    }
    if out.len() > HOOK_OUTPUT {
        return Err(Error::Usage(format!("guidance hook {}: output over {HOOK_OUTPUT} bytes", hook.display())));
    }
    Ok(String::from_utf8_lossy(&out).trim().to_string())
}
