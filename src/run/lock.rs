//! One writer per run directory: an exclusive advisory lock (`flock`) on a file in the run,
//! held for as long as the process writes the run. The OS releases it when the process ends
//! however it ends, so a killed run never leaves a stale lock behind, and the next start or
//! resume simply takes it.
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The lock file in a run directory; it holds the process id of the writer (for the message
/// a second writer gets).
pub const LOCK: &str = ".cnas.lock";

/// The held lock of a run directory; dropping it (or the process ending) releases it.
#[derive(Debug)]
pub struct RunLock {
    /// Kept open: the lock belongs to this open file.
    _file: File,
    path: PathBuf,
}

impl RunLock {
    /// Takes the lock of `run_dir`, creating the directory when `create`. With `create` false
    /// and no directory there is nothing to lock (`None`): the caller's own check then says
    /// that there is no run to resume. A run that another process holds is refused at once
    /// (exit 2) with that process's id.
    pub fn acquire(run_dir: &Path, create: bool) -> Result<Option<RunLock>> {
        if create {
            std::fs::create_dir_all(run_dir).map_err(|e| Error::io(run_dir, e))?;
        } else if !run_dir.is_dir() {
            return Ok(None);
        }
        let path = run_dir.join(LOCK);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        // SAFETY: flock on a descriptor this function owns; no memory is passed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let holder = match read_holder(&mut file) {
                    Some(pid) => format!("process {pid}"),
                    None => "another process".to_string(),
                };
                return Err(Error::BadOption(format!(
                    "{} is in use: {holder} is writing this run (one cnas process per run directory; \
                     wait for it to end or stop it)",
                    run_dir.display()
                )));
            }
            return Err(Error::io(&path, err));
        }
        let pid = std::process::id().to_string();
        let written = file
            .set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(pid.as_bytes()))
            .and_then(|()| file.flush());
        written.map_err(|e| Error::io(&path, e))?;
        Ok(Some(RunLock { _file: file, path }))
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The process id in a lock file another process holds. The holder writes it just after
/// taking the lock, so an empty file is read again for a moment.
fn read_holder(file: &mut File) -> Option<u32> {
    for _ in 0..50 {
        let mut text = String::new();
        let read = file.seek(SeekFrom::Start(0)).and_then(|_| file.read_to_string(&mut text));
        if let Ok(pid) = text.trim().parse() {
            return Some(pid);
        }
        if read.is_err() {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_with_the_holder_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        assert!(RunLock::acquire(&run, false).unwrap().is_none(), "nothing to lock yet");
        let held = RunLock::acquire(&run, true).unwrap().unwrap();
        assert_eq!(std::fs::read_to_string(held.path()).unwrap(), std::process::id().to_string());
        // flock locks belong to open files: a second open in the same process conflicts too.
        let err = RunLock::acquire(&run, false).unwrap_err();
        assert!(err.is_user_error());
        let text = err.to_string();
        assert!(
            text.contains("in use") && text.contains(&format!("process {}", std::process::id())),
            "{text}"
        );
        drop(held);
        let again = RunLock::acquire(&run, false).unwrap();
        assert!(again.is_some(), "released on drop");
    }
}
