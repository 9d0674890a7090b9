//! A small tmpfs for the full-disk tests (root only), unmounted on drop. Shared by the
//! engine's tests and walctl's (included by path).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A mounted tmpfs.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it) on the new directory `dir`;
    /// `None`, said loudly, where this cannot mount (not root).
    pub fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("SKIPPED: cannot mount a tmpfs here (needs root)");
        }
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }

    /// Gives it `size`.
    pub fn resize(&self, size: &str) {
        assert!(Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap()
            .success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _unmount_best_effort = Command::new("umount").arg(&self.0).status();
    }
}
