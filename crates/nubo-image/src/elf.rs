//! Just enough ELF64 (little-endian) reading for the image builder: a named
//! section's bytes (a kernel module's `.modinfo`), the `DT_NEEDED` libraries
//! and the `PT_INTERP` loader of a dynamically linked program.

/// A parsed ELF64 little-endian file, borrowing its bytes.
pub(crate) struct Elf<'a> {
    data: &'a [u8],
    sections: Vec<Section>,
}

#[derive(Debug, Clone, Copy)]
struct Section {
    name: u32,
    kind: u32,
    offset: usize,
    size: usize,
    link: u32,
}

const SHT_DYNAMIC: u32 = 6;
const SHT_NOBITS: u32 = 8;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const PT_INTERP: u32 = 3;

fn u16_at(d: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(d.get(off..off.checked_add(2)?)?.try_into().ok()?))
}
fn u32_at(d: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(d.get(off..off.checked_add(4)?)?.try_into().ok()?))
}
fn u64_at(d: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(d.get(off..off.checked_add(8)?)?.try_into().ok()?))
}

/// The NUL-terminated string at `off` in `table`.
fn c_str(table: &[u8], off: usize) -> Option<&str> {
    let rest = table.get(off..)?;
    let end = rest.iter().position(|&b| b == 0)?;
    std::str::from_utf8(&rest[..end]).ok()
}

impl<'a> Elf<'a> {
    /// Parses the headers; `Err` describes why `data` is not a usable ELF64 LE file.
    pub fn parse(data: &'a [u8]) -> Result<Self, String> {
        if data.get(..4) != Some(b"\x7fELF") {
            return Err("not an ELF file".into());
        }
        if data.get(4) != Some(&2) || data.get(5) != Some(&1) {
            return Err("not a 64-bit little-endian ELF file".into());
        }
        let bad = || "truncated ELF header".to_string();
        let shoff = usize::try_from(u64_at(data, 0x28).ok_or_else(bad)?).map_err(|_| bad())?;
        let shentsize = usize::from(u16_at(data, 0x3A).ok_or_else(bad)?);
        let shnum = usize::from(u16_at(data, 0x3C).ok_or_else(bad)?);
        let mut sections = Vec::with_capacity(shnum);
        for i in 0..shnum {
            let base =
                i.checked_mul(shentsize).and_then(|o| o.checked_add(shoff)).ok_or("section header offset overflows")?;
            let sh = |off: usize| u64_at(data, base.saturating_add(off));
            let s = Section {
                name: u32_at(data, base).ok_or("truncated section header")?,
                kind: u32_at(data, base.saturating_add(4)).ok_or("truncated section header")?,
                offset: sh(0x18).ok_or("truncated section header")? as usize,
                size: sh(0x20).ok_or("truncated section header")? as usize,
                link: u32_at(data, base.saturating_add(0x28)).ok_or("truncated section header")?,
            };
            sections.push(s);
        }
        Ok(Self { data, sections })
    }

    fn bytes(&self, s: &Section) -> Option<&'a [u8]> {
        if s.kind == SHT_NOBITS {
            return Some(&[]);
        }
        self.data.get(s.offset..s.offset.checked_add(s.size)?)
    }

    /// The contents of the section called `name`, if present.
    pub fn section(&self, name: &str) -> Option<&'a [u8]> {
        let shstrndx = usize::from(u16_at(self.data, 0x3E)?);
        let names = self.bytes(self.sections.get(shstrndx)?)?;
        let s = self.sections.iter().find(|s| c_str(names, s.name as usize) == Some(name))?;
        self.bytes(s)
    }

    /// The `DT_NEEDED` entries (shared libraries) of a dynamically linked file.
    pub fn needed(&self) -> Vec<String> {
        let mut out = Vec::new();
        for s in self.sections.iter().filter(|s| s.kind == SHT_DYNAMIC) {
            let (Some(dynamic), Some(strtab)) =
                (self.bytes(s), self.sections.get(s.link as usize).and_then(|t| self.bytes(t)))
            else {
                continue;
            };
            for entry in dynamic.chunks_exact(16) {
                let (Some(tag), Some(val)) = (u64_at(entry, 0), u64_at(entry, 8)) else {
                    break;
                };
                match tag {
                    DT_NULL => break,
                    DT_NEEDED => {
                        if let Some(name) = c_str(strtab, val as usize) {
                            out.push(name.to_string());
                        }
                    }
                    _ => {}
                }
            }
        }
        out
    }

    /// The program interpreter (dynamic loader) path from `PT_INTERP`, if any.
    pub fn interpreter(&self) -> Option<String> {
        let d = self.data;
        let phoff = usize::try_from(u64_at(d, 0x20)?).ok()?;
        let phentsize = usize::from(u16_at(d, 0x36)?);
        let phnum = usize::from(u16_at(d, 0x38)?);
        for i in 0..phnum {
            let base = i.checked_mul(phentsize)?.checked_add(phoff)?;
            if u32_at(d, base)? == PT_INTERP {
                let off = usize::try_from(u64_at(d, base.saturating_add(0x08))?).ok()?;
                let size = usize::try_from(u64_at(d, base.saturating_add(0x20))?).ok()?;
                let raw = d.get(off..off.checked_add(size)?)?;
                return c_str(raw, 0).map(str::to_string);
            }
        }
        None
    }
}

/// The `key=value` strings of a kernel module's `.modinfo` section.
pub(crate) fn modinfo(module: &[u8]) -> Result<Vec<(String, String)>, String> {
    let elf = Elf::parse(module)?;
    let section = elf.section(".modinfo").ok_or("no .modinfo section (not a kernel module?)")?;
    Ok(section
        .split(|&b| b == 0)
        .filter_map(|entry| {
            let entry = std::str::from_utf8(entry).ok()?;
            let (k, v) = entry.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_non_elf() {
        assert!(Elf::parse(b"#!/bin/sh\n").is_err());
        assert!(Elf::parse(b"\x7fELF\x01\x01").is_err());
        assert!(modinfo(b"").is_err());
    }

    #[test]
    fn reads_this_test_binary() {
        // The test executable itself is an ELF64 file on the supported hosts.
        let exe = std::env::current_exe().expect("the test binary's path");
        let data = std::fs::read(&exe).unwrap_or_else(|e| panic!("cannot read {}: {e}", exe.display()));
        let elf = Elf::parse(&data).expect("test binary parses");
        assert!(elf.section(".text").is_some());
    }
}
