//! One wasmtime `Engine` per process and one compiled `Module` per (path, mtime), shared
//! by every harness, so a test suite of hundreds of harnesses compiles the module once.
//! Rebuilding the `.wasm` changes its mtime and so gets a fresh compile.

use anyhow::{Context, anyhow};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;
use wasmtime::{Engine, Module};

type Key = (PathBuf, SystemTime);
/// Per key a `OnceLock`, so two tests wanting the same module wait for one compile while
/// tests wanting other modules are not blocked behind it.
type Slot = Arc<OnceLock<Result<Module, String>>>;

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        // Fuel bounds the work one callback may do (see `limits`).
        let mut config = wasmtime::Config::new();
        config.consume_fuel(true);
        if std::env::var_os("GATEHOUSE_HARNESS_PERFMAP").is_some() {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        Engine::new(&config).unwrap_or_else(|_| Engine::default())
    })
}

pub(crate) fn load(path: &Path) -> anyhow::Result<(Engine, Module)> {
    static CACHE: OnceLock<Mutex<HashMap<Key, Slot>>> = OnceLock::new();
    let meta = std::fs::metadata(path)
        .with_context(|| format!("reading the wasm module {}", path.display()))?;
    let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    let key = (
        path.canonicalize().unwrap_or_else(|_| path.to_path_buf()),
        mtime,
    );
    let slot = {
        let mut cache = CACHE
            .get_or_init(Default::default)
            .lock()
            .map_err(|_| anyhow!("the module cache lock is poisoned"))?;
        Arc::clone(cache.entry(key).or_default())
    };
    let module = slot.get_or_init(|| {
        Module::from_file(engine(), path)
            .map_err(|e| format!("compiling {}: {e:?}", path.display()))
    });
    match module {
        Ok(m) => Ok((engine().clone(), m.clone())),
        Err(e) => Err(anyhow!("{e}")),
    }
}
