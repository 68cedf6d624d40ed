//! Resource limits, so a runaway module fails its test instead of hanging CI or eating
//! the machine: a cap on linear memory (growth past it is refused, as `memory.grow`
//! returning -1, which a Rust module turns into an allocation-failure abort), and a bound
//! on the work one callback may do, counted in wasmtime fuel (about one unit per wasm
//! instruction), reset before every callback.

use wasmtime::ResourceLimiter;

/// Default memory cap per VM: far above what a proxy-wasm filter needs.
pub const DEFAULT_MEMORY_LIMIT: usize = 256 << 20;

/// Default work bound per callback: a gatehouse request takes well under a million.
pub const DEFAULT_FUEL_PER_CALLBACK: u64 = 2_000_000_000;

#[derive(Debug)]
pub(crate) struct MemoryCap {
    pub max_bytes: usize,
    /// Set when a growth was refused, so the trap that follows can say why.
    pub refused: Option<usize>,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.refused = Some(desired);
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20)
    }
}
