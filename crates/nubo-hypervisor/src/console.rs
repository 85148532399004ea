//! A VM's serial console on disk, capped: the pump that carries QEMU's
//! serial output into `console.log` and keeps at most a fixed number of
//! bytes of it on disk, and the reader that finds the newest output in it.
//!
//! Why this shape: a guest controls how much it writes to its serial port
//! (`cat /dev/urandom > /dev/ttyS0`), and the log sits on the filesystem
//! that holds every tenant's disks. QEMU's `-chardev file` appends forever
//! and nothing outside QEMU can bound it (truncating it under QEMU races
//! with its writes, and nothing trims while the agent is down). So QEMU
//! writes to a unix socket instead (`-chardev socket,server=on,wait=off`)
//! and the agent is the file's only writer:
//!
//! - While nobody is connected, QEMU's socket chardev discards what the
//!   guest writes: an agent that is down or restarting costs some console
//!   output, never disk, never QEMU memory, and never blocks the guest.
//! - While the pump is connected it only reads and appends, on a thread of
//!   its own, so the guest's serial runs at the rate the pump drains it.
//! - The log keeps growing in offsets but not in blocks: everything older
//!   than the newest `cap` bytes is turned into a hole
//!   (`FALLOC_FL_PUNCH_HOLE`). Offsets stay monotonic across agent restarts
//!   (the agent resumes shipping to the control plane by offset), and the
//!   blocks on disk never exceed the cap. Readers skip the hole with
//!   `SEEK_DATA`.
//!
//! The pump is also the console's multiplexer, since QEMU's socket chardev
//! takes one client: besides the log it hands each chunk to any number of
//! live viewers ([`Pumps::attach`]), each through a bounded queue it fills
//! without waiting (a viewer that falls [`VIEWER_QUEUE`] chunks behind is
//! dropped, never the guest nor the log), and it writes viewers' keystrokes
//! to the guest through its own end of the socket.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rustix::fs::FallocateFlags;
use tracing::{debug, info, warn};

use crate::VmDir;

/// Default bytes of console output kept on disk per VM.
pub const DEFAULT_CONSOLE_CAP: u64 = 1024 * 1024;

/// Smallest cap accepted: below one read of the pump, the newest output
/// would not even hold one chunk.
pub const MIN_CONSOLE_CAP: u64 = 64 * 1024;

/// Holes are punched in whole filesystem blocks; caps are rounded up to this.
const BLOCK: u64 = 4096;

/// Bytes the pump moves per read. With the slack below, at most a quarter
/// of the smallest cap, so a hole punched for the length the file is about
/// to have never reaches past its current end.
const PUMP_READ: usize = 16 * 1024;

/// How far ahead of what the cap requires a trim punches, so that a flood
/// (which QEMU hands over a byte or so per read) costs one punch per this
/// many bytes rather than one per read. The newest `cap - slack` bytes are
/// always kept.
fn slack(cap: u64) -> u64 {
    ((cap / 8).min(64 * 1024) / BLOCK) * BLOCK
}

/// `cap` as the pump applies it: at least [`MIN_CONSOLE_CAP`], a whole number of blocks.
pub fn effective_cap(cap: u64) -> u64 {
    cap.max(MIN_CONSOLE_CAP).div_ceil(BLOCK) * BLOCK
}

/// Turns everything of `file` before its newest `cap` bytes into a hole.
/// `len` is the file's length, or the length it is about to have; `punched` is how far earlier calls got (a
/// hint: punching an existing hole again is harmless). Returns the new
/// `punched`.
fn trim(file: &File, len: u64, cap: u64, punched: u64) -> std::io::Result<u64> {
    // Rounded up so that the blocks that stay, from the hole's end to the
    // end of the last (partial) block, never add up to more than `cap`.
    let need = len.saturating_sub(cap).div_ceil(BLOCK) * BLOCK;
    if need <= punched {
        return Ok(punched);
    }
    let upto = (len.saturating_sub(cap) + slack(cap)).div_ceil(BLOCK) * BLOCK;
    rustix::fs::fallocate(file, FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE, punched, upto - punched)?;
    Ok(upto)
}

/// Trims the log at `path` to its newest `cap` bytes (a no-op if it is
/// missing). For a log some other writer appends to (a VM started before
/// the pump existed, whose QEMU still writes the file itself).
pub fn trim_file(path: &Path, cap: u64) -> std::io::Result<()> {
    let file = match std::fs::OpenOptions::new().write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    trim(&file, len, effective_cap(cap), 0).map(|_| ())
}

/// Bytes the log at `path` takes on disk (its allocated blocks, not its
/// length, which counts the trimmed hole too). 0 if it is missing.
pub fn disk_bytes(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.blocks() * 512).unwrap_or(0)
}

/// Up to `max` bytes of the log at `path`, from `offset` or, when that part
/// was trimmed away, from the oldest byte still kept. Returns where the
/// bytes start; an empty read means nothing new after `offset`.
pub fn read_console(path: &Path, offset: u64, max: u64) -> std::io::Result<(u64, Vec<u8>)> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    if len <= offset {
        return Ok((offset, Vec::new()));
    }
    let start = match rustix::fs::seek(&f, rustix::fs::SeekFrom::Data(offset)) {
        Ok(at) => at,
        // Nothing but a hole after `offset`: nothing to read yet.
        Err(rustix::io::Errno::NXIO) => return Ok((len, Vec::new())),
        // A filesystem that cannot tell holes: read the hole's zeros.
        Err(_) => offset,
    };
    f.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    f.take(max.min(len.saturating_sub(start))).read_to_end(&mut buf)?;
    Ok((start, buf))
}

/// Chunks of output a viewer may be behind before the pump drops it.
pub const VIEWER_QUEUE: usize = 256;

/// Longest a viewer's keystrokes wait for QEMU to take them (a guest that
/// does not read its serial port fills QEMU's buffer): past it the write
/// fails rather than holding the viewer's relay forever.
const INPUT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The live side of one VM's console, shared by its pump and its viewers.
#[derive(Debug)]
struct Mux {
    viewers: Mutex<Vec<tokio::sync::mpsc::Sender<Vec<u8>>>>,
    /// The pump's socket, for writing the viewers' input to the guest.
    input: Mutex<UnixStream>,
}

impl Mux {
    /// Hands `chunk` to every viewer without waiting; drops those that
    /// are gone or too far behind (their receiver then ends).
    fn fan_out(&self, chunk: &[u8], vm: &str) {
        let mut viewers = lock(&self.viewers);
        viewers.retain(|v| match v.try_send(chunk.to_vec()) {
            Ok(()) => true,
            Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                info!(%vm, "a console viewer fell too far behind and was disconnected");
                false
            }
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => false,
        });
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One viewer of a VM's serial console: its output from the moment it
/// attached, and a way to type into it. Dropping the output detaches.
#[derive(Debug)]
pub struct ConsoleViewer {
    /// The guest's output; ends when the VM's console closes or when the
    /// viewer fell [`VIEWER_QUEUE`] chunks behind.
    pub output: tokio::sync::mpsc::Receiver<Vec<u8>>,
    pub input: ConsoleInput,
}

/// Writes to a VM's serial port (shared by its viewers).
#[derive(Debug, Clone)]
pub struct ConsoleInput {
    mux: Arc<Mux>,
}

impl ConsoleInput {
    /// Writes `bytes` to the guest's serial port. Blocks for at most
    /// [`INPUT_TIMEOUT`]; call it off the async runtime's threads.
    pub fn send(&self, bytes: &[u8]) -> std::io::Result<()> {
        lock(&self.mux.input).write_all(bytes)
    }
}

/// A running pump: its thread, and the console it multiplexes.
type Pump = (JoinHandle<()>, Arc<Mux>);

/// The pump threads of one driver, by VM directory: one per running VM.
#[derive(Debug, Default, Clone)]
pub(crate) struct Pumps {
    running: Arc<Mutex<HashMap<PathBuf, Pump>>>,
}

impl Pumps {
    /// Starts a pump for `dir` unless one runs. Without a console socket
    /// (a VM started by an older agent, whose QEMU writes the log file
    /// itself) it trims that file instead, so such a log is bounded from
    /// one call to the next.
    pub(crate) fn ensure(&self, dir: &VmDir, cap: u64) {
        let cap = effective_cap(cap);
        let mut running = match self.running.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        running.retain(|_, (h, _)| !h.is_finished());
        if running.contains_key(dir.path()) {
            return;
        }
        let socket = dir.console_socket();
        let log = dir.console_log();
        let vm = dir.label();
        let stream = match UnixStream::connect(&socket) {
            Ok(s) => s,
            Err(e) => {
                debug!(%vm, error = %e, "no console socket to read");
                if let Err(e) = trim_file(&log, cap) {
                    warn!(%vm, error = %e, log = %log.display(), "cannot trim the console log");
                }
                return;
            }
        };
        // Opened here rather than on the thread, so the log exists once
        // `start` returns. Without it nobody reads and QEMU drops the output.
        let file = match std::fs::OpenOptions::new().create(true).append(true).open(&log) {
            Ok(f) => f,
            Err(e) => {
                warn!(%vm, error = %e, log = %log.display(), "cannot open the console log; console output is dropped");
                return;
            }
        };
        // The input side is a second handle on the same socket, with a
        // send timeout (reads, the pump's, have none).
        let input = match stream.try_clone().and_then(|s| s.set_write_timeout(Some(INPUT_TIMEOUT)).map(|()| s)) {
            Ok(s) => s,
            Err(e) => {
                warn!(%vm, error = %e, "cannot open the console's input side; console output is dropped");
                return;
            }
        };
        let mux = Arc::new(Mux { viewers: Mutex::new(Vec::new()), input: Mutex::new(input) });
        let shared = mux.clone();
        let name = format!("console-{vm}");
        match std::thread::Builder::new().name(name).spawn(move || pump(stream, file, &log, cap, &vm, &shared)) {
            Ok(h) => {
                running.insert(dir.path().to_path_buf(), (h, mux));
            }
            Err(e) => warn!(error = %e, "cannot start a console pump thread"),
        }
    }

    /// A new viewer of `dir`'s console (starting its pump if none runs);
    /// `None` when the VM has no console socket to read.
    pub(crate) fn attach(&self, dir: &VmDir, cap: u64) -> Option<ConsoleViewer> {
        self.ensure(dir, cap);
        let running = lock(&self.running);
        let (handle, mux) = running.get(dir.path())?;
        if handle.is_finished() {
            return None;
        }
        let (tx, output) = tokio::sync::mpsc::channel(VIEWER_QUEUE);
        lock(&mux.viewers).push(tx);
        Some(ConsoleViewer { output, input: ConsoleInput { mux: mux.clone() } })
    }
}

/// Copies what QEMU sends into `log` until QEMU closes the socket, keeping
/// the newest `cap` bytes on disk. Write errors (a full disk) lose output
/// but never stop the reading: a pump that stopped reading would stall the
/// guest's serial port.
fn pump(mut stream: UnixStream, mut file: File, log: &Path, cap: u64, vm: &str, mux: &Mux) {
    let mut len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut punched = 0;
    let mut failing = false;
    let mut buf = vec![0u8; PUMP_READ];
    info!(%vm, cap, "console pump connected");
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                debug!(%vm, error = %e, "console socket read failed");
                break;
            }
        };
        mux.fan_out(&buf[..n], vm);
        let f = &mut file;
        // Punch first, for the length the file is about to have: trimming
        // after the write would leave the cap exceeded in between.
        let step = trim(f, len + n as u64, cap, punched).and_then(|p| {
            f.write_all(&buf[..n])?;
            len += n as u64;
            Ok(p)
        });
        match step {
            Ok(p) => {
                punched = p;
                failing = false;
            }
            Err(e) => {
                if !failing {
                    warn!(%vm, error = %e, log = %log.display(), "cannot write the console log; output is dropped until it works again");
                }
                failing = true;
                // The length is unknown after a partial write: ask again.
                len = f.metadata().map(|m| m.len()).unwrap_or(len);
            }
        }
    }
    // Viewers see their output end.
    lock(&mux.viewers).clear();
    info!(%vm, "console pump stopped (QEMU closed the console)");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_are_whole_blocks_and_not_tiny() {
        assert_eq!(effective_cap(0), MIN_CONSOLE_CAP);
        assert_eq!(effective_cap(1024 * 1024), 1024 * 1024);
        assert_eq!(effective_cap(1024 * 1024 + 1), 1024 * 1024 + 4096);
        // A punch ahead for a read never passes the file's current end.
        assert!(PUMP_READ as u64 + slack(MIN_CONSOLE_CAP) + BLOCK <= MIN_CONSOLE_CAP);
        assert_eq!(slack(DEFAULT_CONSOLE_CAP), 64 * 1024);
    }

    /// The bytes of `path` that are data, not holes (SEEK_DATA/SEEK_HOLE).
    fn data_bytes(path: &Path) -> u64 {
        use rustix::fs::SeekFrom;
        let f = File::open(path).unwrap();
        let len = f.metadata().unwrap().len();
        let (mut at, mut total) = (0u64, 0u64);
        while at < len {
            let Ok(start) = rustix::fs::seek(&f, SeekFrom::Data(at)) else { break };
            let end = rustix::fs::seek(&f, SeekFrom::Hole(start)).unwrap();
            total += end - start;
            at = end;
        }
        total
    }

    #[test]
    fn a_ring_keeps_the_newest_cap_bytes_and_no_more_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).unwrap();
        let cap = effective_cap(128 * 1024);
        let (mut len, mut punched) = (0u64, 0u64);
        for i in 0..200u32 {
            let line = format!("line {i:05} {}\n", "x".repeat(7000));
            punched = trim(&f, len + line.len() as u64, cap, punched).unwrap();
            f.write_all(line.as_bytes()).unwrap();
            f.sync_data().unwrap();
            len += line.len() as u64;
            // The bytes of data kept are within the cap; the file system
            // may count one block of its own beside them (ext4's extent
            // index, once the holes split the file into enough extents).
            assert!(data_bytes(&path) <= cap, "{} bytes of data after line {i}, cap {cap}", data_bytes(&path));
            assert!(disk_bytes(&path) <= cap + BLOCK, "{} bytes on disk after line {i}, cap {cap}", disk_bytes(&path));
        }
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len, "offsets stay monotonic");
        // A reader from 0 lands on the oldest byte kept, and sees the newest line.
        let (start, bytes) = read_console(&path, 0, u64::MAX).unwrap();
        assert!(start >= len - cap && start % BLOCK == 0, "start {start}");
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.trim_end().ends_with(&"x".repeat(100)) && text.contains("line 00199"));
        assert!(!text.contains("line 00100"));
        // Reading after the end finds nothing; in the kept part reads as asked.
        assert!(read_console(&path, len, 10).unwrap().1.is_empty());
        let (at, b) = read_console(&path, len - 5, 10).unwrap();
        assert_eq!((at, b.len()), (len - 5, 5));
    }

    #[test]
    fn trim_file_bounds_a_log_someone_else_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        std::fs::write(&path, vec![b'a'; 1024 * 1024]).unwrap();
        trim_file(&path, 64 * 1024).unwrap();
        assert!(disk_bytes(&path) <= 64 * 1024);
        trim_file(&dir.path().join("missing"), 64 * 1024).unwrap();
    }

    /// The done-when figure of the console flood: a whole GiB, as QEMU
    /// would hand it over, through the real pump. (Under TCG a guest's
    /// serial port moves 100-360 KiB/s, so the end-to-end security test
    /// floods for 40 s instead; this one covers the volume.)
    #[test]
    fn a_gibibyte_through_the_pump_leaves_at_most_the_cap_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let vm = VmDir::new(dir.path());
        let listener = std::os::unix::net::UnixListener::bind(vm.console_socket()).unwrap();
        let pumps = Pumps::default();
        const GIB: usize = 1 << 30;
        let feeder = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let chunk = vec![b'z'; 64 * 1024];
            for _ in 0..GIB / chunk.len() {
                s.write_all(&chunk).unwrap();
            }
            s.write_all(b"\nTHE END\n").unwrap();
        });
        pumps.ensure(&vm, DEFAULT_CONSOLE_CAP);
        let log = vm.console_log();
        let (mut most, mut samples) = (0u64, 0u32);
        while !feeder.is_finished() {
            most = most.max(disk_bytes(&log));
            samples += 1;
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        feeder.join().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !pumps.running.lock().unwrap().values().all(|(h, _)| h.is_finished()) {
            assert!(std::time::Instant::now() < deadline, "the pump did not finish the GiB");
            most = most.max(disk_bytes(&log));
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        most = most.max(disk_bytes(&log));
        assert!(samples > 10, "the flood ended before it could be watched");
        assert!(most <= DEFAULT_CONSOLE_CAP, "{most} bytes on disk during a 1 GiB flood (cap {DEFAULT_CONSOLE_CAP})");
        assert!(std::fs::metadata(&log).unwrap().len() > GIB as u64, "the whole GiB went through");
        let (_, tail) = read_console(&log, 0, u64::MAX).unwrap();
        assert!(String::from_utf8_lossy(&tail).ends_with("THE END\n"), "the newest output is kept");
    }

    #[test]
    fn the_pump_drains_a_socket_into_a_capped_log() {
        let dir = tempfile::tempdir().unwrap();
        let vm = VmDir::new(dir.path());
        let listener = std::os::unix::net::UnixListener::bind(vm.console_socket()).unwrap();
        let pumps = Pumps::default();
        let feeder = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            for i in 0..64u32 {
                s.write_all(format!("{i:04}{}\n", "y".repeat(16 * 1024)).as_bytes()).unwrap();
            }
            s.write_all(b"THE END\n").unwrap();
        });
        pumps.ensure(&vm, 64 * 1024);
        // A second call while it runs starts no second pump.
        pumps.ensure(&vm, 64 * 1024);
        feeder.join().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let done = pumps.running.lock().unwrap().values().all(|(h, _)| h.is_finished());
            if done {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the pump did not stop when the socket closed");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let log = vm.console_log();
        assert!(disk_bytes(&log) <= 64 * 1024, "{} bytes on disk", disk_bytes(&log));
        let (_, tail) = read_console(&log, 0, u64::MAX).unwrap();
        assert!(String::from_utf8_lossy(&tail).ends_with("THE END\n"));
    }

    /// A fake QEMU console: the listener side of `vm`'s console socket.
    fn fake_console(vm: &VmDir) -> std::os::unix::net::UnixListener {
        std::os::unix::net::UnixListener::bind(vm.console_socket()).unwrap()
    }

    #[test]
    fn every_viewer_sees_the_output_and_the_log_keeps_it_all() {
        let dir = tempfile::tempdir().unwrap();
        let vm = VmDir::new(dir.path());
        let listener = fake_console(&vm);
        let pumps = Pumps::default();
        pumps.ensure(&vm, 64 * 1024);
        let (mut qemu, _) = listener.accept().unwrap();
        let mut a = pumps.attach(&vm, 64 * 1024).unwrap();
        let mut b = pumps.attach(&vm, 64 * 1024).unwrap();
        qemu.write_all(b"login: ").unwrap();
        for v in [&mut a, &mut b] {
            let mut got = Vec::new();
            while got.len() < 7 {
                got.extend(v.output.blocking_recv().unwrap());
            }
            assert_eq!(got, b"login: ");
        }
        drop(qemu);
        // QEMU closing the console ends every viewer's output.
        assert!(a.output.blocking_recv().is_none());
        assert!(b.output.blocking_recv().is_none());
        let (_, log) = read_console(&vm.console_log(), 0, u64::MAX).unwrap();
        assert_eq!(log, b"login: ");
    }

    #[test]
    fn a_slow_viewer_is_dropped_while_the_others_and_the_log_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let vm = VmDir::new(dir.path());
        let listener = fake_console(&vm);
        let pumps = Pumps::default();
        pumps.ensure(&vm, 64 * 1024);
        let (mut qemu, _) = listener.accept().unwrap();
        let mut fast = pumps.attach(&vm, 64 * 1024).unwrap();
        // Attached, never read: it falls behind.
        let mut slow = pumps.attach(&vm, 64 * 1024).unwrap();
        let rounds = VIEWER_QUEUE + 20;
        for i in 0..rounds {
            let line = format!("{i:05}\n");
            qemu.write_all(line.as_bytes()).unwrap();
            // One read of the pump per line: wait until the fast viewer has it.
            let got = fast.output.blocking_recv().unwrap();
            assert_eq!(got, line.as_bytes(), "the fast viewer gets every line, in order");
        }
        // The slow one got what fit in its queue, then its output ended.
        let mut kept = 0;
        while let Some(chunk) = slow.output.blocking_recv() {
            assert_eq!(chunk, format!("{kept:05}\n").as_bytes());
            kept += 1;
        }
        assert_eq!(kept, VIEWER_QUEUE);
        drop(qemu);
        assert!(fast.output.blocking_recv().is_none());
        let (_, log) = read_console(&vm.console_log(), 0, u64::MAX).unwrap();
        assert_eq!(log.len(), rounds * 6, "the log lost nothing to the slow viewer");
    }

    #[test]
    fn a_viewers_input_reaches_the_guest() {
        let dir = tempfile::tempdir().unwrap();
        let vm = VmDir::new(dir.path());
        let listener = fake_console(&vm);
        let pumps = Pumps::default();
        pumps.ensure(&vm, 64 * 1024);
        let (mut qemu, _) = listener.accept().unwrap();
        let viewer = pumps.attach(&vm, 64 * 1024).unwrap();
        viewer.input.send(b"echo $((6*7))\r").unwrap();
        let mut got = vec![0u8; 14];
        qemu.read_exact(&mut got).unwrap();
        assert_eq!(got, b"echo $((6*7))\r");
        // Without a console socket there is nothing to attach to.
        let other = tempfile::tempdir().unwrap();
        assert!(pumps.attach(&VmDir::new(other.path()), 64 * 1024).is_none());
    }
}
