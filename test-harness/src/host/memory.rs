//! Guest memory access for host calls: bounds-checked reads and writes, and handing
//! bytes back to the guest the way proxy-wasm hosts do.
//!
//! Every pointer here comes from the guest. A bad one is a trap with a message naming the
//! call, never a host panic. Only wasmtime's safe `Memory::read`/`write` are used.

use super::state::HostState;
use wasmtime::{Caller, Memory, Result, TypedFunc, bail, format_err};

pub(crate) type Ctx<'a> = Caller<'a, HostState>;

// Exports are looked up once at instantiation and kept in the VM's state: host calls
// reach us through the fault/scheduling wrapper (`linking`), a host-to-host call whose
// `Caller` has no instance to look exports up in.
fn memory(caller: &mut Ctx<'_>) -> Result<Memory> {
    match caller.data().exports.memory {
        Some(m) => Ok(m),
        None => bail!("the module does not export its memory as \"memory\""),
    }
}

/// `len` bytes at `ptr`; a trap if the range leaves the guest's memory.
pub(crate) fn read(caller: &mut Ctx<'_>, ptr: u32, len: u32) -> Result<Vec<u8>> {
    let mem = memory(caller)?;
    let end = u64::from(ptr) + u64::from(len);
    if end > mem.data_size(&*caller) as u64 {
        bail!("guest passed an out-of-bounds buffer: {len} bytes at {ptr:#x}");
    }
    let mut buf = vec![0u8; len as usize];
    mem.read(&*caller, ptr as usize, &mut buf)
        .map_err(|e| format_err!("reading {len} bytes at {ptr:#x}: {e}"))?;
    Ok(buf)
}

/// Reads a string argument; lossy because names and messages are for matching and
/// display, and a non-UTF-8 key must not crash the host.
pub(crate) fn read_string(caller: &mut Ctx<'_>, ptr: u32, len: u32) -> Result<String> {
    Ok(String::from_utf8_lossy(&read(caller, ptr, len)?).into_owned())
}

pub(crate) fn write(caller: &mut Ctx<'_>, ptr: u32, bytes: &[u8]) -> Result<()> {
    let mem = memory(caller)?;
    mem.write(&mut *caller, ptr as usize, bytes)
        .map_err(|e| format_err!("writing {} bytes at {ptr:#x}: {e}", bytes.len()))
}

pub(crate) fn write_u32(caller: &mut Ctx<'_>, ptr: u32, value: u32) -> Result<()> {
    write(caller, ptr, &value.to_le_bytes())
}

pub(crate) fn write_u64(caller: &mut Ctx<'_>, ptr: u32, value: u64) -> Result<()> {
    write(caller, ptr, &value.to_le_bytes())
}

/// Hands `bytes` to the guest: allocates with the module's `proxy_on_memory_allocate`,
/// copies, and stores pointer and length (u32 LE) at `ptr_ptr` and `size_ptr`. Empty
/// data is pointer 0 and length 0 with no allocation, as proxy-wasm-cpp-host's
/// `copyToPointerSize` does (the SDK reads a null pointer as "empty").
pub(crate) fn copy_out(
    caller: &mut Ctx<'_>,
    bytes: &[u8],
    ptr_ptr: u32,
    size_ptr: u32,
) -> Result<()> {
    let len = u32::try_from(bytes.len())
        .map_err(|_| format_err!("{} bytes do not fit in wasm32 memory", bytes.len()))?;
    let mut ptr = 0;
    if len > 0 {
        let Some(alloc) = caller.data().exports.alloc.clone() else {
            bail!("the module does not export proxy_on_memory_allocate")
        };
        ptr = alloc.call(&mut *caller, len)?;
        if ptr == 0 {
            bail!("proxy_on_memory_allocate({len}) returned a null pointer");
        }
        write(caller, ptr, bytes)?;
    }
    write_u32(caller, ptr_ptr, ptr)?;
    write_u32(caller, size_ptr, len)
}

/// The module's exports host calls need.
#[derive(Clone, Default)]
pub(crate) struct Exports {
    pub memory: Option<Memory>,
    pub alloc: Option<TypedFunc<u32, u32>>,
}
