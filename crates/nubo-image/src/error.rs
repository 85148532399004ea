//! Error type of the crate: every variant says what went wrong and what to do about it.

use std::io;
use std::path::{Path, PathBuf};

/// Everything that can go wrong while building, caching or seeding images.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The caller asked for an image this crate does not know how to build.
    #[error("unknown image `{name}`; known images: {known}")]
    UnknownImage {
        /// The name that was asked for.
        name: String,
        /// The known images, each with its description.
        known: String,
    },

    /// A file system operation failed.
    #[error("{action} {}: {source}; {hint}", path.display())]
    Io {
        /// What was being done, e.g. "creating directory".
        action: String,
        /// The file or directory concerned.
        path: PathBuf,
        /// What to do about it.
        hint: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// A name given as an extra package is not a valid Debian package name.
    #[error("invalid Debian package name `{name}`: a name has at least two characters, lower-case letters, digits, `+`, `-` and `.`, and starts with a letter or digit")]
    InvalidPackageName {
        /// The name as given.
        name: String,
    },

    /// Extra packages that the host's apt sources do not know.
    #[error("unknown Debian packages: {packages}; check the names with `apt-cache search NAME` (the build uses this host's apt sources; `apt-get update` refreshes them)")]
    UnknownPackages {
        /// The unknown names, comma-separated.
        packages: String,
    },

    /// The build was asked for something it cannot do (options the image
    /// does not take, a host that lacks what the recipe needs).
    #[error("{detail}; {hint}")]
    Unsupported {
        /// What is not possible.
        detail: String,
        /// What to do about it.
        hint: String,
    },

    /// A host tool the build needs is not installed.
    #[error("`{tool}` was not found on this host; install it with `apt-get install {package}`")]
    ToolMissing {
        /// The missing program.
        tool: String,
        /// The Debian package that provides it.
        package: String,
    },

    /// A host command ran but failed.
    #[error("`{command}` failed: {detail}; {hint}")]
    Command {
        /// The command line, for the reader.
        command: String,
        /// Exit status and the tail of its error output.
        detail: String,
        /// What to do about it.
        hint: String,
    },

    /// A Debian package did not have the expected content.
    #[error("package {package}: {detail}; {hint}")]
    Package {
        /// The package concerned.
        package: String,
        /// What was wrong.
        detail: String,
        /// What to do about it.
        hint: String,
    },

    /// A cached image is damaged (bad manifest, missing or altered file).
    #[error("cached image at {}: {detail}; delete that directory (or the whole image cache) and run the build again", path.display())]
    Corrupt {
        /// The image directory or file concerned.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },

    /// The static guest agent binary to put into the image was not found.
    #[error(
        "cannot install the guest agent: {detail}; build it with `{build}` and/or set NUBO_GUEST_AGENT to its path"
    )]
    GuestAgent {
        /// What was looked for and where.
        detail: String,
        /// The cargo command that builds it.
        build: String,
    },

    /// The NoCloud seed could not be written.
    #[error("writing the NoCloud seed {}: {detail}; check that the directory exists and is writable and that there is free disk space", path.display())]
    Seed {
        /// The seed image being written.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
}

impl ImageError {
    /// An [`ImageError::Io`] with a generic hint about permissions and disk space.
    pub(crate) fn io(action: impl Into<String>, path: &Path, source: io::Error) -> Self {
        Self::Io {
            action: action.into(),
            path: path.to_path_buf(),
            hint: "check that the image cache directory is writable and that the disk is not full".to_string(),
            source,
        }
    }
}

/// Shorthand for `map_err(|e| ImageError::io(action, path, e))`.
pub(crate) trait IoContext<T> {
    fn ctx(self, action: &str, path: &Path) -> Result<T, ImageError>;
}

impl<T> IoContext<T> for Result<T, io::Error> {
    fn ctx(self, action: &str, path: &Path) -> Result<T, ImageError> {
        self.map_err(|e| ImageError::io(action, path, e))
    }
}
