//! `containerd-shim-lightwhale-v2`: the containerd shim v2 runtime
//! `io.containerd.lightwhale.v2`. A thin adapter: containerd's protocol lives here, the
//! runtime mechanics in `lightwhale-engine`.

mod options;
mod publisher;
mod service;
mod shim;

use std::io::Write;
use std::process::ExitCode;

use containerd_shim::Config;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{Message, MessageField};
use containerd_shim_protos::types::introspection::{RuntimeInfo, RuntimeVersion};

pub const RUNTIME_ID: &str = "io.containerd.lightwhale.v2";

/// The `-info` answer (containerd 2.x asks it): name, version and runc's features.
fn runtime_info() -> anyhow::Result<Vec<u8>> {
    let runc = lightwhale_engine::runc::Runc::find_binary("runc")
        .ok_or_else(|| anyhow::anyhow!("runc not found in PATH"))?;
    let out = std::process::Command::new(&runc).arg("features").output()?;
    if !out.status.success() {
        anyhow::bail!(
            "{} features: {}",
            runc.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    // Validate before passing on: containerd decodes it as runtime-spec Features.
    serde_json::from_slice::<serde_json::Value>(&out.stdout)?;
    let info = RuntimeInfo {
        name: RUNTIME_ID.to_string(),
        version: MessageField::some(RuntimeVersion {
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        }),
        features: MessageField::some(Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/features/Features"
                .to_string(),
            value: out.stdout,
            ..Default::default()
        }),
        ..Default::default()
    };
    Ok(info.write_to_bytes()?)
}

fn main() -> ExitCode {
    let args: Vec<_> = std::env::args_os().collect();
    let flags = match containerd_shim::parse(args.get(1..).unwrap_or_default()) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{RUNTIME_ID}: {e}");
            return ExitCode::FAILURE;
        }
    };
    if flags.version {
        println!(
            "{}:\n  Version: {}",
            args.first()
                .and_then(|a| a.to_str())
                .unwrap_or("containerd-shim-lightwhale-v2"),
            env!("CARGO_PKG_VERSION")
        );
        return ExitCode::SUCCESS;
    }
    if flags.info {
        return match runtime_info() {
            Ok(bytes) => {
                let mut out = std::io::stdout();
                if out.write_all(&bytes).and_then(|_| out.flush()).is_err() {
                    return ExitCode::FAILURE;
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{RUNTIME_ID}: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    // One malloc arena instead of one per thread: a shim does little allocation, and each
    // arena keeps its own free memory resident (per container, while it sleeps too).
    // SAFETY: called before any other thread exists; mallopt only sets a malloc tunable.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{RUNTIME_ID}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The engine's reaper owns waitpid; the crate's own would steal runc's exit codes.
    let config = Config {
        no_reaper: true,
        ..Default::default()
    };
    runtime.block_on(containerd_shim::asynchronous::run::<shim::LightwhaleShim>(
        RUNTIME_ID,
        Some(config),
    ));
    if flags.action == "delete" {
        // The crate writes delete's answer (the exit status containerd reports for a
        // dead shim's task) through tokio's stdout without a flush: the bytes are still
        // with a blocking-pool thread when `run` returns. Dropped with the runtime, they
        // never reached containerd, which then reported the task's exit as 0 (about one
        // cleanup in five).
        runtime.shutdown_timeout(std::time::Duration::from_secs(10));
    } else {
        // A copier may still be blocked opening a fifo whose client went away; waiting
        // for it would keep a shim around that containerd already counts as gone.
        runtime.shutdown_background();
    }
    ExitCode::SUCCESS
}
