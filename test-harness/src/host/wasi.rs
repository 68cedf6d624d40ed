//! The WASI (`wasi_snapshot_preview1`) calls Rust's std makes in a proxy-wasm module,
//! answered the way Envoy's null-filesystem WASI shim does: stdout/stderr become log lines,
//! the environment is `vm_config.environment_variables`, clocks and randomness come from
//! the harness (virtual time, seeded generator), there are no files and no arguments.
//!
//! Unlisted WASI calls are linked as traps naming the call (see [`super::linking`]).

use super::memory::{self, Ctx};
use super::state::HostState;
use wasmtime::{Linker, Result, bail};

const WASI: &str = "wasi_snapshot_preview1";

/// WASI errno values used here.
const SUCCESS: u32 = 0;
const BADF: u32 = 8;
const INVAL: u32 = 28;

/// WASI `filetype::character_device`, what Envoy reports for stdout and stderr.
const CHARACTER_DEVICE: u8 = 2;

pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> Result<()> {
    linker.func_wrap(
        WASI,
        "fd_write",
        |mut c: Ctx<'_>, fd: u32, iovs: u32, iovs_len: u32, nwritten: u32| -> Result<u32> {
            if fd != 1 && fd != 2 {
                return Ok(BADF);
            }
            let table_len = iovs_len
                .checked_mul(8)
                .ok_or_else(|| wasmtime::format_err!("fd_write: {iovs_len} iovecs overflow"))?;
            let table = memory::read(&mut c, iovs, table_len)?;
            let mut written: u32 = 0;
            for iov in table.chunks_exact(8) {
                let (ptr, len) = match (iov.get(0..4), iov.get(4..8)) {
                    (Some(p), Some(l)) => (le_u32(p), le_u32(l)),
                    _ => bail!("fd_write: malformed iovec"),
                };
                let bytes = memory::read(&mut c, ptr, len)?;
                c.data_mut().write_stdio(fd, &bytes);
                written = written.saturating_add(len);
            }
            memory::write_u32(&mut c, nwritten, written)?;
            Ok(SUCCESS)
        },
    )?;

    linker.func_wrap(WASI, "fd_close", |_c: Ctx<'_>, _fd: u32| -> Result<u32> {
        Ok(BADF)
    })?;

    linker.func_wrap(
        WASI,
        "fd_seek",
        |_c: Ctx<'_>, _fd: u32, _offset: i64, _whence: u32, _ret: u32| -> Result<u32> { Ok(BADF) },
    )?;

    linker.func_wrap(
        WASI,
        "fd_fdstat_get",
        |mut c: Ctx<'_>, fd: u32, ret: u32| -> Result<u32> {
            if fd > 2 {
                return Ok(BADF);
            }
            // struct fdstat { u8 filetype; u16 flags @2; u64 rights_base @8; u64 inheriting @16 }
            let mut stat = [0u8; 24];
            stat[0] = CHARACTER_DEVICE;
            stat[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
            stat[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
            memory::write(&mut c, ret, &stat)?;
            Ok(SUCCESS)
        },
    )?;

    // No pre-opened directories: std stops scanning at the first BADF.
    linker.func_wrap(
        WASI,
        "fd_prestat_get",
        |_c: Ctx<'_>, _fd: u32, _ret: u32| -> Result<u32> { Ok(BADF) },
    )?;
    linker.func_wrap(
        WASI,
        "fd_prestat_dir_name",
        |_c: Ctx<'_>, _fd: u32, _ptr: u32, _len: u32| -> Result<u32> { Ok(BADF) },
    )?;

    linker.func_wrap(
        WASI,
        "environ_sizes_get",
        |mut c: Ctx<'_>, count_ptr: u32, size_ptr: u32| -> Result<u32> {
            let (count, size) = environ_sizes(c.data());
            memory::write_u32(&mut c, count_ptr, count)?;
            memory::write_u32(&mut c, size_ptr, size)?;
            Ok(SUCCESS)
        },
    )?;

    linker.func_wrap(
        WASI,
        "environ_get",
        |mut c: Ctx<'_>, environ: u32, buf: u32| -> Result<u32> {
            let entries: Vec<Vec<u8>> = c
                .data()
                .env
                .iter()
                .map(|(k, v)| format!("{k}={v}\0").into_bytes())
                .collect();
            let mut at = buf;
            for (i, entry) in (0u32..).zip(&entries) {
                memory::write_u32(&mut c, environ.wrapping_add(i * 4), at)?;
                memory::write(&mut c, at, entry)?;
                at = at.wrapping_add(u32::try_from(entry.len()).unwrap_or(u32::MAX));
            }
            Ok(SUCCESS)
        },
    )?;

    linker.func_wrap(
        WASI,
        "args_sizes_get",
        |mut c: Ctx<'_>, count_ptr: u32, size_ptr: u32| -> Result<u32> {
            memory::write_u32(&mut c, count_ptr, 0)?;
            memory::write_u32(&mut c, size_ptr, 0)?;
            Ok(SUCCESS)
        },
    )?;
    linker.func_wrap(
        WASI,
        "args_get",
        |_c: Ctx<'_>, _argv: u32, _buf: u32| -> Result<u32> { Ok(SUCCESS) },
    )?;

    linker.func_wrap(
        WASI,
        "random_get",
        |mut c: Ctx<'_>, ptr: u32, len: u32| -> Result<u32> {
            // Bounds first, so a huge guest length cannot make the host allocate.
            memory::read(&mut c, ptr, 0)?;
            let mut bytes = vec![0u8; len as usize];
            c.data().world.lock().rng.fill(&mut bytes);
            memory::write(&mut c, ptr, &bytes)?;
            Ok(SUCCESS)
        },
    )?;

    linker.func_wrap(
        WASI,
        "clock_time_get",
        |mut c: Ctx<'_>, id: u32, _precision: u64, ret: u32| -> Result<u32> {
            let clock = c.data().world.lock().clock;
            let now = match id {
                0 => clock.realtime_nanos,
                // monotonic, process and thread CPU time all follow the virtual monotonic clock
                1..=3 => clock.monotonic_nanos,
                _ => return Ok(INVAL),
            };
            memory::write_u64(&mut c, ret, now)?;
            Ok(SUCCESS)
        },
    )?;

    linker.func_wrap(
        WASI,
        "clock_res_get",
        |mut c: Ctx<'_>, id: u32, ret: u32| -> Result<u32> {
            if id > 3 {
                return Ok(INVAL);
            }
            memory::write_u64(&mut c, ret, 1)?;
            Ok(SUCCESS)
        },
    )?;

    linker.func_wrap(WASI, "sched_yield", |_c: Ctx<'_>| -> Result<u32> {
        Ok(SUCCESS)
    })?;

    linker.func_wrap(WASI, "proc_exit", |_c: Ctx<'_>, code: u32| -> Result<()> {
        bail!("the module called proc_exit({code})")
    })?;

    Ok(())
}

fn le_u32(bytes: &[u8]) -> u32 {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(bytes.get(..4).unwrap_or(&[0; 4]));
    u32::from_le_bytes(raw)
}

/// Number of `KEY=VALUE\0` strings and their total size.
fn environ_sizes(state: &HostState) -> (u32, u32) {
    let count = state.env.len();
    let size: usize = state.env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    (
        u32::try_from(count).unwrap_or(u32::MAX),
        u32::try_from(size).unwrap_or(u32::MAX),
    )
}
