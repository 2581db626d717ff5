//! Hostile: looks for what an earlier step left in its memory. The host
//! reuses pool slots and resets only the pages a step wrote (see
//! `host/src/sandbox/engine.rs`); a step must still start from the
//! component's pristine memory. Each run checks, then dirties:
//!
//! - a counter in the data segment (starts at 7, must read 7),
//! - a 1 MiB array in `.bss` (must read all zeros),
//! - 64 KiB pages it grows the memory by (must read all zeros),
//! - a heap allocation of 1 MiB (read before it is written);
//!
//! and returns `{counter, bss_dirty, grown_dirty, heap_dirty}`: any count
//! but `counter: 7` and zeros is a leak.
use sandflow_sdk::{Error, Step};
use serde_json::{Value, json};
use std::ptr::{addr_of, addr_of_mut};

static mut COUNTER: u64 = 7;
static mut AREA: [u8; 1 << 20] = [0; 1 << 20];
const GROW_PAGES: usize = 16;

fn dirty(bytes: *const u8, len: usize) -> usize {
    // Volatile reads: the optimizer may not assume what the memory holds.
    (0..len).filter(|&i| unsafe { bytes.add(i).read_volatile() } != 0).count()
}

fn scribble(bytes: *mut u8, len: usize) {
    for i in 0..len {
        unsafe { bytes.add(i).write_volatile(0xA5) };
    }
}

struct Snoop;

impl Step for Snoop {
    type Input = Value;
    type Output = Value;
    fn run(_: Value) -> Result<Value, Error> {
        let counter = unsafe { addr_of!(COUNTER).read_volatile() };
        unsafe { addr_of_mut!(COUNTER).write_volatile(counter.wrapping_add(1000)) };

        let area = addr_of_mut!(AREA).cast::<u8>();
        let bss_dirty = dirty(area, 1 << 20);
        scribble(area, 1 << 20);

        let grown_dirty = match core::arch::wasm32::memory_grow(0, GROW_PAGES) {
            usize::MAX => return Err(Error::new("memory.grow failed")),
            first => {
                let start = (first * 65536) as *mut u8;
                let n = dirty(start, GROW_PAGES * 65536);
                scribble(start, GROW_PAGES * 65536);
                n
            }
        };

        // Fresh from the allocator: read before anything writes it.
        let layout = std::alloc::Layout::from_size_align(1 << 20, 8).expect("layout");
        let heap = unsafe { std::alloc::alloc(layout) };
        let heap_dirty = dirty(heap, 1 << 20);
        scribble(heap, 1 << 20);

        Ok(json!({ "counter": counter, "bss_dirty": bss_dirty, "grown_dirty": grown_dirty, "heap_dirty": heap_dirty }))
    }
}

sandflow_sdk::export_step!(Snoop);
