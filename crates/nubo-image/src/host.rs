//! Running host tools (apt-get, dpkg, mkfs.ext4, qemu-img, ...) with errors that
//! name the command, its output and the package that provides it.

use std::io::{self, BufRead, BufReader, Read};
use std::process::{Command, Output, Stdio};

use crate::error::ImageError;

/// A host program and the Debian package that provides it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tool {
    pub program: &'static str,
    pub package: &'static str,
}

pub(crate) const APT_GET: Tool = Tool { program: "apt-get", package: "apt" };
pub(crate) const APT_CACHE: Tool = Tool { program: "apt-cache", package: "apt" };
pub(crate) const DPKG: Tool = Tool { program: "dpkg", package: "dpkg" };
pub(crate) const MKFS_EXT4: Tool = Tool { program: "mkfs.ext4", package: "e2fsprogs" };
pub(crate) const QEMU_IMG: Tool = Tool { program: "qemu-img", package: "qemu-utils" };
pub(crate) const MMDEBSTRAP: Tool = Tool { program: "mmdebstrap", package: "mmdebstrap" };
pub(crate) const CHROOT: Tool = Tool { program: "chroot", package: "coreutils" };
pub(crate) const DPKG_QUERY: Tool = Tool { program: "dpkg-query", package: "dpkg" };

impl Tool {
    /// A [`Command`] for this tool with the C locale (parsable output).
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(self.program);
        cmd.env("LC_ALL", "C").env("LANG", "C");
        cmd
    }

    /// Runs `cmd` (made by [`Tool::command`]) to completion and returns its
    /// output; a non-zero exit becomes [`ImageError::Command`] carrying `hint`.
    pub fn run(&self, cmd: &mut Command, hint: &str) -> Result<Output, ImageError> {
        let shown = show(cmd);
        tracing::debug!(command = %shown, "running");
        let output = cmd.output().map_err(|e| self.spawn_error(&shown, e))?;
        if output.status.success() {
            Ok(output)
        } else {
            Err(ImageError::Command {
                command: shown,
                detail: format!("{}: {}", output.status, tail(&output)),
                hint: hint.to_string(),
            })
        }
    }

    /// Runs `cmd` to completion, handing every line it writes to standard
    /// error to `on_line` as it comes (long builds show their progress).
    /// Standard output is collected. Returns both streams' text; a non-zero
    /// exit becomes [`ImageError::Command`] carrying `hint` and the last lines.
    pub fn run_streaming(
        &self,
        cmd: &mut Command,
        hint: &str,
        on_line: &mut dyn FnMut(&str),
    ) -> Result<(String, String), ImageError> {
        let shown = show(cmd);
        tracing::debug!(command = %shown, "running");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| self.spawn_error(&shown, e))?;
        // Drain stdout on a thread so that a chatty child never blocks on a full pipe.
        let stdout_reader = child.stdout.take().map(|mut out| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = out.read_to_end(&mut buf);
                String::from_utf8_lossy(&buf).into_owned()
            })
        });
        let mut stderr = String::new();
        if let Some(err) = child.stderr.take() {
            for line in BufReader::new(err).split(b'\n') {
                let Ok(line) = line else { break };
                let line = String::from_utf8_lossy(&line).trim_end().to_string();
                if !line.is_empty() {
                    on_line(&line);
                }
                stderr.push_str(&line);
                stderr.push('\n');
            }
        }
        let status = child.wait().map_err(|e| ImageError::Command {
            command: shown.clone(),
            detail: format!("waiting for it failed: {e}"),
            hint: hint.to_string(),
        })?;
        let stdout = stdout_reader.and_then(|t| t.join().ok()).unwrap_or_default();
        if status.success() {
            return Ok((stdout, stderr));
        }
        let output = Output { status, stdout: stdout.clone().into_bytes(), stderr: stderr.clone().into_bytes() };
        Err(ImageError::Command {
            command: shown,
            detail: format!("{status}: {}", tail(&output)),
            hint: hint.to_string(),
        })
    }

    fn spawn_error(&self, shown: &str, e: io::Error) -> ImageError {
        if e.kind() == io::ErrorKind::NotFound {
            ImageError::ToolMissing { tool: self.program.to_string(), package: self.package.to_string() }
        } else {
            ImageError::Command {
                command: shown.to_string(),
                detail: format!("could not start it: {e}"),
                hint: format!("check that `{}` (package {}) is installed and executable", self.program, self.package),
            }
        }
    }
}

/// The command line as a readable string.
fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// The last lines of stderr (or stdout when stderr is empty), for error messages.
fn tail(output: &Output) -> String {
    let text = if output.stderr.iter().any(|b| !b.is_ascii_whitespace()) {
        String::from_utf8_lossy(&output.stderr)
    } else {
        String::from_utf8_lossy(&output.stdout)
    };
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(6);
    let joined = lines[start..].join(" | ");
    if joined.is_empty() {
        "no output".to_string()
    } else {
        joined
    }
}
