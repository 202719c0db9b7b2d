//! A minimal writer for the `newc` cpio format, the only archive format the kernel unpacks as an initramfs.
//! Written here instead of shelling out to `cpio` so that file owners are always root (0:0), timestamps are
//! fixed (the archive is reproducible, so its hash is stable) and device nodes need no privileges.

use std::io::Write;

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// Builds a newc archive in memory; the whole initramfs is about 2 MB.
#[derive(Default)]
pub struct CpioWriter {
    out: Vec<u8>,
    next_ino: u32,
}

impl CpioWriter {
    pub fn new() -> Self {
        CpioWriter { out: Vec::new(), next_ino: 1 }
    }

    pub fn dir(&mut self, path: &str, perm: u32) {
        self.entry(path, S_IFDIR | perm, (0, 0), &[]);
    }

    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) {
        self.entry(path, S_IFREG | perm, (0, 0), data);
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        self.entry(path, S_IFLNK | 0o777, (0, 0), target.as_bytes());
    }

    pub fn char_dev(&mut self, path: &str, perm: u32, major: u32, minor: u32) {
        self.entry(path, S_IFCHR | perm, (major, minor), &[]);
    }

    /// Appends the trailer and returns the archive.
    pub fn finish(mut self) -> Vec<u8> {
        self.header("TRAILER!!!", 0, 0, (0, 0), 0);
        self.out
    }

    fn entry(&mut self, path: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        let ino = self.next_ino;
        self.next_ino += 1;
        // Archive sizes are bounded by what we put in (an initramfs of a few MB), far below u32::MAX.
        let size = u32::try_from(data.len()).unwrap_or(u32::MAX);
        self.header(path.trim_start_matches('/'), ino, mode, rdev, size);
        self.out.extend_from_slice(data);
        self.pad4();
    }

    fn header(&mut self, name: &str, ino: u32, mode: u32, rdev: (u32, u32), filesize: u32) {
        let namesize = name.len() + 1;
        let nlink = if mode & S_IFDIR != 0 { 2 } else { 1 };
        let fields: [u32; 13] = [
            ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime: fixed for reproducible archives
            filesize,
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            u32::try_from(namesize).unwrap_or(u32::MAX),
            0, // check
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            // Writing into a Vec cannot fail.
            let _ = write!(self.out, "{f:08x}");
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad4();
    }

    fn pad4(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The real `cpio` tool must list exactly what we wrote, with the right types.
    #[test]
    fn gnu_cpio_reads_our_archive() {
        let mut w = CpioWriter::new();
        w.dir("bin", 0o755);
        w.file("bin/hello", 0o755, b"#!/bin/sh\necho hi\n");
        w.symlink("bin/sh", "busybox");
        w.char_dev("dev/console", 0o600, 5, 1);
        let archive = w.finish();
        assert_eq!(archive.len() % 4, 0);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.cpio");
        std::fs::write(&path, &archive).unwrap();
        let out = std::process::Command::new("cpio")
            .args(["-itv", "-F"])
            .arg(&path)
            .output()
            .expect("cpio is installed on build hosts");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let listing = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = listing.lines().collect();
        assert_eq!(lines.len(), 4, "{listing}");
        assert!(lines[0].starts_with("drwxr-xr-x") && lines[0].ends_with(" bin"));
        assert!(lines[1].starts_with("-rwxr-xr-x") && lines[1].contains(" 18 ") && lines[1].ends_with(" bin/hello"));
        assert!(lines[2].starts_with("lrwxrwxrwx") && lines[2].ends_with("bin/sh -> busybox"));
        assert!(lines[3].starts_with("crw-------") && lines[3].ends_with(" dev/console"));
    }
}
