//! Builds the import set for one module. Every import the harness implements (the
//! proxy-wasm functions in [`super::abi`] and [`super::calls`], the WASI functions in
//! [`super::wasi`]) is wrapped so that each host call
//! 1. is a scheduling point: under [`super::Harness::concurrently`] the seeded scheduler
//!    may hand the turn to another worker here ([`super::sched`]);
//! 2. is counted, by import name, over all VMs ([`super::Harness::host_calls`]);
//! 3. may be failed on purpose: a planned fault ([`super::Harness::fault`]) makes it return
//!    the chosen status without doing anything.
//!
//! Every other import gets a function of the module's declared type that traps with
//! `unimplemented host call MODULE.NAME` when called. Loading therefore never fails on an
//! import we lack; only using it does, with a message that says what to implement.

use super::state::HostState;
use super::world::VmId;
use super::{abi, wasi};
use wasmtime::{Engine, ExternType, Linker, Module, Result, Store, Val, ValType, bail};

pub(crate) fn linker_for(
    engine: &Engine,
    module: &Module,
    store: &mut Store<HostState>,
) -> Result<Linker<HostState>> {
    let mut ours = Linker::new(engine);
    abi::add_to_linker(&mut ours)?;
    wasi::add_to_linker(&mut ours)?;
    let mut linker: Linker<HostState> = Linker::new(engine);
    for import in module.imports() {
        let ExternType::Func(wanted) = import.ty() else {
            continue;
        };
        let (module_name, name) = (import.module().to_string(), import.name().to_string());
        let implemented = ours
            .get(&mut *store, &module_name, &name)
            .ok()
            .and_then(|e| e.into_func());
        let message = match implemented {
            Some(func) if func.ty(&*store).matches(&wanted) => {
                let returns_status = matches!(
                    wanted.results().collect::<Vec<_>>().as_slice(),
                    [ValType::I32]
                );
                linker.func_new(
                    &module_name,
                    &name.clone(),
                    wanted,
                    move |mut caller, params, results| {
                        let world = std::sync::Arc::clone(&caller.data().world);
                        if let VmId::Worker(me) = caller.data().vm {
                            world.sched.yield_now(me);
                        }
                        let fault = world.lock().count_call(&name);
                        if let (Some(status), true) = (fault, returns_status)
                            && let Some(slot) = results.first_mut()
                        {
                            *slot = Val::I32(status);
                            return Ok(());
                        }
                        func.call(&mut caller, params, results)
                    },
                )?;
                continue;
            }
            // Same name, another signature: an ABI we do not speak; trap like an unknown call.
            Some(func) => format!(
                "unimplemented host call {module_name}.{name}: the module imports it as {wanted:?}, the harness has {:?}",
                func.ty(&*store)
            ),
            None => format!("unimplemented host call {module_name}.{name}"),
        };
        linker.func_new(&module_name, &name, wanted, move |_, _, _| {
            bail!("{message}")
        })?;
    }
    Ok(linker)
}
