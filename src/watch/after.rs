//! What happens to a bundle once it is written: a copy into a second directory (a mounted
//! share on a fleet), made atomically, and the operator's command (`--on-capture`), run with
//! the bundle's path as its argument and `report.json` on its standard input, under a
//! timeout. Neither can stop the watcher: a failure is an event, never an error.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::json;
use tokio::io::AsyncWriteExt;

use super::config::AfterCapture;
use super::hub::Hub;

/// Most bytes of the command's standard error kept in the event.
const STDERR_KEPT: usize = 2048;

/// Copies the bundle and runs the command, reporting each outcome as an event of `name`.
pub async fn run(hub: Arc<Hub>, name: String, after: AfterCapture, bundle: PathBuf) {
    if let Some(dir) = after.copy_to.clone() {
        let from = bundle.clone();
        let copied = tokio::task::spawn_blocking(move || copy_bundle(&from, &dir))
            .await
            .unwrap_or_else(|e| Err(format!("the copy failed: {e}")));
        match copied {
            Ok(to) => hub.note_with(
                &name,
                &format!("bundle copied to {}", to.display()),
                json!({ "copy": to }),
            ),
            Err(why) => hub.note_with(
                &name,
                &format!("the bundle was not copied: {why}"),
                json!({ "copy_error": why }),
            ),
        }
    }
    if let Some(command) = &after.on_capture {
        let outcome = hook(command, &bundle, after.timeout).await;
        let (text, extra) = match &outcome {
            Ok(()) => (
                format!("on-capture command finished for {}", bundle.display()),
                json!({ "on_capture": "ok" }),
            ),
            Err(why) => (
                format!("on-capture command failed: {why}"),
                json!({ "on_capture": "failed", "why": why }),
            ),
        };
        hub.note_with(&name, &text, extra);
    }
}

/// Runs `command` through the shell with `bundle` as its argument and the bundle's
/// report.json on its standard input; kills it at `timeout`.
async fn hook(command: &str, bundle: &Path, timeout: std::time::Duration) -> Result<(), String> {
    let path = bundle.join("report.json");
    let report = tokio::task::spawn_blocking(move || {
        std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    })
    .await
    .map_err(|e| format!("reading report.json failed: {e}"))??;
    let mut cmd = shell(command, bundle);
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {command:?}: {e}"))?;
    let stdin = child.stdin.take();
    let feed = async move {
        if let Some(mut stdin) = stdin {
            // A command that does not read its input is not a failure.
            let _ = stdin.write_all(&report).await;
            let _ = stdin.shutdown().await;
        }
    };
    let run = async {
        feed.await;
        child.wait_with_output().await
    };
    match tokio::time::timeout(timeout, run).await {
        Err(_) => Err(format!(
            "{command:?} ran longer than {:.0} s and was killed",
            timeout.as_secs_f64()
        )),
        Ok(Err(e)) => Err(format!("{command:?}: {e}")),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => {
            let err = String::from_utf8_lossy(&out.stderr[..out.stderr.len().min(STDERR_KEPT)])
                .trim()
                .to_string();
            Err(format!(
                "{command:?} exited with {}{}",
                out.status,
                if err.is_empty() {
                    String::new()
                } else {
                    format!(": {err}")
                }
            ))
        }
    }
}

/// The shell running `command` with `bundle` as its last argument.
fn shell(command: &str, bundle: &Path) -> tokio::process::Command {
    if cfg!(windows) {
        let mut c = tokio::process::Command::new("cmd");
        c.arg("/C")
            .arg(format!("{command} \"{}\"", bundle.display()));
        c
    } else {
        let mut c = tokio::process::Command::new("sh");
        c.arg("-c")
            .arg(format!("{command} \"$1\""))
            .arg("kdnet-on-capture")
            .arg(bundle);
        c
    }
}

/// Copies the bundle directory into `dir` under its own name: into a hidden directory
/// beside it first, renamed into place once every file is there and synced.
pub fn copy_bundle(bundle: &Path, dir: &Path) -> Result<PathBuf, String> {
    let name = bundle
        .file_name()
        .ok_or_else(|| format!("{} has no name", bundle.display()))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
    let to = dir.join(name);
    if to.exists() {
        return Err(format!("{} exists already", to.display()));
    }
    let tmp = dir.join(format!(
        ".{}.partial-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    let copy = || -> Result<(), String> {
        std::fs::create_dir(&tmp).map_err(|e| format!("cannot make {}: {e}", tmp.display()))?;
        let entries = std::fs::read_dir(bundle)
            .map_err(|e| format!("cannot list {}: {e}", bundle.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("cannot list {}: {e}", bundle.display()))?;
            let kind = entry.file_type().map_err(|e| e.to_string())?;
            if !kind.is_file() {
                continue;
            }
            let target = tmp.join(entry.file_name());
            std::fs::copy(entry.path(), &target)
                .map_err(|e| format!("cannot copy {}: {e}", entry.path().display()))?;
            std::fs::File::open(&target)
                .and_then(|f| f.sync_all())
                .map_err(|e| format!("cannot sync {}: {e}", target.display()))?;
        }
        std::fs::rename(&tmp, &to)
            .map_err(|e| format!("cannot rename {} to {}: {e}", tmp.display(), to.display()))
    };
    copy().inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&tmp);
    })?;
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("kdnet-after-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_copy_is_whole_or_absent() {
        let d = scratch("copy");
        let bundle = d.join("web-01-20261202T080000Z");
        std::fs::create_dir_all(&bundle).unwrap();
        std::fs::write(bundle.join("report.json"), b"{\"findings\":[]}").unwrap();
        std::fs::write(bundle.join("snapshot.dmp"), vec![7u8; 100_000]).unwrap();
        let share = d.join("share");
        let to = copy_bundle(&bundle, &share).unwrap();
        assert_eq!(to, share.join("web-01-20261202T080000Z"));
        assert_eq!(
            std::fs::read(to.join("snapshot.dmp")).unwrap(),
            vec![7u8; 100_000]
        );
        assert_eq!(
            std::fs::read(to.join("report.json")).unwrap(),
            b"{\"findings\":[]}"
        );
        // No partial directory is left, and a second copy does not overwrite the first.
        let names: Vec<_> = std::fs::read_dir(&share).unwrap().collect();
        assert_eq!(names.len(), 1);
        assert!(copy_bundle(&bundle, &share).unwrap_err().contains("exists"));
        // A bundle that cannot be read leaves nothing behind.
        assert!(copy_bundle(&d.join("missing"), &share).is_err());
        assert_eq!(std::fs::read_dir(&share).unwrap().count(), 1);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[tokio::test]
    async fn the_hook_gets_the_path_and_the_report_and_its_failures_are_reported() {
        let d = scratch("hook");
        let bundle = d.join("b1");
        std::fs::create_dir_all(&bundle).unwrap();
        std::fs::write(bundle.join("report.json"), b"{\"summary\":[\"x\"]}").unwrap();
        let out = d.join("got");
        let cmd = format!("cat > {}/stdin; echo", out.display());
        std::fs::create_dir_all(&out).unwrap();
        let ok = hook(
            &format!("{cmd} >/dev/null; printf %s"),
            &bundle,
            std::time::Duration::from_secs(20),
        )
        .await;
        assert_eq!(ok, Ok(()));
        assert_eq!(
            std::fs::read(out.join("stdin")).unwrap(),
            b"{\"summary\":[\"x\"]}"
        );
        let arg = d.join("arg");
        hook(
            &format!("printf %s > {} ", arg.display()),
            &bundle,
            std::time::Duration::from_secs(20),
        )
        .await
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(&arg).unwrap(),
            bundle.display().to_string()
        );
        let failed = hook(
            "echo broken >&2; exit 3",
            &bundle,
            std::time::Duration::from_secs(20),
        )
        .await
        .unwrap_err();
        assert!(
            failed.contains("exit status: 3") && failed.contains("broken"),
            "{failed}"
        );
        let slow = hook(
            "sleep 30; :",
            &bundle,
            std::time::Duration::from_millis(200),
        )
        .await
        .unwrap_err();
        assert!(slow.contains("was killed"), "{slow}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
