//! Temporary config and key files, each test's in a directory of its own.

use std::{
    path::PathBuf,
    sync::atomic::{AtomicUsize, Ordering},
};

/// A temporary directory for config and key material, removed on drop.
pub struct Files {
    dir: PathBuf,
}

impl Files {
    /// A new directory; `name` says whose it is when one is left behind.
    pub fn new(name: &str) -> Self {
        // Unique per use, not only per process: tests of one binary run in parallel.
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("cg-{name}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("the temp dir is writable");
        Self { dir }
    }

    /// Where the file `name` is (or will be) in this directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Writes atomically (rename), as a Secret update does.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.path(name);
        let tmp = self.dir.join(format!("{name}.tmp"));
        std::fs::write(&tmp, contents).expect("the temp dir is writable");
        std::fs::rename(&tmp, &path).expect("a rename within one directory works");
        path
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
