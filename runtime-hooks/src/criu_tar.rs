//! `tar` as CRIU sees it during a restore (installed as `tar` in lightwhale's helper
//! directory, which the shim puts first on CRIU's PATH).
//!
//! CRIU restores the contents of each tmpfs in a container (`/dev`, `/dev/shm`, Docker's
//! masked paths) by running `tar --extract --gzip`, and GNU tar runs gzip as a second
//! program: three process starts per tmpfs, about 3.4 ms each on the wake path, five tmpfs
//! mounts in a plain Docker container. For that one exact command line, an archive small
//! enough to hold in memory and made only of what `inline` handles (directories, symlinks,
//! device nodes, fifos, small files) is unpacked right here, with GNU tar's result, and no
//! further program starts. Anything else goes to GNU tar unchanged.

mod inline;

use std::ffi::{OsStr, OsString};
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitCode};

const REAL_TAR: &[&str] = &["/usr/bin/tar", "/bin/tar"];

/// The extract command line of CRIU 4.x's tmpfs restore; returns its target directory.
fn criu_extract_dir(args: &[OsString]) -> Option<&OsStr> {
    const FLAGS: [&str; 5] = [
        "--extract",
        "--gzip",
        "--no-unquote",
        "--no-wildcards",
        "--directory",
    ];
    if args.len() != FLAGS.len() + 1 {
        return None;
    }
    let flags_match = FLAGS.iter().zip(args).all(|(f, a)| a == OsStr::new(f));
    flags_match.then(|| args[FLAGS.len()].as_os_str())
}

fn first_existing(paths: &[&'static str]) -> Option<&'static str> {
    paths.iter().copied().find(|p| Path::new(p).is_file())
}

/// Unpacks stdin here if it is a small archive `inline` can make; `Ok(false)` leaves
/// stdin rewound for a real tar. CRIU hands over the image file itself as stdin, so it
/// can be read and rewound; a pipe is never read.
fn try_inline(dir: &Path) -> std::io::Result<bool> {
    let mut stdin = std::fs::File::from(std::io::stdin().lock().as_fd().try_clone_to_owned()?);
    let meta = stdin.metadata()?;
    if !meta.is_file() || meta.len() > inline::MAX_INLINE_BYTES {
        return Ok(false);
    }
    let mut gz = Vec::with_capacity(meta.len() as usize);
    stdin.read_to_end(&mut gz)?;
    stdin.seek(SeekFrom::Start(0))?;
    let items = match inline::parse(&gz) {
        Ok(items) => items,
        Err(inline::Declined(_)) => return Ok(false),
    };
    match inline::apply(dir, &items) {
        Ok(()) => Ok(true),
        Err(e) => {
            // tar redoes the whole archive over whatever was made so far.
            eprintln!("lightwhale-criu-tar: in-process extraction failed ({e}); using tar");
            Ok(false)
        }
    }
}

fn rewind_stdin() -> std::io::Result<()> {
    let mut stdin = std::fs::File::from(std::io::stdin().lock().as_fd().try_clone_to_owned()?);
    if stdin.metadata()?.is_file() {
        stdin.seek(SeekFrom::Start(0))?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if let Some(dir) = criu_extract_dir(&args) {
        match try_inline(Path::new(dir)) {
            Ok(true) => return ExitCode::SUCCESS,
            Ok(false) => {}
            Err(e) => {
                // Hand tar the archive from its start, or fail the restore: a tar that
                // began mid-archive would restore a partial tmpfs without saying so.
                if let Err(seek) = rewind_stdin() {
                    eprintln!("lightwhale-criu-tar: reading stdin: {e}; rewinding: {seek}");
                    return ExitCode::from(2);
                }
            }
        }
    }
    let Some(tar) = first_existing(REAL_TAR) else {
        eprintln!("lightwhale-criu-tar: no tar in {REAL_TAR:?}");
        return ExitCode::from(127);
    };
    let err = Command::new(tar).arg0("tar").args(&args).exec();
    eprintln!("lightwhale-criu-tar: exec {tar}: {err}");
    ExitCode::from(127)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn only_criu_extract_is_handled_here() {
        let extract = v(&[
            "--extract",
            "--gzip",
            "--no-unquote",
            "--no-wildcards",
            "--directory",
            "/tmp/x",
        ]);
        assert_eq!(criu_extract_dir(&extract), Some(OsStr::new("/tmp/x")));
        let create = v(&[
            "--create",
            "--gzip",
            "--no-unquote",
            "--no-wildcards",
            "--one-file-system",
            "--directory",
            "/tmp/x",
            ".",
        ]);
        assert_eq!(criu_extract_dir(&create), None);
        assert_eq!(criu_extract_dir(&extract[..5]), None);
        let mut extra = extract.clone();
        extra.push(".".into());
        assert_eq!(criu_extract_dir(&extra), None);
    }
}
