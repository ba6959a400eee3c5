//! A unix socket per container for `lightwhale sleep|doze|wake|inspect`: one command line in,
//! one JSON [`Reply`] line out.

use std::sync::Arc;

use lightwhale_status::{Command, Reply};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tracing::warn;

use crate::container::Container;
use crate::events::Trigger;

/// The longest command line read: anything longer is not a command.
const MAX_LINE: u64 = 64;

/// Serves `c`'s control socket until the container is deleted.
pub fn serve(c: &Arc<Container>) {
    let path = c.control_path();
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::remove_file(&path);
    let listener = match tokio::net::UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            warn!(id = %c.id, "control socket {}: {e}", path.display());
            return;
        }
    };
    let _ = std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600));
    let weak = Arc::downgrade(c);
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let Some(c) = weak.upgrade() else { return };
            tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                let mut line = String::new();
                let mut reader = BufReader::new(r.take(MAX_LINE));
                if reader.read_line(&mut line).await.is_err() {
                    return;
                }
                let result = match Command::parse(&line) {
                    Some(Command::Sleep) => c.sleep().await.map_err(|e| e.to_string()),
                    Some(Command::Doze) => c.doze().await.map_err(|e| e.to_string()),
                    Some(Command::Wake) => {
                        c.wake(Trigger::Request).await.map_err(|e| e.to_string())
                    }
                    Some(Command::Status) => Ok(()),
                    Some(Command::Template(name)) => c
                        .make_template(&name)
                        .await
                        .map(drop)
                        .map_err(|e| e.to_string()),
                    Some(Command::Export(dir)) => {
                        c.export_to(&dir).await.map(drop).map_err(|e| e.to_string())
                    }
                    None => Err(format!(
                        "unknown command {:?} (sleep, doze, wake, status, template NAME, export DIR)",
                        line.trim()
                    )),
                };
                let reply = Reply {
                    ok: result.is_ok(),
                    error: result.err(),
                    status: c.status(),
                };
                let body = serde_json::to_string(&reply).unwrap_or_else(|e| {
                    format!("{{\"ok\":false,\"error\":\"cannot encode the reply: {e}\"}}")
                });
                let _ = w.write_all(format!("{body}\n").as_bytes()).await;
            });
        }
    });
    c.own_task(task);
}
