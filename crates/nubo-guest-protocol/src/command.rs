//! The command names: every QGA command Nubo's agent serves and Nubo's
//! client sends, with qemu-ga's `success-response` flag.

use std::fmt;

/// A QGA command. [`Command::name`] is its name on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    SyncDelimited,
    Sync,
    Ping,
    Info,
    Exec,
    ExecStatus,
    FileOpen,
    FileClose,
    FileRead,
    FileWrite,
    FileSeek,
    FileFlush,
    GetFsinfo,
    GetOsinfo,
    NetworkGetInterfaces,
    GetDisks,
    FsfreezeStatus,
    FsfreezeFreeze,
    FsfreezeThaw,
    Shutdown,
}

impl Command {
    /// Every command, in the order `guest-info` lists them.
    pub const ALL: [Command; 20] = [
        Command::SyncDelimited,
        Command::Sync,
        Command::Ping,
        Command::Info,
        Command::Exec,
        Command::ExecStatus,
        Command::FileOpen,
        Command::FileClose,
        Command::FileRead,
        Command::FileWrite,
        Command::FileSeek,
        Command::FileFlush,
        Command::GetFsinfo,
        Command::GetOsinfo,
        Command::NetworkGetInterfaces,
        Command::GetDisks,
        Command::FsfreezeStatus,
        Command::FsfreezeFreeze,
        Command::FsfreezeThaw,
        Command::Shutdown,
    ];

    /// The name in `"execute"` and in `guest-info`.
    pub const fn name(self) -> &'static str {
        match self {
            Command::SyncDelimited => "guest-sync-delimited",
            Command::Sync => "guest-sync",
            Command::Ping => "guest-ping",
            Command::Info => "guest-info",
            Command::Exec => "guest-exec",
            Command::ExecStatus => "guest-exec-status",
            Command::FileOpen => "guest-file-open",
            Command::FileClose => "guest-file-close",
            Command::FileRead => "guest-file-read",
            Command::FileWrite => "guest-file-write",
            Command::FileSeek => "guest-file-seek",
            Command::FileFlush => "guest-file-flush",
            Command::GetFsinfo => "guest-get-fsinfo",
            Command::GetOsinfo => "guest-get-osinfo",
            Command::NetworkGetInterfaces => "guest-network-get-interfaces",
            Command::GetDisks => "guest-get-disks",
            Command::FsfreezeStatus => "guest-fsfreeze-status",
            Command::FsfreezeFreeze => "guest-fsfreeze-freeze",
            Command::FsfreezeThaw => "guest-fsfreeze-thaw",
            Command::Shutdown => "guest-shutdown",
        }
    }

    /// The command of a wire name; `None` for a command Nubo does not know.
    pub fn from_name(name: &str) -> Option<Command> {
        Command::ALL.into_iter().find(|c| c.name() == name)
    }

    /// qemu-ga's `success-response`: false for the one command that sends no
    /// reply when it succeeds (the guest is going down), so a client waits
    /// for an error only.
    pub const fn success_response(self) -> bool {
        !matches!(self, Command::Shutdown)
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names as QEMU's qga/qapi-schema.json spells them.
    const SCHEMA_NAMES: [&str; 20] = [
        "guest-sync-delimited",
        "guest-sync",
        "guest-ping",
        "guest-info",
        "guest-exec",
        "guest-exec-status",
        "guest-file-open",
        "guest-file-close",
        "guest-file-read",
        "guest-file-write",
        "guest-file-seek",
        "guest-file-flush",
        "guest-get-fsinfo",
        "guest-get-osinfo",
        "guest-network-get-interfaces",
        "guest-get-disks",
        "guest-fsfreeze-status",
        "guest-fsfreeze-freeze",
        "guest-fsfreeze-thaw",
        "guest-shutdown",
    ];

    #[test]
    fn names_are_qemu_gas_and_map_back() {
        let names: Vec<&str> = Command::ALL.iter().map(|c| c.name()).collect();
        assert_eq!(names, SCHEMA_NAMES);
        for c in Command::ALL {
            assert_eq!(Command::from_name(c.name()), Some(c));
            assert_eq!(c.to_string(), c.name());
        }
        assert_eq!(Command::from_name("guest-frobnicate"), None);
        assert_eq!(Command::from_name("GUEST-PING"), None, "names are case-sensitive, as in qemu-ga");
    }

    #[test]
    fn only_shutdown_answers_nothing_on_success() {
        let silent: Vec<Command> = Command::ALL.into_iter().filter(|c| !c.success_response()).collect();
        assert_eq!(silent, [Command::Shutdown]);
    }
}
