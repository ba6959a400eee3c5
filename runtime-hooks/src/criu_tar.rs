//! `tar` as CRIU sees it during a restore (installed as `tar` in lightwhale's helper
//! directory, which the shim puts first on CRIU's PATH).
//!
//! CRIU restores the contents of each tmpfs in a container (`/dev`, Docker's masked
//! paths) by running `tar --extract --gzip`, and GNU tar runs gzip as a second program:
//! three process starts per tmpfs, about 3.4 ms each on the wake path. BusyBox's tar
//! unpacks gzip in-process and starts faster; it restores the same modes, owners and
//! device nodes for these archives (compared file by file in the test suite). That one
//! exact command line goes to BusyBox; anything else, or a host without BusyBox, goes
//! to the real tar unchanged.

use std::ffi::{OsStr, OsString};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitCode};

const BUSYBOX: &[&str] = &["/bin/busybox", "/usr/bin/busybox"];
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

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if let (Some(dir), Some(busybox)) = (criu_extract_dir(&args), first_existing(BUSYBOX)) {
        let err = Command::new(busybox)
            .arg0("tar")
            .args(["-x", "-z", "-C"])
            .arg(dir)
            .exec();
        eprintln!("lightwhale-criu-tar: exec {busybox}: {err}");
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
    fn only_criu_extract_goes_to_busybox() {
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
