//! The pooling allocator sized to what the OS will reserve. In a test binary of its own: it
//! reserves most of the address space for a moment, which other tests' pools would feel.

#![allow(clippy::unwrap_used)]

use wasmos_exec::{ExecConfig, Runner};

#[test]
fn a_pool_larger_than_the_address_space_shrinks_instead_of_failing() {
    // A million slots would reserve petabytes: more than a 47-bit address space holds.
    let wanted = 1 << 20;
    let shrunk = Runner::new(ExecConfig {
        pool: Some(wanted),
        ..ExecConfig::default()
    })
    .unwrap();
    let slots = shrunk.pool_slots().unwrap();
    assert!(slots > 0 && slots < wanted, "{slots} slots");
    drop(shrunk);
    // What fits is kept as asked.
    let fits = Runner::new(ExecConfig {
        pool: Some(8),
        ..ExecConfig::default()
    })
    .unwrap();
    assert_eq!(fits.pool_slots(), Some(8));
    let unpooled = Runner::new(ExecConfig::default()).unwrap();
    assert_eq!(unpooled.pool_slots(), None);
}
