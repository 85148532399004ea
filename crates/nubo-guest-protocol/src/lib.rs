//! The QEMU Guest Agent (QGA) protocol as Nubo speaks it, written once for
//! both ends: `nubo-guest-agent` (the agent inside the `tiny` image) serves
//! it and `nubo-hypervisor`'s `QgaClient` calls it, also against Debian's
//! stock qemu-guest-agent. A command whose arguments or reply change here
//! changes for both, so the two cannot drift apart unnoticed.
//!
//! The shapes follow QEMU's qga/qapi-schema.json member for member:
//!
//! - arguments (what the host sends) refuse unknown members, as qemu-ga
//!   does; Nubo writes both the sender and the parser of those;
//! - replies (what an agent sends) tolerate unknown members, since a
//!   stock qemu-ga adds members with each release, and members a stock
//!   agent may leave out read as their default.
//!
//! Binary payloads (`buf-b64`, `out-data`, `input-data`) stay base64 text
//! here; each side encodes and decodes them with its own base64 library, so
//! that this crate depends on serde alone.

mod command;
mod control;
mod exec;
mod facts;
mod file;
mod framing;

pub use command::Command;
pub use control::{FsfreezeStatus, ShutdownArgs, ShutdownMode, SyncArgs, UnknownValue};
pub use exec::{CaptureMode, CaptureOutput, ExecArgs, ExecReturn, ExecStatus, ExecStatusArgs};
pub use facts::{
    CommandInfo, Disk, DiskAddress, FsInfo, GuestInfo, IpAddress, IpAddressType, NetworkInterface, NetworkStats,
    OsInfo, PciAddress,
};
pub use file::{
    FileOpenArgs, FileReadArgs, FileReadReturn, FileSeekArgs, FileSeekReturn, FileWriteArgs, FileWriteReturn,
    HandleArgs, Whence,
};
pub use framing::{
    request_line, Empty, ErrorBody, ErrorReply, Request, ReturnReply, EXEC_OUTPUT_MAX, FILE_READ_COUNT_DEFAULT,
    FILE_READ_COUNT_MAX, GENERIC_ERROR, PORT_NAME, SENTINEL,
};

/// What the modules' tests share.
#[cfg(test)]
mod testing {
    use serde::{Deserialize, Serialize};
    use serde_json::Value;

    /// `wire` (JSON as QEMU's guest agent sends or accepts it) reads as
    /// `typed`, and `typed` writes exactly `wire`.
    pub fn round_trip<T>(wire: Value, typed: T)
    where
        T: Serialize + for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug,
    {
        assert_eq!(serde_json::from_value::<T>(wire.clone()).expect("parse"), typed);
        assert_eq!(serde_json::to_value(&typed).expect("serialise"), wire);
    }
}
