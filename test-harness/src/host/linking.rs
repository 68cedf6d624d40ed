//! Builds the import set for one module: the proxy-wasm functions ([`super::abi`]), the
//! WASI functions ([`super::wasi`]), and for every other import a function of the
//! module's declared type that traps with `unimplemented host call MODULE.NAME` when
//! called. Loading therefore never fails on an import we lack; only using it does, with
//! a message that says what to implement.

use super::state::HostState;
use super::{abi, wasi};
use wasmtime::{Engine, ExternType, Linker, Module, Result, Store, bail};

pub(crate) fn linker_for(
    engine: &Engine,
    module: &Module,
    store: &mut Store<HostState>,
) -> Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    abi::add_to_linker(&mut linker)?;
    wasi::add_to_linker(&mut linker)?;
    linker.allow_shadowing(true);
    for import in module.imports() {
        let ExternType::Func(wanted) = import.ty() else {
            continue;
        };
        let (module_name, name) = (import.module().to_string(), import.name().to_string());
        let ours = linker
            .get(&mut *store, &module_name, &name)
            .ok()
            .and_then(|e| e.ty(&*store).func().cloned());
        let message = match ours {
            Some(have) if have.matches(&wanted) => continue,
            // Same name, another signature: an ABI we do not speak; trap like an unknown call.
            Some(have) => format!(
                "unimplemented host call {module_name}.{name}: the module imports it as {wanted:?}, the harness has {have:?}"
            ),
            None => format!("unimplemented host call {module_name}.{name}"),
        };
        linker.func_new(&module_name, &name, wanted, move |_, _, _| {
            bail!("{message}")
        })?;
    }
    Ok(linker)
}
