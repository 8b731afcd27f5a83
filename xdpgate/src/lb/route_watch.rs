//! What moves the routing generation (`datapath::RouteGen`) while the
//! daemon runs: every batch of rtnetlink notifications of the daemon's
//! network namespace (routes and rules, neighbours, links, addresses,
//! forwarding settings: `sys::rtnl_events`) and, as a safety net for
//! anything the kernel does not report, every [`PERIOD`]. Each move makes
//! every CPU look its cached next hops up again (one FIB lookup per CPU and
//! backend), so a route or neighbour change reaches the load balancer as
//! soon as the daemon reads it. Without a daemon the generation stays
//! where it is and the steering program's own lifetime bounds a cached next
//! hop (docs/design/lb.md, "Next-hop cache").
use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::{datapath::RouteGen, sys::rtnl_events::RouteEvents};

/// The daemon's generation moves at least this often.
pub const PERIOD: Duration = Duration::from_secs(1);

/// Opens the notification socket of the current network namespace; `None`
/// (and a warning) when it cannot be had: then the period alone moves the
/// generation.
pub fn subscribe() -> Option<RouteEvents> {
    match RouteEvents::open() {
        Ok(ev) => Some(ev),
        Err(e) => {
            log::warn!(
                "load balancer: no route change notifications ({e}); cached next hops are looked up again every {} s",
                PERIOD.as_secs()
            );
            None
        }
    }
}

/// Moves `generation` on every batch of `events` and every `period` (the
/// first time one period from now), until `stop` is cancelled. When the
/// socket fails it goes on with the period alone, and says so.
pub async fn run(
    mut generation: RouteGen,
    mut events: Option<RouteEvents>,
    period: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {
                generation.bump();
            }
            seen = changed(&mut events) => {
                match seen {
                    Ok(_) => {
                        generation.bump();
                        // A full period from the change before the next
                        // periodic move.
                        tick.reset();
                    }
                    Err(e) => {
                        log::warn!(
                            "load balancer: route change notifications failed ({e}); cached next hops are looked up again every {} s",
                            period.as_secs()
                        );
                        events = None;
                    }
                }
            }
        }
    }
}

/// The next batch of notifications; never, without a socket.
async fn changed(
    events: &mut Option<RouteEvents>,
) -> Result<crate::sys::rtnl_events::Changes, crate::sys::netlink::NetlinkError> {
    match events {
        Some(ev) => ev.changed().await,
        None => std::future::pending().await,
    }
}
