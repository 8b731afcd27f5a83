//! The xdpgate XDP program.
//!
//! Module layout follows Katran's bpf/ split: `parse` owns the only raw packet
//! pointers (one bounds-checked cursor), `maps` declares every map, `stats` counts.
#![no_std]
#![no_main]

mod maps;
mod parse;
mod stats;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use xdpgate_common::Action;

/// Entry point: classify the frame's family, count it, pass it.
#[xdp]
pub fn xdpgate(ctx: XdpContext) -> u32 {
    let mut cursor = parse::Cursor::new(&ctx);
    let family = parse::family(&mut cursor);
    let action = Action::Pass;
    stats::count(&ctx, family, action);
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
