//! In-process extraction of the tiny archives CRIU writes for a container's tmpfs mounts.
//!
//! Most of them hold no file data at all: Docker masks `/proc/acpi`, `/proc/scsi` and
//! `/sys/firmware` with empty read-only tmpfs mounts, and `/dev` holds only directories,
//! symlinks and device nodes; `/dev/shm` holds what the application left there. Unpacking
//! those here saves starting two more programs per mount on the wake path. The result
//! matches GNU tar's (modes, owners, device numbers, mtimes, symlinks included). An
//! archive with anything else in it (hard links, sparse files, extended headers, paths
//! that leave the directory or cross a symlink, more data than [`MAX_DATA_BYTES`]) is
//! declined before anything is written, and the caller hands it to GNU tar.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use nix::fcntl::AtFlags;
use nix::sys::stat::{
    fchmodat, makedev, mknodat, utimensat, FchmodatFlags, Mode, SFlag, UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchownat, mkdir, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};

/// Archives bigger than this (compressed) always go to a real tar: they carry file data.
pub const MAX_INLINE_BYTES: u64 = 1024 * 1024;
/// File data held in memory at most (decompressed): beyond it, tar streams it.
pub const MAX_DATA_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Debug, PartialEq, Eq)]
enum Kind {
    Dir,
    Symlink(PathBuf),
    Node(SFlag, u64),
    File(Vec<u8>),
}

#[derive(Debug)]
pub struct Item {
    rel: PathBuf,
    kind: Kind,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
}

/// Why an archive is left to a real tar (none of these is an error: tar will do it).
#[derive(Debug, PartialEq, Eq)]
pub struct Declined(pub String);

fn declined(why: impl Into<String>) -> Declined {
    Declined(why.into())
}

/// Reads a gzip'd tar fully and returns its entries if every one can be made here.
pub fn parse(gz: &[u8]) -> Result<Vec<Item>, Declined> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(gz));
    let entries = archive
        .entries()
        .map_err(|e| declined(format!("unreadable archive: {e}")))?;
    let mut items: Vec<Item> = Vec::new();
    let mut data_bytes = 0u64;
    for entry in entries {
        let mut entry = entry.map_err(|e| declined(format!("unreadable entry: {e}")))?;
        if entry
            .pax_extensions()
            .map_err(|e| declined(format!("bad pax header: {e}")))?
            .is_some()
        {
            return Err(declined("pax extended header"));
        }
        let rel = normalize(
            &entry
                .path()
                .map_err(|e| declined(format!("bad path: {e}")))?,
        )?;
        if items
            .iter()
            .any(|i| matches!(i.kind, Kind::Symlink(_)) && rel.starts_with(&i.rel) && rel != i.rel)
        {
            return Err(declined(format!("{} lies under a symlink", rel.display())));
        }
        let header = entry.header();
        let field = |what: &str, v: std::io::Result<u64>| {
            v.map_err(|e| declined(format!("bad {what} in {}: {e}", rel.display())))
        };
        let mode = field("mode", header.mode().map(u64::from))? as u32;
        let uid =
            u32::try_from(field("uid", header.uid())?).map_err(|_| declined("uid out of range"))?;
        let gid =
            u32::try_from(field("gid", header.gid())?).map_err(|_| declined("gid out of range"))?;
        let mtime =
            i64::try_from(field("mtime", header.mtime())?).map_err(|_| declined("mtime"))?;
        let device = || -> Result<u64, Declined> {
            let major = header.device_major().ok().flatten();
            let minor = header.device_minor().ok().flatten();
            match (major, minor) {
                (Some(ma), Some(mi)) => Ok(makedev(u64::from(ma), u64::from(mi))),
                _ => Err(declined(format!("device numbers of {}", rel.display()))),
            }
        };
        let kind = match header.entry_type() {
            tar::EntryType::Directory => Kind::Dir,
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(|e| declined(format!("bad link target: {e}")))?
                    .ok_or_else(|| declined("symlink without a target"))?;
                Kind::Symlink(target.into_owned())
            }
            tar::EntryType::Char => Kind::Node(SFlag::S_IFCHR, device()?),
            tar::EntryType::Block => Kind::Node(SFlag::S_IFBLK, device()?),
            tar::EntryType::Fifo => Kind::Node(SFlag::S_IFIFO, 0),
            tar::EntryType::Regular => {
                data_bytes = data_bytes.saturating_add(entry.size());
                if data_bytes > MAX_DATA_BYTES {
                    return Err(declined("more file data than is worth holding in memory"));
                }
                let mut data = Vec::with_capacity(entry.size() as usize);
                entry
                    .read_to_end(&mut data)
                    .map_err(|e| declined(format!("reading {}: {e}", rel.display())))?;
                Kind::File(data)
            }
            other => return Err(declined(format!("entry type {other:?}"))),
        };
        if !matches!(kind, Kind::File(_)) {
            let mut rest = [0u8; 1];
            if entry.read(&mut rest).map_err(|e| declined(e.to_string()))? != 0 {
                return Err(declined(format!("{} carries data", rel.display())));
            }
        }
        if kind != Kind::Dir && rel.as_os_str().is_empty() {
            return Err(declined("the archive's root is not a directory"));
        }
        items.push(Item {
            rel,
            kind,
            mode,
            uid,
            gid,
            mtime,
        });
    }
    Ok(items)
}

/// `./a/b/` -> `a/b`; the root is the empty path; anything absolute or with `..` declines.
fn normalize(path: &Path) -> Result<PathBuf, Declined> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::Normal(part) => out.push(part),
            _ => {
                return Err(declined(format!(
                    "path {} leaves the directory",
                    path.display()
                )))
            }
        }
    }
    Ok(out)
}

/// Creates the entries under `dir`, then sets directory attributes deepest first, as GNU
/// tar does (a directory's mtime changes while its children are created).
pub fn apply(dir: &Path, items: &[Item]) -> nix::Result<()> {
    for item in items {
        let path = dir.join(&item.rel);
        match &item.kind {
            Kind::Dir => match mkdir(&path, Mode::S_IRWXU) {
                Ok(()) => {}
                Err(nix::errno::Errno::EEXIST) if path.is_dir() => {}
                Err(e) => return Err(e),
            },
            Kind::Symlink(target) => {
                replace_existing(&path)?;
                symlinkat(target.as_path(), None, &path)?;
                set_owner_and_mtime(&path, item, AtFlags::AT_SYMLINK_NOFOLLOW)?;
            }
            Kind::File(data) => {
                replace_existing(&path)?;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(io_errno)?;
                f.write_all(data).map_err(io_errno)?;
                drop(f);
                set_attrs(&path, item)?;
            }
            Kind::Node(kind, dev) => {
                replace_existing(&path)?;
                mknodat(None, &path, *kind, Mode::S_IRUSR | Mode::S_IWUSR, *dev)?;
                set_attrs(&path, item)?;
            }
        }
    }
    for item in items.iter().rev().filter(|i| i.kind == Kind::Dir) {
        set_attrs(&dir.join(&item.rel), item)?;
    }
    Ok(())
}

fn io_errno(e: std::io::Error) -> nix::errno::Errno {
    e.raw_os_error()
        .map(nix::errno::Errno::from_raw)
        .unwrap_or(nix::errno::Errno::EIO)
}

/// GNU tar replaces a non-directory already at the path; do the same.
fn replace_existing(path: &Path) -> nix::Result<()> {
    match unlinkat(None, path, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(e),
    }
}

fn set_owner_and_mtime(path: &Path, item: &Item, flags: AtFlags) -> nix::Result<()> {
    fchownat(
        None,
        path,
        Some(Uid::from_raw(item.uid)),
        Some(Gid::from_raw(item.gid)),
        flags,
    )?;
    let follow = if flags.contains(AtFlags::AT_SYMLINK_NOFOLLOW) {
        UtimensatFlags::NoFollowSymlink
    } else {
        UtimensatFlags::FollowSymlink
    };
    utimensat(
        None,
        path,
        &TimeSpec::UTIME_NOW,
        &TimeSpec::new(item.mtime, 0),
        follow,
    )
}

/// Owner first: chown clears the set-id bits that chmod then restores.
fn set_attrs(path: &Path, item: &Item) -> nix::Result<()> {
    fchownat(
        None,
        path,
        Some(Uid::from_raw(item.uid)),
        Some(Gid::from_raw(item.gid)),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )?;
    // Never a symlink here (directories and nodes only), so following is safe; and
    // glibc's no-follow chmod needs /proc, which CRIU's restore namespace may lack.
    fchmodat(
        None,
        path,
        Mode::from_bits_truncate(item.mode & 0o7777),
        FchmodatFlags::FollowSymlink,
    )?;
    utimensat(
        None,
        path,
        &TimeSpec::UTIME_NOW,
        &TimeSpec::new(item.mtime, 0),
        UtimensatFlags::NoFollowSymlink,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    use std::process::{Command, Stdio};

    /// An archive made the way CRIU's tmpfs dump makes it.
    fn criu_archive(src: &Path) -> Vec<u8> {
        let out = Command::new("tar")
            .args([
                "--create",
                "--gzip",
                "--no-unquote",
                "--no-wildcards",
                "--one-file-system",
                "--check-links",
                "--preserve-permissions",
                "--sparse",
                "--numeric-owner",
                "--directory",
            ])
            .arg(src)
            .arg(".")
            .stderr(Stdio::inherit())
            .output()
            .expect("run tar");
        assert!(out.status.success(), "tar --create failed");
        out.stdout
    }

    fn listing(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(p) = stack.pop() {
            let m = std::fs::symlink_metadata(&p).expect("stat");
            let rel = p
                .strip_prefix(root)
                .expect("under root")
                .display()
                .to_string();
            let target = if m.file_type().is_symlink() {
                std::fs::read_link(&p)
                    .expect("readlink")
                    .display()
                    .to_string()
            } else {
                String::new()
            };
            let rdev = if m.file_type().is_char_device() || m.file_type().is_block_device() {
                m.rdev()
            } else {
                0
            };
            let data = if m.is_file() {
                String::from_utf8_lossy(&std::fs::read(&p).expect("read")).into_owned()
            } else {
                String::new()
            };
            out.push(format!(
                "{rel} mode={:o} uid={} gid={} rdev={rdev} mtime={} data={data} -> {target}",
                m.mode(),
                m.uid(),
                m.gid(),
                m.mtime()
            ));
            if m.is_dir() {
                for e in std::fs::read_dir(&p).expect("readdir") {
                    stack.push(e.expect("entry").path());
                }
            }
        }
        out.sort();
        out
    }

    fn root() -> bool {
        nix::unistd::Uid::effective().is_root()
    }

    #[test]
    fn paths_that_leave_the_directory_decline() {
        assert_eq!(normalize(Path::new("./a/b/")), Ok(PathBuf::from("a/b")));
        assert_eq!(normalize(Path::new(".")), Ok(PathBuf::new()));
        assert!(normalize(Path::new("../x")).is_err());
        assert!(normalize(Path::new("/etc")).is_err());
        assert!(normalize(Path::new("a/../../x")).is_err());
    }

    #[test]
    fn garbage_declines_without_touching_anything() {
        assert!(parse(b"not gzip").is_err());
        assert!(parse(&[]).is_err());
    }

    /// The same tree, unpacked here and by GNU tar, stats the same entry by entry.
    #[test]
    fn a_dev_like_tree_unpacks_exactly_like_gnu_tar() {
        if !root() {
            eprintln!("SKIP: mknod and chown need root");
            return;
        }
        let t = tempfile::tempdir().expect("tempdir");
        let src = t.path().join("src");
        std::fs::create_dir(&src).expect("mkdir");
        let sh = format!(
            "cd {} && mknod null c 1 3 && chmod 666 null && mknod loop0 b 7 0 && mkfifo -m 600 initctl \
             && ln -s /proc/self/fd fd && ln -s pts/ptmx ptmx && mkdir -m 1777 shm && mkdir -m 2755 pts \
             && mkdir -p -m 555 deep/er && chown 1000:2000 null pts && chown -h 7:8 fd \
             && printf 'segment' > shm/seg && chmod 4750 shm/seg && : > shm/empty \
             && touch -h -d 2019-03-04 fd && touch -d 2020-01-02 null shm && chmod 1777 .",
            src.display()
        );
        assert!(Command::new("sh")
            .args(["-c", &sh])
            .status()
            .expect("sh")
            .success());
        let gz = criu_archive(&src);

        let by_tar = t.path().join("tar");
        std::fs::create_dir(&by_tar).expect("mkdir");
        let mut child = Command::new("tar")
            .args([
                "--extract",
                "--gzip",
                "--no-unquote",
                "--no-wildcards",
                "--directory",
            ])
            .arg(&by_tar)
            .stdin(Stdio::piped())
            .spawn()
            .expect("tar");
        std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), &gz).expect("feed");
        assert!(child.wait().expect("wait").success());

        let here = t.path().join("here");
        std::fs::create_dir(&here).expect("mkdir");
        let items = parse(&gz).expect("simple archive");
        apply(&here, &items).expect("apply");
        assert_eq!(listing(&here), listing(&by_tar));
        assert!(listing(&here).len() >= 10);
    }

    #[test]
    fn hard_links_and_big_files_decline() {
        let t = tempfile::tempdir().expect("tempdir");
        let src = t.path().join("src");
        std::fs::create_dir(&src).expect("mkdir");
        let big = (0..MAX_DATA_BYTES + 1)
            .map(|i| (i * 7919 % 251) as u8)
            .collect::<Vec<_>>();
        std::fs::write(src.join("f"), &big).expect("write");
        assert!(parse(&criu_archive(&src)).is_err());

        std::fs::write(src.join("f"), b"").expect("write");
        std::fs::hard_link(src.join("f"), src.join("g")).expect("link");
        let why = parse(&criu_archive(&src)).expect_err("hard link");
        assert!(why.0.contains("entry type"), "{why:?}");
    }

    #[test]
    fn an_entry_under_a_symlink_declines() {
        let header = |kind, mode| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_size(0);
            h.set_mode(mode);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h
        };
        let mut b = tar::Builder::new(Vec::new());
        b.append_link(&mut header(tar::EntryType::Symlink, 0o777), "l", "/etc")
            .expect("link");
        b.append_data(
            &mut header(tar::EntryType::Directory, 0o755),
            "l/x",
            std::io::empty(),
        )
        .expect("dir");
        let raw = b.into_inner().expect("tar");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &raw).expect("gzip");
        let why = parse(&gz.finish().expect("gzip")).expect_err("under a symlink");
        assert!(why.0.contains("under a symlink"), "{why:?}");
    }
}
