//! Measures how much fuel one core burns per second, so a CPU share in millicores can be turned
//! into a fuel rate.
//!
//! Fuel counts WebAssembly operators, not time, so any rate is an approximation that depends on
//! the code's instruction mix. We measure on the real engine (same compiler, same fuel and epoch
//! instrumentation as tasks) with a loop of arithmetic, a memory store and a branch: a typical
//! mix, cheap enough that the measurement takes a few hundred milliseconds. The module is built
//! with wasm-encoder rather than WAT because wasmtime is built without its text parser.

use std::time::{Duration, Instant};

use wasm_encoder::{
    BlockType, CodeSection, ExportKind, ExportSection, Function, FunctionSection, MemArg,
    MemorySection, MemoryType, Module, TypeSection, ValType,
};
use wasmtime::{Engine, Instance, Store, Trap};

use crate::ExecError;

/// Used when calibration is impossible, and as a sanity floor: about what Cranelift-compiled
/// code with fuel metering achieves on a 2020s x86-64 core.
pub(crate) const FALLBACK_FUEL_PER_CORE_SECOND: u64 = 1_000_000_000;

/// Each sample must last at least this long for timer and warm-up noise to stay small.
const MIN_SAMPLE: Duration = Duration::from_millis(40);
const SAMPLES: usize = 3;

/// A core module exporting `spin`: an endless loop that increments a counter and stores it.
fn spin_module() -> Vec<u8> {
    let mut types = TypeSection::new();
    types.ty().function([], []);
    let mut functions = FunctionSection::new();
    functions.function(0);
    let mut memories = MemorySection::new();
    memories.memory(MemoryType {
        minimum: 1,
        maximum: Some(1),
        memory64: false,
        shared: false,
        page_size_log2: None,
    });
    let mut exports = ExportSection::new();
    exports.export("spin", ExportKind::Func, 0);
    let mut body = Function::new([(1, ValType::I32)]);
    body.instructions()
        .loop_(BlockType::Empty)
        .local_get(0)
        .i32_const(1)
        .i32_add()
        .local_set(0)
        .i32_const(0)
        .local_get(0)
        .i32_store(MemArg {
            offset: 0,
            align: 2,
            memory_index: 0,
        })
        .br(0)
        .end()
        .end();
    let mut code = CodeSection::new();
    code.function(&body);

    let mut module = Module::new();
    module
        .section(&types)
        .section(&functions)
        .section(&memories)
        .section(&exports)
        .section(&code);
    module.finish()
}

/// Fuel per second of one core running `engine`'s code. Blocks the calling thread for roughly
/// `SAMPLES * MIN_SAMPLE` and more.
pub(crate) fn fuel_per_core_second(engine: &Engine) -> Result<u64, ExecError> {
    let engine_err = |e: wasmtime::Error| ExecError::Engine(format!("fuel calibration: {e:#}"));
    let module = wasmtime::Module::new(engine, spin_module()).map_err(engine_err)?;
    let mut store = Store::new(engine, ());
    // The loop never reaches an epoch deadline this far away: only fuel stops it.
    store.set_epoch_deadline(1 << 40);
    let instance = Instance::new(&mut store, &module, &[]).map_err(engine_err)?;
    let spin = instance
        .get_typed_func::<(), ()>(&mut store, "spin")
        .map_err(engine_err)?;

    let mut fuel: u64 = 10_000_000;
    let mut best: Option<u64> = None;
    let mut samples = 0;
    while samples < SAMPLES {
        store.set_fuel(fuel).map_err(engine_err)?;
        let start = Instant::now();
        let result = spin.call(&mut store, ());
        let elapsed = start.elapsed();
        match result {
            Err(e) if e.downcast_ref::<Trap>() == Some(&Trap::OutOfFuel) => {}
            Err(e) => return Err(engine_err(e)),
            Ok(()) => {
                return Err(ExecError::Engine(
                    "fuel calibration: the spin loop returned".to_string(),
                ));
            }
        }
        if elapsed < MIN_SAMPLE {
            // Too short to trust; scale up towards the target duration and retry.
            let factor = (MIN_SAMPLE.as_secs_f64() / elapsed.as_secs_f64().max(1e-6)).min(16.0);
            fuel = ((fuel as f64) * factor.max(2.0)) as u64;
            continue;
        }
        // The fastest sample is the one least disturbed by other work on the machine.
        let rate = (fuel as f64 / elapsed.as_secs_f64()) as u64;
        best = Some(best.map_or(rate, |b| b.max(rate)));
        samples += 1;
    }
    Ok(best.unwrap_or(FALLBACK_FUEL_PER_CORE_SECOND).max(1))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn the_spin_module_is_valid() {
        wasmparser::Validator::new()
            .validate_all(&spin_module())
            .unwrap();
    }
}
