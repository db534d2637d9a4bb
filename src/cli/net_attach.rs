//! `net-attach-interface NET IF [--detach]`: kvmctl's `brctl addif` for a network's bridge.

use super::Ctx;
use crate::network::attach;
use crate::network::lifecycle;
use crate::network::netlink::Netlink;
use crate::paths::Kind;

pub(super) async fn run(ctx: &Ctx, nl: &Netlink, network: &str, interface: &str, detach: bool) -> anyhow::Result<()> {
    let store = &ctx.store;
    let _l = store.lock(Kind::Network, network)?;
    super::network::known(ctx, network)?;
    if detach {
        let r = attach::detach(store, nl, network, interface).await?;
        let live = match &r.live_bridge {
            Some(b) => format!(" (released from bridge {b}, its settings put back)"),
            None => String::new(),
        };
        ctx.out.done(format!("Interface {interface} detached from network {network}{live}"));
        return Ok(());
    }
    let mut taps = vec![];
    for (net, _, _) in lifecycle::all(store)? {
        taps.extend(crate::domain::runtime::taps_on_network(store, &net));
    }
    let r = attach::attach(store, nl, network, interface, &taps).await?;
    let how = match (&r.live_bridge, r.missing) {
        (Some(b), _) => format!(" (enslaved to bridge {b})"),
        (None, false) => " (enslaved at the next net-start)".to_string(),
        (None, true) => format!(" (enslaved at the next net-start; {interface} does not exist now)"),
    };
    ctx.out.done(format!("Interface {interface} attached to network {network}{how}"));
    Ok(())
}
